"""Executors: run independent tasks in-process, in a process pool or on a Ray cluster.

Feature shards and the train-evaluate calls of one HARP round are independent tasks.
An :class:`Executor` maps a function over such tasks and returns the results in
input order, whatever ran where. Tasks are pure module-level functions of picklable
arguments (paths, rows, settings) that write their output to fingerprinted paths
(a feature-store shard, an oracle cache file), so results never depend on the
executor or the number of workers, and a task that is run twice does no harm.

Failure rules, the same for every executor: a :class:`~harp.core.errors.HarpError`
raised by a task (bad data, a bad parameter) is the caller's error and propagates
unchanged, without retry; any other failure (an unexpected exception, a worker that
died or was killed) is retried up to ``max_retries`` times, then raised as a
:class:`~harp.core.errors.HarpError` that names the item.

Ray is optional (``pip install 'harp-select[ray]'``) and imported only by
:class:`RayExecutor`.
"""

from __future__ import annotations

import logging
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

from harp.core.errors import HarpError, ParameterError
from harp.core.progress import ProgressBar

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

log = logging.getLogger(__name__)

#: Executor names accepted by :func:`make_executor` (and ``--executor``).
EXECUTORS = ("local", "ray")

_RAY_HINT = "pip install 'harp-select[ray]'"


def _label(item: Any, limit: int = 80) -> str:
    text = repr(item)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _failure(desc: str, index: int, item: Any, attempts: int, cause: Any) -> HarpError:
    what = desc or "task"
    return HarpError(
        f"{what}: item {index} ({_label(item)}) failed after {attempts} "
        f"attempt{'s' if attempts != 1 else ''}: {cause}"
    )


def _set_threads(threads: int | None) -> None:
    """Limit a worker's math libraries to ``threads`` (before or after torch loads)."""
    if not threads:
        return
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


#: The last model (or encoder) this worker process built, by what it was built from.
_WORKER_MODEL: dict[str, Any] = {}


def worker_cached(key: str, build: Callable[[], Any]) -> Any:
    """``build()``, kept in this process for the next task with the same ``key``.

    A task of an executor (a feature shard, a train-evaluate call) loads its model
    from a folder; a worker keeps the last one, so a kept pool loads each model
    once, not once per task. One model per process: building another frees the
    last one first.
    """
    if _WORKER_MODEL.get("key") != key:
        _WORKER_MODEL.clear()
        _WORKER_MODEL["value"] = build()
        _WORKER_MODEL["key"] = key
    return _WORKER_MODEL["value"]


def forget_worker_cached(key: str) -> None:
    """Drop what :func:`worker_cached` keeps for ``key`` (it may be damaged)."""
    if _WORKER_MODEL.get("key") == key:
        _WORKER_MODEL.clear()


#: In a pool worker: whether a task is running now, and the pool's stop event.
_WORKER_STATE: dict[str, Any] = {"running": False, "stop": None}


def _init_worker(stop: Any) -> None:
    """Pool worker initializer: follow the parent's end, and its interrupts.

    A pool worker waits on a queue it also holds the writing end of, so it never
    sees its parent die: a killed ``harp demo`` would leave its workers waiting
    forever. A daemon thread watches the parent's sentinel instead. An interrupt
    (Ctrl-C reaches the whole process group) stops the task running, and is
    ignored by a worker waiting for one (which would die printing a traceback);
    once the pool is stopping, tasks still queued are skipped.
    """
    import multiprocessing
    import signal
    import threading
    from multiprocessing.connection import wait

    _WORKER_STATE["stop"] = stop

    def on_interrupt(signum: int, frame: Any) -> None:
        if _WORKER_STATE["running"]:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    parent = multiprocessing.parent_process()
    if parent is None:  # pragma: no cover - not a child process
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="harp-parent-watch", daemon=True).start()


class _Raised:
    """A HarpError caught inside a worker, returned so that nothing retries it."""

    def __init__(self, error: HarpError) -> None:
        self.error = error


