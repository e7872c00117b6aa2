"""Type stubs for rowstage (see the module's docstrings)."""

import os
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str
wgpu_version: str

Ids = Union[Sequence[int], Sequence[str], npt.ArrayLike]
Size = Union[str, int]

class MF:
    rank: Optional[int]
    epochs: Optional[int]
    lr: Union[None, float, Sequence[float]]
    reg: Union[None, float, Sequence[float]]
    device_memory: Optional[Size]
    policy: Optional[str]
    backend: Optional[str]
    order: Optional[str]
    seed: Optional[int]
    threads: Optional[int]
    batch: Union[None, int, str]
    report_: Optional[dict]
    config_: dict
    notes_: list[str]
    user_factors_: npt.NDArray[np.float32]
    item_factors_: npt.NDArray[np.float32]
    user_biases_: npt.NDArray[np.float32]
    item_biases_: npt.NDArray[np.float32]
    user_ids_: list
    item_ids_: list
    def __init__(
        self,
        rank: Optional[int] = None,
        epochs: Optional[int] = None,
        lr: Union[None, float, Sequence[float]] = None,
        reg: Union[None, float, Sequence[float]] = None,
        device_memory: Optional[Size] = None,
        policy: Optional[str] = None,
        backend: Optional[str] = None,
        order: Optional[str] = None,
        seed: Optional[int] = None,
        threads: Optional[int] = None,
        batch: Union[None, int, str] = None,
    ) -> None: ...
    def get_params(self) -> dict: ...
    def fit(
        self,
        data: Any,
        items: Optional[Ids] = None,
        ratings: Optional[npt.ArrayLike] = None,
        *,
        test: Optional[Tuple[Ids, Ids, npt.ArrayLike]] = None,
        callback: Optional[Callable[[dict], Any]] = None,
    ) -> "MF": ...
    def predict(self, users: Ids, items: Ids) -> npt.NDArray[np.float32]: ...
    def recommend(
        self,
        users: Ids,
        n: int = 10,
        exclude_rated: bool = True,
        rated: Optional[Tuple[Ids, Ids]] = None,
    ) -> Tuple[np.ndarray, npt.NDArray[np.float32]]: ...
    def save(self, path: Union[str, "os.PathLike[str]"]) -> None: ...

def load(path: Union[str, "os.PathLike[str]"], id_type: Optional[type] = None) -> MF: ...
def devices() -> list[dict]: ...
def simulate(
    users: Ids,
    items: Ids,
    device_memory: Union[Size, Sequence[Size]] = ...,
    policy: Union[str, Sequence[str]] = "all",
    **settings: Any,
) -> list[dict]: ...
