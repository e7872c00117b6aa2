"""rowstage from Python against the command line: the same model from the
same data, settings and seed, the model file both ways, and the package's
own promises (ids, exclusions, callbacks, Ctrl-C, the GIL)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import rowstage

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, check=True):
    """`rowstage ARGS` from this checkout (built by cargo if need be)."""
    cmd = ["cargo", "run", "--quiet", "--release", "--bin", "rowstage", "--", *map(str, args)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return out


def ratings(n=6000, users=400, items=200, seed=7):
    """Skewed synthetic ratings on 1..5, ids as ints."""
    rng = np.random.default_rng(seed)
    u = (rng.zipf(1.6, n) - 1) % users + 1
    i = (rng.zipf(1.4, n) - 1) % items + 1
    r = np.clip(np.round(3 + rng.normal(0, 1, n)), 1, 5).astype(np.float32)
    return u, i, r


def write_tsv(path, u, i, r):
    with open(path, "w") as f:
        for a, b, c in zip(u, i, r):
            f.write(f"{a}\t{b}\t{c:g}\n")


FIXED = dict(epochs=3, lr=0.05, reg=0.08, seed=7)


def test_fit_trains_the_command_lines_model_bit_for_bit(tmp_path):
    u, i, r = ratings()
    data = tmp_path / "r.tsv"
    write_tsv(data, u, i, r)
    # `train` holds 10% out by default; fit holds nothing out.
    cli("train", "--data", data, "--test-fraction", "0", "--backend", "cpu", "--threads", "1",
        "--epochs", 3, "--lr", 0.05, "--reg", 0.08, "--seed", 7, "--save", tmp_path / "cli.safetensors")
    model = rowstage.MF(backend="cpu", threads=1, **FIXED).fit(u, i, r)
    native = rowstage.load(tmp_path / "cli.safetensors", id_type=int)
    assert model.user_ids_ == native.user_ids_ and model.item_ids_ == native.item_ids_
    for table in ("user_factors_", "item_factors_", "user_biases_", "item_biases_"):
        assert np.array_equal(getattr(model, table), getattr(native, table)), table
    # And the file it saves is the command line's: `rowstage eval` reads it.
    model.save(tmp_path / "py.safetensors")
    out = cli("compare", tmp_path / "py.safetensors", tmp_path / "cli.safetensors")
    assert "bit-identical" in out.stdout, out.stdout


def test_the_same_model_from_a_dataframe_a_path_and_lists(tmp_path):
    pd = pytest.importorskip("pandas")
    u, i, r = ratings()
    a = rowstage.MF(backend="cpu", **FIXED).fit(u, i, r)
    b = rowstage.MF(backend="cpu", **FIXED).fit(pd.DataFrame({"user": u, "item": i, "rating": r}))
    c = rowstage.MF(backend="cpu", **FIXED).fit(list(u), list(i), list(r))
    path = tmp_path / "r.tsv"
    write_tsv(path, u, i, r)
    d = rowstage.MF(backend="cpu", **FIXED).fit(path)
    for m in (b, c, d):
        assert np.array_equal(a.item_factors_, m.item_factors_)
    assert a.user_ids_ == b.user_ids_ == c.user_ids_
    # A file's ids are its text.
    assert d.user_ids_ == [str(x) for x in a.user_ids_]


def test_a_sparse_matrix_trains_with_its_row_and_column_indices():
    sparse = pytest.importorskip("scipy.sparse")
    u, i, r = ratings()
    # One rating a pair: a sparse matrix adds repeated pairs up (these
    # skewed ids repeat one pair a thousand times, a "rating" of 2504 that
    # made the run diverge).
    _, first = np.unique(u.astype(np.int64) * 1000 + i, return_index=True)
    u, i, r = u[first], i[first], r[first]
    m = sparse.coo_matrix((r, (u, i))).tocsr()
    model = rowstage.MF(backend="cpu", **FIXED).fit(m)
    assert all(isinstance(x, int) for x in model.user_ids_)
    p = model.predict([int(u[0])], [int(i[0])])
    assert p.dtype == np.float32 and np.isfinite(p).all()
    assert model.report_["epochs"][0]["ratings"] == len(r), "every stored entry a rating"


def test_ids_come_back_in_the_type_given():
    u, i, r = ratings()
    su, si = np.array([f"u{x}" for x in u]), np.array([f"i{x}" for x in i])
    model = rowstage.MF(backend="cpu", **FIXED).fit(su, si, r)
    ids, scores = model.recommend(["u1", "u2"], n=5)
    assert ids.shape == scores.shape == (2, 5)
    assert all(isinstance(x, str) and x.startswith("i") for x in ids.ravel())
    ints = rowstage.MF(backend="cpu", **FIXED).fit(u, i, r)
    ids, _ = ints.recommend([1], n=3)
    assert ids.dtype.kind == "i"
    with pytest.raises(KeyError, match="unknown user 'nobody'"):
        model.predict(["nobody"], ["i1"])
    with pytest.raises(KeyError, match="unknown user 123456"):
        ints.recommend([123456])


def test_recommend_leaves_out_what_a_user_rated_and_is_sorted():
    u, i, r = ratings()
    model = rowstage.MF(backend="cpu", **FIXED).fit(u, i, r)
    user = int(u[0])
    rated = set(i[u == user].tolist())
    ids, scores = model.recommend([user], n=20)
    assert not rated & set(ids[0].tolist())
    assert np.all(np.diff(scores[0]) <= 0)
    with pytest.raises(ValueError, match="items"):
        model.recommend([user], n=10**12)  # not an allocation of 10**12 rows
    everything, _ = model.recommend([user], n=20, exclude_rated=False)
    best = model.predict([user] * len(model.item_ids_), model.item_ids_)
    assert everything[0][0] == model.item_ids_[int(np.argmax(best))]


def test_save_and_load_both_ways(tmp_path):
    u, i, r = ratings()
    model = rowstage.MF(backend="cpu", **FIXED).fit(u, i, r)
    model.save(tmp_path / "m.safetensors")
    back = rowstage.load(tmp_path / "m.safetensors", id_type=int)
    assert np.array_equal(back.predict(u[:50], i[:50]), model.predict(u[:50], i[:50]))
    assert back.report_ is None and back.config_["rank"] == 32
    with pytest.raises(ValueError, match="rated"):
        back.recommend([int(u[0])])
    ids, _ = back.recommend([int(u[0])], rated=(u, i))
    assert np.array_equal(ids, model.recommend([int(u[0])])[0])
    # `rated` holds for its call only: the next call needs it again.
    with pytest.raises(ValueError, match="rated"):
        back.recommend([int(u[0])])
    # Text ids that one type would make one id are refused, not merged.
    collide = rowstage.MF(backend="cpu", **FIXED).fit(["1", "01", "2"], ["a", "b", "a"], [3.0, 4.0, 5.0])
    with pytest.raises(ValueError, match="id_type=int cannot read the model's item ids"):
        collide.save(tmp_path / "c.safetensors") or rowstage.load(tmp_path / "c.safetensors", id_type=int)
    collide = rowstage.MF(backend="cpu", **FIXED).fit(["1", "01", "2"], [10, 20, 10], [3.0, 4.0, 5.0])
    collide.save(tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="id_type=int makes two user ids one"):
        rowstage.load(tmp_path / "c.safetensors", id_type=int)
    assert rowstage.load(tmp_path / "c.safetensors").user_ids_ == ["1", "01", "2"]
    # `rowstage recommend` reads the file Python wrote.
    out = cli("recommend", "--model", tmp_path / "m.safetensors", "--user", int(u[0]), "-n", 3)
    assert out.returncode == 0


def test_report_and_test_set():
    u, i, r = ratings()
    model = rowstage.MF(backend="cpu", **FIXED).fit(u, i, r)
    assert len(model.report_["epochs"]) == 3 and model.report_["final"]["test_rmse"] is None
    assert model.report_["dataset"]["test"] == 0
    tu, ti, tr = ratings(n=500, seed=8)
    known = np.isin(tu, u) & np.isin(ti, i)
    scored = rowstage.MF(backend="cpu", **FIXED).fit(u, i, r, test=(tu[known], ti[known], tr[known]))
    assert 0.3 < scored.report_["final"]["test_rmse"] < 3.0
    assert scored.report_["epochs"][0]["ledger"] is not None
    assert scored.user_factors_.shape == (len(scored.user_ids_), 32)
    assert scored.item_biases_.shape == (len(scored.item_ids_),)


def test_default_settings_are_chosen_on_the_data():
    u, i, r = ratings()
    model = rowstage.MF(backend="cpu", epochs=3, seed=7).fit(u, i, r)
    choice = model.report_["choice"]
    assert choice is not None and choice["lr"] > 0 and choice["reg"] >= 0, model.report_


def test_a_callback_sees_every_epoch_and_can_stop_the_run():
    u, i, r = ratings()
    seen = []

    def stop_after_two(epoch):
        seen.append(epoch)
        return len(seen) < 2

    model = rowstage.MF(backend="cpu", epochs=10, lr=0.05, reg=0.08).fit(u, i, r, callback=stop_after_two)
    assert [e["epoch"] for e in seen] == [1, 2] and seen[0]["stage"] == "training"
    assert "rows_in" in seen[0] and "train_rmse" in seen[0]
    assert model.report_["complete"] is False and len(model.report_["epochs"]) == 2


def test_bad_settings_and_data_name_what_is_wrong(tmp_path):
    u, i, r = ratings()
    with pytest.raises(ValueError, match="rank"):
        rowstage.MF(rank=0).fit(u, i, r)
    with pytest.raises(ValueError, match="device_memory"):
        rowstage.MF(device_memory="lots").fit(u, i, r)
    bad = r.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"ratings\[3\]"):
        rowstage.MF().fit(u, i, bad)
    with pytest.raises(ValueError, match="as long"):
        rowstage.MF().fit(u, i[:-1], r)
    with pytest.raises(OSError, match="nowhere"):
        rowstage.MF().fit("/nowhere/ratings.csv")
    # The ratings file fit read is not written over by save.
    path = tmp_path / "r.tsv"
    write_tsv(path, u, i, r)
    model = rowstage.MF(backend="cpu", **FIXED).fit(path)
    with pytest.raises(ValueError, match="ratings file fit read"):
        model.save(path)
    assert path.read_text().startswith(f"{u[0]}\t"), "the ratings file was written over"
    with pytest.raises(ValueError, match="no ratings"):
        rowstage.MF().fit([], [], [])
    with pytest.raises(TypeError, match="all ints or all strings"):
        rowstage.MF().fit([1, "a"], [1, 2], [3.0, 4.0])
    with pytest.raises(TypeError, match="bytes"):
        rowstage.MF().fit([b"a", b"b"], [1, 2], [3.0, 4.0])
    # Whole floats past int64 would all become one id.
    with pytest.raises(ValueError, match="outside"):
        rowstage.MF().fit([1e20, 3e20], [1, 2], [3.0, 4.0])
    # An id a model file could not give back.
    with pytest.raises(ValueError, match="line break"):
        rowstage.MF().fit(["a\nb", "c"], ["x", "y"], [1.0, 2.0])
    # A loss gone non-finite is an error, as in `rowstage train`, and the
    # MF stays unfitted.
    mf = rowstage.MF(backend="cpu", lr=50.0, reg=0.05, epochs=3)
    with pytest.raises(RuntimeError, match="diverged"):
        mf.fit(u, i, r * 1000)
    with pytest.raises(Exception, match="fit"):
        mf.predict([u[0]], [i[0]])


def test_a_dataframe_whose_names_contradict_their_places_is_refused():
    pd = pytest.importorskip("pandas", reason="pandas is not installed")
    u, i, r = ratings()
    swapped = pd.DataFrame({"item": i, "user": u, "stars": r})
    with pytest.raises(ValueError, match="'user' is not its column 0"):
        rowstage.MF(backend="cpu", **FIXED).fit(swapped)
    # Named as MovieLens names them: the rating in place, taken by position.
    movielens = pd.DataFrame({"userId": u, "movieId": i, "rating": r})
    rowstage.MF(backend="cpu", **FIXED).fit(movielens)


def test_training_releases_the_gil():
    u, i, r = ratings(n=600000, users=30000, items=15000)
    ticks, ends = [], []
    done = threading.Event()

    def tick():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=tick)
    t.start()
    # One training thread, so that the ticker has a core of its own.
    model = rowstage.MF(backend="cpu", threads=1, epochs=8, lr=0.05, reg=0.08)
    model.fit(u, i, r, callback=lambda e: ends.append(time.perf_counter()))
    done.set()
    t.join()
    ticks = np.array(ticks)
    # Inside every epoch (after the first) the ticker keeps ticking, about
    # once a millisecond: were the GIL held through an epoch, it would not
    # tick at all there.
    for end, e in list(zip(ends, model.report_["epochs"]))[1:]:
        inside = np.count_nonzero((ticks > end - e["seconds"]) & (ticks < end))
        expected = e["seconds"] / 0.0011
        print(f"epoch {e['epoch']}: {e['seconds']:.3f} s, {inside} ticks (about {expected:.0f} expected)")
        assert expected > 5, "epochs too short to tell"
        assert inside >= expected / 2, (e["epoch"], e["seconds"], inside)


# How SIGINT is handled when fit starts: Python's own handler, the process
# default (no Python handler at all), a handler of the program's that raises,
# one that does not, or ignored.
CTRL_C_SETUPS = {
    "python": "",
    "sig_dfl": "signal.signal(signal.SIGINT, signal.SIG_DFL)",
    "replaced": "def mine(s, f):\n    print('mine', flush=True)\n    raise KeyboardInterrupt\nsignal.signal(signal.SIGINT, mine)",
    "quiet": "def mine(s, f):\n    print('mine', flush=True)\nsignal.signal(signal.SIGINT, mine)",
    "sig_ign": "signal.signal(signal.SIGINT, signal.SIG_IGN)",
}


@pytest.mark.parametrize("setup", sorted(CTRL_C_SETUPS))
def test_ctrl_c_raises_keyboard_interrupt_within_a_second_and_keeps_the_model_unfitted(tmp_path, setup):
    # SIGINT is sent from a timer thread of the fitting process, a quarter of
    # the first epoch's length after it ended: inside the second epoch, where
    # the GIL is released (between epochs Python's own handler hears it
    # anyway).
    script = tmp_path / "fit.py"
    script.write_text(textwrap.dedent("""
        import os, signal, sys, threading, time
        import numpy as np
        import rowstage
        rng = np.random.default_rng(1)
        n = 2000000
        u, i = rng.integers(0, 20000, n), rng.integers(0, 10000, n)
        r = rng.integers(1, 6, n).astype(np.float32)
        model = rowstage.MF(backend="cpu", epochs=100000, lr=0.05, reg=0.08)
        sent = []
        def send():
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)
        def started(e):
            if e["epoch"] == 1:
                threading.Timer(e["seconds"] / 4, send).start()
            # A run that ignores Ctrl-C ends when its callback says so, two
            # whole epochs after the signal.
            if sent and sys.argv[1] == "sig_ign":
                started.after = getattr(started, "after", 0) + 1
                return started.after < 3
    """) + CTRL_C_SETUPS[setup] + textwrap.dedent("""
        try:
            model.fit(u, i, r, callback=started)
        except KeyboardInterrupt:
            h = signal.getsignal(signal.SIGINT)
            now = ("python" if h is signal.default_int_handler else "sig_dfl" if h == signal.SIG_DFL
                   else "replaced" if getattr(h, "__name__", "") == "mine" else repr(h))
            print("interrupted", time.monotonic() - sent[0], model._fitted is None, now, flush=True)
            if sys.argv[1] == "sig_dfl":
                # The process's own default action is back: a second Ctrl-C
                # ends the process by the signal.
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(2)
                print("survived a second SIGINT", flush=True)
            sys.exit(0)
        ratings = [e["ratings"] for e in model.report_["epochs"]]
        print("finished", time.monotonic() - sent[0], model.report_["complete"], min(ratings), max(ratings), flush=True)
        sys.exit(0)
    """))
    child = subprocess.run([sys.executable, str(script), setup], capture_output=True, text=True, timeout=120)
    lines = [line.split() for line in child.stdout.splitlines()]
    if setup in ("replaced", "quiet"):
        # The program's own handler ran, as Python calls it.
        assert lines[:1] == [["mine"]], (lines, child.stderr)
        lines = lines[1:]
    assert lines, child.stderr
    line = lines[0]
    if setup == "sig_ign":
        # An ignored Ctrl-C is ignored by the run too: every epoch whole
        # (a stopped one would hold fewer ratings), ended by the callback.
        assert line[0] == "finished" and line[2] == "False" and line[3] == line[4], (line, child.stderr)
        return
    waited = float(line[1])
    print(f"{setup}: {line[0]} {waited:.3f} s after SIGINT")
    assert waited < 1.0, f"{line[0]} {waited:.2f} s after SIGINT"
    if setup == "quiet":
        # The handler did not raise: the run stopped there and fit returned
        # a model marked incomplete, as after a callback's False.
        assert line[0] == "finished" and line[2] == "False", (line, child.stderr)
        return
    assert line[0] == "interrupted", (line, child.stderr)
    assert line[2] == "True", "the model must stay unfitted after an interrupted fit"
    # The handler in place before fit is in place after it, whatever it was.
    assert line[3] == setup, line
    if setup == "sig_dfl":
        assert child.returncode == -signal.SIGINT and len(lines) == 1, (child.returncode, lines)
    else:
        assert child.returncode == 0, child.stderr


def test_devices_lists_dicts():
    found = rowstage.devices()
    assert isinstance(found, list) and all("name" in d and "backend" in d for d in found)
    if not found:
        print("no GPU adapter on this machine: the list is empty")


def test_simulate_counts_what_the_command_line_counts(tmp_path):
    u, i, r = ratings()
    path = tmp_path / "r.tsv"
    write_tsv(path, u, i, r)
    rows = rowstage.simulate(u, i, device_memory=["25%", "5%"], policy="all", seed=7)
    cli("simulate", "--data", path, "--test-fraction", "0", "--seed", 7, "--device-memory", "25%,5%",
        "--policy", "all", "--json", tmp_path / "sim.json")
    native = json.loads((tmp_path / "sim.json").read_text())
    assert len(rows) == 14
    one = rowstage.simulate(u, i, device_memory="25%", policy="sca", seed=7)
    # A single budget as a string; its row is the sweep's row for it.
    assert len(one) == 1 and one[0] in rows
    assert json.dumps(rows, sort_keys=True) == json.dumps(native, sort_keys=True)
    # A budget too small is refused by name, not left out of the rows.
    with pytest.raises(ValueError, match="1KiB: too small"):
        rowstage.simulate(u, i, device_memory=["25%", "1KiB"], seed=7)
    with pytest.raises(ValueError, match="no ratings"):
        rowstage.simulate([], [])


def gpu_backend():
    """The first of ROWSTAGE_TEST_BACKENDS (or vulkan, gl) with an adapter."""
    found = {d["backend"] for d in rowstage.devices()}
    for b in os.environ.get("ROWSTAGE_TEST_BACKENDS", "vulkan,gl").split(","):
        if b in found:
            return b
    if os.environ.get("ROWSTAGE_REQUIRE_GPU") == "1":
        pytest.fail(f"ROWSTAGE_REQUIRE_GPU=1 but no adapter for {os.environ.get('ROWSTAGE_TEST_BACKENDS', 'vulkan,gl')}")
    pytest.skip("no GPU adapter (install Mesa's lavapipe: scripts/deps.sh)")


def test_a_gpu_fit_with_a_small_slab_is_the_command_lines(tmp_path):
    backend = gpu_backend()
    u, i, r = ratings()
    data = tmp_path / "r.tsv"
    write_tsv(data, u, i, r)
    cli("train", "--data", data, "--test-fraction", "0", "--backend", backend, "--device-memory", "25%",
        "--epochs", 3, "--lr", 0.05, "--reg", 0.08, "--seed", 7, "--save", tmp_path / "cli.safetensors")
    model = rowstage.MF(backend=backend, device_memory="25%", **FIXED).fit(u, i, r)
    assert model.report_["config"]["backend"] == backend
    assert model.report_["epochs"][-1]["rows_in"] > 0, "at 25% rows are staged"
    native = rowstage.load(tmp_path / "cli.safetensors", id_type=int)
    assert np.abs(model.item_factors_ - native.item_factors_).max() <= 1e-4


def test_the_lesson_example_runs_as_a_user_would(tmp_path):
    example = ROOT / "python" / "examples" / "memory_limit_lesson.py"
    out = subprocess.run([sys.executable, str(example), "--small", "--charts", str(tmp_path / "charts")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr
    print(out.stdout)
    assert "the same model at every budget: yes" in out.stdout, out.stdout
    assert out.stdout.count("\n") > 20 and "sca" in out.stdout
    assert ("chart: " in out.stdout) or ("matplotlib is not installed" in out.stdout)


def test_fit_runs_on_a_worker_thread():
    u, i, r = ratings()
    models = []
    t = threading.Thread(target=lambda: models.append(rowstage.MF(backend="cpu", **FIXED).fit(u, i, r)))
    t.start()
    t.join()
    assert models and len(models[0].report_["epochs"]) == 3
