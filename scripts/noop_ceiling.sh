#!/usr/bin/env bash
# The host's ceiling (--backend noop: the whole GPU path, no kernel run)
# beside the CPU backend in the same run, rank 32, 10M synthetic ratings, at
# 100% and 10% budgets in the default (blocked) and the shuffled order, and
# at 10% in an order chosen for the budget (BUDGET_ORDER: few large blocks,
# one sweep), with the CPU backend in that order too.
# Prints per run: median ratings/s, host seconds and rows in of epochs 2-4.
#   B=path/to/rowstage scripts/noop_ceiling.sh      (default: target/release/rowstage)
set -euo pipefail
B=${B:-target/release/rowstage}
BUDGET_ORDER=${BUDGET_ORDER:-blocked:12:1:3}
D="--synthetic 50000,20000,10000000 --epochs 4 --json -"
med() { python3 -c "
import json,sys,statistics
j=json.load(sys.stdin); e=j['epochs'][1:]
print('%.3e %.3f %s' % (statistics.median([x['ratings_per_sec'] for x in e]), statistics.median([x['host_seconds'] for x in e]), int(statistics.median([x['rows_in'] for x in e]))))"; }
for rep in 1 2; do
  echo "rep $rep cpu $($B train $D --backend cpu 2>/dev/null | med)"
  for m in 100% 10%; do for o in auto shuffled; do
    echo "rep $rep noop $m $o $($B train $D --backend noop --device-memory $m --order $o 2>/dev/null | med)"
  done; done
  echo "rep $rep cpu $BUDGET_ORDER $($B train $D --backend cpu --order $BUDGET_ORDER 2>/dev/null | med)"
  for p in sca lru; do
    echo "rep $rep noop 10% $BUDGET_ORDER $p $($B train $D --backend noop --device-memory 10% --order $BUDGET_ORDER --policy $p 2>/dev/null | med)"
  done
done
