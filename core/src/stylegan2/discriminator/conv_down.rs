//! The `ConvDownLayer` of the reference and the stride-2 convolution it runs on.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::ops::stride2::{conv2d_stride2, conv2d_stride2_input_grad};
use crate::stylegan2::activation::FusedBiasLeakyRelu;
use crate::stylegan2::equalized::EqualizedConv2d;
use crate::stylegan2::fir::Fir;
use crate::stylegan2::params::{Init, ParamPath};

/// The `ConvDownLayer` of the reference: an equalized convolution with an optional blur and stride 2 in
/// front and an optional fused bias leaky ReLU behind.
///
/// Keys under the module path, in the reference's order:
/// - Without downsampling: `0.conv.weight_orig` (out, in, k, k), then `1.bias` when the layer has an activation.
/// - With downsampling: the buffer `0.kernel` (the 4×4 blur `K`, not a parameter), `1.conv.weight_orig`,
///   then `2.bias` when the layer has an activation.
#[derive(Debug, Clone)]
pub struct ConvDownLayer {
    conv: EqualizedConv2d,
    /// Blur in front of a stride-2 convolution, or `None` for a stride-1 convolution with padding `k/2`.
    blur: Option<Fir>,
    activation: Option<FusedBiasLeakyRelu>,
    /// Checkpoint key of the blur kernel buffer (downsampling layers only).
    kernel_key: Option<String>,
    span: tracing::Span,
}

/// Activations of a [`ConvDownLayer`] forward pass, kept for its `input_grad`.
#[derive(Debug, Clone)]
pub struct ConvDownTrace {
    /// Side lengths of the layer input.
    input_hw: (usize, usize),
    /// Side lengths after the blur (the input's for a stride-1 layer).
    blurred_hw: (usize, usize),
    /// Slope of the activation, when the layer has one.
    slope: Option<Tensor>,
}

impl ConvDownLayer {
    /// Builds the layer at `path`. `kernel` must be odd. A layer with an activation also has a bias (it moves
    /// into the fused activation), and a layer without one has neither, as in the reference's skip branch.
    pub fn new(
        path: &ParamPath,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        downsample: bool,
        activate: bool,
    ) -> Result<Self> {
        if kernel.is_multiple_of(2) {
            return Err(Error::invalid(format!(
                "ConvDownLayer kernel size {kernel} is invalid: use an odd size such as 1 or 3"
            )));
        }

        let (conv, blur, kernel_key, next_index) = if downsample {
            // The blur pads p = (4 − 2) + (k − 1) zeros in total, ⌈p/2⌉ before and ⌊p/2⌋ after, so a stride-2
            // conv then halves an even side exactly.
            let total_pad = 2 + (kernel - 1);
            let blur = Fir::blur((total_pad.div_ceil(2), total_pad / 2));
            let conv = EqualizedConv2d::new(&path.pp(1).pp("conv"), in_channels, out_channels, kernel, 0)?;
            (conv, Some(blur), Some(path.pp(0).key("kernel")), 2)
        } else {
            let conv = EqualizedConv2d::new(&path.pp(0).pp("conv"), in_channels, out_channels, kernel, kernel / 2)?;
            (conv, None, None, 1)
        };

        let activation = if activate {
            let bias = path.pp(next_index).param("bias", &[out_channels], Init::Constant(0.0))?;
            Some(FusedBiasLeakyRelu::new(bias, 1.0))
        } else {
            None
        };

        let span = tracing::trace_span!("conv_down_layer", kernel, downsample);
        Ok(ConvDownLayer { conv, blur, activation, kernel_key, span })
    }

    pub fn in_channels(&self) -> usize {
        self.conv.in_channels()
    }

    pub fn out_channels(&self) -> usize {
        self.conv.out_channels()
    }

    /// Returns whether the layer halves the spatial size (blur, then stride-2 convolution).
    pub fn downsamples(&self) -> bool {
        self.blur.is_some()
    }

    /// Returns the checkpoint key of the blur kernel buffer, relative to the store's root (downsampling layers
    /// only).
    pub fn kernel_key(&self) -> Option<&str> {
        self.kernel_key.as_deref()
    }

    /// Applies the layer: (N, in, H, W) → (N, out, H, W), or (N, out, ⌊H/2⌋, ⌊W/2⌋) with downsampling, which
    /// needs H, W ≥ 2.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_traced(x)?.0)
    }

    /// Applies the layer and also returns the trace that [`ConvDownLayer::input_grad`] needs.
    pub fn forward_traced(&self, x: &Tensor) -> Result<(Tensor, ConvDownTrace)> {
        let _enter = self.span.enter();
        let (_, _, h, w) = x.dims4()?;
        if self.downsamples() && (h < 2 || w < 2) {
            return Err(Error::invalid(format!(
                "downsampling ConvDownLayer needs an input of at least 2×2 pixels, got {h}×{w}"
            )));
        }

        let (y, blurred_hw) = match &self.blur {
            Some(blur) => {
                let blurred = blur.forward(x)?;
                let (_, _, bh, bw) = blurred.dims4()?;
                (conv2d_stride2(&blurred, &self.conv.effective_weight()?)?, (bh, bw))
            }
            None => (self.conv.forward(x)?, (h, w)),
        };

        let (out, slope) = match &self.activation {
            Some(activation) => {
                let (out, slope) = activation.forward_traced(&y)?;
                (out, Some(slope))
            }
            None => (y, None),
        };
        Ok((out, ConvDownTrace { input_hw: (h, w), blurred_hw, slope }))
    }

    /// Computes `∂(Σ forward(x) · g)/∂x` for the traced input. The result is linear in `g` and differentiable
    /// in `g` and the weight.
    pub fn input_grad(&self, trace: &ConvDownTrace, g: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let g = match &trace.slope {
            Some(slope) => FusedBiasLeakyRelu::input_grad(slope, g)?,
            None => g.clone(),
        };
        match &self.blur {
            Some(blur) => {
                let g_blurred = conv2d_stride2_input_grad(&g, &self.conv.effective_weight()?, trace.blurred_hw)?;
                blur.input_grad(&g_blurred, trace.input_hw)
            }
            None => self.conv.input_grad(&g),
        }
    }
}

