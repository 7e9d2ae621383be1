#!/usr/bin/env python3
"""llama.cpp's own quantization quality on OUR evaluation text, with OUR metric definitions.

Run by `make quality-baseline` with the bench venv's Python (~/.cache/mixq/venv-bench, see
scripts/bench.py). The numbers are defined exactly as quantizer/src/eval.rs defines them, so they
sit next to `mixq-quantize convert`'s report line for line:

 - Tokens: models/data/eval.txt tokenized without BOS by the checkpoint's tokenizer.json (HF
   `tokenizers`, the file mixq's tokenizer reads); checked identical to the GGUF's own tokenizer
   (llama.cpp's) and, with --mixq-run, to the ids mixq-run prints. Any <bos> in the text is
   dropped, the first --eval-tokens ids are kept and cut into windows of EVAL_WINDOW = 1024 tokens,
   each `[<bos>, 1023 text tokens]`; every position predicts the next token of its window; each
   window starts from an empty KV cache (llama_memory_clear, positions from 0).
 - All models run in lockstep over chunks of CHUNK = 64 positions (eval.rs's CHUNK; llama.cpp's
   KV cache carries the window across chunks, logits for every position).
 - PPL = exp(mean next-token NLL) in nats; retention = PPL_ref / PPL_quant x 100 where ref =
   llama.cpp's F16 GGUF of the same weights; KL(P_ref || P_quant) per position (mean, nearest-rank
   p99); top-1 agreement of the argmax (first on ties). Sums in f64 (eval.rs stores the log-probs as
   f32 between its two passes; here they stay f64: differences of order 1e-7 in KL).

Models: F16 (the downloaded Q4_K_M dequantised, exactly our HF checkpoint; bench.py's
make_f16_gguf), and llama.cpp's quantizer (llama_model_quantize) from it: Q8_0, Q4_0, Q2_K, plus
Q2_K and IQ2_M with an importance matrix computed on OUR calibration text (models/data/calib.txt,
never eval.txt). llama.cpp's imatrix tool is not part of llama-cpp-python's build, so this script
collects the same statistics itself through llama.cpp's eval callback (cb_eval), as
tools/imatrix does: for every MUL_MAT whose weight is a `blk.*` tensor and whose activation has at
least 16 rows, the per-input-column sum of x^2 and the row count; importance = in_sum2 / counts,
handed to llama_model_quantize_params.imatrix. Chunks of 512 tokens, each starting with <bos>
(llama-imatrix's defaults). GGUFs and the imatrix are cached under CACHE/gguf/.

Output: one table (file size, bits per weight of the layer matrices from the GGUF's tensor
types, PPL, retention, KL mean / p99, top-1) and CACHE/quality-<time>.json.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (make_f16_gguf, quantize_gguf, llama_version, loadavg)

EVAL_WINDOW = 1024  # quantizer/src/eval.rs
CHUNK = 64  # quantizer/src/eval.rs
DEFAULT_EVAL_TOKENS = 1024  # quantizer/src/eval.rs
MIXQ_PPL_REF = 74.765  # mixq's eval of the HF checkpoint, first 1024 tokens of eval.txt
IMATRIX_CTX = 512  # llama-imatrix's default chunk
# name -> (llama_ftype, needs the imatrix)
TYPES = {"Q8_0": (7, False), "Q4_0": (2, False), "Q2_K": (10, False),
         "Q2_K+imat": (10, True), "IQ2_M+imat": (29, True)}


def log(msg: str) -> None:
    print(f"[quality] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Tokens


def eval_windows(a: argparse.Namespace, gguf_path: Path) -> tuple[list[list[int]], dict]:
    """eval.rs's windows(): ids without BOS, first max_tokens, chunks of 1023 behind a <bos>."""
    import llama_cpp
    from tokenizers import Tokenizer

    text = a.eval.read_text(encoding="utf-8")
    tok = Tokenizer.from_file(str(a.model / "tokenizer.json"))
    enc = tok.encode(text, add_special_tokens=False)
    bos = tok.token_to_id("<bos>")
    ids = [t for t in enc.ids if t != bos]
    take = ids[:a.eval_tokens]
    check = {"tokenizer": str(a.model / "tokenizer.json"), "text_tokens": len(ids), "bos": bos}

    # The GGUF's tokenizer (llama.cpp's implementation, the GGUF's vocabulary) on the same text.
    model = load_model(gguf_path, vocab_only=True)
    vocab = llama_cpp.llama_model_get_vocab(model)
    raw = text.encode("utf-8")
    buf = (llama_cpp.llama_token * (len(raw) + 16))()
    n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, len(buf), False, False)
    if n < 0:
        sys.exit(f"llama_tokenize failed ({n})")
    gg = [t for t in buf[:n] if t != bos]
    if llama_cpp.llama_vocab_bos(vocab) != bos:
        sys.exit(f"BOS differs: tokenizer.json {bos}, GGUF {llama_cpp.llama_vocab_bos(vocab)}")
    same = gg[:len(take)] == take
    check["gguf_tokenizer_identical"] = same
    check["gguf_tokenizer_identical_whole_text"] = gg == ids
    llama_cpp.llama_model_free(model)
    if not same:
        first = next(i for i, (x, y) in enumerate(zip(gg, take)) if x != y)
        sys.exit(f"the GGUF's tokenizer differs from tokenizer.json at token {first}")

    # mixq's own tokenizer: mixq-run prints the prompt ids of a prefix of the text.
    if a.mixq_run:
        import subprocess
        cut = enc.offsets[min(len(enc.ids), a.eval_tokens + 32) - 1][1]
        p = subprocess.run([a.mixq_run, "generate", "--json", "-m", str(a.model), "-p", text[:cut],
                            "-n", "0", "-t", str(a.threads), "--temperature", "0"],
                           capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit("mixq-run generate failed: " + p.stderr[-500:])
        mq = [t for t in json.loads(p.stdout)["prompt_ids"] if t != bos]
        check["mixq_tokenizer_identical"] = mq[:len(take)] == take
        if not check["mixq_tokenizer_identical"]:
            sys.exit("mixq-run's tokenizer differs from tokenizer.json on the evaluation tokens")

    windows = [[bos] + take[i:i + EVAL_WINDOW - 1] for i in range(0, len(take), EVAL_WINDOW - 1)]
    check["ids_sha256"] = hashlib.sha256(json.dumps(windows).encode()).hexdigest()[:16]
    return windows, check


# ---------------------------------------------------------------------------------------------
# llama.cpp: models, contexts, batches


def load_model(path: Path, vocab_only: bool = False):
    import llama_cpp

    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = 0
    mp.vocab_only = vocab_only
    m = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
    if not m:
        sys.exit(f"cannot load {path}")
    return m


def new_context(model, n_ctx: int, n_batch: int, threads: int, cb=None):
    import llama_cpp

    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = n_batch
    cp.n_ubatch = n_batch
    cp.n_seq_max = 1
    cp.n_threads = threads
    cp.n_threads_batch = threads
    if cb is not None:
        cp.cb_eval = cb
        cp.cb_eval_user_data = None
    ctx = llama_cpp.llama_init_from_model(model, cp)
    if not ctx:
        sys.exit("llama_init_from_model failed")
    return ctx


class Batch:
    def __init__(self, n: int):
        import llama_cpp
        self.n_max = n
        self.b = llama_cpp.llama_batch_init(n, 0, 1)

    def fill(self, ids: list[int], pos0: int, logits_all: bool) -> None:
        b = self.b
        b.n_tokens = len(ids)
        for i, t in enumerate(ids):
            b.token[i] = t
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1 if (logits_all or i == len(ids) - 1) else 0

    def free(self) -> None:
        import llama_cpp
        llama_cpp.llama_batch_free(self.b)


def decode(ctx, batch: Batch) -> None:
    import llama_cpp
    rc = llama_cpp.llama_decode(ctx, batch.b)
    if rc != 0:
        sys.exit(f"llama_decode returned {rc}")


def clear_memory(ctx) -> None:
    import llama_cpp
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)


