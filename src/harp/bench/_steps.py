"""Steps shared by harp demo and harp bench: the cached proxy, a step cache."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from harp._utils.hashing import fingerprint
from harp._utils.io import atomic_write_json

__all__ = ["PROXY_MARKER", "ensure_proxy", "proxy_fingerprint"]

log = logging.getLogger(__name__)

#: File in a proxy folder recording what it was built from.
PROXY_MARKER = "harp-proxy.json"


def proxy_fingerprint(directory: Path) -> str:
    """The fingerprint a proxy folder's marker records (what it was built from)."""
    return json.loads((Path(directory) / PROXY_MARKER).read_text())["fingerprint"]


def ensure_proxy(
    corpus,
    directory: Path,
    *,
    seed: int,
    pretrain: dict[str, Any],
    progress: bool = False,
) -> Path:
    """Build and pretrain the proxy on ``corpus`` unless ``directory`` already holds it.

    The folder is reused only when its marker file records the same corpus hash, model
    shape and pretraining arguments; otherwise it is rebuilt. Writing goes to a
    temporary sibling folder that is renamed at the end, so a crash never leaves a
    half-saved model that a rerun would trust.
    """
    from harp.models import ProxyConfig, build_proxy, pretrain_proxy, save_model

    config = ProxyConfig()
    key = fingerprint(
        "proxy",
        content=corpus.content_hash(),
        params={"model": config.to_dict(), "pretrain": pretrain},
        seed=seed,
    )
    marker = directory / PROXY_MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text())["fingerprint"] == key:
                log.info("reusing the pretrained proxy in %s", directory)
                return directory
        except (ValueError, KeyError):
            pass
    log.info(
        "pretraining the proxy model (%s steps; cached for reruns)",
        pretrain.get("steps", "default"),
    )
    start = time.perf_counter()
    model, tokenizer = build_proxy(config, seed=seed)
    model = pretrain_proxy(
        model, tokenizer, corpus, seed=seed, progress=progress, **pretrain
    )
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    save_model(model, tokenizer, tmp)
    atomic_write_json(
        tmp / PROXY_MARKER,
        {
            "fingerprint": key,
            "model": config.to_dict(),
            "pretrain": pretrain,
            "seed": seed,
            "corpus_rows": len(corpus),
            "seconds": round(time.perf_counter() - start, 2),
        },
    )
    if directory.exists():
        import shutil

        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory
