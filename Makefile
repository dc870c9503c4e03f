# The two commands of the README:
#   make run    set up .venv if needed, then run the main job (results in $(OUT))
#   make test   set up .venv if needed, then run the test suite
#
# On a machine without an NVIDIA GPU the install is constrained to the CPU build of torch
# (constraints-cpu.txt). Where that build is not on the default index, name an index that
# has it: make run TORCH_INDEX=https://download.pytorch.org/whl/cpu

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
OUT ?= outputs
DATA ?= $(or $(I2M2KIT_DATA),../shared/data)
TORCH_INDEX ?=
HAS_NVIDIA_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
PIP_ARGS := $(if $(HAS_NVIDIA_GPU),,-c constraints-cpu.txt) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
STAMP := $(VENV)/.i2m2kit-installed

.PHONY: run test env clean

run: $(STAMP)
	$(VENV)/bin/python -m i2m2kit run --out $(OUT) --data $(DATA)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

env: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install $(PIP_ARGS) -e ".[test]"
	$(VENV)/bin/python -m i2m2kit doctor
	touch $(STAMP)

clean:
	rm -rf $(VENV) $(OUT)
