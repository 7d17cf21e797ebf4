//! StyleGAN2 / MS-PIE sampling into a caller buffer: size, seed or latent, truncation ψ, noise mode
//! and style mixing.

use candle_core::{Device, Tensor};
use pegan_core::image::tensor_to_samples;
use pegan_core::stylegan2::sample::{
    estimate_memory, scale_for_size, NoiseMode, SampleOptions, StyleGan2Sampler, StyleMix,
};

use crate::image::{check_image, PeganImage};
use crate::status::{boundary, boundary_void, FfiError, FfiResult, PeganStatus};
use crate::stylegan2_model::{model_info, prefixed, stylegan2_model_ref, PeganStyleGan2Info, PeganStyleGan2Model};

/// Source of the noise maps that StyleGAN2 adds after every modulated convolution.
pub type PeganStyleGan2NoiseMode = u32;

/// Fresh Gaussian maps drawn from `PeganStyleGan2SampleOptions.seed` (the reference's default).
pub const PEGAN_STYLEGAN2_NOISE_MODE_RANDOM: PeganStyleGan2NoiseMode = 0;
/// The maps stored in the model, shared by every sample. Works only at the trained size, because
/// the model stores no maps for other sizes.
pub const PEGAN_STYLEGAN2_NOISE_MODE_FIXED: PeganStyleGan2NoiseMode = 1;
/// No noise: the image depends on the latent alone.
pub const PEGAN_STYLEGAN2_NOISE_MODE_ZERO: PeganStyleGan2NoiseMode = 2;

/// Working-memory limit used when `PeganStyleGan2SampleOptions.memory_limit_bytes` is 0: 8 GiB.
const DEFAULT_MEMORY_LIMIT_BYTES: u64 = 8 << 30;

/// Settings of one StyleGAN2 image. Fill it with `pegan_stylegan2_sample_options_init` before
/// changing fields, because a zero-initialised struct means truncation ψ = 0 and the non-EMA
/// generator.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PeganStyleGan2SampleOptions {
    /// Width to generate in pixels, or 0 for the trained width. Valid widths are
    /// `PeganStyleGan2Info.width + k * width_step` for k = 0, 1, 2, ...
    pub width: u32,
    /// Height to generate in pixels, or 0 for the trained height. Valid heights are
    /// `PeganStyleGan2Info.height + k * height_step`, chosen independently of the width.
    pub height: u32,
    /// Seed of the latent `z` (unless `latent` is given) and of random noise maps. One seed and one
    /// set of options reproduce an image.
    pub seed: u64,
    /// The latent `z` as `latent_len` floats, or NULL to draw `z` from `seed`. The values are finite
    /// and usually drawn from a standard normal distribution.
    pub latent: *const f32,
    /// Number of floats at `latent`: `PeganStyleGan2Info.style_channels` when `latent` is not NULL,
    /// otherwise 0.
    pub latent_len: usize,
    /// Truncation ψ, at least 0: 1 (the default) samples the full distribution, smaller values pull
    /// every style towards the mean latent and trade variety for typical images, and 0 gives the
    /// mean latent's image. Values above 1 extrapolate away from the mean.
    pub truncation: f64,
    /// Seed of the 4096 latents whose mapped mean is the mean latent of truncation. Used only when
    /// `truncation` is below 1.
    pub truncation_seed: u64,
    /// One of the `PEGAN_STYLEGAN2_NOISE_MODE_*` constants.
    pub noise_mode: PeganStyleGan2NoiseMode,
    /// Whether style mixing is on: style rows from `mix_inject_index` on come from `mix_seed`.
    pub mix_enabled: bool,
    /// Seed of the second latent of style mixing.
    pub mix_seed: u64,
    /// First style row taken from `mix_seed`, from 1 to `PeganStyleGan2Info.num_style_rows` - 1.
    /// Low values take the coarse structure from the second latent, high values only fine detail.
    pub mix_inject_index: u32,
    /// Whether to sample the moving-average (EMA) generator, as the reference's evaluation does (the
    /// default), instead of the trained generator.
    pub use_ema: bool,
    /// Upper bound of the estimated working memory in bytes, or 0 for 8 GiB. Larger requests fail
    /// with `PEGAN_STATUS_TOO_LARGE` before allocating anything.
    pub memory_limit_bytes: u64,
}

impl Default for PeganStyleGan2SampleOptions {
    fn default() -> Self {
        PeganStyleGan2SampleOptions {
            width: 0,
            height: 0,
            seed: 0,
            latent: std::ptr::null(),
            latent_len: 0,
            truncation: 1.0,
            truncation_seed: 0,
            noise_mode: PEGAN_STYLEGAN2_NOISE_MODE_RANDOM,
            mix_enabled: false,
            mix_seed: 0,
            mix_inject_index: 0,
            use_ema: true,
            memory_limit_bytes: 0,
        }
    }
}

