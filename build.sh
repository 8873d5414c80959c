#!/usr/bin/env bash
# Release build; the binaries land in bin/ (alaska, alas, alaska-broker,
# alaska-bench, alaska-gateway). libzmq and Lua are compiled from source by their crates,
# so a C/C++ compiler is all the machine needs besides cargo.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --bins "$@"
mkdir -p bin
for b in alaska alas alaska-broker alaska-bench alaska-gateway; do
  cp -f "target/release/$b" "bin/$b"
done
echo "built: $(ls bin | tr '\n' ' ')"
