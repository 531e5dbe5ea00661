"""The one result type every selector returns."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from harp.core.errors import DataError
from harp.core.hashing import sha256_hex, stable_json
from harp.core.io import atomic_write_json

__all__ = ["Cost", "Selection"]

SELECTION_SCHEMA = 1


@dataclass(frozen=True)
class Cost:
    """What a selection cost to compute.

    Attributes
    ----------
    wall_seconds : float
        Wall-clock seconds spent in ``fit`` (features and selection).
    train_eval_calls : int
        Finetune-and-evaluate calls made (train-based methods such as HARP).
    gradient_passes : int
        Per-example gradient computations (gradient-based methods).
    rows_scored : int
        Pool rows a scoring function looked at.
    device : str
        Where the work ran (``"cpu"``, ``"cuda"``).
    """

    wall_seconds: float = 0.0
    train_eval_calls: int = 0
    gradient_passes: int = 0
    rows_scored: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _float_list(values: np.ndarray) -> list[float | None]:
    # JSON has no NaN; None stands for "not scored / not defined".
    return [None if not math.isfinite(v) else float(v) for v in values.tolist()]


@dataclass(frozen=True, eq=False)
class Selection:
    """A selected subset of a pool, with how and why it was chosen.

    Attributes
    ----------
    indices : ndarray of int64, shape (k,)
        Pool row indices in pick order (the ranking); unique.
    ids : tuple of str
        Example ids of ``indices``, same order.
    scores : ndarray of float64, shape (n_pool,)
        Per-row score the method ranked by; NaN where the method gives none.
    gains : ndarray of float64, shape (k,)
        Marginal gain of each pick (greedy methods); NaN where undefined.
    budget : int
        Rows the budget allowed. ``len(indices)`` may be smaller (recorded, not an
        error).
    n_pool : int
        Rows in the pool.
    method : str
        Registry name of the selector.
    params : dict
        The selector's hyper-parameters as given.
    seed : int or None
        The seed given.
    cost : Cost
        What the selection cost.
    fingerprint : str
        Hash of the pool and target content, method, params and seed.
    """

    indices: np.ndarray
    ids: tuple[str, ...]
    scores: np.ndarray
    gains: np.ndarray
    budget: int
    n_pool: int
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    cost: Cost = field(default_factory=Cost)
    fingerprint: str = ""

    def __post_init__(self) -> None:
        indices = np.asarray(self.indices, dtype=np.int64).copy()
        scores = np.asarray(self.scores, dtype=np.float64).copy()
        gains = np.asarray(self.gains, dtype=np.float64).copy()
        if indices.ndim != 1 or len(np.unique(indices)) != len(indices):
            raise ValueError("Selection.indices must be 1-d and unique")
        if len(indices) and (indices.min() < 0 or indices.max() >= self.n_pool):
            raise ValueError("Selection.indices out of range of the pool")
        if scores.shape != (self.n_pool,):
            raise ValueError(f"Selection.scores must have shape ({self.n_pool},)")
        if gains.shape != indices.shape:
            raise ValueError("Selection.gains must have one entry per pick")
        if len(self.ids) != len(indices):
            raise ValueError("Selection.ids must have one entry per pick")
        for arr in (indices, scores, gains):
            arr.setflags(write=False)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "gains", gains)
        object.__setattr__(self, "ids", tuple(self.ids))

    def __len__(self) -> int:
        return len(self.indices)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Selection):
            return NotImplemented
        return self.to_dict(include_cost=False) == other.to_dict(include_cost=False)

    @property
    def mask(self) -> np.ndarray:
        """Boolean mask over the pool, True for selected rows."""
        out = np.zeros(self.n_pool, dtype=bool)
        out[self.indices] = True
        return out

    def to_dict(self, *, include_cost: bool = True) -> dict[str, Any]:
        """JSON-ready dict (NaN written as null)."""
        out: dict[str, Any] = {
            "schema": SELECTION_SCHEMA,
            "method": self.method,
            "params": self.params,
            "seed": self.seed,
            "budget": self.budget,
            "n_pool": self.n_pool,
            "n_selected": len(self.indices),
            "indices": self.indices.tolist(),
            "ids": list(self.ids),
            "gains": _float_list(self.gains),
            "scores": _float_list(self.scores),
            "fingerprint": self.fingerprint,
        }
        if include_cost:
            out["cost"] = self.cost.to_dict()
        return out

    def digest(self) -> str:
        """Hash of everything but the cost (timings differ between identical runs)."""
        return sha256_hex(stable_json(self.to_dict(include_cost=False)), 32)

    def save(self, path: str | Path, *, extra: dict[str, Any] | None = None) -> None:
        """Write the selection as JSON, atomically; ``extra`` keys are stored too."""
        payload = self.to_dict()
        if extra:
            payload = {**extra, **payload}
        atomic_write_json(path, payload)

    @classmethod
    def load(cls, path: str | Path) -> "Selection":
        """Read a selection written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(
                indices=np.asarray(data["indices"], dtype=np.int64),
                ids=tuple(data["ids"]),
                scores=np.asarray(
                    [np.nan if v is None else v for v in data["scores"]],
                    dtype=np.float64,
                ),
                gains=np.asarray(
                    [np.nan if v is None else v for v in data["gains"]],
                    dtype=np.float64,
                ),
                budget=int(data["budget"]),
                n_pool=int(data["n_pool"]),
                method=data["method"],
                params=data.get("params", {}),
                seed=data.get("seed"),
                cost=Cost(**data.get("cost", {})),
                fingerprint=data.get("fingerprint", ""),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"not a harp selection file ({exc})", path=path) from None

    def to_dataframe(self):
        """One row per pick: rank, index, id, score, gain (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(
            {
                "rank": np.arange(len(self.indices)),
                "index": self.indices,
                "id": list(self.ids),
                "score": self.scores[self.indices],
                "gain": self.gains,
            }
        )