def _call(fn: Callable[[Any], Any], item: Any, threads: int | None) -> Any:
    """What a worker runs: set its threads, call ``fn``, hand back harp's errors."""
    stop = _WORKER_STATE["stop"]
    if stop is not None and stop.is_set():  # queued before the pool was stopped
        return _Raised(HarpError("stopped before it started"))
    _set_threads(threads)
    _WORKER_STATE["running"] = True
    try:
        out = fn(item)
    except HarpError as exc:
        return _Raised(exc)
    finally:
        _WORKER_STATE["running"] = False
    torch = sys.modules.get("torch")  # imported by fn: hold it to the same threads
    if threads and torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return out


class Executor(ABC):
    """Runs a function over independent items; results come back in input order.

    Subclasses implement :meth:`map` and :attr:`n_workers`; :meth:`shutdown` frees
    what the executor started (executors are also context managers).

    Attributes
    ----------
    name : str
        The registry name (``"local"``, ``"ray"``).
    max_retries : int
        Retries of a task that failed with anything but a ``HarpError``.
    """

    name: str = "executor"
    max_retries: int = 0

    @property
    @abstractmethod
    def n_workers(self) -> int:
        """Tasks that can run at the same time."""

    def runs_here(self, n_items: int) -> bool:
        """Whether :meth:`map` runs ``n_items`` tasks in the calling process."""
        return False

    @abstractmethod
    def map(
        self, fn: Callable[[Any], Any], items: Iterable[Any], *, desc: str = ""
    ) -> list:
        """``[fn(item) for item in items]``, possibly in parallel.

        Parameters
        ----------
        fn : callable
            A module-level function (or a ``functools.partial`` of one) of one
            picklable item; it must be picklable for every executor but the
            in-process one.
        items : iterable
            The tasks' inputs.
        desc : str, default=""
            What the tasks do, for logs and error messages.

        Returns
        -------
        list
            The results, in the order of ``items``.

        Raises
        ------
        HarpError
            A task's own ``HarpError`` (unchanged), or a task that still failed
            after ``max_retries`` retries (the message names the item).
        """

    def shutdown(self) -> None:
        """Free the workers this executor started (a no-op by default)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LocalExecutor(Executor):
    """Tasks on this machine: in-process for one worker, else a process pool.

    Parameters
    ----------
    workers : int, default=1
        With 1, tasks run one after another in the calling process (no pickling,
        no overhead: what harp does without an executor). With more, a
        ``concurrent.futures.ProcessPoolExecutor`` of that many ``spawn``-ed
        processes (safe with torch), started by the first :meth:`map` and kept
        until :meth:`shutdown`: later maps (HARP's next round, a bench's finetunes)
        find torch imported and their models loaded in the workers.
    max_retries : int, default=0
        Retries of a failed task (not of a ``HarpError``). A pool worker that dies
        (killed, out of memory) fails the tasks it held; they are retried in a new
        pool.
    threads_per_task : int or None, default=None
        Math-library threads of a pool worker; None divides the CPU cores among the
        workers. The in-process executor leaves the threads as they are.

    Examples
    --------
    >>> LocalExecutor().map(abs, [-2, 3, -1])
    [2, 3, 1]
    """

    name = "local"

    def __init__(
        self,
        workers: int = 1,
        *,
        max_retries: int = 0,
        threads_per_task: int | None = None,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ParameterError(f"workers={workers!r}: expected an integer >= 1")
        if (
            isinstance(max_retries, bool)
            or not isinstance(max_retries, int)
            or max_retries < 0
        ):
            raise ParameterError(
                f"max_retries={max_retries!r}: expected an integer >= 0"
            )
        self.workers = workers
        self.max_retries = max_retries
        self.threads_per_task = threads_per_task
        self._pool: Any = None
        self._stop: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # A copy elsewhere starts its own workers.
        return {**self.__dict__, "_pool": None, "_stop": None}

    def _worker_pool(self) -> Any:
        """The process pool, started on first use and kept for the next maps."""
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            context = multiprocessing.get_context("spawn")
            self._stop = context.Event()
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=context,
                initializer=_init_worker,
                initargs=(self._stop,),
            )
        return self._pool

    def _discard_pool(self, *, wait: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)

    def _interrupt_pool(self) -> None:
        """Interrupt the running tasks (as Ctrl-C in a terminal does), then stop."""
        import signal

        pool, self._pool = self._pool, None
        if pool is None:
            return
        self._stop.set()  # tasks already handed to the workers' queue are skipped
        # The stdlib's pool has no public way to reach its workers before 3.14. A
        # worker turns the interrupt into its task's error and exits cleanly when
        # the pool shuts down (killing it instead would leak its queues).
        processes = getattr(pool, "_processes", None) or {}
        for process in list(processes.values()):
            if process.is_alive() and process.pid is not None:
                try:
                    os.kill(process.pid, signal.SIGINT)
                except OSError:  # it ended meanwhile
                    pass
        pool.shutdown(wait=True, cancel_futures=True)

    def shutdown(self) -> None:
        """Stop the worker processes (a later :meth:`map` starts new ones)."""
        self._discard_pool(wait=True)

    @property
    def n_workers(self) -> int:
        return self.workers

    def runs_here(self, n_items: int) -> bool:
        # One task gains nothing from a worker with fewer threads than this process.
        return self.workers == 1 or n_items <= 1

    def __repr__(self) -> str:
        return f"LocalExecutor(workers={self.workers}, max_retries={self.max_retries})"

    def map(
        self, fn: Callable[[Any], Any], items: Iterable[Any], *, desc: str = ""
    ) -> list:
        items = list(items)
        # No bar (the tasks may draw their own); the estimate line when it is long.
        with _estimate(desc, len(items)) as bar:
            if self.runs_here(len(items)):
                out = []
                for i, item in enumerate(items):
                    out.append(self._run_here(fn, i, item, desc))
                    bar.advance()
                return out
            return self._run_pool(fn, items, desc, bar)

    def _run_here(self, fn, index: int, item: Any, desc: str) -> Any:
        for attempt in range(self.max_retries + 1):
            try:
                return fn(item)
            except HarpError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried, then reported
                if attempt == self.max_retries:
                    raise _failure(desc, index, item, attempt + 1, exc) from exc
                log.warning(
                    "%s: item %d failed (%s); retrying", desc or "task", index, exc
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_pool(self, fn, items: list, desc: str, bar: ProgressBar) -> list:
        from concurrent.futures.process import BrokenProcessPool

        threads = self.threads_per_task or max(1, (os.cpu_count() or 1) // self.workers)
        results: dict[int, Any] = {}
        attempts = dict.fromkeys(range(len(items)), 0)
        todo = list(range(len(items)))
        while todo:
            failed: list[int] = []
            pool = self._worker_pool()
            futures = {i: pool.submit(_call, fn, items[i], threads) for i in todo}
            try:
                for i, future in futures.items():
                    attempts[i] += 1
                    try:
                        out = future.result()
                    except Exception as exc:  # noqa: BLE001 - a crash or an error
                        if isinstance(exc, BrokenProcessPool):
                            # A worker died: its pool takes no more tasks.
                            self._discard_pool(wait=False)
                        if attempts[i] > self.max_retries:
                            raise _failure(desc, i, items[i], attempts[i], exc) from exc
                        log.warning(
                            "%s: item %d failed (%s); retrying", desc or "task", i, exc
                        )
                        failed.append(i)
                        continue
                    if isinstance(out, _Raised):
                        raise out.error
                    results[i] = out
                    bar.advance()
            except Exception:
                # The run stops here: nothing of this map is left queued for the
                # next one (tasks already running finish in their workers).
                for other in futures.values():
                    other.cancel()
                raise
            except BaseException:
                # Ctrl-C (or an exit): stop the running tasks too, now, rather
                # than wait for each to finish its finetune.
                self._interrupt_pool()
                raise
            todo = failed
        return [results[i] for i in range(len(items))]


class RayExecutor(Executor):
    """Tasks on a Ray cluster: a local one it starts, or an existing one.

    Parameters
    ----------
    address : None, "auto" or "HOST:PORT", default=None
        None starts a private local cluster (stopped by :meth:`shutdown`); ``"auto"``
        joins the cluster started on this machine by ``ray start --head``;
        ``"HOST:PORT"`` joins the cluster of that head node. When Ray is already
        initialised in this process, that session is used as is.
    num_cpus : int or None, default=None
        CPUs of a local cluster that this executor starts (None: all cores).
    cpus_per_task : float, default=1
        CPUs Ray reserves per task; also the task's torch threads.
    gpus_per_task : float, default=0
        GPUs Ray reserves per task; Ray sets the task's ``CUDA_VISIBLE_DEVICES`` to
        them.
    max_retries : int, default=3
        Retries of a task whose worker died or that raised anything but a
        ``HarpError``.
    init_kwargs : dict, optional
        More keyword arguments of ``ray.init`` (e.g. ``runtime_env``).

    Raises
    ------
    HarpError
        Ray is not installed.

    Notes
    -----
    The function of one :meth:`map` call is put into the object store once; each
    task receives it and one item. Workers must be able to import ``harp`` and
    reach the paths in the items (a shared filesystem on a multi-node cluster).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        cpus_per_task: float = 1,
        gpus_per_task: float = 0,
        max_retries: int = 3,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._ray_module()  # fail now, with the fix, when Ray is missing
        if cpus_per_task is None or cpus_per_task <= 0:
            raise ParameterError(f"cpus_per_task={cpus_per_task!r}: expected > 0")
        if gpus_per_task is None or gpus_per_task < 0:
            raise ParameterError(f"gpus_per_task={gpus_per_task!r}: expected >= 0")
        if (
            isinstance(max_retries, bool)
            or not isinstance(max_retries, int)
            or (max_retries < 0)
        ):
            raise ParameterError(
                f"max_retries={max_retries!r}: expected an integer >= 0"
            )
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self.max_retries = max_retries
        self.init_kwargs = dict(init_kwargs or {})
        self._started = False
        self._remote: Any = None

    def __repr__(self) -> str:
        return (
            f"RayExecutor(address={self.address!r}, num_cpus={self.num_cpus}, "
            f"cpus_per_task={self.cpus_per_task}, gpus_per_task={self.gpus_per_task}, "
            f"max_retries={self.max_retries})"
        )

    @staticmethod
    def _ray_module():
        try:
            import ray
        except ImportError as exc:
            raise HarpError(
                f"the Ray executor needs Ray, which is not installed: {_RAY_HINT}"
            ) from exc
        return ray

    def _ensure_started(self):
        ray = self._ray_module()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": logging.ERROR,
                **self.init_kwargs,
            }
            if self.address is None:
                kwargs.setdefault("num_cpus", self.num_cpus)
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = self.address or "a local cluster"
                raise HarpError(f"cannot start or join Ray at {where}: {exc}") from exc
            self._started = True
            log.info("Ray: %s", ray.cluster_resources())
        if self._remote is None:
            self._remote = ray.remote(
                num_cpus=self.cpus_per_task,
                num_gpus=self.gpus_per_task,
                max_retries=self.max_retries,
                retry_exceptions=True,
            )(_call)
        return ray

    @property
    def n_workers(self) -> int:
        ray = self._ensure_started()
        resources = ray.cluster_resources()
        by_cpu = int(resources.get("CPU", 1) // self.cpus_per_task)
        if self.gpus_per_task:
            by_gpu = int(resources.get("GPU", 0) // self.gpus_per_task)
            return max(1, min(by_cpu, by_gpu))
        return max(1, by_cpu)

    def map(
        self, fn: Callable[[Any], Any], items: Iterable[Any], *, desc: str = ""
    ) -> list:
        items = list(items)
        if not items:
            return []
        ray = self._ensure_started()
        threads = max(1, int(self.cpus_per_task))
        fn_ref = ray.put(fn)
        refs = [self._remote.remote(fn_ref, item, threads) for item in items]
        log.info("%s: %d Ray tasks", desc or "tasks", len(refs))
        results = []
        with _estimate(desc, len(refs)) as bar:
            for i in range(len(refs)):
                results.append(self._result(ray, refs, i, items, desc))
                bar.advance()
        return results

    def _result(self, ray: Any, refs: list, i: int, items: list, desc: str) -> Any:
        """The result of task ``i``; a failure raises at once.

        The tasks after a failed one are not cancelled: they finish and their
        results are dropped (a local cluster stops with :meth:`shutdown`).
        ``ray.cancel`` on a task whose reply is on its way aborts this whole process
        inside Ray ("Check failed: it != submissible_tasks_.end() Tried to complete
        task that was not pending", ray-project/ray#54527; with Ray 2.60, 2 aborts
        in 3,600 failing maps of 4 short tasks), and no message of harp's then
        reaches the user.
        """
        try:
            out = ray.get(refs[i])
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            raise _failure(
                desc, i, items[i], self.max_retries + 1, _first_line(cause)
            ) from exc
        if isinstance(out, _Raised):
            raise out.error
        return out

    def shutdown(self) -> None:
        """Disconnect from Ray if this executor connected.

        A local cluster it started stops; a cluster it joined keeps running, and a
        Ray session that was already open in this process is left alone.
        """
        if self._started:
            ray = self._ray_module()
            ray.shutdown()
            self._started = False
            self._remote = None


def _estimate(desc: str, total: int) -> ProgressBar:
    return ProgressBar(False, desc or "tasks", total, unit="task")


def _first_line(exc: Any) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


#: The most worker processes :func:`auto_workers` picks (each holds torch and a model).
MAX_AUTO_WORKERS = 8


def auto_workers(device_type: str) -> int:
    """Worker processes for small-model finetunes here: one per usable CPU core.

    On the CPU each worker finetunes on one thread: for harp's tiny proxy two such
    workers on a 2-core machine finish two finetunes 1.45x sooner than one process
    with two threads finishes them one after another (the proxy is too small to
    split an op well over threads). On a GPU: 1, since the GPU is the bottleneck.
    At most :data:`MAX_AUTO_WORKERS`.

    Examples
    --------
    >>> auto_workers("cuda")
    1
    >>> 1 <= auto_workers("cpu") <= MAX_AUTO_WORKERS
    True
    """
    if device_type != "cpu":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_AUTO_WORKERS))


