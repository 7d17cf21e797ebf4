//! The C API of pegan: `libpegan.so`, `libpegan.a` and the header `include/pegan.h`.
//!
//! cbindgen generates the header from this crate with `ffi/cbindgen.toml`. The conventions that every
//! function follows (status codes, error messages, ownership, thread safety, image layout) are written
//! at the top of that configuration, and so of the header. In short, every exported function checks
//! its pointers, runs inside a panic barrier, and reports failures as a [`PeganStatus`] with a
//! thread-local message.

// The modules are declared in the order of the header, because cbindgen emits items in source order;
// the blank lines keep rustfmt from sorting them.

// Version constants.
mod version;

// PeganStatus, the last error message and the panic barrier.
mod status;

// C strings and returned buffers.
mod strings;

// PeganContext: device, threads, log callback.
mod context;

// PeganImage and the image file helpers.
mod image;

// PeganSinGanModel: load, save, info.
mod model;

// pegan_singan_train.
mod train;

// pegan_singan_generate.
mod generate;

// PeganStyleGan2Model: load, save, info.
mod stylegan2_model;

// pegan_stylegan2_train.
mod stylegan2_train;

// pegan_stylegan2_generate.
mod stylegan2_generate;

use std::ffi::c_char;

pub use crate::context::*;
pub use crate::generate::*;
pub use crate::image::*;
pub use crate::model::*;
pub use crate::status::*;
pub use crate::strings::*;
pub use crate::stylegan2_generate::*;
pub use crate::stylegan2_model::*;
pub use crate::stylegan2_train::*;
pub use crate::train::*;
pub use crate::version::*;

/// Returns the version of the loaded library as NUL-terminated text, such as "0.1.0".
///
/// The string is static: never free it. It can differ from the `PEGAN_VERSION_*` macros of the header
/// a host was compiled with. Compare `pegan_abi_version()` with `PEGAN_ABI_VERSION` to check that the
/// two are compatible.
/// Thread safety: may be called from any thread at any time.
#[no_mangle]
pub extern "C" fn pegan_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast::<c_char>()
}

/// Returns the `PEGAN_ABI_VERSION` the loaded library was built with.
///
/// A host compiled against this header works with the library only when the two are equal.
/// Thread safety: may be called from any thread at any time.
#[no_mangle]
pub extern "C" fn pegan_abi_version() -> u32 {
    PEGAN_ABI_VERSION
}

/// Keeps the memory that pegan frees in the C library's heap for reuse, instead of returning it to the
/// operating system, and returns whether the setting took effect (glibc only).
///
/// Training and generation free and reallocate the same large buffers many times. Memory returned to
/// the system is faulted in again page by page on its next use. On a 2-core machine that took about a
/// fifth of a convolution layer's forward and backward time, and about 15% of a StyleGAN2 forward pass. The price is a resident set that stays at its peak. The setting is process-wide and changes
/// how every allocation of the process is served, so call it only from a program that owns its process
/// (a plug-in executable, a command-line tool), before the first context, and never from a plug-in
/// loaded into a host application. The `pegan` command-line tool and the GIMP plug-in call it. Later
/// calls do no harm.
///
/// Thread safety: may be called from any thread. The setting applies to allocations made after it.
#[no_mangle]
pub extern "C" fn pegan_retain_freed_memory() -> bool {
    // mallopt does not panic, but nothing may unwind across the C boundary.
    std::panic::catch_unwind(pegan_core::alloc::retain_freed_memory).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_constants_match_cargo() {
        assert_eq!(PEGAN_VERSION_MAJOR.to_string(), env!("CARGO_PKG_VERSION_MAJOR"));
        assert_eq!(PEGAN_VERSION_MINOR.to_string(), env!("CARGO_PKG_VERSION_MINOR"));
        assert_eq!(PEGAN_VERSION_PATCH.to_string(), env!("CARGO_PKG_VERSION_PATCH"));
        assert_eq!(pegan_core::VERSION, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_retains_freed_memory() {
        assert!(pegan_retain_freed_memory());
    }
}
