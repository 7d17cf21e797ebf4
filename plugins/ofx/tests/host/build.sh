#!/usr/bin/env bash
# Builds ofx_test_host: the OpenFX SDK's HostSupport library plus ofx_test_host.cpp.
#
# Usage: plugins/ofx/tests/host/build.sh SDK_DIR OUT_DIR
#   SDK_DIR  the "openfx" folder of the crates.io package openfx-sys 0.1.0, which vendors the SDK
#   OUT_DIR  build folder; OUT_DIR/ofx_test_host is the result. The HostSupport objects are kept
#            there and rebuilt only when the SDK folder changes.
# Needs g++ and the expat headers (Debian: g++ libexpat1-dev).
#
# HostSupport needs -std=c++14 (or c++11): its dynamic exception specifications are an error
# under the C++17 default of g++ 11 and newer. -w hides its many deprecation warnings.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 SDK_DIR OUT_DIR" >&2
    exit 1
fi
sdk="$(cd "$1" && pwd)"
out="$2"
here="$(cd "$(dirname "$0")" && pwd)"
cxx="${CXX:-g++}"
flags=(-std=c++14 -O2 -w -I"$sdk/include" -I"$sdk/HostSupport/include")

for header in "$sdk/include/ofxCore.h" "$sdk/HostSupport/include/ofxhHost.h" /usr/include/expat.h; do
    if [[ ! -f "$header" ]]; then
        echo "build.sh: $header is missing: pass the openfx folder of openfx-sys and install libexpat1-dev" >&2
        exit 1
    fi
done

mkdir -p "$out/hostsupport"
stamp="$out/hostsupport/sdk-path"
if [[ ! -f "$out/libofxHost.a" || "$(cat "$stamp" 2>/dev/null)" != "$sdk" ]]; then
    rm -f "$out"/hostsupport/*.o "$out/libofxHost.a"
    jobs="$(nproc 2>/dev/null || echo 2)"
    printf '%s\n' "$sdk"/HostSupport/src/*.cpp |
        xargs -P "$jobs" -I{} sh -c '"$0" "$@" -c "{}" -o "'"$out"'/hostsupport/$(basename "{}" .cpp).o"' \
            "$cxx" "${flags[@]}"
    ar rcs "$out/libofxHost.a" "$out"/hostsupport/*.o
    echo "$sdk" > "$stamp"
fi

"$cxx" "${flags[@]}" -o "$out/ofx_test_host" "$here/ofx_test_host.cpp" "$out/libofxHost.a" -lexpat -ldl
