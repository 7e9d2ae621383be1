#!/usr/bin/env python3
"""Convert the Gemma 3 270M GGUF into a Hugging Face checkpoint directory.

Usage:
    convert_gguf_to_hf.py GGUF TOKENIZER_DIR OUT_DIR [--f32]

Needs the PyPI packages `gguf` and `numpy` (the venv that `make setup` builds at
~/.cache/mixq/venv). Writes into OUT_DIR:

    config.json            Gemma3ForCausalLM / gemma3_text, values from the GGUF metadata plus the
                           three hyperparameters the GGUF does not carry (see below)
    model.safetensors      bf16 (or f32 with --f32), HF tensor names, lm_head tied (not stored)
    tokenizer.json         copied unchanged from TOKENIZER_DIR
    tokenizer_config.json  copied, with eos_token set to "<eos>" (the npm copy belongs to the
                           instruction-tuned model, whose EOS is <end_of_turn>)

The facts this relies on are in shared/TEST-MODEL.md:
  * GGUF -> HF names are gguf-py's TensorNameMap for GEMMA3 reversed (ffn_norm is the
    PRE-feedforward norm, not post_attention).
  * llama.cpp adds 1.0 to every tensor whose HF name ends in "norm.weight" (109 tensors);
    HF's Gemma3RMSNorm computes norm(x) * (1 + w), so we subtract 1 again. The result is checked
    to be exactly representable in bf16.
  * No transposes and no Q/K permutation: the GGUF bytes are already HF row-major [out, in];
    gguf.quants.dequantize returns the HF-shaped array.
  * rope_local_base_freq = 10000, sliding window pattern 6 and query_pre_attn_scalar = 256 are
    not in the GGUF; llama.cpp hard-codes them for Gemma 3 and so do we.
  * f32 -> bf16 is round-to-nearest-even, bit-identical to torch's .to(torch.bfloat16).

The safetensors file is written by hand (8-byte little-endian header length, JSON header,
raw data) so no extra dependency is needed. Output is deterministic: same inputs, same bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import sys
import time
from pathlib import Path

try:
    import numpy as np
    import gguf
    from gguf import GGUFReader
    from gguf.quants import dequantize
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(f"convert_gguf_to_hf.py: cannot import {e.name!r}; run `make setup` "
             "(it creates ~/.cache/mixq/venv with the pinned gguf and numpy)")


def die(msg: str) -> None:
    sys.exit(f"convert_gguf_to_hf.py: ERROR: {msg}")


# ---------------------------------------------------------------------------------------------
# Metadata

# HF config key -> (GGUF key, expected value). Every one is checked; a mismatch means this is
# not the model the rest of the project was built for, so we stop instead of guessing.
EXPECTED_META = {
    "hidden_size": ("gemma3.embedding_length", 640),
    "num_hidden_layers": ("gemma3.block_count", 18),
    "num_attention_heads": ("gemma3.attention.head_count", 4),
    "num_key_value_heads": ("gemma3.attention.head_count_kv", 1),
    "head_dim": ("gemma3.attention.key_length", 256),
    "intermediate_size": ("gemma3.feed_forward_length", 2048),
    "max_position_embeddings": ("gemma3.context_length", 32768),
    "rope_theta": ("gemma3.rope.freq_base", 1000000.0),
    "sliding_window": ("gemma3.attention.sliding_window", 512),
}


def field_value(reader: GGUFReader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


def build_config(reader: GGUFReader) -> dict:
    arch = field_value(reader, "general.architecture")
    if arch != "gemma3":
        die(f"general.architecture is {arch!r}, expected 'gemma3'")
    got = {}
    for hf_key, (gg_key, want) in EXPECTED_META.items():
        v = field_value(reader, gg_key)
        if v is None:
            die(f"GGUF metadata key {gg_key} is missing")
        if isinstance(want, float):
            ok = abs(float(v) - want) <= 1e-6 * abs(want)
        else:
            ok = int(v) == want
        if not ok:
            die(f"GGUF {gg_key} = {v!r}, expected {want!r} (for HF {hf_key})")
        got[hf_key] = want
    vl = field_value(reader, "gemma3.attention.value_length")
    if vl != 256:
        die(f"gemma3.attention.value_length = {vl!r}, expected 256")
    eps = float(field_value(reader, "gemma3.attention.layer_norm_rms_epsilon"))
    if abs(eps - 1e-6) > 1e-12:
        die(f"layer_norm_rms_epsilon = {eps!r}, expected 1e-6")
    for k in ("gemma3.attn_logit_softcapping", "gemma3.final_logit_softcapping"):
        if field_value(reader, k) is not None:
            die(f"{k} is present; this converter assumes Gemma 3 without softcapping")
    if any(k.startswith("gemma3.rope.scaling") for k in reader.fields):
        die("rope scaling keys present; this converter assumes rope_scaling = null")
    ids = {name: field_value(reader, f"tokenizer.ggml.{name}_token_id")
           for name in ("bos", "eos", "padding", "unknown")}
    if ids != {"bos": 2, "eos": 1, "padding": 0, "unknown": 3}:
        die(f"special token ids {ids}, expected bos 2, eos 1, pad 0, unk 3")

    n_layers = got["num_hidden_layers"]
    pattern = 6  # not in the GGUF: llama.cpp set_swa_pattern(6); transformers' default
    layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                   for i in range(n_layers)]
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "_sliding_window_pattern": pattern,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "final_logit_softcapping": None,
        "head_dim": got["head_dim"],
        "hidden_activation": "gelu_pytorch_tanh",  # ggml's tanh GELU in llama.cpp's graph
        "hidden_size": got["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": got["intermediate_size"],
        "layer_types": layer_types,
        "max_position_embeddings": got["max_position_embeddings"],
        "num_attention_heads": got["num_attention_heads"],
        "num_hidden_layers": n_layers,
        "num_key_value_heads": got["num_key_value_heads"],
        "pad_token_id": 0,
        "query_pre_attn_scalar": got["head_dim"],  # not in the GGUF; llama.cpp: 1/sqrt(head_dim)
        "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000.0,  # not in the GGUF; llama.cpp hard-codes 10000 for GEMMA3
        "rope_scaling": None,
        "rope_theta": got["rope_theta"],
        "sliding_window": got["sliding_window"],
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_bidirectional_attention": False,
        "use_cache": True,
        "vocab_size": None,  # filled from the embedding shape
    }


# ---------------------------------------------------------------------------------------------
# Tensors

_BLOCK_MAP = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",  # pitfall 1: PRE-feedforward
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name: str) -> str:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    m = re.fullmatch(r"blk\.(\d+)\.([a-z_]+)\.weight", gguf_name)
    if m and m.group(2) in _BLOCK_MAP:
        return f"model.layers.{m.group(1)}.{_BLOCK_MAP[m.group(2)]}.weight"
    die(f"unexpected GGUF tensor {gguf_name!r} (no HF name known)")


def f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even f32 -> bf16, returned as uint16 bit patterns."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        die("non-finite value in a tensor")
    # uint32 cannot overflow here: finite |x| <= 0x7F7FFFFF, plus at most 0x8000.
    out = np.empty(a.shape, dtype=np.uint16)
    flat_u, flat_o = a.reshape(-1).view(np.uint32), out.reshape(-1)
    step = 1 << 22
    for i in range(0, flat_u.size, step):
        u = flat_u[i:i + step]
        flat_o[i:i + step] = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
                              >> np.uint32(16)).astype(np.uint16)
    return out


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def convert(gguf_path: Path, tok_dir: Path, out_dir: Path, f32: bool) -> None:
    t0 = time.time()
    reader = GGUFReader(str(gguf_path))
    config = build_config(reader)
    n_layers = config["num_hidden_layers"]

    tensors: list[tuple[str, str, list[int], bytes]] = []
    n_norm = 0
    n_params = 0
    seen = set()
    for t in reader.tensors:
        name = hf_name(t.name)
        if name in seen:
            die(f"duplicate tensor {name}")
        seen.add(name)
        arr = dequantize(t.data, t.tensor_type)
        arr = np.asarray(arr, dtype=np.float32)
        shape = [int(x) for x in reversed([int(v) for v in t.shape])]  # ne is fastest-first
        if list(arr.shape) != shape:
            arr = arr.reshape(shape)
        if name.endswith("norm.weight"):
            # llama.cpp stored w + 1; HF stores w. Undo it and check the bf16 claim.
            arr = arr - np.float32(1.0)
            n_norm += 1
            if not np.array_equal(bf16_bits_to_f32(f32_to_bf16_bits(arr)), arr):
                die(f"{name}: w_gguf - 1 is not exactly representable in bf16; "
                    "the +1 assumption does not hold for this file")
        n_params += arr.size
        if f32:
            data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
            dtype = "F32"
        else:
            data = f32_to_bf16_bits(arr).astype("<u2").tobytes()
            dtype = "BF16"
        tensors.append((name, dtype, shape, data))
        del arr

    expected_names = {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{v}.weight" for i in range(n_layers) for v in _BLOCK_MAP.values()}
    if seen != expected_names:
        die(f"tensor set mismatch: missing {sorted(expected_names - seen)[:5]}, "
            f"extra {sorted(seen - expected_names)[:5]}")
    expected_norms = 1 + 6 * n_layers
    if n_norm != expected_norms:
        die(f"{n_norm} norm tensors, expected {expected_norms}")
    emb_shape = next(s for n, _, s, _ in tensors if n == "model.embed_tokens.weight")
    if emb_shape[1] != config["hidden_size"]:
        die(f"embedding shape {emb_shape}")
    config["vocab_size"] = emb_shape[0]
    if config["vocab_size"] != 262144:
        die(f"vocab_size {config['vocab_size']}, expected 262144")

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    # safetensors: sorted names, 8-byte aligned header, contiguous data.
    tensors.sort(key=lambda x: x[0])
    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)
    with open(tmp / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for _, _, _, data in tensors:
            f.write(data)

    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    shutil.copyfile(tok_dir / "tokenizer.json", tmp / "tokenizer.json")
    tcfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    # Pitfall 6: the npm tokenizer_config is the instruction-tuned model's (eos <end_of_turn>).
    # This is the base model: its EOS is <eos> (id 1), matching config.json and the GGUF.
    tcfg["eos_token"] = "<eos>"
    (tmp / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2, ensure_ascii=False) + "\n")

    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    print(f"convert_gguf_to_hf.py: wrote {out_dir} ({len(tensors)} tensors, {n_params:,} parameters, "
          f"{n_norm} norm tensors shifted by -1, {'f32' if f32 else 'bf16'}) in {time.time() - t0:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf", type=Path)
    ap.add_argument("tokenizer_dir", type=Path, help="directory with tokenizer.json and tokenizer_config.json")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--f32", action="store_true", help="store exact f32 dequantized values instead of bf16")
    a = ap.parse_args()
    for p in (a.gguf, a.tokenizer_dir / "tokenizer.json", a.tokenizer_dir / "tokenizer_config.json"):
        if not p.exists():
            die(f"missing input {p}")
    convert(a.gguf, a.tokenizer_dir, a.out_dir, a.f32)


if __name__ == "__main__":
    main()
