"""features stage: what selectors compute from examples (text embeddings, ...).

Heavy libraries (scikit-learn, sentence-transformers) are imported inside the functions
that use them, so importing this package stays fast.
"""

from harp.features.text import (
    ENCODERS,
    TextFeaturizer,
    embed_texts,
    minilm_available,
    resolve_encoder,
)

__all__ = [
    "ENCODERS",
    "TextFeaturizer",
    "embed_texts",
    "minilm_available",
    "resolve_encoder",
]
