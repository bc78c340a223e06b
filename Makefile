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

.PHONY: setup system-packages demo test test-fast clean

setup: system-packages $(STAMP)

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml constraints.txt $(PLUGINS)
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "setuptools>=77" wheel
	@# every package here builds with setuptools>=77, just installed: no isolated build environment per package
	$(PIP) install -q --no-build-isolation -c constraints.txt -e '.[data,test]' $(foreach p,$(dir $(PLUGINS)),-e '$(p)[test]')
	@touch $@

# The main job: the joint multimodal demo on the real offline data (configs/demo.yaml), whose data sets and
# evaluators come from the latentbridge-demo plugin (plugins/latentbridge-demo). Trains the Text VAE,
# the image VAE and the audio VAE on the data of the tasks that use them, then one block-causal prior on the
# mixture caption -> image, image -> caption, text -> speech, speech -> text; then samples and scores all four
# directions (against shuffled-condition controls, across guidance) into runs/demo/report.md. About 16 minutes
# on 2 cores (2026-12-08; machines vary). Run again, it resumes runs/demo (finished stages are kept) and re-evaluates.
DEMO_RUN ?= runs/demo
demo: setup
	$(RUN) latentbridge codecs list
	$(RUN) latentbridge datasets list
	@resume=""; [ -e $(DEMO_RUN)/config.yaml ] && resume=--resume; \
	start=$$(date +%s); \
	$(RUN) latentbridge train configs/demo.yaml --run-dir $(DEMO_RUN) $$resume && \
	$(RUN) latentbridge eval $(DEMO_RUN) && \
	echo "demo: $$(( $$(date +%s) - start )) s; open $(DEMO_RUN)/report.md"

test: setup
	$(RUN) $(BIN)/lint-imports
	$(RUN) $(BIN)/python -m pytest -q

# The fast tier: everything not marked slow (the slow tier -- tiny end-to-end trainings -- runs in `make test` and CI).
test-fast: setup
	$(RUN) $(BIN)/lint-imports
	$(RUN) $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info plugins/*/*.egg-info .pytest_cache
