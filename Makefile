# Two entry points: `make demo` (the main job on the built-in world) and `make test` (the test suite).
# Both create .venv and install what they need. On machines without an NVIDIA GPU, torch is pinned to the
# CPU build that pip finds first here (torch==2.13.0); elsewhere set TORCH_INDEX to a CPU wheel index.
# With a GPU, pip resolves the CUDA build of torch from the project's requirement.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU ?= torch==2.13.0
TRITON_CPU ?= triton==3.6.0
TORCH_INDEX ?=
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)

CHROMIUM ?= /usr/bin/chromium

.PHONY: install browser demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
ifeq ($(HAS_GPU),1)
	$(BIN)/python -m pip install -q -e '.[dev]'
else
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) '$(TORCH_CPU)'
	$(BIN)/python -m pip install -q '$(TRITON_CPU)'  # Triton's interpreter runs the kernel tests on the CPU
	$(BIN)/python -m pip install -q -e '.[dev]'
endif
	touch $@

install: $(VENV)/.installed

# The play page's browser test drives Debian's chromium (tests/test_play_browser.py); as root on Debian it is
# installed here, elsewhere the test skips and says why.
browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "no $(CHROMIUM) (apt-get install chromium): the browser test will skip"

demo: install
	$(BIN)/causal-rcm demo --out runs/demo

test: install browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
