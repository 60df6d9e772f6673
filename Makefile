# ssl_diffusion — the two commands of the README:
#   make demo   set up .venv and run the main job on the embedded default (digits, no download)
#   make test   set up .venv and run the test suite (CPU only)
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and explicitly: on machines that serve these wheels from local disk
# this takes about a minute, whereas an unpinned `pip install torch` may download several GB.
# Any torch >= 2.2 works: `make setup TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
RECIPE ?= recipes/quickstart_ddaepp.yaml

.PHONY: setup demo test test-fast clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev,fid,latent]"
	touch $@

demo: setup
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) main_demo.py --config $(RECIPE)

test: setup
	WANDB_MODE=offline $(PY) -m pytest -q

test-fast: setup
	WANDB_MODE=offline $(PY) -m pytest -q -m "not slow"

clean-venv:
	rm -rf $(VENV)
