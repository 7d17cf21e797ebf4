//! StyleGAN2 / MS-PIE model loading and generation on pegan-core.
//!
//! [`generate`] makes the calls of `pegan_stylegan2_generate` of the C API with its default options:
//! the EMA generator, truncation seed 0, no style mixing and the 8 GiB memory limit. A request at
//! Interpolation 0 draws the latent from the seed, as the C API does without a caller latent. Other
//! amounts pass the interpolated latent to the sampler, as the C API does with a caller latent, and
//! keep the noise maps of the seed.

use std::path::Path;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use pegan_core::rng::SeededRng;
use pegan_core::stylegan2::generator::Generator;
use pegan_core::stylegan2::head::{ChosenScale, MAX_CHOSEN_SCALE};
use pegan_core::stylegan2::mmgen::load_mmgen_stylegan2;
use pegan_core::stylegan2::model::StyleGan2Model;
use pegan_core::stylegan2::sample::{estimate_memory, scale_for_size, NoiseMode, SampleOptions, StyleGan2Sampler};

use crate::generate::{check_memory, is_zip, Canvas, ModelFamily, MEMORY_LIMIT_BYTES};
use crate::host::{OfxError, OfxResult};

/// Seed of the 4096 latents whose mapped mean is the mean latent of truncation: the C API's default.
pub const TRUNCATION_SEED: u64 = 0;

/// A StyleGAN2 model and its mean latent, computed on the first truncated render.
pub struct StyleGan2Loaded {
    pub model: StyleGan2Model,
    mean_latent: OnceLock<Tensor>,
}

impl StyleGan2Loaded {
    /// Loads a pegan StyleGAN2 file or an MMGeneration checkpoint. Checkpoints are recognised by the
    /// zip signature of `.pth` files, as `pegan_stylegan2_model_load` recognises them.
    pub fn load(path: &Path) -> OfxResult<Self> {
        let bytes = std::fs::read(path).map_err(|error| {
            OfxError::failed(format!(
                "Model file '{}' cannot be read ({error}): choose {} in the Model file parameter",
                path.display(),
                ModelFamily::StyleGan2.model_files()
            ))
        })?;
        let mut model = if is_zip(&bytes) {
            // NOTE: the plug-in has no preset parameter. So a checkpoint of MS-PIE config e or j without its
            // config text loads as if its head were evaluated at each scale, and pegan-core logs a warning.
            load_mmgen_stylegan2(path, None, &Device::Cpu)
        } else {
            StyleGan2Model::from_bytes(&bytes, &Device::Cpu)
        }
        .map_err(|error| load_error(path, &bytes, error))?;
        drop(bytes);

        // Sampling needs neither the discriminator nor the optimiser state of a training checkpoint,
        // which together can be larger than the generators.
        model.discriminator = None;
        model.optimizer_state = None;
        Ok(StyleGan2Loaded { model, mean_latent: OnceLock::new() })
    }

    /// Returns the moving-average (EMA) generator, which the C API samples by default.
    fn ema_generator(&self) -> &Generator {
        &self.model.generator_ema
    }

    /// Returns the size at chosen scale 0, (width, height) in pixels.
    pub fn trained_size(&self) -> OfxResult<(usize, usize)> {
        let (height, width) = self.ema_generator().output_size(ChosenScale::default())?;
        Ok((width, height))
    }

    /// Returns the size at the largest chosen scale, (width, height) in pixels. The baseline generator
    /// has only its trained size.
    fn largest_size(&self) -> OfxResult<(usize, usize)> {
        let largest = ChosenScale::new(MAX_CHOSEN_SCALE, MAX_CHOSEN_SCALE);
        match self.ema_generator().output_size(largest) {
            Ok((height, width)) => Ok((width, height)),
            Err(_) => self.trained_size(),
        }
    }

    /// Returns the mean latent of [`TRUNCATION_SEED`], estimating it on the first call.
    fn mean_latent(&self) -> OfxResult<Tensor> {
        if let Some(mean) = self.mean_latent.get() {
            return Ok(mean.clone());
        }
        let mean = self.ema_generator().mean_latent(&mut SeededRng::new(TRUNCATION_SEED))?;
        Ok(self.mean_latent.get_or_init(|| mean).clone())
    }
}

/// Builds the message of a file that is not a StyleGAN2 model, naming a SinGAN model as such.
fn load_error(path: &Path, bytes: &[u8], error: pegan_core::Error) -> OfxError {
    let files = ModelFamily::StyleGan2.model_files();
    if pegan_core::singan::model::read_metadata(bytes).is_ok() {
        return OfxError::failed(format!(
            "Model file '{}' is a SinGAN model: use it with the SinGAN Sample or SinGAN Retarget effect, or choose \
             {files} in the Model file parameter",
            path.display()
        ));
    }
    let reason = match error {
        pegan_core::Error::InvalidModel(reason) => {
            format!("cannot read {}: not a valid pegan model file: {reason}", path.display())
        }
        other => other.to_string(),
    };
    OfxError::failed(format!("{reason}: choose {files} in the Model file parameter"))
}

