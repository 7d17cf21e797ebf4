//! The multi-scale SinGAN generator (mmgen `SinGANMultiScaleGenerator` and `SinGANMSGeneratorPE`).
//!
//! Stage `s` turns noise plus the upsampled image of stage `s − 1` into a sharper image of its own
//! size. The variants of Xu et al. differ in how the stage input is built:
//!
//! | variant | stage input `x_s` |
//! | --- | --- |
//! | baseline | `pad₀(z_s · w_s) + pad₀(u_s)`: a 5-pixel zero frame, the implicit positional signal |
//! | interpolation padding | `z_s · w_s + bicubic(u_s → padded size)`: no zeros reach the network |
//! | CSG / SPE, stage 0 | `(z_0 + E) · w_0`: the explicit encoding `E` replaces padding as the position source |
//! | CSG / SPE, stage ≥ 1 | `z_s · w_s + u_s`, convolutions zero-padded by 1 |

use candle_core::{Device, Tensor};

use crate::encoding::PositionalEncoding;
use crate::error::{Error, Result};
use crate::layers::NormMode;
use crate::resample::{resize, ResizeKernel};
use crate::rng::SeededRng;
use crate::singan::block::GeneratorBlock;
use crate::singan::config::SinGanConfig;

/// Upsampler between stages: PyTorch bicubic (A = −0.75) with `align_corners=True`.
pub const STAGE_UPSAMPLER: ResizeKernel = ResizeKernel::Bicubic { align_corners: true };

/// Starting point of a forward pass.
#[derive(Debug, Clone)]
pub struct StageStart {
    /// First stage to run.
    pub stage: usize,
    /// Image `u` entering that stage at its unpadded size, (N, 3, H, W); zeros when `None`.
    pub previous: Option<Tensor>,
}

/// The stack of generator blocks, one per stage, plus the stage-0 positional encoding if any.
#[derive(Debug, Clone)]
pub struct SinGanGenerator {
    pub config: SinGanConfig,
    pub blocks: Vec<GeneratorBlock>,
    encoding: Option<PositionalEncoding>,
}

impl SinGanGenerator {
    /// Builds and initialises every stage block, as the reference does at model construction.
    pub fn new(config: &SinGanConfig, num_stages: usize, rng: &mut SeededRng, device: &Device) -> Result<Self> {
        let blocks = (0..num_stages)
            .map(|stage| GeneratorBlock::new(config.generator_block_shape(stage), rng, device))
            .collect::<Result<Vec<_>>>()?;
        let encoding = config.generator.positional_encoding.as_ref().map(PositionalEncoding::new);
        Ok(SinGanGenerator { config: config.clone(), blocks, encoding })
    }

    pub fn num_stages(&self) -> usize {
        self.blocks.len()
    }

    /// Runs stages `start.stage ..= last_stage` and returns every stage output `g_s` (unpadded size).
    ///
    /// `noises[s]` is the raw noise of stage `s`, before amplitude, encoding and padding, shaped
    /// (N or 1, C_s, H_s', W_s') with `H_s' = H_s + 2P` when the config samples padded noise.
    /// `stage_sizes[s]` is the unpadded (height, width) of stage `s`. Outputs of stages before
    /// `trainable_stage` are detached, so gradients reach only that stage's block.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        noises: &[Tensor],
        noise_weights: &[f64],
        stage_sizes: &[(usize, usize)],
        start: &StageStart,
        last_stage: usize,
        mode: NormMode,
        trainable_stage: Option<usize>,
    ) -> Result<Vec<Tensor>> {
        if last_stage >= self.blocks.len() || start.stage > last_stage {
            return Err(Error::invalid(format!(
                "stages {}..={last_stage} requested, but the generator has stages 0..={}",
                start.stage,
                self.blocks.len() - 1
            )));
        }
        if noises.len() <= last_stage || noise_weights.len() <= last_stage || stage_sizes.len() <= last_stage {
            return Err(Error::invalid(format!(
                "{} noise maps, {} noise amplitudes and {} stage sizes given for stages up to {last_stage}",
                noises.len(),
                noise_weights.len(),
                stage_sizes.len()
            )));
        }

        let batch = noises[start.stage].dim(0)?;
        let device = noises[start.stage].device().clone();
        let (h0, w0) = stage_sizes[start.stage];
        let mut previous = match &start.previous {
            Some(image) => image.clone(),
            None => Tensor::zeros((batch, 3, h0, w0), candle_core::DType::F32, &device)?,
        };

        let mut outputs = Vec::with_capacity(last_stage + 1 - start.stage);
        for stage in start.stage..=last_stage {
            let input = self.stage_input(stage, &noises[stage], noise_weights[stage], &previous, stage_sizes[stage])?;
            let mut image = self.blocks[stage].forward(&input, &previous, mode)?;
            if trainable_stage.is_some_and(|t| stage < t) {
                image = image.detach();
            }

            if stage < last_stage {
                let (h, w) = stage_sizes[stage + 1];
                previous = resize(&image, h, w, STAGE_UPSAMPLER)?;
            }
            outputs.push(image);
        }
        Ok(outputs)
    }

    /// Builds the input `x_s` of stage `s` from its noise and the previous image.
    fn stage_input(
        &self,
        stage: usize,
        noise: &Tensor,
        amplitude: f64,
        previous: &Tensor,
        (height, width): (usize, usize),
    ) -> Result<Tensor> {
        let g = &self.config.generator;
        let pad = self.config.head_padding();

        if let (Some(encoding), 0) = (&self.encoding, stage) {
            // Stage 0 of CSG/SPE: (noise + E) · w_0; a 1-channel noise broadcasts over the encoding channels.
            let (_, _, nh, nw) = noise.dims4()?;
            let grid = encoding.grid(1, nh, nw, noise.device())?;
            return Ok((noise.broadcast_add(&grid)? * amplitude)?);
        }

        let scaled = (noise * amplitude)?;
        if !g.pad_at_head {
            return Ok(scaled.broadcast_add(previous)?);
        }

        let (padded_h, padded_w) = (height + 2 * pad, width + 2 * pad);
        if g.interp_pad {
            // Interpolation padding: stretch the image (and unpadded noise) to the padded size.
            let stretched = resize(previous, padded_h, padded_w, STAGE_UPSAMPLER)?;
            let noise = if g.noise_with_pad { scaled } else { resize(&scaled, padded_h, padded_w, STAGE_UPSAMPLER)? };
            return Ok(noise.broadcast_add(&stretched)?);
        }

        // Baseline: a frame of zeros around both terms.
        let noise = scaled.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
        let image = previous.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
        Ok(noise.broadcast_add(&image)?)
    }
}
