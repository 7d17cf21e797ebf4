//! The host's suites and safe wrappers around the calls the plug-in makes through them.
//!
//! OpenFX hands the plug-in a table of C function pointers per suite. Every wrapper here checks that
//! the function exists and turns a status other than `kOfxStatOK` into an [`OfxError`] that names the
//! property or parameter involved, so callers never unwrap a host pointer.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;
use std::sync::RwLock;

use openfx_sys::{
    OfxHost, OfxImageEffectHandle, OfxImageEffectSuiteV1, OfxMessageSuiteV1, OfxMessageSuiteV2, OfxParamHandle,
    OfxParamSetHandle, OfxParameterSuiteV1, OfxPropertySetHandle, OfxPropertySuiteV1, OfxRectD, OfxRectI, OfxStatus,
};

// bindgen cannot evaluate the `((int) N)` macros of ofxCore.h, so openfx-sys 0.1.0 lacks every status
// but kOfxStatOK. The values are fixed by the OpenFX standard.
pub const STAT_OK: OfxStatus = 0;
pub const STAT_FAILED: OfxStatus = 1;
pub const STAT_ERR_FATAL: OfxStatus = 2;
pub const STAT_ERR_MISSING_HOST_FEATURE: OfxStatus = 4;
pub const STAT_ERR_UNSUPPORTED: OfxStatus = 5;
pub const STAT_ERR_BAD_HANDLE: OfxStatus = 9;
pub const STAT_ERR_VALUE: OfxStatus = 11;
pub const STAT_REPLY_DEFAULT: OfxStatus = 14;

/// Converts an openfx-sys string constant, which includes its NUL, to a C string pointer.
pub fn c(name: &'static [u8]) -> *const c_char {
    debug_assert_eq!(name.last(), Some(&0), "openfx-sys string constants end in NUL");
    name.as_ptr().cast()
}

/// Returns an openfx-sys string constant without its NUL, for messages.
pub fn text(name: &'static [u8]) -> &'static str {
    CStr::from_bytes_with_nul(name).ok().and_then(|s| s.to_str().ok()).unwrap_or("?")
}

/// A failed host call or an invalid request, with the status the action returns to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct OfxError {
    pub status: OfxStatus,
    pub message: String,
}

impl OfxError {
    pub fn new(status: OfxStatus, message: impl Into<String>) -> Self {
        OfxError { status, message: message.into() }
    }

    /// Builds an error the user can fix, such as a missing model file. The action fails with
    /// `kOfxStatFailed` and the message goes to the host's message suite.
    pub fn failed(message: impl Into<String>) -> Self {
        OfxError::new(STAT_FAILED, message)
    }
}

impl From<pegan_core::Error> for OfxError {
    fn from(error: pegan_core::Error) -> Self {
        OfxError::failed(error.to_string())
    }
}

pub type OfxResult<T> = Result<T, OfxError>;

/// The suites of the host that loaded the plug-in.
///
/// The references are `'static` because the OpenFX standard keeps suites valid from the load action
/// until the unload action, and the plug-in drops them at unload.
#[derive(Clone, Copy)]
pub struct Suites {
    pub property: &'static OfxPropertySuiteV1,
    pub effect: &'static OfxImageEffectSuiteV1,
    pub param: &'static OfxParameterSuiteV1,
    /// Version 2 adds persistent messages; hosts without it get version 1 messages.
    pub message_v2: Option<&'static OfxMessageSuiteV2>,
    pub message_v1: Option<&'static OfxMessageSuiteV1>,
}

/// The host passed to `setHost`, kept until the load action fetches the suites from it.
struct HostPointer(*mut OfxHost);

// SAFETY: the host structure is only read, and the standard keeps it valid while the binary is loaded.
unsafe impl Send for HostPointer {}
unsafe impl Sync for HostPointer {}

static HOST: RwLock<HostPointer> = RwLock::new(HostPointer(ptr::null_mut()));
static SUITES: RwLock<Option<Suites>> = RwLock::new(None);
/// Number of load actions without a matching unload: the effects of the bundle share the suites.
static LOAD_COUNT: RwLock<usize> = RwLock::new(0);

