//! The context: the compute device, the CPU thread count and the log callback.

use std::ffi::{c_char, c_void, CString};
use std::fmt::Write as _;
use std::sync::Arc;

use candle_core::Device;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt};
use tracing_subscriber::Registry;

use crate::status::{boundary, boundary_void, FfiError, FfiResult, PeganStatus};
use crate::strings::optional_c_str;

/// Severity of a log message.
pub type PeganLogLevel = u32;

/// A failure the library reports to the caller; each one also comes with a status code.
pub const PEGAN_LOG_LEVEL_ERROR: PeganLogLevel = 1;
/// An error that was handled, such as an invalid argument that a call rejected.
pub const PEGAN_LOG_LEVEL_WARN: PeganLogLevel = 2;
/// Start and end of a training run or a training stage.
pub const PEGAN_LOG_LEVEL_INFO: PeganLogLevel = 3;
/// Per-iteration detail, such as the losses of every training iteration.
pub const PEGAN_LOG_LEVEL_DEBUG: PeganLogLevel = 4;
/// Finer detail than `PEGAN_LOG_LEVEL_DEBUG`.
pub const PEGAN_LOG_LEVEL_TRACE: PeganLogLevel = 5;

/// Receives one log message.
///
/// `message` is NUL-terminated UTF-8, for example `training stage stage=0 num_stages=5`, and is
/// valid only during the call. `user_data` is `PeganContextOptions.log_user_data`. The callback runs
/// on the thread that called the pegan function, during that call. When several threads use objects
/// of one context at once, it runs on several threads at once.
pub type PeganLogCallback =
    Option<unsafe extern "C" fn(level: PeganLogLevel, message: *const c_char, user_data: *mut c_void)>;

/// Settings of a context. A zero-initialised struct gives the defaults of every field.
#[repr(C)]
pub struct PeganContextOptions {
    /// Compute device as NUL-terminated text: "cpu", "cuda" (the first CUDA device), "cuda:N" or
    /// "metal". NULL means "cpu". CUDA and Metal need a library built with the `cuda` or `metal`
    /// feature.
    pub device: *const c_char,
    /// Maximum number of threads of the CPU convolution kernels. The setting is process-wide: the
    /// latest context created with a nonzero value sets it for every context. 0 leaves the current
    /// setting, which starts at one thread per available core.
    pub num_threads: u32,
    /// Function that receives log messages, or NULL for no logging.
    pub log_callback: PeganLogCallback,
    /// Passed unchanged to every `log_callback` call.
    pub log_user_data: *mut c_void,
    /// Most detailed level passed to `log_callback`, from `PEGAN_LOG_LEVEL_ERROR` to
    /// `PEGAN_LOG_LEVEL_TRACE`. 0 means `PEGAN_LOG_LEVEL_INFO`.
    pub max_log_level: PeganLogLevel,
}

/// A compute device with its logging, shared by the models made from it.
///
/// Created by `pegan_context_new`, freed by `pegan_context_free`. Models keep what they need of
/// their context, so a context may be freed before the models loaded or trained with it.
pub struct PeganContext {
    pub(crate) inner: Arc<ContextInner>,
}

/// The parts of a context that models share.
pub(crate) struct ContextInner {
    pub device: Device,
    /// Routes tracing events of calls made with this context to the log callback, if there is one.
    log: Option<Dispatch>,
}

impl ContextInner {
    /// Runs `body` with this context's log callback receiving the library's log events on this
    /// thread, and logs a failure at warn level before returning it.
    pub fn run<T>(&self, function: &str, body: impl FnOnce() -> FfiResult<T>) -> FfiResult<T> {
        let logged = || {
            let result = body();
            match &result {
                Err(error) if error.status == PeganStatus::Cancelled => tracing::info!("{}", error.message),
                Err(error) => tracing::warn!(function, status = ?error.status, "{}", error.message),
                Ok(_) => {}
            }
            result
        };
        match &self.log {
            Some(dispatch) => tracing::dispatcher::with_default(dispatch, logged),
            None => logged(),
        }
    }
}

/// The host's callback and its user data.
struct LogSink {
    callback: unsafe extern "C" fn(PeganLogLevel, *const c_char, *mut c_void),
    user_data: *mut c_void,
}

// SAFETY: the library never dereferences `user_data` but passes it back to the host's callback. The
// header documents that the callback runs on every thread that uses the context.
unsafe impl Send for LogSink {}
unsafe impl Sync for LogSink {}

