"""The run context: where the work runs (device, dtype), its seeds, cache and display.

One :class:`RunContext` travels from the entry point (``harp.select``, the CLI, a
bench) down to every stage that loads a model, builds a tensor, draws a random number
or writes a cache file. Nothing else decides where a tensor lives: a model is placed
once, on ``context.device`` in ``context.dtype``, and everything downstream creates its
tensors on the model's device.

Run settings (device, dtype, progress, cache folder, executor) are not part of what a
selection computes: they never enter a selection's fingerprint. The seed is: it is
kept as a concrete integer (``None`` is turned into fresh entropy once, by
:meth:`RunContext.with_seed`) and every random stream is a named child of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harp.core.errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DEVICES",
    "DTYPES",
    "GPU_ADAPTERS_AT_ONCE",
    "RESOLVED_DTYPES",
    "STREAMS",
    "RunContext",
    "resolve_seed",
    "torch_dtype_named",
]

#: Device names a context accepts (``cuda:N`` picks the N-th visible GPU).
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
#: Dtype policies a context accepts.
DTYPES = ("auto", "fp32", "bf16", "fp16")

#: The named random streams. Each is an independent child of the run's seed, so
#: changing how one stage draws numbers never changes another stage's draws.
STREAMS = (
    "bootstrap",  # HARP: bootstrap over target items of each effect's variance
    "engine",  # the log-det engine's stochastic greedy sampler
    "lora",  # initialisation of a fresh LoRA adapter (gradient features)
    "online",  # SPICE's online schedule: candidate order and proxy-step batches
    "oracle",  # HARP: the recipe seed of every train-evaluate call
    "projection",  # the random projection of gradients
    "proxy",  # the built-in proxy: its pretraining sample and its training
    "replicate",  # HARP: the recipe seed of a leaf's second call (training noise)
    "search",  # HARP: random search and the flat ablation's first leaves
    "tree",  # HARP: k-means of the node / parent / leaf hierarchy
    "warmup",  # the LESS warm-up: its row sample and its training
)

#: LoRA finetunes trained together on a GPU by default (``adapters_at_once=None``).
GPU_ADAPTERS_AT_ONCE = 8

_CUDA = re.compile(r"^cuda(:(\d+))?$")
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
#: The dtype names a resolved policy can take.
RESOLVED_DTYPES = tuple(_DTYPE_NAMES)


def torch_dtype_named(name: str) -> torch.dtype:
    """The torch dtype of a resolved dtype name (``"fp32"``, ``"bf16"``, ``"fp16"``)."""
    import torch

    return getattr(torch, _DTYPE_NAMES[name])


def _cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX)."""
    import torch

    # Private helpers of torch.cpu (torch >= 2.1); a torch without them: say no.
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(torch.cpu, name)()) for name in checks)
    except (AttributeError, RuntimeError):
        return False


def resolve_seed(seed: int | None) -> int:
    """A concrete seed: ``seed`` itself, or fresh OS entropy (a 128-bit int) for None.

    Examples
    --------
    >>> resolve_seed(7)
    7
    >>> resolve_seed(None) >= 0
    True
    """
    if seed is None:
        return int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError(
            f"seed={seed!r} is not allowed; expected None or an int >= 0"
        )
    return int(seed)


def _stream_key(name: str) -> int:
    if name not in STREAMS:
        raise ValueError(
            f"unknown random stream {name!r}; known streams: {', '.join(STREAMS)}"
        )
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "little")


