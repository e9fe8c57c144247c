# The two set-up commands of the README: `make run` and `make test`.
# Both create or update .venv, install the project with every extra, build llama.cpp's
# own server (llama-server, with llama-bench and llama-batched-bench) and put the demo
# model into models/ when it is absent. A second run takes seconds: the install is
# skipped while pyproject.toml is unchanged, and scripts/build-llama-server keeps its
# build in ~/.cache/offline-llm-switcher/llama-server/ (linked at .venv/llama-server).

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := legacy,transformers,dev

.PHONY: run test install llama-server demo-model browser-deps lint container-smoke

run: install demo-model
	$(VENV)/bin/streamlit run appliance_server.py --server.address 127.0.0.1 --server.port 8501

test: install demo-model browser-deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest
	$(MAKE) container-smoke

install: $(STAMP) llama-server

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@# Left in a .venv from before llama-server replaced the Python binding.
	$(PY) -m pip uninstall --quiet --yes llama-cpp-python 2>/dev/null || true
	touch $(STAMP)

# Compiled at nice 19 with at most 2 jobs (LLAMA_BUILD_JOBS); cached, so a second run
# only checks the cache. cmake comes from PyPI where the system has none (ninja is in
# the dev extra).
llama-server: $(STAMP)
	@command -v cmake >/dev/null || test -x $(VENV)/bin/cmake || \
		$(PY) -m pip install --quiet 'cmake==3.31.10'
	$(PY) scripts/build-llama-server --link $(VENV)/llama-server

demo-model: install
	$(PY) scripts/fetch-demo-model

# The end-to-end tests drive Debian's Chromium with Playwright (its own browser
# download cannot work offline); the offline proof traces the app with strace; the API
# tests call /v1 with curl. Installed once; skipped when present.
browser-deps:
	@test -x /usr/bin/chromium -a -x /usr/bin/strace -a -x /usr/bin/curl || { \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		chromium chromium-driver strace curl; }

# The container appliance end to end (root; installs podman & co with apt-get); its
# browser journey runs Playwright from .venv.
container-smoke: install
	PYTHON=$(PYTHON) BROWSER_PYTHON=$(PY) scripts/container-smoke

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
