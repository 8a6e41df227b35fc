# `make serve` and `make test` work on a bare machine: they create the virtualenv and install first,
# exactly the versions in requirements.lock (hashes checked), then this checkout in editable mode.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PYTEST_ARGS ?=
# pip-compile's options: the lock holds runtime, test and bench dependencies, with hashes.
LOCK_OPTIONS := --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	--extra server --extra milvus --extra langchain --extra llama-index --extra test --extra bench --constraint lock-constraints.txt

.PHONY: install install-gpu serve test test-fast test-benchmarks bench lock lock-check clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# A CUDA machine: the locked set, then a CUDA build of the same torch and FAISS's GPU wheel (not locked).
install-gpu: $(STAMP)
	v=$$($(PY) -c 'import torch; print(torch.__version__.split("+")[0])') && \
	$(PY) -m pip install -q --force-reinstall --no-deps "torch==$$v" && \
	$(PY) -m pip install -q "torch==$$v"  # the CUDA libraries it needs
	$(PY) -m pip uninstall -q -y faiss-cpu
	$(PY) -m pip install -q -e ".[server,gpu]"

# Re-resolve requirements.lock from pyproject.toml, keeping today's pins where they still fit;
# `make lock UPGRADE=1` takes the newest releases instead.
lock:
	test -x .lockenv/bin/pip-compile || ($(PYTHON) -m venv .lockenv && .lockenv/bin/pip install -q pip-tools)
	.lockenv/bin/pip-compile -q $(LOCK_OPTIONS) $(if $(UPGRADE),--upgrade) -o $(LOCK) pyproject.toml

# Fails when pyproject.toml asks for something requirements.lock does not pin (run by CI).
lock-check: $(STAMP)
	$(PY) .ci/check_lock.py pyproject.toml $(LOCK)

serve: $(STAMP)
	$(PY) -m service migrate
	$(PY) -m service serve

# Every test but the benchmark harness's end-to-end run (test-benchmarks; CI runs both).
test: $(STAMP)
	$(PY) -m pytest -q -m "not benchmark" $(PYTEST_ARGS)

test-benchmarks: $(STAMP)
	$(PY) -m pytest -q -m benchmark $(PYTEST_ARGS)

# The unit tier: no app, no server, no real checkpoint; well under a minute.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not system" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .lockenv data bench-results dist
