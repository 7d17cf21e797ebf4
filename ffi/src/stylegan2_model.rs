//! StyleGAN2 / MS-PIE model handles: loading pegan files and MMGeneration checkpoints, saving, and
//! describing the sizes and latent shape a caller needs.

use std::ffi::{c_char, c_void};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use pegan_core::rng::SeededRng;
use pegan_core::stylegan2::generator::Generator;
use pegan_core::stylegan2::head::{ChosenScale, MAX_CHOSEN_SCALE};
use pegan_core::stylegan2::mmgen::load_mmgen_stylegan2;
use pegan_core::stylegan2::model::StyleGan2Model;
use pegan_core::stylegan2::preset::StyleGan2Config;

use crate::context::{context_ref, ContextInner, PeganContext};
use crate::status::{boundary, boundary_void, FfiError, FfiResult, PeganStatus};
use crate::strings::{malloc_copy, optional_c_str, required_path};

/// A StyleGAN2 / MS-PIE model: generator, moving-average (EMA) generator and, in training
/// checkpoints, the discriminator.
///
/// Created by `pegan_stylegan2_model_load` or `pegan_stylegan2_model_load_from_memory`, and freed by
/// `pegan_stylegan2_model_free`. No function changes the model's weights after it is created, so any
/// number of threads may use one model at once, except for `pegan_stylegan2_model_free`.
pub struct PeganStyleGan2Model {
    pub(crate) model: StyleGan2Model,
    /// The context the model was made with: its device and log callback.
    pub(crate) context: Arc<ContextInner>,
    /// Mean latents computed for truncation, keyed by (truncation seed, EMA generator), so that
    /// repeated calls skip the 4096-sample estimate.
    mean_latents: Mutex<Vec<((u64, bool), Tensor)>>,
}

/// Mean latents kept per model; a request for another key evicts the oldest one.
const MEAN_LATENT_CACHE_SIZE: usize = 8;

// Several threads generate from one model through shared references.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PeganStyleGan2Model>();
};

impl PeganStyleGan2Model {
    pub(crate) fn new(model: StyleGan2Model, context: Arc<ContextInner>) -> Self {
        PeganStyleGan2Model { model, context, mean_latents: Mutex::new(Vec::new()) }
    }

    /// Returns the EMA generator or the trained one.
    pub(crate) fn generator(&self, use_ema: bool) -> &Generator {
        if use_ema {
            &self.model.generator_ema
        } else {
            &self.model.generator
        }
    }

    /// Returns the mean latent `w̄` that truncation pulls towards, estimated from 4096 latents drawn
    /// from `seed`, as `StyleGan2Sampler` estimates it.
    pub(crate) fn mean_latent(&self, seed: u64, use_ema: bool) -> FfiResult<Tensor> {
        let key = (seed, use_ema);
        // The cache holds no invariant that a panic could break, so a poisoned lock is still usable.
        let cached = {
            let cache = self.mean_latents.lock().unwrap_or_else(|e| e.into_inner());
            cache.iter().find(|(k, _)| *k == key).map(|(_, t)| t.clone())
        };
        if let Some(mean) = cached {
            return Ok(mean);
        }

        // Computed outside the lock, so other threads keep generating meanwhile.
        let mean = self.generator(use_ema).mean_latent(&mut SeededRng::new(seed))?;
        let mut cache = self.mean_latents.lock().unwrap_or_else(|e| e.into_inner());
        if !cache.iter().any(|(k, _)| *k == key) {
            if cache.len() == MEAN_LATENT_CACHE_SIZE {
                cache.remove(0);
            }
            cache.push((key, mean.clone()));
        }
        Ok(mean)
    }
}

