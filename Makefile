# The two commands of README:  `make demo` (the whole tiny Code Llama chain on CPU)  and  `make test`.
# Both create/refresh the virtual environment in .venv first; rerunning them is safe.
#
# TORCH_SPEC picks the torch build. The default is the CPU build this project is tested with; on a
# GPU machine use e.g.  make TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124" demo
PYTHON     ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
ARGS       ?=

export DS_ACCELERATOR ?= cpu
export DS_BUILD_OPS   ?= 0
export WANDB_MODE     ?= offline
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
# The per-stage evaluation reads the HumanEval-infilling files from $CODELLAMA_INFILLING_DIR when it is set
# (docs/evaluation.md); without it those benchmarks are skipped.

.PHONY: venv demo ablate test clean toolchains

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test,eval]'
	touch $(STAMP)

## The main job: every stage of the tiny pipeline (code+FIM, Python, long context, instruct) on CPU.
demo: $(STAMP)
	$(VENV)/bin/codellama-pipeline pipeline=tiny $(ARGS)

## The FIM, long-context and Python ablations in miniature (14 minutes on 2 idle CPU cores, measured; docs/ablations.md).
ablate: $(STAMP)
	$(VENV)/bin/codellama-ablate $(ARGS)

## The test suite (CPU, including 2-process DeepSpeed runs).
test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache runs

## Compilers and interpreters for the multipl_e benchmark (apt + npm; skips what is already installed).
toolchains:
	command -v g++ >/dev/null && command -v javac >/dev/null && command -v node >/dev/null && command -v php >/dev/null \
	  && command -v mcs >/dev/null && command -v mono >/dev/null || \
	  (apt-get update -q && apt-get install -y -q --no-install-recommends g++ default-jdk-headless nodejs npm php-cli mono-mcs mono-runtime)
	command -v tsc >/dev/null || npm install -g typescript@5
