"""fit's overhead against the command line on the same run: the same
ratings (a file for `rowstage train`, arrays for `MF.fit`), the same
settings, alternately, wall time of each. Usage (after scripts/python.sh
install, from the repository root):

    python/.venv/bin/python scripts/python_overhead.py [RATINGS] [EPOCHS] [BACKEND]
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import rowstage

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
backend = sys.argv[3] if len(sys.argv) > 3 else "cpu"
rng = np.random.default_rng(1)
u = (rng.zipf(1.3, n) - 1) % (n // 100) + 1
i = (rng.zipf(1.2, n) - 1) % (n // 200) + 1
r = np.clip(np.round(3 + rng.normal(0, 1, n)), 1, 5).astype(np.float32)
root = Path(__file__).resolve().parents[1]
binary = root / "target" / "release" / "rowstage"
settings = dict(epochs=epochs, lr=0.05, reg=0.08, seed=7, backend=backend)
flags = [f"--{k}={v}" for k, v in settings.items()]
with tempfile.TemporaryDirectory() as d:
    path = Path(d) / "r.tsv"
    np.savetxt(path, np.column_stack([u, i, r]), fmt=["%d", "%d", "%g"], delimiter="\t")
    cli, py = [], []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([binary, "train", "--data", path, "--test-fraction", "0", *flags], check=True, capture_output=True)
        cli.append(time.perf_counter() - t)
        t = time.perf_counter()
        rowstage.MF(**settings).fit(u, i, r)
        py.append(time.perf_counter() - t)
print(f"{n} ratings, {epochs} epochs, backend {backend}: rowstage train {min(cli):.2f} s (runs {', '.join(f'{x:.2f}' for x in cli)}), "
      f"MF.fit {min(py):.2f} s (runs {', '.join(f'{x:.2f}' for x in py)}); fit / train = {min(py) / min(cli):.3f}")
