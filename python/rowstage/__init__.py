"""rowstage from Python: biased matrix factorization (SGD) trained by the
rowstage library in this process, on any GPU that wgpu reaches (Vulkan,
Metal, DX12, GL) or on the CPU, with the device's memory held to a budget
and every byte that crosses it counted.

    >>> import rowstage
    >>> model = rowstage.MF(epochs=10, device_memory="25%")
    >>> model.fit(users, items, ratings)
    >>> model.predict(users[:5], items[:5])
    >>> ids, scores = model.recommend([users[0]], n=10)

The keyword arguments are ``rowstage train``'s flags (``device_memory`` for
``--device-memory``) with the same defaults, including the choice of ``lr``
and ``reg`` on the data where they are not given. A model is the same one
``rowstage train`` makes of the same data, settings and seed, and
``save``/``load`` use its model file.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np

from . import _rowstage

__all__ = ["MF", "load", "devices", "simulate", "__version__", "wgpu_version"]

__version__, wgpu_version = _rowstage.versions()

# Keyword arguments that name `rowstage train` flags, in their order.
_SETTINGS = ("rank", "epochs", "lr", "reg", "device_memory", "policy", "backend", "order", "seed", "threads", "batch")


def _setting(value: Any) -> str:
    """A keyword argument's value as the command line would spell it."""
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is not a setting value")
    if isinstance(value, (list, tuple)):
        return ",".join(_setting(v) for v in value)
    return str(value)


def _pairs(settings: dict) -> list:
    """The settings given (not ``None``) as ``rowstage train`` flag pairs."""
    return [(k.replace("_", "-"), _setting(v)) for k, v in settings.items() if v is not None]


def _ids(values: Any) -> Tuple[list, np.ndarray]:
    """Distinct ids (Python ints or strings, as given) and each value's code."""
    if isinstance(values, (list, tuple)):
        # numpy would turn [1, "a"] into strings silently.
        kinds = {str if isinstance(v, str) else int if isinstance(v, (int, np.integer)) else type(v) for v in values}
        if len(kinds) > 1:
            raise TypeError(f"ids must be all ints or all strings, not {sorted(k.__name__ for k in kinds)}")
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"ids must be one-dimensional, not of shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("ids given as floats must be whole numbers")
        # Past int64 numpy's cast makes every such id the same one.
        if arr.size and (arr.max() >= 2.0**63 or arr.min() < -(2.0**63)):
            raise ValueError("ids outside -2**63 .. 2**63 - 1")
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "S":
        raise TypeError("ids given as bytes: decode them to str first")
    if arr.dtype.kind not in "iuUO":
        raise TypeError(f"ids must be ints or strings, not {arr.dtype}")
    if arr.dtype.kind == "O":
        kinds = {type(v) for v in arr.tolist()}
        if kinds == {int}:
            try:
                arr = arr.astype(np.int64)
            except OverflowError:
                raise ValueError("ids outside -2**63 .. 2**63 - 1") from None
        elif not kinds <= {str}:
            raise TypeError(f"ids must be all ints or all strings, not {sorted(k.__name__ for k in kinds)}")
    # In order of first appearance, as `rowstage train` numbers a file's ids
    # (the library numbers its rows by first use in any case).
    if arr.dtype.kind in "iu":
        if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError("ids above 2**63 - 1")
        distinct, codes = _rowstage.number_ints(np.ascontiguousarray(arr, dtype=np.int64))
        return distinct.tolist(), codes
    distinct, first, inverse = np.unique(arr, return_index=True, return_inverse=True)
    # A model file stores an id a line: one with a line break would come back as two.
    broken = next((v for v in distinct.tolist() if "\n" in v), None)
    if broken is not None:
        raise ValueError(f"id {broken!r} holds a line break, which a model file cannot store")
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return distinct[order].tolist(), rank[inverse.reshape(-1)].astype(np.uint32)


