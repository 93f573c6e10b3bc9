#!/usr/bin/env bash
# Installs what the tests and benchmarks need on a fresh machine of this kind; quick when done.
# - Rust: rustfmt and clippy components.
# - Debian: chromium and chromium-driver (the browser tests of the lookup service's pages),
#   libjs-jquery (the prototype's banner page in those tests loads jQuery) and prometheus
#   (promtool checks the alert rules; the live operations test runs Prometheus); kubectl renders
#   the kustomize overlays.
# - Python: a virtualenv with the packages in scripts/requirements-test.txt.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${SLOTBANDIT_CACHE:-$HOME/.cache/slotbandit}"
venv="$cache/venv"

need() { command -v "$1" >/dev/null 2>&1 || { echo "install.sh: $1 is required but not installed" >&2; exit 1; }; }
need cargo
need python3

if command -v rustup >/dev/null 2>&1; then
  installed="$(rustup component list --installed 2>/dev/null || true)"
  for c in rustfmt clippy; do
    grep -q "^$c" <<<"$installed" || rustup component add "$c"
  done
fi

missing=()
for pkg in chromium chromium-driver libjs-jquery prometheus kubectl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install.sh: installing ${missing[*]} (apt-get)" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  # The prometheus package brings an init script, but package installs start no service on
  # these machines (no systemd, and policy-rc.d refuses), so nothing is left on :9090.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" >/dev/null
fi

req="$here/requirements-test.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "install.sh: preparing the Python environment in $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet -r "$req"
  echo "$want" >"$stamp"
fi