/// Output sizes and latent shape of a StyleGAN2 model, filled by `pegan_stylegan2_model_info`.
///
/// Valid output widths are `width + k * width_step` for k = 0, 1, 2, ... up to `max_width`, and
/// heights likewise, chosen independently. A generator without multi-scale support has one size.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeganStyleGan2Info {
    /// Width in pixels at the trained size (chosen scale 0).
    pub width: u32,
    /// Height in pixels at the trained size (chosen scale 0).
    pub height: u32,
    /// Pixels that one step of chosen scale adds to the width: a quarter of `width`.
    pub width_step: u32,
    /// Pixels that one step of chosen scale adds to the height: a quarter of `height`.
    pub height_step: u32,
    /// Largest width the model generates, at the largest chosen scale (64 steps).
    pub max_width: u32,
    /// Largest height the model generates, at the largest chosen scale (64 steps).
    pub max_height: u32,
    /// Rows L of the W+ latent, one style per modulated layer. Style mixing takes rows
    /// `mix_inject_index` to L - 1 from the second seed.
    pub num_style_rows: u32,
    /// Values in a latent `z` (and in each style row): the length of
    /// `PeganStyleGan2SampleOptions.latent`.
    pub style_channels: u32,
    /// Whether the model generates sizes other than the trained one. False for the baseline
    /// StyleGAN2 generator (MS-PIE configs a and b), whose only size is `width` x `height`.
    pub multi_scale: bool,
    /// Whether the model has a discriminator. Generator-only files can generate but not train.
    pub has_discriminator: bool,
}

/// Computes the sizes and latent shape of a model.
pub(crate) fn model_info(model: &StyleGan2Model) -> FfiResult<PeganStyleGan2Info> {
    let generator = &model.generator_ema;
    let (height, width) = generator.output_size(ChosenScale::default())?;
    let largest = ChosenScale::new(MAX_CHOSEN_SCALE, MAX_CHOSEN_SCALE);
    // The baseline generator rejects every chosen scale but 0.
    let (multi_scale, (max_height, max_width)) = match generator.output_size(largest) {
        Ok(size) => (true, size),
        Err(_) => (false, (height, width)),
    };

    let to_u32 = |value: usize, what: &str| {
        u32::try_from(value).map_err(|_| {
            FfiError::new(PeganStatus::InvalidModel, format!("the model's {what} {value} does not fit in uint32_t"))
        })
    };
    Ok(PeganStyleGan2Info {
        width: to_u32(width, "width")?,
        height: to_u32(height, "height")?,
        width_step: to_u32(width / 4, "width step")?,
        height_step: to_u32(height / 4, "height step")?,
        max_width: to_u32(max_width, "largest width")?,
        max_height: to_u32(max_height, "largest height")?,
        num_style_rows: to_u32(generator.num_latents(), "number of style rows")?,
        style_channels: to_u32(generator.style_channels(), "number of style channels")?,
        multi_scale,
        has_discriminator: model.discriminator.is_some(),
    })
}

/// Returns the model behind a handle, or the NULL-pointer error naming `argument`.
pub(crate) unsafe fn stylegan2_model_ref<'a>(
    model: *const PeganStyleGan2Model,
    function: &str,
    argument: &str,
) -> FfiResult<&'a PeganStyleGan2Model> {
    model.as_ref().ok_or_else(|| FfiError::null(function, argument))
}

/// Checks `out_model`, sets `*out_model` to NULL and returns it as a reference.
unsafe fn clear_out_model<'a>(
    out_model: *mut *mut PeganStyleGan2Model,
    function: &str,
) -> FfiResult<&'a mut *mut PeganStyleGan2Model> {
    let slot = out_model.as_mut().ok_or_else(|| FfiError::null(function, "out_model"))?;
    *slot = std::ptr::null_mut();
    Ok(slot)
}

/// Whether `bytes` start like a zip archive, the container of PyTorch `.pth` checkpoints.
pub(crate) fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK")
}

/// Parses the bytes of a pegan StyleGAN2 file; `source` names them in error messages.
fn model_from_bytes(bytes: &[u8], device: &candle_core::Device, source: &str) -> FfiResult<StyleGan2Model> {
    StyleGan2Model::from_bytes(bytes, device).map_err(|e| {
        let mut error = FfiError::from(e);
        error.message = format!("{source}: {}", error.message);
        if error.status == PeganStatus::InvalidModel && pegan_core::singan::model::read_metadata(bytes).is_ok() {
            error.message.push_str(": load SinGAN models with pegan_singan_model_load");
        }
        error
    })
}

