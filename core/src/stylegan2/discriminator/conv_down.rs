//! The `ConvDownLayer` of the reference and the stride-2 convolution it runs on.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::ops::conv::{conv2d, conv2d_input_grad};
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

/// Rearranges (N, C, 2a, 2b) into (N, 4C, a, b): channel `4c + 2r + s` contains the pixels `(2u + r, 2v + s)`
/// of channel `c`.
fn space_to_depth(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let phases = x.reshape((n, c, h / 2, 2, w / 2, 2))?.permute([0, 1, 3, 5, 2, 4])?;
    Ok(phases.reshape((n, 4 * c, h / 2, w / 2))?)
}

/// Inverts [`space_to_depth`]: (N, 4C, a, b) → (N, C, 2a, 2b).
fn depth_to_space(x: &Tensor) -> Result<Tensor> {
    let (n, c4, a, b) = x.dims4()?;
    let c = c4 / 4;
    let pixels = x.reshape((n, c, 2, 2, a, b))?.permute([0, 1, 4, 2, 5, 3])?;
    Ok(pixels.reshape((n, c, 2 * a, 2 * b))?)
}

/// Pads the two spatial axes with zeros at the end up to `(h, w)`.
fn pad_spatial_to(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, xh, xw) = x.dims4()?;
    Ok(x.pad_with_zeros(2, 0, h - xh)?.pad_with_zeros(3, 0, w - xw)?)
}

/// Applies a cross-correlation with stride 2 and no padding for an odd `k ≤ H, W`:
/// (N, C, H, W) with (O, C, k, k) → (N, O, ⌊(H − k)/2⌋ + 1, ⌊(W − k)/2⌋ + 1).
///
/// Computed as a stride-1 convolution on the polyphase (space-to-depth) layout: the input is split into its
/// four pixel phases (4C channels at half the side), and the kernel, zero-padded to the even side `k + 1`, is
/// split the same way. For a 3×3 kernel this does 16/9 of the stride-2 multiply-adds, against 4 times for
/// a stride-1 convolution followed by subsampling, and it runs on the fast stride-1 kernels of
/// [`crate::ops::conv`]. A 1×1 kernel needs only the even phase, so it subsamples first.
fn conv2d_stride2(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, k, _) = w.dims4()?;
    let even = pad_spatial_to(x, h.div_ceil(2) * 2, wd.div_ceil(2) * 2)?;

    if k == 1 {
        let (n, c, eh, ew) = even.dims4()?;
        let subsampled = space_to_depth(&even)?.reshape((n, c, 4, eh / 2, ew / 2))?.narrow(2, 0, 1)?;
        let subsampled = subsampled.reshape((n, c, eh / 2, ew / 2))?;
        return conv2d(&subsampled, w, 0);
    }

    // The polyphase output has ⌈H/2⌉ − (k − 1)/2 rows, which equals ⌊(H − k)/2⌋ + 1 for odd k, so it needs
    // no trimming.
    let padded_kernel = pad_spatial_to(w, k + 1, k + 1)?;
    conv2d(&space_to_depth(&even)?, &space_to_depth(&padded_kernel)?, 0)
}

/// Computes `∂(Σ conv2d_stride2(x, w) · g)/∂x` for an input of spatial size `input_hw`. The result is linear
/// in `g` and differentiable in `g` and `w`, because it is built from [`conv2d_input_grad`] and reshapes.
fn conv2d_stride2_input_grad(g: &Tensor, w: &Tensor, input_hw: (usize, usize)) -> Result<Tensor> {
    let (h, wd) = input_hw;
    let (_, _, k, _) = w.dims4()?;

    // Both branches yield the gradient of the four phases at ⌈H/2⌉ × ⌈W/2⌉.
    let phases = if k == 1 {
        // Only the even phase fed the convolution, so the three others get zero gradient.
        let g_even = conv2d_input_grad(g, w, 0)?;
        let (n, c, gh, gw) = g_even.dims4()?;
        g_even.reshape((n, c, 1, gh, gw))?.pad_with_zeros(2, 0, 3)?.reshape((n, 4 * c, gh, gw))?
    } else {
        let padded_kernel = pad_spatial_to(w, k + 1, k + 1)?;
        conv2d_input_grad(g, &space_to_depth(&padded_kernel)?, 0)?
    };

    Ok(depth_to_space(&phases)?.narrow(2, 0, h)?.narrow(3, 0, wd)?)
}
