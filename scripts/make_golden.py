#!/usr/bin/env python3
"""Write the transformers reference fixtures in tests/golden/ for the Gemma 3 270M test model.

Run by hand, not in CI:   make golden      (= make test-model golden-env, then this script)

Needs torch + transformers (the venv `make golden-env` builds at ~/.cache/mixq/venv-ref, pinned in
scripts/requirements-ref.txt). Runs on the CPU in a few tens of seconds.

Reference settings, and why
---------------------------
* The model is models/gemma-3-270m, the bf16 checkpoint that `make test-model` converts. It is
  loaded with dtype=torch.float32 and attn_implementation="eager": bf16 weights widened exactly to
  f32, every operation in f32. That is what mixq's Rust runtime computes.
* Embedding scale. HF's Gemma3TextScaledWordEmbedding keeps `embed_scale` as a non-persistent f32
  buffer holding sqrt(hidden_size) = 25.298222 and multiplies by `embed_scale.to(weight.dtype)`.
  Run natively in bf16 (the checkpoint's dtype) that is 25.25; loaded in f32 it would be 25.298.
  Our runtime computes in f32 but rounds the scale to the checkpoint dtype, as HF does for the
  native bf16 run, so here we overwrite the buffer (and `scalar_embed_scale`, which
  `_init_weights` uses to refill it) with bf16(sqrt(640)) = 25.25 after loading, and check that
  the embedding output really is E[ids] * 25.25.
* Hidden-state trace: transformers' output capturing replaces `hidden_states[-1]` with the
  final-normed `last_hidden_state`, so the output of the last layer itself is not in
  `output_hidden_states`. The trace therefore uses forward hooks on the embedding, on each of the
  18 decoder layers and on the final norm, and cross-checks them against `output_hidden_states`
  (entries 0..17 = embedding and layers 0..16, entry 18 = after the final norm).

Fixtures (one compact JSON file per prompt): prompt text, token ids (with BOS), for EVERY prompt
position the top-20 logits (ids and f32 values rounded to 5 decimals), the mean NLL of the prompt,
and 32 greedy tokens (ids, decoded text, and the top1 - top2 logit margin at each step) from
model.generate(do_sample=False). Plus
trace_capital.json. Every file records the library versions and the checkpoint's sha256s.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path

try:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
except ImportError as e:
    sys.exit(f"make_golden.py: cannot import {e.name!r}; run `make golden-env` and use "
             "~/.cache/mixq/venv-ref/bin/python (or just `make golden`)")

TOP_K = 20
GEN_TOKENS = 32
LONG_PROMPT_TOKENS = 700  # > sliding_window (512), so sliding layers really slide
CAPITAL_IDS = [2, 818, 5279, 529, 7001, 563]  # shared/TEST-MODEL.md


def die(msg: str) -> None:
    sys.exit(f"make_golden.py: ERROR: {msg}")


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def bf16_round(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).to(torch.bfloat16).to(torch.float32).item()


def r5(x: float) -> float:
    return round(float(x), 5)


def long_prompt(tok, eval_text: str, n_tokens: int) -> str:
    """The first ~n_tokens of the evaluation text, cut at a whitespace boundary."""
    enc = tok(eval_text, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= n_tokens:
        die(f"evaluation text has only {len(enc['input_ids'])} tokens")
    cut = enc["offset_mapping"][n_tokens][0]
    text = eval_text[:cut]
    return text[: max(text.rfind(" "), text.rfind("\n"))].rstrip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=Path("models/gemma-3-270m"))
    ap.add_argument("--eval", type=Path, default=Path("models/data/eval.txt"))
    ap.add_argument("--out", type=Path, default=Path("tests/golden"))
    a = ap.parse_args()
    for p in (a.model / "config.json", a.model / "model.safetensors", a.eval):
        if not p.exists():
            die(f"{p} missing: run `make test-model` first")
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    cfg = model.config

    # --- embedding scale: bf16(sqrt(hidden_size)) ----------------------------------------------
    emb = model.model.embed_tokens
    scale = bf16_round(math.sqrt(cfg.hidden_size))
    if scale != 25.25:
        die(f"bf16(sqrt({cfg.hidden_size})) = {scale}, expected 25.25")
    if not hasattr(emb, "embed_scale"):
        die("model.model.embed_tokens has no embed_scale; transformers changed, revisit this script")
    with torch.no_grad():
        emb.embed_scale.fill_(scale)
    if hasattr(emb, "scalar_embed_scale"):
        emb.scalar_embed_scale = scale
    with torch.no_grad():
        ids = torch.tensor([CAPITAL_IDS])
        got = emb(ids)
        want = emb.weight[ids] * torch.tensor(scale, dtype=torch.float32)
        if not torch.equal(got, want):
            die("embed_scale override did not take effect")
        if torch.equal(got, emb.weight[ids] * torch.tensor(math.sqrt(cfg.hidden_size), dtype=torch.float32)):
            die("embedding output still uses the f32 scale")

    versions = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    checkpoint = {
        "dir": str(a.model),
        "config.json_sha256": sha256_file(a.model / "config.json"),
        "model.safetensors_sha256": sha256_file(a.model / "model.safetensors"),
        "tokenizer.json_sha256": sha256_file(a.model / "tokenizer.json"),
    }
    settings = {
        "dtype": "float32 (bf16 checkpoint widened exactly)",
        "attn_implementation": "eager",
        "embed_scale": scale,
        "embed_scale_note": "bf16(sqrt(640)) = 25.25, as HF computes it running the bf16 checkpoint natively",
        "top_k": TOP_K,
        "logits_rounding": "5 decimals",
        "generate": {"do_sample": False, "max_new_tokens": GEN_TOKENS, "eos_token_id": cfg.eos_token_id},
    }

    # --- prompts -------------------------------------------------------------------------------
    eval_text = a.eval.read_text(encoding="utf-8")
    chat_messages = [{"role": "user", "content": "Write one sentence about the ocean."}]
    chat_text = tok.apply_chat_template(chat_messages, tokenize=False, add_generation_prompt=True)
    prompts = [
        # name, text, add_special_tokens (BOS), extra fields
        ("capital", "The capital of France is", True, {}),
        ("long_prose", long_prompt(tok, eval_text, LONG_PROMPT_TOKENS), True,
         {"source": f"start of {a.eval} (Moby-Dick ch. 1), cut at a word boundary"}),
        ("chat", chat_text, False,
         {"messages": chat_messages, "note": "Gemma chat template applied (add_generation_prompt); "
          "the text already starts with <bos>, so it is tokenized without adding special tokens"}),
        ("odd", "Café №42: 3.14159 × 2 = 6.28318… naïve 🙂 日本語 x=0x1F; [ok]", True, {}),
        ("story", "Once upon a time, in a small village by the sea,", True, {}),
    ]

    a.out.mkdir(parents=True, exist_ok=True)
    summary = []
    for name, text, add_special, extra in prompts:
        ids = tok(text, add_special_tokens=add_special)["input_ids"]
        if ids[0] != cfg.bos_token_id:
            die(f"{name}: first token {ids[0]} is not BOS")
        if ids.count(cfg.bos_token_id) != 1:
            die(f"{name}: BOS appears {ids.count(cfg.bos_token_id)} times")
        if name == "capital" and ids != CAPITAL_IDS:
            die(f"tokenizer gives {ids} for the capital prompt, expected {CAPITAL_IDS}")
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0].float()  # [T, V]
            lp = torch.log_softmax(logits.double(), dim=-1)
            nll = -lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean().item()
            top = torch.topk(logits, TOP_K, dim=-1)
            gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=GEN_TOKENS, pad_token_id=cfg.pad_token_id,
                                 eos_token_id=cfg.eos_token_id, top_k=None, top_p=None,
                                 output_logits=True, return_dict_in_generate=True)
        gen_ids = gen.sequences[0, len(ids):].tolist()
        # top1 - top2 logit at each greedy step: a runtime whose f32 arithmetic differs slightly may
        # pick the other token where this is tiny, and diverge from there on.
        margins = []
        for step in gen.logits:
            t2 = torch.topk(step[0].float(), 2).values
            margins.append(r5(t2[0] - t2[1]))
        if gen_ids[0] != int(logits[-1].argmax()):
            die(f"{name}: first greedy token {gen_ids[0]} != argmax of the last prompt logits")
        fixture = {
            "name": name,
            "prompt": text,
            "add_special_tokens": add_special,
            **extra,
            "prompt_ids": ids,
            "n_prompt_tokens": len(ids),
            "prompt_mean_nll": round(nll, 6),
            "top_k": TOP_K,
            "top_ids": top.indices.tolist(),
            "top_logits": [[r5(v) for v in row] for row in top.values.tolist()],
            "greedy_ids": gen_ids,
            "greedy_text": tok.decode(gen_ids, skip_special_tokens=False),
            "greedy_margins": margins,
            "settings": settings,
            "versions": versions,
            "checkpoint": checkpoint,
        }
        path = a.out / f"{name}.json"
        path.write_text(json.dumps(fixture, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
        summary.append((name, len(ids), len(gen_ids), nll, fixture["greedy_text"], path.stat().st_size))
        print(f"{name}: {len(ids)} prompt tokens, mean NLL {nll:.4f}, greedy {fixture['greedy_text']!r}")

    # --- trace ---------------------------------------------------------------------------------
    ids = CAPITAL_IDS
    points: dict[str, torch.Tensor] = {}
    hooks = [emb.register_forward_hook(lambda m, i, o: points.__setitem__("embedding", o.detach().clone()))]
    for li, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, li=li: points.__setitem__(f"layer_{li}", (o[0] if isinstance(o, tuple) else o).detach().clone())))
    hooks.append(model.model.norm.register_forward_hook(
        lambda m, i, o: points.__setitem__("final_norm", o.detach().clone())))
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    for h in hooks:
        h.remove()
    hs = out.hidden_states
    n_layers = cfg.num_hidden_layers
    order = ["embedding"] + [f"layer_{i}" for i in range(n_layers)] + ["final_norm"]
    if len(hs) != n_layers + 1:
        die(f"output_hidden_states has {len(hs)} entries, expected {n_layers + 1}")
    if not torch.equal(hs[0], points["embedding"]):
        die("hidden_states[0] != embedding hook")
    for i in range(1, n_layers):
        if not torch.equal(hs[i], points[f"layer_{i - 1}"]):
            die(f"hidden_states[{i}] != layer_{i - 1} hook")
    if not torch.equal(hs[n_layers], points["final_norm"]):
        die("hidden_states[-1] is not the final-normed state (transformers changed?)")
    logits = out.logits[0].float()
    positions = [0, len(ids) - 1]

    def summarize(t: torch.Tensor, pos: int) -> dict:
        v = t[0, pos].double()
        return {"first8": [r5(x) for x in v[:8].tolist()], "l2": round(v.norm().item(), 5)}

    trace = {
        "prompt": "The capital of France is",
        "prompt_ids": ids,
        "positions": positions,
        "points": [{"name": n, **{f"pos{p}": summarize(points[n], p) for p in positions}} for n in order],
        "logits": {f"pos{p}": {"first8": [r5(x) for x in logits[p, :8].tolist()],
                                "l2": round(logits[p].double().norm().item(), 5),
                                "argmax": int(logits[p].argmax()),
                                "argmax_token": tok.convert_ids_to_tokens(int(logits[p].argmax())),
                                "max": r5(logits[p].max())} for p in positions},
        "note": "points: after the scaled embedding, after each decoder layer (forward hooks), after the "
                "final norm. transformers' output_hidden_states[1..17] equal layer_0..layer_16 and its "
                "last entry equals final_norm (it overwrites the last layer's output), checked.",
        "settings": settings,
        "versions": versions,
        "checkpoint": checkpoint,
    }
    (a.out / "trace_capital.json").write_text(json.dumps(trace, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    total = sum(p.stat().st_size for p in a.out.glob("*.json"))
    print(f"trace: last-position argmax {trace['logits'][f'pos{positions[1]}']['argmax']} "
          f"({trace['logits'][f'pos{positions[1]}']['argmax_token']!r})")
    print(f"wrote {len(summary) + 1} fixtures to {a.out} ({total:,} bytes) in {time.time() - t0:.1f} s "
          f"with transformers {versions['transformers']}, torch {versions['torch']}")


if __name__ == "__main__":
    main()
