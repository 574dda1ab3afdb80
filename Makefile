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

# Tiers in order; every cluster and e2e test module in a pytest process of its own (one local Ray cluster per
# process: a second cluster in a process that already ran one fails to start its head). pytest's exit 5
# ("no tests collected") is a failure here.
TEST_TARGETS = tests/unit $(sort $(wildcard tests/cluster/test_*.py)) $(sort $(wildcard tests/e2e/test_*.py))

test: venv
	@status=0; for target in $(TEST_TARGETS); do \
	  echo "== $$target"; \
	  $(BIN)/python -m pytest -q -p no:cacheprovider $$target; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests collected in $$target" >&2; rc=1; fi; \
	  if [ $$rc -ne 0 ]; then status=$$rc; fi; \
	done; exit $$status

test-unit: venv
	$(BIN)/python -m pytest -q tests/unit

test-cluster: venv
	for f in $(sort $(wildcard tests/cluster/test_*.py)); do $(BIN)/python -m pytest -q $$f || exit 1; done

test-e2e: venv
	for f in $(sort $(wildcard tests/e2e/test_*.py)); do $(BIN)/python -m pytest -q $$f || exit 1; done

bench: venv
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
