#!/usr/bin/env python3
"""mixq vs llama.cpp on the same machine, the same threads and the same prompt tokens.

Run by `make bench` with the bench venv's Python (~/.cache/mixq/venv-bench: llama-cpp-python
compiled here with GGML_NATIVE=ON, plus gguf and numpy). Steps:

 1. llama.cpp's models. The test model was downloaded as a Q4_K_M GGUF and our HF checkpoint
    (models/gemma-3-270m) is its exact dequantisation, so the F16 baseline GGUF is that file
    dequantised to F16 (norms stay F32, all metadata copied). llama.cpp's own quantizer
    (llama_model_quantize, through the binding) makes Q8_0, Q4_0 and Q2_K from the F16 file.
    The Q4_K_M download is measured too.
 2. mixq's models: `mixq-quantize convert MODEL --recipe R` for each recipe (int8, int4,
    compact, optimal), cached by recipe and converter binary under CACHE/mixq/ (--reconvert redoes them), plus the HF
    checkpoint itself (bf16, mixq's full-precision path).
 3. Every model is measured in its own process (so load time and peak RSS are its own):
    `mixq-run bench --json` for mixq; this script's --llama-worker mode for llama.cpp, which
    feeds exactly the prompt token ids mixq-run printed, then decodes greedily.
    One warm-up run, then --reps runs; medians (min..max in the JSON).
 4. One table (tokens/s, TTFT, sizes, load time, peak RSS) and the ratios mixq / llama.cpp for
    int8 vs Q8_0, int4 and compact vs Q4_0, optimal vs Q2_K and bf16 vs F16. Results also go to
    CACHE/results-<time>.json.

Timing is wall clock around forward passes and greedy sampling, as mixq-run bench does:
prefill of N tokens in one call (llama.cpp: n_batch = N, n_ubatch 512), then M decode steps.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

QUANTS = [("Q8_0", 7), ("Q4_0", 2), ("Q2_K", 10)]  # llama_ftype numbers (llama.h)
PAIRS = [("int8", "Q8_0"), ("int4", "Q4_0"), ("compact", "Q4_0"), ("optimal", "Q2_K"),
         ("bf16", "F16")]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def peak_rss() -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def loadavg() -> float:
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError):
        return float("nan")


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


# ---------------------------------------------------------------------------------------------
# llama.cpp side


def make_f16_gguf(src: Path, dst: Path) -> None:
    """`src` dequantised: 2-D tensors F16, the rest F32, metadata copied."""
    import numpy as np
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    tmp = dst.with_suffix(".tmp")
    writer = gguf.GGUFWriter(tmp, arch=arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == "general.file_type":
            value = int(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    for t in reader.tensors:
        a = dequantize(t.data, t.tensor_type)  # HF-shaped (rows, cols) float32
        a = a.astype(np.float16 if a.ndim == 2 else np.float32)
        writer.add_tensor(t.name, a)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(dst)


def quantize_gguf(src: Path, dst: Path, ftype: int, threads: int) -> None:
    import ctypes
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    tmp = dst.with_suffix(".tmp")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"bench.py: llama_model_quantize({src.name} -> {dst.name}) returned {rc}")
    tmp.rename(dst)


def llama_worker(a: argparse.Namespace) -> None:
    """One GGUF, in its own process: prints one JSON object on stdout."""
    import numpy as np
    import llama_cpp

    ids = json.loads(Path(a.prompt_ids).read_text())
    n, m = len(ids), a.gen_tokens
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=a.llama_worker, n_ctx=n + m + 8, n_batch=n, n_ubatch=min(n, 512),
        n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()

    def greedy() -> int:
        # The last evaluated position's logits, read in place (llama.cpp keeps only that row).
        row = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(row, shape=(n_vocab,))))

    def once() -> dict:
        llm.reset()  # eval() removes the cached positions from n_tokens on
        t0 = time.perf_counter()
        llm.eval(ids)
        pp = time.perf_counter() - t0
        tok = greedy()
        ttft = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(m):
            llm.eval([tok])
            tok = greedy()
        tg = time.perf_counter() - t1
        return {"prefill_s": pp, "ttft_s": ttft, "decode_s": tg,
                "prefill_tokens_per_s": n / pp, "decode_tokens_per_s": m / tg}

    for _ in range(a.warmup):
        once()
    runs = [once() for _ in range(a.reps)]
    print(json.dumps({
        "load_s": load_s,
        "peak_rss_bytes": peak_rss(),
        "prefill_tokens_per_s": stats([r["prefill_tokens_per_s"] for r in runs]),
        "decode_tokens_per_s": stats([r["decode_tokens_per_s"] for r in runs]),
        "ttft_s": stats([r["ttft_s"] for r in runs]),
        "runs": runs,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    }))


def llama_version() -> dict:
    try:
        import llama_cpp
        from importlib import metadata
    except ImportError:
        return {"llama_cpp_python": "not installed (run `make bench-env`)"}
    import ctypes

    info = {"llama_cpp_python": metadata.version("llama-cpp-python")}
    # The vendored llama.cpp's ggml reports its version and the commit it was built from.
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    for name in ("ggml_version", "ggml_commit"):
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            info[name] = fn().decode()
    return info


# ---------------------------------------------------------------------------------------------
# Driver


def run_json(cmd: list[str]) -> dict:
    log(" ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip()[-2000:] or f"exit {p.returncode}")
    out = json.loads(p.stdout)
    if "model" in out:  # mixq-run's path; the table's "model" column is ours
        out["path"] = out.pop("model")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/gemma-3-270m"))
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/mixq/bench")
    ap.add_argument("--source-gguf", type=Path, help="default: CACHE/../gguf/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--mixq-run", default="mixq-run")
    ap.add_argument("--mixq-quantize", default="mixq-quantize")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--recipes", default="int8,int4,compact,optimal")
    ap.add_argument("--quants", default="F16,Q8_0,Q4_0,Q2_K,Q4_K_M",
                    help="llama.cpp models to measure (Q4_K_M = the downloaded GGUF)")
    ap.add_argument("--reconvert", action="store_true", help="convert the .mixq files again")
    ap.add_argument("--settle", type=float, default=150.0,
                    help="seconds to wait at most for the load average to fall below 0.5 before measuring")
    ap.add_argument("--llama-worker", help=argparse.SUPPRESS)
    ap.add_argument("--prompt-ids", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.llama_worker:
        return llama_worker(a)

    cache = a.cache.expanduser()
    (cache / "gguf").mkdir(parents=True, exist_ok=True)
    (cache / "mixq").mkdir(parents=True, exist_ok=True)
    src = a.source_gguf or cache.parent / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if not src.exists():
        sys.exit(f"bench.py: {src} missing: run `make test-model`")
    # `make bench` builds first, and the build's load decays over a minute or two: wait for it
    # (at most --settle seconds) so that the figures are taken on a quiet machine
    t_settle = time.time()
    while loadavg() > 0.5 and time.time() - t_settle < a.settle:
        time.sleep(5)
    load0 = loadavg()
    if load0 > 0.5:
        log(f"WARNING: load average {load0:.2f} before starting: other processes share the CPU, "
            "so these numbers are not a fair benchmark (llama.cpp's OpenMP threads suffer most)")
    common = ["--threads", str(a.threads), "--prompt-tokens", str(a.prompt_tokens),
              "--gen-tokens", str(a.gen_tokens), "--reps", str(a.reps), "--warmup", str(a.warmup)]
    rows: list[dict] = []

    # mixq first: its JSON carries the prompt ids llama.cpp will read.
    hf = run_json([a.mixq_run, "bench", "--json", "-m", str(a.model), *common])
    rows.append({"engine": "mixq", "model": "bf16 (HF checkpoint)", "key": "bf16", **hf})
    prompt_ids = cache / f"prompt-{a.prompt_tokens}.json"
    prompt_ids.write_text(json.dumps(hf["prompt_ids"]))
    for recipe in [r for r in a.recipes.split(",") if r]:
        out = cache / "mixq" / f"gemma-3-270m-{recipe}.mixq"
        row = {"engine": "mixq", "model": recipe, "key": recipe}
        try:
            # the cache is keyed by the converter binary too: a rebuilt quantizer may write
            # other types or layouts, and a stale file would be measured as today's recipe
            stamp = out.with_suffix(".quantizer-sha256")
            quantizer_id = hashlib.sha256(Path(a.mixq_quantize).read_bytes()).hexdigest()
            stale = not stamp.exists() or stamp.read_text().strip() != quantizer_id
            if a.reconvert or not out.exists() or stale:
                log(f"converting {a.model} --recipe {recipe} (cached as {out})")
                p = subprocess.run([a.mixq_quantize, "convert", str(a.model), "-o", str(out),
                                    "--recipe", recipe, "--profile", "cpu", "--no-eval", "--quiet"],
                                   capture_output=True, text=True)
                if p.returncode != 0:
                    raise RuntimeError("mixq-quantize convert: " + p.stderr.strip()[-600:])
                stamp.write_text(quantizer_id + "\n")
            row.update(run_json([a.mixq_run, "bench", "--json", "-m", str(out), *common]))
        except (RuntimeError, OSError) as e:
            row["error"] = str(e)
            log(f"{recipe}: {e}")
        rows.append(row)

    wanted = [q for q in a.quants.split(",") if q]
    f16 = cache / "gguf" / "gemma-3-270m-f16.gguf"
    ggufs = {"F16": f16, "Q4_K_M": src}
    ggufs.update({name: cache / "gguf" / f"gemma-3-270m-{name.lower()}.gguf" for name, _ in QUANTS})
    if any(q != "Q4_K_M" for q in wanted) and not f16.exists():
        log(f"writing {f16} ({src.name} dequantised to F16)")
        make_f16_gguf(src, f16)
    for name, ftype in QUANTS:
        if name in wanted and not ggufs[name].exists():
            log(f"llama.cpp quantize F16 -> {name}")
            quantize_gguf(f16, ggufs[name], ftype, a.threads)
    for name in wanted:
        row = {"engine": "llama.cpp", "model": name + (" (download)" if name == "Q4_K_M" else ""),
               "key": name, "file_size_bytes": ggufs[name].stat().st_size}
        try:
            row.update(run_json([sys.executable, __file__, "--llama-worker", str(ggufs[name]),
                                 "--prompt-ids", str(prompt_ids), *common]))
        except RuntimeError as e:
            row["error"] = str(e)
        rows.append(row)

    version = llama_version()
    sysinfo = next((r.get("system_info") for r in rows if r.get("system_info")), "?")
    load = (load0, loadavg())
    report(rows, a, version, sysinfo, load)
    out = cache / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "llama_cpp": version,
                               "loadavg_before_after": load,
                               "llama_system_info": sysinfo, "rows": rows}, indent=1))
    print(f"\n(full results: {out})")


def report(rows: list[dict], a: argparse.Namespace, version: dict, sysinfo: str,
           load: tuple[float, float]) -> None:
    mixq_dev = next((r["device"] for r in rows if r.get("device")), "?")
    print(f"\nmixq vs llama.cpp: Gemma 3 270M, {a.threads} threads, pp{a.prompt_tokens} then "
          f"tg{a.gen_tokens} (greedy), median of {a.reps} runs after {a.warmup} warm-up")
    print(f"  llama.cpp: llama-cpp-python {version.get('llama_cpp_python')} "
          + " ".join(f"{k}={v}" for k, v in version.items() if k != "llama_cpp_python"))
    print(f"  llama.cpp system info: {sysinfo}")
    print(f"  mixq: {mixq_dev}")
    # the "after" figure includes the benchmark's own threads (about --threads), so only the
    # load before the run says whether something else shared the CPU
    print(f"  machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} before, {load[1]:.2f} after"
          " (after includes the benchmark's own threads)"
          + ("  <-- NOT QUIET: numbers unreliable" if load[0] > 0.5 else "") + "\n")
    hdr = (f"{'engine':<10} {'model':<22} {'size MB':>8} {'pp t/s':>9} {'tg t/s':>8} "
           f"{'ttft ms':>8} {'load s':>7} {'peak RSS MB':>11}")
    print(hdr)
    print("-" * len(hdr))
    mb = lambda b: b / 2**20 if b else float("nan")
    for r in rows:
        if "error" in r:
            print(f"{r['engine']:<10} {r['model']:<22} unavailable: {r['error'].splitlines()[-1][:80]}")
            continue
        print(f"{r['engine']:<10} {r['model']:<22} {mb(r.get('file_size_bytes')):>8.1f} "
              f"{r['prefill_tokens_per_s']['median']:>9.1f} {r['decode_tokens_per_s']['median']:>8.2f} "
              f"{r['ttft_s']['median'] * 1e3:>8.1f} {r['load_s']:>7.2f} {mb(r.get('peak_rss_bytes')):>11.1f}")
    by = {(r["engine"], r["key"]): r for r in rows if "error" not in r}
    print(f"\nratios mixq / llama.cpp (>1: mixq is faster or larger)")
    print(f"{'pair':<18} {'size':>7} {'pp':>7} {'tg':>7} {'ttft':>7}")
    for mk, lk in PAIRS:
        m, l = by.get(("mixq", mk)), by.get(("llama.cpp", lk))
        if not (m and l):
            print(f"{mk + ' vs ' + lk:<18} (missing)")
            continue
        med = lambda r, k: r[k]["median"]
        print(f"{mk + ' vs ' + lk:<18} {m['file_size_bytes'] / l['file_size_bytes']:>7.2f} "
              f"{med(m, 'prefill_tokens_per_s') / med(l, 'prefill_tokens_per_s'):>7.2f} "
              f"{med(m, 'decode_tokens_per_s') / med(l, 'decode_tokens_per_s'):>7.2f} "
              f"{med(m, 'ttft_s') / med(l, 'ttft_s'):>7.2f}")


if __name__ == "__main__":
    main()
