//! StyleGAN2 / MS-PIE training on a folder of images, with a JSON configuration request, progress
//! reports that can cancel, and atomic checkpoints.

use std::ffi::{c_char, c_int, c_void};
use std::path::Path;

use pegan_core::progress::Control;
use pegan_core::stylegan2::dataset::ImageFolder;
use pegan_core::stylegan2::model::StyleGan2Model;
use pegan_core::stylegan2::preset::StyleGan2Config;
use pegan_core::stylegan2::train::{StyleGan2Progress, StyleGan2Trainer, TrainOutcome};
use serde_json::Value;

use crate::context::{context_ref, PeganContext};
use crate::status::{boundary, FfiError, FfiResult, PeganStatus};
use crate::strings::{optional_c_str, required_path};
use crate::stylegan2_model::{prefixed, PeganStyleGan2Model};

/// Preset used when the configuration request names none: a reduced model that trains on a CPU.
const DEFAULT_PRESET: &str = "small";

/// One progress report, sent after every training iteration.
#[repr(C)]
pub struct PeganStyleGan2TrainProgress {
    /// Iterations finished in total, counted from 1.
    pub iteration: u64,
    /// Iteration at which this training call stops.
    pub target_iteration: u64,
    /// Chosen scale of the iteration: the head grid grew by this many rows and columns.
    pub chosen_scale: u32,
    /// Side of the iteration's square training images, in pixels.
    pub side: u32,
    /// Discriminator loss, including the weighted R1 penalty when it ran.
    pub loss_d: f64,
    /// Generator loss, including the weighted path-length penalty when it ran.
    pub loss_g: f64,
    /// Unweighted R1 penalty, or NaN on iterations where it did not run.
    pub r1_penalty: f64,
    /// Unweighted path-length penalty, or NaN on iterations where it did not run.
    pub path_length_penalty: f64,
    /// Running mean of the path length after the iteration.
    pub mean_path_length: f64,
    /// Seconds since this training call started.
    pub elapsed_seconds: f64,
}

/// Receives a progress report; returns 0 to continue training or nonzero to cancel it.
///
/// `progress` is valid only during the call; `user_data` is
/// `PeganStyleGan2TrainOptions.progress_user_data`. The callback runs on the thread that called
/// `pegan_stylegan2_train`, and must not throw a C++ exception or `longjmp` out of the call.
pub type PeganStyleGan2TrainProgressCallback =
    Option<unsafe extern "C" fn(progress: *const PeganStyleGan2TrainProgress, user_data: *mut c_void) -> c_int>;

/// Settings of one StyleGAN2 training run. A zero-initialised struct trains the "small" preset for
/// its full schedule with seed 0, writes no file and reports no progress.
#[repr(C)]
pub struct PeganStyleGan2TrainOptions {
    /// The configuration as NUL-terminated JSON text, or NULL for `{"preset": "small"}`: an object
    /// that is either `{"preset": P, "overrides": {...}}` or `{"config": {...}}`.
    ///
    /// P is a built-in preset: "config-a" to "config-k", "config-f-256-896" and "config-f-256-1024"
    /// (the MS-PIE paper's models, meant for GPUs), or "tiny" and "small" (reduced 32-pixel models
    /// that train on a CPU). The optional "overrides" object is merged over the preset, e.g.
    /// `{"training": {"batch_size": 2}}`. The "config" form takes a complete configuration instead,
    /// such as the "config" value of `pegan_stylegan2_model_info_json`.
    pub config_json: *const c_char,
    /// Seed of the weight initialisation, the latents, the noise and the data order; one seed
    /// reproduces a run.
    pub seed: u64,
    /// Iterations to train, or 0 for the configuration's `training.total_iters`.
    pub iterations: u64,
    /// Model file to write as NUL-terminated text, or NULL for none. It is written atomically (through
    /// a temporary file in the same folder) at the end, also after a cancel, and at every checkpoint.
    pub output_path: *const c_char,
    /// Write `output_path` after every this many iterations as well, or 0 for only at the end. The
    /// file then contains the optimiser state, so the `pegan stylegan2 train --resume` command can
    /// continue it.
    pub checkpoint_every: u64,
    /// Function called after every iteration, or NULL for none.
    pub progress_callback: PeganStyleGan2TrainProgressCallback,
    /// Passed unchanged to every `progress_callback` call.
    pub progress_user_data: *mut c_void,
}

