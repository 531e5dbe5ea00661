"""The factored projection: reference values, JL, fast path equal to formed path."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from harp.core.errors import ParameterError
from harp.data import ExampleSet
from harp.features.factored import FactoredProjector, factored_block_shape
from harp.features.gradients import per_sample_gradients, token_batches
from harp.features.projection import RandomProjector, make_projector

torch = pytest.importorskip("torch")

SHAPES = [("a", (4, 64)), ("b", (64, 4)), ("c", (10,))]


def _matrices_digest(p: FactoredProjector) -> str:
    h = hashlib.sha256()
    for i in range(len(p.blocks)):
        for side in p.sides(i, "cpu"):
            if side is not None:
                h.update(side.numpy().tobytes())
    return h.hexdigest()


def test_the_matrices_are_the_stored_reference():
    """The same seed draws the same small matrices on any machine (torch's CPU
    generator is platform independent): these are the values of seed 7."""
    p = FactoredProjector(SHAPES, dim=48, seed=7)
    assert [(b.k_out, b.k_in) for b in p.blocks] == [(4, 4), (4, 4), (10, 1)]
    assert p.out_dim == 42 and p.in_dim == 4 * 64 * 2 + 10
    p_out, p_in = p.sides(0, "cpu")
    assert p_out is None  # the 4-row side is kept whole
    assert p_in[:2, :4].tolist() == [
        [-0.5, 0.5, 0.5, -0.5],
        [0.5, -0.5, 0.5, -0.5],
    ]
    assert (
        _matrices_digest(p)
        == "a974edd288581cc958a8a5ee85f65f00f7cc71c78096869970b9e356c6d100c8"
    )
    assert _matrices_digest(FactoredProjector(SHAPES, dim=48, seed=8)) != (
        _matrices_digest(p)
    )


def test_block_shapes_split_the_budget_evenly():
    assert factored_block_shape(16, 1024, 256) == (16, 16)
    assert factored_block_shape(1024, 16, 256) == (16, 16)
    assert factored_block_shape(4096, 4096, 64) == (8, 8)
    assert factored_block_shape(2, 3, 100) == (2, 3)
    assert factored_block_shape(4096, 4096, 1) == (1, 1)
    for out, inp, budget in [(7, 300, 50), (300, 7, 50), (33, 33, 1000)]:
        k_out, k_in = factored_block_shape(out, inp, budget)
        assert 1 <= k_out <= out and 1 <= k_in <= inp and k_out * k_in <= budget


def test_johnson_lindenstrauss_norms_and_inner_products():
    """Unbiased, with the spread of a JL map: the squared norm ratio concentrates
    around 1 and inner products are preserved within the same band."""
    shapes = [(f"w{i}", (32, 256)) for i in range(8)]
    p = FactoredProjector(shapes, dim=2048, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, p.in_dim, generator=gen)
    y = torch.randn(64, p.in_dim, generator=gen)
    px, py = p.project(x), p.project(y)
    ratio = px.square().sum(1) / x.square().sum(1)
    assert abs(float(ratio.mean()) - 1.0) < 0.03
    assert float(ratio.std()) < 0.1
    cos = torch.nn.functional.cosine_similarity
    original = cos(x, x + 0.5 * y)
    projected = cos(px, px + 0.5 * py)
    assert float((original - projected).abs().max()) < 0.1


def test_project_block_is_the_two_sided_product():
    p = FactoredProjector([("w", (40, 50))], dim=64, seed=3)
    p_out, p_in = p.sides(0, "cpu")
    g = torch.randn(3, 40, 50, generator=torch.Generator().manual_seed(1))
    expected = (p_out.T @ g @ p_in).reshape(3, -1)
    torch.testing.assert_close(p.project_block(0, g), expected)
    torch.testing.assert_close(p.project(g.reshape(3, -1)), expected)


def test_bad_arguments():
    with pytest.raises(ParameterError, match="dim=0"):
        FactoredProjector(SHAPES, dim=0)
    with pytest.raises(ParameterError, match="at least one parameter"):
        FactoredProjector([], dim=8)
    with pytest.raises(ParameterError, match="shape"):
        FactoredProjector([("t", (2, 3, 4))], dim=8)
    p = FactoredProjector(SHAPES, dim=48)
    with pytest.raises(ParameterError, match=r"\(n, 522\)"):
        p.project(torch.zeros(2, 5))
    with pytest.raises(ParameterError, match="no block"):
        p.blocks_of(["nope"])


# -- on a model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora(tiny_config):
    from harp.models import attach_lora, build_proxy
    from harp.nn import seeded

    model, tok = build_proxy(tiny_config, seed=0)
    with seeded(0):
        return attach_lora(model), tok


def _rows(n=24):
    return ExampleSet.from_records(
        [
            {"prompt": f"rev: {i:03d}ab" * (1 + i % 3), "response": f"{i}"}
            for i in range(n)
        ]
    )


def _collect(stream):
    parts = list(stream)
    rows = np.concatenate([r for r, _ in parts])
    feats = np.concatenate([g for _, g in parts])
    out = np.empty_like(feats)
    out[rows] = feats
    return out


def test_fast_path_equals_projecting_the_formed_gradient(lora):
    """Projecting each layer's sides inside the backward gives the projection of the
    per-example gradient formed the slow way (within float rounding)."""
    model, tok = lora
    p = make_projector(model, 512, kind="factored", seed=5)
    assert isinstance(p, FactoredProjector) and p.out_dim <= 512
    fast = _collect(per_sample_gradients(model, tok, _rows(), projector=p))
    full = _collect(per_sample_gradients(model, tok, _rows()))
    formed = p.project(torch.as_tensor(full)).numpy()
    np.testing.assert_allclose(fast, formed, rtol=1e-4, atol=1e-6)
    # Batch size and token packing do not change the features.
    other = _collect(
        per_sample_gradients(
            model, tok, _rows(), projector=p, batch_size=3, max_tokens=120
        )
    )
    np.testing.assert_allclose(other, fast, rtol=1e-4, atol=1e-6)


def test_a_fresh_adapter_spends_no_features_on_its_zero_gradients(lora):
    """A fresh LoRA adapter has lora_B = 0, so every lora_A gradient is zero: those
    blocks get no features and the whole budget goes to the lora_B blocks."""
    model, tok = lora
    p = FactoredProjector.for_model(model, 256, seed=5)
    widths = {b.name: b.width for b in p.blocks}
    assert all(w == 0 for n, w in widths.items() if "lora_A" in n)
    assert all(w > 0 for n, w in widths.items() if "lora_B" in n)
    assert 0.75 * 256 < p.out_dim <= 256
    feats = _collect(per_sample_gradients(model, tok, _rows(), projector=p))
    assert feats.shape == (24, p.out_dim) and np.all(feats != 0)
    # Nothing is lost: the full gradient is zero where no feature looks.
    full = _collect(per_sample_gradients(model, tok, _rows()))
    formed = p.project(torch.as_tensor(full)).numpy()
    np.testing.assert_allclose(feats, formed, rtol=1e-4, atol=1e-6)


def test_a_trained_adapter_projects_every_factor(lora):
    """Once lora_B has moved (a warm-up checkpoint), lora_A blocks are live again and
    the fast path still equals projecting the formed gradient."""
    import copy

    model, tok = lora
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    p = FactoredProjector.for_model(model, 512, seed=5)
    assert all(b.width > 0 for b in p.blocks)
    fast = _collect(per_sample_gradients(model, tok, _rows(), projector=p))
    full = _collect(per_sample_gradients(model, tok, _rows()))
    formed = p.project(torch.as_tensor(full)).numpy()
    np.testing.assert_allclose(fast, formed, rtol=1e-4, atol=1e-6)
    a_cols = np.concatenate(
        [
            np.arange(b.offset, b.offset + b.width)
            for b in p.blocks
            if "lora_A" in b.name
        ]
    )
    assert np.abs(fast[:, a_cols]).max() > 0


def test_zero_names_must_be_parameters():
    with pytest.raises(ParameterError, match="names no parameter"):
        FactoredProjector([("a", (4, 4))], dim=8, zero=["b"])


def test_dense_kinds_stay_available(lora):
    model, _ = lora
    dense = make_projector(model, 64, kind="rademacher", seed=5)
    assert isinstance(dense, RandomProjector) and dense.out_dim == 64
    assert make_projector(model, 0) is None


def test_token_batches_pack_longest_first_within_the_budget():
    lengths = [5, 3, 9, 2, 9, 4]
    batches = token_batches(lengths, max_tokens=18, max_rows=3)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) * longest <= 18 or len(batch) == 1
        assert len(batch) <= 3
    assert batches[0] == [2, 4]  # the two longest rows first
    # A row longer than the budget gets a batch of its own.
    assert token_batches([50, 1, 1], max_tokens=10, max_rows=8) == [[0], [1, 2]]
