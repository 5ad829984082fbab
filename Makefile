# Every target builds and reuses its own virtual environment in .venv, so a
# fresh machine needs only Python 3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall when the package's or the example's requirements change.
STAMP := $(VENV)/.installed

.PHONY: test demo bench clean

$(STAMP): pyproject.toml examples/digits/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# tensorflow-cpu: the TensorFlow backend without the GPU libraries
	# (this project's machines have no GPU).
	# examples/digits: the demo's Kedro project (tests/e2e runs it too);
	# nbclient + ipykernel: tests/e2e executes notebooks/load_models.ipynb.
	$(BIN)/python -m pip install --quiet tensorflow-cpu -e ".[s3,test]" -e examples/digits nbclient ipykernel
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest

# The example project end to end: train, save three ways, reload, score.
demo: export KEDRO_DISABLE_TELEMETRY = 1
demo: export KERAS_BACKEND = tensorflow
demo: export TF_CPP_MIN_LOG_LEVEL = 3
demo: $(STAMP)
	cd examples/digits && $(CURDIR)/$(BIN)/kedro run
	cd examples/digits && $(CURDIR)/$(BIN)/python show_results.py

# Save/load benchmark against plain Keras and kedro-datasets, about 7 min
# (BENCH_ARGS=--big adds the 4 GB model). Rewrites docs/performance.md,
# docs/img/benchmark.png and benchmarks/results.json.
bench: export KEDRO_DISABLE_TELEMETRY = 1
bench: $(STAMP) benchmarks/requirements.txt
	$(BIN)/python -m pip install --quiet -r benchmarks/requirements.txt
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV)
