# The two commands of the README:
#   make run    set up .venv if needed, then run the main job (results in $(OUT))
#   make test   set up .venv if needed, then run the test suite
#               (and install Debian's Chromium for the browser tests when it is missing)
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

.PHONY: run test env chromium clean

run: $(STAMP)
	$(VENV)/bin/python -m i2m2kit run --out $(OUT) --data $(DATA)

test: $(STAMP) chromium
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The browser tests drive the system's Chromium through Playwright (whose own browser
# download cannot work offline). Installed with apt-get as root, or with sudo if it asks no
# password; if that fails the browser tests skip, except under CI=true, where they fail.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && \
	    $(if $(filter 0,$(shell id -u)),,sudo -n) apt-get update -qq && \
	    $(if $(filter 0,$(shell id -u)),,sudo -n) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
	  echo "warning: could not install Chromium; the browser tests will skip (and fail in CI)" >&2

env: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install $(PIP_ARGS) -e ".[test]"
	$(VENV)/bin/python -m i2m2kit doctor
	touch $(STAMP)

clean:
	rm -rf $(VENV) $(OUT)
