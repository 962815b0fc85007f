#!/usr/bin/env bash
# Installs cargo-fuzz (from crates.io) for `cargo xtask fuzz`, unless it is already there.
#
# cargo-fuzz drives libFuzzer through the `libfuzzer-sys` crate. It needs nightly-only rustc
# flags (`-Zsanitizer`, sanitizer coverage); only the stable toolchain exists on these machines,
# so `cargo xtask fuzz` runs it with RUSTC_BOOTSTRAP=1. Nothing else is needed: libFuzzer's C++
# sources are built by libfuzzer-sys with the machine's C++ compiler.
set -euo pipefail
if cargo fuzz --version >/dev/null 2>&1; then
    echo "install-fuzz: $(cargo fuzz --version) present"
    exit 0
fi
cargo install cargo-fuzz --locked
echo "install-fuzz: $(cargo fuzz --version) installed"
