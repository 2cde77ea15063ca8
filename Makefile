# roamnet — build, demo and test on a Debian machine, as root.
#
#   make demo      install what is missing, then run the two-data-center demo
#   make test      install what is missing, then unit tests and lab tests
#   make bench     install what is missing, then the migration benchmark: roamnet, FRR-EVPN and OVN
#
# Other targets: install, guest, unit, lab-test, clean. `make install` is idempotent and
# fast once done: Debian packages are installed only when missing, the virtualenv
# only when absent or broken, and the package again only when pyproject.toml is
# newer than $(STAMP).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := install
MAKEFLAGS += --no-print-directory

# The interpreter that creates the venv: >= 3.11 with venv/ensurepip; falls back to Debian's.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    := out

# Debian package -> commands that show it is present (checked with command -v, then dpkg).
# iproute2: ip/bridge for independent checks in tests; util-linux: nsenter, used by the product
# to run commands in lab namespaces; iputils-ping and tcpdump: for poking at a running lab;
# frr: zebra + bgpd (in /usr/lib/frr, not on PATH: vtysh shows the package is there) for the FRR
# BGP-EVPN baseline control plane (src/roamnet/evpn.py), only ever started inside lab namespaces;
# nftables: libnftables1 (pulled in by it) is what the agents program port filters with (src/roamnet/nft.py),
# `nft` is for looking at them.
DEB_TOOLS := iproute2:ip,bridge util-linux:nsenter iputils-ping:ping tcpdump:tcpdump frr:vtysh nftables:nft etcd-server:etcd
# The lab's QEMU guests (`vms.<vm>.guest: qemu`; src/roamnet/lab/qemu.py), checked with dpkg only: QEMU (TCG
# runs where KVM does not), and what guest/build.sh builds the guest from: busybox-static (a dynamic
# `busybox` package is replaced by it), gcc and libc6-dev (the static rnguest traffic program), kmod (depmod
# on the unpacked kernel). The kernel itself is fetched with apt-get download, never installed.
DEB_GUEST := qemu-system-x86 busybox-static gcc libc6-dev kmod
GUEST := build/guest
# Only for the benchmark's OVN baseline (src/roamnet/baselines/ovn.py; the demo and the tests without
# it need none of them): Open vSwitch (ovsdb-server, ovs-vswitchd on its userspace datapath) and OVN
# (northd and the NB/SB schemas; ovn-controller), every daemon started by roamnet inside lab
# namespaces with private directories. Their system services are disabled right after install.
DEB_BENCH := openvswitch-switch:ovs-vswitchd,ovs-vsctl ovn-central:ovn-northd,ovn-nbctl ovn-host:ovn-controller
OVN_SERVICES := openvswitch-switch.service ovs-vswitchd.service ovsdb-server.service \
  ovn-central.service ovn-northd.service ovn-ovsdb-server-nb.service ovn-ovsdb-server-sb.service \
  ovn-host.service ovn-controller.service

# Under CI the lab tests must run: the lab conftest fails instead of skipping when it cannot.
ifneq ($(filter true 1 yes on,$(shell printf '%s' '$(CI)' | tr A-Z a-z)),)
export ROAMNET_REQUIRE_LAB := 1
LAB_REQUIRED := 1
endif

.PHONY: install deps guest demo test unit lab-test bench clean

# Debian packages, the venv and the package, then the QEMU guest.
install: deps guest

