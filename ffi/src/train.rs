//! SinGAN training from a caller image and a JSON configuration request.

use std::ffi::{c_char, c_int, c_void};

use pegan_core::progress::{Control, TrainProgress};
use pegan_core::singan::{Preset, SinGanConfig, SinGanTrainer, TrainOutcome, Variant};
use serde_json::{Map, Value};

use crate::context::{context_ref, PeganContext};
use crate::image::{read_input_image, PeganImage};
use crate::model::{clear_out_model, PeganSinGanModel};
use crate::status::{boundary, FfiError, FfiResult, PeganStatus};
use crate::strings::required_c_str;

/// One progress report, sent after every training iteration and once more at the end of each stage.
#[repr(C)]
pub struct PeganTrainProgress {
    /// Stage being trained, 0 being the coarsest.
    pub stage: u32,
    /// Number of stages of the model.
    pub num_stages: u32,
    /// Iteration within the stage, counted from 1.
    pub iteration: u32,
    /// Iterations per stage.
    pub iterations_per_stage: u32,
    /// Discriminator loss of the last discriminator step: WGAN loss plus the weighted gradient penalty.
    pub loss_d: f64,
    /// Weighted gradient penalty of the last discriminator step.
    pub gradient_penalty: f64,
    /// Adversarial generator loss of the last generator step.
    pub loss_g_adv: f64,
    /// Unweighted reconstruction mean squared error of the last generator step.
    pub loss_recon: f64,
    /// Seconds since training started.
    pub elapsed_seconds: f64,
    /// True on the extra report at the end of a stage, sent after the stage has been recorded as
    /// finished. That report repeats the losses of the stage's last iteration.
    pub stage_finished: bool,
}

/// Receives a progress report; returns 0 to continue training or nonzero to cancel it.
///
/// A cancel on a `stage_finished` report keeps that stage; a cancel on the last stage's
/// `stage_finished` report is ignored, because training has then finished.
///
/// `progress` is valid only during the call; `user_data` is `PeganTrainOptions.progress_user_data`.
/// The callback runs on the thread that called `pegan_singan_train`, and must not throw a C++
/// exception or `longjmp` out of the call.
pub type PeganTrainProgressCallback =
    Option<unsafe extern "C" fn(progress: *const PeganTrainProgress, user_data: *mut c_void) -> c_int>;

/// Settings of one training run.
#[repr(C)]
pub struct PeganTrainOptions {
    /// The configuration as NUL-terminated JSON text: an object that is either
    /// `{"variant": V, "preset": P, "overrides": {...}}` or `{"config": {...}}`.
    ///
    /// V is one of "baseline", "interp-pad", "interp-pad-nobn", "csg", "spe4" and "spe8". P is
    /// "paper" (the reference schedule, 2000 iterations per stage, meant for a GPU), "fast" (the
    /// default: minutes on a CPU) or "tiny" (seconds, for tests). The optional "overrides" object is
    /// merged over the preset, e.g. `{"train": {"iters_per_scale": 500}}`. The "config" form takes a
    /// complete configuration instead, such as the "config" value of `pegan_singan_model_info_json`.
    pub config_json: *const c_char,
    /// Seed of the weight initialisation and of the training noise; one seed reproduces a run.
    pub seed: u64,
    /// Function called after every iteration and at the end of every stage, or NULL for none.
    pub progress_callback: PeganTrainProgressCallback,
    /// Passed unchanged to every `progress_callback` call.
    pub progress_user_data: *mut c_void,
}

/// Keys of the preset form of the configuration request.
const PRESET_KEYS: [&str; 3] = ["variant", "preset", "overrides"];

/// Builds the configuration from the JSON request described at `PeganTrainOptions.config_json`.
fn parse_config_request(text: &str) -> FfiResult<SinGanConfig> {
    let request: Value = serde_json::from_str(text)
        .map_err(|e| FfiError::invalid(format!("options->config_json is not valid JSON: {e}")))?;
    let Value::Object(request) = request else {
        return Err(FfiError::invalid(format!(
            "options->config_json must be a JSON object such as {{\"variant\": \"csg\", \"preset\": \"fast\"}}, got {request}"
        )));
    };
    if let Some(unknown) = request.keys().find(|key| *key != "config" && !PRESET_KEYS.contains(&key.as_str())) {
        return Err(FfiError::invalid(format!(
            "options->config_json has the unknown key '{unknown}': use variant, preset and overrides, or config alone"
        )));
    }

    match request.get("config") {
        Some(config) => complete_config(config, &request),
        None => preset_config(&request),
    }
}

fn complete_config(config: &Value, request: &Map<String, Value>) -> FfiResult<SinGanConfig> {
    if request.len() > 1 {
        return Err(FfiError::invalid(
            "options->config_json: 'config' holds a complete configuration and cannot be combined with \
             'variant', 'preset' or 'overrides'",
        ));
    }
    let config: SinGanConfig = serde_json::from_value(config.clone())
        .map_err(|e| FfiError::invalid(format!("options->config_json: invalid 'config': {e}")))?;
    config.validate()?;
    Ok(config)
}

