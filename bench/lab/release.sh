# Sourced by the lab scripts: builds the release binary and sets $bin to a private copy of it
# (the target folder may be shared with other checkouts), removed when the script exits.
release_binary() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slotbandit/target}"
  cargo build --release --quiet
  release_dir="$(mktemp -d)"
  trap 'rm -rf "$release_dir"' EXIT
  bin="$release_dir/slotbandit"
  cp "$CARGO_TARGET_DIR/release/slotbandit" "$bin"
}
