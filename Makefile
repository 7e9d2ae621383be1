# mixq: convert a Hugging Face Gemma 3 checkpoint to .mixq and run it.
#
#   make demo   fetch the test model, build, convert it to .mixq, show the report, run a prompt
#   make test   fetch the test model, run the whole test suite (what CI runs)
#
# Downloads, venvs, the converted test model and cargo's target directory live in
# $(MIXQ_CACHE) (default ~/.cache/mixq), so a fresh clone on the same machine is fast.

SHELL := /bin/bash
.DEFAULT_GOAL := help

MIXQ_CACHE ?= $(HOME)/.cache/mixq
export MIXQ_CACHE
export CARGO_TARGET_DIR ?= $(MIXQ_CACHE)/target

PYTHON ?= python3
VENV := $(MIXQ_CACHE)/venv
VENV_REF := $(MIXQ_CACHE)/venv-ref
VENV_BENCH := $(MIXQ_CACHE)/venv-bench
# Debian packages the project needs; other parts of the build append to this list.
APT_PACKAGES ?= python3-venv
# Vulkan backend: lavapipe (CPU Vulkan driver, what CI runs on), the loader, vulkaninfo, glslc for shaders/.
APT_PACKAGES += mesa-vulkan-drivers libvulkan1 vulkan-tools glslc

MODEL := models/gemma-3-270m
MIXQ_RUN := $(CARGO_TARGET_DIR)/release/mixq-run

.PHONY: help setup apt-packages venv test-model build test demo golden-env golden bench-env bench quality-baseline clean

help:
	@echo "make demo        fetch the test model, build, convert it to .mixq, show the report, run a prompt"
	@echo "make test        fetch the test model, cargo test --workspace (CI runs this)"
	@echo "make build       cargo build --release --workspace"
	@echo "make test-model  fetch + verify + convert Gemma 3 270M into $(MODEL), sample text into models/data"
	@echo "make setup       apt packages ($(APT_PACKAGES)) and the converter venv"
	@echo "make golden-env  torch + transformers venv for scripts/make_golden.py (~3 GB, not CI)"
	@echo "make golden      regenerate tests/golden/*.json with transformers (not CI)"
	@echo "make bench       mixq vs llama.cpp (same machine, threads, prompt): tokens/s, sizes, ratios"
	@echo "make quality-baseline  llama.cpp's quantizer (Q8_0..IQ2_M+imatrix) on models/data/eval.txt, mixq's metrics"
	@echo "make bench-env   the llama.cpp venv for make bench (compiles llama.cpp once, a few minutes)"
	@echo "make clean       remove models/ links and cargo's target directory"

setup: apt-packages venv

# Fast when everything is installed: one dpkg-query, no apt-get.
apt-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  echo "[setup] apt-get install$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The venv is rebuilt only when scripts/requirements-convert.txt changes.
venv:
	@if ! cmp -s scripts/requirements-convert.txt $(VENV)/.mixq-requirements; then \
	  echo "[setup] creating $(VENV) (gguf + numpy, pinned in scripts/requirements-convert.txt)"; \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) && \
	  $(VENV)/bin/pip install --disable-pip-version-check -q -r scripts/requirements-convert.txt && \
	  cp scripts/requirements-convert.txt $(VENV)/.mixq-requirements; \
	fi

test-model: setup
	@$(PYTHON) scripts/fetch_test_model.py --python $(VENV)/bin/python

build:
	cargo build --release --workspace

test: setup test-model
	cargo test --workspace

MIXQ_QUANTIZE := $(CARGO_TARGET_DIR)/release/mixq-quantize
DEMO_RECIPE ?= optimal
DEMO_MIXQ := $(MIXQ_CACHE)/demo/gemma-3-270m-$(DEMO_RECIPE).mixq

# Convert once (calibrate, quantize, evaluate: a few minutes on 2 cores), show the report, run a
# prompt on the .mixq. The file is remade when mixq-quantize changes; DEMO_RECIPE=int4 picks a recipe.
demo: setup test-model build
	@$(MAKE) --no-print-directory $(DEMO_MIXQ)
	$(MIXQ_QUANTIZE) report $(DEMO_MIXQ)
	$(MIXQ_RUN) generate --model $(DEMO_MIXQ) --prompt "The capital of France is" --max-tokens 32 --temperature 0

$(DEMO_MIXQ): $(MIXQ_QUANTIZE)
	@mkdir -p $(dir $@)
	$(MIXQ_QUANTIZE) convert $(MODEL) -o $@ --recipe $(DEMO_RECIPE)

golden-env:
	@if ! cmp -s scripts/requirements-ref.txt $(VENV_REF)/.mixq-requirements; then \
	  echo "[golden-env] creating $(VENV_REF) (torch + transformers, ~3 GB download, a few minutes)"; \
	  rm -rf $(VENV_REF) && $(PYTHON) -m venv $(VENV_REF) && \
	  $(VENV_REF)/bin/pip install --disable-pip-version-check -q -r scripts/requirements-ref.txt && \
	  cp scripts/requirements-ref.txt $(VENV_REF)/.mixq-requirements; \
	fi

golden: test-model golden-env
	$(VENV_REF)/bin/python scripts/make_golden.py --model $(MODEL) --eval models/data/eval.txt --out tests/golden

# llama-cpp-python compiles llama.cpp here: Release (-O3) with GGML_NATIVE=ON (-march=native), as
# a local llama.cpp build would be, so the comparison is fair. Rebuilt only when the pins change.
bench-env:
	@if ! cmp -s scripts/requirements-bench.txt $(VENV_BENCH)/.mixq-requirements; then \
	  echo "[bench-env] creating $(VENV_BENCH) (compiles llama.cpp from source: a few minutes)"; \
	  rm -rf $(VENV_BENCH) && $(PYTHON) -m venv $(VENV_BENCH) && \
	  CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF" \
	  CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(VENV_BENCH)/bin/pip install --disable-pip-version-check -q --no-binary llama-cpp-python \
	    -r scripts/requirements-bench.txt && \
	  cp scripts/requirements-bench.txt $(VENV_BENCH)/.mixq-requirements; \
	fi

# Knobs: make bench BENCH_ARGS="--threads 2 --prompt-tokens 128 --gen-tokens 64 --reps 5"
BENCH_ARGS ?=
bench: setup test-model bench-env
	cargo build --release -p mixq-runtime -p mixq-quantizer
	$(VENV_BENCH)/bin/python scripts/bench.py --model $(MODEL) --cache $(MIXQ_CACHE)/bench \
	  --mixq-run $(MIXQ_RUN) --mixq-quantize $(CARGO_TARGET_DIR)/release/mixq-quantize $(BENCH_ARGS)

# Knobs: make quality-baseline QUALITY_ARGS="--eval-tokens 2048 --imatrix-chunks 32 --quants Q4_0,Q2_K"
QUALITY_ARGS ?=
quality-baseline: setup test-model bench-env
	cargo build --release -p mixq-runtime
	$(VENV_BENCH)/bin/python scripts/llama_quality.py --model $(MODEL) --cache $(MIXQ_CACHE)/bench \
	  --mixq-run $(MIXQ_RUN) $(QUALITY_ARGS)

clean:
	rm -rf models/gemma-3-270m models/data
	rm -rf $(CARGO_TARGET_DIR)
