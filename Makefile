# The README's commands. Each installs what it needs, so a fresh machine runs them directly.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch is pinned: an unpinned or newer torch pulls gigabytes of CUDA packages.
TORCH := torch==2.13.0
DEPS := numpy scikit-learn mnist1d matplotlib tqdm onnx onnxruntime onnxscript \
        pytest hypothesis ruff ninja

.PHONY: install test demo bench lint clean

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

lint:
	$(PYTHON) -m ruff check compressor tests benchmarks setup.py

clean:
	rm -rf build compressor/_C*.so compressor/_build_info.py *.egg-info
