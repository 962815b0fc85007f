#!/usr/bin/env bash
# Usage: install-cargo-tool.sh SUBCOMMAND CRATE
# Installs CRATE from crates.io (`cargo install --locked`) unless `cargo SUBCOMMAND --version`
# already works.
set -euo pipefail
subcommand=$1
crate=$2
if cargo "$subcommand" --version >/dev/null 2>&1; then
    echo "install-cargo-tool: $(cargo "$subcommand" --version) present"
    exit 0
fi
cargo install "$crate" --locked
echo "install-cargo-tool: $(cargo "$subcommand" --version) installed"
