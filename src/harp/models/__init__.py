"""Models: loading local Hugging Face models onto the run's device, LoRA, the proxy.

Nothing in this package imports torch, transformers or peft at import time; they are
imported inside the functions that need them.
"""

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
    "PROXY",
    "ProxyConfig",
    "attach_lora",
    "build_char_tokenizer",
    "build_proxy",
    "check_model_dir",
    "ensure_proxy",
    "is_peft",
    "load_model",
    "load_tokenizer",
    "model_fingerprint",
    "pretrain_proxy",
    "proxy_fingerprint",
    "quiet_transformers",
    "resolve_model",
    "save_model",
]