/// Stores the host structure that the host passes to `setHost` before the load action.
pub fn set_host(host: *mut OfxHost) {
    *HOST.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = HostPointer(host);
}

/// Fetches one suite, or returns `None` when the host lacks that suite or version.
///
/// # Safety
/// `host` is the live host structure and `T` is the suite struct of `name` at `version`.
unsafe fn fetch_suite<T>(host: &OfxHost, name: &'static [u8], version: c_int) -> Option<&'static T> {
    let fetch = host.fetchSuite?;
    let suite = fetch(host.host, c(name), version);
    suite.cast::<T>().as_ref()
}

/// Fetches the suites the plug-in needs; part of the load action.
pub fn load() -> OfxResult<()> {
    let host_pointer = HOST.read().unwrap_or_else(|poisoned| poisoned.into_inner()).0;
    // SAFETY: a non-null pointer came from the host's setHost call and stays valid while loaded.
    let host = unsafe { host_pointer.as_ref() }.ok_or_else(|| {
        OfxError::new(STAT_ERR_MISSING_HOST_FEATURE, "the host called the load action before setHost")
    })?;

    // SAFETY: each name is paired with the struct of that suite version in the OpenFX headers.
    let suites = unsafe {
        let missing = |name: &'static [u8], version| {
            OfxError::new(
                STAT_ERR_MISSING_HOST_FEATURE,
                format!("the host does not provide {} version {version}, which pegan needs", text(name)),
            )
        };
        Suites {
            property: fetch_suite(host, openfx_sys::kOfxPropertySuite, 1)
                .ok_or_else(|| missing(openfx_sys::kOfxPropertySuite, 1))?,
            effect: fetch_suite(host, openfx_sys::kOfxImageEffectSuite, 1)
                .ok_or_else(|| missing(openfx_sys::kOfxImageEffectSuite, 1))?,
            param: fetch_suite(host, openfx_sys::kOfxParameterSuite, 1)
                .ok_or_else(|| missing(openfx_sys::kOfxParameterSuite, 1))?,
            message_v2: fetch_suite(host, openfx_sys::kOfxMessageSuite, 2),
            message_v1: fetch_suite(host, openfx_sys::kOfxMessageSuite, 1),
        }
    };

    *SUITES.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(suites);
    *LOAD_COUNT.write().unwrap_or_else(|poisoned| poisoned.into_inner()) += 1;
    Ok(())
}

/// Drops the suites when the last effect of the binary is unloaded; part of the unload action.
pub fn unload() {
    let mut count = LOAD_COUNT.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    *count = count.saturating_sub(1);
    if *count == 0 {
        *SUITES.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }
}

/// Returns the suites fetched by the load action.
pub fn suites() -> OfxResult<Suites> {
    SUITES
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .ok_or_else(|| OfxError::new(STAT_ERR_FATAL, "the host called an action before the load action"))
}

/// Turns a host status into a result; `call` describes the call for the error message.
fn check(status: OfxStatus, call: impl FnOnce() -> String) -> OfxResult<()> {
    if status == STAT_OK {
        Ok(())
    } else {
        Err(OfxError::new(status, format!("{} failed with OpenFX status {status}", call())))
    }
}

fn missing_function(name: &str) -> OfxError {
    OfxError::new(STAT_ERR_MISSING_HOST_FEATURE, format!("the host's suite has no function {name}"))
}

/// Converts a Rust string to a C string, replacing any NUL so that messages are never lost.
pub fn to_c_string(value: &str) -> CString {
    CString::new(value.replace('\0', "\\0")).unwrap_or_default()
}

/// A property set handle with typed accessors.
#[derive(Clone, Copy)]
pub struct Props {
    pub handle: OfxPropertySetHandle,
    suite: &'static OfxPropertySuiteV1,
}

impl Props {
    /// Wraps a handle from the host, rejecting NULL.
    pub fn new(handle: OfxPropertySetHandle, suites: &Suites, description: &str) -> OfxResult<Self> {
        if handle.is_null() {
            return Err(OfxError::new(STAT_ERR_BAD_HANDLE, format!("the host passed a NULL {description}")));
        }
        Ok(Props { handle, suite: suites.property })
    }

