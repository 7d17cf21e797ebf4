//! SinGAN generation and retargeting into a caller buffer.

use pegan_core::image::tensor_to_samples;
use pegan_core::singan::sample::MAX_SIDE;
use pegan_core::singan::{NoiseMode, OutputSize, SampleOptions};

use crate::image::{check_image, PeganImage};
use crate::model::{model_ref, trained_size, PeganSinGanModel};
use crate::status::{boundary, FfiError, FfiResult, PeganStatus};

/// Source of the noise that drives the stages of the generator.
pub type PeganNoiseMode = u32;

/// Fresh Gaussian noise at every stage, drawn from `PeganGenerateOptions.seed`: a random sample.
pub const PEGAN_NOISE_MODE_RANDOM: PeganNoiseMode = 0;
/// The noise stored at training time, which reproduces the training image. Works only at the trained
/// size with start stage 0.
pub const PEGAN_NOISE_MODE_RECONSTRUCTION: PeganNoiseMode = 1;

/// Working-memory limit used when `PeganGenerateOptions.memory_limit_bytes` is 0: 8 GiB.
const DEFAULT_MEMORY_LIMIT_BYTES: u64 = 8 << 30;

/// Settings of one generated image. A zero-initialised struct gives a random sample at the trained
/// size with seed 0.
#[repr(C)]
pub struct PeganGenerateOptions {
    /// Width to generate in pixels, or 0 for the trained width. Another width retargets the image:
    /// every stage is scaled by the ratio to the trained size.
    pub width: u32,
    /// Height to generate in pixels, or 0 for the trained height.
    pub height: u32,
    /// Seed of the random noise; one seed and size reproduce an image.
    pub seed: u64,
    /// First stage that gets random noise. Stages before it reproduce the training image, so a
    /// higher start stage keeps more of the training image's layout. 0 is a fully random sample.
    pub start_stage: u32,
    /// One of the `PEGAN_NOISE_MODE_*` constants.
    pub noise_mode: PeganNoiseMode,
    /// Upper bound of the estimated working memory in bytes, or 0 for 8 GiB. Larger requests fail
    /// with `PEGAN_STATUS_TOO_LARGE` before allocating anything.
    pub memory_limit_bytes: u64,
}

fn noise_mode(value: PeganNoiseMode, function: &str) -> FfiResult<NoiseMode> {
    match value {
        PEGAN_NOISE_MODE_RANDOM => Ok(NoiseMode::Random),
        PEGAN_NOISE_MODE_RECONSTRUCTION => Ok(NoiseMode::Reconstruction),
        other => Err(FfiError::invalid(format!(
            "{function}: options->noise_mode {other} is unknown: use PEGAN_NOISE_MODE_RANDOM (0) or \
             PEGAN_NOISE_MODE_RECONSTRUCTION (1)"
        ))),
    }
}

/// Generates one image into the caller's buffer.
///
/// The image is `options->width` x `options->height` pixels, where 0 stands for the trained width or
/// height (`pegan_singan_model_trained_size`); `out->width` and `out->height` must equal that size.
/// `out` may have any channel count and sample type (see `PeganImage`): 1 channel receives the luma
/// `0.299 R + 0.587 G + 0.114 B`, and 4 channels receive opaque alpha. The call writes the pixels of
/// every row and leaves the bytes between the end of a row's pixels and the next row untouched.
/// `options` may be NULL for the defaults.
///
/// Errors (on failure the buffer may be partly written):
/// - `PEGAN_STATUS_NULL_POINTER`: `model`, `out` or `out->data` is NULL.
/// - `PEGAN_STATUS_INVALID_ARGUMENT`: `out` is invalid (see `PeganImage`), its buffer is too short,
///   or its size differs from the requested size. Also an unknown noise mode, a start stage the model
///   lacks, or reconstruction at another size or start stage.
/// - `PEGAN_STATUS_INCOMPLETE_MODEL`: training of the model was cancelled.
/// - `PEGAN_STATUS_TOO_LARGE`: a side is above 65536 pixels, or the request exceeds the memory limit.
/// - `PEGAN_STATUS_COMPUTE`: a tensor operation failed.
///
/// Thread safety: several threads may generate from one model at once, each into its own buffer.
///
/// # Safety
/// `model` is NULL or a live model. `options` is NULL or points to a valid `PeganGenerateOptions`.
/// `out` is NULL or points to a `PeganImage` whose `data` is writable for `out_len` bytes, and no
/// other thread uses those bytes during the call.
#[no_mangle]
pub unsafe extern "C" fn pegan_singan_generate(
    model: *const PeganSinGanModel,
    options: *const PeganGenerateOptions,
    out: *const PeganImage,
    out_len: usize,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_singan_generate";
    boundary(FUNCTION, || {
        let handle = model_ref(model, FUNCTION, "model")?;
        let default_options = PeganGenerateOptions {
            width: 0,
            height: 0,
            seed: 0,
            start_stage: 0,
            noise_mode: PEGAN_NOISE_MODE_RANDOM,
            memory_limit_bytes: 0,
        };
        let options = options.as_ref().unwrap_or(&default_options);

        handle.context.run(FUNCTION, || {
            let checked = check_image(out, out_len, MAX_SIDE, FUNCTION, "out")?;
            let mode = noise_mode(options.noise_mode, FUNCTION)?;
            let model = &handle.model;
            if !model.is_complete() {
                return Err(FfiError::new(
                    PeganStatus::IncompleteModel,
                    format!(
                        "{FUNCTION}: the model finished {} of {} training stages, so it cannot generate: finish its \
                         training first",
                        model.metadata.finished_stages,
                        model.num_stages()
                    ),
                ));
            }

            let (trained_height, trained_width) = trained_size(model);
            let pick = |requested: u32, trained: usize| if requested == 0 { trained } else { requested as usize };
            let (width, height) = (pick(options.width, trained_width), pick(options.height, trained_height));
            if width > MAX_SIDE || height > MAX_SIDE {
                return Err(FfiError::too_large(format!(
                    "{FUNCTION}: the requested size {width} x {height} (width x height) is above the limit of \
                     {MAX_SIDE} pixels per side"
                )));
            }
            if (checked.layout.width, checked.layout.height) != (width, height) {
                return Err(FfiError::invalid(format!(
                    "{FUNCTION}: out is {} x {} pixels but the requested size is {width} x {height} (width x \
                     height): size out for the image to generate",
                    checked.layout.width, checked.layout.height
                )));
            }

            let size = if (width, height) == (trained_width, trained_height) {
                OutputSize::Trained
            } else {
                OutputSize::Pixels { width, height }
            };
            let memory_limit_bytes = match options.memory_limit_bytes {
                0 => DEFAULT_MEMORY_LIMIT_BYTES,
                limit => limit,
            };
            let estimate = model.estimate_memory(&model.stage_sizes_for(size)?);
            if estimate > memory_limit_bytes {
                return Err(FfiError::too_large(format!(
                    "{FUNCTION}: a {width} x {height} image needs about {estimate} bytes of working memory, over the \
                     limit of {memory_limit_bytes} bytes: request a smaller size or raise memory_limit_bytes"
                )));
            }

            let request = SampleOptions {
                size,
                mode,
                seed: options.seed,
                start_stage: options.start_stage as usize,
                start_image: None,
                memory_limit_bytes,
            };
            let image = model.sample(&request, 0)?;
            tensor_to_samples(&image, &checked.layout, checked.bytes_mut())?;
            tracing::debug!(width, height, seed = options.seed, "SinGAN image generated");
            Ok(())
        })
    })
}
