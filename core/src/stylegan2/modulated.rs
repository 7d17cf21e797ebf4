//! Modulated convolutions of the StyleGAN2 synthesis network, with their explicit backward passes.
//!
//! The reference scales the kernel per sample, `W_n[o,i] = V'[o,i]·s_n[i]`, demodulates it by
//! `d_n[o] = (Σ_{i,k} W_n[o,i,k]² + 1e-8)^(−1/2)` and runs a grouped convolution. The same computation is
//! written here as "modulate the input, convolve with the shared kernel, scale the output":
//!
//! ```text
//! y_n = d_n ⊙ (V' ⋆ (s_n ⊙ x_n)),   d_n[o] = (Σ_i s_n[i]² · Σ_k V'[o,i,k]² + 1e-8)^(−1/2)
//! ```
//!
//! which runs on the fast shared-weight convolution and gives a backward pass in closed form. Every
//! `backward` below returns `∂(Σ output · g)/∂input` and `∂(Σ output · g)/∂w` (the style row) from ordinary
//! differentiable tensor ops, so the path-length penalty built on them can be back-propagated to the
//! parameters (candle's own backward detaches its results).

use candle_core::{Tensor, Var, D};

use crate::error::{Error, Result};
use crate::ops::conv::{conv2d, conv2d_input_grad};
use crate::ops::stride2::{conv2d_stride2, conv_transpose2d_stride2};
use crate::resample::{interpolation_matrix, resize};
use crate::stylegan2::activation::FusedBiasLeakyRelu;
use crate::stylegan2::equalized::{EqualizedLinear, LinearTrace};
use crate::stylegan2::fir::Fir;
use crate::stylegan2::head::BILINEAR;
use crate::stylegan2::params::{Init, ParamPath};

/// Epsilon inside the reciprocal square root of the demodulation.
pub const DEMODULATION_EPSILON: f64 = 1e-8;

/// Channels of the generated image (BGR).
pub const IMAGE_CHANNELS: usize = 3;

/// Kernel application of a modulated convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvMode {
    /// Stride-1 cross-correlation with the given zero padding on every side.
    Padded(usize),
    /// Transposed convolution with stride 2 and padding 0, output side `2r + k − 2` (`2r + 1` for 3×3). It
    /// inserts zeros between the input pixels, then takes the full correlation that [`conv2d_input_grad`] computes.
    TransposedStride2,
}

/// Upsampling variant of the first conv of a block, which doubles the side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsampling {
    /// No change of size.
    None,
    /// Convolution at `r`, then a bilinear resize (`align_corners`) to `2·r' + interp_pad`, with `r'` the conv
    /// output side.
    ConvThenResize { interp_pad: usize },
    /// Bilinear resize to `2r + interp_pad`, then convolution.
    ResizeThenConv { interp_pad: usize },
    /// Transposed conv (stride 2) to `2r + 1`, then the blur with `4·K` and padding (1, 1) to `2r`.
    TransposedConvBlur,
}

/// A modulated convolution (`ModulatedConv2d` / `ModulatedPEConv2d` without its upsampling).
///
/// Keys under the module path: `weight_orig` (1, Cout, Cin, k, k), `style_modulation.linear.weight_orig`
/// (Cin, C) and `style_modulation.bias` (Cin, initialised to 1).
#[derive(Debug, Clone)]
pub struct ModulatedConv2d {
    weight: Var,
    /// Equalized-learning-rate factor `1/√(Cin·k²)` of the kernel.
    weight_scale: f64,
    style_modulation: EqualizedLinear,
    demodulate: bool,
    mode: ConvMode,
}

/// Forward-pass tensors that [`ModulatedConv2d::backward`] needs.
#[derive(Debug, Clone)]
pub struct ModulatedTrace {
    /// Convolution input `x` (after any resize before the conv).
    input: Tensor,
    /// Style `s`, (N, Cin).
    style: Tensor,
    style_trace: LinearTrace,
    /// `V' ⋆ (s ⊙ x)` before demodulation.
    conv_out: Tensor,
    /// Demodulation factors `d`, (N, Cout).
    demod: Option<Tensor>,
}

