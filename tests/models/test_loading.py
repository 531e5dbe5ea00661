"""Loading and saving model folders, LoRA attachment, fingerprints."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import torch

from harp.core.errors import ModelError
from harp.models import (
    attach_lora,
    build_proxy,
    load_model,
    model_fingerprint,
    save_model,
)

IDS = torch.tensor([[1, 10, 11, 12, 13, 14, 2]])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_save_load_round_trip_identical_logits(tiny, tmp_path):
    model, tok = tiny
    path = save_model(model, tok, tmp_path / "m")
    assert (path / "config.json").is_file()
    assert (path / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".m.*"))  # no temporary folder left behind
    loaded, tok2 = load_model(path)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert loaded.dtype == torch.float32 and not loaded.training
    assert torch.equal(_logits(model), _logits(loaded))
    assert tok2("abc")["input_ids"] == tok("abc")["input_ids"]
    assert tok2.pad_token_id == tok.pad_token_id


def test_save_into_existing_folder(tiny, tmp_path):
    model, tok = tiny
    (tmp_path / "m").mkdir()
    save_model(model, tok, tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    assert torch.equal(_logits(model), _logits(loaded))


def test_missing_path(tmp_path):
    with pytest.raises(ModelError, match="model directory not found"):
        load_model(tmp_path / "nope")


def test_path_is_a_file(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(ModelError, match="is not a directory"):
        load_model(file)


def test_no_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json found"):
        load_model(tmp_path)


def test_config_without_weights(tiny_dir, tmp_path):
    shutil.copy(tiny_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelError) as info:
        load_model(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path}: no model weights found")
    assert "expected model.safetensors or pytorch_model.bin" in message


def test_remote_code_needs_the_flag(tiny_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "my_custom_llm"
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomLM"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="trust_remote_code=True"):
        load_model(folder)


def test_known_model_type_with_auto_map_uses_local_code(tiny_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomLM"}
    (folder / "config.json").write_text(json.dumps(config))
    model, _ = load_model(folder)
    assert type(model).__name__ == "LlamaForCausalLM"


def test_pickle_weights_need_opt_in(tiny, tmp_path):
    model, tok = tiny
    folder = tmp_path / "m"
    save_model(model, tok, folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="--allow-pickle"):
        load_model(folder)
    loaded, _ = load_model(folder, allow_pickle=True)
    assert torch.equal(_logits(model), _logits(loaded))
    # The run's permission serves every load of the run, as the CLI flag does.
    from harp.core.context import RunContext

    loaded, _ = load_model(folder, context=RunContext(allow_pickle=True))
    assert torch.equal(_logits(model), _logits(loaded))


def test_missing_pad_token_falls_back_to_eos(tiny_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_dir, folder)
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tok_config.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    tok_json = json.loads((folder / "tokenizer.json").read_text())
    (folder / "tokenizer.json").write_text(json.dumps(tok_json))
    _, tok = load_model(folder)
    if tok.pad_token is not None and tok.pad_token != tok.eos_token:
        pytest.skip("this transformers version keeps <pad> from tokenizer.json")
    assert tok.pad_token == tok.eos_token


def test_attach_lora_trains_only_lora(tiny):
    model, _ = tiny
    before = _logits(model)
    peft_model = attach_lora(model, r=4, alpha=8)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj"}
    # B starts at zero: the wrapped model computes what the base did.
    assert torch.allclose(_logits(peft_model), before, atol=1e-6)
    loss = peft_model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    frozen = [p for p in peft_model.parameters() if not p.requires_grad]
    assert all(p.grad is None for p in frozen)


def test_attach_lora_custom_targets(tiny, tiny_config):
    model, _ = tiny
    peft_model = attach_lora(model, target_modules=["gate_proj"])
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("gate_proj" in n for n in names)
    with pytest.raises(ModelError, match="cannot attach LoRA"):
        attach_lora(build_proxy(tiny_config)[0], target_modules=["nope"])


def test_save_peft_model_merges(tiny, tmp_path):
    model, tok = tiny
    peft_model = attach_lora(model)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    expected = _logits(peft_model)
    save_model(peft_model, tok, tmp_path / "merged")
    loaded, _ = load_model(tmp_path / "merged")
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert torch.allclose(_logits(loaded), expected, atol=1e-5)


def test_fingerprint_stable_and_sensitive(tiny, tmp_path):
    model, tok = tiny
    save_model(model, tok, tmp_path / "a")
    save_model(model, tok, tmp_path / "b")
    fa = model_fingerprint(tmp_path / "a")
    assert len(fa) == 32
    assert fa == model_fingerprint(tmp_path / "b")
    assert fa == model_fingerprint(tmp_path / "a", full=True)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    save_model(model, tok, tmp_path / "c")
    assert model_fingerprint(tmp_path / "c") != fa
    with pytest.raises(ModelError):
        model_fingerprint(tmp_path / "missing")


def test_an_edit_anywhere_in_a_weight_file_changes_the_fingerprint(
    tiny, tmp_path, monkeypatch
):
    monkeypatch.setenv("HARP_MODEL_CACHE", str(tmp_path / "cache"))
    model, tok = tiny
    save_model(model, tok, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    before = model_fingerprint(tmp_path / "m")
    # The digest is remembered on disk by the file's version ...
    assert list((tmp_path / "cache" / "digests").glob("*.sha256"))
    assert model_fingerprint(tmp_path / "m") == before
    # ... and an edit of one byte anywhere (here: past the middle) is seen.
    data = bytearray(weights.read_bytes())
    data[len(data) * 2 // 3] ^= 0x01
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert model_fingerprint(tmp_path / "m") != before


def test_file_digests_are_whole_file_hashes(tmp_path):
    import hashlib

    from harp.core.hashing import file_sha256

    path = tmp_path / "w.bin"
    path.write_bytes(os.urandom(3 << 20))
    want = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path, memo_dir=tmp_path / "memo") == want
    assert file_sha256(path, memo_dir=tmp_path / "memo", refresh=True) == want


def test_a_config_asking_for_more_layers_than_the_weights_hold_is_refused(
    tiny_dir, tmp_path
):
    folder = tmp_path / "m"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"lack \d+ tensor\(s\) that config.json"):
        load_model(folder)


@pytest.mark.parametrize("value", [-1, 0, 2.5, "abc", True])
def test_a_config_size_no_model_can_have_is_one_line(tiny_dir, tmp_path, value):
    import shutil

    from harp.core.errors import ModelError
    from harp.models.loading import check_model_dir

    folder = tmp_path / "m"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="num_hidden_layers=.* is not a size"):
        check_model_dir(folder)
