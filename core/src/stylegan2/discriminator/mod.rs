//! The StyleGAN2 discriminator in its MS-PIE form and its baseline form, as in MMGeneration v0.7.3
//! (`MSStyleGAN2Discriminator` and `StyleGAN2Discriminator`).
//!
//! The MS-PIE form is fully convolutional up to an adaptive average pool to 2×2, so one discriminator scores
//! every training scale (256, 384 and 512 px for a model built with `in_size` 256). The baseline form
//! flattens its final 4×4 map and therefore scores only `in_size × in_size` images.
//!
//! Dataflow, with `R = log2(in_size) − 2` residual blocks:
//!
//! ```text
//! convs.0        1×1 conv 3 → C(in_size), fused bias leaky ReLU
//! convs.1 … R    ResBlock C(r) → C(r/2): (conv2(conv1(x)) + skip(x)) / √2, halves the side
//! mbstd_layer    minibatch stddev, appends one channel per channel group
//! final_conv     3×3 conv C(4) + 1 → C(4), fused bias leaky ReLU
//! adaptive pool  to 2×2 (MS-PIE only)
//! final_linear   flatten in (channel, row, column) order, linear → C(4) with fused bias leaky ReLU,
//!                linear → 1 (the logit)
//! ```
//!
//! Every block has `forward_traced` and `input_grad`. The latter is an explicit backward pass built from
//! differentiable tensor ops, because candle's own backward pass detaches the gradients it returns and so
//! cannot be differentiated again. The R1 penalty ([`crate::stylegan2::r1`]) back-propagates through it.

mod adaptive_pool;
mod config;
mod conv_down;
mod minibatch_stddev;
mod res_block;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::stylegan2::equalized::{EqualizedLinear, LinearTrace};
use crate::stylegan2::params::ParamPath;

pub use adaptive_pool::AdaptiveAvgPool2d;
pub use config::{DiscriminatorConfig, DiscriminatorKind};
pub use conv_down::{ConvDownLayer, ConvDownTrace};
pub use minibatch_stddev::{MinibatchStddev, MinibatchStddevTrace, MBSTD_EPS};
pub use res_block::{ResBlock, ResBlockTrace};

/// Channels of the discriminator's input (BGR images).
pub const IMAGE_CHANNELS: usize = 3;

/// Side of the MS-PIE discriminator's adaptive pool output.
pub const POOL_SIZE: usize = 2;

/// Side of the baseline discriminator's last feature map, which it flattens to `C(4)·4·4` features.
pub const BASELINE_FINAL_SIDE: usize = 4;

/// Unnormalised taps of the blur before every downsampling convolution. The 2-D kernel `K` is their outer
/// product divided by 64.
const BLUR_TAPS: [f64; 4] = [1.0, 3.0, 3.0, 1.0];

/// Maximum difference tolerated between a stored blur kernel buffer and `K`.
const BLUR_KERNEL_TOLERANCE: f64 = 1e-6;

/// The StyleGAN2 discriminator (MS-PIE or baseline), with its parameters in a
/// [`crate::stylegan2::params::ParamStore`] under the reference's keys (`convs.0.0.conv.weight_orig`, …).
#[derive(Debug, Clone)]
pub struct Discriminator {
    config: DiscriminatorConfig,
    /// `convs.0`: 1×1 conv from the image to C(in_size) channels.
    input_conv: ConvDownLayer,
    /// `convs.1 … convs.R`.
    blocks: Vec<ResBlock>,
    mbstd: MinibatchStddev,
    final_conv: ConvDownLayer,
    /// `Some` for the MS-PIE discriminator.
    pool: Option<AdaptiveAvgPool2d>,
    /// `final_linear.0`: flattened features → C(4), with fused bias leaky ReLU.
    final_linear: EqualizedLinear,
    /// `final_linear.1`: C(4) → 1 with bias and no activation.
    logit: EqualizedLinear,
    /// Dtype of the parameters, which the input must share.
    dtype: DType,
    span: tracing::Span,
}

/// The activations of one discriminator pass, kept for [`Discriminator::input_grad`].
#[derive(Debug, Clone)]
pub struct DiscriminatorTrace {
    batch: usize,
    input_conv: ConvDownTrace,
    blocks: Vec<ResBlockTrace>,
    mbstd: MinibatchStddevTrace,
    final_conv: ConvDownTrace,
    /// Shape (C, H, W) of the final feature map before pooling and flattening.
    final_chw: (usize, usize, usize),
    final_linear: LinearTrace,
    logit: LinearTrace,
}

