"""Multiple-choice rows: the options a FLAN chain-of-thought question lists.

A target row is multiple-choice when it carries ``options`` (the candidate answers,
each as the model would say it right after the prompt) and the index of the right one
(:class:`~harp.core.records.Example`; the file schema is
:func:`~harp.core.records.resolve_options`). FLAN-CoT files carry their options inside
the question instead, in a few layouts::

    aqua         ...\\nOptions:\\n(A) 300\\n(B) 992\\n(C) 1120     answer "(C)"
    qasc         ...\\nOptions:\\n- (A) DNA\\n- (B) gametes      answer "(A)"
    creak, ecqa  ...\\nOptions:\\n- yes\\n- no                answer "no"
    sensemaking  ...\\nOptions:\\n- Sentence A: "..."\\n- ... answer "Sentence A"
    strategyqa   a yes/no question, no options listed     answer "yes"

:func:`flan_options` reads them in the form the answer takes (labels, texts or the
part before a colon), so that scoring an option scores what the answer would say.
"""

from __future__ import annotations

import re

__all__ = ["flan_options"]

_LABEL = re.compile(r"^\(([A-Za-z0-9])\)")
_YES_NO = ("yes", "no")


def _listed(question: str) -> list[str]:
    """The items after the last ``Options:`` line, without list markers."""
    head, sep, tail = question.rpartition("Options:")
    if not sep:
        return []
    items = []
    for raw in tail.split("\n"):
        item = raw.strip()
        if item.startswith("- "):
            item = item[2:].strip()
        if item:
            items.append(item)
    return items


def flan_options(question: str, answer: str) -> tuple[tuple[str, ...], int] | None:
    """The ``(options, gold index)`` of a FLAN-CoT row, or None when it has none.

    Parameters
    ----------
    question : str
        The row's question (its prompt), with ``\\n`` already unescaped.
    answer : str
        The row's answer field (not the rationale).

    Returns
    -------
    tuple or None
        The options in the form the answer takes, and the answer's index; None when
        the question lists no options the answer is one of (a free-form answer).

    Examples
    --------
    >>> flan_options("Which?\\nOptions:\\n(A) 300\\n(B) 992", "(B)")
    (('(A)', '(B)'), 1)
    >>> flan_options("Is it?\\nOptions:\\n- yes\\n- no", "no")
    (('yes', 'no'), 1)
    >>> flan_options('Odd one?\\nOptions:\\n- Sentence A: "x"\\n- Sentence B: "y"\\n',
    ...              "Sentence A")
    (('Sentence A', 'Sentence B'), 0)
    >>> flan_options("Could the Police arrest?", "no")
    (('yes', 'no'), 1)
    >>> flan_options("How many clips?", "72") is None
    True
    """
    answer = answer.strip()
    items = _listed(question)
    if not items:
        if answer.lower() in _YES_NO:
            return _YES_NO, _YES_NO.index(answer.lower())
        return None
    labels = [m.group(0) if (m := _LABEL.match(i)) else "" for i in items]
    prefixes = [i.split(":", 1)[0].strip() if ":" in i else "" for i in items]
    for form in (items, labels, prefixes):
        if all(form) and len(set(form)) == len(form) and answer in form:
            return tuple(form), form.index(answer)
    return None