# ---------------------------------------------------------------------------------------------
# Importance matrix (what tools/imatrix collects, through the eval callback)


class GgmlTensor(ctypes.Structure):
    """struct ggml_tensor (ggml.h; GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10,
    GGML_MAX_NAME 64). Checked at run time against ggml_get_name / ggml_nbytes."""
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p),
                ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4),
                ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
                ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p),
                ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


def ggml_lib():
    import llama_cpp
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    for fn, res in (("ggml_get_name", ctypes.c_void_p), ("ggml_op_desc", ctypes.c_char_p),
                    ("ggml_nbytes", ctypes.c_size_t), ("ggml_is_contiguous", ctypes.c_bool)):
        getattr(lib, fn).restype = res
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
    return lib


def compute_imatrix(f16: Path, calib: Path, tokenizer_json: Path, chunks: int, threads: int) -> dict:
    """{weight name: (in_sum2 float64[n_cols], count)} over `chunks` chunks of calib text."""
    import llama_cpp
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    bos = tok.token_to_id("<bos>")
    ids = [t for t in tok.encode(calib.read_text(encoding="utf-8"), add_special_tokens=False).ids
           if t != bos]
    n_chunks = len(ids) // IMATRIX_CTX
    if chunks > 0:
        n_chunks = min(n_chunks, chunks)
    lib = ggml_lib()
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    checked = [False]
    errors: list[str] = []  # an exception cannot cross the C callback: recorded, checked after

    def wanted(t: GgmlTensor) -> tuple[str, GgmlTensor] | None:
        if lib.ggml_op_desc(ctypes.addressof(t)) != b"MUL_MAT" or not t.src[0] or not t.src[1]:
            return None
        w = GgmlTensor.from_address(t.src[0])
        x = GgmlTensor.from_address(t.src[1])
        name = w.name.decode()
        if not name.startswith("blk.") or x.ne[1] < 16 or x.type != 0:  # GGML_TYPE_F32
            return None
        return name, x

    def cb(ptr, ask, _ud):
        try:
            return collect(ptr, ask)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
            return False

    def collect(ptr, ask):
        t = GgmlTensor.from_address(ptr)
        if not checked[0]:  # the layout above must be this ggml's
            if lib.ggml_get_name(ptr) != ptr + GgmlTensor.name.offset or \
                    lib.ggml_nbytes(ptr) < t.ne[0] * t.ne[1] * t.ne[2] * t.ne[3] // 64:
                raise RuntimeError("struct ggml_tensor layout mismatch")
            checked[0] = True
        hit = wanted(t)
        if ask:
            return hit is not None
        if hit is None:
            return True
        name, x = hit
        if x.buffer is None or x.data is None:
            raise RuntimeError(f"{name}: activation without host data")
        assert x.nb[0] == 4
        n_cols = x.ne[0]
        rows = [np.ctypeslib.as_array(ctypes.cast(x.data + i2 * x.nb[2] + i3 * x.nb[3],
                                                  ctypes.POINTER(ctypes.c_float)),
                                      shape=(x.ne[1] * x.nb[1] // 4,))
                .reshape(x.ne[1], x.nb[1] // 4)[:, :n_cols]
                for i3 in range(x.ne[3]) for i2 in range(x.ne[2])]
        a = np.concatenate(rows).astype(np.float64)
        if name not in sums:
            sums[name] = np.zeros(n_cols)
            counts[name] = 0
        sums[name] += (a * a).sum(axis=0)
        counts[name] += a.shape[0]
        return True

    cb_c = llama_cpp.ggml_backend_sched_eval_callback(cb)
    model = load_model(f16)
    ctx = new_context(model, IMATRIX_CTX, IMATRIX_CTX, threads, cb_c)
    batch = Batch(IMATRIX_CTX)
    t0 = time.perf_counter()
    for c in range(n_chunks):
        chunk = ids[c * IMATRIX_CTX:(c + 1) * IMATRIX_CTX]
        chunk[0] = bos  # llama-imatrix: first token of each chunk replaced by BOS
        clear_memory(ctx)
        batch.fill(chunk, 0, logits_all=True)  # as llama-imatrix: else the last layer's FFN sees 1 row
        decode(ctx, batch)
        if errors:
            sys.exit("imatrix callback failed: " + errors[0])
        if c == 0 or (c + 1) % 8 == 0 or c + 1 == n_chunks:
            el = time.perf_counter() - t0
            log(f"imatrix: chunk {c + 1}/{n_chunks}, {el:.0f} s "
                f"({(c + 1) * IMATRIX_CTX / el:.0f} tokens/s), {len(sums)} matrices")
    batch.free()
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return {"entries": {k: (sums[k], counts[k]) for k in sorted(sums)},
            "chunks": n_chunks, "chunk_tokens": IMATRIX_CTX, "calib_tokens_available": len(ids)}


def quantize_with_imatrix(src: Path, dst: Path, ftype: int, imatrix: dict, threads: int) -> None:
    import llama_cpp

    entries = imatrix["entries"]
    keep = []  # the arrays must outlive the call
    arr = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
    for i, (name, (s, n)) in enumerate(entries.items()):
        v = np.ascontiguousarray(s / n, dtype=np.float32)  # in_sum2 / counts
        keep.append((name.encode(), v))
        arr[i].name = keep[-1][0]
        arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = v.size
    arr[len(entries)].name = None  # terminator
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    tmp = dst.with_suffix(".tmp")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize({src.name} -> {dst.name}, imatrix) returned {rc}")
    tmp.rename(dst)


def imatrix_cached(a, f16: Path, gguf_dir: Path) -> tuple[dict, Path]:
    key = hashlib.sha256(a.calib.read_bytes() + f16.name.encode()).hexdigest()[:10]
    path = gguf_dir / f"imatrix-calib-{key}-{a.imatrix_chunks}x{IMATRIX_CTX}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        meta["entries"] = {n: (z["s:" + n], int(c)) for n, c in meta.pop("counts").items()}
        return meta, path
    log(f"computing the importance matrix on {a.calib} (F16 model, {a.threads} threads)")
    t0 = time.perf_counter()
    im = compute_imatrix(f16, a.calib, a.model / "tokenizer.json", a.imatrix_chunks, a.threads)
    im["seconds"] = time.perf_counter() - t0
    meta = {k: v for k, v in im.items() if k != "entries"}
    meta["counts"] = {n: c for n, (_, c) in im["entries"].items()}
    meta["calib"] = str(a.calib)
    np.savez(path.with_suffix(".tmp.npz"), meta=json.dumps(meta),
             **{"s:" + n: s for n, (s, _) in im["entries"].items()})
    path.with_suffix(".tmp.npz").rename(path)
    return im, path


# ---------------------------------------------------------------------------------------------
# GGUF facts


def gguf_facts(path: Path) -> dict:
    """Bits per weight of the layer matrices (blk.*, 2-D), and the types used."""
    import gguf

    r = gguf.GGUFReader(path)
    bits = elems = 0
    types: dict[str, int] = {}
    emb = None
    for t in r.tensors:
        if t.name == "token_embd.weight":
            emb = t.tensor_type.name
        if t.name.startswith("blk.") and len(t.shape) >= 2 and int(np.prod(t.shape)) > 0 \
                and not t.name.endswith("_norm.weight"):
            bits += int(t.n_bytes) * 8
            elems += int(t.n_elements)
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {"file_size_bytes": path.stat().st_size, "layer_bpw": bits / elems if elems else None,
            "layer_types": types, "token_embd_type": emb}


# ---------------------------------------------------------------------------------------------
# Evaluation


def log_softmax(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log-probabilities in f64, argmax per row, first on ties)."""
    x = logits.astype(np.float64)
    top = logits.argmax(axis=1)
    m = x.max(axis=1, keepdims=True)
    lz = m + np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    return x - lz, top


def evaluate(models: dict[str, Path], windows: list[list[int]], threads: int) -> dict:
    """All models in lockstep over CHUNK positions: {name: per-position arrays}."""
    import llama_cpp

    names = list(models)  # names[0] is the reference
    loaded = {n: load_model(p) for n, p in models.items()}
    ctxs = {n: new_context(m, EVAL_WINDOW, CHUNK, threads) for n, m in loaded.items()}
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(loaded[names[0]]))
    out = {n: {"nll": [], "kl": [], "agree": []} for n in names}
    batch = Batch(CHUNK)
    scored = sum(len(w) - 1 for w in windows)
    done, t0 = 0, time.perf_counter()
    for w in windows:
        inputs, targets = w[:-1], np.array(w[1:])
        for c in ctxs.values():
            clear_memory(c)
        for c0 in range(0, len(inputs), CHUNK):
            chunk, tgt = inputs[c0:c0 + CHUNK], targets[c0:c0 + CHUNK]
            batch.fill(chunk, c0, logits_all=True)
            ref_lp = ref_top = None
            for n in names:
                decode(ctxs[n], batch)
                ptr = llama_cpp.llama_get_logits(ctxs[n])
                logits = np.ctypeslib.as_array(ptr, shape=(len(chunk) * n_vocab,)).reshape(len(chunk), n_vocab)
                lp, top = log_softmax(logits)
                o = out[n]
                o["nll"].append(-lp[np.arange(len(chunk)), tgt])
                if ref_lp is None:
                    ref_lp, ref_top = lp, top
                    p = np.exp(ref_lp)
                o["kl"].append(np.maximum((p * (ref_lp - lp)).sum(axis=1), 0.0))
                o["agree"].append(top == ref_top)
            done += len(chunk)
            el = time.perf_counter() - t0
            log(f"evaluating: {done}/{scored} tokens x {len(names)} models, {el:.0f} s")
    batch.free()
    for n in names:
        llama_cpp.llama_free(ctxs[n])
        llama_cpp.llama_model_free(loaded[n])
    return {n: {k: np.concatenate(v) for k, v in o.items()} for n, o in out.items()}


def percentile(sorted_v: np.ndarray, p: float) -> float:
    """eval.rs's nearest-rank percentile."""
    rank = math.ceil(p * len(sorted_v))
    return float(sorted_v[min(max(rank, 1), len(sorted_v)) - 1])


def metrics(ref: dict, q: dict) -> dict:
    n = len(q["nll"])
    mr, mq = ref["nll"].mean(), q["nll"].mean()
    d = q["nll"] - ref["nll"]
    md = d.mean()
    se = math.sqrt(d.var(ddof=1) / n) if n > 1 else float("nan")
    kl = np.sort(q["kl"])
    return {"tokens": n, "ppl_ref": math.exp(mr), "ppl_quant": math.exp(mq),
            "retention_ppl_pct": math.exp(mr - mq) * 100, "ppl_ratio": math.exp(mq - mr),
            "retention_ppl_ci95": [math.exp(-(md + 1.96 * se)) * 100, math.exp(-(md - 1.96 * se)) * 100],
            "kl_mean": float(kl.mean()), "kl_p99": percentile(kl, 0.99), "kl_max": float(kl[-1]),
            "top1_agreement": float(q["agree"].mean())}


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/gemma-3-270m"),
                    help="the HF checkpoint (its tokenizer.json)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/mixq/bench")
    ap.add_argument("--source-gguf", type=Path, help="default: CACHE/../gguf/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--eval", type=Path, default=Path("models/data/eval.txt"))
    ap.add_argument("--calib", type=Path, default=Path("models/data/calib.txt"))
    ap.add_argument("--eval-tokens", type=int, default=DEFAULT_EVAL_TOKENS)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quants", default=",".join(TYPES),
                    help="llama.cpp types to measure against F16 (+imat: with the importance matrix)")
    ap.add_argument("--imatrix-chunks", type=int, default=8,
                    help="512-token chunks of the calibration text for the imatrix (0 = all); "
                         "8 = 4096 tokens, mixq's DEFAULT_CALIB_TOKENS")
    ap.add_argument("--mixq-run", help="also check the token ids against this mixq-run's tokenizer")
    a = ap.parse_args()
    if a.eval_tokens <= 0:
        sys.exit("--eval-tokens must be > 0")
    if a.eval.resolve() == a.calib.resolve():
        sys.exit("the calibration text must not be the evaluation text")
    wanted = [q for q in a.quants.split(",") if q]
    for q in wanted:
        if q not in TYPES:
            sys.exit(f"unknown type {q} (known: {', '.join(TYPES)})")

    import llama_cpp
    llama_cpp.llama_backend_init()
    # llama.cpp is chatty: errors only (GGML_LOG_LEVEL_ERROR = 4).
    log_cb = llama_cpp.llama_log_callback(
        lambda lvl, txt, ud: lvl == 4 and print((txt or b"").decode(errors="replace"), end="", file=sys.stderr))
    llama_cpp.llama_log_set(log_cb, None)

    cache = a.cache.expanduser()
    gdir = cache / "gguf"
    gdir.mkdir(parents=True, exist_ok=True)
    src = a.source_gguf or cache.parent / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    f16 = gdir / "gemma-3-270m-f16.gguf"
    if not f16.exists():
        if not src.exists():
            sys.exit(f"{src} missing: run `make test-model`")
        log(f"writing {f16} ({src.name} dequantised to F16)")
        bench.make_f16_gguf(src, f16)
    load0 = bench.loadavg()
    timings: dict[str, float] = {}

    imatrix_info = None
    # "F16 again": the same file in its own model and context, so "KL of F16 vs itself = 0" is
    # measured between two independent runs, not only the reference's row against itself.
    ggufs = {"F16": f16, "F16 again": f16}
    for q in wanted:
        ftype, imat = TYPES[q]
        dst = gdir / f"gemma-3-270m-{q.lower().replace('+imat', '')}" \
            f"{'-imat-' + str(a.imatrix_chunks) if imat else ''}.gguf"
        ggufs[q] = dst
        if dst.exists():
            continue
        t0 = time.perf_counter()
        if imat:
            im, im_path = imatrix_cached(a, f16, gdir)
            imatrix_info = {k: v for k, v in im.items() if k != "entries"} | {"path": str(im_path)}
            log(f"llama.cpp quantize F16 -> {q} (imatrix {im_path.name})")
            quantize_with_imatrix(f16, dst, ftype, im, a.threads)
        else:
            log(f"llama.cpp quantize F16 -> {q}")
            bench.quantize_gguf(f16, dst, ftype, a.threads)
        timings["quantize " + q] = time.perf_counter() - t0
    if imatrix_info is None and any(TYPES[q][1] for q in wanted):
        _, im_path = imatrix_cached(a, f16, gdir)
        z = np.load(im_path, allow_pickle=False)
        imatrix_info = {k: v for k, v in json.loads(str(z["meta"])).items() if k != "counts"}
        imatrix_info["path"] = str(im_path)

    t0 = time.perf_counter()
    windows, tok_check = eval_windows(a, f16)
    log(f"{sum(len(w) - 1 for w in windows)} scored tokens in {len(windows)} windows; "
        f"token ids checked: {tok_check}")
    t0 = time.perf_counter()
    res = evaluate(ggufs, windows, a.threads)
    timings["evaluate"] = time.perf_counter() - t0

    rows = []
    for name, path in ggufs.items():
        rows.append({"type": name, "path": str(path), **gguf_facts(path), **metrics(res["F16"], res[name])})
    ref = rows[0]
    version = bench.llama_version()
    load = (load0, bench.loadavg())

    print(f"\nllama.cpp's quantizer on {a.eval} (first {ref['tokens']} tokens, windows of "
          f"{EVAL_WINDOW} with <bos>, {len(windows)} windows): Gemma 3 270M, reference = its F16 GGUF")
    print("  llama.cpp: " + " ".join(f"{k}={v}" for k, v in version.items()))
    if imatrix_info:
        print(f"  imatrix: {imatrix_info['chunks']} x {imatrix_info['chunk_tokens']} tokens of "
              f"{a.calib} (of {imatrix_info['calib_tokens_available']} available)")
    # MIXQ_PPL_REF is mixq's figure on the default 1024 tokens only: compare just there (on
    # other lengths `mixq-quantize report --eval-tokens N` prints mixq's own PPL_ref)
    same = (f"; mixq's reference (HF checkpoint, its own runtime) PPL_ref {MIXQ_PPL_REF:.3f} "
            f"(ratio {ref['ppl_quant'] / MIXQ_PPL_REF:.4f})" if a.eval_tokens == DEFAULT_EVAL_TOKENS else "")
    print(f"  F16 PPL {ref['ppl_quant']:.3f}{same}\n")
    hdr = (f"{'type':<12} {'size MB':>8} {'layer bpw':>9} {'PPL':>9} {'retention %':>11} "
           f"{'PPL ratio':>9} {'KL mean':>9} {'KL p99':>8} {'top-1 %':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['type']:<12} {r['file_size_bytes'] / 2**20:>8.1f} {r['layer_bpw']:>9.2f} "
              f"{r['ppl_quant']:>9.3f} {r['retention_ppl_pct']:>11.2f} {r['ppl_ratio']:>9.3f} "
              f"{r['kl_mean']:>9.5f} {r['kl_p99']:>8.4f} {r['top1_agreement'] * 100:>8.2f}")
    print("\nlayer types (blk.* matrices) / token_embd:")
    for r in rows:
        print(f"  {r['type']:<12} {r['layer_types']} / {r['token_embd_type']}")
    print(f"\n(95% interval of retention, tokens treated as independent: "
          + ", ".join(f"{r['type']} {r['retention_ppl_ci95'][0]:.1f}..{r['retention_ppl_ci95'][1]:.1f}"
                      for r in rows[1:]) + ")")
    out = cache / f"quality-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(a).items()}, "llama_cpp": version,
        "eval_window": EVAL_WINDOW, "chunk": CHUNK, "windows": len(windows),
        "token_check": tok_check, "mixq_ppl_ref_hf": MIXQ_PPL_REF, "imatrix": imatrix_info,
        "timings_s": timings, "loadavg_before_after": load, "rows": rows}, indent=1))
    print(f"(full results: {out})")


if __name__ == "__main__":
    main()
