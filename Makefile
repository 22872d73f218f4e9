# PAL for Transformers. `make demo` is the main job, `make test` the test suite; both set up what they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt setup.py | sha1sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup system-deps test lint demo clean

setup: system-deps $(STAMP)

# Debian packages for audio decoding (torchcodec needs FFmpeg's libraries), speech synthesis, the caption metrics
# (pycocoevalcap's PTB tokenizer and METEOR run `java`), `python3 -m venv` (ensurepip) and the benchmarks' malloc
# (tcmalloc). ldconfig is in /sbin, which is not on a non-root user's PATH.
system-deps:
	@missing=""; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null || missing="$$missing sox libsox-fmt-all"; \
	command -v java >/dev/null || missing="$$missing default-jre-headless"; \
	python3 -c "import ensurepip" 2>/dev/null || missing="$$missing python3-venv"; \
	LDCONFIG=$$(command -v ldconfig || echo /sbin/ldconfig); \
	$$LDCONFIG -p 2>/dev/null | grep -q libtcmalloc_minimal || missing="$$missing libtcmalloc-minimal4"; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# Where pip finds no CPU build of torch (PyPI's default build pulls GBs of CUDA libraries), point it at one:
# make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

$(STAMP): requirements.txt setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH_INDEX),$(PY) -m pip install -q --index-url $(TORCH_INDEX) "$$(grep '^torch==' requirements.txt)")
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*; touch $@

# Tiny test models are dominated by per-operation overhead: one thread per process is as fast and robust to load.
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check modeling_pal examples benchmarks tests
	$(VENV)/bin/ruff format --check modeling_pal examples benchmarks tests

# Passive OpenMP waiting: spinning threads made training and generation 3-30x slower on busy cores.
demo: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) examples/demo.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