    pub fn set_string(&self, name: &'static [u8], index: c_int, value: &'static [u8]) -> OfxResult<()> {
        let set = self.suite.propSetString.ok_or_else(|| missing_function("propSetString"))?;
        // SAFETY: the handle is a live property set of the host and both strings end in NUL.
        check(unsafe { set(self.handle, c(name), index, c(value)) }, || {
            format!("setting {}[{index}] to {}", text(name), text(value))
        })
    }

    /// Sets a string property from text that is not a constant, such as a label or hint.
    pub fn set_text(&self, name: &'static [u8], index: c_int, value: &str) -> OfxResult<()> {
        let set = self.suite.propSetString.ok_or_else(|| missing_function("propSetString"))?;
        let value_c = to_c_string(value);
        // SAFETY: as in set_string; the host copies the string during the call.
        check(unsafe { set(self.handle, c(name), index, value_c.as_ptr()) }, || {
            format!("setting {}[{index}] to {value:?}", text(name))
        })
    }

    pub fn set_strings(&self, name: &'static [u8], values: &[&'static [u8]]) -> OfxResult<()> {
        for (index, value) in values.iter().enumerate() {
            self.set_string(name, index as c_int, value)?;
        }
        Ok(())
    }

    pub fn set_int(&self, name: &'static [u8], index: c_int, value: c_int) -> OfxResult<()> {
        let set = self.suite.propSetInt.ok_or_else(|| missing_function("propSetInt"))?;
        // SAFETY: the handle is a live property set of the host and the name ends in NUL.
        check(unsafe { set(self.handle, c(name), index, value) }, || {
            format!("setting {}[{index}] to {value}", text(name))
        })
    }

    pub fn set_double(&self, name: &'static [u8], index: c_int, value: f64) -> OfxResult<()> {
        let set = self.suite.propSetDouble.ok_or_else(|| missing_function("propSetDouble"))?;
        // SAFETY: as in set_int.
        check(unsafe { set(self.handle, c(name), index, value) }, || {
            format!("setting {}[{index}] to {value}", text(name))
        })
    }

    pub fn set_pointer(&self, name: &'static [u8], value: *mut c_void) -> OfxResult<()> {
        let set = self.suite.propSetPointer.ok_or_else(|| missing_function("propSetPointer"))?;
        // SAFETY: as in set_int.
        check(unsafe { set(self.handle, c(name), 0, value) }, || format!("setting {}", text(name)))
    }

    /// Sets a 4-dimensional double property such as a region of definition or of interest.
    pub fn set_rect_d(&self, name: &'static [u8], rect: OfxRectD) -> OfxResult<()> {
        for (index, value) in [rect.x1, rect.y1, rect.x2, rect.y2].into_iter().enumerate() {
            self.set_double(name, index as c_int, value)?;
        }
        Ok(())
    }

    pub fn string(&self, name: &'static [u8], index: c_int) -> OfxResult<String> {
        let get = self.suite.propGetString.ok_or_else(|| missing_function("propGetString"))?;
        let mut value: *mut c_char = ptr::null_mut();
        // SAFETY: the handle is a live property set; the host writes a string pointer it owns.
        check(unsafe { get(self.handle, c(name), index, &mut value) }, || format!("reading {}[{index}]", text(name)))?;
        if value.is_null() {
            return Err(OfxError::new(STAT_ERR_VALUE, format!("the host returned NULL for {}", text(name))));
        }
        // SAFETY: the host returned a NUL-terminated string that stays valid during this call.
        Ok(unsafe { CStr::from_ptr(value) }.to_string_lossy().into_owned())
    }

    pub fn int(&self, name: &'static [u8], index: c_int) -> OfxResult<c_int> {
        let get = self.suite.propGetInt.ok_or_else(|| missing_function("propGetInt"))?;
        let mut value: c_int = 0;
        // SAFETY: the handle is a live property set and `value` is writable.
        check(unsafe { get(self.handle, c(name), index, &mut value) }, || format!("reading {}[{index}]", text(name)))?;
        Ok(value)
    }

    pub fn double(&self, name: &'static [u8], index: c_int) -> OfxResult<f64> {
        let get = self.suite.propGetDouble.ok_or_else(|| missing_function("propGetDouble"))?;
        let mut value: f64 = 0.0;
        // SAFETY: as in int.
        check(unsafe { get(self.handle, c(name), index, &mut value) }, || format!("reading {}[{index}]", text(name)))?;
        Ok(value)
    }

    pub fn pointer(&self, name: &'static [u8]) -> OfxResult<*mut c_void> {
        let get = self.suite.propGetPointer.ok_or_else(|| missing_function("propGetPointer"))?;
        let mut value: *mut c_void = ptr::null_mut();
        // SAFETY: as in int.
        check(unsafe { get(self.handle, c(name), 0, &mut value) }, || format!("reading {}", text(name)))?;
        Ok(value)
    }

    pub fn rect_i(&self, name: &'static [u8]) -> OfxResult<OfxRectI> {
        Ok(OfxRectI { x1: self.int(name, 0)?, y1: self.int(name, 1)?, x2: self.int(name, 2)?, y2: self.int(name, 3)? })
    }

    /// Reads a 2-dimensional double property such as the render scale.
    pub fn double2(&self, name: &'static [u8]) -> OfxResult<(f64, f64)> {
        Ok((self.double(name, 0)?, self.double(name, 1)?))
    }
}

