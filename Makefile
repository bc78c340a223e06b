# Two entry points, each doing the whole set-up first (idempotent; seconds when already done):
#   make demo   the main job        make test   the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.latentbridge-installed
PLUGINS := $(wildcard plugins/*/pyproject.toml)
# Real offline data (shared/design/DATA.md): WordNet, fortunes, words, emoji font, speech synthesis, sounds.
APT_PACKAGES := wordnet-base fortunes fortunes-min wamerican fonts-noto-color-emoji flite espeak-ng \
                alsa-utils sound-theme-freedesktop
RUN := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PATH="$(CURDIR)/$(BIN):$$PATH"
PIP := $(BIN)/pip --disable-pip-version-check

.PHONY: setup system-packages demo test clean

setup: system-packages $(STAMP)

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml $(PLUGINS)
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "setuptools>=70" wheel
	$(PIP) install -q -e '.[test]' $(addprefix -e ,$(dir $(PLUGINS)))
	@touch $@

# The main job (until the joint multimodal demo lands): discover the installed codec plugins, run
# the conformance kit on each, then the two toy cross-modal experiments (label -> point, point -> label):
# codec stage, prior stage, guided block-by-block generation, scores against the known density.
demo: setup
	$(RUN) latentbridge codecs list
	$(RUN) latentbridge codecs check --all
	$(RUN) latentbridge toy configs/toy_label_to_vector.yaml --run-dir runs/toy-label-to-vector
	$(RUN) latentbridge toy configs/toy_vector_to_label.yaml --run-dir runs/toy-vector-to-label

test: setup
	$(RUN) $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info plugins/*/*.egg-info .pytest_cache
