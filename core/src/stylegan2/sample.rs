//! Sampling a StyleGAN2 / MS-PIE model: seeds or latents, truncation ψ, style mixing, noise modes, any
//! chosen scale (including non-square ones), and latent interpolation.
//!
//! A seed always gives the same image, whatever else is sampled with it: the seed's stream draws `z` first
//! and then, from a forked stream, the noise maps of that one sample.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::rng::SeededRng;
use crate::stylegan2::config::GeneratorConfig;
use crate::stylegan2::generator::{Generator, Noise};
use crate::stylegan2::head::{ChosenScale, MAX_CHOSEN_SCALE};
use crate::stylegan2::mapping::{broadcast_style, mix_styles, truncate};
use crate::stylegan2::model::StyleGan2Model;

/// Noise maps of a sampling call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoiseMode {
    /// Fresh maps drawn from the seed's stream (the reference's `randomize_noise=True`, its default).
    #[default]
    Random,
    /// The model's stored maps `injected_noise_{l}`, shared by every sample; chosen scale 0 only, because the
    /// reference stores no maps for other scales.
    Fixed,
    /// All maps zero: the image depends on the latent alone.
    Zero,
}

/// Latent space in which interpolation moves between the seeds' latents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatentSpace {
    /// Spherical interpolation of `z`, which keeps intermediate latents on the Gaussian shell.
    #[default]
    Z,
    /// Linear interpolation of the mapped `w`.
    W,
}

/// Style mixing with a second seed: latent rows from `inject_index` on take the second seed's style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StyleMix {
    pub seed: u64,
    pub inject_index: usize,
}

/// Options of [`StyleGan2Sampler`].
#[derive(Debug, Clone)]
pub struct SampleOptions {
    /// Rows and columns added to the head grid; the image side is `(4 + cs)·out_size/4` per axis.
    pub scale: ChosenScale,
    /// Truncation ψ: 1 samples the full distribution, smaller values trade variety for typical images.
    pub truncation: f64,
    /// Mean latent `w̄` (C values) for truncation; when `None` it is estimated from 4 × 1024 samples drawn
    /// from `mean_latent_seed`, as the reference's `get_mean_latent` does.
    pub mean_latent: Option<Tensor>,
    pub mean_latent_seed: u64,
    pub noise: NoiseMode,
    pub mix: Option<StyleMix>,
    /// Sample with the EMA generator (true, as the reference's evaluation) or the trained one.
    pub use_ema: bool,
    /// Upper bound for the estimated working memory of one sample; larger requests fail before allocating.
    pub memory_limit_bytes: u64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            scale: ChosenScale::default(),
            truncation: 1.0,
            mean_latent: None,
            mean_latent_seed: 0,
            noise: NoiseMode::Random,
            mix: None,
            use_ema: true,
            memory_limit_bytes: 8 << 30,
        }
    }
}

/// Returns the chosen scale whose output is `height × width` pixels, or an error naming the sizes near it.
pub fn scale_for_size(generator: &Generator, height: usize, width: usize) -> Result<ChosenScale> {
    let (base_h, base_w) = generator.output_size(ChosenScale::default())?;
    let axis = |side: usize, base: usize, name: &str| -> Result<usize> {
        // Each unit of chosen scale adds base/4 pixels.
        let step = base / 4;
        let largest = base + MAX_CHOSEN_SCALE * step;
        if side > largest {
            return Err(Error::invalid(format!(
                "{name} {side} px is larger than this model's largest output, {largest} px: sizes are {base} + k·{step} \
                 px (k = 0 to {MAX_CHOSEN_SCALE})"
            )));
        }
        if side >= base && (side - base) % step == 0 {
            return Ok((side - base) / step);
        }
        let below = if side < base { base } else { base + (side - base) / step * step };
        Err(Error::invalid(format!(
            "{name} {side} px is not an output size of this model: sizes are {base} + k·{step} px \
             (k = 0, 1, 2, …), e.g. {below} or {}",
            below + step
        )))
    };
    // Width first, as sizes are written.
    let width_scale = axis(width, base_w, "width")?;
    let scale = ChosenScale::new(axis(height, base_h, "height")?, width_scale);
    scale.validate()?;
    Ok(scale)
}

/// Estimated peak working memory, in bytes, of one sample at `scale`.
pub fn estimate_memory(generator: &Generator, scale: ChosenScale) -> Result<u64> {
    let shapes = generator.noise_shapes(scale)?;
    let mut peak = 0u64;
    for (l, &(h, w)) in shapes.iter().enumerate() {
        let (c_in, c_out) = block_widths(generator.config(), l);
        // Input (possibly resized, 4 px larger), conv output, noise, activation and the skip image, in f32,
        // with a factor of 2 for temporaries.
        let plane = (h as u64 + 4) * (w as u64 + 4);
        peak = peak.max(2 * 4 * plane * (c_in + 3 * c_out + 6));
    }
    Ok(peak)
}

