#!/usr/bin/env bash
# Installs everything the box, its demo and its tests need on Debian 12 (bookworm) or 13 (trixie):
# the Debian packages listed in .ci/apt-packages, pkcs11-provider (bookworm-backports on 12),
# and a Python virtual environment in .venv with the project installed in editable mode.
# Idempotent; run as root (or with sudo) on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [ "$codename" = "bookworm" ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
  fi
  stamp=.venv/.apt-done
  if [ ! -f "$stamp" ] || [ .ci/apt-packages -nt "$stamp" ]; then
    $SUDO apt-get update -qq
    # shellcheck disable=SC2046
    $SUDO apt-get install -y -qq --no-install-recommends $(grep -vE '^\s*(#|$)' .ci/apt-packages) >/dev/null
    if [ "$codename" = "bookworm" ]; then
      $SUDO apt-get install -y -qq -t bookworm-backports pkcs11-provider >/dev/null
    else
      $SUDO apt-get install -y -qq pkcs11-provider >/dev/null
    fi
  fi
  # Orthanc's Debian service is not wanted: tests and the demo start private instances.
  if command -v systemctl >/dev/null && systemctl is-active --quiet orthanc 2>/dev/null; then
    $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test,codecs]'
mkdir -p .venv && touch .venv/.apt-done
echo "setup done: $(.venv/bin/drimbox --version)"
