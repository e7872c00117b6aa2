#!/usr/bin/env bash
# The Python package (python/): `scripts/python.sh test` builds it with pip
# and maturin (its PEP 517 backend) into a virtual environment of its own,
# python/.venv, and runs its tests with pytest; `scripts/python.sh install`
# only builds and installs it there.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=python/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
# pip, retried: a download cut off near its end (a flaky link to the
# package index) otherwise fails the whole run.
pip_install() {
  local try
  for try in 1 2 3; do
    "$venv/bin/python" -m pip install -q --retries 10 --timeout 60 "$@" && return 0
    echo "pip install $* failed (try $try of 3); retrying in 10 s" >&2
    sleep 10
  done
  return 1
}
case "${1:-}" in
  install) pip_install ./python ;;
  test)
    pip_install "./python[test]"
    "$venv/bin/python" -m pytest -q -rs python/tests
    ;;
  *) echo "usage: scripts/python.sh install | test" >&2; exit 2 ;;
esac