impl ModulatedConv2d {
    /// Builds the layer at `path`.
    pub fn new(
        path: &ParamPath,
        in_channels: usize,
        out_channels: usize,
        kernel_size: usize,
        style_channels: usize,
        demodulate: bool,
        mode: ConvMode,
    ) -> Result<Self> {
        let weight = path.param(
            "weight_orig",
            &[1, out_channels, in_channels, kernel_size, kernel_size],
            Init::Normal { std: 1.0 },
        )?;
        let style_modulation =
            EqualizedLinear::new(&path.pp("style_modulation"), style_channels, in_channels, 1.0, 1.0, false)?;
        let fan_in = in_channels * kernel_size * kernel_size;
        Ok(ModulatedConv2d { weight, weight_scale: 1.0 / (fan_in as f64).sqrt(), style_modulation, demodulate, mode })
    }

    pub fn in_channels(&self) -> usize {
        self.weight.dims()[2]
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn kernel_size(&self) -> usize {
        self.weight.dims()[3]
    }

    pub fn mode(&self) -> ConvMode {
        self.mode
    }

    /// Returns the shared kernel `V' = V/√(Cin·k²)`, (Cout, Cin, k, k).
    pub fn effective_weight(&self) -> Result<Tensor> {
        Ok((self.weight.as_tensor().squeeze(0)? * self.weight_scale)?)
    }

    /// Returns the output side for an input side `n`, or an error when `n` is too small for the kernel.
    pub fn output_len(&self, n: usize) -> Result<usize> {
        let k = self.kernel_size();
        match self.mode {
            ConvMode::Padded(p) => (n + 2 * p).checked_sub(k - 1).filter(|&m| m > 0).ok_or_else(|| {
                Error::invalid(format!(
                    "a {k}×{k} convolution with padding {p} needs an input side of at least {}, got {n}",
                    (k - 2 * p).max(1)
                ))
            }),
            ConvMode::TransposedStride2 if n == 0 => {
                Err(Error::invalid("a transposed convolution needs an input side of at least 1, got 0"))
            }
            ConvMode::TransposedStride2 => Ok(2 * n - 1 + (k - 1)),
        }
    }

    /// Applies the layer to `x` (N, Cin, H, W) with style rows `w` (N, C) and returns the output with the
    /// trace that [`ModulatedConv2d::backward`] needs.
    pub fn forward_traced(&self, x: &Tensor, w: &Tensor) -> Result<(Tensor, ModulatedTrace)> {
        let (n, c_in, _, _) = x.dims4()?;
        if c_in != self.in_channels() || w.dim(0)? != n {
            return Err(Error::invalid(format!(
                "modulated conv expects an input (N, {}, H, W) and styles (N, C), got {:?} and {:?}",
                self.in_channels(),
                x.dims(),
                w.dims()
            )));
        }

        let (style, style_trace) = self.style_modulation.forward_traced(w)?;
        let kernel = self.effective_weight()?;

        let modulated = x.broadcast_mul(&style.reshape((n, c_in, 1, 1))?)?;
        let conv_out = self.apply_kernel(&modulated, &kernel)?;

        let (out, demod) = if self.demodulate {
            let d = demodulation(&style, &kernel)?;
            let c_out = self.out_channels();
            (conv_out.broadcast_mul(&d.reshape((n, c_out, 1, 1))?)?, Some(d))
        } else {
            (conv_out.clone(), None)
        };
        Ok((out, ModulatedTrace { input: x.clone(), style, style_trace, conv_out, demod }))
    }

    /// Applies the layer like [`ModulatedConv2d::forward_traced`] without keeping a trace.
    ///
    /// Where the kernel has fewer values than the batch's input and output maps together, it scales a
    /// copy of the kernel per sample by the style (and the demodulation) instead of scaling the maps,
    /// as the reference's grouped convolution does. The two forms are equal up to rounding.
    pub fn forward(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (n, c_in, h, wd) = x.dims4()?;
        let (c_out, k) = (self.out_channels(), self.kernel_size());
        let out_pixels = self.output_len(h)? * self.output_len(wd)?;
        let map_values = n * (c_in * h * wd + c_out * out_pixels);
        if c_in != self.in_channels() || w.dim(0)? != n || n * c_out * c_in * k * k >= map_values {
            return Ok(self.forward_traced(x, w)?.0);
        }

        let (style, _) = self.style_modulation.forward_traced(w)?;
        let kernel = self.effective_weight()?;
        let demod = if self.demodulate { Some(demodulation(&style, &kernel)?) } else { None };
        let outputs = (0..n)
            .map(|i| -> Result<Tensor> {
                let mut sample_kernel = kernel.broadcast_mul(&style.narrow(0, i, 1)?.reshape((1, c_in, 1, 1))?)?;
                if let Some(d) = &demod {
                    sample_kernel = sample_kernel.broadcast_mul(&d.narrow(0, i, 1)?.reshape((c_out, 1, 1, 1))?)?;
                }
                self.apply_kernel(&x.narrow(0, i, 1)?, &sample_kernel)
            })
            .collect::<Result<Vec<_>>>()?;
        // A single sample needs no copy into a batch.
        match outputs.as_slice() {
            [single] => Ok(single.clone()),
            _ => Ok(Tensor::cat(&outputs, 0)?),
        }
    }

    /// Computes `(∂L/∂x, ∂L/∂w)` for `L = Σ output · g`, with the input gradient only when `want_input`.
    pub fn backward(&self, trace: &ModulatedTrace, g: &Tensor, want_input: bool) -> Result<(Option<Tensor>, Tensor)> {
        let kernel = self.effective_weight()?;
        let s = &trace.style;
        let (n, c_in) = s.dims2()?;
        let c_out = self.out_channels();

        // Through the demodulation: g0 = g ⊙ d reaches the conv, and d depends on s.
        let (g0, style_grad_demod) = match &trace.demod {
            Some(d) => {
                let g0 = g.broadcast_mul(&d.reshape((n, c_out, 1, 1))?)?;
                // With Q[o, i] = Σ_k V'[o, i, k]² and d = q^(−1/2), q[o] = Σ_i s[i]² Q[o, i] + ε:
                // ∂L/∂d = Σ_hw g ⊙ y0, ∂d/∂q = −½ d³, and ∂L/∂s[i] = 2 s[i] Σ_o ∂L/∂q[o] · Q[o, i].
                let grad_d = spatial_sum(&(g * &trace.conv_out)?)?;
                let grad_q = (grad_d * d.powf(3.0)?)?.affine(-0.5, 0.0)?;
                let q_weights = kernel_energy(&kernel)?;
                let grad_s = (grad_q.matmul(&q_weights)? * s)?.affine(2.0, 0.0)?;
                (g0, Some(grad_s))
            }
            None => (g.clone(), None),
        };

        // Through the convolution and the modulation x ⊙ s.
        let grad_modulated = self.apply_kernel_adjoint(&g0, &kernel)?;
        let mut grad_s = spatial_sum(&(&grad_modulated * &trace.input)?)?;
        if let Some(extra) = style_grad_demod {
            grad_s = (grad_s + extra)?;
        }
        let grad_w = self.style_modulation.input_grad(&trace.style_trace, &grad_s)?;

        let grad_x = if want_input { Some(grad_modulated.broadcast_mul(&s.reshape((n, c_in, 1, 1))?)?) } else { None };
        Ok((grad_x, grad_w))
    }

    fn apply_kernel(&self, x: &Tensor, kernel: &Tensor) -> Result<Tensor> {
        match self.mode {
            ConvMode::Padded(p) => conv2d(x, kernel, p),
            ConvMode::TransposedStride2 => {
                // The reference's transposed convolution takes the kernel as (in, out, k, k).
                let swapped = kernel.transpose(0, 1)?.contiguous()?;
                conv_transpose2d_stride2(x, &swapped)
            }
        }
    }

    fn apply_kernel_adjoint(&self, g: &Tensor, kernel: &Tensor) -> Result<Tensor> {
        match self.mode {
            ConvMode::Padded(p) => conv2d_input_grad(g, kernel, p),
            ConvMode::TransposedStride2 => {
                // The stride-2 correlation is the transposed convolution's adjoint; it gives back the input size.
                let swapped = kernel.transpose(0, 1)?.contiguous()?;
                conv2d_stride2(g, &swapped)
            }
        }
    }
}

/// Computes the demodulation factors `d[n, o] = (Σ_i s[n,i]² · Σ_k V'[o,i,k]² + 1e-8)^(−1/2)`, (N, Cout).
fn demodulation(style: &Tensor, kernel: &Tensor) -> Result<Tensor> {
    let q_weights = kernel_energy(kernel)?;
    let q = style.sqr()?.matmul(&q_weights.t()?)?;
    Ok((q + DEMODULATION_EPSILON)?.sqrt()?.recip()?)
}

/// Returns `Q[o, i] = Σ_k V'[o, i, k]²` of a kernel (Cout, Cin, k, k), as (Cout, Cin).
///
/// The sum over the k² taps is a product with a vector of ones: candle's sum over a last axis of 9
/// values makes one call per output value, which took about 4% of a config-f forward pass.
fn kernel_energy(kernel: &Tensor) -> Result<Tensor> {
    let (c_out, c_in, kh, kw) = kernel.dims4()?;
    let ones = Tensor::ones((kh * kw, 1), kernel.dtype(), kernel.device())?;
    Ok(kernel.sqr()?.reshape((c_out * c_in, kh * kw))?.matmul(&ones)?.reshape((c_out, c_in))?)
}

/// Sums over the two spatial axes: (N, C, H, W) → (N, C).
fn spatial_sum(t: &Tensor) -> Result<Tensor> {
    Ok(t.sum(D::Minus1)?.sum(D::Minus1)?)
}

/// Applies the adjoint of the bilinear `align_corners` resize from `(in_h, in_w)`: `x̄ = M_hᵀ · ḡ · M_w` per plane.
///
/// The resize is `y = M_h · x · M_wᵀ` with the interpolation matrices of [`interpolation_matrix`], so the
/// adjoint is two matmuls with the same matrices, differentiable to any order.
pub fn bilinear_resize_adjoint(g: &Tensor, in_h: usize, in_w: usize) -> Result<Tensor> {
    let (n, c, out_h, out_w) = g.dims4()?;
    let device = g.device();
    let dtype = g.dtype();

    let m_w = Tensor::from_vec(interpolation_matrix(in_w, out_w, BILINEAR), (out_w, in_w), device)?.to_dtype(dtype)?;
    let rows = g.reshape((n * c * out_h, out_w))?.matmul(&m_w)?.reshape((n * c, out_h, in_w))?;

    let m_h = Tensor::from_vec(interpolation_matrix(in_h, out_h, BILINEAR), (out_h, in_h), device)?.to_dtype(dtype)?;
    let m_h_t = m_h.t()?.contiguous()?;
    Ok(m_h_t.broadcast_matmul(&rows)?.reshape((n, c, in_h, in_w))?)
}

/// Noise injection `y + β·ν` with a learned strength β (key `weight`, shape (1), initialised to 0).
#[derive(Debug, Clone)]
pub struct NoiseInjection {
    weight: Var,
}

impl NoiseInjection {
    pub fn new(path: &ParamPath) -> Result<Self> {
        Ok(NoiseInjection { weight: path.param("weight", &[1], Init::Constant(0.0))? })
    }