/// Keys of the preset form of the configuration request.
const PRESET_KEYS: [&str; 2] = ["preset", "overrides"];

/// Builds the configuration from the JSON request described at
/// `PeganStyleGan2TrainOptions.config_json`.
fn parse_config_request(text: &str) -> FfiResult<StyleGan2Config> {
    let request: Value = serde_json::from_str(text)
        .map_err(|e| FfiError::invalid(format!("options->config_json is not valid JSON: {e}")))?;
    let Value::Object(request) = request else {
        return Err(FfiError::invalid(format!(
            "options->config_json must be a JSON object such as {{\"preset\": \"small\"}}, got {request}"
        )));
    };
    if let Some(unknown) = request.keys().find(|key| *key != "config" && !PRESET_KEYS.contains(&key.as_str())) {
        return Err(FfiError::invalid(format!(
            "options->config_json has the unknown key '{unknown}': use preset and overrides, or config alone"
        )));
    }

    if let Some(config) = request.get("config") {
        if request.len() > 1 {
            return Err(FfiError::invalid(
                "options->config_json: 'config' contains a complete configuration and cannot be combined with \
                 'preset' or 'overrides'",
            ));
        }
        let config: StyleGan2Config = serde_json::from_value(config.clone())
            .map_err(|e| FfiError::invalid(format!("options->config_json: invalid 'config': {e}")))?;
        config.validate()?;
        return Ok(config);
    }

    let preset = match request.get("preset") {
        None => DEFAULT_PRESET,
        Some(Value::String(name)) => name.as_str(),
        Some(other) => {
            return Err(FfiError::invalid(format!("options->config_json: 'preset' must be a string, got {other}")));
        }
    };
    let config = StyleGan2Config::preset(preset)?;
    match request.get("overrides") {
        None => Ok(config),
        Some(overrides @ Value::Object(_)) => Ok(config.with_overrides(overrides)?),
        Some(other) => Err(FfiError::invalid(format!(
            "options->config_json: 'overrides' must be an object such as {{\"training\": {{\"batch_size\": 2}}}}, \
             got {other}"
        ))),
    }
}

/// Converts a core progress report to the C struct, saturating sizes above `UINT32_MAX`.
fn progress_report(progress: &StyleGan2Progress) -> PeganStyleGan2TrainProgress {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    PeganStyleGan2TrainProgress {
        iteration: progress.iteration,
        target_iteration: progress.target_iteration,
        chosen_scale: count(progress.chosen_scale),
        side: count(progress.side),
        loss_d: progress.loss_d,
        loss_g: progress.loss_g,
        r1_penalty: progress.r1.unwrap_or(f64::NAN),
        path_length_penalty: progress.path_length_penalty.unwrap_or(f64::NAN),
        mean_path_length: progress.mean_path_length,
        elapsed_seconds: progress.elapsed_s,
    }
}

/// Rejects an output path inside the training folder, so that a typo cannot overwrite a training
/// image.
fn check_output_path(output: &Path, data_dir: &Path, function: &str) -> FfiResult<()> {
    let (Ok(data_dir), Some(parent)) = (data_dir.canonicalize(), output.parent()) else {
        return Ok(());
    };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    if parent.canonicalize().is_ok_and(|parent| parent.starts_with(&data_dir)) {
        return Err(FfiError::invalid(format!(
            "{function}: options->output_path {} is inside the training folder {}: write the model elsewhere",
            output.display(),
            data_dir.display()
        )));
    }
    Ok(())
}

fn save_model(model: &StyleGan2Model, path: &Path) -> FfiResult<()> {
    model.save(path)?;
    tracing::info!(path = %path.display(), iteration = model.metadata.iteration, "StyleGAN2 model saved");
    Ok(())
}

