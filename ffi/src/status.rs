//! Status codes, the thread-local error message and the panic barrier that every exported function
//! runs inside.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{self, AssertUnwindSafe};

/// Result of every pegan function that can fail.
///
/// On any value other than `PEGAN_STATUS_OK`, `pegan_last_error_message()` describes the failure and
/// names the value that caused it. Values are stable within one `PEGAN_ABI_VERSION`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeganStatus {
    /// The call succeeded.
    Ok = 0,
    /// An argument is out of range or inconsistent. Examples are a zero width or height, a channel
    /// count other than 1, 3 or 4, an unknown sample type or noise mode, and a row stride smaller than
    /// one row of pixels. Others are a buffer shorter than the image, an output image whose size
    /// differs from the requested one, a start stage the model lacks, and an invalid training
    /// configuration.
    InvalidArgument = 1,
    /// A pointer argument that must not be NULL is NULL.
    NullPointer = 2,
    /// A file could not be opened, read, decoded or written; the message names the path.
    Io = 3,
    /// Model bytes are not a valid model of the kind the function loads. They are corrupt or
    /// truncated, contain another model kind (a StyleGAN2 file given to a SinGAN function, or the
    /// reverse), or have a file format newer than this library reads. Also a checkpoint whose
    /// tensors do not match its configuration.
    InvalidModel = 4,
    /// The SinGAN model has stages whose training has not finished (training was cancelled), so it
    /// cannot generate images.
    IncompleteModel = 5,
    /// The device string is invalid, or the device is missing or not compiled into this library.
    Device = 6,
    /// The progress callback returned nonzero and training stopped.
    Cancelled = 7,
    /// A size is above a limit: an image side above the library's maximum, a size in bytes that does
    /// not fit in `size_t`, or an output whose estimated working memory exceeds the memory limit.
    TooLarge = 8,
    /// Memory for a buffer handed to the caller could not be allocated.
    OutOfMemory = 9,
    /// A tensor operation failed inside the library, for example when a GPU runs out of memory.
    Compute = 10,
    /// An internal error (a bug in pegan) was caught before it crossed into the caller. The handles
    /// passed to the call are still valid and must still be freed.
    Panic = 11,
}

impl PeganStatus {
    /// Every status, in value order.
    const ALL: [PeganStatus; 12] = [
        PeganStatus::Ok,
        PeganStatus::InvalidArgument,
        PeganStatus::NullPointer,
        PeganStatus::Io,
        PeganStatus::InvalidModel,
        PeganStatus::IncompleteModel,
        PeganStatus::Device,
        PeganStatus::Cancelled,
        PeganStatus::TooLarge,
        PeganStatus::OutOfMemory,
        PeganStatus::Compute,
        PeganStatus::Panic,
    ];

    /// Returns the name of the C constant as a NUL-terminated string.
    fn c_name(self) -> &'static CStr {
        match self {
            PeganStatus::Ok => c"PEGAN_STATUS_OK",
            PeganStatus::InvalidArgument => c"PEGAN_STATUS_INVALID_ARGUMENT",
            PeganStatus::NullPointer => c"PEGAN_STATUS_NULL_POINTER",
            PeganStatus::Io => c"PEGAN_STATUS_IO",
            PeganStatus::InvalidModel => c"PEGAN_STATUS_INVALID_MODEL",
            PeganStatus::IncompleteModel => c"PEGAN_STATUS_INCOMPLETE_MODEL",
            PeganStatus::Device => c"PEGAN_STATUS_DEVICE",
            PeganStatus::Cancelled => c"PEGAN_STATUS_CANCELLED",
            PeganStatus::TooLarge => c"PEGAN_STATUS_TOO_LARGE",
            PeganStatus::OutOfMemory => c"PEGAN_STATUS_OUT_OF_MEMORY",
            PeganStatus::Compute => c"PEGAN_STATUS_COMPUTE",
            PeganStatus::Panic => c"PEGAN_STATUS_PANIC",
        }
    }
}

/// A failed call: the status to return and the message for `pegan_last_error_message()`.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub status: PeganStatus,
    pub message: String,
}