/// Interpolation of the latent `z` from the seed's latent towards another seed's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interpolation {
    /// Seed whose latent is reached at amount 1.
    pub target_seed: u64,
    /// Position on the spherical path, above 0 and at most 1.
    pub amount: f64,
}

/// A StyleGAN2 generation request: everything that determines the pixels, besides the model.
#[derive(Debug, Clone, PartialEq)]
pub struct StyleGan2Request {
    pub width: usize,
    pub height: usize,
    /// Seed of the latent `z` and of random noise maps.
    pub seed: u64,
    /// Truncation ψ, at least 0.
    pub truncation: f64,
    pub noise: NoiseMode,
    /// `None` at Interpolation 0, where the target seed does not change the image.
    pub interpolation: Option<Interpolation>,
}

/// Maps a noise choice index to the core's noise mode; the indices are those of the C API.
pub fn noise_mode(index: i32) -> OfxResult<NoiseMode> {
    match index {
        0 => Ok(NoiseMode::Random),
        1 => Ok(NoiseMode::Fixed),
        2 => Ok(NoiseMode::Zero),
        other => Err(OfxError::failed(format!("Noise option {other} does not exist: choose Random, Fixed or Zero"))),
    }
}

/// Returns the chosen scale of a `width` x `height` output, with the size checks of
/// `pegan_stylegan2_generate`: at most the largest size, and a size the model generates.
pub fn chosen_scale(loaded: &StyleGan2Loaded, width: usize, height: usize) -> OfxResult<ChosenScale> {
    let (max_width, max_height) = loaded.largest_size()?;
    if width > max_width || height > max_height {
        return Err(OfxError::failed(format!(
            "The output size {width} x {height} pixels is above this model's largest size {max_width} x {max_height}: \
             choose a smaller Width and Height"
        )));
    }
    scale_for_size(loaded.ema_generator(), height, width).map_err(|error| {
        let (trained_width, trained_height) = loaded.trained_size().unwrap_or((0, 0));
        OfxError::failed(format!(
            "The output size {width} x {height} pixels is not a size of this model, because {error}: choose such a \
             Width and Height, or the trained size {trained_width} x {trained_height}"
        ))
    })
}

/// Generates one image, with the checks and defaults of `pegan_stylegan2_generate`.
pub fn generate(loaded: &StyleGan2Loaded, request: &StyleGan2Request) -> OfxResult<Canvas> {
    let (width, height) = (request.width, request.height);
    let scale = chosen_scale(loaded, width, height)?;
    check_memory(estimate_memory(loaded.ema_generator(), scale)?, width, height)?;
    if !(request.truncation.is_finite() && request.truncation >= 0.0) {
        return Err(OfxError::failed(format!(
            "Truncation {} is invalid: choose a value of at least 0 (1 disables truncation, 0.7 is common)",
            request.truncation
        )));
    }
    if let Some(interpolation) = request.interpolation {
        if !(interpolation.amount > 0.0 && interpolation.amount <= 1.0) {
            return Err(OfxError::failed(format!(
                "Interpolation {} is out of range: choose 0 to 1",
                interpolation.amount
            )));
        }
    }
    let mean_latent = if request.truncation < 1.0 { Some(loaded.mean_latent()?) } else { None };

    let options = SampleOptions {
        scale,
        truncation: request.truncation,
        mean_latent,
        mean_latent_seed: TRUNCATION_SEED,
        noise: request.noise,
        mix: None,
        use_ema: true,
        memory_limit_bytes: MEMORY_LIMIT_BYTES,
    };
    let sampler = StyleGan2Sampler::new(&loaded.model, options).map_err(|error| match request.noise {
        NoiseMode::Fixed => OfxError::failed(format!("{error} in the Noise parameter")),
        _ => OfxError::from(error),
    })?;
    let image = match request.interpolation {
        Some(interpolation) => {
            let z = sampler.interpolated_z(request.seed, interpolation.target_seed, interpolation.amount)?;
            sampler.sample_z(&z, request.seed)?
        }
        None => sampler.sample_seed(request.seed)?,
    };
    Canvas::from_tensor(&image, width, height)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_indices_match_the_c_api() {
        assert_eq!(noise_mode(0).unwrap(), NoiseMode::Random);
        assert_eq!(noise_mode(1).unwrap(), NoiseMode::Fixed);
        assert_eq!(noise_mode(2).unwrap(), NoiseMode::Zero);
        assert!(noise_mode(3).unwrap_err().message.contains("Noise option 3 does not exist"));
    }

    #[test]
    fn missing_file_names_the_path() {
        let error = StyleGan2Loaded::load(Path::new("/nonexistent/faces.pegan")).err().expect("loading fails");
        assert!(error.message.contains("/nonexistent/faces.pegan"), "{}", error.message);
        assert!(error.message.contains("Model file parameter"), "{}", error.message);
    }
}