def _triple(data: Any, items: Any, ratings: Any) -> Tuple[Any, Any, np.ndarray]:
    """(users, items, ratings) from any form ``fit`` takes."""
    if hasattr(data, "tocoo") and hasattr(data, "nnz"):  # scipy.sparse
        if items is not None or ratings is not None:
            raise TypeError("a sparse matrix gives the items and ratings itself: pass no items= or ratings=")
        coo = data.tocoo()
        return coo.row, coo.col, np.asarray(coo.data, dtype=np.float32)
    if hasattr(data, "columns") and hasattr(data, "iloc") and items is None:  # a DataFrame
        cols = list(data.columns)
        named = [c for c in ("user", "item", "rating") if c in cols]
        # Taken by position, a column named as another would be read as
        # the wrong one (items as users): refused.
        for k, c in enumerate(("user", "item", "rating")):
            if len(named) < 3 and c in cols and cols.index(c) != k:
                raise ValueError(
                    f"the DataFrame's column {c!r} is not its column {k}: name all of user, item and rating, "
                    f"or put them first in that order (it has {cols})"
                )
        picked = ["user", "item", "rating"] if len(named) == 3 else cols[:3]
        if len(picked) < 3:
            raise ValueError(f"a DataFrame needs user, item and rating columns; it has {cols}")
        return data[picked[0]].to_numpy(), data[picked[1]].to_numpy(), data[picked[2]].to_numpy(dtype=np.float32)
    if items is None or ratings is None:
        raise TypeError("pass users, items and ratings; a DataFrame; a scipy.sparse matrix; or a path")
    return data, items, np.asarray(ratings, dtype=np.float32)


class _Ids:
    """The model's ids (the library's strings) mapped to the ids the user gave."""

    def __init__(self, names: Sequence[str], given: Optional[dict]):
        self.values = [given.get(n, n) for n in names] if given else list(names)
        self.code = {v: k for k, v in enumerate(self.values)}

    def codes(self, ids: Any, what: str) -> np.ndarray:
        values = np.asarray(ids).tolist() if not isinstance(ids, list) else ids
        if not isinstance(values, list):
            values = [values]
        out = np.empty(len(values), dtype=np.uint32)
        for k, v in enumerate(values):
            try:
                out[k] = self.code[v]
            except KeyError:
                raise KeyError(f"unknown {what} {v!r}: the model has no such {what}") from None
        return out