impl Discriminator {
    /// Builds the discriminator, creating its parameters under `path` with the reference initialisation rules.
    /// The parameters are zero until [`crate::stylegan2::params::ParamStore::initialise`] or a load.
    pub fn new(config: DiscriminatorConfig, path: &ParamPath) -> Result<Self> {
        config.validate()?;
        let table = &config.channels;
        let convs = path.pp("convs");

        let input_conv = ConvDownLayer::new(&convs.pp(0), IMAGE_CHANNELS, table.width(config.in_size), 1, false, true)?;

        let mut blocks = Vec::with_capacity(config.num_blocks());
        for index in 1..=config.num_blocks() {
            let resolution = config.in_size >> (index - 1);
            blocks.push(ResBlock::new(&convs.pp(index), table.width(resolution), table.width(resolution / 2))?);
        }

        let width = table.width(4);
        let mbstd = MinibatchStddev::new(config.mbstd_group_size, config.mbstd_channel_groups)?;
        let final_conv =
            ConvDownLayer::new(&path.pp("final_conv"), width + config.mbstd_channel_groups, width, 3, false, true)?;

        let (pool, flattened) = match config.kind {
            DiscriminatorKind::MsPie => {
                (Some(AdaptiveAvgPool2d::new((POOL_SIZE, POOL_SIZE))?), width * POOL_SIZE * POOL_SIZE)
            }
            DiscriminatorKind::Baseline => (None, width * BASELINE_FINAL_SIDE * BASELINE_FINAL_SIDE),
        };
        let final_linear = EqualizedLinear::new(&path.pp("final_linear").pp(0), flattened, width, 1.0, 0.0, true)?;
        let logit = EqualizedLinear::new(&path.pp("final_linear").pp(1), width, 1, 1.0, 0.0, false)?;

        let span = tracing::debug_span!("discriminator", kind = ?config.kind, in_size = config.in_size);
        Ok(Discriminator {
            config,
            input_conv,
            blocks,
            mbstd,
            final_conv,
            pool,
            final_linear,
            logit,
            dtype: path.dtype(),
            span,
        })
    }

    pub fn config(&self) -> &DiscriminatorConfig {
        &self.config
    }

