# wanmig: `make demo` and `make test` set everything up first (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
# QEMU (10.0 or newer, from bookworm-backports on Debian 12) is tools/apt-setup's own
APT_PACKAGES := busybox-static kmod cpio e2fsprogs iproute2 gcc libc6-dev python3-venv procps \
                mmdebstrap libnbd-bin bird2 knot chromium openvpn
STAMP := build/.stamps

.PHONY: setup apt venv image demo test unit clean

setup: apt venv image

apt:
	@tools/apt-setup $(APT_PACKAGES)

venv: $(STAMP)/venv

$(STAMP)/venv: pyproject.toml requirements.lock
	@mkdir -p $(STAMP)
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c requirements.lock -e '.[test]'
	@touch $@

image: venv
	$(VENV)/bin/wanmig image build
	tools/debian-rootfs build/debian/rootfs.tar

demo: setup
	$(VENV)/bin/wanmig demo --json results/demo.json

test: setup
	$(VENV)/bin/python -m pytest -v -rs

unit: venv
	$(VENV)/bin/python -m pytest -v -m "not root and not qemu"

clean:
	-$(VENV)/bin/wanmig clean
	rm -rf build results
