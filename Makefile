# Two commands matter: `make run` (set up, then run the demo pipeline locally)
# and `make test` (set up, then run the tests). Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
DEMO_CONFIG := pipelines/configs/demo.yaml
CLUSTER_CONFIG := pipelines/configs/sd15-finetune.yaml
# `make images` tags; the CUDA tag is the default in components/component_defaults.py.
IMAGE_REGISTRY ?= ghcr.io/trainflow
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_CUDA = $(IMAGE_REGISTRY)/trainflow:$(IMAGE_TAG)
IMAGE_CPU = $(IMAGE_REGISTRY)/trainflow:$(IMAGE_TAG)-cpu
CONTAINER_ENGINE ?= $(shell command -v docker || command -v podman)

.PHONY: setup run test test-extended test-fast compile demo-assets images lock clean report-screenshot bench-train

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,examples]'
	@rm -f $(VENV)/.installed-* && touch $@

run: setup
	$(BIN)/trainflow demo-assets
	$(BIN)/trainflow run --config $(DEMO_CONFIG)

# Everything but the extended campaigns (whole-pipeline fault runs), which `make test-extended` adds.
test: setup
	$(BIN)/python -m pytest -m "not extended"

test-extended: setup
	$(BIN)/python -m pytest -m extended

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

compile: setup
	$(BIN)/trainflow compile --config $(CLUSTER_CONFIG) --output build/text_to_image.yaml

demo-assets: setup
	$(BIN)/trainflow demo-assets

# The naive per-item PIL loader vs the cache loader vs a raw read of the cache, and streaming memory at
# 1x and 10x the data (README: Data loading); a few minutes on 2 cores.
# Every bench takes --smoke (tiny sizes, a few steps; tests/test_benchmarks.py runs each): BENCH_DATA_ARGS=--smoke.
.PHONY: bench-data
bench-data: setup
	$(BIN)/python benchmarks/bench_data.py $(BENCH_DATA_ARGS)

# The training engine's speed beside a bare UNet loop and a per-step-encode loop (README: Benchmarks);
# options: make bench-train BENCH_TRAIN_ARGS="--steps 200" (see benchmarks/bench_train.py --help).
bench-train: setup
	$(BIN)/python benchmarks/bench_train.py $(BENCH_TRAIN_ARGS)

# trainflow fid beside python -m pytorch_fid on 2,000 vs 2,000 digit images with the same locally built
# InceptionV3 weights (README: FID and KID); ~25 minutes on 2 cores. Options: BENCH_EVAL_ARGS="--images 200 --rounds 2".
.PHONY: bench-eval
bench-eval: setup
	$(BIN)/python benchmarks/bench_eval.py $(BENCH_EVAL_ARGS)

# TPE with median pruning vs random search vs a grid, 24 trials each, on digits and diabetes, 5 sampler seeds
# (README: Benchmarks); about an hour on 2 shared cores. Options: BENCH_TUNE_ARGS="--seeds 0 1 --trials 24".
.PHONY: bench-tune
bench-tune: setup
	$(BIN)/python benchmarks/bench_tune.py $(BENCH_TUNE_ARGS)

# Faults injected into real local runs (README: Faults and preemption): 20 seeded SIGKILL/SIGTERM kills of the
# diabetes regression and demo pipelines, a full disk during a checkpoint write, the MLflow server stopped during
# registration; each must end as an uninterrupted run does. Options: CHAOS_ARGS="--seed 1" or "--smoke".
.PHONY: chaos
chaos: setup
	$(BIN)/python benchmarks/chaos.py $(CHAOS_ARGS)

# Both images from the same constraints.txt; the repository root is the build context.
images:
	@if [ -z "$(CONTAINER_ENGINE)" ]; then \
	  echo "make images: neither docker nor podman was found on PATH; install one, or build on a machine that has it: docker build -f images/Dockerfile.cuda -t $(IMAGE_CUDA) . && docker build -f images/Dockerfile.cpu -t $(IMAGE_CPU) ." >&2; \
	  exit 1; \
	fi
	$(CONTAINER_ENGINE) build -f images/Dockerfile.cuda --build-arg VERSION=$(IMAGE_TAG) \
	  --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) -t $(IMAGE_CUDA) .
	$(CONTAINER_ENGINE) build -f images/Dockerfile.cpu --build-arg VERSION=$(IMAGE_TAG) \
	  --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) -t $(IMAGE_CPU) .

# Re-pin after editing pyproject.toml's dependencies (writes constraints.txt).
lock: setup
	{ echo "# Exact versions for every environment (make and both images/Dockerfile.* install with -c)."; \
	  echo "# Regenerate after changing pyproject.toml: make lock"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^trainflow'; } > constraints.txt

# Build a small evaluation report (digits classifier, a few epochs) and screenshot it in headless Chromium:
# .trainflow/report-screenshot/report.png. Installs Debian's chromium when missing and run as root with apt-get.
report-screenshot: setup
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "report-screenshot: /usr/bin/chromium is missing; installing Debian's chromium with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || exit 1; \
	  else \
	    echo "report-screenshot: /usr/bin/chromium is missing and cannot be installed here (needs root and apt-get); install Chromium, then run make report-screenshot again" >&2; \
	    exit 1; \
	  fi; \
	fi
	$(BIN)/python tools/report_screenshot.py --out .trainflow/report-screenshot

clean:
	rm -rf .trainflow build
