//! SinGAN model handles: loading, saving and inspecting.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use pegan_core::singan::SinGanModel;

use crate::context::{context_ref, ContextInner, PeganContext};
use crate::status::{boundary, boundary_void, FfiError, FfiResult, PeganStatus};
use crate::strings::{malloc_copy, required_path};

/// A trained or partly trained SinGAN.
///
/// Created by `pegan_singan_model_load`, `pegan_singan_model_load_from_memory` or
/// `pegan_singan_train`; freed by `pegan_singan_model_free`. No function changes a model after it is
/// created, so any number of threads may use one model at once, except for `pegan_singan_model_free`.
pub struct PeganSinGanModel {
    pub(crate) model: SinGanModel,
    /// The context the model was made with: its device and log callback.
    pub(crate) context: Arc<ContextInner>,
}

// Several threads generate from one model through shared references.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PeganSinGanModel>();
};

/// Returns the model behind a handle, or the NULL-pointer error naming `argument`.
pub(crate) unsafe fn model_ref<'a>(
    model: *const PeganSinGanModel,
    function: &str,
    argument: &str,
) -> FfiResult<&'a PeganSinGanModel> {
    model.as_ref().ok_or_else(|| FfiError::null(function, argument))
}

/// Checks `out_model`, sets `*out_model` to NULL and returns it as a reference.
pub(crate) unsafe fn clear_out_model<'a>(
    out_model: *mut *mut PeganSinGanModel,
    function: &str,
) -> FfiResult<&'a mut *mut PeganSinGanModel> {
    let slot = out_model.as_mut().ok_or_else(|| FfiError::null(function, "out_model"))?;
    *slot = std::ptr::null_mut();
    Ok(slot)
}

/// Parses model bytes on the context's device; `source` names them in error messages.
fn model_from_bytes(bytes: &[u8], context: &Arc<ContextInner>, source: &str) -> FfiResult<PeganSinGanModel> {
    let model = SinGanModel::from_bytes(bytes, &context.device).map_err(|e| {
        let mut error = FfiError::from(e);
        error.message = format!("{source}: {}", error.message);
        if error.status == PeganStatus::InvalidModel {
            if crate::stylegan2_model::is_zip(bytes) {
                error.message.push_str(
                    ": the data is a zip archive such as a PyTorch .pth checkpoint; load MMGeneration StyleGAN2 \
                     checkpoints with pegan_stylegan2_model_load",
                );
            } else if pegan_core::stylegan2::model::read_metadata(bytes).is_ok() {
                error.message.push_str(": load StyleGAN2 models with pegan_stylegan2_model_load");
            }
        }
        error
    })?;
    tracing::info!(
        source,
        stages = model.num_stages(),
        finished_stages = model.metadata.finished_stages,
        "SinGAN model loaded"
    );
    Ok(PeganSinGanModel { model, context: context.clone() })
}

/// Loads a SinGAN model file written by pegan (`pegan_singan_model_save` or the `pegan` command).
///
/// The model's tensors go to the context's device. On success `*out_model` receives a model to free
/// with `pegan_singan_model_free`; on failure it is set to NULL. A partly trained model loads too,
/// but generates only after its training has finished.
///
/// Errors:
/// - `PEGAN_STATUS_NULL_POINTER`: an argument is NULL.
/// - `PEGAN_STATUS_INVALID_ARGUMENT`: `path` is empty.
/// - `PEGAN_STATUS_IO`: the file cannot be read.
/// - `PEGAN_STATUS_INVALID_MODEL`: the file is not a pegan SinGAN model. It is corrupt or truncated,
///   contains another model kind, or has a newer file format.
///
/// Thread safety: may be called from several threads at once, also with one context.
///
/// # Safety
/// `context` is NULL or a live context. `path` is NULL or a NUL-terminated string. `out_model` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pegan_singan_model_load(
    context: *const PeganContext,
    path: *const c_char,
    out_model: *mut *mut PeganSinGanModel,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_singan_model_load";
    boundary(FUNCTION, || {
        let out = clear_out_model(out_model, FUNCTION)?;
        let context = &context_ref(context, FUNCTION, "context")?.inner;
        let path = required_path(path, FUNCTION, "path")?;

        let model = context.run(FUNCTION, || {
            let bytes = std::fs::read(&path)
                .map_err(|e| FfiError::new(PeganStatus::Io, format!("cannot read {}: {e}", path.display())))?;
            model_from_bytes(&bytes, context, &path.display().to_string())
        })?;
        *out = Box::into_raw(Box::new(model));
        Ok(())
    })
}