class MF:
    """Biased matrix factorization trained with SGD by the rowstage library.

    Every keyword is the ``rowstage train`` flag of the same name, with its
    default when ``None``: ``rank`` (32), ``epochs`` (30), ``lr`` and
    ``reg`` (chosen on a validation split of the training ratings when
    neither is given; a list of values trains a grid in one run),
    ``device_memory`` (the GPU's slab: ``"25%"`` of the tables, ``"64MiB"``,
    or a number of bytes; ``"auto"``), ``policy`` (``"sca"``, ``"lru"``,
    ``"lfu"``, ``"static"``, ``"lookahead"``), ``backend`` (``"auto"``: the
    best GPU, else the CPU; ``"vulkan"``, ``"metal"``, ``"dx12"``, ``"gl"``,
    ``"cpu"``), ``order`` (``"auto"``, ``"shuffled"``,
    ``"blocked[:BINS[:SWEEPS[:TILE]]]"``), ``seed`` (42), ``threads`` (all
    cores) and ``batch``.
    """

    def __init__(
        self,
        rank: Optional[int] = None,
        epochs: Optional[int] = None,
        lr: Any = None,
        reg: Any = None,
        device_memory: Any = None,
        policy: Optional[str] = None,
        backend: Optional[str] = None,
        order: Optional[str] = None,
        seed: Optional[int] = None,
        threads: Optional[int] = None,
        batch: Any = None,
    ):
        self.rank, self.epochs, self.lr, self.reg = rank, epochs, lr, reg
        self.device_memory, self.policy, self.backend, self.order = device_memory, policy, backend, order
        self.seed, self.threads, self.batch = seed, threads, batch
        self._fitted = None
        # The ratings file `fit` read, which `save` will not write over.
        self._source: Optional[str] = None

    def get_params(self) -> dict:
        """The settings as given (``None``: the command line's default)."""
        return {k: getattr(self, k) for k in _SETTINGS}

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if v is not None)
        return f"MF({given})"

    def fit(
        self,
        data: Any,
        items: Any = None,
        ratings: Any = None,
        *,
        test: Optional[Tuple[Any, Any, Any]] = None,
        callback: Optional[Callable[[dict], Any]] = None,
    ) -> "MF":
        """Trains on every rating given; nothing is held out unless ``test``.

        ``data`` is users with ``items`` and ``ratings`` beside it (lists,
        numpy arrays or a DataFrame's columns), a DataFrame with user, item
        and rating columns (named so, or the first three), a scipy.sparse
        matrix (rows users, columns items), or the path of a ratings file in
        any format ``rowstage train`` reads. Ids may be ints or strings.

        ``test``: ``(users, items, ratings)`` scored after every epoch (the
        report's ``test_rmse``). ``callback(epoch)`` is called after every
        epoch with its figures (``train --json``'s epoch schema, and
        ``stage``); returning ``False`` stops the run there, and the model
        is kept. Ctrl-C stops it within a batch and raises
        ``KeyboardInterrupt``, leaving this object as it was before ``fit``.
        """
        if isinstance(data, (str, os.PathLike)):
            if items is not None or ratings is not None:
                raise TypeError("a path gives the items and ratings itself: pass no items= or ratings=")
            # The file's ids, numbered by the loader in order of first appearance.
            user_list, item_list, u, i, values = _rowstage.read_ratings(os.fspath(data))
        else:
            users, items_, values = _triple(data, items, ratings)
            user_list, u = _ids(users)
            item_list, i = _ids(items_)
        given_users = {str(v): v for v in user_list}
        given_items = {str(v): v for v in item_list}
        if len(given_users) != len(user_list) or len(given_items) != len(item_list):
            raise ValueError("two ids read the same as text (1 and '1'): give ids of one kind")
        values = np.ascontiguousarray(values, dtype=np.float32)
        ids = ([str(v) for v in user_list], [str(v) for v in item_list])
        test_part = None
        if test is not None:
            tu, ti, tr = test
            tul, tuc = _ids(tu)
            til, tic = _ids(ti)
            test_part = (([str(v) for v in tul], [str(v) for v in til]), (tuc, tic, np.ascontiguousarray(tr, dtype=np.float32)))
        trainer = _rowstage.Trainer(_pairs(self.get_params()), ids, (u, i, values), test_part)
        notes = trainer.notes()
        # Ctrl-C is Python's main thread's: a fit on another thread is not
        # stopped by it.
        main = threading.current_thread() is threading.main_thread()
        while True:
            stepped = trainer.step(main)
            if stepped is None:
                break
            stage, epoch = stepped
            if callback is not None:
                report = json.loads(epoch)
                report["stage"] = stage
                if callback(report) is False:
                    trainer.stop()
        fitted = trainer.finish()
        self._adopt(fitted, given_users, given_items)
        self.notes_ = notes
        self._source = os.path.realpath(data) if isinstance(data, (str, os.PathLike)) else None
        return self

    def _adopt(self, fitted: Any, given_users: Optional[dict], given_items: Optional[dict]) -> None:
        self._fitted = fitted
        self._users = _Ids(fitted.user_ids(), given_users)
        self._items = _Ids(fitted.item_ids(), given_items)
        report = fitted.report()
        self.report_ = json.loads(report) if report is not None else None
        self.config_ = json.loads(fitted.config())
        uf, itf, ub, ib = fitted.tables()
        self.user_factors_, self.item_factors_, self.user_biases_, self.item_biases_ = uf, itf, ub, ib
        self.user_ids_, self.item_ids_ = list(self._users.values), list(self._items.values)

    def _model(self) -> Any:
        if self._fitted is None:
            raise RuntimeError("the model is not fitted: call fit() or rowstage.load()")
        return self._fitted

    def predict(self, users: Any, items: Any) -> np.ndarray:
        """The predicted rating of each (user, item) pair, float32. An id
        the model does not know raises ``KeyError`` naming it."""
        model = self._model()
        return model.predict(self._users.codes(users, "user"), self._items.codes(items, "item"))

    def recommend(self, users: Any, n: int = 10, exclude_rated: bool = True, rated: Optional[Tuple[Any, Any]] = None):
        """Each user's ``n`` best items, best first: ``(item_ids, scores)``,
        arrays of shape ``(len(users), n)``. ``exclude_rated`` leaves out
        the items a user rated: the ``rated=(users, items)`` pairs where given
        (for this call), else ``fit``'s training ratings; after ``load`` it
        needs ``rated``. Where
        fewer than ``n`` items are left, ``None`` and NaN fill the row."""
        model = self._model()
        # A negative n as a ValueError (the native method takes an unsigned
        # n and checks it against the items there are).
        if n < 1:
            raise ValueError(f"n={n}: must be at least 1")
        pairs = None
        if rated is not None:
            ru, ri = rated
            pairs = (self._users.codes(ru, "user"), self._items.codes(ri, "item"))
        codes = self._users.codes(users, "user")
        item_codes, scores = model.recommend(codes, n, exclude_rated, pairs)
        missing = item_codes == np.iinfo(np.uint32).max
        lookup = np.asarray(self._items.values + [None], dtype=object)
        ids = lookup[np.where(missing, len(self._items.values), item_codes)]
        if not missing.any():
            try:
                ids = ids.astype(np.asarray(self._items.values).dtype)
            except (TypeError, ValueError):
                pass
        return ids, scores

    def save(self, path: "os.PathLike[str] | str") -> None:
        """Writes the model file ``rowstage train --save`` writes (which
        ``rowstage eval`` and ``recommend`` read, and ``rowstage.load``).
        The ratings file ``fit`` read is refused, as ``train --save`` refuses
        its ``--data``."""
        model = self._model()
        if self._source is not None and os.path.realpath(path) == self._source:
            raise ValueError(f"path={os.fspath(path)!r} is the ratings file fit read: writing it would destroy it")
        model.save(os.fspath(path))


