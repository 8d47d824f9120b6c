# Set-up and everyday commands. `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on these machines' disk; installing it first keeps pip
# from pulling a multi-GB CUDA build to satisfy the package's torch requirement.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv test quick lint demo reproduce clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

venv: $(BIN)/.installed

# Every test, the slow ones, those reading ../shared/official-dvae-se and the browser test included.
test: venv lint
	$(BIN)/python -m pytest tests

# The fast tests only.
quick: venv
	$(BIN)/python -m pytest tests -m "not slow and not official and not browser"

lint: venv
	$(BIN)/ruff check src tests benchmarks recipes
	$(BIN)/ruff format --check src tests benchmarks recipes

demo: venv
	$(BIN)/speechdvae demo -o demo_output

# Every table and figure of both papers on the open corpus, from the committed checkpoints; ARGS=--retrain
# retrains the priors first, ARGS="--only enhancement" reruns one report. Speed is measured in benchmarks/.
reproduce: venv
	$(BIN)/pip install -q -e ".[eval,data,dnsmos]"
	$(BIN)/python recipes/reproduce.py $(ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache demo_output