/// Returns the widths (input, output) of the block that style conv `layer` belongs to, as the memory
/// estimates count them. Layer 0 is conv1 at 4×4 (input: the head's channels); layers 2b+1 and 2b+2
/// belong to block b, from C(r/2) to C(r) at r = 2^(b+3).
pub(crate) fn block_widths(config: &GeneratorConfig, layer: usize) -> (u64, u64) {
    if layer == 0 {
        return (config.head_channels() as u64, config.channels.width(4) as u64);
    }
    let resolution = 1usize << ((layer - 1) / 2 + 3);
    (config.channels.width(resolution / 2) as u64, config.channels.width(resolution) as u64)
}

/// Samples one model with fixed options.
pub struct StyleGan2Sampler<'a> {
    generator: &'a Generator,
    options: SampleOptions,
    mean_latent: Option<Tensor>,
}

impl<'a> StyleGan2Sampler<'a> {
    /// Checks the options against the model (scale, memory, noise mode, mixing index) and prepares the mean
    /// latent when truncation needs it.
    pub fn new(model: &'a StyleGan2Model, options: SampleOptions) -> Result<Self> {
        let generator = if options.use_ema { &model.generator_ema } else { &model.generator };
        let (h, w) = generator.output_size(options.scale)?;
        let needed = estimate_memory(generator, options.scale)?;
        if needed > options.memory_limit_bytes {
            return Err(Error::invalid(format!(
                "a {w}×{h} sample needs about {} MiB of working memory, over the limit of {} MiB: choose a smaller \
                 size or raise the limit",
                needed >> 20,
                options.memory_limit_bytes >> 20
            )));
        }
        if options.noise == NoiseMode::Fixed && !options.scale.is_zero() {
            return Err(Error::invalid(format!(
                "fixed noise exists only at the trained scale ({}×{} px), not at {w}×{h}: use random or zero noise",
                generator.output_size(ChosenScale::default())?.1,
                generator.output_size(ChosenScale::default())?.0
            )));
        }
        if !(options.truncation.is_finite() && options.truncation >= 0.0) {
            return Err(Error::invalid(format!(
                "truncation ψ = {} is invalid: use a value ≥ 0 (1 disables truncation, 0.7 is common)",
                options.truncation
            )));
        }
        let l = generator.num_latents();
        if let Some(mix) = options.mix {
            if mix.inject_index == 0 || mix.inject_index >= l {
                return Err(Error::invalid(format!(
                    "style-mixing index {} is out of range: this model has {l} style rows, use 1..={}",
                    mix.inject_index,
                    l - 1
                )));
            }
        }

        let mean_latent = match (&options.mean_latent, options.truncation < 1.0) {
            (_, false) => None,
            (Some(given), true) => Some(given.to_device(generator.device())?.to_dtype(generator.dtype())?),
            (None, true) => Some(generator.mean_latent(&mut SeededRng::new(options.mean_latent_seed))?),
        };
        Ok(StyleGan2Sampler { generator, options, mean_latent })
    }

    pub fn generator(&self) -> &Generator {
        self.generator
    }

    /// Output (height, width) in pixels.
    pub fn output_size(&self) -> Result<(usize, usize)> {
        self.generator.output_size(self.options.scale)
    }

    /// Draws the latent `z` (1, C) of a seed.
    pub fn z_for_seed(&self, seed: u64) -> Result<Tensor> {
        let c = self.generator.style_channels();
        SeededRng::new(seed).normal(&[1, c], 0.0, 1.0, self.generator.device())?.to_dtype(self.generator.dtype()).map_err(Error::from)
    }

    /// Generates the image (1, 3, H, W) of one seed, BGR in about [-1, 1].
    pub fn sample_seed(&self, seed: u64) -> Result<Tensor> {
        let z = self.z_for_seed(seed)?;
        let mut noise_rng = noise_stream(seed);
        self.synthesize_from_w(&self.generator.map(&z)?, &mut noise_rng)
    }

    /// Generates the image of a caller's latent `z` (1, C). `noise_seed` seeds random noise maps.
    pub fn sample_z(&self, z: &Tensor, noise_seed: u64) -> Result<Tensor> {
        let c = self.generator.style_channels();
        if z.dims() != [1, c] {
            return Err(Error::invalid(format!("latent z has shape {:?}, expected [1, {c}]", z.dims())));
        }
        let z = z.to_device(self.generator.device())?.to_dtype(self.generator.dtype())?;
        let w = self.generator.map(&z)?;
        self.synthesize_from_w(&w, &mut noise_stream(noise_seed))
    }