impl<S: Subscriber> Layer<S> for LogSink {
    fn on_event(&self, event: &Event<'_>, _context: LayerContext<'_, S>) {
        let mut text = MessageText::default();
        event.record(&mut text);
        let level = match *event.metadata().level() {
            Level::ERROR => PEGAN_LOG_LEVEL_ERROR,
            Level::WARN => PEGAN_LOG_LEVEL_WARN,
            Level::INFO => PEGAN_LOG_LEVEL_INFO,
            Level::DEBUG => PEGAN_LOG_LEVEL_DEBUG,
            Level::TRACE => PEGAN_LOG_LEVEL_TRACE,
        };
        let message = CString::new(text.0.replace('\0', "\\0")).unwrap_or_default();
        // SAFETY: the host promised a callable function when it created the context.
        unsafe { (self.callback)(level, message.as_ptr(), self.user_data) };
    }
}

/// The message of an event followed by its fields as `name=value`.
#[derive(Default)]
struct MessageText(String);

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        // Strings without the Debug quotes.
        self.record_debug(field, &format_args!("{value}"));
    }
}

fn level_filter(level: PeganLogLevel) -> FfiResult<LevelFilter> {
    match level {
        0 | PEGAN_LOG_LEVEL_INFO => Ok(LevelFilter::INFO),
        PEGAN_LOG_LEVEL_ERROR => Ok(LevelFilter::ERROR),
        PEGAN_LOG_LEVEL_WARN => Ok(LevelFilter::WARN),
        PEGAN_LOG_LEVEL_DEBUG => Ok(LevelFilter::DEBUG),
        PEGAN_LOG_LEVEL_TRACE => Ok(LevelFilter::TRACE),
        other => Err(FfiError::invalid(format!(
            "pegan_context_new: max_log_level {other} is invalid: use PEGAN_LOG_LEVEL_ERROR (1) to \
             PEGAN_LOG_LEVEL_TRACE (5), or 0 for the default"
        ))),
    }
}

/// Creates a context: opens the device, applies the thread count and installs the log callback.
///
/// `options` may be NULL for the defaults (CPU, no logging). On success `*out_context` receives a
/// context to free with `pegan_context_free`; on failure it is set to NULL.
///
/// Errors:
/// - `PEGAN_STATUS_NULL_POINTER`: `out_context` is NULL.
/// - `PEGAN_STATUS_DEVICE`: the device is invalid or unavailable.
/// - `PEGAN_STATUS_INVALID_ARGUMENT`: the device string is not UTF-8, or `max_log_level` is invalid.
///
/// Thread safety: may be called from any thread. The returned context may be used by several threads
/// at once, because no function changes it after creation.
///
/// # Safety
/// `options` is NULL or points to a valid `PeganContextOptions` whose `device` is NULL or a
/// NUL-terminated string. `out_context` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pegan_context_new(
    options: *const PeganContextOptions,
    out_context: *mut *mut PeganContext,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_context_new";
    boundary(FUNCTION, || {
        if out_context.is_null() {
            return Err(FfiError::null(FUNCTION, "out_context"));
        }
        *out_context = std::ptr::null_mut();

        let default_options = PeganContextOptions {
            device: std::ptr::null(),
            num_threads: 0,
            log_callback: None,
            log_user_data: std::ptr::null_mut(),
            max_log_level: 0,
        };
        let options = options.as_ref().unwrap_or(&default_options);

        let device_name = optional_c_str(options.device, FUNCTION, "options->device")?.unwrap_or("cpu");
        let max_level = level_filter(options.max_log_level)?;
        let log = options.log_callback.map(|callback| {
            let sink = LogSink { callback, user_data: options.log_user_data };
            Dispatch::new(Registry::default().with(max_level).with(sink))
        });

        let device = pegan_core::device::parse_device(device_name)?;
        if options.num_threads > 0 {
            pegan_core::ops::conv::set_num_threads(options.num_threads as usize);
        }

        let context = PeganContext { inner: Arc::new(ContextInner { device, log }) };
        context.inner.run(FUNCTION, || {
            tracing::info!(device = device_name, num_threads = options.num_threads, "pegan context created");
            Ok(())
        })?;
        *out_context = Box::into_raw(Box::new(context));
        Ok(())
    })
}

/// Frees a context created by `pegan_context_new`. NULL is allowed and does nothing.
///
/// Models trained or loaded with the context stay valid.
///
/// Thread safety: no other thread may use `context` during or after this call.
///
/// # Safety
/// `context` is NULL or a context from `pegan_context_new` that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn pegan_context_free(context: *mut PeganContext) {
    boundary_void(|| {
        if !context.is_null() {
            drop(Box::from_raw(context));
        }
    })
}

/// Returns the context behind a handle, or the NULL-pointer error naming `argument`.
pub(crate) unsafe fn context_ref<'a>(
    context: *const PeganContext,
    function: &str,
    argument: &str,
) -> FfiResult<&'a PeganContext> {
    context.as_ref().ok_or_else(|| FfiError::null(function, argument))
}
