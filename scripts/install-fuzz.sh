#!/usr/bin/env bash
# Installs cargo-fuzz 0.13.2 (a pinned prebuilt binary, else compiled from crates.io; see
# install-cargo-tool.sh) for `cargo xtask fuzz`, unless it is already there.
#
# cargo-fuzz drives libFuzzer through the `libfuzzer-sys` crate. It needs nightly-only rustc
# flags (`-Zsanitizer`, sanitizer coverage); only the stable toolchain exists on these machines,
# so `cargo xtask fuzz` runs it with RUSTC_BOOTSTRAP=1. Nothing else is needed: libFuzzer's C++
# sources are built by libfuzzer-sys with the machine's C++ compiler.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/install-cargo-tool.sh" fuzz cargo-fuzz 0.13.2 \
    612108f626b6ee0e5d63b1a0e257c89c13abffbd8fff539ccbffb7205b33093f
