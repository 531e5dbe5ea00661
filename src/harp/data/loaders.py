"""Loaders (being written)."""
def load_examples(path, **kwargs):
    raise NotImplementedError
