// Version numbers of the C API. build.rs includes this file to name the shared library's soname, so
// the file contains constants only.

/// Major version of the pegan library that this header belongs to.
pub const PEGAN_VERSION_MAJOR: u32 = 0;

/// Minor version of the pegan library that this header belongs to.
pub const PEGAN_VERSION_MINOR: u32 = 1;

/// Patch version of the pegan library that this header belongs to.
pub const PEGAN_VERSION_PATCH: u32 = 0;

/// Version of the binary interface described by this header.
///
/// It changes whenever a function signature, a struct layout or an enum value changes in a way that
/// breaks programs compiled against an older header, and it is the number in the shared library's
/// soname (`libpegan.so.1`). A host checks `pegan_abi_version() == PEGAN_ABI_VERSION` once at startup.
pub const PEGAN_ABI_VERSION: u32 = 1;