    /// Adds `β·noise`, where `noise` is (N, 1, H, W) or (1, 1, H, W) and broadcasts over the channels.
    pub fn forward(&self, y: &Tensor, noise: &Tensor) -> Result<Tensor> {
        let (n, _, h, w) = y.dims4()?;
        let fits = match noise.dims() {
            &[batch, 1, noise_h, noise_w] => (batch == n || batch == 1) && noise_h == h && noise_w == w,
            _ => false,
        };
        if !fits {
            return Err(Error::invalid(format!(
                "noise map of shape {:?} does not fit a layer output of shape {:?}: use (N or 1, 1, {h}, {w})",
                noise.dims(),
                y.dims()
            )));
        }

        let beta = self.weight.as_tensor().reshape((1, 1, 1, 1))?;
        let scaled = noise.to_dtype(y.dtype())?.broadcast_mul(&beta)?;
        Ok(y.broadcast_add(&scaled)?)
    }
}

/// A style conv (`ModulatedPEStyleConv`): modulated 3×3 conv with its upsampling, `+ β·noise`, then the
/// fused bias leaky ReLU.
///
/// Keys under the module path: `conv.*` (see [`ModulatedConv2d`]), `noise_injector.weight`, `activate.bias`.
/// With transposed-conv upsampling the state dict also has the buffer `conv.blur.kernel`, which is not stored here.
#[derive(Debug, Clone)]
pub struct StyleConv {
    conv: ModulatedConv2d,
    upsampling: Upsampling,
    noise: NoiseInjection,
    activation: FusedBiasLeakyRelu,
}

/// Forward-pass tensors that [`StyleConv::backward`] needs.
#[derive(Debug, Clone)]
pub struct StyleConvTrace {
    modulated: ModulatedTrace,
    /// Side lengths of the layer input.
    input_hw: (usize, usize),
    /// Side lengths of the modulated conv output (before any resize or blur after it).
    conv_out_hw: (usize, usize),
    /// Slope of the activation.
    slope: Tensor,
}

impl StyleConv {
    /// Builds the layer at `path`: `in_channels → out_channels`, 3×3, zero padding `padding` (ignored by
    /// the transposed-conv upsampling, which has its own).
    pub fn new(
        path: &ParamPath,
        in_channels: usize,
        out_channels: usize,
        style_channels: usize,
        padding: usize,
        upsampling: Upsampling,
    ) -> Result<Self> {
        let mode = match upsampling {
            Upsampling::TransposedConvBlur => ConvMode::TransposedStride2,
            _ => ConvMode::Padded(padding),
        };
        let conv = ModulatedConv2d::new(&path.pp("conv"), in_channels, out_channels, 3, style_channels, true, mode)?;
        let noise = NoiseInjection::new(&path.pp("noise_injector"))?;
        let bias = path.pp("activate").param("bias", &[out_channels], Init::Constant(0.0))?;
        Ok(StyleConv { conv, upsampling, noise, activation: FusedBiasLeakyRelu::new(bias, 1.0) })
    }

