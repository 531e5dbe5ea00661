"""The one record every loader produces, and the set that holds a loaded file."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from harp.core.errors import DataError
from harp.core.hashing import sha256_hex, stable_json

__all__ = ["Example", "ExampleSet", "DEFAULT_DOMAIN", "content_id", "resolve_options"]

#: Domain given to rows that carry no ``domain``/``task`` field.
DEFAULT_DOMAIN = "default"


def content_id(prompt: str, response: str) -> str:
    """Stable id of an example: the first 16 hex digits of SHA-256 over its text."""
    return sha256_hex(stable_json([prompt, response]), 16)


def resolve_options(
    options: Any, gold: Any, answer: str | None = None
) -> tuple[tuple[str, ...], int]:
    """A multiple-choice row's ``(options, gold index)`` from what a file gives.

    The documented schema: a row's ``options`` is a list of two or more distinct
    strings, the candidate answers as the model would say them after the prompt;
    ``gold`` is the right one, as its index or its text. Without ``gold``, the
    row's ``answer`` (its response, or FLAN's answer field) is looked up among the
    options.

    Raises
    ------
    ValueError
        The options or the gold do not fit the schema (the message says how).

    Examples
    --------
    >>> resolve_options(["yes", "no"], "no")
    (('yes', 'no'), 1)
    >>> resolve_options(["(A)", "(B)", "(C)"], None, answer="(C)")
    (('(A)', '(B)', '(C)'), 2)
    """
    if not isinstance(options, (list, tuple)) or not all(
        isinstance(o, str) and o.strip() for o in options
    ):
        raise ValueError("options must be a list of non-empty strings")
    opts = tuple(options)
    if len(opts) < 2:
        raise ValueError(f"options has {len(opts)} entry; a choice needs at least 2")
    if len(set(opts)) != len(opts):
        raise ValueError("options repeats an option; each must be distinct")
    if gold is None:
        if answer is None or answer.strip() not in opts:
            raise ValueError(
                "gold is missing and the answer is not one of the options; add "
                "'gold': the index or the text of the right option"
            )
        return opts, opts.index(answer.strip())
    if isinstance(gold, bool):
        raise ValueError("gold must be an option's index or text, not a boolean")
    if isinstance(gold, int):
        if not 0 <= gold < len(opts):
            raise ValueError(f"gold={gold} is not an index of the {len(opts)} options")
        return opts, gold
    if isinstance(gold, str) and gold in opts:
        return opts, opts.index(gold)
    raise ValueError(f"gold={gold!r} is neither an index nor the text of an option")


@dataclass(frozen=True)
class Example:
    """One instruction example, whatever schema it came from.

    Attributes
    ----------
    id : str
        Stable id: the row's own ``id`` field when it has one, else a content hash of
        ``(prompt, response)``; exact repeats of a row get ``#2``, ``#3``… suffixes.
    prompt : str
        Everything the model reads before it answers (chat turns rendered as text).
    response : str
        The answer the model is trained to produce and evaluated on.
    domain : str
        Target domain / task label (``"default"`` when the row has none).
    source : str
        Where the row came from: ``"path:line"``.
    line : int
        1-based line or record number in ``source``'s file.
    options : tuple of str
        A multiple-choice row's candidate answers, each as the model would say it
        right after the prompt (``"(C)"``, ``"yes"``, an option's text); empty for
        any other row. See :func:`resolve_options`.
    gold : int or None
        Index of the right option in ``options`` (None without options).
    """

    id: str
    prompt: str
    response: str
    domain: str = DEFAULT_DOMAIN
    source: str = ""
    line: int = 0
    options: tuple[str, ...] = ()
    gold: int | None = None

    def __post_init__(self) -> None:
        if self.options and (
            self.gold is None or not 0 <= self.gold < len(self.options)
        ):
            raise DataError(
                f"gold={self.gold!r} is not an index of the "
                f"{len(self.options)} options",
                path=self.source or None,
                field="gold",
            )

    @property
    def text(self) -> str:
        """Prompt and response joined, as a text-only method sees the example."""
        return f"{self.prompt}\n{self.response}"


@dataclass(frozen=True)
class ExampleSet(Sequence[Example]):
    """A loaded pool or target: examples plus what is needed to write rows back.

    Parameters
    ----------
    examples : tuple of Example
        The parsed rows, in file order.
    rows : tuple of dict
        The original rows (same order), kept so that a selection is written in the
        pool's own format and schema.
    path : str
        The file or folder the set was read from ("" for in-memory sets).
    format : str
        ``"jsonl"``, ``"json"``, ``"parquet"``, ``"csv"``, ``"tsv"``, ``"flan-tsv"``,
        ``"hf-disk"`` or ``"memory"``.
    schema : str
        The recognised schema (``"alpaca"``, ``"gsm8k"``, ``"chat"``…).
    columns : tuple of str
        Column order of tabular formats (CSV/TSV/Parquet), for faithful writing.
    """

    examples: tuple[Example, ...]
    rows: tuple[dict[str, Any], ...] = ()
    path: str = ""
    format: str = "memory"
    schema: str = "memory"
    columns: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.rows and len(self.rows) != len(self.examples):
            raise ValueError("rows and examples must have the same length")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.examples[index]
        return self.examples[index]

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    @property
    def ids(self) -> tuple[str, ...]:
        """Example ids in file order."""
        return tuple(e.id for e in self.examples)

    @property
    def domains(self) -> tuple[str, ...]:
        """Distinct domains, sorted."""
        return tuple(sorted({e.domain for e in self.examples}))

    @property
    def texts(self) -> list[str]:
        """``prompt + "\\n" + response`` of every example."""
        return [e.text for e in self.examples]

    def content_hash(self) -> str:
        """Hash of the ordered ids, prompts, responses and domains (cache keys)."""
        # Options join the payload only where a row has them, so that the hashes
        # (and the caches keyed on them) of every other row stay what they were.
        payload = [
            (e.id, e.prompt, e.response, e.domain)
            + ((list(e.options), e.gold) if e.options else ())
            for e in self.examples
        ]
        return sha256_hex(stable_json(payload), 32)

    @property
    def has_options(self) -> bool:
        """Whether every row is multiple-choice (carries options and a gold index)."""
        return bool(self.examples) and all(e.options for e in self.examples)

    def subset(self, indices: Iterable[int]) -> "ExampleSet":
        """The rows at ``indices`` (in that order), keeping format and schema."""
        idx = [int(i) for i in indices]
        return ExampleSet(
            examples=tuple(self.examples[i] for i in idx),
            rows=tuple(self.rows[i] for i in idx) if self.rows else (),
            path=self.path,
            format=self.format,
            schema=self.schema,
            columns=self.columns,
        )

    def by_domain(self) -> dict[str, list[int]]:
        """Row indices of each domain (domains sorted, indices ascending)."""
        out: dict[str, list[int]] = {}
        for i, e in enumerate(self.examples):
            out.setdefault(e.domain, []).append(i)
        return {d: out[d] for d in sorted(out)}

    @classmethod
    def from_records(
        cls,
        records: Iterable[dict[str, Any]],
        *,
        source: str = "<memory>",
    ) -> "ExampleSet":
        """Build a set from in-memory ``{"prompt", "response", "domain"?}`` dicts."""
        examples = []
        rows = []
        seen: dict[str, int] = {}
        for i, rec in enumerate(records, start=1):
            for key in ("prompt", "response"):
                if not isinstance(rec.get(key), str):
                    raise DataError(
                        f"needs a string {key!r}", path=source, line=i, field=key
                    )
            prompt, response = rec["prompt"], rec["response"]
            domain = str(rec.get("domain") or DEFAULT_DOMAIN)
            if rec.get("id") is not None:
                ex_id = str(rec["id"])
                if ex_id in seen:
                    raise DataError(
                        f"duplicate id {ex_id!r} (first seen on line {seen[ex_id]}); "
                        "ids must be unique, or drop the field to use content hashes",
                        path=source,
                        line=i,
                        field="id",
                    )
                seen[ex_id] = i
            else:
                ex_id = unique_id(content_id(prompt, response), seen)
            options: tuple[str, ...] = ()
            gold: int | None = None
            if rec.get("options") is not None:
                try:
                    options, gold = resolve_options(
                        rec["options"], rec.get("gold"), response
                    )
                except ValueError as exc:
                    raise DataError(
                        str(exc), path=source, line=i, field="options"
                    ) from None
            examples.append(
                Example(
                    ex_id, prompt, response, domain, f"{source}:{i}", i, options, gold
                )
            )
            rows.append(dict(rec))
        return cls(
            tuple(examples), tuple(rows), path="", format="memory", schema="memory"
        )


def unique_id(base: str, seen: dict[str, int]) -> str:
    """``base`` the first time, ``base#2``, ``base#3``… for exact repeats of a row."""
    count = 1
    candidate = base
    while candidate in seen:
        count += 1
        candidate = f"{base}#{count}"
    seen[candidate] = 0
    return candidate
