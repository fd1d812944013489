# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv if needed and installs what it needs, Debian packages included.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := httperf nginx-light iproute2 util-linux

.PHONY: demo test venv system

$(BIN)/simrun: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/simrun

system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: venv
	$(BIN)/simrun scenarios/4cpu.toml

test: venv system
	$(BIN)/python -m pytest tests
