#!/usr/bin/env bash
# Builds the Debian package: a release build, the man pages and shell
# completions generated from each binary's clap definition (src/docgen.rs),
# then `cargo deb --no-build` (metadata in Cargo.toml). Installs cargo-deb
# from crates.io when it is absent. Prints the .deb's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked >&2
fi
cargo build --release --locked --bins >&2
rm -rf target/assets
for b in alaska alas alaska-broker alaska-gateway alaska-bench; do
  ALASKA_GENERATE_DOCS=target/assets "target/release/$b"
done
cargo deb --no-build --locked >&2
deb=$(ls -t target/debian/alaska_*.deb | head -1)
echo "$deb"
