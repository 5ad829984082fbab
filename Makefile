# Every target builds and reuses its own virtual environment in .venv, so a
# fresh machine needs only Python 3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall when the package's or the example's requirements change.
STAMP := $(VENV)/.installed

.PHONY: test demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# tensorflow-cpu: the TensorFlow backend without the GPU libraries
	# (this project's machines have no GPU).
	$(BIN)/python -m pip install --quiet tensorflow-cpu -e ".[s3,test]"
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV)
