#!/usr/bin/env bash
# Run every test of the workspace. The C API tests (ffi/tests/c_api.rs) build C and C++ programs and
# run them under valgrind, so the compilers, make, pkg-config and valgrind are installed first when
# missing (Debian packages, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in gcc g++ make pkg-config valgrind; do
    command -v "$tool" > /dev/null || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing ${missing[*]} for the C API tests"
    apt-get update
    apt-get install -y gcc g++ make pkg-config valgrind
fi

cargo test --workspace --no-fail-fast "$@"