/// Loads an MMGeneration checkpoint. The file has been opened already, so a read error from the
/// checkpoint reader means content that is not a usable StyleGAN2 checkpoint.
fn model_from_checkpoint(
    path: &Path,
    preset: Option<&StyleGan2Config>,
    device: &candle_core::Device,
) -> FfiResult<StyleGan2Model> {
    load_mmgen_stylegan2(path, preset, device).map_err(|e| {
        let read_error = matches!(e, pegan_core::Error::Read { .. });
        let mut error = FfiError::from(e);
        if read_error {
            error.status = PeganStatus::InvalidModel;
        }
        error
    })
}

fn log_loaded(model: &StyleGan2Model, source: &str) {
    let config = &model.config().generator;
    tracing::info!(
        source,
        origin = model.metadata.source.as_str(),
        out_size = config.out_size,
        style_channels = config.style_channels,
        iteration = model.metadata.iteration,
        "StyleGAN2 model loaded"
    );
}

/// Loads a StyleGAN2 model: a pegan model file (written by `pegan_stylegan2_model_save` or the
/// `pegan stylegan2` command) or an MMGeneration v0.7 StyleGAN2 / MS-PIE checkpoint (`.pth`).
///
/// Checkpoints are recognised by their zip signature. Their architecture is read from the tensors.
/// One setting cannot be read from them: whether a positional-encoding head is interpolated (MS-PIE
/// configs e and j). For such a checkpoint without its config text, pass the built-in preset name
/// as `preset`, such as "config-e". `preset` must be NULL for a pegan file, which stores its
/// configuration. The tensors go to the context's device. On success `*out_model` receives a model
/// to free with `pegan_stylegan2_model_free`; on failure it is set to NULL.
///
/// Errors:
/// - `PEGAN_STATUS_NULL_POINTER`: `context`, `path` or `out_model` is NULL.
/// - `PEGAN_STATUS_INVALID_ARGUMENT`: `path` is empty, `preset` is unknown or not UTF-8, or a
///   preset is given with a pegan file.
/// - `PEGAN_STATUS_IO`: the file cannot be opened or read.
/// - `PEGAN_STATUS_INVALID_MODEL`: the file is not a StyleGAN2 model: another model kind (such as a
///   SinGAN file), a corrupt or truncated file, a newer file format, or a checkpoint whose tensors do
///   not match the preset.
///
/// Thread safety: may be called from several threads at once, also with one context.
///
/// # Safety
/// `context` is NULL or a live context. `path` is NULL or a NUL-terminated string. `preset` is NULL
/// or a NUL-terminated string. `out_model` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pegan_stylegan2_model_load(
    context: *const PeganContext,
    path: *const c_char,
    preset: *const c_char,
    out_model: *mut *mut PeganStyleGan2Model,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_stylegan2_model_load";
    boundary(FUNCTION, || {
        let out = clear_out_model(out_model, FUNCTION)?;
        let context = &context_ref(context, FUNCTION, "context")?.inner;
        let path = required_path(path, FUNCTION, "path")?;
        let preset_name = optional_c_str(preset, FUNCTION, "preset")?;

        let model = context.run(FUNCTION, || {
            let preset =
                preset_name.map(|name| StyleGan2Config::preset(name).map_err(|e| prefixed(FUNCTION, e))).transpose()?;
            let cannot_read =
                |e: std::io::Error| FfiError::new(PeganStatus::Io, format!("cannot read {}: {e}", path.display()));

            let mut signature = [0u8; 2];
            let length = File::open(&path).and_then(|mut file| file.read(&mut signature)).map_err(cannot_read)?;
            let model = if is_zip(&signature[..length]) {
                model_from_checkpoint(&path, preset.as_ref(), &context.device)?
            } else {
                if let Some(name) = preset_name {
                    return Err(FfiError::invalid(format!(
                        "{FUNCTION}: preset '{name}' applies to MMGeneration .pth checkpoints only, but {} is a pegan \
                         model file that stores its configuration: pass NULL as preset",
                        path.display()
                    )));
                }
                let bytes = std::fs::read(&path).map_err(cannot_read)?;
                model_from_bytes(&bytes, &context.device, &path.display().to_string())?
            };
            log_loaded(&model, &path.display().to_string());
            Ok(model)
        })?;
        *out = Box::into_raw(Box::new(PeganStyleGan2Model::new(model, context.clone())));
        Ok(())
    })
}

