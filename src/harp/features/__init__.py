"""features stage: what selectors compute from examples.

The feature components that selectors take as parameters (:class:`TextFeatures`,
:class:`GradientFeatures`, :class:`HiddenStateFeatures`), built on text embeddings
(offline sentence encoder or hashed TF-IDF), exact per-example LoRA gradients with a
seeded random projection, a model's pooled last-layer hidden states,
and the on-disk feature store (memory-mapped shards plus a manifest) that extraction
fills resumably. Heavy libraries (torch,
scikit-learn, sentence-transformers) are imported inside the functions that use them,
so importing this package stays fast.
"""

from harp.features.components import (
    AUTO_GRADIENT_DIM,
    FEATURE_KINDS,
    FeatureComponent,
    GradientFeatures,
    HiddenStateFeatures,
    TextFeatures,
    make_features,
    unit_rows,
)
from harp.features.extract import (
    extract_embedding_features,
    extract_gradient_features,
    extract_hidden_features,
    gradient_spec,
    hidden_spec,
)
from harp.features.gradients import (
    gradient_dim,
    per_sample_gradients,
    per_sample_gradients_loop,
    trainable_names,
)
from harp.features.hidden import hidden_state_embeddings
from harp.features.projection import RandomProjector
from harp.features.store import (
    FeatureStore,
    estimate_store_bytes,
    fill_store,
    format_bytes,
)
from harp.features.text import (
    ENCODERS,
    TextFeaturizer,
    embed_texts,
    minilm_available,
    resolve_encoder,
)

__all__ = [
    "ENCODERS",
    "FEATURE_KINDS",
    "FeatureComponent",
    "AUTO_GRADIENT_DIM",
    "GradientFeatures",
    "HiddenStateFeatures",
    "TextFeatures",
    "make_features",
    "unit_rows",
    "FeatureStore",
    "RandomProjector",
    "TextFeaturizer",
    "embed_texts",
    "estimate_store_bytes",
    "extract_embedding_features",
    "extract_gradient_features",
    "extract_hidden_features",
    "fill_store",
    "format_bytes",
    "gradient_dim",
    "gradient_spec",
    "hidden_spec",
    "hidden_state_embeddings",
    "minilm_available",
    "per_sample_gradients",
    "per_sample_gradients_loop",
    "resolve_encoder",
    "trainable_names",
]
