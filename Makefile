# Two commands matter: `make run` (set up, then run the demo pipeline locally)
# and `make test` (set up, then run the tests). Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
DEMO_CONFIG := pipelines/configs/demo.yaml
CLUSTER_CONFIG := pipelines/configs/sd15-finetune.yaml

.PHONY: setup run test test-fast compile demo-assets lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

run: setup
	$(BIN)/trainflow demo-assets
	$(BIN)/trainflow run --config $(DEMO_CONFIG)

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

compile: setup
	$(BIN)/trainflow compile --config $(CLUSTER_CONFIG) --output build/text_to_image.yaml

demo-assets: setup
	$(BIN)/trainflow demo-assets

# Re-pin after editing pyproject.toml's dependencies (writes constraints.txt).
lock: setup
	{ echo "# Exact versions for every environment (make and images/Dockerfile both install with -c)."; \
	  echo "# Regenerate after changing pyproject.toml: make lock"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^trainflow'; } > constraints.txt

clean:
	rm -rf .trainflow build