/// Trains a new StyleGAN2 / MS-PIE model on the PNG and JPEG images under `data_dir`.
///
/// The folder is searched recursively, and every image is centre-cropped to a square and resized to
/// each training side. Training runs on the context's device and calls
/// `options->progress_callback` after every iteration. `options` may be NULL for the defaults of a
/// zero-initialised `PeganStyleGan2TrainOptions`.
///
/// On `PEGAN_STATUS_OK`, `*out_model` receives the trained model. On `PEGAN_STATUS_CANCELLED` (the
/// callback returned nonzero), `*out_model` receives the model with every iteration finished before
/// the cancel, and `options->output_path`, if set, contains it. In both cases free the model with
/// `pegan_stylegan2_model_free`. On every other status `*out_model` is set to NULL, and
/// `options->output_path` keeps its last checkpoint, if one was written.
///
/// Errors:
/// - `PEGAN_STATUS_NULL_POINTER`: `context`, `data_dir` or `out_model` is NULL.
/// - `PEGAN_STATUS_INVALID_ARGUMENT`: an empty path, an invalid configuration request or
///   configuration, an output path inside the training folder, or an iteration count of 0 with a
///   configuration whose `total_iters` is 0. Also a run that diverged: a loss became NaN or
///   infinite, and the message suggests lower learning rates.
/// - `PEGAN_STATUS_IO`: the folder is missing or contains no PNG or JPEG files, an image cannot be
///   decoded, or the model file cannot be written.
/// - `PEGAN_STATUS_TOO_LARGE`: on the CPU, the estimated peak memory of an iteration exceeds the
///   memory available (or `PEGAN_MEMORY_LIMIT_MIB` MiB when that environment variable is set; 0 turns
///   the check off), before the first iteration. The presets "config-a" to "config-k" and
///   "config-f-256-*" build full-size networks and train at 256 pixels or more, which needs a GPU.
/// - `PEGAN_STATUS_CANCELLED`: as above.
/// - `PEGAN_STATUS_COMPUTE`: a tensor operation failed.
///
/// NOTE: GPU memory is not checked before training.
///
/// Thread safety: may be called from several threads at once, also with one context, with different
/// output paths. The training images must not change during the call.
///
/// # Safety
/// `context` is NULL or a live context. `data_dir` is NULL or a NUL-terminated string. `options` is
/// NULL or points to a valid `PeganStyleGan2TrainOptions` whose strings are NULL or NUL-terminated.
/// `out_model` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pegan_stylegan2_train(
    context: *const PeganContext,
    data_dir: *const c_char,
    options: *const PeganStyleGan2TrainOptions,
    out_model: *mut *mut PeganStyleGan2Model,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_stylegan2_train";
    boundary(FUNCTION, || {
        let out = out_model.as_mut().ok_or_else(|| FfiError::null(FUNCTION, "out_model"))?;
        *out = std::ptr::null_mut();
        let context = &context_ref(context, FUNCTION, "context")?.inner;
        let data_dir = required_path(data_dir, FUNCTION, "data_dir")?;
        let defaults = PeganStyleGan2TrainOptions {
            config_json: std::ptr::null(),
            seed: 0,
            iterations: 0,
            output_path: std::ptr::null(),
            checkpoint_every: 0,
            progress_callback: None,
            progress_user_data: std::ptr::null_mut(),
        };
        let options = options.as_ref().unwrap_or(&defaults);
        let config_text = optional_c_str(options.config_json, FUNCTION, "options->config_json")?;
        let output_path = if options.output_path.is_null() {
            None
        } else {
            Some(required_path(options.output_path, FUNCTION, "options->output_path")?)
        };

        context.run(FUNCTION, || {
            let config = match config_text {
                Some(text) => parse_config_request(text).map_err(|mut e| {
                    e.message = format!("{FUNCTION}: {}", e.message);
                    e
                })?,
                None => StyleGan2Config::preset(DEFAULT_PRESET)?,
            };
            let target = match options.iterations {
                0 => config.training.total_iters,
                iterations => iterations,
            };
            if target == 0 {
                return Err(FfiError::invalid(format!(
                    "{FUNCTION}: options->iterations is 0 and the configuration's training.total_iters is 0 too: \
                     request at least one iteration"
                )));
            }
            if let Some(path) = &output_path {
                check_output_path(path, &data_dir, FUNCTION)?;
            }

            let folder = ImageFolder::open(&data_dir).map_err(|e| prefixed(FUNCTION, e))?;
            tracing::info!(
                data_dir = %data_dir.display(),
                images = folder.len(),
                iterations = target,
                seed = options.seed,
                "StyleGAN2 training started"
            );
            let model = StyleGan2Model::new(&config, options.seed, &context.device)?;
            let mut trainer = StyleGan2Trainer::new(model, folder).map_err(|e| prefixed(FUNCTION, e))?;

            let callback = options.progress_callback;
            let user_data = options.progress_user_data;
            let checkpoint_every = options.checkpoint_every;
            let mut on_iteration = |trainer: &mut StyleGan2Trainer, report: &StyleGan2Progress| {
                let due = checkpoint_every > 0 && report.iteration.is_multiple_of(checkpoint_every);
                if let (true, Some(path)) = (due && report.iteration < target, &output_path) {
                    trainer.checkpoint()?.save(path)?;
                    tracing::info!(path = %path.display(), iteration = report.iteration, "StyleGAN2 checkpoint saved");
                }
                let Some(callback) = callback else {
                    return Ok(Control::Continue);
                };
                let report = progress_report(report);
                // SAFETY: the caller promised a callable function; `report` outlives the call.
                match unsafe { callback(&report, user_data) } {
                    0 => Ok(Control::Continue),
                    _ => Ok(Control::Cancel),
                }
            };
            let outcome = trainer.train(target, &mut on_iteration)?;

            let model = trainer.into_model()?;
            if let Some(path) = &output_path {
                save_model(&model, path)?;
            }
            let finished = model.metadata.iteration;
            tracing::info!(
                iteration = finished,
                cancelled = outcome == TrainOutcome::Cancelled,
                "StyleGAN2 training ended"
            );
            *out = Box::into_raw(Box::new(PeganStyleGan2Model::new(model, context.clone())));
            match outcome {
                TrainOutcome::Finished => Ok(()),
                TrainOutcome::Cancelled => Err(FfiError::new(
                    PeganStatus::Cancelled,
                    format!(
                        "{FUNCTION}: cancelled by the progress callback after {finished} of {target} iterations; \
                         *out_model contains them and must be freed"
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
        let config =
            parse_config_request(r#"{"preset": "tiny", "overrides": {"training": {"batch_size": 2}}}"#).unwrap();
        assert_eq!(config.training.batch_size, 2);
        assert_eq!(config.generator.out_size, 32);
    }

    #[test]
    fn empty_request_uses_small_preset() {
        let config = parse_config_request("{}").unwrap();
        assert_eq!(config, StyleGan2Config::preset("small").unwrap());
    }

    #[test]
    fn complete_request_round_trips() {
        let base = StyleGan2Config::preset("tiny").unwrap();
        let text = serde_json::json!({ "config": base }).to_string();
        assert_eq!(parse_config_request(&text).unwrap(), base);
    }

    #[test]
    fn bad_requests_are_rejected() {
        let cases = [
            ("[]", "must be a JSON object"),
            ("{", "not valid JSON"),
            (r#"{"preset": "config-z"}"#, "config-z"),
            (r#"{"preset": 3}"#, "'preset' must be a string"),
            (r#"{"preset": "tiny", "seed": 3}"#, "unknown key 'seed'"),
            (r#"{"preset": "tiny", "overrides": 3}"#, "'overrides' must be an object"),
            (r#"{"preset": "tiny", "config": {}}"#, "cannot be combined"),
            (r#"{"config": {"generator": {}}}"#, "invalid 'config'"),
            (r#"{"preset": "tiny", "overrides": {"training": {"batch_size": 0}}}"#, "batch size 0"),
        ];
        for (request, expected) in cases {
            let error = parse_config_request(request).unwrap_err();
            assert_eq!(error.status, PeganStatus::InvalidArgument, "{request}");
            assert!(error.message.contains(expected), "{request}: {}", error.message);
        }
    }
}
