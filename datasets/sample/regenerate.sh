#!/usr/bin/env bash
# Regenerates the committed sample (deterministic: same binary, same files' contents).
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf datasets/sample/dt=* datasets/sample/_truth.json datasets/sample/_slots.csv
cargo run --release --quiet -- gen --out datasets/sample --force \
  --events 70000 --days 7 --tenants 2 --cities 8 --banners 10 --seed 2026 --start 2026-11-01
