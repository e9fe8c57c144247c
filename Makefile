# The two set-up commands of the README: `make run` and `make test`.
# Both create or update .venv, install the project with every extra, and put the
# demo model into models/ when it is absent. A second run takes seconds: the
# install is skipped while pyproject.toml is unchanged, and pip's wheel cache keeps
# the compiled llama-cpp-python wheel (never pass --no-cache-dir).

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := llama,legacy,transformers,dev

.PHONY: run test install demo-model lint bench container-smoke

run: install demo-model
	$(VENV)/bin/streamlit run streamlit_app.py --server.address 127.0.0.1 --server.port 8501

test: install demo-model
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest
	$(MAKE) container-smoke

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

demo-model: install
	$(PY) scripts/fetch-demo-model

# The container appliance end to end (root; installs podman & co with apt-get).
container-smoke:
	PYTHON=$(PYTHON) scripts/container-smoke

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
