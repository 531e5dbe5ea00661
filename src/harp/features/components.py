"""Features as components: what a selector computes from examples, as an object.

A selector that needs features takes a component as a parameter (``features=``), in
the manner of scikit-learn's nested estimators, TRAK's injected gradient computer and
bergson's collector: ``LESSSelector(features=GradientFeatures(dim=1024))``, or
``selector.set_params(features__dim=1024)``. A component only records its
parameters; the work happens when a selector (or ``harp features``) calls it with a
run context, and every result lands in the context's cache.

:class:`TextFeatures`
    Sentence embeddings (or hashed TF-IDF) of the rows' text: what the text-only
    baselines and HARP's default tree use.
:class:`GradientFeatures`
    Projected per-example LoRA gradients of a model, taken at the checkpoints of a
    short LESS-style warm-up on the pool: what LESS, SPICE, Fisher, DPP, the
    gradient-norm baseline and HARP's gradient tree use.
:class:`HiddenStateFeatures`
    Position-weighted mean last-layer hidden states of the model itself: what RDS+
    uses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from harp.core.context import RunContext
from harp.core.params import Interval, Options, Parametrized, validate_params
from harp.core.records import ExampleSet
from harp.features.store import FeatureStore

if TYPE_CHECKING:  # pragma: no cover
    from harp.training.warmup import Checkpoint

__all__ = [
    "AUTO_GRADIENT_DIM",
    "FEATURE_KINDS",
    "FeatureComponent",
    "GradientFeatures",
    "HiddenStateFeatures",
    "TextFeatures",
    "make_features",
    "unit_rows",
]

log = logging.getLogger(__name__)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero).

    Examples
    --------
    >>> unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


class FeatureComponent(Parametrized):
    """Base of the feature components: parameters, checks, equality by parameters."""

    #: The component's name in ``FEATURE_KINDS`` (and on the command line).
    kind: ClassVar[str] = ""

    def check(self) -> None:
        """Validate the parameters against the class's constraint table."""
        validate_params(
            type(self).__name__,
            self.get_params(deep=False),
            self._parameter_constraints,
        )

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, FeatureComponent)
        return self.get_params(deep=False) == other.get_params(deep=False)

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self)))

    def pool_and_target(
        self,
        pool: ExampleSet,
        target: ExampleSet,
        context: RunContext,
        *,
        model_dir: Path | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features of the pool and of the target in one space (float64 rows)."""
        raise NotImplementedError  # pragma: no cover


class TextFeatures(FeatureComponent):
    """Sentence embeddings of ``prompt + response``, or hashed TF-IDF.

    Parameters
    ----------
    encoder : {"auto", "minilm", "tfidf"}, default="auto"
        ``"minilm"``: all-MiniLM-L6-v2 (offline, on the run's device);
        ``"tfidf"``: hashed TF-IDF + SVD, fitted on the sets embedded together;
        ``"auto"``: MiniLM when installed, else TF-IDF.
    batch_size : int, default=16
        Texts per forward pass of the sentence encoder (on a CPU, 16 embeds a real
        pool 1.3x faster than 64: texts batched together are padded to the longest).

    Examples
    --------
    >>> from harp.core import RunContext
    >>> features = TextFeatures(encoder="tfidf")
    >>> pool, target = features.embed_sets(
    ...     [["add two numbers", "a poem about the sea"], ["add three numbers"]],
    ...     RunContext())
    >>> pool.shape[0], target.shape[0]
    (2, 1)
    """

    kind = "text"
    _parameter_constraints = {
        "encoder": [Options("auto", "minilm", "tfidf")],
        "batch_size": [Interval(int, 1, None)],
    }

    def __init__(self, *, encoder: str = "auto", batch_size: int = 16) -> None:
        self.encoder = encoder
        self.batch_size = batch_size

    def resolved_encoder(self) -> str:
        """``"minilm"`` or ``"tfidf"``: what ``encoder`` resolves to here."""
        from harp.features.text import resolve_encoder

        return resolve_encoder(self.encoder)

    def device_for(self, context: RunContext) -> str:
        """Where the embedding runs: TF-IDF on the CPU, an encoder on the device."""
        return "cpu" if self.resolved_encoder() == "tfidf" else context.device_name

    def embed_sets(
        self, text_sets: Sequence[Sequence[str] | ExampleSet], context: RunContext
    ) -> list[np.ndarray]:
        """Embed several lists of texts (or example sets) in one space (float32, unit).

        TF-IDF fits its vocabulary and IDF on all the lists together; a sentence
        encoder embeds each text on its own (memoised in the process), and an
        example set through its cached feature store (:meth:`extract`), so the next
        command on the same pool does not encode it again.
        """
        from harp.features.text import TextFeaturizer

        self.check()
        sets = [t for t in text_sets if isinstance(t, ExampleSet)]
        if self.resolved_encoder() != "tfidf" and len(sets) == len(text_sets):
            return [
                self.extract(t, context).read().astype(np.float32, copy=False)
                for t in sets
            ]
        texts = [t.texts if isinstance(t, ExampleSet) else t for t in text_sets]
        featurizer = TextFeaturizer(
            encoder=self.resolved_encoder(),
            batch_size=self.batch_size,
            progress=context.progress,
            device=self.device_for(context),
            precision=context.encoder_dtype_name,
        )
        return featurizer.embed_sets(*texts)

    def extract(self, examples: ExampleSet, context: RunContext) -> FeatureStore:
        """The embeddings of ``examples`` in a feature store under the context's cache.

        ``encoder="tfidf"`` fits its IDF on ``examples`` alone: such a store is
        comparable only with itself (use :meth:`embed_sets` for several sets).
        """
        from harp.features.extract import extract_embedding_features

        self.check()
        return extract_embedding_features(
            examples,
            context.cache_dir / "features",
            encoder=self.encoder,
            batch_size=self.batch_size,
            context=context,
        )

    def pool_and_target(
        self,
        pool: ExampleSet,
        target: ExampleSet,
        context: RunContext,
        *,
        model_dir: Path | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pool and target embeddings in one space, as float64 arrays.

        TF-IDF embeds both together (one vocabulary); a sentence encoder goes
        through cached feature stores (a rerun does not encode again).
        """
        x, t = self.embed_sets([pool, target], context)
        return np.asarray(x, np.float64), np.asarray(t, np.float64)


#: What ``GradientFeatures(dim="auto")`` projects to, by device kind.
AUTO_GRADIENT_DIM = {"gpu": 8192, "cpu": 1024}
_AUTO_DIM_LOGGED: set[str] = set()


class GradientFeatures(FeatureComponent):
    """Projected per-example LoRA gradients at the checkpoints of a LESS warm-up.

    The warm-up LoRA-trains the model for ``warmup_epochs`` on a seeded
    ``warmup_fraction`` of the pool (LESS's recipe: adapters on the attention
    projections) and keeps ``n_checkpoints`` checkpoints with their Adam state; the
    gradient of each row's response loss with respect to the adapter, at a
    checkpoint, is randomly projected to ``dim`` dimensions. Warm-ups and feature
    stores are cached in the run context's cache folder by fingerprint, so every
    method whose settings agree shares them.

    Parameters
    ----------
    dim : int or "auto", default="auto"
        Random-projection dimension of the gradients (0 keeps them whole).
        ``"auto"`` is sized to the hardware (:data:`AUTO_GRADIENT_DIM`): LESS's
        8192 on a GPU, 1024 on a CPU, where a wider projection multiplies the cost
        of every store for little gain on the models a CPU can run; the choice is
        logged once.
    projection : {"factored", "rademacher", "gaussian"}, default="factored"
        ``"factored"``: every parameter block is projected on both sides before
        the per-token outer product (LoGra; the per-example gradient is never
        formed, the width is at most ``dim``; see
        :class:`~harp.features.factored.FactoredProjector` for the JL guarantee).
        ``"rademacher"`` / ``"gaussian"``: a dense projection of the whole
        flattened gradient (LESS's and TRAK's; its cost grows with the number of
        trainable coordinates times ``dim``). Seeded from the run's
        ``"projection"`` stream.
    warmup_fraction : float, default=0.05
        Share of the pool the warm-up trains on (LESS uses 5%).
    warmup_epochs : float, default=4.0
        Warm-up epochs over that share.
    warmup_lr : float or None, default=None
        Peak learning rate of the warm-up; None: the
        :class:`~harp.training.TrainConfig` default (``3e-3``, sized for harp's
        tiny proxy). A pretrained model wants its own finetuning rate (``2e-4``
        for LoRA on a small Llama; LESS used ``2e-5``).
    n_checkpoints : int, default=4
        Warm-up checkpoints kept (evenly spaced; the last is the end of training).
    lora_r : int, default=16
        Rank of the warm-up's LoRA adapter.
    lora_alpha : float, default=32.0
        Its scaling numerator (updates scale by ``lora_alpha / lora_r``).
    lora_target_modules : tuple of str or None, default=None
        Modules adapted; None means the attention projections of Llama-style models
        (``q_proj, k_proj, v_proj, o_proj``, LESS's choice), or every linear layer
        for other architectures; ``("all-linear",)`` adapts every linear layer.
    batch_size : int, default=16
        Rows per warm-up step, and of a fixed per-example-gradient batch.
    max_length : int, default=256
        Token limit of a row.
    max_tokens : int, "auto" or None, default="auto"
        Token budget of a per-example-gradient batch (rows packed longest first):
        ``"auto"`` measures it from the free memory of a GPU on one probe batch and
        keeps fixed batches of ``batch_size`` rows on the CPU; None: fixed batches
        everywhere. It changes how fast, not what is computed.
    max_rows : int, default=256
        Most rows of a batch packed by a token budget (:meth:`gradient_batch_rows`).
        A batch's per-example gradients cost some 30,000 small torch operations
        whatever its size (hooks, casts and projections on every adapted layer of
        SmolLM2, counted on the CPU), which a GPU pays in launches: 16 short rows
        leave it waiting on Python, so a packed batch takes as many rows as the
        token budget holds, up to this many.

    Examples
    --------
    >>> features = GradientFeatures(dim=1024, n_checkpoints=1)
    >>> features.get_params()["dim"]
    1024
    >>> GradientFeatures().resolved_dim(RunContext(device="cpu"))
    1024
    """

    kind = "gradient"
    _parameter_constraints = {
        "dim": [Options("auto"), Interval(int, 0, None)],
        "projection": [Options("factored", "rademacher", "gaussian")],
        "warmup_fraction": [Interval(float, 0.0, 1.0, closed="right")],
        "warmup_epochs": [Interval(float, 0.0, None, closed="neither")],
        "warmup_lr": [None, Interval(float, 0.0, None, closed="neither")],
        "n_checkpoints": [Interval(int, 1, None)],
        "lora_r": [Interval(int, 1, None)],
        "lora_alpha": [Interval(float, 0.0, None, closed="neither")],
        "lora_target_modules": [None, tuple, list],
        "batch_size": [Interval(int, 1, None)],
        "max_length": [Interval(int, 8, None)],
        "max_tokens": [None, Options("auto"), Interval(int, 1, None)],
        "max_rows": [Interval(int, 1, None)],
    }

    def __init__(
        self,
        *,
        dim: int | str = "auto",
        projection: str = "factored",
        warmup_fraction: float = 0.05,
        warmup_epochs: float = 4.0,
        warmup_lr: float | None = None,
        n_checkpoints: int = 4,
        lora_r: int = 16,
        lora_alpha: float = 32.0,
        lora_target_modules: tuple[str, ...] | None = None,
        batch_size: int = 16,
        max_length: int = 256,
        max_tokens: int | str | None = "auto",
        max_rows: int = 256,
    ) -> None:
        self.dim = dim
        self.projection = projection
        self.warmup_fraction = warmup_fraction
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.n_checkpoints = n_checkpoints
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_target_modules = lora_target_modules
        self.batch_size = batch_size
        self.max_length = max_length
        self.max_tokens = max_tokens
        self.max_rows = max_rows

    def gradient_batch_rows(self, context: RunContext) -> int:
        """Most rows of a per-example-gradient batch on ``context``'s device.

        ``batch_size`` for fixed batches (``max_tokens=None``, or ``"auto"`` on a
        CPU, where a batch's cost is its arithmetic); with a token budget, as many
        as it holds up to ``max_rows`` (at least ``batch_size``).
        """
        on_cpu = context.torch_device().type == "cpu"
        if self.max_tokens is None or (self.max_tokens == "auto" and on_cpu):
            return int(self.batch_size)
        return max(int(self.batch_size), int(self.max_rows))

    def resolved_dim(self, context: RunContext) -> int:
        """The projection dimension on ``context``'s device (``dim="auto"`` sized)."""
        if self.dim != "auto":
            return int(self.dim)
        kind = "cpu" if context.torch_device().type == "cpu" else "gpu"
        dim = AUTO_GRADIENT_DIM[kind]
        if kind not in _AUTO_DIM_LOGGED:
            _AUTO_DIM_LOGGED.add(kind)
            log.info(
                "gradient features: dim='auto' -> %d on this %s (%s); set "
                "features__dim (-p dim=N) to choose",
                dim,
                kind.upper(),
                ", ".join(
                    f"{v} on a {k.upper()}" for k, v in AUTO_GRADIENT_DIM.items()
                ),
            )
        return dim

    def announce(
        self,
        method: str,
        n_pool: int,
        gradients_per_checkpoint: int,
        context: RunContext,
    ) -> None:
        """Log, before any work, what ``method`` will compute and how to make it less.

        The time of each part is said once its first batches are measured (the
        progress estimate lines); this line says up front how much there is.
        """
        warm_rows = max(1, round(float(self.warmup_fraction) * n_pool))
        log.info(
            "%s: a LoRA warm-up on %d pool rows (%g epochs, %d checkpoints), then "
            "%d per-example gradients projected to %d dims on %s; to make it "
            "cheaper: -p n_checkpoints=1, a smaller -p dim, or a GPU",
            method,
            warm_rows,
            float(self.warmup_epochs),
            self.n_checkpoints,
            gradients_per_checkpoint * self.n_checkpoints,
            self.resolved_dim(context),
            context.device_name,
        )

    def warmup(
        self, model_dir: Path, pool: ExampleSet, context: RunContext
    ) -> list[Checkpoint]:
        """The warm-up checkpoints of ``model_dir`` on ``pool`` (cached), in order."""
        from harp.training.config import TrainConfig
        from harp.training.warmup import warmup

        self.check()
        targets = self.lora_target_modules
        config = TrainConfig(
            epochs=float(self.warmup_epochs),
            lr=TrainConfig.lr if self.warmup_lr is None else float(self.warmup_lr),
            batch_size=self.batch_size,
            lora_r=self.lora_r,
            lora_alpha=float(self.lora_alpha),
            lora_target_modules=None if targets is None else tuple(targets),
            seed=context.int_seed("warmup"),
        )
        result = warmup(
            model_dir,
            pool,
            context.cache_dir / "warmup",
            fraction=float(self.warmup_fraction),
            config=config,
            n_checkpoints=self.n_checkpoints,
            context=context,
            by_fingerprint=True,
        )
        return result.checkpoints

    def extract(
        self,
        examples: ExampleSet,
        context: RunContext,
        *,
        model_dir: Path,
        checkpoint: Checkpoint | None = None,
        optimizer: str = "sgd",
    ) -> FeatureStore:
        """The projected gradients of ``examples`` at ``checkpoint``, in a store.

        Parameters
        ----------
        examples : ExampleSet
            Rows to featurise.
        context : RunContext
            Device, dtype, seeds (``"projection"`` stream), cache, executor.
        model_dir : Path
            The base model folder.
        checkpoint : Checkpoint or None, default None
            A warm-up checkpoint (:meth:`warmup`); None takes the gradients of a
            fresh, seeded adapter on the base model.
        optimizer : {"sgd", "adam"}, default "sgd"
            ``"adam"`` preconditions with the checkpoint's Adam state (LESS's pool
            features).
        """
        from harp.features.extract import extract_gradient_features

        self.check()
        return extract_gradient_features(
            model_dir,
            examples,
            context.cache_dir / "features",
            checkpoint=checkpoint,
            dim=self.resolved_dim(context),
            projection=self.projection,
            seed=context.int_seed("projection"),
            optimizer=optimizer,
            batch_size=self.gradient_batch_rows(context),
            max_length=self.max_length,
            max_tokens=self.max_tokens,
            context=context,
        )

    def projector(self, model: Any, context: RunContext) -> Any:
        """The projection these features use for ``model``'s gradients (None: none)."""
        from harp.features.projection import make_projector

        return make_projector(
            model,
            self.resolved_dim(context),
            kind=self.projection,
            seed=context.int_seed("projection"),
        )

    def pool_and_target(
        self,
        pool: ExampleSet,
        target: ExampleSet,
        context: RunContext,
        *,
        model_dir: Path | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Unit-length gradients of pool and target at the warm-up's end (float64).

        A model that has seen the pool's tasks tells rows that follow its majority
        rule from rows that contradict it, where the untouched base cannot.
        """
        if model_dir is None:
            raise ValueError("GradientFeatures need the model folder (model_dir=...)")
        last = self.warmup(model_dir, pool, context)[-1]
        x = self.extract(pool, context, model_dir=model_dir, checkpoint=last).read()
        t = self.extract(target, context, model_dir=model_dir, checkpoint=last).read()
        return unit_rows(x.astype(np.float64)), unit_rows(t.astype(np.float64))


class HiddenStateFeatures(FeatureComponent):
    """Position-weighted mean last-layer hidden states of the model, unit length.

    Every row is read by the model as finetuning reads it (``format_prompt(prompt)``,
    response, EOS); the hidden states that feed the LM head are averaged with weights
    proportional to the token position (1 for the first token, ``T`` for the last; the
    weights sum to 1, padding has none), then scaled to unit length. No warm-up and
    no gradient: one forward pass per row, on the run context's device and dtype.
    Stores are cached in the context's cache folder by model fingerprint, data hash
    and ``max_length``.

    Parameters
    ----------
    batch_size : int, default=16
        Rows per forward pass. It changes how fast, not what is computed.
    max_length : int, default=512
        Token limit of a row (capped by the model's position limit); longer rows lose
        the start of their prompt first, as in finetuning.

    See Also
    --------
    harp.features.hidden.hidden_state_embeddings : the computation.

    Examples
    --------
    >>> features = HiddenStateFeatures(max_length=256)
    >>> features.get_params()
    {'batch_size': 16, 'max_length': 256}
    """

    kind = "hidden"
    _parameter_constraints = {
        "batch_size": [Interval(int, 1, None)],
        "max_length": [Interval(int, 8, None)],
    }

    def __init__(self, *, batch_size: int = 16, max_length: int = 512) -> None:
        self.batch_size = batch_size
        self.max_length = max_length

    def extract(
        self, examples: ExampleSet, context: RunContext, *, model_dir: Path
    ) -> FeatureStore:
        """The embeddings of ``examples`` by the model in ``model_dir``, in a store.

        Parameters
        ----------
        examples : ExampleSet
            Rows to embed.
        context : RunContext
            Device, dtype, cache folder (``features/``), progress, executor.
        model_dir : Path
            The model folder, as :func:`harp.models.resolve_model` gives it.
        """
        from harp.features.extract import extract_hidden_features

        self.check()
        return extract_hidden_features(
            model_dir,
            examples,
            context.cache_dir / "features",
            batch_size=self.batch_size,
            max_length=self.max_length,
            context=context,
        )

    def pool_and_target(
        self,
        pool: ExampleSet,
        target: ExampleSet,
        context: RunContext,
        *,
        model_dir: Path | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Unit-length embeddings of pool and target by one model (float64)."""
        if model_dir is None:
            raise ValueError(
                "HiddenStateFeatures need the model folder (model_dir=...)"
            )
        x = self.extract(pool, context, model_dir=model_dir).read()
        t = self.extract(target, context, model_dir=model_dir).read()
        return unit_rows(x.astype(np.float64)), unit_rows(t.astype(np.float64))


#: Feature components by the name a command line or a YAML file gives them.
FEATURE_KINDS: dict[str, type[FeatureComponent]] = {
    "text": TextFeatures,
    "gradient": GradientFeatures,
    "hidden": HiddenStateFeatures,
}


def make_features(kind: str, **params: Any) -> FeatureComponent:
    """The component registered as ``kind`` (``"text"``, ``"gradient"``, ``"hidden"``).

    Raises
    ------
    harp.core.errors.ParameterError
        For an unknown kind or parameter.
    """
    from harp.core.errors import ParameterError

    if kind not in FEATURE_KINDS:
        raise ParameterError(
            f"features={kind!r} is not known; expected one of "
            + ", ".join(sorted(FEATURE_KINDS))
        )
    component = FEATURE_KINDS[kind]()
    component.set_params(**params)
    return component