/// The image effect handle of a descriptor or an instance.
#[derive(Clone, Copy)]
pub struct Effect {
    pub handle: OfxImageEffectHandle,
    pub suites: Suites,
}

impl Effect {
    pub fn new(handle: *const c_void, suites: Suites) -> OfxResult<Self> {
        if handle.is_null() {
            return Err(OfxError::new(STAT_ERR_BAD_HANDLE, "the host passed a NULL effect handle"));
        }
        Ok(Effect { handle: handle as OfxImageEffectHandle, suites })
    }

    pub fn props(&self) -> OfxResult<Props> {
        let get = self.suites.effect.getPropertySet.ok_or_else(|| missing_function("getPropertySet"))?;
        let mut handle: OfxPropertySetHandle = ptr::null_mut();
        // SAFETY: the effect handle came from the host in this action.
        check(unsafe { get(self.handle, &mut handle) }, || "getPropertySet".to_string())?;
        Props::new(handle, &self.suites, "effect property set")
    }

    pub fn param_set(&self) -> OfxResult<OfxParamSetHandle> {
        let get = self.suites.effect.getParamSet.ok_or_else(|| missing_function("getParamSet"))?;
        let mut handle: OfxParamSetHandle = ptr::null_mut();
        // SAFETY: as in props.
        check(unsafe { get(self.handle, &mut handle) }, || "getParamSet".to_string())?;
        if handle.is_null() {
            return Err(OfxError::new(STAT_ERR_BAD_HANDLE, "the host returned a NULL parameter set"));
        }
        Ok(handle)
    }

    /// Defines a clip in a describe-in-context action and returns its descriptor properties.
    pub fn define_clip(&self, name: &'static [u8]) -> OfxResult<Props> {
        let define = self.suites.effect.clipDefine.ok_or_else(|| missing_function("clipDefine"))?;
        let mut props: OfxPropertySetHandle = ptr::null_mut();
        // SAFETY: the descriptor handle came from the host in this action; the name ends in NUL.
        check(unsafe { define(self.handle, c(name), &mut props) }, || format!("defining clip {}", text(name)))?;
        Props::new(props, &self.suites, "clip descriptor")
    }

    /// Returns an instance's clip and its properties, or `None` when the context has no such clip.
    pub fn clip(&self, name: &'static [u8]) -> OfxResult<Option<Clip>> {
        let get = self.suites.effect.clipGetHandle.ok_or_else(|| missing_function("clipGetHandle"))?;
        let mut clip = ptr::null_mut();
        let mut props: OfxPropertySetHandle = ptr::null_mut();
        // SAFETY: the instance handle came from the host; the outputs are writable.
        let status = unsafe { get(self.handle, c(name), &mut clip, &mut props) };
        if status != STAT_OK || clip.is_null() {
            return Ok(None);
        }
        Ok(Some(Clip { handle: clip, props: Props::new(props, &self.suites, "clip property set")?, effect: *self }))
    }

