#!/usr/bin/env bash
# Installs cargo-deny (from crates.io) for the licence, ban, source and advisory checks that
# `cargo xtask ci` runs with the rules of deny.toml, unless it is already there.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/install-cargo-tool.sh" deny cargo-deny
