# The README's commands. Each installs what it needs, so a fresh machine runs them directly.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch is pinned: an unpinned or newer torch pulls gigabytes of CUDA packages.
TORCH := torch==2.13.0
DEPS := numpy scikit-learn mnist1d matplotlib tqdm onnx onnxruntime onnxscript \
        pytest hypothesis ruff ninja

.PHONY: install test demo bench gpu-check lint clean

install:
	$(PIP) install -q $(TORCH)
	$(PIP) install -q $(DEPS)
	$(PIP) install -q --no-build-isolation -e .
	$(PYTHON) -m compressor.cli info

test: install
	$(PYTHON) -m pytest tests

demo: install
	$(PYTHON) -m compressor.cli demo

bench: install
	$(PYTHON) -m benchmarks.run_all

# For a machine with a CUDA build of torch and nvcc (e.g. a lent H100, no network): build the CUDA
# kernels, run every CUDA test, then the GPU benchmarks (JSON in benchmarks/results/).
gpu-check:
	$(PYTHON) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: no CUDA device')"
	TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} $(PIP) install -q --no-build-isolation --no-deps -e .
	$(PYTHON) -m compressor.cli info
	$(PYTHON) -m pytest -q -m cuda tests
	$(PYTHON) -m benchmarks.sparse_cuda --quick
	$(PYTHON) -m benchmarks.pow2_cuda --quick
	$(PYTHON) -m benchmarks.onlstm --device cuda --quick

lint:
	$(PYTHON) -m ruff check compressor tests benchmarks setup.py

clean:
	rm -rf build compressor/_C*.so compressor/_build_info.py *.egg-info