    pub fn conv(&self) -> &ModulatedConv2d {
        &self.conv
    }

    pub fn upsampling(&self) -> Upsampling {
        self.upsampling
    }

    /// Returns the output side for an input side `n`, by the same rule on both axes.
    pub fn output_len(&self, n: usize) -> Result<usize> {
        match self.upsampling {
            Upsampling::None => self.conv.output_len(n),
            Upsampling::ConvThenResize { interp_pad } => Ok(2 * self.conv.output_len(n)? + interp_pad),
            Upsampling::ResizeThenConv { interp_pad } => self.conv.output_len(2 * n + interp_pad),
            Upsampling::TransposedConvBlur => Fir::upsampling_blur().output_len(self.conv.output_len(n)?),
        }
    }

    /// Applies the layer to `x` with style rows `w` (N, C) and the noise map of its output size, and returns
    /// the output with the trace that [`StyleConv::backward`] needs.
    pub fn forward_traced(&self, x: &Tensor, w: &Tensor, noise: &Tensor) -> Result<(Tensor, StyleConvTrace)> {
        let (out, trace) = self.run(x, w, noise, true)?;
        Ok((out, trace.ok_or_else(|| Error::model("style conv trace was not recorded"))?))
    }

    /// Applies the layer like [`StyleConv::forward_traced`] without keeping a trace. This spares the
    /// activation's slope map, two passes over the output on the CPU, and the passes that scale the
    /// maps where scaling the kernel is cheaper.
    pub fn forward(&self, x: &Tensor, w: &Tensor, noise: &Tensor) -> Result<Tensor> {
        Ok(self.run(x, w, noise, false)?.0)
    }