/// Fills `options` with the defaults: the trained size, seed 0, a latent drawn from the seed,
/// truncation ψ = 1, truncation seed 0, random noise, no style mixing, the EMA generator and the
/// default memory limit. NULL is allowed and does nothing.
///
/// Thread safety: may be called from any thread.
///
/// # Safety
/// `options` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pegan_stylegan2_sample_options_init(options: *mut PeganStyleGan2SampleOptions) {
    boundary_void(|| {
        if let Some(options) = options.as_mut() {
            *options = PeganStyleGan2SampleOptions::default();
        }
    })
}

fn noise_mode(value: PeganStyleGan2NoiseMode, function: &str) -> FfiResult<NoiseMode> {
    match value {
        PEGAN_STYLEGAN2_NOISE_MODE_RANDOM => Ok(NoiseMode::Random),
        PEGAN_STYLEGAN2_NOISE_MODE_FIXED => Ok(NoiseMode::Fixed),
        PEGAN_STYLEGAN2_NOISE_MODE_ZERO => Ok(NoiseMode::Zero),
        other => Err(FfiError::invalid(format!(
            "{function}: options->noise_mode {other} is unknown: use PEGAN_STYLEGAN2_NOISE_MODE_RANDOM (0), \
             PEGAN_STYLEGAN2_NOISE_MODE_FIXED (1) or PEGAN_STYLEGAN2_NOISE_MODE_ZERO (2)"
        ))),
    }
}

/// Reads the caller's latent `z` as a (1, C) tensor on the CPU, or `None` when `latent` is NULL.
unsafe fn caller_latent(
    options: &PeganStyleGan2SampleOptions,
    style_channels: usize,
    function: &str,
) -> FfiResult<Option<Tensor>> {
    if options.latent.is_null() {
        if options.latent_len != 0 {
            return Err(FfiError::invalid(format!(
                "{function}: options->latent is NULL but options->latent_len is {}: set latent_len to 0 to draw the \
                 latent from the seed, or pass {style_channels} floats",
                options.latent_len
            )));
        }
        return Ok(None);
    }
    if options.latent_len != style_channels {
        return Err(FfiError::invalid(format!(
            "{function}: options->latent_len is {}, but this model's latent has {style_channels} values \
             (PeganStyleGan2Info.style_channels): pass {style_channels} floats",
            options.latent_len
        )));
    }

    // SAFETY: the caller promised `latent_len` readable floats at `latent`.
    let values = std::slice::from_raw_parts(options.latent, style_channels);
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(FfiError::invalid(format!(
            "{function}: options->latent[{index}] is {}: every latent value must be finite",
            values[index]
        )));
    }
    let z = Tensor::from_slice(values, (1, style_channels), &Device::Cpu).map_err(pegan_core::Error::from)?;
    Ok(Some(z))
}

/// Returns the requested (width, height), with 0 meaning the trained size, after checking it against
/// the largest size of the model.
fn requested_size(
    options: &PeganStyleGan2SampleOptions,
    info: &PeganStyleGan2Info,
    function: &str,
) -> FfiResult<(usize, usize)> {
    let pick = |requested: u32, trained: u32| if requested == 0 { trained } else { requested };
    let (width, height) = (pick(options.width, info.width), pick(options.height, info.height));
    if width > info.max_width || height > info.max_height {
        return Err(FfiError::too_large(format!(
            "{function}: the requested size {width} x {height} (width x height) is above the model's largest size \
             {} x {}: request a smaller size",
            info.max_width, info.max_height
        )));
    }
    Ok((width as usize, height as usize))
}

