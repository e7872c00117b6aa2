"""The memory-limit lesson from Python: one model trained with the device's
slab at several shares of the tables. What crosses into the slab grows as it
shrinks, the speed falls, and the model does not change: staging moves rows,
never the arithmetic. Then every policy's traffic at those budgets, from the
simulator. Plots with matplotlib where it is installed.

    python memory_limit_lesson.py [RATINGS_FILE] [--small] [--charts DIR]

Without a file it draws skewed synthetic ratings. `--small` makes it quick
(the tests run it so).
"""

import argparse
import os

import numpy as np

import rowstage

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("data", nargs="?", help="a ratings file (any format rowstage train reads)")
parser.add_argument("--small", action="store_true", help="a few thousand ratings and 2 epochs")
parser.add_argument("--charts", default="lesson-charts", help="where the charts go")
args = parser.parse_args()

if args.data:
    source = args.data
    users = items = ratings = None
else:
    n = 6000 if args.small else 200_000
    rng = np.random.default_rng(42)
    users = (rng.zipf(1.4, n) - 1) % (n // 15) + 1
    items = (rng.zipf(1.3, n) - 1) % (n // 30) + 1
    ratings = np.clip(np.round(3 + rng.normal(0, 1, n)), 1, 5).astype(np.float32)
    source = users
budgets = ["100%", "25%", "5%"]
epochs = 2 if args.small else 5
print(f"rowstage {rowstage.__version__}; adapters: {[d['name'] for d in rowstage.devices()] or 'none (the CPU trains)'}")
print(f"{'budget':>7} {'rows in/epoch':>14} {'hit rate':>9} {'ratings/s':>11} {'train RMSE':>11}")
rows, tables = [], []
for budget in budgets:
    model = rowstage.MF(epochs=epochs, lr=0.05, reg=0.08, device_memory=budget)
    model.fit(source, items, ratings)
    last = model.report_["epochs"][-1]
    hit = last["hit_rate"]
    rows.append((budget, last["rows_in"], hit, last["ratings_per_sec"], last["train_rmse"], model.report_["config"]["backend"]))
    tables.append(model.item_factors_)
    print(f"{budget:>7} {last['rows_in']:>14} {'-' if hit is None else f'{100 * hit:.1f}%':>9} "
          f"{last['ratings_per_sec']:>11.3e} {last['train_rmse']:>11.4f}")
backends = {r[5] for r in rows}
differ = max(float(np.abs(t - tables[0]).max()) for t in tables)
same = differ <= 1e-4
print(f"backend: {', '.join(sorted(backends))}; the same model at every budget: {'yes' if same else 'no'} "
      f"(largest |difference| of the item factors {differ:.1e})")

if users is None:
    _, _, u, i, _ = rowstage._rowstage.read_ratings(args.data)
else:
    u, i = users, items
sim = rowstage.simulate(u, i, device_memory=budgets[1:], policy="all")
print(f"{'budget':>9} {'policy':<10} {'rows in':>9}  (one epoch replayed, no kernels)")
for s in sim:
    print(f"{s['device_memory_bytes']:>9} {s['policy']:<10} {s['rows_in']:>9}")

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed: no charts (pip install matplotlib)")
else:
    os.makedirs(args.charts, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.bar([r[0] for r in rows], [r[1] for r in rows])
    a.set_title("rows into the slab per epoch")
    b.bar([r[0] for r in rows], [r[3] for r in rows])
    b.set_title("ratings per second")
    fig.tight_layout()
    path = os.path.join(args.charts, "lesson.png")
    fig.savefig(path)
    print(f"chart: {path}")
