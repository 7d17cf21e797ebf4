#!/usr/bin/env bash
# Run every test of the workspace. The C API tests (ffi/tests/c_api.rs) build C and C++ programs and
# run them under valgrind, the GIMP plug-in tests (ffi/tests/gimp_plugin.rs) run headless GIMP, and
# the OpenFX plug-in tests (plugins/ofx/tests/ofx_host.rs) build a C++ test host. So the tools they
# need are installed first when missing (Debian packages, as root).
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

# The GIMP plug-in tests (ffi/tests/gimp_plugin.rs) run headless GIMP 2.10 and build against libgimp.
if ! command -v gimp-console-2.10 > /dev/null || ! command -v gimptool-2.0 > /dev/null; then
    echo "installing gimp and libgimp2.0-dev for the GIMP plug-in tests"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y gimp libgimp2.0-dev
fi

# The OpenFX plug-in (plugins/ofx) builds its bindings with bindgen, which needs libclang and clang's
# built-in headers, and its host test (plugins/ofx/tests/ofx_host.rs) builds the OpenFX SDK's
# HostSupport library, which needs the expat headers.
if [[ ! -f /usr/include/expat.h ]] || ! compgen -G "/usr/lib/llvm-*/lib/libclang.so*" > /dev/null ||
    ! compgen -G "/usr/lib/llvm-*/lib/clang/*/include/stdbool.h" > /dev/null; then
    echo "installing libclang-dev and libexpat1-dev for the OpenFX plug-in"
    apt-get update
    apt-get install -y libclang-dev libexpat1-dev
fi

cargo test --workspace --no-fail-fast "$@"