    /// Asks the host whether the user or the host cancelled the current render.
    pub fn aborted(&self) -> bool {
        match self.suites.effect.abort {
            // SAFETY: the instance handle came from the host in the current render action.
            Some(abort) => unsafe { abort(self.handle) != 0 },
            None => false,
        }
    }

    /// Shows an error on the instance. Version 2 hosts get a persistent message, which replaces the
    /// previous one and stays until cleared, so repeated renders do not stack dialogs.
    pub fn post_error(&self, message: &str) {
        let message_c = to_c_string(message);
        let format = c(b"%s\0");
        let id = c(b"pegan.error\0");
        let kind = c(openfx_sys::kOfxMessageError);
        let handle = self.handle.cast::<c_void>();
        // SAFETY: the handle is a live instance, the format takes exactly one string argument, and
        // every string ends in NUL.
        unsafe {
            if let Some(set) = self.suites.message_v2.and_then(|suite| suite.setPersistentMessage) {
                set(handle, kind, id, format, message_c.as_ptr());
            } else if let Some(post) = self.suites.message_v1.and_then(|suite| suite.message) {
                post(handle, kind, id, format, message_c.as_ptr());
            }
        }
    }

    /// Removes the persistent message of a version 2 host; other hosts have none to clear.
    pub fn clear_error(&self) {
        if let Some(clear) = self.suites.message_v2.and_then(|suite| suite.clearPersistentMessage) {
            // SAFETY: the handle is a live instance.
            unsafe { clear(self.handle.cast()) };
        }
    }
}

/// A clip of an instance.
#[derive(Clone, Copy)]
pub struct Clip {
    pub handle: openfx_sys::OfxImageClipHandle,
    pub props: Props,
    effect: Effect,
}

impl Clip {
    pub fn connected(&self) -> bool {
        self.props.int(openfx_sys::kOfxImageClipPropConnected, 0).map(|v| v != 0).unwrap_or(false)
    }

    /// Returns the clip's region of definition in canonical coordinates.
    pub fn region_of_definition(&self, time: f64) -> OfxResult<OfxRectD> {
        let get = self
            .effect
            .suites
            .effect
            .clipGetRegionOfDefinition
            .ok_or_else(|| missing_function("clipGetRegionOfDefinition"))?;
        let mut rect = OfxRectD { x1: 0.0, y1: 0.0, x2: 0.0, y2: 0.0 };
        // SAFETY: the clip handle came from the host for this instance; `rect` is writable.
        check(unsafe { get(self.handle, time, &mut rect) }, || "clipGetRegionOfDefinition".to_string())?;
        Ok(rect)
    }

    /// Fetches the clip's image at `time`; the guard releases it.
    pub fn image(&self, time: f64) -> OfxResult<ImageGuard> {
        let get = self.effect.suites.effect.clipGetImage.ok_or_else(|| missing_function("clipGetImage"))?;
        let mut handle: OfxPropertySetHandle = ptr::null_mut();
        // SAFETY: the clip handle came from the host; a NULL region requests the render window.
        check(unsafe { get(self.handle, time, ptr::null(), &mut handle) }, || {
            format!("fetching the image at time {time}")
        })?;
        let props = Props::new(handle, &self.effect.suites, "image")?;
        Ok(ImageGuard { props, suites: self.effect.suites })
    }
}

/// An image fetched from a clip, released when dropped.
pub struct ImageGuard {
    pub props: Props,
    suites: Suites,
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        if let Some(release) = self.suites.effect.clipReleaseImage {
            // SAFETY: the handle came from clipGetImage and is released once.
            unsafe { release(self.props.handle) };
        }
    }
}

/// Parameter definition and lookup through the parameter suite.
#[derive(Clone, Copy)]
pub struct ParamSet {
    pub handle: OfxParamSetHandle,
    pub suites: Suites,
}