/// Loads a SinGAN model from the bytes of a model file, for hosts that store models themselves.
///
/// The library copies what it needs, so the caller may free `data` when the call returns. On
/// success `*out_model` receives a model to free with `pegan_singan_model_free`; on failure it is set
/// to NULL.
///
/// Errors:
/// - `PEGAN_STATUS_NULL_POINTER`: an argument is NULL.
/// - `PEGAN_STATUS_INVALID_ARGUMENT`: `data_len` is 0.
/// - `PEGAN_STATUS_INVALID_MODEL`: the bytes are not a pegan SinGAN model.
///
/// Thread safety: may be called from several threads at once, also with one context.
///
/// # Safety
/// `context` is NULL or a live context. `data` is NULL or readable for `data_len` bytes. `out_model`
/// is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pegan_singan_model_load_from_memory(
    context: *const PeganContext,
    data: *const c_void,
    data_len: usize,
    out_model: *mut *mut PeganSinGanModel,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_singan_model_load_from_memory";
    boundary(FUNCTION, || {
        let out = clear_out_model(out_model, FUNCTION)?;
        let context = &context_ref(context, FUNCTION, "context")?.inner;
        if data.is_null() {
            return Err(FfiError::null(FUNCTION, "data"));
        }
        if data_len == 0 {
            return Err(FfiError::invalid(format!("{FUNCTION}: data_len is 0: pass the bytes of a model file")));
        }
        if data_len > isize::MAX as usize {
            return Err(FfiError::too_large(format!("{FUNCTION}: data_len {data_len} is above the largest buffer")));
        }

        // SAFETY: the caller promised `data_len` readable bytes at `data`.
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), data_len);
        let model = context.run(FUNCTION, || model_from_bytes(bytes, context, "model data"))?;
        *out = Box::into_raw(Box::new(model));
        Ok(())
    })
}

/// Frees a model. NULL is allowed and does nothing.
///
/// Thread safety: no other thread may use `model` during or after this call.
///
/// # Safety
/// `model` is NULL or a model from pegan that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn pegan_singan_model_free(model: *mut PeganSinGanModel) {
    boundary_void(|| {
        if !model.is_null() {
            drop(Box::from_raw(model));
        }
    })
}

/// Writes the model to a file, replacing `path` atomically (through a temporary file in the same
/// folder). A partly trained model is saved with its finished stages.
///
/// Errors:
/// - `PEGAN_STATUS_NULL_POINTER`: an argument is NULL.
/// - `PEGAN_STATUS_INVALID_ARGUMENT`: `path` is empty.
/// - `PEGAN_STATUS_IO`: the file cannot be written.
/// - `PEGAN_STATUS_COMPUTE`: the tensors cannot be copied from the device.
///
/// Thread safety: may be called while other threads use the same model, except
/// `pegan_singan_model_free`.
///
/// # Safety
/// `model` is NULL or a live model. `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn pegan_singan_model_save(model: *const PeganSinGanModel, path: *const c_char) -> PeganStatus {
    const FUNCTION: &str = "pegan_singan_model_save";
    boundary(FUNCTION, || {
        let handle = model_ref(model, FUNCTION, "model")?;
        let path = required_path(path, FUNCTION, "path")?;
        handle.context.run(FUNCTION, || {
            handle.model.save(&path)?;
            tracing::info!(path = %path.display(), "SinGAN model saved");
            Ok(())
        })
    })
}

/// Serialises the model into a new buffer in the model file format.
///
/// On success `*out_data` receives a buffer of `*out_len` bytes to free with `pegan_buffer_free`. On
/// failure `*out_data` is NULL and `*out_len` is 0, where those pointers are not NULL.
///
/// Errors:
/// - `PEGAN_STATUS_NULL_POINTER`: an argument is NULL.
/// - `PEGAN_STATUS_OUT_OF_MEMORY`: the buffer cannot be allocated.
/// - `PEGAN_STATUS_COMPUTE`: the tensors cannot be copied from the device.
///
/// Thread safety: may be called while other threads use the same model, except
/// `pegan_singan_model_free`.
///
/// # Safety
/// `model` is NULL or a live model. `out_data` and `out_len` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pegan_singan_model_save_to_memory(
    model: *const PeganSinGanModel,
    out_data: *mut *mut c_void,
    out_len: *mut usize,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_singan_model_save_to_memory";
    boundary(FUNCTION, || {
        if let Some(slot) = out_data.as_mut() {
            *slot = std::ptr::null_mut();
        }
        if let Some(slot) = out_len.as_mut() {
            *slot = 0;
        }
        let handle = model_ref(model, FUNCTION, "model")?;
        let data_slot = out_data.as_mut().ok_or_else(|| FfiError::null(FUNCTION, "out_data"))?;
        let len_slot = out_len.as_mut().ok_or_else(|| FfiError::null(FUNCTION, "out_len"))?;

        handle.context.run(FUNCTION, || {
            let bytes = handle.model.to_bytes()?;
            *data_slot = malloc_copy(&bytes, "the model bytes")?.cast::<c_void>();
            *len_slot = bytes.len();
            Ok(())
        })
    })
}