def load(path: "os.PathLike[str] | str", id_type: Optional[type] = None) -> MF:
    """A model file of ``rowstage train --save`` or ``MF.save``, as an ``MF``.
    Its ids are strings, as the file holds them; ``id_type=int`` makes them
    ints. Its settings are in ``config_``; it has no ``report_``."""
    fitted = _rowstage.load(os.fspath(path))
    given_users = given_items = None
    if id_type is not None:
        def typed(what: str, names: list) -> dict:
            try:
                return {n: id_type(n) for n in names}
            except (TypeError, ValueError) as e:
                raise ValueError(f"id_type={id_type.__name__} cannot read the model's {what} ids ({e}): load them as text") from None

        given_users = typed("user", fitted.user_ids())
        given_items = typed("item", fitted.item_ids())
        for what, given in (("user", given_users), ("item", given_items)):
            if len(set(given.values())) != len(given):
                raise ValueError(f"id_type={id_type.__name__} makes two {what} ids one (as \"1\" and \"01\"): load them as text")
    model = MF()
    model._adopt(fitted, given_users, given_items)
    return model


def devices() -> list:
    """Every GPU adapter wgpu finds, as dicts (``rowstage devices``' fields)."""
    return json.loads(_rowstage.devices())


def simulate(users: Any, items: Any, device_memory: Any = ("1%", "5%", "10%", "25%"), policy: Any = "all", **settings: Any) -> list:
    """``rowstage simulate``: one epoch of training's steps over the (user,
    item) pairs given, replayed without kernels at each ``device_memory``
    through each ``policy``, counting what each would move. Returns one
    dict per budget and policy (pandas-ready: ``pd.DataFrame(rows)``).
    ``settings`` are further ``rowstage train`` flags (``rank``, ``order``,
    ``seed``, ``epochs``, ``batch``)."""
    user_list, u = _ids(users)
    item_list, i = _ids(items)
    ids = ([str(v) for v in user_list], [str(v) for v in item_list])
    if isinstance(device_memory, (str, int, float)):
        device_memory = [device_memory]
    budgets = ",".join(_setting(b) for b in device_memory)
    policies = policy if isinstance(policy, str) else ",".join(policy)
    settings.setdefault("epochs", 1)
    return json.loads(_rowstage.simulate(_pairs(settings), ids, u, i, budgets, policies))