/// Loads a StyleGAN2 model from the bytes of a pegan model file, for hosts that store models
/// themselves.
///
/// MMGeneration `.pth` checkpoints load from a path only: load one with
/// `pegan_stylegan2_model_load`, then keep the bytes of `pegan_stylegan2_model_save_to_memory`. The
/// library copies what it needs, so the caller may free `data` when the call returns. On success
/// `*out_model` receives a model to free with `pegan_stylegan2_model_free`; on failure it is set to
/// NULL.
///
/// Errors:
/// - `PEGAN_STATUS_NULL_POINTER`: an argument is NULL.
/// - `PEGAN_STATUS_INVALID_ARGUMENT`: `data_len` is 0.
/// - `PEGAN_STATUS_INVALID_MODEL`: the bytes are not a pegan StyleGAN2 model, or they are a `.pth`
///   checkpoint.
///
/// Thread safety: may be called from several threads at once, also with one context.
///
/// # Safety
/// `context` is NULL or a live context. `data` is NULL or readable for `data_len` bytes. `out_model`
/// is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pegan_stylegan2_model_load_from_memory(
    context: *const PeganContext,
    data: *const c_void,
    data_len: usize,
    out_model: *mut *mut PeganStyleGan2Model,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_stylegan2_model_load_from_memory";
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
        let model = context.run(FUNCTION, || {
            if is_zip(bytes) {
                return Err(FfiError::new(
                    PeganStatus::InvalidModel,
                    format!(
                        "{FUNCTION}: the data is a zip archive such as an MMGeneration .pth checkpoint, which loads \
                         from a file only: use pegan_stylegan2_model_load"
                    ),
                ));
            }
            let model = model_from_bytes(bytes, &context.device, "model data")?;
            log_loaded(&model, "model data");
            Ok(model)
        })?;
        *out = Box::into_raw(Box::new(PeganStyleGan2Model::new(model, context.clone())));
        Ok(())
    })
}

/// Frees a StyleGAN2 model. NULL is allowed and does nothing.
///
/// Thread safety: no other thread may use `model` during or after this call.
///
/// # Safety
/// `model` is NULL or a model from pegan that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn pegan_stylegan2_model_free(model: *mut PeganStyleGan2Model) {
    boundary_void(|| {
        if !model.is_null() {
            drop(Box::from_raw(model));
        }
    })
}

/// Writes the model as a pegan model file, replacing `path` atomically (through a temporary file in
/// the same folder). A model loaded from an MMGeneration checkpoint is written in pegan's format, so
/// it then loads without a preset.
///
/// Errors:
/// - `PEGAN_STATUS_NULL_POINTER`: an argument is NULL.
/// - `PEGAN_STATUS_INVALID_ARGUMENT`: `path` is empty.
/// - `PEGAN_STATUS_IO`: the file cannot be written.
/// - `PEGAN_STATUS_COMPUTE`: the tensors cannot be copied from the device.
///
/// Thread safety: may be called while other threads use the same model, except
/// `pegan_stylegan2_model_free`.
///
/// # Safety
/// `model` is NULL or a live model. `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn pegan_stylegan2_model_save(
    model: *const PeganStyleGan2Model,
    path: *const c_char,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_stylegan2_model_save";
    boundary(FUNCTION, || {
        let handle = stylegan2_model_ref(model, FUNCTION, "model")?;
        let path = required_path(path, FUNCTION, "path")?;
        handle.context.run(FUNCTION, || {
            handle.model.save(&path)?;
            tracing::info!(path = %path.display(), "StyleGAN2 model saved");
            Ok(())
        })
    })
}

