//! pegan's OpenFX 1.4 image-effect plug-in: the binary inside `pegan.ofx.bundle`.
//!
//! The bundle contains three effects that generate images from a pegan model file on the CPU:
//!
//! - *SinGAN Retarget* (`org.pegan.SinGanRetarget`), filter and general contexts: the model's image at
//!   a size in pixels, or as factors of the trained size or of the Source clip's size, with a seed and
//!   a start stage. The Source pixels are not used.
//! - *SinGAN Sample* (`org.pegan.SinGanSample`), generator and general contexts: a random sample or the
//!   reconstruction at a chosen size, with an animatable seed.
//! - *StyleGAN2 Sample* (`org.pegan.StyleGan2Sample`), generator and general contexts: the image of a
//!   seed from a StyleGAN2 model, at its trained size or a larger one. Truncation and the noise mode
//!   are parameters, and the latent can be interpolated towards a second seed over time.
//!
//! All render 8-bit and float RGBA or RGB images, honour the render scale and the render window, and
//! cache one model and one generated image per instance. Hosts call [`OfxGetNumberOfPlugins`] and
//! [`OfxGetPlugin`], the only exported symbols; every action runs inside a panic barrier and reports
//! failures through the host's message suite.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{self, AssertUnwindSafe};

use openfx_sys as ofx;
use openfx_sys::{OfxHost, OfxPlugin, OfxPropertySetHandle, OfxStatus};

mod describe;
mod generate;
mod host;
mod instance;
mod pixels;
mod stylegan2;

use crate::describe::EffectKind;
use crate::host::{Effect, OfxError, OfxResult, Props, STAT_ERR_FATAL, STAT_FAILED, STAT_OK, STAT_REPLY_DEFAULT};
use crate::instance::Instance;

/// Largest output side in pixels, pegan-core's limit.
pub const MAX_SIDE: usize = pegan_core::singan::sample::MAX_SIDE;

/// The plug-in structures handed to the host. They contain raw pointers to static strings and are
/// never written, so sharing them between threads is sound.
struct PluginTable([OfxPlugin; 3]);

// SAFETY: see PluginTable.
unsafe impl Sync for PluginTable {}

const fn plugin(
    identifier: &'static [u8],
    entry: unsafe extern "C" fn(*const c_char, *const c_void, OfxPropertySetHandle, OfxPropertySetHandle) -> OfxStatus,
) -> OfxPlugin {
    OfxPlugin {
        pluginApi: ofx::kOfxImageEffectPluginApi.as_ptr().cast(),
        apiVersion: 1,
        pluginIdentifier: identifier.as_ptr().cast(),
        pluginVersionMajor: 0,
        pluginVersionMinor: 1,
        setHost: Some(set_host),
        mainEntry: Some(entry),
    }
}

static PLUGINS: PluginTable = PluginTable([
    plugin(EffectKind::Retarget.identifier(), retarget_entry),
    plugin(EffectKind::Sample.identifier(), sample_entry),
    plugin(EffectKind::StyleGan2Sample.identifier(), stylegan2_sample_entry),
]);

/// Returns the number of effects in the bundle.
#[no_mangle]
pub extern "C" fn OfxGetNumberOfPlugins() -> c_int {
    PLUGINS.0.len() as c_int
}