fn preset_config(request: &Map<String, Value>) -> FfiResult<SinGanConfig> {
    let text_field = |key: &str| -> FfiResult<Option<&str>> {
        match request.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.as_str())),
            Some(other) => {
                Err(FfiError::invalid(format!("options->config_json: '{key}' must be a string, got {other}")))
            }
        }
    };
    let variant = text_field("variant")?.ok_or_else(|| {
        FfiError::invalid(
            "options->config_json has no 'variant': add one such as \"variant\": \"csg\", or pass a complete 'config'",
        )
    })?;
    let variant = Variant::from_name(variant)?;
    let preset = Preset::from_name(text_field("preset")?.unwrap_or("fast"))?;

    let config = SinGanConfig::preset(variant, preset)?;
    match request.get("overrides") {
        None => Ok(config),
        Some(overrides @ Value::Object(_)) => Ok(config.with_overrides(overrides)?),
        Some(other) => Err(FfiError::invalid(format!(
            "options->config_json: 'overrides' must be an object such as {{\"train\": {{\"iters_per_scale\": 500}}}}, got {other}"
        ))),
    }
}

/// Converts a core progress report to the C struct, saturating counts above `UINT32_MAX`.
fn progress_report(progress: &TrainProgress) -> PeganTrainProgress {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    PeganTrainProgress {
        stage: count(progress.stage),
        num_stages: count(progress.num_stages),
        iteration: count(progress.iteration),
        iterations_per_stage: count(progress.iters_per_stage),
        loss_d: progress.loss_d,
        gradient_penalty: progress.gradient_penalty,
        loss_g_adv: progress.loss_g_adv,
        loss_recon: progress.loss_recon,
        elapsed_seconds: progress.elapsed_s,
        stage_finished: progress.stage_finished,
    }
}