    /// Runs the layer, and records the trace only when `keep_trace` is set.
    fn run(
        &self,
        x: &Tensor,
        w: &Tensor,
        noise: &Tensor,
        keep_trace: bool,
    ) -> Result<(Tensor, Option<StyleConvTrace>)> {
        let (_, _, h, wd) = x.dims4()?;
        let conv_input = match self.upsampling {
            Upsampling::ResizeThenConv { interp_pad } => resize(x, 2 * h + interp_pad, 2 * wd + interp_pad, BILINEAR)?,
            _ => x.clone(),
        };
        let (y, modulated) = if keep_trace {
            let (y, modulated) = self.conv.forward_traced(&conv_input, w)?;
            (y, Some(modulated))
        } else {
            (self.conv.forward(&conv_input, w)?, None)
        };
        let conv_out_hw = (y.dim(2)?, y.dim(3)?);
        let y = match self.upsampling {
            Upsampling::ConvThenResize { interp_pad } => {
                resize(&y, 2 * conv_out_hw.0 + interp_pad, 2 * conv_out_hw.1 + interp_pad, BILINEAR)?
            }
            Upsampling::TransposedConvBlur => Fir::upsampling_blur().forward(&y)?,
            _ => y,
        };
        let y = self.noise.forward(&y, noise)?;
        let Some(modulated) = modulated else {
            return Ok((self.activation.forward(&y)?, None));
        };
        let (out, slope) = self.activation.forward_traced(&y)?;
        Ok((out, Some(StyleConvTrace { modulated, input_hw: (h, wd), conv_out_hw, slope })))
    }

