"""A tiny GGUF model file, written with ``gguf.GGUFWriter`` (tests import it).

A 2-layer Llama (hidden 64) with a byte-level BPE vocabulary of ~300 tokens and one
Q8_0-quantized tensor, so that the dequantization path runs.
"""

from __future__ import annotations

import numpy as np

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 128
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("a", "n"),
    ("Ġ", "a"),
    ("e", "r"),
    ("o", "n"),
    ("r", "e"),
    ("Ġ", "s"),
    ("Ġa", "n"),
    ("Ġan", "d"),
    ("l", "l"),
    ("e", "l"),
    ("Ġ", "w"),
    ("o", "r"),
]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of the 256 bytes (what byte-level BPE tokens use)."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, extra = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for _, c in sorted(zip(keep, codes))]


def write_tiny_gguf(path, seed=0, *, drop=(), header=None, rows=None, poison=None):
    """A 2-layer Llama GGUF with a BPE tokenizer; token_embd is Q8_0.

    ``drop`` leaves tensors out, ``header`` overrides sizes written in the header
    (``block_count``, ``head_count``, ``vocab_size``, ``context_length``) and
    ``rows`` gives tensors another number of rows: files that do not hold the model
    their header describes; ``poison`` sets the first value of the named tensors.
    """
    import gguf

    rng = np.random.default_rng(seed)
    tokens = SPECIALS + _byte_alphabet() + ["".join(pair) for pair in MERGES]
    vocab = len(tokens)
    sizes = {
        "block_count": LAYERS,
        "head_count": HEADS,
        "vocab_size": vocab,
        "context_length": 128,
        **(header or {}),
    }
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny test llama")
    writer.add_context_length(sizes["context_length"])
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(sizes["block_count"])
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(sizes["head_count"])
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(sizes["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (vocab - len(SPECIALS)))
    writer.add_token_merges([" ".join(pair) for pair in MERGES])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    def add(name, array):
        if name in (rows or {}):
            array = np.zeros((rows[name], *array.shape[1:]), np.float32)
        if name in (poison or {}):
            array.flat[0] = poison[name]
        if name not in drop:
            writer.add_tensor(name, array)

    embedding = weight(vocab, HIDDEN)
    q8 = gguf.GGMLQuantizationType.Q8_0
    # The writer takes the quantized blocks as bytes and derives the shape from them.
    writer.add_tensor(
        "token_embd.weight", gguf.quants.quantize(embedding, q8), raw_dtype=q8
    )
    head = HIDDEN // HEADS
    for i in range(LAYERS):
        block = f"blk.{i}"
        add(f"{block}.attn_norm.weight", 1 + weight(HIDDEN))
        add(f"{block}.attn_q.weight", weight(HIDDEN, HIDDEN))
        add(f"{block}.attn_k.weight", weight(KV_HEADS * head, HIDDEN))
        add(f"{block}.attn_v.weight", weight(KV_HEADS * head, HIDDEN))
        add(f"{block}.attn_output.weight", weight(HIDDEN, HIDDEN))
        add(f"{block}.ffn_norm.weight", 1 + weight(HIDDEN))
        add(f"{block}.ffn_gate.weight", weight(FFN, HIDDEN))
        add(f"{block}.ffn_up.weight", weight(FFN, HIDDEN))
        add(f"{block}.ffn_down.weight", weight(HIDDEN, FFN))
    add("output_norm.weight", 1 + weight(HIDDEN))
    # No output.weight: the output layer is tied to the embedding, as in SmolLM2.
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
