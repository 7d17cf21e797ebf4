#!/usr/bin/env bash
# Run every test of the workspace. Installs nothing beyond the Rust toolchain today; host tests that
# need system packages install them here when they are added.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --no-fail-fast "$@"
