# The README's two commands: `make demo` and `make test`. Both create .venv if needed and
# install segbench into it (torch/torchvision pinned by constraints.txt).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.segbench-installed

.PHONY: demo test install clean reproduce reproduce-smoke bench

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

# Train the default model (a narrow U-Net) on the built-in synthetic set, then print metrics.
demo:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory install && \
	$(BIN)/segbench train && \
	echo "make demo: total wall time $$(( $$(date +%s) - start )) s (install included)"

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=15 tests

clean:
	rm -rf runs data/synthetic
