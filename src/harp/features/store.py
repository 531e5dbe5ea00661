"""On-disk feature store: sharded raw memmaps, a manifest, resumable and checked.

Per-example features (gradients, projected gradients, embeddings) of a large pool do
not fit in memory and take hours to compute, so they are written to disk shard by
shard and can be resumed after a crash. A store is a directory::

    manifest.json        what the features are, their shape and whether all is done
    ids.json             the example ids, in row order (a JSON list of strings)
    shard-00000.bin      rows [0, shard_rows) x dim, raw row-major little-endian
    shard-00000.done     written after the shard's data: its SHA-256 and row range
    shard-00001.bin      rows [shard_rows, 2 * shard_rows) ...
    ...

``manifest.json`` holds the schema version, ``n_rows``, ``dim``, ``dtype``
(``"float16"`` or ``"float32"``), ``shard_rows``, ``n_shards``, ``ids_hash`` (SHA-256
of the ordered ids), ``row_ids`` (the ids file's name), a free-form ``spec`` saying
what the features are (extractor, model fingerprint, LoRA config, projection seed and
dimension, data hash, checkpoint, ...), the ``fingerprint`` of everything that
defines the content (ids, dim, dtype, spec, schema version), the harp version and
``complete``. It is written (via a temporary file and a rename) when the store is
created, with ``complete: false``, and rewritten with ``complete: true`` by
:meth:`FeatureStore.finalize`.

Shards are the unit of resume and of parallel writing: each shard has its own files,
so different processes (or Ray tasks) can write different shards of one store without
touching the same file. A shard counts as written only when its done marker exists,
matches the store's fingerprint and row range, and its data file has the right size;
anything else (no marker, a truncated file) is pending and is computed again.

Nothing is ever unpickled: data files are read with :class:`numpy.memmap` and an
explicit dtype, metadata is JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harp._version import __version__
from harp.core.errors import DataError, HarpError, NumericalError, ParameterError
from harp.core.hashing import SCHEMA_VERSION, fingerprint, sha256_hex, stable_json
from harp.core.io import atomic_open, atomic_write_json
from harp.core.progress import ProgressBar

__all__ = [
    "FeatureStore",
    "StoreRows",
    "estimate_store_bytes",
    "fill_store",
    "format_bytes",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
IDS_FILE = "ids.json"
STORE_FORMAT = "harp.feature_store"

#: Storage dtypes, by name; files are always little-endian.
_DTYPES: dict[str, np.dtype[Any]] = {
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
}

_HINT = "use another --features directory or delete it"


# --------------------------------------------------------------------------- helpers


def _dtype_name(dtype: Any) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise ParameterError(
            f"dtype={dtype!r} is not a dtype; allowed: 'float16', 'float32'"
        ) from exc
    if name not in _DTYPES:
        raise ParameterError(
            f"dtype={dtype!r} is not allowed for a feature store; "
            "allowed: 'float16', 'float32'"
        )
    return name


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ParameterError(f"{name}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise ParameterError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def _normalize_spec(spec: Any) -> dict[str, Any]:
    """The spec as it reads back from JSON (tuples become lists), or ParameterError."""
    if not isinstance(spec, dict):
        raise ParameterError(f"spec must be a dict, got {type(spec).__name__}")
    try:
        text = json.dumps(spec, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ParameterError(
            f"spec must be JSON-serializable (str keys; str, number, bool, None, "
            f"list, dict values; no NaN): {exc}"
        ) from exc
    return json.loads(text)


def _check_ids(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, (str, bytes)):
        raise ParameterError("ids must be a sequence of strings, not one string")
    out = list(ids)
    seen: set[str] = set()
    for i, x in enumerate(out):
        if not isinstance(x, str):
            raise DataError(
                f"example id at row {i} is {type(x).__name__} {x!r}; ids must be str"
            )
        if x in seen:
            raise DataError(
                f"example id {x!r} appears twice (again at row {i}); "
                "the rows of a feature store need unique ids"
            )
        seen.add(x)
    return out


def _ids_hash(ids: Sequence[str]) -> str:
    return sha256_hex(stable_json(list(ids)))


def _content_fingerprint(ids_hash: str, dim: int, dtype: str, spec: dict) -> str:
    return fingerprint(
        "features",
        content=ids_hash,
        params={"dim": dim, "dtype": dtype, "spec": spec},
    )


def _short(value: Any, limit: int = 80) -> str:
    text = stable_json(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_UNSET = object()


def _spec_differences(built: dict, asked: dict) -> tuple[list[str], list[str]]:
    """``key=value`` lists for the keys whose values differ (``<unset>`` if absent)."""
    was, now = [], []
    for key in sorted(set(built) | set(asked)):
        a, b = built.get(key, _UNSET), asked.get(key, _UNSET)
        if a != b or type(a) is not type(b):
            was.append(f"{key}={'<unset>' if a is _UNSET else _short(a)}")
            now.append(f"{key}={'<unset>' if b is _UNSET else _short(b)}")
    return was, now


def _ids_difference(built: Sequence[str], asked: Sequence[str]) -> tuple[str, str]:
    if len(built) != len(asked):
        return f"{len(built)} example ids", f"{len(asked)} example ids"
    for i, (a, b) in enumerate(zip(built, asked)):
        if a != b:
            return f"id {a!r} at row {i}", f"id {b!r} at row {i}"
    return "other example ids", "other example ids"  # pragma: no cover


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def _hash_array(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data.cast("B")).hexdigest()


def _hash_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def estimate_store_bytes(n_rows: int, dim: int, dtype: Any = "float32") -> int:
    """Disk space a feature store of ``n_rows`` x ``dim`` needs, in bytes.

    Counts the data files; the manifest, done markers and id list add a few bytes per
    row at most.

    Parameters
    ----------
    n_rows : int
        Number of examples (rows).
    dim : int
        Feature dimension (columns).
    dtype : {"float32", "float16"}, default "float32"
        Storage dtype.

    Returns
    -------
    int
        ``n_rows * dim * itemsize``.

    Examples
    --------
    >>> estimate_store_bytes(1000, 8192, "float16")
    16384000
    """
    n_rows = _check_int("n_rows", n_rows, 0)
    dim = _check_int("dim", dim, 1)
    return n_rows * dim * _DTYPES[_dtype_name(dtype)].itemsize


def format_bytes(n: int | float) -> str:
    """A byte count in binary units with one decimal, e.g. ``"3.1 GiB"``.

    Examples
    --------
    >>> format_bytes(512)
    '512 B'
    >>> format_bytes(3.1 * 2**30)
    '3.1 GiB'
    """
    n = float(n)
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024.0
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


# ----------------------------------------------------------------------------- store


class FeatureStore:
    """A directory of per-example features, written in shards, read as one matrix.

    Build one with :meth:`create` (which also reopens a matching store to resume),
    read one with :meth:`open`. Do not call the constructor directly.

    Attributes
    ----------
    directory : Path
        The store's directory.
    ids : list of str
        Example ids, in row order.
    n_rows, dim : int
        Shape of the feature matrix.
    dtype : str
        Storage dtype, ``"float16"`` or ``"float32"``.
    shard_rows, n_shards : int
        Rows per shard (the last shard may be shorter) and number of shards.
    spec : dict
        What the features are (as given to :meth:`create`, read back from JSON).
    fingerprint : str
        Hash of the ids, dim, dtype, spec and schema version.
    writable : bool
        Whether this object may write shards (stores from :meth:`open` may not).

    See Also
    --------
    fill_store : the resume loop: compute and write every pending shard, finalize.

    Notes
    -----
    Writing a shard that is already done is a no-op when the new data are
    bit-identical (so a retried task is harmless) and an error otherwise, unless
    ``overwrite=True``. ``shard_rows`` is layout, not content: it is not part of the
    fingerprint, and reopening an existing store keeps the store's own
    ``shard_rows``.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> store = FeatureStore.create(
    ...     d + "/f", ids=["a", "b", "c"], dim=2, spec={"extractor": "demo"},
    ...     shard_rows=2)
    >>> store.pending_shards()
    [0, 1]
    >>> x = np.arange(6, dtype=np.float32).reshape(3, 2)
    >>> for k in store.pending_shards():
    ...     start, stop = store.shard_range(k)
    ...     store.write_shard(k, x[start:stop])
    >>> store.finalize()
    >>> FeatureStore.open(d + "/f", expect_spec={"extractor": "demo"}).read()
    array([[0., 1.],
           [2., 3.],
           [4., 5.]], dtype=float32)
    """

    def __init__(
        self, directory: Path, manifest: dict[str, Any], ids: list[str], writable: bool
    ) -> None:
        self.directory = directory
        self._manifest = manifest
        self.ids = ids
        self.n_rows: int = manifest["n_rows"]
        self.dim: int = manifest["dim"]
        self.dtype: str = manifest["dtype"]
        self.shard_rows: int = manifest["shard_rows"]
        self.n_shards: int = manifest["n_shards"]
        self.spec: dict[str, Any] = manifest["spec"]
        self.fingerprint: str = manifest["fingerprint"]
        self.writable = writable
        self._np_dtype = _DTYPES[self.dtype]
        self._warned: set[int] = set()

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return (
            f"FeatureStore({str(self.directory)!r}, {self.n_rows} x {self.dim} "
            f"{self.dtype}, {self.n_shards} shards, {state})"
        )

    @property
    def complete(self) -> bool:
        """Whether :meth:`finalize` has run (every shard written)."""
        return bool(self._manifest["complete"])

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_rows, dim)``."""
        return (self.n_rows, self.dim)

    @property
    def nbytes(self) -> int:
        """Size of the data files, in bytes."""
        return self.n_rows * self.dim * self._np_dtype.itemsize

    # ------------------------------------------------------------------ create/open

    @classmethod
    def create(
        cls,
        directory: str | Path,
        *,
        ids: Sequence[str],
        dim: int,
        dtype: Any = "float32",
        spec: dict[str, Any],
        shard_rows: int = 4096,
    ) -> FeatureStore:
        """Create a store, or reopen a matching one to resume it.

        Parameters
        ----------
        directory : str or Path
            Where the store lives. Created if missing; an empty directory is used.
        ids : sequence of str
            Unique example ids, in row order.
        dim : int
            Feature dimension (>= 1).
        dtype : {"float32", "float16"}, default "float32"
            Storage dtype. Rows given to :meth:`write_shard` are cast to it.
        spec : dict
            JSON-serializable description of what the features are: extractor kind,
            model fingerprint, LoRA config, projection seed and dimension, data hash,
            checkpoint, ... Two stores with different specs never mix.
        shard_rows : int, default 4096
            Rows per shard: the unit of resume and of parallel writing. Ignored when
            an existing store is reopened (its own value is kept).

        Returns
        -------
        FeatureStore
            A writable store; :meth:`pending_shards` says what is left to compute.

        Raises
        ------
        HarpError
            ``directory`` holds a store built from other ids, dim, dtype or spec (the
            message names what differs), or is a non-empty directory that is not a
            store, or is a file.
        ParameterError
            A bad ``dim``, ``dtype``, ``shard_rows`` or ``spec``.
        DataError
            ``ids`` are not unique strings, or the existing store is damaged.
        """
        directory = Path(directory)
        dim = _check_int("dim", dim, 1)
        shard_rows = _check_int("shard_rows", shard_rows, 1)
        dtype = _dtype_name(dtype)
        spec = _normalize_spec(spec)
        ids = _check_ids(ids)
        ids_hash = _ids_hash(ids)
        fp = _content_fingerprint(ids_hash, dim, dtype, spec)

        if directory.exists() and not directory.is_dir():
            raise HarpError(f"feature store {directory} is a file, not a directory")
        manifest_path = directory / MANIFEST
        if manifest_path.exists() and not _readable_manifest(directory):
            _clear_store(directory)  # a torn manifest: rebuilt, not refused forever
        if manifest_path.exists():
            manifest = _read_manifest(directory)
            if manifest["fingerprint"] != fp:
                raise HarpError(
                    _mismatch_message(directory, manifest, ids, dim, dtype, spec)
                )
            store = cls(directory, manifest, ids, writable=True)
            if not (directory / IDS_FILE).exists():  # crashed right after the manifest
                atomic_write_json(directory / IDS_FILE, ids)
            if shard_rows != store.shard_rows:
                log.info(
                    "feature store %s: keeping its shard_rows=%d (asked for %d)",
                    directory,
                    store.shard_rows,
                    shard_rows,
                )
            pending = store.pending_shards()
            log.info(
                "feature store %s: reopened, %d of %d shards pending",
                directory,
                len(pending),
                store.n_shards,
            )
            return store

        if directory.exists() and _has_foreign_files(directory):
            raise HarpError(
                f"{directory} exists, is not empty and holds no {MANIFEST}, so it is "
                f"not a feature store; {_HINT}"
            )
        n_rows = len(ids)
        manifest = {
            "format": STORE_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "harp_version": __version__,
            "n_rows": n_rows,
            "dim": dim,
            "dtype": dtype,
            "byte_order": "little",
            "shard_rows": shard_rows,
            "n_shards": math.ceil(n_rows / shard_rows),
            "ids_hash": ids_hash,
            "row_ids": IDS_FILE,
            "spec": spec,
            "fingerprint": fp,
            "complete": False,
        }
        directory.mkdir(parents=True, exist_ok=True)
        need = estimate_store_bytes(n_rows, dim, dtype)
        log.info(
            "feature store %s: %d x %d %s in %d shards, %s on disk",
            directory,
            n_rows,
            dim,
            dtype,
            manifest["n_shards"],
            format_bytes(need),
        )
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(directory).free
            if need > free:
                log.warning(
                    "feature store %s needs %s but only %s is free",
                    directory,
                    format_bytes(need),
                    format_bytes(free),
                )
        # The manifest first: a directory with a manifest is recognised as a store
        # (so concurrent creators reopen it instead of refusing it).
        atomic_write_json(manifest_path, manifest)
        atomic_write_json(directory / IDS_FILE, ids)
        return cls(directory, manifest, ids, writable=True)

    @classmethod
    def open(
        cls,
        directory: str | Path,
        *,
        expect_spec: dict[str, Any] | None = None,
        expect_ids: Sequence[str] | None = None,
        allow_incomplete: bool = False,
    ) -> FeatureStore:
        """Open a store read-only.

        Parameters
        ----------
        directory : str or Path
            The store's directory.
        expect_spec : dict, optional
            If given, the store's spec must equal it (after a JSON round trip).
        expect_ids : sequence of str, optional
            If given, the store's ids must equal it, in order.
        allow_incomplete : bool, default False
            Open a store that was not finalized (reading a pending shard fails).

        Returns
        -------
        FeatureStore
            A read-only store.

        Raises
        ------
        HarpError
            No store there, the store is incomplete, or it does not match
            ``expect_spec``/``expect_ids`` (the message names what differs).
        DataError
            The manifest or id list is damaged.
        """
        directory = Path(directory)
        if not (directory / MANIFEST).is_file():
            raise HarpError(
                f"{directory} is not a feature store (no {MANIFEST}); build it first"
            )
        manifest = _read_manifest(directory)
        ids = _read_ids(directory, manifest)
        if expect_spec is not None:
            spec = _normalize_spec(expect_spec)
            if spec != manifest["spec"]:
                was, now = _spec_differences(manifest["spec"], spec)
                raise HarpError(
                    f"feature store {directory} was built with {', '.join(was)}; "
                    f"you asked for {', '.join(now)}; {_HINT}"
                )
        if expect_ids is not None:
            asked = _check_ids(expect_ids)
            if _ids_hash(asked) != manifest["ids_hash"]:
                built_ids, asked_ids = _ids_difference(ids, asked)
                raise HarpError(
                    f"feature store {directory} was built with {built_ids}; you asked "
                    f"for {asked_ids}; {_HINT}"
                )
        store = cls(directory, manifest, ids, writable=False)
        if not store.complete and not allow_incomplete:
            pending = store.pending_shards()
            raise HarpError(
                f"feature store {directory} is incomplete ({len(pending)} of "
                f"{store.n_shards} shards not written); rerun the feature extraction "
                "to resume it"
            )
        return store

    # ------------------------------------------------------------------------ shards

    def shard_range(self, k: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of shard ``k``."""
        self._check_shard(k)
        start = k * self.shard_rows
        return start, min(self.n_rows, start + self.shard_rows)

    def shard_path(self, k: int) -> Path:
        """The data file of shard ``k``."""
        self._check_shard(k)
        return self.directory / f"{_shard_name(k)}.bin"

    def _done_path(self, k: int) -> Path:
        return self.directory / f"{_shard_name(k)}.done"

    def _check_shard(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ParameterError(f"shard index {k!r} must be an integer")
        if not 0 <= k < self.n_shards:
            raise ParameterError(
                f"shard index {k} is out of range; this store has {self.n_shards} "
                "shards"
            )

    def _marker(self, k: int) -> dict[str, Any] | None:
        try:
            marker = json.loads(self._done_path(k).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return marker if isinstance(marker, dict) else None

    def is_done(self, k: int, *, verify: bool = False) -> bool:
        """Whether shard ``k`` has a valid done marker.

        Valid: the marker names this store's fingerprint and the shard's row range,
        and the data file has the expected size. With ``verify=True`` the file's
        SHA-256 must also match the marker (reads the whole shard).
        """
        start, stop = self.shard_range(k)
        marker = self._marker(k)
        if (
            marker is None
            or marker.get("fingerprint") != self.fingerprint
            or marker.get("rows") != [start, stop]
        ):
            return False
        path = self.shard_path(k)
        expected = (stop - start) * self.dim * self._np_dtype.itemsize
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        if size != expected:
            self._warn_once(
                k,
                "feature store %s: %s has %d bytes, expected %d; "
                "it counts as not written",
                self.directory,
                path.name,
                size,
                expected,
            )
            return False
        if verify and _hash_file(path) != marker.get("sha256"):
            self._warn_once(
                k,
                "feature store %s: %s does not match its done marker's hash; "
                "it counts as not written",
                self.directory,
                path.name,
            )
            return False
        return True

    def _warn_once(self, k: int, message: str, *args: Any) -> None:
        if k not in self._warned:
            self._warned.add(k)
            log.warning(message, *args)

    def drop_damaged(self, shards: Sequence[int] | None = None) -> list[int]:
        """Forget the shards whose data no longer matches their done marker's hash.

        Each such shard is reported in one line naming its file; its marker is
        removed, so the next :func:`fill_store` computes it again. Reads the shards
        given (default: every shard).

        Returns
        -------
        list of int
            The shards dropped.
        """
        if not self.writable:
            raise HarpError(f"feature store {self.directory} was opened read-only")
        damaged = []
        for k in range(self.n_shards) if shards is None else shards:
            if self.is_done(k) and not self.is_done(k, verify=True):
                self._done_path(k).unlink(missing_ok=True)
                damaged.append(k)
        return damaged

    def pending_shards(self, *, verify: bool = False) -> list[int]:
        """Shards without a valid done marker, in order (see :meth:`is_done`)."""
        return [k for k in range(self.n_shards) if not self.is_done(k, verify=verify)]

    def write_shard(
        self, k: int, array: np.ndarray, *, overwrite: bool = False
    ) -> None:
        """Check and write the rows of shard ``k``, then its done marker.

        The data go to a temporary file that is fsynced and renamed onto
        ``shard-KKKKK.bin``; only then is the done marker written (atomically), so a
        crash at any point leaves the shard either done or pending. ``array`` is not
        modified.

        Parameters
        ----------
        k : int
            Shard index.
        array : array-like of shape (stop - start, dim)
            The shard's rows (``start, stop = shard_range(k)``), any float dtype; cast
            to the store's dtype.
        overwrite : bool, default False
            Write the shard even if it is done (e.g. to repair a shard that
            :meth:`verify` found damaged). Without it, writing a done shard is a
            no-op if the data are bit-identical to its done marker's hash (a
            retried task is harmless) and an error otherwise.

        Raises
        ------
        HarpError
            The store is read-only, or the shard is done with other data.
        DataError
            Wrong shape or a non-float dtype.
        NumericalError
            NaN or infinite values (also after a cast to float16 overflows); the
            message names the shard and the first offending row ids.
        """
        if not self.writable:
            raise HarpError(
                f"feature store {self.directory} was opened read-only; use "
                "FeatureStore.create to write it"
            )
        start, stop = self.shard_range(k)
        data = self._check_rows(k, array, start, stop)
        digest = _hash_array(data)
        if not overwrite and self.is_done(k):
            marker = self._marker(k) or {}
            if marker.get("sha256") == digest:
                log.debug("feature store %s: shard %d already written", self, k)
                return
            raise HarpError(
                f"feature store {self.directory}: shard {k} (rows {start}-{stop}) "
                "is already written with other values; pass overwrite=True to "
                "replace it"
            )
        done = self._done_path(k)
        with contextlib.suppress(FileNotFoundError):
            done.unlink()
        if self.complete:
            self._manifest = {**self._manifest, "complete": False}
            atomic_write_json(self.directory / MANIFEST, self._manifest)
        with atomic_open(self.shard_path(k), "wb") as handle:
            handle.write(data.data.cast("B"))
        atomic_write_json(
            done,
            {
                "fingerprint": self.fingerprint,
                "rows": [start, stop],
                "sha256": digest,
            },
        )
        log.debug("feature store %s: wrote shard %d", self.directory, k)

    def _check_rows(
        self, k: int, array: np.ndarray, start: int, stop: int
    ) -> np.ndarray:
        arr = np.asarray(array)
        if arr.shape != (stop - start, self.dim):
            raise DataError(
                f"feature store {self.directory}: shard {k} needs an array of shape "
                f"({stop - start}, {self.dim}) (rows {start}-{stop}), got {arr.shape}"
            )
        if arr.dtype.kind not in "fiu":
            raise DataError(
                f"feature store {self.directory}: shard {k} has dtype {arr.dtype}; "
                "features must be real numbers"
            )
        bad = ~np.isfinite(arr).all(axis=1) if arr.dtype.kind == "f" else None
        with np.errstate(over="ignore", invalid="ignore"):
            data = np.ascontiguousarray(arr, dtype=self._np_dtype)
        cast_bad = ~np.isfinite(data).all(axis=1)
        if (bad is not None and bad.any()) or cast_bad.any():
            rows = np.flatnonzero(cast_bad if bad is None else bad | cast_bad)
            named = ", ".join(repr(self.ids[start + int(i)]) for i in rows[:5])
            more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
            why = (
                "NaN or infinite values"
                if bad is not None and bad.any()
                else f"values too large for {self.dtype}"
            )
            raise NumericalError(
                f"feature store {self.directory}: shard {k} has {why} in "
                f"{len(rows)} row(s), ids {named}{more}; nothing was written"
            )
        return data

    def finalize(self, *, verify: bool = False) -> None:
        """Mark the store complete; every shard must be done.

        Parameters
        ----------
        verify : bool, default False
            Also check every shard's SHA-256 against its done marker.

        Raises
        ------
        HarpError
            Some shards are pending (the message lists the first ones).
        """
        if not self.writable:
            raise HarpError(f"feature store {self.directory} was opened read-only")
        pending = self.pending_shards(verify=verify)
        if pending:
            head = ", ".join(map(str, pending[:10]))
            more = ", ..." if len(pending) > 10 else ""
            raise HarpError(
                f"feature store {self.directory}: cannot finalize, {len(pending)} of "
                f"{self.n_shards} shards are not written ({head}{more})"
            )
        if not self.complete:
            self._manifest = {**self._manifest, "complete": True}
            atomic_write_json(self.directory / MANIFEST, self._manifest)
        log.info("feature store %s: complete", self.directory)

    def verify(self) -> None:
        """Check every shard's data against its done marker's SHA-256.

        Raises
        ------
        DataError
            A shard is missing, truncated or does not match its hash.
        """
        bad = self.pending_shards(verify=True)
        if bad:
            raise DataError(
                f"{len(bad)} shard(s) missing or damaged: "
                + ", ".join(f"{_shard_name(k)}.bin" for k in bad[:10]),
                path=self.directory,
            )

    # ----------------------------------------------------------------------- reading

    def memmap(self, k: int) -> np.memmap:
        """Read-only memmap of shard ``k``, shape ``(stop - start, dim)``.

        Raises
        ------
        HarpError
            The shard is not written.
        """
        start, stop = self.shard_range(k)
        if not self.is_done(k):
            raise HarpError(
                f"feature store {self.directory}: shard {k} (rows {start}-{stop}) is "
                "not written; rerun the feature extraction to finish the store"
            )
        return np.memmap(
            self.shard_path(k),
            dtype=self._np_dtype,
            mode="r",
            shape=(stop - start, self.dim),
        )

    def read(self, rows: Any = None) -> np.ndarray:
        """A float32 copy of the selected rows (all rows by default).

        Parameters
        ----------
        rows : None, slice, int array-like or bool mask of length n_rows
            Which rows, in the order given (negative indices count from the end).

        Returns
        -------
        ndarray of shape (len(rows), dim), float32
        """
        if rows is None:
            rows = slice(None)
        if isinstance(rows, slice):
            idx = np.arange(self.n_rows)[rows]
        else:
            idx = np.asarray(rows)
            if idx.dtype == bool:
                if idx.shape != (self.n_rows,):
                    raise ParameterError(
                        f"a boolean row mask needs length {self.n_rows}, got "
                        f"{idx.shape}"
                    )
                idx = np.flatnonzero(idx)
            elif idx.size == 0:
                idx = idx.astype(np.int64)
            elif not np.issubdtype(idx.dtype, np.integer):
                raise ParameterError(f"rows must be integers, got dtype {idx.dtype}")
            idx = idx.reshape(-1).astype(np.int64)
            if idx.size and (idx.min() < -self.n_rows or idx.max() >= self.n_rows):
                raise ParameterError(
                    f"row index out of range for a store of {self.n_rows} rows"
                )
            idx = np.where(idx < 0, idx + self.n_rows, idx)
        out = np.empty((idx.size, self.dim), dtype=np.float32)
        if idx.size == 0:
            return out
        if idx.size == self.n_rows and np.array_equal(idx, np.arange(self.n_rows)):
            for start, block in self.iter_blocks(self.shard_rows):
                out[start : start + len(block)] = block
            return out
        shard_of = idx // self.shard_rows
        for k in np.unique(shard_of):
            where = np.flatnonzero(shard_of == k)
            mm = self.memmap(int(k))
            out[where] = mm[idx[where] - int(k) * self.shard_rows]
            del mm
        return out

    def rows(self) -> StoreRows:
        """The rows as a read-on-demand array-like (for consumers that stream).

        Slicing and integer-array indexing read float32 copies of just those rows,
        across shards; nothing is loaded whole. The log-det engine takes it as it
        takes a memmap.
        """
        return StoreRows(self)

    def iter_blocks(self, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """Stream all rows in order as ``(start, float32 block)`` pairs.

        Blocks have ``block_rows`` rows (the last may be shorter) whatever the shard
        size; memory use is bounded by one block.
        """
        block_rows = _check_int("block_rows", block_rows, 1)
        for start in range(0, self.n_rows, block_rows):
            stop = min(self.n_rows, start + block_rows)
            block = np.empty((stop - start, self.dim), dtype=np.float32)
            row = start
            while row < stop:
                k = row // self.shard_rows
                s0, s1 = self.shard_range(k)
                end = min(stop, s1)
                mm = self.memmap(k)
                block[row - start : end - start] = mm[row - s0 : end - s0]
                del mm
                row = end
            yield start, block


class StoreRows:
    """A feature store's rows as an array-like: ``shape``, ``dtype``, indexing.

    ``rows[a:b]`` and ``rows[index_array]`` read float32 copies of those rows only
    (:meth:`FeatureStore.read`); ``np.asarray(rows)`` reads everything.

    Examples
    --------
    >>> import tempfile
    >>> store = FeatureStore.create(tempfile.mkdtemp() + "/s", ids=["a", "b", "c"],
    ...                             dim=2, spec={"kind": "demo"}, shard_rows=2)
    >>> _ = fill_store(store, lambda k, start, stop: np.ones((stop - start, 2)))
    >>> rows = FeatureStore.open(store.directory).rows()
    >>> rows.shape, rows[1:3].shape, rows[np.array([2, 0])].dtype.name
    ((3, 2), (2, 2), 'float32')
    """

    ndim = 2

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self.shape = (store.n_rows, store.dim)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self.store.read([int(index)])[0]
        return self.store.read(index)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.store.read()
        return out if dtype is None else out.astype(dtype)


# ------------------------------------------------------------------ manifest I/O


_REQUIRED = {
    "schema_version": int,
    "n_rows": int,
    "dim": int,
    "dtype": str,
    "shard_rows": int,
    "n_shards": int,
    "ids_hash": str,
    "row_ids": str,
    "spec": dict,
    "fingerprint": str,
    "complete": bool,
}


def _readable_manifest(directory: Path) -> bool:
    """False for a torn manifest of a harp store (reported in one line).

    Only a manifest that is not JSON at all, beside a store's own files, counts as
    torn; any other manifest is left for :func:`_read_manifest` to judge (a folder
    of someone else's is refused, never cleared).
    """
    path = directory / MANIFEST
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        if (directory / IDS_FILE).exists() or any(directory.glob("shard-*")):
            log.warning("%s: damaged (%s); the feature store is built again", path, exc)
            return False
    except OSError:
        pass
    return True


def _clear_store(directory: Path) -> None:
    """Remove a store's own files (manifest, ids, shards, markers), nothing else."""
    for path in directory.iterdir():
        own = path.name in (MANIFEST, IDS_FILE) or (
            path.name.startswith(("shard-", ".shard-", f".{MANIFEST}", f".{IDS_FILE}"))
        )
        if own and path.is_file():
            path.unlink()


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the feature store manifest: {exc}", path=path)
    if not isinstance(manifest, dict):
        raise DataError("the manifest is not a JSON object", path=path)
    for key, kind in _REQUIRED.items():
        if not isinstance(manifest.get(key), kind):
            raise DataError(
                f"the manifest lacks {key!r} or it is not a {kind.__name__}; "
                f"this is not a harp feature store ({_HINT})",
                path=path,
            )
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise HarpError(
            f"feature store {directory} has schema version "
            f"{manifest['schema_version']}, newer than this harp understands "
            f"({SCHEMA_VERSION}); upgrade harp or {_HINT}"
        )
    if manifest["dtype"] not in _DTYPES:
        raise DataError(f"unknown dtype {manifest['dtype']!r}", path=path)
    return manifest


def _read_ids(directory: Path, manifest: dict[str, Any]) -> list[str]:
    path = directory / manifest["row_ids"]
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the feature store's ids: {exc}", path=path)
    if not isinstance(ids, list) or _ids_hash(ids) != manifest["ids_hash"]:
        raise DataError(
            "the id list does not match the manifest's ids_hash; the store is "
            f"damaged ({_HINT})",
            path=path,
        )
    return ids


def _has_foreign_files(directory: Path) -> bool:
    """Whether ``directory`` holds anything besides our own temporary files."""
    for entry in directory.iterdir():
        name = entry.name
        if name.startswith(".") and name.endswith(".tmp"):
            continue
        return True
    return False


def _mismatch_message(
    directory: Path,
    manifest: dict[str, Any],
    ids: list[str],
    dim: int,
    dtype: str,
    spec: dict[str, Any],
) -> str:
    was: list[str] = []
    now: list[str] = []
    if manifest["dim"] != dim:
        was.append(f"dim={manifest['dim']}")
        now.append(f"dim={dim}")
    if manifest["dtype"] != dtype:
        was.append(f"dtype={manifest['dtype']}")
        now.append(f"dtype={dtype}")
    if manifest["ids_hash"] != _ids_hash(ids):
        try:
            built_ids = _read_ids(directory, manifest)
        except DataError:
            built_ids = None
        if built_ids is None:
            a, b = f"{manifest['n_rows']} other example ids", f"{len(ids)} example ids"
        else:
            a, b = _ids_difference(built_ids, ids)
        was.append(a)
        now.append(b)
    s_was, s_now = _spec_differences(manifest["spec"], spec)
    was += s_was
    now += s_now
    if manifest["schema_version"] != SCHEMA_VERSION:
        was.append(f"schema_version={manifest['schema_version']}")
        now.append(f"schema_version={SCHEMA_VERSION}")
    if not was:  # pragma: no cover - a fingerprint change we cannot explain
        was, now = [f"fingerprint={manifest['fingerprint']}"], ["another fingerprint"]
    return (
        f"feature store {directory} was built with {', '.join(was)}; "
        f"you asked for {', '.join(now)}; {_HINT}"
    )


# ------------------------------------------------------------------ the resume loop


def fill_store(
    store: FeatureStore,
    compute_shard: Callable[[int, int, int], np.ndarray],
    *,
    progress: bool = False,
) -> FeatureStore:
    """Compute and write every pending shard, then finalize: the resume loop.

    An interrupted run restarts at the first pending shard; shards already done are
    not computed again, and (for a deterministic ``compute_shard``) the result is
    identical to an uninterrupted run.

    Parameters
    ----------
    store : FeatureStore
        A writable store from :meth:`FeatureStore.create`.
    compute_shard : callable ``(k, start, stop) -> array``
        Returns the ``(stop - start, dim)`` rows of shard ``k``.
    progress : bool, default False
        Show a progress bar (needs ``rich``).

    Returns
    -------
    FeatureStore
        ``store``, now complete.
    """
    pending = store.pending_shards()
    if pending and len(pending) < store.n_shards:
        log.info(
            "feature store %s: resuming, %d of %d shards left",
            store.directory,
            len(pending),
            store.n_shards,
        )
    with ProgressBar(
        progress and bool(pending), "features", len(pending), unit="shard"
    ) as bar:
        for k in pending:
            start, stop = store.shard_range(k)
            store.write_shard(k, compute_shard(k, start, stop))
            bar.advance()
    store.finalize()
    return store
