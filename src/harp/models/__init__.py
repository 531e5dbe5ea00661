"""Models: the tiny proxy, loading local Hugging Face models, LoRA, fingerprints.

Nothing in this package imports torch, transformers or peft at import time; they are
imported inside the functions that need them.
"""

from harp.models.choice import resolve_model
from harp.models.loading import attach_lora, load_model, model_fingerprint, save_model
from harp.models.proxy import ProxyConfig, build_proxy, pretrain_proxy
from harp.models.tokenizer import build_char_tokenizer

__all__ = [
    "ProxyConfig",
    "attach_lora",
    "build_char_tokenizer",
    "build_proxy",
    "load_model",
    "model_fingerprint",
    "pretrain_proxy",
    "resolve_model",
    "save_model",
]