impl ParamSet {
    /// Defines a parameter in a describe-in-context action and returns its descriptor properties.
    pub fn define(&self, kind: &'static [u8], name: &'static [u8]) -> OfxResult<Props> {
        let define = self.suites.param.paramDefine.ok_or_else(|| missing_function("paramDefine"))?;
        let mut props: OfxPropertySetHandle = ptr::null_mut();
        // SAFETY: the parameter set came from the host in this action; both strings end in NUL.
        check(unsafe { define(self.handle, c(kind), c(name), &mut props) }, || {
            format!("defining parameter {} of type {}", text(name), text(kind))
        })?;
        Props::new(props, &self.suites, "parameter descriptor")
    }

    /// Returns the handle of an instance's parameter.
    pub fn handle(&self, name: &'static [u8]) -> OfxResult<Param> {
        let get = self.suites.param.paramGetHandle.ok_or_else(|| missing_function("paramGetHandle"))?;
        let mut param: OfxParamHandle = ptr::null_mut();
        // SAFETY: as in define; the property set output may be NULL.
        check(unsafe { get(self.handle, c(name), &mut param, ptr::null_mut()) }, || {
            format!("looking up parameter {}", text(name))
        })?;
        if param.is_null() {
            return Err(OfxError::new(STAT_ERR_BAD_HANDLE, format!("the host returned NULL for {}", text(name))));
        }
        Ok(Param { handle: param, name, suite: self.suites.param })
    }
}

/// An instance's parameter, read at a given time.
#[derive(Clone, Copy)]
pub struct Param {
    handle: OfxParamHandle,
    name: &'static [u8],
    suite: &'static OfxParameterSuiteV1,
}

// SAFETY: a parameter handle is an opaque token that the host keeps valid for the instance's lifetime;
// the standard allows reading parameters from render threads.
unsafe impl Send for Param {}
unsafe impl Sync for Param {}

impl Param {
    fn get_at_time(&self) -> OfxResult<unsafe extern "C" fn(OfxParamHandle, f64, ...) -> OfxStatus> {
        self.suite.paramGetValueAtTime.ok_or_else(|| missing_function("paramGetValueAtTime"))
    }

    /// Reads an integer, choice or boolean parameter.
    pub fn int_at(&self, time: f64) -> OfxResult<c_int> {
        let get = self.get_at_time()?;
        let mut value: c_int = 0;
        // SAFETY: integer, choice and boolean parameters write one int through the variadic pointer.
        check(unsafe { get(self.handle, time, &mut value as *mut c_int) }, || {
            format!("reading parameter {} at time {time}", text(self.name))
        })?;
        Ok(value)
    }

    pub fn double_at(&self, time: f64) -> OfxResult<f64> {
        let get = self.get_at_time()?;
        let mut value: f64 = 0.0;
        // SAFETY: double parameters write one double through the variadic pointer.
        check(unsafe { get(self.handle, time, &mut value as *mut f64) }, || {
            format!("reading parameter {} at time {time}", text(self.name))
        })?;
        Ok(value)
    }

    pub fn string_at(&self, time: f64) -> OfxResult<String> {
        let get = self.get_at_time()?;
        let mut value: *const c_char = ptr::null();
        // SAFETY: string parameters write one `char *` owned by the host through the pointer.
        check(unsafe { get(self.handle, time, &mut value as *mut *const c_char) }, || {
            format!("reading parameter {} at time {time}", text(self.name))
        })?;
        if value.is_null() {
            return Ok(String::new());
        }
        // SAFETY: the host returned a NUL-terminated string valid until its next call.
        Ok(unsafe { CStr::from_ptr(value) }.to_string_lossy().into_owned())
    }

    /// Returns the number of animation keys of the parameter, or 0 when the host cannot tell.
    pub fn num_keys(&self) -> u32 {
        let Some(get) = self.suite.paramGetNumKeys else { return 0 };
        let mut keys: std::ffi::c_uint = 0;
        // SAFETY: the handle is a live parameter and `keys` is writable.
        match unsafe { get(self.handle, &mut keys) } {
            STAT_OK => keys,
            _ => 0,
        }
    }
}