    /// Computes `(∂L/∂x, ∂L/∂w)` for `L = Σ output · g`, with the input gradient only when `want_input`.
    pub fn backward(&self, trace: &StyleConvTrace, g: &Tensor, want_input: bool) -> Result<(Option<Tensor>, Tensor)> {
        // The noise term does not depend on x or w, so the gradient passes it unchanged.
        let g = FusedBiasLeakyRelu::input_grad(&trace.slope, g)?;
        let g = match self.upsampling {
            Upsampling::ConvThenResize { .. } => bilinear_resize_adjoint(&g, trace.conv_out_hw.0, trace.conv_out_hw.1)?,
            Upsampling::TransposedConvBlur => Fir::upsampling_blur().input_grad(&g, trace.conv_out_hw)?,
            _ => g,
        };
        let (grad_x, grad_w) = self.conv.backward(&trace.modulated, &g, want_input)?;
        let grad_x = match (grad_x, self.upsampling) {
            (Some(gx), Upsampling::ResizeThenConv { .. }) => {
                Some(bilinear_resize_adjoint(&gx, trace.input_hw.0, trace.input_hw.1)?)
            }
            (gx, _) => gx,
        };
        Ok((grad_x, grad_w))
    }
}

/// `ModulatedToRGB`: a modulated 1×1 conv to 3 channels without demodulation, plus a bias, plus the
/// upsampled skip image of the previous block.
///
/// Keys: `bias` (1, 3, 1, 1) and `conv.*` (see [`ModulatedConv2d`]). With a skip input the state dict also has
/// the buffer `upsample.kernel` (`4·K`), which is not stored here.
#[derive(Debug, Clone)]
pub struct ToRgb {
    conv: ModulatedConv2d,
    bias: Var,
    upsample: Option<Fir>,
}

/// Forward-pass tensors that [`ToRgb::backward`] needs.
#[derive(Debug, Clone)]
pub struct ToRgbTrace {
    modulated: ModulatedTrace,
    /// Side lengths of the skip image, when there is one.
    skip_hw: Option<(usize, usize)>,
}

impl ToRgb {
    /// Builds the layer at `path`. `with_skip` adds the ×2 skip upsampler of `to_rgbs.*`.
    pub fn new(path: &ParamPath, in_channels: usize, style_channels: usize, with_skip: bool) -> Result<Self> {
        let conv = ModulatedConv2d::new(
            &path.pp("conv"),
            in_channels,
            IMAGE_CHANNELS,
            1,
            style_channels,
            false,
            ConvMode::Padded(0),
        )?;
        let bias = path.param("bias", &[1, IMAGE_CHANNELS, 1, 1], Init::Constant(0.0))?;
        Ok(ToRgb { conv, bias, upsample: with_skip.then(Fir::skip_upsample) })
    }

    pub fn conv(&self) -> &ModulatedConv2d {
        &self.conv
    }

    pub fn has_skip(&self) -> bool {
        self.upsample.is_some()
    }

    /// Computes `conv(x, w) + bias + U(skip)` and the trace that [`ToRgb::backward`] needs. `skip` is required
    /// exactly when the layer has a skip upsampler.
    pub fn forward_traced(&self, x: &Tensor, w: &Tensor, skip: Option<&Tensor>) -> Result<(Tensor, ToRgbTrace)> {
        let (y, modulated) = self.conv.forward_traced(x, w)?;
        let (out, skip_hw) = self.add_bias_and_skip(y, skip)?;
        Ok((out, ToRgbTrace { modulated, skip_hw }))
    }