def make_executor(
    executor: str | Executor | None = None,
    *,
    workers: int | None = None,
    address: str | None = None,
    gpus_per_task: float | None = None,
    **options: Any,
) -> Executor:
    """An executor by name (``"local"``, ``"ray"``), or the instance given.

    Parameters
    ----------
    executor : {"local", "ray"}, Executor or None, default=None
        None means ``"local"``.
    workers : int, optional
        Local: pool processes (1 = in-process). Ray: CPUs of the local cluster it
        starts (ignored when joining a cluster).
    address : str, optional
        Ray only: None (start a local cluster), ``"auto"`` or ``"HOST:PORT"``.
    gpus_per_task : float, optional
        Ray only: GPUs per task.
    **options
        More keyword arguments of the executor class (``max_retries``,
        ``cpus_per_task``, ...).

    Returns
    -------
    Executor

    Raises
    ------
    ParameterError
        An unknown name, an option the chosen executor does not take, or options
        given along with an instance.

    Examples
    --------
    >>> make_executor()
    LocalExecutor(workers=1, max_retries=0)
    >>> make_executor("local", workers=2).n_workers
    2
    """
    if isinstance(executor, Executor):
        given = {"workers": workers, "address": address, "gpus_per_task": gpus_per_task}
        if options or any(v is not None for v in given.values()):
            raise ParameterError(
                "executor options go to make_executor with a name, not an instance"
            )
        return executor
    name = "local" if executor is None else executor
    if name == "local":
        if address is not None or gpus_per_task:
            raise ParameterError(
                "address and gpus_per_task are Ray options; use executor='ray'"
            )
        return LocalExecutor(workers if workers is not None else 1, **options)
    if name == "ray":
        return RayExecutor(
            address,
            num_cpus=workers,
            gpus_per_task=gpus_per_task or 0,
            **options,
        )
    raise ParameterError(
        f"executor={executor!r} is not allowed; expected one of {EXECUTORS} or an "
        "Executor instance"
    )
