# The two commands: `make demo` and `make test`. Each installs what it needs
# (Debian packages, a virtualenv with the Python package, the datapath object)
# and can be run again at any time.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

APT_PACKAGES := clang llvm libbpf-dev libbpf1 bpftool iproute2 util-linux curl socat \
	iperf3 nginx-light iputils-ping tcpdump gcc make man-db zsh fish \
	haproxy nftables iptables wrk sockperf keepalived hping3 bird2 gobgpd

.PHONY: demo test bench lint deps apt venv datapath bpffs clean

demo: deps datapath bpffs
	$(VENV)/bin/python tests/demo.py

test: deps datapath bpffs
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests

bench: deps datapath bpffs
	$(VENV)/bin/python bench/run.py

lint: deps
	$(VENV)/bin/ruff check .

deps: apt venv

# Debian packages: only what is missing is installed (apt-get update first).
apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: apt $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	touch $@

datapath: apt
	$(MAKE) -C datapath

# Pins need bpffs at /sys/fs/bpf.
bpffs:
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

clean:
	$(MAKE) -C datapath clean
	rm -rf $(VENV) *.egg-info
