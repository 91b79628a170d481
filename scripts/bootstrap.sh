#!/usr/bin/env bash
# Install everything cpimgw's demo and tests need on a Debian 12 machine:
# the Debian packages of the real peers (Prosody, Kamailio, SIPp, ejabberd, Redis, ngIRCd,
# dnsmasq, openssl) and a virtual environment with cpimgw and its test tools.
# Idempotent: packages already present and an up-to-date venv are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(prosody kamailio kamailio-presence-modules kamailio-sqlite-modules kamailio-tls-modules
      sip-tester openssl ejabberd redis-server ngircd dnsmasq-base procps iproute2)
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then missing+=(python3-venv); fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "bootstrap: need root (or sudo) to install ${missing[*]}" >&2; exit 2; }
    SUDO=sudo
  fi
  # Never let the packages start their system-wide daemons: the tests start their own,
  # on loopback, with their own configs.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
  [ "$created_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
fi

# The venv is rebuilt when pyproject.toml (or a plugin's) changes.
stamp="$VENV/.cpimgw-stamp"
want=$(cat pyproject.toml examples/*/pyproject.toml tests/plugins/*/pyproject.toml 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: preparing $VENV"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[test,dev]'
  for plugin in examples/*/pyproject.toml tests/plugins/*/pyproject.toml; do
    [ -e "$plugin" ] && "$VENV/bin/python" -m pip install -q -e "$(dirname "$plugin")"
  done
  echo "$want" > "$stamp"
fi