    /// Computes `conv(x, w) + bias + U(skip)` like [`ToRgb::forward_traced`] without keeping a trace.
    pub fn forward(&self, x: &Tensor, w: &Tensor, skip: Option<&Tensor>) -> Result<Tensor> {
        let y = self.conv.forward(x, w)?;
        Ok(self.add_bias_and_skip(y, skip)?.0)
    }

    /// Adds the bias and the upsampled skip image to the convolution output `y`, and returns the sum with
    /// the skip image's side lengths.
    fn add_bias_and_skip(&self, y: Tensor, skip: Option<&Tensor>) -> Result<(Tensor, Option<(usize, usize)>)> {
        let y = y.broadcast_add(self.bias.as_tensor())?;
        let (out, skip_hw) = match (&self.upsample, skip) {
            (Some(upsample), Some(skip)) => {
                let up = upsample.forward(skip)?;
                if up.dims() != y.dims() {
                    return Err(Error::invalid(format!(
                        "ToRGB skip image {:?} upsamples to {:?}, which does not match the layer output {:?}",
                        skip.dims(),
                        up.dims(),
                        y.dims()
                    )));
                }
                ((y + up)?, Some((skip.dim(2)?, skip.dim(3)?)))
            }
            (None, None) => (y, None),
            (Some(_), None) => {
                return Err(Error::invalid(
                    "ToRGB skip image is missing: a layer with a skip upsampler needs the previous block's image",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "ToRGB layer without a skip upsampler got a skip image: pass None for the first ToRGB layer",
                ))
            }
        };
        Ok((out, skip_hw))
    }

    /// Computes `(∂L/∂x, ∂L/∂w, ∂L/∂skip)` for `L = Σ output · g`.
    pub fn backward(&self, trace: &ToRgbTrace, g: &Tensor) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (grad_x, grad_w) = self.conv.backward(&trace.modulated, g, true)?;
        let grad_x = grad_x.ok_or_else(|| Error::model("ToRGB backward lost its input gradient"))?;
        let grad_skip = match (&self.upsample, trace.skip_hw) {
            (Some(upsample), Some(hw)) => Some(upsample.input_grad(g, hw)?),
            _ => None,
        };
        Ok((grad_x, grad_w, grad_skip))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::rng::SeededRng;
    use crate::stylegan2::params::ParamStore;

    /// Checks that the untraced forward pass, which scales the kernel per sample where that is cheaper,
    /// gives the traced pass's output (which scales the maps), with and without demodulation.
    #[test]
    fn kernel_modulation_matches_map_modulation() {
        let cases =
            [(ConvMode::Padded(1), true, 3), (ConvMode::Padded(0), false, 1), (ConvMode::TransposedStride2, true, 3)];
        for (mode, demodulate, k) in cases {
            let store = ParamStore::new(&Device::Cpu);
            let conv = ModulatedConv2d::new(&store.root().pp("conv"), 4, 5, k, 6, demodulate, mode).unwrap();
            store.initialise(&mut SeededRng::new(7)).unwrap();
            let x = Tensor::randn(0f64, 1.0, (2, 4, 12, 11), &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
            let w = Tensor::randn(0f64, 1.0, (2, 6), &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();

            // 5 · 4 · k² kernel values per sample against 9 · 132 or more map values: the kernel path.
            let (kernel_values, map_values) = (5 * 4 * k * k, 9 * 12 * 11);
            assert!(kernel_values < map_values, "{mode:?}: the case must take the kernel path");

            let scaled_kernel: Vec<f32> = conv.forward(&x, &w).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let (traced, _) = conv.forward_traced(&x, &w).unwrap();
            let scaled_maps: Vec<f32> = traced.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(scaled_kernel.len(), scaled_maps.len(), "{mode:?}: output length");
            assert!(scaled_maps.iter().any(|&v| v.abs() > 1e-3), "{mode:?}: the output is all zeros");
            for (index, (a, b)) in scaled_kernel.iter().zip(&scaled_maps).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{mode:?} value {index}: kernel path {a}, map path {b}"
                );
            }
        }
    }
}
