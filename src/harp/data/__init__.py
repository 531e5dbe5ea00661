"""Data stage: load pools and targets of any common schema as :class:`Example` rows."""

from harp.data._records import (
    DEFAULT_DOMAIN,
    Example,
    ExampleSet,
    as_example_set,
    content_id,
)
from harp.data.loaders import load_examples
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
