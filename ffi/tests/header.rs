//! Checks that the committed include/pegan.h equals a fresh cbindgen generation from ffi/src.
//!
//! With PEGAN_UPDATE_HEADER=1 the test writes the fresh header instead (scripts/gen-header.sh).

use std::path::Path;

#[test]
fn committed_header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header_path = crate_dir.join("../include/pegan.h");
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("ffi/cbindgen.toml parses");

    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);

    if std::env::var_os("PEGAN_UPDATE_HEADER").is_some_and(|v| v == "1") {
        std::fs::write(&header_path, &fresh).expect("include/pegan.h is writable");
        return;
    }
    let committed = std::fs::read(&header_path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/pegan.h differs from the header cbindgen generates from ffi/src: run scripts/gen-header.sh and commit the result"
    );
}
