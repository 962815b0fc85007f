#!/bin/sh
# Regenerates the image in this directory with a release of mkmodule from before BLAKE3: its
# trailer records the SHA-256 of the input and a block-digest table of SHA-256 digests (table
# algorithm 1), with the stored-check table (docs/FORMAT.md §12). The tests check that this
# release still reads, verifies, extracts, reuses and seeds from such an image.
# Usage: sh regen.sh OLD_MKMODULE [outdir]   (outdir defaults to this script's directory)
set -eu
OLD=$1
OUT=${2:-$(cd "$(dirname "$0")" && pwd)}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# input.bin: 48 blocks of 4 KiB = numbered text lines (blocks 0-23), 8 KiB of zeros (24-25),
# blocks 0-3 again (26-29), then text of other lines (30-47).
python3 -c '
import sys
text = b"".join(b"%06d the quick brown fox jumps over the lazy module\n" % i for i in range(8000))
out = text[:24 * 4096] + bytes(8192) + text[:4 * 4096] + text[200000:200000 + 18 * 4096]
sys.stdout.buffer.write(out)
' > "$WORK/input.bin"
"$OLD" create -q -f -B 4K -c zlib:5 "$WORK/input.bin" -o "$OUT/sha256-tables-b4096.cloop"
