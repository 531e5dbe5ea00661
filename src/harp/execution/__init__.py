"""Executors: run feature shards and HARP's leaf evaluations locally or on Ray.

See :mod:`harp.execution.executor`. Ray is imported only by :class:`RayExecutor`.
"""

from harp.execution.executor import (
    EXECUTORS,
    MAX_AUTO_WORKERS,
    Executor,
    LocalExecutor,
    RayExecutor,
    auto_workers,
    forget_worker_cached,
    make_executor,
    worker_cached,
)

__all__ = [
    "EXECUTORS",
    "MAX_AUTO_WORKERS",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "auto_workers",
    "forget_worker_cached",
    "make_executor",
    "worker_cached",
]
