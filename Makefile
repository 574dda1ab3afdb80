# Every target creates .venv with all dependencies when it is missing.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: venv demo test test-unit test-cluster test-e2e bench clean

venv: $(STAMP)

# requirements.lock pins every package (pip freeze of a working .venv): no resolver work, no surprise releases.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -m isthmus._proto
	touch $(STAMP)

demo: venv
	$(BIN)/isthmus demo

# pytest's exit 5 ("no tests collected") is a failure here.
test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit tests/cluster tests/e2e; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected" >&2; exit 1; fi; exit $$rc

test-unit: venv
	$(BIN)/python -m pytest -q tests/unit

test-cluster: venv
	$(BIN)/python -m pytest -q tests/cluster

test-e2e: venv
	$(BIN)/python -m pytest -q tests/e2e

bench: venv
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
