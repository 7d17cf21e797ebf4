#!/usr/bin/env bash
# Regenerate include/pegan.h from the pegan-ffi sources with cbindgen (configuration: ffi/cbindgen.toml).
# The test ffi/tests/header.rs fails until the regenerated header is committed.
set -euo pipefail
cd "$(dirname "$0")/.."

PEGAN_UPDATE_HEADER=1 cargo test -p pegan-ffi --test header --quiet
echo "wrote include/pegan.h"
