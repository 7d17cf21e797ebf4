//! C strings and byte buffers in both directions: arguments read from the caller, and malloc'd
//! results handed to the caller with their free functions.

use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;

use crate::status::{boundary_void, FfiError, FfiResult, PeganStatus};

/// Reads a NUL-terminated UTF-8 argument that may be NULL.
pub(crate) unsafe fn optional_c_str<'a>(
    pointer: *const c_char,
    function: &str,
    argument: &str,
) -> FfiResult<Option<&'a str>> {
    if pointer.is_null() {
        return Ok(None);
    }
    let text = CStr::from_ptr(pointer)
        .to_str()
        .map_err(|e| FfiError::invalid(format!("{function}: argument '{argument}' is not valid UTF-8 ({e})")))?;
    Ok(Some(text))
}

/// Reads a NUL-terminated UTF-8 argument that must not be NULL.
pub(crate) unsafe fn required_c_str<'a>(pointer: *const c_char, function: &str, argument: &str) -> FfiResult<&'a str> {
    optional_c_str(pointer, function, argument)?.ok_or_else(|| FfiError::null(function, argument))
}

/// Reads a NUL-terminated path argument. On Unix the bytes are taken as they are, so paths need not
/// be UTF-8; elsewhere they must be.
pub(crate) unsafe fn required_path(pointer: *const c_char, function: &str, argument: &str) -> FfiResult<PathBuf> {
    if pointer.is_null() {
        return Err(FfiError::null(function, argument));
    }
    let bytes = CStr::from_ptr(pointer).to_bytes();
    if bytes.is_empty() {
        return Err(FfiError::invalid(format!("{function}: argument '{argument}' is an empty path")));
    }

    #[cfg(unix)]
    let path = {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
    };
    #[cfg(not(unix))]
    let path = PathBuf::from(required_c_str(pointer, function, argument)?);
    Ok(path)
}

/// Copies `bytes` into a new malloc'd buffer, with one extra zero byte after them so that text can be
/// read as a C string.
pub(crate) fn malloc_copy(bytes: &[u8], what: &str) -> FfiResult<*mut u8> {
    let size =
        bytes.len().checked_add(1).ok_or_else(|| FfiError::too_large(format!("{what} does not fit in memory")))?;
    // SAFETY: malloc has no preconditions; the result is checked before use.
    let buffer = unsafe { libc::malloc(size) }.cast::<u8>();
    if buffer.is_null() {
        return Err(FfiError::new(PeganStatus::OutOfMemory, format!("cannot allocate {size} bytes for {what}")));
    }
    // SAFETY: `buffer` has room for `size` = `bytes.len() + 1` bytes and does not overlap `bytes`.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer, bytes.len());
        *buffer.add(bytes.len()) = 0;
    }
    Ok(buffer)
}

/// Frees a string returned by pegan, such as the JSON of `pegan_singan_model_info_json`. NULL is
/// allowed and does nothing.
///
/// Thread safety: may be called from any thread, once per string.
///
/// # Safety
/// `string` is NULL or a string returned by pegan that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn pegan_string_free(string: *mut c_char) {
    boundary_void(|| libc::free(string.cast::<c_void>()))
}

/// Frees a byte buffer returned by pegan, such as the model bytes of
/// `pegan_singan_model_save_to_memory`. NULL is allowed and does nothing.
///
/// Thread safety: may be called from any thread, once per buffer.
///
/// # Safety
/// `data` is NULL or a buffer returned by pegan that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn pegan_buffer_free(data: *mut c_void) {
    boundary_void(|| libc::free(data))
}
