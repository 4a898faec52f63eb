# pycontainer: `make run` (the demo) and `make test` (everything CI checks) both
# start from nothing: they create the virtualenvs and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The oldest versions the dependency floor allows, and `make test-floor` runs
# the tests against them. Only the base install's dependencies (the container
# side): none of the `cli` or `manager` extras (no xds-protos: no floor test
# reaches the manager), so the floor tests also show that embedding needs no
# more. protobuf's floor is the manager's (xds-protos needs 6.31.1), one for
# the whole distribution; generated/ stamps an older minimum (below).
FLOOR := .venv-floor
FLOOR_PINS := grpcio==1.72.1 grpcio-health-checking==1.72.1 \
	grpcio-reflection==1.72.1 grpcio-status==1.72.1 grpcio-channelz==1.72.1 protobuf==6.31.1 \
	opentelemetry-api==1.30.0 opentelemetry-sdk==1.30.0 \
	psutil==5.9.8 pyyaml==6.0.1 cryptography==42.0.0 google-re2==1.1 \
	aiohttp==3.9.5 prometheus-client==0.20.0
# The code generator: the floor's grpcio-tools (its protoc stamps protobuf
# 6.30.0 into generated/ as the runtime minimum, which the protobuf floor
# 6.31.1 satisfies: a newer generator would rewrite all of generated/ and
# gain nothing) with mypy-protobuf 5, whose
# separate sync and async stub classes keep mypy fast. mypy-protobuf 3.7's one
# stub class generic over a constrained TypeVar per RPC makes mypy's time grow
# as 2^RPCs (minutes for the Manager service's 18; python/mypy#16363 and
# nipunn1313/mypy-protobuf#536). mypy-protobuf 5 needs protobuf 6.32 to run, so
# the generator has its own venv, apart from the floor.
GEN := .venv-gen
GEN_PINS := grpcio-tools==1.72.1 mypy-protobuf==5.1.0
PROTOS := $(sort $(wildcard protos/pycontainer/v1/*.proto))
NODE_DIR := tests/node
PIP_FLAGS := --disable-pip-version-check -q

.PHONY: screenshots system-deps all venv generate generate-etcd check-generated lint buf-lint typecheck pytest test test-floor run bench bench-quick clean node-deps

all: test

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) -U pip
	$(call drop_old_distribution,$(BIN))
	$(BIN)/pip install $(PIP_FLAGS) -e '.[dev]'
	$(call restore_shadowed_protos,$(BIN))
	touch $@

venv: $(BIN)/.installed

# The distribution was named "pycontainer" before it became pycontainer-grpc
# (that name on PyPI is an unrelated project). A venv made before the rename
# holds both, owning the same files: uninstall the old one (and its metadata
# left in the clone) first.
define drop_old_distribution
$(1)/pip uninstall $(PIP_FLAGS) -y pycontainer 2>/dev/null || true; rm -rf pycontainer.egg-info
endef

# xds-protos (the manager's) also ships copies of opentelemetry-proto's and
# googleapis-common-protos' modules, at the same paths: whichever installs
# last owns the files, and its stale opentelemetry copy breaks the OTLP
# exporter (ImportError: InstrumentationScope; grpc/grpc#42926). Reinstall
# the owners' own files, same versions, so that install order cannot matter.
define restore_shadowed_protos
$(1)/pip install $(PIP_FLAGS) --no-deps --force-reinstall $$($(1)/python -c \
	'import importlib.metadata as m; print(*(f"{d}=={m.version(d)}" for d in ("opentelemetry-proto", "googleapis-common-protos")))')
endef

# System tools the tests use, installed when missing and we may (root):
# runc (the OCI runtime), and for the state-disk fault tests mkfs.ext4 and
# e2fsck (e2fsprogs), fsfreeze (util-linux), losetup and mount (mount); etcd
# and etcdctl (etcd-server, etcd-client) for the etcd state store's tests; ip
# (iproute2) for the tests whose hosts are network namespaces; curl for the
# README's curl lines (tests/test_readme_http.py, tests/test_readme_prometheus.py);
# chromium and its chromedriver for the web view's browser test.
SYSTEM_TOOLS := runc:runc mkfs.ext4:e2fsprogs e2fsck:e2fsprogs fsfreeze:util-linux losetup:mount \
	etcd:etcd-server etcdctl:etcd-client ip:iproute2 curl:curl \
	chromium:chromium chromedriver:chromium-driver
# Packages install without starting their services: etcd-server's would start
# a system etcd on 2379 (the tests start their own members on loopback, on
# ephemeral ports). A policy-rc.d that refuses every start (exit 101), only
# for the install and only when the machine has none of its own.
NO_SERVICE_STARTS := /usr/sbin/policy-rc.d
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
		tool=$${pair%%:*}; package=$${pair##*:}; \
		PATH="$$PATH:/sbin:/usr/sbin" command -v $$tool >/dev/null || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			if [ ! -e $(NO_SERVICE_STARTS) ]; then \
				printf '#!/bin/sh\nexit 101\n' > $(NO_SERVICE_STARTS) && chmod 755 $(NO_SERVICE_STARTS) && \
				trap 'rm -f $(NO_SERVICE_STARTS)' EXIT; \
			fi; \
			apt-get update -qq && apt-get install -y -qq --no-install-recommends \
				$$(echo $$missing | tr ' ' '\n' | sort -u) >/dev/null; \
		else echo "note: not installed (not root):$$missing; the tests that need them are skipped"; fi; \
	fi

$(FLOOR)/.installed: Makefile
	test -x $(FLOOR)/bin/python || $(PYTHON) -m venv $(FLOOR)
	$(FLOOR)/bin/pip install $(PIP_FLAGS) $(FLOOR_PINS) pytest pytest-asyncio pytest-timeout hypothesis
	touch $@

$(GEN)/.installed: Makefile
	test -x $(GEN)/bin/python || $(PYTHON) -m venv $(GEN)
	$(GEN)/bin/pip install $(PIP_FLAGS) $(GEN_PINS)
	touch $@

# Regenerate generated/ from protos/ with the floor grpcio-tools.
generate: $(GEN)/.installed
	rm -rf generated/pycontainer
	$(call protoc,generated)
	$(call protoc_etcd,generated)

# etcd's v3 API (pycontainer._etcdpb) alone.
generate-etcd: $(GEN)/.installed
	rm -rf generated/pycontainer/_etcdpb
	$(call protoc_etcd,generated)

# etcd's v3 protos (vendored from Debian's golang-etcd-server-dev 3.4) become
# the private pycontainer._etcdpb: privatize.py strips the REST gateway's and
# gogoproto's annotations and renames the proto packages (pycontainer.etcd.*);
# see protos/third_party/README.md. Messages only: the client
# (pycontainer.manager._etcd) calls etcd's own method paths itself.
ETCD_PROTO_DIR := protos/third_party/etcd
# $(call protoc_etcd,OUTDIR), like protoc.
define protoc_etcd
mkdir -p $(1)/.etcd && \
	$(GEN)/bin/python $(ETCD_PROTO_DIR)/privatize.py $(ETCD_PROTO_DIR) $(1)/.etcd && \
	PATH=$(CURDIR)/$(GEN)/bin:$$PATH $(GEN)/bin/python -m grpc_tools.protoc -I $(1)/.etcd \
		--python_out=$(1) --mypy_out=quiet:$(1) $(1)/.etcd/pycontainer/_etcdpb/*.proto && \
	cp $(1)/.etcd/pycontainer/_etcdpb/*.proto $(ETCD_PROTO_DIR)/LICENSE $(1)/pycontainer/_etcdpb/ && \
	rm -rf $(1)/.etcd && \
	printf '"""Generated by `make generate` from protos/third_party/etcd (etcd v3 API, Apache-2.0; private to pycontainer); do not edit."""\n' \
		> $(1)/pycontainer/_etcdpb/__init__.py && \
	touch $(1)/pycontainer/_etcdpb/py.typed
endef

# pprof's profile.proto (vendored, Apache-2.0) becomes pycontainer.pprof.
PPROF_DIR := protos/third_party/perftools/profiles
# $(call protoc,OUTDIR): one shell line, so that OUTDIR may be a shell variable.
define protoc
mkdir -p $(1) && \
	PATH=$(CURDIR)/$(GEN)/bin:$$PATH $(GEN)/bin/python -m grpc_tools.protoc -I protos \
		--python_out=$(1) --grpc_python_out=$(1) --mypy_out=quiet:$(1) --mypy_grpc_out=quiet:$(1) $(PROTOS) && \
	printf '"""Generated by `make generate` from protos/pycontainer/v1; do not edit."""\n' \
		> $(1)/pycontainer/v1/__init__.py && \
	touch $(1)/pycontainer/v1/py.typed && \
	cp $(PROTOS) $(1)/pycontainer/v1/ && \
	mkdir -p $(1)/.pprof $(1)/pycontainer/pprof && \
	PATH=$(CURDIR)/$(GEN)/bin:$$PATH $(GEN)/bin/python -m grpc_tools.protoc -I protos/third_party \
		--python_out=$(1)/.pprof --mypy_out=quiet:$(1)/.pprof perftools/profiles/profile.proto && \
	mv $(1)/.pprof/perftools/profiles/profile_pb2.py $(1)/.pprof/perftools/profiles/profile_pb2.pyi \
		$(1)/pycontainer/pprof/ && \
	rm -rf $(1)/.pprof && \
	printf '"""Generated by `make generate` from protos/third_party/perftools/profiles (google/pprof, Apache-2.0); do not edit."""\n' \
		> $(1)/pycontainer/pprof/__init__.py && \
	touch $(1)/pycontainer/pprof/py.typed && \
	cp $(PPROF_DIR)/profile.proto $(PPROF_DIR)/LICENSE $(1)/pycontainer/pprof/
endef

# Fails when generated/ differs from what `make generate` would write.
check-generated: $(GEN)/.installed
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(call protoc,$$tmp) && $(call protoc_etcd,$$tmp) && \
	if ! diff -r -x __pycache__ "$$tmp/pycontainer" generated/pycontainer; then \
		echo "generated/ is stale: run 'make generate' and commit the result" >&2; exit 1; fi
	@echo "generated/ is up to date"

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json
	cd $(NODE_DIR) && npm install --no-audit --no-fund --loglevel=error
	touch $@

node-deps: $(NODE_DIR)/node_modules/.installed

buf-lint: node-deps
	$(NODE_DIR)/node_modules/.bin/buf lint protos

lint: venv buf-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

# The suite runs in pytest-xdist's workers, each test file whole on one of
# them (its module fixtures shared as written): most tests wait on processes,
# sockets and streams rather than the CPU, so 2 workers on 2 cores take it
# from about 10 minutes to about 6 (3 take it to 5, with timings on the edge
# of the tests' bounds). PYTEST_WORKERS=0: in this process alone.
# The tests marked `alone` (CPU profiles of their own process) run after, apart.
PYTEST_WORKERS ?= 2

pytest: venv node-deps system-deps
	# Compiled once here: every manager, sidecar and CLI the tests start would
	# otherwise compile each module again where bytecode is not written.
	$(BIN)/python -m compileall -q pycontainer generated
	# (Exit status 5: nothing selected, as PYTEST_ARGS naming one file may.)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not alone" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/pytest -m alone $(PYTEST_ARGS) || [ $$? -eq 5 ]

test: check-generated lint typecheck pytest test-floor

# The tests that exercise the contract, run against the floor versions and a
# regular (non-editable) install of the base distribution: the wheel must
# carry generated/ and protos, and the container side must need no extra.
test-floor: $(FLOOR)/.installed node-deps
	$(call drop_old_distribution,$(FLOOR)/bin)
	$(FLOOR)/bin/pip uninstall $(PIP_FLAGS) -y rich opentelemetry-instrumentation-grpc 2>/dev/null || true
	rm -rf build  # setuptools would pack files left there by an older build
	$(FLOOR)/bin/pip install $(PIP_FLAGS) --no-deps --force-reinstall .
	$(FLOOR)/bin/python -P -c 'import pycontainer, sys; sys.exit("site-packages" not in pycontainer.__file__)'
	$(FLOOR)/bin/pytest -p no:cacheprovider -q tests/test_embed.py tests/test_reflection.py \
		tests/test_node_client.py

# A manager with embedded defaults on 127.0.0.1:50050, the example spec
# applied, and a live view; Ctrl-C stops everything gracefully.
# The demo: the example apps, and two services calling each other through
# the mesh (examples/mesh.yaml: a frontend calling xds:///greeter).
RUN_SPEC ?= examples/demo.yaml examples/mesh.yaml
run: venv system-deps
	$(BIN)/pycontainer up $(addprefix -f ,$(RUN_SPEC)) --state-dir state

# Every benchmark row against bare grpcio in the same run, written to
# bench/RESULTS.md; `make bench QUICK=1` (or `make bench-quick`) is the quick
# run (make itself would take `make bench --quick` as an option of its own).
# The full run adds the kill -9 recovery of 1,000 containers (bench/reconnect.py).
# The README's screenshots of the web view, taken again by its browser test.
screenshots: venv system-deps
	PYCONTAINER_UPDATE_SCREENSHOTS=1 $(BIN)/pytest -q tests/test_web_view.py

bench: venv
	$(BIN)/python -m bench $(if $(QUICK),--quick)
	$(if $(QUICK),,$(BIN)/python bench/reconnect.py --containers 1000 --workers 4)

bench-quick: venv
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) $(FLOOR) $(GEN) $(NODE_DIR)/node_modules build *.egg-info