impl FfiError {
    pub fn new(status: PeganStatus, message: impl Into<String>) -> Self {
        FfiError { status, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        FfiError::new(PeganStatus::InvalidArgument, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        FfiError::new(PeganStatus::TooLarge, message)
    }

    /// Builds the error for a NULL `argument` of `function`.
    pub fn null(function: &str, argument: &str) -> Self {
        FfiError::new(PeganStatus::NullPointer, format!("{function}: argument '{argument}' is NULL"))
    }
}

impl From<pegan_core::Error> for FfiError {
    fn from(error: pegan_core::Error) -> Self {
        use pegan_core::Error;

        let status = match &error {
            Error::InvalidArgument(_) => PeganStatus::InvalidArgument,
            Error::TooLarge(_) => PeganStatus::TooLarge,
            Error::Read { .. } | Error::Write { .. } => PeganStatus::Io,
            Error::InvalidModel(_) => PeganStatus::InvalidModel,
            Error::Device(_) => PeganStatus::Device,
            Error::Cancelled => PeganStatus::Cancelled,
            Error::Candle(_) => PeganStatus::Compute,
        };
        FfiError::new(status, error.to_string())
    }
}

pub(crate) type FfiResult<T> = Result<T, FfiError>;

thread_local! {
    /// Message of the last call on this thread that returned a status; empty after a success.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Runs the body of the exported function `function`, catches any panic, records the message and
/// returns the status.
pub(crate) fn boundary(function: &'static str, body: impl FnOnce() -> FfiResult<()>) -> PeganStatus {
    let outcome = panic::catch_unwind(AssertUnwindSafe(body));
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(payload) => Some(FfiError::new(
            PeganStatus::Panic,
            format!("{function}: internal error: {}; please report this bug in pegan", panic_message(&*payload)),
        )),
    };

    let (status, message) = match error {
        None => (PeganStatus::Ok, String::new()),
        Some(error) => (error.status, error.message),
    };
    set_last_error(&message);
    status
}

/// Runs `body`, which returns nothing and reports no status, and swallows any panic; for the free
/// functions, which have no way to report one.
pub(crate) fn boundary_void(body: impl FnOnce()) {
    let _ = panic::catch_unwind(AssertUnwindSafe(body));
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text
    } else {
        "panic with a non-text payload"
    }
}

fn set_last_error(message: &str) {
    // A C string ends at the first NUL, so an embedded one is written out instead.
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // try_with fails only while this thread's locals are being destroyed, and then the message is lost.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = text);
}

/// Returns the message of the last call on this thread that returned a `PeganStatus`.
///
/// The message describes what failed and names the offending value, for example
/// `row stride 6 bytes is smaller than one row of pixels ...`. It is empty ("") after a call that
/// returned `PEGAN_STATUS_OK` and before any such call. The string is owned by the library: it stays
/// valid until the next call on this thread of a function that returns `PeganStatus`, and the caller
/// must not free it. Messages are per thread, so threads never see each other's errors.
///
/// Thread safety: may be called from any thread at any time. Never returns NULL.
#[no_mangle]
pub extern "C" fn pegan_last_error_message() -> *const c_char {
    let pointer = panic::catch_unwind(|| LAST_ERROR.try_with(|slot| slot.borrow().as_ptr()).ok());
    match pointer {
        Ok(Some(pointer)) => pointer,
        _ => c"".as_ptr(),
    }
}

/// Returns the name of a status constant, such as "PEGAN_STATUS_IO", or "PEGAN_STATUS_UNKNOWN" for a
/// value that is not a `PeganStatus`.
///
/// The string is static: never free it. Thread safety: may be called from any thread at any time.
#[no_mangle]
pub extern "C" fn pegan_status_name(status: c_int) -> *const c_char {
    let known = PeganStatus::ALL.iter().find(|s| **s as c_int == status);
    match known {
        Some(status) => status.c_name().as_ptr(),
        None => c"PEGAN_STATUS_UNKNOWN".as_ptr(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_in_value_order() {
        for (index, status) in PeganStatus::ALL.iter().enumerate() {
            assert_eq!(*status as usize, index, "{status:?}");
        }
    }

    #[test]
    fn panic_becomes_panic_status() {
        let status = boundary("pegan_test", || panic!("boom"));
        assert_eq!(status, PeganStatus::Panic);
        let message = unsafe { CStr::from_ptr(pegan_last_error_message()) }.to_str().unwrap().to_string();
        assert!(message.contains("pegan_test"), "{message}");
        assert!(message.contains("boom"), "{message}");
    }

    #[test]
    fn success_clears_message() {
        boundary("pegan_test", || Err(FfiError::invalid("bad value 7")));
        boundary("pegan_test", || Ok(()));
        let message = unsafe { CStr::from_ptr(pegan_last_error_message()) };
        assert!(message.is_empty());
    }

    #[test]
    fn embedded_nul_is_escaped() {
        boundary("pegan_test", || Err(FfiError::invalid("a\0b")));
        let message = unsafe { CStr::from_ptr(pegan_last_error_message()) }.to_str().unwrap();
        assert_eq!(message, "a\\0b");
    }
}