    /// Returns the latent `z` (1, C) at `t` on the spherical path from the latent of seed `from` (t = 0) to
    /// that of seed `to` (t = 1): the latent of the frames of [`Self::interpolate`] in [`LatentSpace::Z`].
    pub fn interpolated_z(&self, from: u64, to: u64, t: f64) -> Result<Tensor> {
        slerp(&self.z_for_seed(from)?, &self.z_for_seed(to)?, t)
    }

    /// Interpolates between consecutive seeds with `steps` frames per segment (the last seed's frame ends the
    /// sequence), calling `frame(index, image)` for each. Noise maps stay those of the first seed, so only the
    /// latent moves.
    pub fn interpolate(
        &self,
        seeds: &[u64],
        steps: usize,
        space: LatentSpace,
        frame: &mut dyn FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<usize> {
        if seeds.len() < 2 || steps == 0 {
            return Err(Error::invalid(format!(
                "interpolation needs at least two seeds and one step per segment, got {} seeds and {steps} steps",
                seeds.len()
            )));
        }
        let zs = seeds.iter().map(|&s| self.z_for_seed(s)).collect::<Result<Vec<_>>>()?;
        let mut count = 0;
        for segment in 0..seeds.len() - 1 {
            let last = segment == seeds.len() - 2;
            let frames = if last { steps + 1 } else { steps };
            for i in 0..frames {
                let t = i as f64 / steps as f64;
                let w = match space {
                    LatentSpace::Z => self.generator.map(&self.interpolated_z(seeds[segment], seeds[segment + 1], t)?)?,
                    LatentSpace::W => {
                        let a = self.generator.map(&zs[segment])?;
                        let b = self.generator.map(&zs[segment + 1])?;
                        ((a * (1.0 - t))? + (b * t)?)?
                    }
                };
                let image = self.synthesize_from_w(&w, &mut noise_stream(seeds[0]))?;
                frame(count, &image)?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// Truncation, mixing, W+ broadcast, noise and synthesis for one style `w` (1, C).
    fn synthesize_from_w(&self, w: &Tensor, noise_rng: &mut SeededRng) -> Result<Tensor> {
        // The parameters are variables, so the image carries the graph of every feature map it was computed
        // from. Detaching it frees them: a caller that keeps many images (a grid) keeps only the pixels.
        Ok(self.synthesize_attached(w, noise_rng)?.detach())
    }

    fn synthesize_attached(&self, w: &Tensor, noise_rng: &mut SeededRng) -> Result<Tensor> {
        let l = self.generator.num_latents();
        let truncated = |w: &Tensor| -> Result<Tensor> {
            match &self.mean_latent {
                Some(mean) => truncate(w, mean, self.options.truncation),
                None => Ok(w.clone()),
            }
        };
        let w = truncated(w)?;
        let latent = match self.options.mix {
            Some(mix) => {
                let w2 = truncated(&self.generator.map(&self.z_for_seed(mix.seed)?)?)?;
                mix_styles(&w, &w2, l, mix.inject_index)?
            }
            None => broadcast_style(&w, l)?,
        };

        match self.options.noise {
            NoiseMode::Random => self.generator.synthesize(&latent, self.options.scale, Noise::Random(noise_rng)),
            NoiseMode::Fixed => self.generator.synthesize(&latent, self.options.scale, Noise::Buffers),
            NoiseMode::Zero => {
                let maps = self
                    .generator
                    .noise_shapes(self.options.scale)?
                    .into_iter()
                    .map(|(h, w)| Tensor::zeros((1, 1, h, w), self.generator.dtype(), self.generator.device()))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                self.generator.synthesize(&latent, self.options.scale, Noise::Explicit(&maps))
            }
        }
    }
}

/// Returns the stream of a seed's noise maps: the seed's stream after `z`, forked so that `z` and noise never share values.
fn noise_stream(seed: u64) -> SeededRng {
    let mut rng = SeededRng::new(seed);
    rng.fork()
}

/// Spherical interpolation between `a` and `b` (1, C) at `t ∈ [0, 1]`; linear when they are nearly parallel.
fn slerp(a: &Tensor, b: &Tensor, t: f64) -> Result<Tensor> {
    let a64: Vec<f64> = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let b64: Vec<f64> = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let cos = a64.iter().zip(&b64).map(|(x, y)| x * y).sum::<f64>() / (norm(&a64) * norm(&b64)).max(1e-12);
    let omega = cos.clamp(-1.0, 1.0).acos();
    let (wa, wb) = if omega.sin().abs() < 1e-6 {
        (1.0 - t, t)
    } else {
        (((1.0 - t) * omega).sin() / omega.sin(), (t * omega).sin() / omega.sin())
    };
    Ok(((a * wa)? + (b * wb)?)?)
}
