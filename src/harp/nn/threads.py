"""How many CPU threads a model's work gets: all free cores, one beside busy jobs.

torch splits every op of a CPU model over its intra-op threads. For harp's tiny proxy
(0.9M parameters) a second thread helps a little on a quiet machine, but beside other
CPU-bound jobs it mostly waits for a core: measured on a 2-core machine with two
busy-loop processes beside it, 60 LoRA steps of the proxy took 17.6 s wall and 17.4 s
CPU with torch's two threads against 7.9 s and 5.1 s with one (quiet: 3.7 s / 7.0 s
against 4.7 s / 4.7 s). So each time a model is loaded the cores other processes are
running on right now are counted (Linux: the runnable count of ``/proc/loadavg``,
the least of a few samples, this process excluded): a model under
:data:`SMALL_MODEL_PARAMETERS` gets torch's threads when that many cores are free and
one thread otherwise; a larger model gets the free cores, at most torch's threads.
harp's results do not depend on the thread count (tests/reliability/test_determinism).

``$HARP_THREADS`` overrides the policy for a whole process (the CLI has no flag for
it): a count, or ``torch`` to leave torch's own setting alone.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from harp.core.errors import ParameterError

__all__ = ["SMALL_MODEL_PARAMETERS", "THREADS_ENV", "apply_thread_policy"]

logger = logging.getLogger(__name__)

#: Environment variable that overrides the policy: a count, or "torch".
THREADS_ENV = "HARP_THREADS"

#: Models with fewer parameters than this run on one CPU thread.
SMALL_MODEL_PARAMETERS = 20_000_000

#: torch's thread count as this process found it (before harp changed it): what
#: larger models get back. A worker process of harp's executor sets its own first.
_initial_threads: int | None = None


def _free_cores() -> int | None:
    """Cores no other process is running on now (None where it cannot be told)."""
    try:
        cores = len(os.sched_getaffinity(0))
        samples = []
        for _ in range(5):
            with open("/proc/loadavg", encoding="ascii") as handle:
                samples.append(int(handle.read().split()[3].split("/")[0]))
            time.sleep(0.005)
    except (AttributeError, OSError, ValueError, IndexError):
        return None
    # The least sample: this process's own threads may still be finishing an op.
    others = max(0, min(samples) - 1)
    return max(0, cores - others)


def apply_thread_policy(model: Any, threads: int | None = None) -> int:
    """Set torch's intra-op threads for work on ``model``; return the count.

    Parameters
    ----------
    model : torch.nn.Module
        The model about to run. Nothing changes when it is not on the CPU.
    threads : int or None, default None
        A count to use as is (``RunContext.threads``); None applies
        ``$HARP_THREADS`` or else the policy (module docstring).
    """
    import torch

    global _initial_threads
    if _initial_threads is None:
        _initial_threads = torch.get_num_threads()
    first = next(iter(model.parameters()), None)
    if first is not None and first.device.type != "cpu":
        return torch.get_num_threads()
    env = os.environ.get(THREADS_ENV, "").strip()
    if threads is None and env:
        if env == "torch":
            return torch.get_num_threads()
        if not env.isdigit() or int(env) < 1:
            raise ParameterError(
                f"${THREADS_ENV}={env!r} is not allowed; expected a count >= 1 or "
                "'torch'"
            )
        threads = int(env)
    if threads is None:
        n_params = sum(p.numel() for p in model.parameters())
        free = _free_cores()
        if free is None:  # cannot tell: the safe choice for small models
            free = 1 if n_params < SMALL_MODEL_PARAMETERS else _initial_threads
        if n_params < SMALL_MODEL_PARAMETERS:
            threads = _initial_threads if free >= _initial_threads else 1
        else:
            threads = max(1, min(_initial_threads, free))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        logger.debug("torch intra-op threads: %d", threads)
    return threads
