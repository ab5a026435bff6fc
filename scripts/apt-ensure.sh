#!/usr/bin/env bash
# Installs the Debian packages named as arguments that are not installed yet (as root).
# Idempotent: when every package is there it only checks (dpkg-query, no apt-get update).
# Used by setup.sh and vm/prepare.sh; prints what it installs, prefixed with $APT_ENSURE_TAG.
set -euo pipefail

missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "${APT_ENSURE_TAG:-apt-ensure}: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
