# The two commands a newcomer runs: `make demo` and `make test`. Both set everything up first:
# the virtual environment with the package and its extras, and (as root) the Debian packages the
# kernel NAT lab needs. Nothing here assumes anything was installed by hand.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages: python3-venv (Debian's python3 has no ensurepip without it), and for the kernel
# NAT lab nft rulesets, namespaces (iproute2: ip, ss), conntrack inspection, coturn as an
# independent RFC 5780 STUN server and classifier, miniupnpd for NAT-PMP/PCP/UPnP, and procps
# (sysctl) for router namespaces; iptables (NFQUEUE rule) plus libnetfilter-queue-dev and
# build-essential (to build the NetfilterQueue package) for the lab's userspace delay (no netem).
# redis-server: the relay fleet's shared directory, run for real by its tests, bench and lab.
# tinyproxy: a real HTTP CONNECT proxy for the relay's TLS/WebSocket transports (tests, lab).
APT_PACKAGES := python3-venv nftables iproute2 conntrack coturn miniupnpd-nftables procps \
	iptables libnetfilter-queue-dev build-essential redis-server tinyproxy

.PHONY: all setup venv system-deps demo test test-fast bench lint clean

all: test

# system packages first: creating the venv may need python3-venv
setup: system-deps
	$(MAKE) --no-print-directory venv

venv: $(STAMP)

# A venv without pip (a failed earlier creation) is recreated rather than reused.
$(STAMP): pyproject.toml
	test -x $(BIN)/pip || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,upnp,fast,report,lab]'
	touch $(STAMP)

# apt-get only when something is missing, so repeated runs stay fast; `apt-get update` first
# because a fresh machine's package lists may be empty or stale.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "system packages: all present"; \
	elif [ "$$(id -u)" != 0 ]; then echo "not root: cannot install$$missing (lab tests will be skipped)"; \
	else echo "installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: setup
	$(BIN)/punchthrough demo

test: setup
	$(BIN)/python -m pytest

test-fast: venv
	$(BIN)/python -m pytest -m "not lab"

bench: setup
	$(BIN)/python bench/run.py --out bench/results

lint: venv
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