@dataclass(frozen=True)
class RunContext:
    """Device, dtype, seed, cache folder, progress display and executor of a run.

    Parameters
    ----------
    device : str, default "auto"
        ``"auto"`` (the first CUDA device when torch sees one, else the CPU),
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Resolved when first needed, in the
        process that needs it, so a Ray task with its own GPU resolves ``"auto"`` to
        that GPU.
    dtype : {"auto", "fp32", "bf16", "fp16"}, default "auto"
        Parameter dtype of the models a run loads. ``"auto"``: bf16 on a GPU that
        supports it, fp32 elsewhere. Losses, gradients of LoRA adapters and
        accumulations are computed in fp32 whatever the weights' dtype. Inference-only
        encoders (the sentence encoder) compute in :attr:`encoder_dtype_name`.
    seed : int, default 0
        Root of every random stream (:meth:`rng`, :meth:`int_seed`). Use
        :meth:`with_seed` to set it from a selector's seed (None draws fresh entropy).
    cache_dir : str or Path, default ".harp-cache"
        Where proxies, warm-ups, feature stores and train-evaluate results are cached.
    progress : bool, default False
        Show progress bars.
    executor : None, "local", "ray" or harp.execution.Executor, default None
        Where independent tasks (feature shards, HARP's leaf calls) run; None runs
        them one after another in this process.
    trust_remote_code : bool, default False
        Let every model this run loads execute the Python code of its folder
        (``auto_map`` models transformers does not know). Off: such a model is
        refused with one line.
    allow_pickle : bool, default False
        Let every model this run loads come from pickle weights
        (``pytorch_model.bin``). Off: only safetensors are read.
    threads : int or None, default None
        torch's CPU threads for the models this run loads. None: one thread for
        models under 20M parameters (too small to split, and a second thread only
        waits beside other jobs), torch's default for larger ones
        (:mod:`harp.nn.threads`).
    adapters_at_once : int or None, default None
        How many LoRA finetunes a train-and-score utility trains at once, in one
        batched forward (HARP's leaf calls, a bench's finetunes, of any recipe
        seeds; a waiting finetune takes the place of one that ends: see
        :func:`harp.training.finetune_stacked`). None: :data:`GPU_ADAPTERS_AT_ONCE`
        on a GPU, where one small finetune leaves the device idle, and 1 on a CPU,
        which is busy already. Halved automatically when the device runs out of
        memory. Results are the same up to floating-point rounding.

    Examples
    --------
    >>> ctx = RunContext(device="cpu", seed=3)
    >>> ctx.device_name, ctx.dtype_name
    ('cpu', 'fp32')
    >>> ctx.int_seed("warmup") == RunContext(seed=3).int_seed("warmup")
    True
    >>> ctx.int_seed("warmup") != ctx.int_seed("projection")
    True
    """

    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    cache_dir: Path = field(default=Path(".harp-cache"))
    progress: bool = False
    executor: Any = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    threads: int | None = None
    adapters_at_once: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu") or _CUDA.match(self.device)
        ):
            raise ParameterError(
                f"device={self.device!r} is not allowed; expected one of "
                + ", ".join(DEVICES)
            )
        if self.dtype not in DTYPES:
            raise ParameterError(
                f"dtype={self.dtype!r} is not allowed; expected one of "
                + ", ".join(DTYPES)
            )
        object.__setattr__(self, "seed", resolve_seed(self.seed))
        object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser())
        for name in ("threads", "adapters_at_once"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ParameterError(
                    f"{name}={value!r} is not allowed; expected None or an int >= 1"
                )
        for name in ("progress", "trust_remote_code", "allow_pickle"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ParameterError(
                    f"{name}={getattr(self, name)!r} is not allowed; expected a bool"
                )

    # -- copies ---------------------------------------------------------------------
    def replace(self, **changes: Any) -> RunContext:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def with_seed(self, seed: int | None) -> RunContext:
        """A copy whose root seed is ``seed`` (None: fresh entropy, drawn once here)."""
        return self.replace(seed=resolve_seed(seed))

    def for_worker(self) -> RunContext:
        """The copy a task carries to another process.

        Everything but the executor, with the dtype settled here: a CPU driver and a
        GPU worker must agree on it, since cache keys and stores name the dtype.
        The device stays as given ("auto" resolves to the worker's own GPU).
        """
        return self.replace(executor=None, dtype=self.dtype_name)

    def __getstate__(self) -> dict[str, Any]:
        # An executor (a process pool, a Ray handle) does not travel to workers; the
        # dtype travels settled (see for_worker).
        return {**self.__dict__, "executor": None, "dtype": self.dtype_name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)

    # -- seeds ------------------------------------------------------------------------
    def seed_sequence(self, stream: str | None = None) -> np.random.SeedSequence:
        """The root seed sequence, or the named stream's child of it.

        The root (``stream=None``) is ``SeedSequence(seed)``, so ``rng()`` draws what
        ``numpy.random.default_rng(seed)`` draws.
        """
        if stream is None:
            return np.random.SeedSequence(self.seed)
        return np.random.SeedSequence(self.seed, spawn_key=(_stream_key(stream),))

    def rng(self, stream: str | None = None) -> np.random.Generator:
        """A fresh numpy generator of the root or of a named stream."""
        return np.random.default_rng(self.seed_sequence(stream))

    def int_seed(self, stream: str, *, bits: int = 63) -> int:
        """An integer seed of a named stream, for APIs that take ints (torch, sklearn).

        Parameters
        ----------
        stream : str
            One of :data:`STREAMS`.
        bits : int, default 63
            Width of the result: 63 fits ``torch.manual_seed``; pass 32 for
            scikit-learn's ``random_state``.
        """
        if not 1 <= bits <= 64:
            raise ValueError("bits must be in [1, 64]")
        words = self.seed_sequence(stream).generate_state(2, dtype=np.uint32)
        value = (int(words[1]) << 32) | int(words[0])
        return value >> (64 - bits)

    # -- device and dtype -------------------------------------------------------------
    def torch_device(self) -> torch.device:
        """The torch device of this run, checked to exist.

        Raises
        ------
        ParameterError
            When a CUDA device is asked for and torch sees none (or fewer).
        """
        import torch

        if self.device == "cpu":
            return torch.device("cpu")
        available = torch.cuda.is_available()
        if self.device == "auto":
            return torch.device("cuda", 0) if available else torch.device("cpu")
        if not available:
            build = "a CPU-only build" if torch.version.cuda is None else "this build"
            raise ParameterError(
                f"device={self.device!r}: no CUDA device is available (torch "
                f"{torch.__version__} is {build} or no GPU is visible); use "
                "device='cpu' or 'auto' (--device cpu)"
            )
        match = _CUDA.match(self.device)
        assert match is not None
        index = int(match.group(2) or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ParameterError(
                f"device={self.device!r}: only {count} CUDA device(s) are visible "
                f"(cuda:0..cuda:{count - 1})"
            )
        return torch.device("cuda", index)

    @property
    def device_name(self) -> str:
        """The resolved device as a string (``"cpu"``, ``"cuda:0"``)."""
        return str(self.torch_device())

    def torch_dtype(self) -> torch.dtype:
        """The parameter dtype of models in this run (the policy resolved)."""
        return torch_dtype_named(self.dtype_name)

    @property
    def dtype_name(self) -> str:
        """The resolved dtype policy: ``"fp32"``, ``"bf16"`` or ``"fp16"``."""
        if self.dtype != "auto":
            return self.dtype
        device = self.torch_device()
        if device.type == "cuda":
            import torch

            if torch.cuda.is_bf16_supported():
                return "bf16"
        return "fp32"

    @property
    def encoder_dtype_name(self) -> str:
        """Compute dtype of inference-only encoders: ``"fp32"``, ``"bf16"``, ``"fp16"``.

        The sentence encoder keeps fp32 weights and runs under autocast in this
        dtype. An explicit ``dtype`` is used as is; ``"auto"`` is bf16 wherever the
        device computes bf16 natively (a GPU that supports it, a CPU with AVX512-BF16
        or AMX), fp32 elsewhere. On such a 2-core CPU, bf16 embeds the sentences of a
        real 1,500-row pool 2.2x faster than fp32, each within cosine 0.9999 of its
        fp32 embedding; a CPU without it emulates bf16 slower than fp32.
        """
        if self.dtype != "auto" or self.torch_device().type == "cuda":
            return self.dtype_name
        return "bf16" if _cpu_computes_bf16() else "fp32"

    @property
    def adapters_at_once_count(self) -> int:
        """How many LoRA finetunes train together here (``adapters_at_once``
        resolved for this device)."""
        if self.adapters_at_once is not None:
            return self.adapters_at_once
        return GPU_ADAPTERS_AT_ONCE if self.torch_device().type == "cuda" else 1

    def check(self) -> RunContext:
        """Resolve the device and dtype now (fail early, before any work); self."""
        self.torch_dtype()
        return self

    def describe(self) -> dict[str, Any]:
        """The resolved run settings, for logs and metadata sidecars."""
        return {
            "device": self.device_name,
            "dtype": self.dtype_name,
            "seed": self.seed,
            "cache_dir": str(self.cache_dir),
        }
