# The two set-up commands of the README: `make demo` and `make test`. Both create/reuse .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA := data/sample
DEMO_OUT := outputs/demo

.PHONY: install demo test bench clean-demo

# facenet-pytorch is installed without its dependencies (it pins an old torch and imports torchvision):
# only the MTCNN weight files it ships are read; the package is never imported.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/falco sample-data $(DEMO_DATA)
	$(BIN)/falco anonymize $(DEMO_DATA)/images $(DEMO_OUT) --profile tiny

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/batched_vs_loop.py
	$(BIN)/python bench/pairing_faiss_vs_sklearn.py

clean-demo:
	rm -rf $(DEMO_OUT)
