//! The residual block of the StyleGAN2 discriminator.

use candle_core::Tensor;

use crate::error::Result;
use crate::stylegan2::discriminator::conv_down::{ConvDownLayer, ConvDownTrace};
use crate::stylegan2::params::ParamPath;

/// The reference's `ResBlock`: `(conv2(conv1(x)) + skip(x)) / √2`, halving the side.
///
/// `conv1` is a 3×3 stride-1 layer C_in → C_in, `conv2` a 3×3 downsampling layer C_in → C_out, both with
/// fused bias leaky ReLU, and `skip` a 1×1 downsampling layer C_in → C_out without bias or activation.
#[derive(Debug, Clone)]
pub struct ResBlock {
    conv1: ConvDownLayer,
    conv2: ConvDownLayer,
    skip: ConvDownLayer,
    span: tracing::Span,
}

/// Activations of a [`ResBlock`] forward pass, kept for its `input_grad`.
#[derive(Debug, Clone)]
pub struct ResBlockTrace {
    conv1: ConvDownTrace,
    conv2: ConvDownTrace,
    skip: ConvDownTrace,
}

impl ResBlock {
    /// Builds the block at `path` (keys `conv1.*`, `conv2.*`, `skip.*`).
    pub fn new(path: &ParamPath, in_channels: usize, out_channels: usize) -> Result<Self> {
        let conv1 = ConvDownLayer::new(&path.pp("conv1"), in_channels, in_channels, 3, false, true)?;
        let conv2 = ConvDownLayer::new(&path.pp("conv2"), in_channels, out_channels, 3, true, true)?;
        let skip = ConvDownLayer::new(&path.pp("skip"), in_channels, out_channels, 1, true, false)?;
        let span = tracing::trace_span!("res_block", in_channels, out_channels);
        Ok(ResBlock { conv1, conv2, skip, span })
    }

    /// Applies the block: (N, C_in, H, W) → (N, C_out, H/2, W/2) for even H and W.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_traced(x)?.0)
    }

    /// Applies the block and also returns the trace that [`ResBlock::input_grad`] needs.
    pub fn forward_traced(&self, x: &Tensor) -> Result<(Tensor, ResBlockTrace)> {
        let _enter = self.span.enter();
        let (h, conv1) = self.conv1.forward_traced(x)?;
        let (h, conv2) = self.conv2.forward_traced(&h)?;
        let (skip, skip_trace) = self.skip.forward_traced(x)?;
        let out = ((h + skip)? / std::f64::consts::SQRT_2)?;
        Ok((out, ResBlockTrace { conv1, conv2, skip: skip_trace }))
    }

    /// Computes `∂(Σ forward(x) · g)/∂x` for the traced input.
    pub fn input_grad(&self, trace: &ResBlockTrace, g: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let g = (g / std::f64::consts::SQRT_2)?;
        let through_convs = self.conv1.input_grad(&trace.conv1, &self.conv2.input_grad(&trace.conv2, &g)?)?;
        let through_skip = self.skip.input_grad(&trace.skip, &g)?;
        Ok((through_convs + through_skip)?)
    }

    /// Returns the checkpoint keys of the blur kernel buffers of `conv2` and `skip`.
    pub(super) fn kernel_keys(&self) -> impl Iterator<Item = &str> {
        [&self.conv1, &self.conv2, &self.skip].into_iter().filter_map(ConvDownLayer::kernel_key)
    }
}