/// Generates one StyleGAN2 image into the caller's buffer.
///
/// The image is `options->width` x `options->height` pixels, where 0 stands for the trained width or
/// height (`PeganStyleGan2Info`); `out->width` and `out->height` must equal that size. Other sizes
/// than the trained one enlarge the generator's head grid, so an MS-PIE model generates a larger
/// field of view at the same scale rather than a resized image. `out` may have any channel count and
/// sample type (see `PeganImage`): 1 channel receives the luma `0.299 R + 0.587 G + 0.114 B`, and 4
/// channels receive opaque alpha. The call writes the pixels of every row and leaves the bytes
/// between the end of a row's pixels and the next row untouched. `options` may be NULL for the
/// defaults of `pegan_stylegan2_sample_options_init`.
///
/// The latent `z` comes from `options->latent` or, when that is NULL, from `options->seed`. With the
/// same options and size, a seed and its latent give the same image every time and on every thread.
/// The first truncated call with a truncation seed estimates the mean latent from 4096 latents; the
/// model keeps the result for later calls.
///
/// Errors (on failure the buffer may be partly written):
/// - `PEGAN_STATUS_NULL_POINTER`: `model`, `out` or `out->data` is NULL.
/// - `PEGAN_STATUS_INVALID_ARGUMENT`: `out` is invalid (see `PeganImage`), its buffer is too short,
///   or its size differs from the requested size. Also a size the model does not generate, with
///   the nearest valid sizes in the message, or fixed noise at another size than the trained one.
///   Also an unknown noise mode, a negative or non-finite truncation, a style-mixing index outside
///   1 to L - 1, or a latent of the wrong length or with non-finite values.
/// - `PEGAN_STATUS_TOO_LARGE`: the requested size is above `PeganStyleGan2Info.max_width` or
///   `max_height`, or the request exceeds the memory limit.
/// - `PEGAN_STATUS_COMPUTE`: a tensor operation failed.
///
/// Thread safety: several threads may generate from one model at once, each into its own buffer.
///
/// # Safety
/// `model` is NULL or a live model. `options` is NULL or points to a valid
/// `PeganStyleGan2SampleOptions` whose `latent` is NULL or readable for `latent_len` floats. `out` is
/// NULL or points to a `PeganImage` whose `data` is writable for `out_len` bytes, and no other thread
/// uses those bytes during the call.
#[no_mangle]
pub unsafe extern "C" fn pegan_stylegan2_generate(
    model: *const PeganStyleGan2Model,
    options: *const PeganStyleGan2SampleOptions,
    out: *const PeganImage,
    out_len: usize,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_stylegan2_generate";
    boundary(FUNCTION, || {
        let handle = stylegan2_model_ref(model, FUNCTION, "model")?;
        let defaults = PeganStyleGan2SampleOptions::default();
        let options = options.as_ref().unwrap_or(&defaults);

        handle.context.run(FUNCTION, || {
            let info = model_info(&handle.model)?;
            let max_side = info.max_width.max(info.max_height) as usize;
            let checked = check_image(out, out_len, max_side, FUNCTION, "out")?;
            let noise = noise_mode(options.noise_mode, FUNCTION)?;
            let generator = handle.generator(options.use_ema);

            let (width, height) = requested_size(options, &info, FUNCTION)?;
            let scale = scale_for_size(generator, height, width).map_err(|e| prefixed(FUNCTION, e))?;
            if (checked.layout.width, checked.layout.height) != (width, height) {
                return Err(FfiError::invalid(format!(
                    "{FUNCTION}: out is {} x {} pixels but the requested size is {width} x {height} (width x \
                     height): size out for the image to generate",
                    checked.layout.width, checked.layout.height
                )));
            }

            let memory_limit_bytes = match options.memory_limit_bytes {
                0 => DEFAULT_MEMORY_LIMIT_BYTES,
                limit => limit,
            };
            let estimate = estimate_memory(generator, scale)?;
            if estimate > memory_limit_bytes {
                return Err(FfiError::too_large(format!(
                    "{FUNCTION}: a {width} x {height} image needs about {estimate} bytes of working memory, over the \
                     limit of {memory_limit_bytes} bytes: request a smaller size or raise memory_limit_bytes"
                )));
            }

            if !(options.truncation.is_finite() && options.truncation >= 0.0) {
                return Err(FfiError::invalid(format!(
                    "{FUNCTION}: options->truncation {} is invalid: use a value of at least 0 (1 disables \
                     truncation, 0.7 is common)",
                    options.truncation
                )));
            }
            let latent = caller_latent(options, generator.style_channels(), FUNCTION)?;
            let mean_latent = if options.truncation < 1.0 {
                Some(handle.mean_latent(options.truncation_seed, options.use_ema)?)
            } else {
                None
            };
            let mix = options
                .mix_enabled
                .then_some(StyleMix { seed: options.mix_seed, inject_index: options.mix_inject_index as usize });

            let request = SampleOptions {
                scale,
                truncation: options.truncation,
                mean_latent,
                mean_latent_seed: options.truncation_seed,
                noise,
                mix,
                use_ema: options.use_ema,
                memory_limit_bytes,
            };
            let sampler = StyleGan2Sampler::new(&handle.model, request).map_err(|e| prefixed(FUNCTION, e))?;
            let image = match &latent {
                Some(z) => sampler.sample_z(z, options.seed),
                None => sampler.sample_seed(options.seed),
            }
            .map_err(|e| prefixed(FUNCTION, e))?;
            tensor_to_samples(&image, &checked.layout, checked.bytes_mut())?;
            tracing::debug!(width, height, seed = options.seed, "StyleGAN2 image generated");
            Ok(())
        })
    })
}
