"""Data stage: load pools and targets of any common schema as :class:`Example` rows.

:class:`Example` and :class:`ExampleSet` live in :mod:`harp.core.records` (every
stage uses them); they are re-exported here, where users look for them.
"""

from harp.core.records import DEFAULT_DOMAIN, Example, ExampleSet, content_id
from harp.data.loaders import as_example_set, load_examples
from harp.data.writers import write_rows

__all__ = [
    "DEFAULT_DOMAIN",
    "Example",
    "ExampleSet",
    "as_example_set",
    "content_id",
    "load_examples",
    "write_rows",
]