deps:
	@say() { printf 'roamnet: %s\n' "$$*"; }
	# --- Debian packages, only the missing ones -------------------------------------------
	installed() { [ "$$(dpkg-query -W -f='$${Status}' "$$1" 2>/dev/null)" = "install ok installed" ]; }
	have_cmds() { local c; for c in $${1//,/ }; do command -v "$$c" >/dev/null 2>&1 || return 1; done; }
	missing=()
	for entry in $(DEB_TOOLS) $(DEB_BENCH); do
	  pkg=$${entry%%:*}; cmds=$${entry#*:}
	  have_cmds "$$cmds" || installed "$$pkg" || missing+=("$$pkg")
	done
	for pkg in $(DEB_GUEST); do installed "$$pkg" || missing+=("$$pkg"); done
	# --- a Python >= 3.11 that can make a venv: $(PYTHON) from PATH, else Debian's ----------
	venv_ok() { [ -x $(PY) ] && $(PY) -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }
	usable() { "$$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }
	python=""
	if ! venv_ok; then
	  for p in $(PYTHON) /usr/bin/python3; do
	    if command -v "$$p" >/dev/null 2>&1 && usable "$$p"; then python=$$(command -v "$$p"); break; fi
	  done
	  [ -n "$$python" ] || missing+=(python3 python3-venv python3-pip)
	fi
	if [ $${#missing[@]} -gt 0 ]; then
	  if ! command -v apt-get >/dev/null 2>&1; then
	    say "missing: $${missing[*]} — and no apt-get to install them; install them by hand"; exit 1
	  fi
	  if [ "$$(id -u)" -ne 0 ]; then
	    say "missing: $${missing[*]} — run as root to let apt-get install them"; exit 1
	  fi
	  say "installing Debian packages: $${missing[*]}"
	  apt-get update
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$${missing[@]}"
	  # Debian's etcd-server enables and starts a system-wide etcd on localhost:2379 with no
	  # authentication; roamnet starts its own members on root-only unix sockets and needs none of it
	  if [[ " $${missing[*]} " == *" etcd-server "* ]] && command -v systemctl >/dev/null 2>&1 \
	     && systemctl is-enabled etcd.service >/dev/null 2>&1; then
	    say "disabling the system etcd.service that etcd-server just enabled (roamnet runs its own)"
	    systemctl disable --now etcd.service || true
	  fi
	  # Open vSwitch's and OVN's packages enable (and, where init scripts may run, start) system-wide
	  # ovsdb-server, ovs-vswitchd, northd and ovn-controller; the benchmark runs its own per lab
	  # namespace and none of these may run because of roamnet
	  if [[ " $${missing[*]} " == *" openvswitch-switch "* || " $${missing[*]} " == *" ovn-"* ]]; then
	    say "OVN and Open vSwitch are installed for the benchmark's OVN baseline only; disabling their system services"
	    if command -v systemctl >/dev/null 2>&1; then  # works offline too (no systemd running: links only)
	      for unit in $(OVN_SERVICES); do
	        if [ -d /run/systemd/system ] && systemctl is-active "$$unit" >/dev/null 2>&1; then
	          systemctl stop "$$unit" || true
	        fi
	        if systemctl is-enabled "$$unit" >/dev/null 2>&1; then systemctl disable "$$unit" || true; fi
	      done
	    fi
	    if [ ! -d /run/systemd/system ]; then  # no systemd: their init scripts, if invoke-rc.d let them run
	      for script in ovn-host ovn-central openvswitch-switch; do
	        if [ -x /etc/init.d/$$script ]; then
	          if /etc/init.d/$$script status >/dev/null 2>&1; then /etc/init.d/$$script stop || true; fi
	          if command -v update-rc.d >/dev/null 2>&1; then update-rc.d $$script disable >/dev/null 2>&1 || true; fi
	        fi
	      done
	    fi
	  fi
	fi
	# --- the virtualenv --------------------------------------------------------------------
	if ! venv_ok; then
	  if [ -z "$$python" ]; then
	    for p in $(PYTHON) /usr/bin/python3; do
	      if command -v "$$p" >/dev/null 2>&1 && usable "$$p"; then python=$$(command -v "$$p"); break; fi
	    done
	  fi
	  if [ -z "$$python" ]; then
	    say "no Python >= 3.11 with venv found ($(PYTHON) or /usr/bin/python3: $$(/usr/bin/python3 -V 2>&1 || true))"; exit 1
	  fi
	  say "creating $(VENV) with $$python ($$("$$python" -V 2>&1))"
	  rm -rf $(VENV)
	  "$$python" -m venv $(VENV)
	fi
	# --- the package, again only when pyproject.toml changed ------------------------------
	if [ ! -f $(STAMP) ] || [ pyproject.toml -nt $(STAMP) ]; then
	  say "pip install -e '.[test]'"
	  $(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	  touch $(STAMP)
	fi

# The lab's QEMU guest (guest/build.sh), after the packages it is built from: rebuilt only when its sources
# changed; the kernel package is fetched once into $(GUEST)/kernel.
guest: $(GUEST)/initrd.img

$(GUEST)/initrd.img: guest/build.sh guest/init guest/rnguest.c | deps
	guest/build.sh $(GUEST)

demo: install
	mkdir -p $(OUT)
	$(VENV)/bin/roamnet demo --plot $(OUT)/demo.png

test: install
	$(MAKE) unit
	$(MAKE) lab-test

unit: install
	$(PY) -m pytest tests/unit -q

# pytest exit 5 = no tests collected: a failure when the lab is required (CI), a note otherwise.
lab-test: install
	@echo "$(PY) -m pytest tests/lab -q -m lab$(if $(LAB_REQUIRED),  # ROAMNET_REQUIRE_LAB=1)"
	rc=0; $(PY) -m pytest tests/lab -q -m lab || rc=$$?
	if [ $$rc -eq 5 ]; then
	  if [ -n "$(LAB_REQUIRED)" ]; then echo "roamnet: no lab tests were collected (CI requires them)"; exit 5; fi
	  echo "roamnet: no lab tests were collected"; exit 0
	fi
	exit $$rc

# Live-migration benchmark (root; about 8 minutes): loss beyond the VM's pause for all four control planes in
# one run, one after the other: roamnet (prepared and learn; kernel datapath), FRR BGP-EVPN (kernel datapath)
# and OVN with its three move strategies (Open vSwitch's userspace datapath: the packages from DEB_BENCH).
bench: install
	$(PY) benchmarks/migration.py --out $(OUT)/bench

# Removes build products only (the guest's cached kernel in build/ too); never touches network namespaces or /run/roamnet.
clean:
	rm -rf $(VENV) $(OUT) .pytest_cache build dist
	find src tests -depth \( -name __pycache__ -o -name '*.egg-info' -o -name .pytest_cache \) \
	  -exec rm -rf {} + 2>/dev/null || true