/// Trains a new SinGAN on one image.
///
/// `image` is the training image in a buffer of `image_len` bytes (see `PeganImage`); alpha is
/// ignored and grey images are used as three equal channels. Training runs on the context's device
/// and calls `options->progress_callback` after every iteration and at the end of every stage.
///
/// On `PEGAN_STATUS_OK`, `*out_model` receives the trained model. On `PEGAN_STATUS_CANCELLED` (the
/// callback returned nonzero), `*out_model` receives the model with every stage that finished before
/// the cancel: it can be saved, and the `pegan` command's `singan train --resume` continues it, but
/// it cannot generate. In both cases free it with `pegan_singan_model_free`. On every other status
/// `*out_model` is set to NULL and nothing needs freeing.
///
/// Errors:
/// - `PEGAN_STATUS_NULL_POINTER`: an argument, `image->data` or `options->config_json` is NULL.
/// - `PEGAN_STATUS_INVALID_ARGUMENT`: the image is invalid, its buffer is too short, or it is too
///   small for the configured pyramid. Also an invalid configuration.
/// - `PEGAN_STATUS_TOO_LARGE`: a side is above 16384 pixels, or on the CPU the estimated peak memory
///   of training exceeds the memory available (or `PEGAN_MEMORY_LIMIT_MIB` MiB when that environment
///   variable is set; 0 turns the check off), before the first iteration. The paper preset trains
///   the finest stage at the full image size, so a large image needs a lot of memory. The fast and
///   tiny presets first shrink the long side to 128 and 24 pixels.
/// - `PEGAN_STATUS_CANCELLED`: as above.
/// - `PEGAN_STATUS_COMPUTE`: a tensor operation failed.
///
/// NOTE: GPU memory is not checked before training.
///
/// Thread safety: may be called from several threads at once, also with one context. The image
/// buffer must not change during the call.
///
/// # Safety
/// `context` is NULL or a live context. `image` is NULL or points to a `PeganImage` whose `data` is
/// readable for `image_len` bytes. `options` is NULL or points to a valid `PeganTrainOptions` whose
/// `config_json` is NULL or NUL-terminated. `out_model` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pegan_singan_train(
    context: *const PeganContext,
    image: *const PeganImage,
    image_len: usize,
    options: *const PeganTrainOptions,
    out_model: *mut *mut PeganSinGanModel,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_singan_train";
    boundary(FUNCTION, || {
        let out = clear_out_model(out_model, FUNCTION)?;
        let context = &context_ref(context, FUNCTION, "context")?.inner;
        let options = options.as_ref().ok_or_else(|| FfiError::null(FUNCTION, "options"))?;
        let config_text = required_c_str(options.config_json, FUNCTION, "options->config_json")?;

        context.run(FUNCTION, || {
            let loaded = read_input_image(image, image_len, FUNCTION, "image")?;
            let config = parse_config_request(config_text).map_err(|mut e| {
                e.message = format!("{FUNCTION}: {}", e.message);
                e
            })?;
            let mut trainer = SinGanTrainer::new(&loaded, &config, options.seed, &context.device)?;

            let callback = options.progress_callback;
            let user_data = options.progress_user_data;
            let mut progress = |report: &TrainProgress| {
                let Some(callback) = callback else {
                    return Control::Continue;
                };
                let report = progress_report(report);
                // SAFETY: the caller promised a callable function; `report` outlives the call.
                match unsafe { callback(&report, user_data) } {
                    0 => Control::Continue,
                    _ => Control::Cancel,
                }
            };
            let outcome = trainer.train(&mut progress, &mut |_| Ok(()))?;

            let model = trainer.into_model();
            let (finished, total) = (model.metadata.finished_stages, model.num_stages());
            *out = Box::into_raw(Box::new(PeganSinGanModel { model, context: context.clone() }));
            match outcome {
                TrainOutcome::Finished => Ok(()),
                TrainOutcome::Cancelled => Err(FfiError::new(
                    PeganStatus::Cancelled,
                    format!(
                        "{FUNCTION}: cancelled by the progress callback with {finished} of {total} stages finished; \
                         *out_model holds them and must be freed"
                    ),
                )),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_request_applies_overrides() {
        let config = parse_config_request(
            r#"{"variant": "csg", "preset": "tiny", "overrides": {"train": {"iters_per_scale": 2}}}"#,
        )
        .unwrap();
        assert_eq!(config.variant, Variant::Csg);
        assert_eq!(config.train.iters_per_scale, 2);
    }

    #[test]
    fn complete_request_round_trips() {
        let base = SinGanConfig::preset(Variant::Spe4, Preset::Tiny).unwrap();
        let text = serde_json::json!({ "config": base }).to_string();
        assert_eq!(parse_config_request(&text).unwrap(), base);
    }

    #[test]
    fn oversized_training_is_refused_as_too_large() {
        let mut context = std::ptr::null_mut();
        let status = unsafe { crate::context::pegan_context_new(std::ptr::null(), &mut context) };
        assert_eq!(status, PeganStatus::Ok);

        // 4000×3000 px trained at full size would need hundreds of GiB.
        let (width, height) = (4000u32, 3000u32);
        let mut pixels: Vec<u8> = (0..width as usize * height as usize * 3).map(|i| (i % 251) as u8).collect();
        let image = PeganImage {
            width,
            height,
            channels: 3,
            row_stride: width as usize * 3,
            sample_type: crate::image::PEGAN_SAMPLE_TYPE_U8,
            data: pixels.as_mut_ptr().cast(),
        };
        // Should the check ever let the run start, the callback stops it at the first iteration.
        unsafe extern "C" fn stop(_: *const PeganTrainProgress, _: *mut c_void) -> c_int {
            1
        }
        let config = c"{\"variant\": \"csg\", \"overrides\": {\"data\": {\"resize_to_max_size\": false}}}";
        let options = PeganTrainOptions {
            config_json: config.as_ptr(),
            seed: 0,
            progress_callback: Some(stop),
            progress_user_data: std::ptr::null_mut(),
        };
        let mut model = std::ptr::null_mut();
        let status = unsafe { pegan_singan_train(context, &image, pixels.len(), &options, &mut model) };
        let message = unsafe { std::ffi::CStr::from_ptr(crate::status::pegan_last_error_message()) };
        let message = message.to_string_lossy().into_owned();
        unsafe { crate::context::pegan_context_free(context) };

        assert_eq!(status, PeganStatus::TooLarge, "{message}");
        assert!(model.is_null());
        assert!(message.contains("training up to 4000×3000 px needs about"), "{message}");
        assert!(message.contains("data.max_size"), "{message}");
    }

    #[test]
    fn bad_requests_are_rejected() {
        let cases = [
            ("[]", "must be a JSON object"),
            ("{", "not valid JSON"),
            (r#"{"preset": "tiny"}"#, "has no 'variant'"),
            (r#"{"variant": "tpu"}"#, "unknown SinGAN variant 'tpu'"),
            (r#"{"variant": "csg", "preset": "slow"}"#, "unknown preset 'slow'"),
            (r#"{"variant": "csg", "seed": 3}"#, "unknown key 'seed'"),
            (r#"{"variant": "csg", "overrides": 3}"#, "'overrides' must be an object"),
            (r#"{"variant": "csg", "config": {}}"#, "cannot be combined"),
            (r#"{"config": {"variant": "csg"}}"#, "invalid 'config'"),
            (r#"{"variant": "csg", "overrides": {"train": {"iters_per_scale": 0}}}"#, "iters_per_scale"),
        ];
        for (request, expected) in cases {
            let error = parse_config_request(request).unwrap_err();
            assert_eq!(error.status, PeganStatus::InvalidArgument, "{request}");
            assert!(error.message.contains(expected), "{request}: {}", error.message);
        }
    }
}