/// Serialises the model into a new buffer in the pegan model file format.
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
/// `pegan_stylegan2_model_free`.
///
/// # Safety
/// `model` is NULL or a live model. `out_data` and `out_len` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pegan_stylegan2_model_save_to_memory(
    model: *const PeganStyleGan2Model,
    out_data: *mut *mut c_void,
    out_len: *mut usize,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_stylegan2_model_save_to_memory";
    boundary(FUNCTION, || {
        if let Some(slot) = out_data.as_mut() {
            *slot = std::ptr::null_mut();
        }
        if let Some(slot) = out_len.as_mut() {
            *slot = 0;
        }
        let handle = stylegan2_model_ref(model, FUNCTION, "model")?;
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

/// Reports the output sizes and the latent shape of the model (see `PeganStyleGan2Info`).
///
/// On failure `*out_info` is zeroed, where `out_info` is not NULL.
///
/// Errors: `PEGAN_STATUS_NULL_POINTER` for a NULL argument.
///
/// Thread safety: may be called while other threads use the same model, except
/// `pegan_stylegan2_model_free`.
///
/// # Safety
/// `model` is NULL or a live model. `out_info` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pegan_stylegan2_model_info(
    model: *const PeganStyleGan2Model,
    out_info: *mut PeganStyleGan2Info,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_stylegan2_model_info";
    boundary(FUNCTION, || {
        let out = out_info.as_mut().ok_or_else(|| FfiError::null(FUNCTION, "out_info"))?;
        *out = PeganStyleGan2Info::default();
        let handle = stylegan2_model_ref(model, FUNCTION, "model")?;
        *out = model_info(&handle.model).map_err(|mut e| {
            e.message = format!("{FUNCTION}: {}", e.message);
            e
        })?;
        Ok(())
    })
}

/// Describes the model as a JSON object.
///
/// Keys:
/// - The fields of `PeganStyleGan2Info`: `width`, `height`, `width_step`, `height_step`,
///   `max_width`, `max_height`, `num_style_rows`, `style_channels`, `multi_scale` and
///   `has_discriminator`.
/// - From the model's metadata: `format_version`, `kind` ("stylegan2"), `library_version`,
///   `iteration` (training iterations finished), `seed` (of the training run, or null), `source`
///   ("pegan" or "mmgeneration"), `mean_path_length` and `optimizer_steps` (null without optimiser
///   state).
/// - `config`: the full configuration (`generator`, `discriminator`, `training`).
///
/// On success `*out_json` receives NUL-terminated UTF-8 to free with `pegan_string_free`. On failure
/// it is set to NULL, where `out_json` is not NULL.
///
/// Errors:
/// - `PEGAN_STATUS_NULL_POINTER`: an argument is NULL.
/// - `PEGAN_STATUS_OUT_OF_MEMORY`: the string cannot be allocated.
///
/// Thread safety: may be called while other threads use the same model, except
/// `pegan_stylegan2_model_free`.
///
/// # Safety
/// `model` is NULL or a live model. `out_json` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pegan_stylegan2_model_info_json(
    model: *const PeganStyleGan2Model,
    out_json: *mut *mut c_char,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_stylegan2_model_info_json";
    boundary(FUNCTION, || {
        let out = out_json.as_mut().ok_or_else(|| FfiError::null(FUNCTION, "out_json"))?;
        *out = std::ptr::null_mut();
        let model = &stylegan2_model_ref(model, FUNCTION, "model")?.model;

        let serialise_error =
            |e: serde_json::Error| FfiError::new(PeganStatus::Panic, format!("{FUNCTION}: cannot serialise: {e}"));
        let mut metadata = model.metadata.clone();
        // The running mean lives in the model and reaches the metadata only when the model is saved.
        metadata.mean_path_length = model.mean_path_length;
        let mut info = serde_json::to_value(&metadata).map_err(serialise_error)?;
        let sizes = model_info(model)?;
        if let Some(object) = info.as_object_mut() {
            let numbers = [
                ("width", sizes.width),
                ("height", sizes.height),
                ("width_step", sizes.width_step),
                ("height_step", sizes.height_step),
                ("max_width", sizes.max_width),
                ("max_height", sizes.max_height),
                ("num_style_rows", sizes.num_style_rows),
                ("style_channels", sizes.style_channels),
            ];
            for (key, value) in numbers {
                object.insert(key.into(), value.into());
            }
            object.insert("multi_scale".into(), sizes.multi_scale.into());
            object.insert("has_discriminator".into(), sizes.has_discriminator.into());
        }
        *out = malloc_copy(info.to_string().as_bytes(), "the model description")?.cast::<c_char>();
        Ok(())
    })
}

/// Converts a core error to a C API error whose message starts with the function name.
pub(crate) fn prefixed(function: &str, error: pegan_core::Error) -> FfiError {
    let mut error = FfiError::from(error);
    error.message = format!("{function}: {}", error.message);
    error
}
