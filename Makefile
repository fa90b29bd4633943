# The README's two commands: `make demo` and `make test`. Both create .venv if needed and
# install segbench into it (torch/torchvision pinned by constraints.txt).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.segbench-installed

.PHONY: demo test install clean docs reproduce reproduce-smoke bench device-check device-check-wheels

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

# One pytest worker per core (at most 4), one torch thread each: the tests are small and mostly
# single-threaded, so a second worker uses the second core (docs/extending.md, Tests).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -ra --durations=15 -n auto --maxprocesses=4 --dist loadgroup tests

clean:
	rm -rf runs data/synthetic site

# The user guide (docs/, mkdocs.yml) as a website in site/; --strict: any warning (a broken link,
# a page missing from the nav) fails the build.
DOCS_STAMP = $(VENV)/.segbench-docs-installed
$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,docs]"
	@touch $@

docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

# Every paper recipe (conf/experiment/) whose data is under $SEGBENCH_DATA, then REPORT.md.
# Rerunning skips finished experiments and resumes interrupted ones. Options:
#   make reproduce REPRODUCE_OUT=runs/reproduce REPRODUCE_ARGS="--experiments a,b --launcher slurm"
REPRODUCE_OUT ?= runs/reproduce
REPRODUCE_ARGS ?=
reproduce: $(STAMP)
	$(BIN)/python scripts/reproduce.py --out $(REPRODUCE_OUT) $(REPRODUCE_ARGS)

# The same pipeline on the test fixtures' tiny datasets, CPU, 2 iterations, tiny widths:
# a "smoke" REPORT.md with a published-vs-measured row for every experiment.
reproduce-smoke: $(STAMP)
	$(BIN)/python scripts/reproduce.py --smoke --out runs/reproduce-smoke $(REPRODUCE_ARGS)

# The figures of docs/performance.md: benchmarks/ at their default (small, CPU-friendly) sizes,
# then the model-zoo table. Each script says how to run it bigger (--help).
bench: $(STAMP)
	$(BIN)/python benchmarks/precision.py
	$(BIN)/python benchmarks/vs_torchvision.py
	$(BIN)/python benchmarks/input_pipeline.py
	$(BIN)/python benchmarks/eval_cost.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/data_pipeline.py
	$(BIN)/segbench bench model=all bench.train=false bench.warmup=1 bench.runs=3

# GPU only, <= 10 min on one H100/H200: every recipe's training step at its true crop and batch
# (synthetic data), the Trainer loop, the loader, eval memory, MS+flip cost, vs torchvision, SyncBN/DDP,
# cudnn.benchmark; Markdown tables + JSON in DEVICE_CHECK_OUT, row by row.
# `python scripts/device_check.py --dry-run` is its CPU self-test (in the suite).
#   make device-check DEVICE_CHECK_ARGS="--camvid $$SEGBENCH_DATA/camvid --camvid-minutes 3"
DEVICE_CHECK_OUT ?= runs/device_check/latest
DEVICE_CHECK_ARGS ?=
device-check: $(STAMP)
	$(BIN)/python scripts/device_check.py --out $(DEVICE_CHECK_OUT) $(DEVICE_CHECK_ARGS)

# The first paper numbers on one GPU (docs/first-numbers.md): SegNet-Basic on CamVid, then U-Net on
# ISBI, within FIRST_NUMBERS_BUDGET seconds; every row in $(FIRST_NUMBERS_OUT)/first_numbers.{json,md}
# as soon as it is known. `python scripts/first_numbers.py --dry-run --out DIR` is its CPU self-test.
#   make first-numbers FIRST_NUMBERS_ARGS="--data $$SEGBENCH_DATA"
.PHONY: first-numbers
FIRST_NUMBERS_OUT ?= runs/first_numbers
FIRST_NUMBERS_BUDGET ?= 480
FIRST_NUMBERS_ARGS ?=
first-numbers: $(STAMP)
	$(BIN)/python scripts/first_numbers.py --out $(FIRST_NUMBERS_OUT) --budget-s $(FIRST_NUMBERS_BUDGET) $(FIRST_NUMBERS_ARGS)

# For a GPU machine without a package index (docs/performance.md): the pure-Python packages segbench
# needs beyond torch, torchvision, timm, scipy, opencv and tensorboard, as wheels for its Python,
# into the git-ignored .whl/ (~8 MiB). There: pip install --no-index --target /tmp/site .whl/*.whl
DEVICE_PYTHON ?= 3.12
DEVICE_WHEELS = hydra-core==1.3.8 omegaconf==2.3.1 albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 \
	pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 stringzilla==5.3.2 simsimd==6.5.16
device-check-wheels:
	rm -rf .whl && mkdir .whl
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(DEVICE_PYTHON) \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $(DEVICE_WHEELS)
	$(PYTHON) -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3  # omegaconf's parser: sdist only
	@du -sh .whl