/// Describes the model as a JSON object.
///
/// Keys:
/// - `width`, `height`: pixels generated at the trained size.
/// - `num_stages`; `complete`: whether every stage has finished training.
/// - From the model file's metadata: `format_version`, `kind` ("singan"), `library_version`,
///   `stage_sizes` ([height, width] per stage, coarsest first), `noise_weights`, `finished_stages`,
///   `training_image_size` ([height, width]), `seed` (or null) and `source` ("pegan" or
///   "mmgeneration").
/// - `config`: the full training configuration, usable as `{"config": ...}` in
///   `PeganTrainOptions.config_json`.
///
/// On success `*out_json` receives NUL-terminated UTF-8 to free with `pegan_string_free`. On failure
/// it is set to NULL, where `out_json` is not NULL.
///
/// Errors:
/// - `PEGAN_STATUS_NULL_POINTER`: an argument is NULL.
/// - `PEGAN_STATUS_OUT_OF_MEMORY`: the string cannot be allocated.
///
/// Thread safety: may be called while other threads use the same model, except
/// `pegan_singan_model_free`.
///
/// # Safety
/// `model` is NULL or a live model. `out_json` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pegan_singan_model_info_json(
    model: *const PeganSinGanModel,
    out_json: *mut *mut c_char,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_singan_model_info_json";
    boundary(FUNCTION, || {
        let out = out_json.as_mut().ok_or_else(|| FfiError::null(FUNCTION, "out_json"))?;
        *out = std::ptr::null_mut();
        let model = &model_ref(model, FUNCTION, "model")?.model;

        let mut info = serde_json::to_value(&model.metadata).map_err(|e| {
            FfiError::new(PeganStatus::Panic, format!("{FUNCTION}: cannot serialise the metadata: {e}"))
        })?;
        let (height, width) = trained_size(model);
        if let Some(object) = info.as_object_mut() {
            object.insert("width".into(), width.into());
            object.insert("height".into(), height.into());
            object.insert("num_stages".into(), model.num_stages().into());
            object.insert("complete".into(), model.is_complete().into());
        }
        *out = malloc_copy(info.to_string().as_bytes(), "the model description")?.cast::<c_char>();
        Ok(())
    })
}

/// Returns (height, width) of the finest stage, the size generated by default.
pub(crate) fn trained_size(model: &SinGanModel) -> (usize, usize) {
    model.stage_sizes().last().copied().unwrap_or((0, 0))
}

/// Reports the size in pixels that the model generates by default: its finest stage at the trained
/// size. This can be smaller than the training image, which the training configuration may shrink.
///
/// Errors: `PEGAN_STATUS_NULL_POINTER` for a NULL argument.
///
/// Thread safety: may be called while other threads use the same model, except
/// `pegan_singan_model_free`.
///
/// # Safety
/// `model` is NULL or a live model. `out_width` and `out_height` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pegan_singan_model_trained_size(
    model: *const PeganSinGanModel,
    out_width: *mut u32,
    out_height: *mut u32,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_singan_model_trained_size";
    boundary(FUNCTION, || {
        for slot in [out_width, out_height] {
            if let Some(slot) = slot.as_mut() {
                *slot = 0;
            }
        }
        let model = &model_ref(model, FUNCTION, "model")?.model;
        let width_slot = out_width.as_mut().ok_or_else(|| FfiError::null(FUNCTION, "out_width"))?;
        let height_slot = out_height.as_mut().ok_or_else(|| FfiError::null(FUNCTION, "out_height"))?;

        let (height, width) = trained_size(model);
        let (Ok(width), Ok(height)) = (u32::try_from(width), u32::try_from(height)) else {
            return Err(FfiError::new(
                PeganStatus::InvalidModel,
                format!("{FUNCTION}: the model's trained size {width} x {height} does not fit in uint32_t"),
            ));
        };
        *width_slot = width;
        *height_slot = height;
        Ok(())
    })
}
