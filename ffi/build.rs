//! Gives the shared library the soname `libpegan.so.<ABI version>` on ELF platforms, so that hosts
//! built against one ABI never load a library of another.

#[allow(dead_code)]
mod version {
    include!("src/version.rs");
}

fn main() {
    println!("cargo:rerun-if-changed=src/version.rs");

    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let elf = matches!(target_os.as_str(), "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly");
    if elf {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libpegan.so.{}", version::PEGAN_ABI_VERSION);
    }
}