    /// Checks that `x` is a batch this discriminator can score: (N, 3, H, W) in the parameters' dtype, with
    /// a batch the minibatch-stddev layer can group and sides every downsampling step halves exactly.
    ///
    /// The MS-PIE form takes any H and W that are positive multiples of `2^R` (R ResBlocks), so its final
    /// map is at least 1×1. The reference would also run other sides, flooring odd ones in the stride-2
    /// convolutions, but that shifts the sampling grid and no reference config trains on such sizes. The
    /// baseline form takes only `in_size × in_size`.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        let &[n, c, h, w] = dims else {
            return Err(Error::invalid(format!(
                "discriminator input must be an (N, 3, H, W) image batch, got shape {dims:?}"
            )));
        };
        if c != IMAGE_CHANNELS {
            return Err(Error::invalid(format!(
                "discriminator input has {c} channels, expected {IMAGE_CHANNELS} (BGR images), shape {dims:?}"
            )));
        }
        if x.dtype() != self.dtype {
            return Err(Error::invalid(format!(
                "discriminator input has dtype {:?} but the parameters are {:?}: convert the input",
                x.dtype(),
                self.dtype
            )));
        }
        self.check_batch(n)?;
        self.check_sides(h, w)
    }

    /// Checks that the minibatch-stddev layer can group a batch of `n`.
    pub fn check_batch(&self, n: usize) -> Result<()> {
        self.mbstd.check_batch(n)
    }

    /// Checks that this discriminator can score `h × w` images.
    pub fn check_sides(&self, h: usize, w: usize) -> Result<()> {
        match self.config.kind {
            DiscriminatorKind::MsPie => {
                let factor = self.config.downsampling_factor();
                if h == 0 || w == 0 || !h.is_multiple_of(factor) || !w.is_multiple_of(factor) {
                    return Err(Error::invalid(format!(
                        "MS-PIE discriminator with in_size {} halves the image {} times, so height and width \
                         must be positive multiples of {factor}, got {h}×{w}: resize or crop the images",
                        self.config.in_size,
                        self.config.num_blocks()
                    )));
                }
            }
            DiscriminatorKind::Baseline => {
                let side = self.config.in_size;
                if h != side || w != side {
                    return Err(Error::invalid(format!(
                        "baseline discriminator scores only {side}×{side} images, got {h}×{w}: resize the \
                         images or use the MS-PIE discriminator"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Scores a batch: (N, 3, H, W) → logits (N, 1). Higher means "more real".
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_traced(x)?.0)
    }

    /// Scores a batch and keeps the activations for [`Discriminator::input_grad`]. The trace contains tensors
    /// attached to the graph, so a penalty on the input gradient back-propagates to the parameters.
    pub fn forward_traced(&self, x: &Tensor) -> Result<(Tensor, DiscriminatorTrace)> {
        let _enter = self.span.enter();
        self.check_input(x)?;

        let (mut h, input_conv) = self.input_conv.forward_traced(x)?;

        let mut blocks = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (out, trace) = block.forward_traced(&h)?;
            blocks.push(trace);
            h = out;
        }

        let (h, mbstd) = self.mbstd.forward_traced(&h)?;
        let (h, final_conv) = self.final_conv.forward_traced(&h)?;
        let (_, c, fh, fw) = h.dims4()?;

        let pooled = match &self.pool {
            Some(pool) => pool.forward(&h)?,
            None => h,
        };
        // Row-major flattening gives feature index (c·S + i)·S + j, the reference's (channel, row, column).
        let features = pooled.flatten_from(1)?;

        let (hidden, final_linear) = self.final_linear.forward_traced(&features)?;
        let (logits, logit) = self.logit.forward_traced(&hidden)?;

        let trace = DiscriminatorTrace {
            batch: x.dim(0)?,
            input_conv,
            blocks,
            mbstd,
            final_conv,
            final_chw: (c, fh, fw),
            final_linear,
            logit,
        };
        Ok((logits, trace))
    }

    /// Computes `∂(Σ_n D(x)_n · g_n)/∂x` for the traced input `x`, with `g` of shape (N, 1).
    ///
    /// The pass is built from differentiable tensor ops, so the result can be differentiated again with respect
    /// to the parameters, as the R1 penalty does. Through the minibatch-stddev layer, the gradient of sample n
    /// also contains terms from the logits of the other samples of its group.
    pub fn input_grad(&self, trace: &DiscriminatorTrace, g: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        if g.dims() != [trace.batch, 1] {
            return Err(Error::invalid(format!(
                "discriminator output gradient must have shape [{}, 1], got {:?}",
                trace.batch,
                g.dims()
            )));
        }

        let g = self.logit.input_grad(&trace.logit, g)?;
        let g = self.final_linear.input_grad(&trace.final_linear, &g)?;

        let (c, fh, fw) = trace.final_chw;
        let g = match &self.pool {
            Some(pool) => {
                let (ph, pw) = pool.output_hw();
                pool.input_grad(&g.reshape((trace.batch, c, ph, pw))?, (fh, fw))?
            }
            None => g.reshape((trace.batch, c, fh, fw))?,
        };

        let g = self.final_conv.input_grad(&trace.final_conv, &g)?;
        let mut g = self.mbstd.input_grad(&trace.mbstd, &g)?;
        for (block, block_trace) in self.blocks.iter().zip(&trace.blocks).rev() {
            g = block.input_grad(block_trace, &g)?;
        }
        self.input_conv.input_grad(&trace.input_conv, &g)
    }

    /// Returns whether a checkpoint key (without the `discriminator.` prefix) names a buffer rather than a
    /// parameter. Pass it to [`crate::stylegan2::params::ParamStore::load`] and check the buffers with
    /// [`Discriminator::check_buffers`].
    pub fn is_buffer_key(key: &str) -> bool {
        key.ends_with(".kernel")
    }

    /// Returns the checkpoint keys of the blur kernel buffers that this model expects, relative to its root.
    pub fn kernel_keys(&self) -> Vec<&str> {
        self.blocks.iter().flat_map(ResBlock::kernel_keys).collect()
    }

    /// Checks the blur kernel buffers of a checkpoint: every expected `*.kernel` under `prefix` must be
    /// present and equal to `K = [1,3,3,1]ᵀ[1,3,3,1]/64`, and no other `*.kernel` key may appear there.
    pub fn check_buffers(&self, tensors: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
        let expected = self.kernel_keys();
        let mut unexpected: Vec<&String> = tensors
            .keys()
            .filter(|k| k.strip_prefix(prefix).is_some_and(|key| Self::is_buffer_key(key) && !expected.contains(&key)))
            .collect();
        unexpected.sort();
        if let Some(key) = unexpected.first() {
            return Err(Error::model(format!(
                "unexpected buffer '{key}': the checkpoint does not match this discriminator configuration"
            )));
        }

        let reference = blur_kernel(&Device::Cpu)?;
        for key in expected {
            let full = format!("{prefix}{key}");
            let kernel = tensors.get(&full).ok_or_else(|| Error::model(format!("missing blur kernel '{full}'")))?;
            if kernel.dims() != [4, 4] {
                return Err(Error::model(format!(
                    "blur kernel '{full}' has shape {:?}, expected [4, 4]",
                    kernel.dims()
                )));
            }
            let difference = (kernel.to_device(&Device::Cpu)?.to_dtype(DType::F64)? - &reference)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f64>()?;
            if difference > BLUR_KERNEL_TOLERANCE {
                return Err(Error::model(format!(
                    "blur kernel '{full}' differs from [1,3,3,1]ᵀ[1,3,3,1]/64 by up to {difference:e}: the \
                     checkpoint was not written by a StyleGAN2 discriminator with the standard blur"
                )));
            }
        }
        Ok(())
    }
}

/// Builds the 4×4 blur kernel `K` (sum 1) in f64.
pub fn blur_kernel(device: &Device) -> Result<Tensor> {
    let sum: f64 = BLUR_TAPS.iter().sum();
    let values: Vec<f64> =
        BLUR_TAPS.iter().flat_map(|row| BLUR_TAPS.iter().map(move |col| row * col / (sum * sum))).collect();
    Ok(Tensor::from_vec(values, (4, 4), device)?)
}
