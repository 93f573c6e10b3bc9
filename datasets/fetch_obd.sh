#!/usr/bin/env bash
# Fetches the Open Bandit Dataset small sample (ZOZOTOWN; CC BY 4.0; Saito et al. 2020) from the
# obp 0.4.1 wheel on PyPI into datasets/obd (or $1): random/{all,men,women}/*.csv and bts/…
# Nothing it writes is committed (the folder ignores itself).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/obd}"
python="${PYTHON:-python3}"
for tool in "$python" unzip; do
  command -v "$tool" >/dev/null 2>&1 || { echo "fetch_obd.sh: $tool is required" >&2; exit 1; }
done
if [ -f "$dest/random/all/all.csv" ] && [ -f "$dest/bts/women/women.csv" ]; then
  echo "fetch_obd.sh: $dest already holds the dataset" >&2
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The wheel declares Python < 3.11, so download it for 3.10 without installing it.
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
  obp==0.4.1 -d "$work"
unzip -q -o "$work"/obp-0.4.1-py3-none-any.whl 'obp/dataset/obd/*' -d "$work"
mkdir -p "$dest"
cp -R "$work/obp/dataset/obd/." "$dest/"
find "$dest" -name .DS_Store -delete
printf '*\n' >"$dest/.gitignore"
echo "fetch_obd.sh: wrote $dest" >&2
