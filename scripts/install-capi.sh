#!/usr/bin/env bash
# Install the pegan C API into PREFIX: lib/libpegan.so with its soname link, lib/libpegan.a,
# include/pegan.h and lib/pkgconfig/pegan.pc. This does what `cargo cinstall` of cargo-c does for a
# Rust library, without building cargo-c itself. It covers Linux and other ELF systems, where the
# shared library has the soname libpegan.so.<ABI version>.
#
# Usage: scripts/install-capi.sh [--features LIST] [--lib-dir DIR] PREFIX
#   --features LIST  cargo features of pegan-ffi for the release build, e.g. cuda
#   --lib-dir DIR    take libpegan.so and libpegan.a from DIR instead of building them (the tests
#                    install the libraries of their own build this way)
# DESTDIR, if set, stages the files under DESTDIR/PREFIX while pegan.pc still names PREFIX.
#
# Then build a host with:
#   PKG_CONFIG_PATH=PREFIX/lib/pkgconfig cc host.c $(pkg-config --cflags --libs pegan)
# and run it with PREFIX/lib on the library path (LD_LIBRARY_PATH, or -Wl,-rpath at link time) unless
# PREFIX is a system prefix such as /usr/local.
set -euo pipefail

usage() {
    sed -n '/^# Usage:/,/^# DESTDIR/p' "$0" >&2
    exit 2
}

features=""
lib_dir=""
prefix=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --features) features="${2:?--features needs a value}"; shift 2 ;;
        --lib-dir) lib_dir="${2:?--lib-dir needs a value}"; shift 2 ;;
        -h | --help) usage ;;
        -*) echo "install-capi.sh: unknown option $1" >&2; usage ;;
        *) [[ -z "$prefix" ]] || usage; prefix="$1"; shift ;;
    esac
done
[[ -n "$prefix" ]] || usage

root="$(cd "$(dirname "$0")/.." && pwd)"
case "$prefix" in
    /*) ;;
    *) prefix="$(pwd)/$prefix" ;;
esac

if [[ -z "$lib_dir" ]]; then
    (cd "$root" && cargo build --release -p pegan-ffi ${features:+--features "$features"})
    lib_dir="${CARGO_TARGET_DIR:-$root/target}/release"
fi
for library in libpegan.so libpegan.a; do
    if [[ ! -f "$lib_dir/$library" ]]; then
        echo "install-capi.sh: $lib_dir/$library not found: build pegan-ffi first or pass another --lib-dir" >&2
        exit 1
    fi
done

# The version and the ABI version come from the header, which the header test keeps equal to the sources.
header="$root/include/pegan.h"
macro() { awk -v name="$1" '$1 == "#define" && $2 == name { print $3 }' "$header"; }
version="$(macro PEGAN_VERSION_MAJOR).$(macro PEGAN_VERSION_MINOR).$(macro PEGAN_VERSION_PATCH)"
abi="$(macro PEGAN_ABI_VERSION)"
soname="libpegan.so.$abi"

if command -v objdump > /dev/null; then
    built_soname="$(objdump -p "$lib_dir/libpegan.so" | awk '$1 == "SONAME" { print $2 }')"
    if [[ "$built_soname" != "$soname" ]]; then
        echo "install-capi.sh: $lib_dir/libpegan.so has soname '$built_soname', expected $soname: rebuild pegan-ffi" >&2
        exit 1
    fi
fi

destination="${DESTDIR:-}$prefix"
install -d "$destination/include" "$destination/lib/pkgconfig"
install -m 644 "$header" "$destination/include/pegan.h"
install -m 755 "$lib_dir/libpegan.so" "$destination/lib/libpegan.so.$version"
ln -sfn "libpegan.so.$version" "$destination/lib/$soname"
ln -sfn "$soname" "$destination/lib/libpegan.so"
install -m 644 "$lib_dir/libpegan.a" "$destination/lib/libpegan.a"

# Libs.private lists the system libraries a static link of libpegan.a needs, as printed by
# `rustc --print native-static-libs` for x86_64 Linux with glibc. NOTE: a build with --features cuda
# also needs the CUDA libraries for a static link; they are not listed here.
cat > "$destination/lib/pkgconfig/pegan.pc" <<EOF
prefix=$prefix
exec_prefix=\${prefix}
libdir=\${exec_prefix}/lib
includedir=\${prefix}/include

Name: pegan
Description: SinGAN with positional encodings as a spatial inductive bias (C API)
Version: $version
Libs: -L\${libdir} -lpegan
Libs.private: -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
Cflags: -I\${includedir}
EOF

echo "installed pegan $version (ABI $abi) into ${DESTDIR:-}$prefix"
