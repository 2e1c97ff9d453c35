# wanmig: `make demo` and `make test` set everything up first (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
APT_PACKAGES := qemu-system-x86 qemu-utils busybox-static kmod cpio e2fsprogs iproute2 \
                gcc libc6-dev python3-venv procps
STAMP := build/.stamps

.PHONY: setup apt venv image demo test unit clean

setup: apt venv image

apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:" $$missing; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: $(STAMP)/venv

$(STAMP)/venv: pyproject.toml requirements.lock
	@mkdir -p $(STAMP)
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c requirements.lock -e '.[test]'
	@touch $@

image: venv
	$(VENV)/bin/wanmig image build

demo: setup
	$(VENV)/bin/wanmig demo --json results/demo.json

test: setup
	$(VENV)/bin/python -m pytest -v -rs

unit: venv
	$(VENV)/bin/python -m pytest -v -m "not root and not qemu"

clean:
	-$(VENV)/bin/wanmig clean
	rm -rf build results