/// Returns effect `nth`, counted from 0, or NULL for an index out of range.
#[no_mangle]
pub extern "C" fn OfxGetPlugin(nth: c_int) -> *mut OfxPlugin {
    match usize::try_from(nth).ok().and_then(|index| PLUGINS.0.get(index)) {
        // The host only reads the structure; the OpenFX signature is not const.
        Some(plugin) => plugin as *const OfxPlugin as *mut OfxPlugin,
        None => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn set_host(host: *mut OfxHost) {
    let _ = panic::catch_unwind(|| host::set_host(host));
}

unsafe extern "C" fn retarget_entry(
    action: *const c_char,
    handle: *const c_void,
    in_args: OfxPropertySetHandle,
    out_args: OfxPropertySetHandle,
) -> OfxStatus {
    main_entry(EffectKind::Retarget, action, handle, in_args, out_args)
}

unsafe extern "C" fn sample_entry(
    action: *const c_char,
    handle: *const c_void,
    in_args: OfxPropertySetHandle,
    out_args: OfxPropertySetHandle,
) -> OfxStatus {
    main_entry(EffectKind::Sample, action, handle, in_args, out_args)
}

unsafe extern "C" fn stylegan2_sample_entry(
    action: *const c_char,
    handle: *const c_void,
    in_args: OfxPropertySetHandle,
    out_args: OfxPropertySetHandle,
) -> OfxStatus {
    main_entry(EffectKind::StyleGan2Sample, action, handle, in_args, out_args)
}

/// Runs one action inside a panic barrier and turns its result into a status.
unsafe fn main_entry(
    kind: EffectKind,
    action: *const c_char,
    handle: *const c_void,
    in_args: OfxPropertySetHandle,
    out_args: OfxPropertySetHandle,
) -> OfxStatus {
    if action.is_null() {
        return STAT_FAILED;
    }
    let action = CStr::from_ptr(action);
    let result = panic::catch_unwind(AssertUnwindSafe(|| dispatch(kind, action, handle, in_args, out_args)));
    match result {
        Ok(Ok(status)) => status,
        Ok(Err(error)) => error.status,
        Err(payload) => {
            let reason = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            let message = format!(
                "internal error in pegan during {}: {reason}; please report it with the model and the parameters",
                action.to_string_lossy()
            );
            // Only instance actions have a handle the message suite accepts; the describe actions
            // pass a descriptor. Reporting calls the host again, so it runs inside its own barrier.
            if !describes_or_loads(action) {
                let _ = panic::catch_unwind(AssertUnwindSafe(|| {
                    if let Ok(effect) = host::suites().and_then(|suites| Effect::new(handle, suites)) {
                        effect.post_error(&message);
                    }
                }));
            }
            STAT_ERR_FATAL
        }
    }
}

/// Returns the instance data stored by the create-instance action.
///
/// # Safety
/// The effect is an instance of this plug-in whose data has not been freed.
unsafe fn instance_of<'a>(effect: Effect) -> OfxResult<&'a Instance> {
    let data = effect.props()?.pointer(ofx::kOfxPropInstanceData)?;
    data.cast::<Instance>()
        .as_ref()
        .ok_or_else(|| OfxError::new(host::STAT_ERR_BAD_HANDLE, "the instance has no pegan data: it was not created"))
}

/// Matches an action name against an openfx-sys constant.
fn is(action: &CStr, name: &'static [u8]) -> bool {
    action.to_bytes_with_nul() == name
}

/// Returns whether the action acts on the binary or on a descriptor rather than on an instance.
fn describes_or_loads(action: &CStr) -> bool {
    let names: [&'static [u8]; 4] = [
        ofx::kOfxActionLoad,
        ofx::kOfxActionUnload,
        ofx::kOfxActionDescribe,
        ofx::kOfxImageEffectActionDescribeInContext,
    ];
    names.into_iter().any(|name| is(action, name))
}

unsafe fn dispatch(
    kind: EffectKind,
    action: &CStr,
    handle: *const c_void,
    in_args: OfxPropertySetHandle,
    out_args: OfxPropertySetHandle,
) -> OfxResult<OfxStatus> {
    if is(action, ofx::kOfxActionLoad) {
        host::load()?;
        return Ok(STAT_OK);
    }
    if is(action, ofx::kOfxActionUnload) {
        host::unload();
        return Ok(STAT_OK);
    }

    let suites = host::suites()?;
    let effect = Effect::new(handle, suites)?;
    if is(action, ofx::kOfxActionDescribe) {
        describe::describe(kind, effect)?;
        return Ok(STAT_OK);
    }
    if is(action, ofx::kOfxImageEffectActionDescribeInContext) {
        describe::describe_in_context(kind, effect, Props::new(in_args, &suites, "inArgs")?)?;
        return Ok(STAT_OK);
    }
    if is(action, ofx::kOfxActionCreateInstance) {
        let instance = Instance::create(kind, effect)?;
        effect.props()?.set_pointer(ofx::kOfxPropInstanceData, Box::into_raw(instance).cast())?;
        return Ok(STAT_OK);
    }
    if is(action, ofx::kOfxActionDestroyInstance) {
        let props = effect.props()?;
        let data = props.pointer(ofx::kOfxPropInstanceData)?;
        if !data.is_null() {
            props.set_pointer(ofx::kOfxPropInstanceData, std::ptr::null_mut())?;
            drop(Box::from_raw(data.cast::<Instance>()));
        }
        return Ok(STAT_OK);
    }

    // The remaining actions act on an instance and report their errors to the user.
    let act = |instance: &Instance| -> OfxResult<OfxStatus> {
        if is(action, ofx::kOfxImageEffectActionRender) {
            instance.render(effect, Props::new(in_args, &suites, "inArgs")?)?;
            Ok(STAT_OK)
        } else if is(action, ofx::kOfxImageEffectActionGetRegionOfDefinition) {
            let in_args = Props::new(in_args, &suites, "inArgs")?;
            instance.region_of_definition(in_args, Props::new(out_args, &suites, "outArgs")?)?;
            Ok(STAT_OK)
        } else if is(action, ofx::kOfxImageEffectActionGetRegionsOfInterest) {
            instance.regions_of_interest(Props::new(out_args, &suites, "outArgs")?)?;
            Ok(STAT_OK)
        } else if is(action, ofx::kOfxImageEffectActionGetClipPreferences) {
            instance.clip_preferences(Props::new(out_args, &suites, "outArgs")?)?;
            Ok(STAT_OK)
        } else if is(action, ofx::kOfxActionPurgeCaches) {
            instance.purge_caches();
            Ok(STAT_OK)
        } else {
            Ok(STAT_REPLY_DEFAULT)
        }
    };
    let instance = instance_of(effect)?;
    match act(instance) {
        Ok(status) => {
            if is(action, ofx::kOfxImageEffectActionRender) {
                instance.clear_report(effect);
            }
            Ok(status)
        }
        Err(error) => {
            instance.report(effect, &error);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_table_matches_the_effects() {
        assert_eq!(OfxGetNumberOfPlugins(), EffectKind::ALL.len() as c_int);
        for (index, kind) in EffectKind::ALL.into_iter().enumerate() {
            let plugin = unsafe { &*OfxGetPlugin(index as c_int) };
            let identifier = unsafe { CStr::from_ptr(plugin.pluginIdentifier) };
            assert_eq!(identifier.to_bytes_with_nul(), kind.identifier());
            let api = unsafe { CStr::from_ptr(plugin.pluginApi) };
            assert_eq!(api.to_bytes_with_nul(), ofx::kOfxImageEffectPluginApi);
            assert_eq!(plugin.apiVersion, 1);
        }
        assert!(OfxGetPlugin(3).is_null());
        assert!(OfxGetPlugin(-1).is_null());
    }

    #[test]
    fn actions_before_load_fail_without_panicking() {
        let status = unsafe {
            main_entry(
                EffectKind::Sample,
                ofx::kOfxActionDescribe.as_ptr().cast(),
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        assert_ne!(status, STAT_OK);
        assert_eq!(
            unsafe {
                main_entry(
                    EffectKind::Sample,
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            },
            STAT_FAILED
        );
    }
}
