//! Stride-2 convolutions on the stride-1 kernels of [`crate::ops::conv`], by the polyphase rewrite.
//!
//! A stride-2 correlation reads every second pixel, so it splits into four stride-1 correlations, one
//! per pixel phase (even or odd row, even or odd column). Rearranging the input into its four phases
//! (4C channels at half the side, [`space_to_depth`]) and the kernel, zero-padded to an even side, the
//! same way turns the whole layer into one stride-1 convolution with four times the input channels.
//! For a 3×3 kernel that costs 16/9 of the stride-2 multiply-adds, against 4 times for a stride-1
//! convolution followed by subsampling.
//!
//! Layers with many channels at few pixels (StyleGAN2's 512-channel layers at 4² to 32²) spend more time
//! rearranging their large kernels than multiplying, so they take the textbook route instead: im2col
//! (gather the k² strided taps of every output pixel, then one GEMM with the kernel as it is stored) for
//! the correlation, and GEMM then col2im (scatter-add every input pixel's k² products) for the
//! transposed convolution. These do exactly the layer's multiply-adds and never copy the kernel.
//!
//! The stride-2 transposed convolution is the adjoint of the stride-2 correlation, against 4 times the
//! multiply-adds for the usual "insert zeros between the pixels, then convolve". Every function here is
//! built from differentiable ops, so gradients of any order flow through them.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::f32_data;
use crate::error::{Error, Result};
use crate::ops::conv::{conv2d, conv2d_input_grad};

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

/// Checks that `w` is an (O, C, k, k) kernel with odd `k`, the only kernels the rewrite handles.
fn odd_kernel_size(w: &Tensor, what: &str) -> Result<usize> {
    let (_, _, k, kw) = w.dims4()?;
    if k != kw || k % 2 == 0 {
        return Err(Error::invalid(format!(
            "{what} takes a square kernel with an odd side, got shape {:?}: pad the kernel to an odd side",
            w.dims()
        )));
    }
    Ok(k)
}

/// Applies a cross-correlation with stride 2 and no padding for an odd `k ≤ H, W`:
/// (N, C, H, W) with (O, C, k, k) → (N, O, ⌊(H − k)/2⌋ + 1, ⌊(W − k)/2⌋ + 1).
///
/// A 1×1 kernel needs only the even phase, so it subsamples first.
pub fn conv2d_stride2(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let k = odd_kernel_size(w, "conv2d_stride2")?;
    let (_, _, h, wd) = x.dims4()?;
    if h < k || wd < k {
        return Err(Error::invalid(format!(
            "conv2d_stride2 needs an input of at least {k}×{k} pixels for a {k}×{k} kernel, got {h}×{wd}"
        )));
    }
    let (n, c, _, _) = x.dims4()?;
    let (o, _, _, _) = w.dims4()?;
    let out_hw = ((h - k) / 2 + 1, (wd - k) / 2 + 1);
    if prefers_gemm(x, n * out_hw.0 * out_hw.1, c, o, k) {
        return conv2d_stride2_gemm(x, w, out_hw);
    }
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

/// Computes `∂(Σ conv2d_stride2(x, w) · g)/∂x` for an input of spatial size `input_hw`: (N, O, Ho, Wo) with
/// (O, C, k, k) → (N, C, H, W). The result is linear in `g` and differentiable in `g` and `w`.
pub fn conv2d_stride2_input_grad(g: &Tensor, w: &Tensor, input_hw: (usize, usize)) -> Result<Tensor> {
    let k = odd_kernel_size(w, "conv2d_stride2_input_grad")?;
    let (h, wd) = input_hw;
    let (_, _, gh, gw) = g.dims4()?;
    if h < k || wd < k || (h - k) / 2 + 1 != gh || (wd - k) / 2 + 1 != gw {
        return Err(Error::invalid(format!(
            "conv2d_stride2_input_grad: an output gradient of {gh}×{gw} pixels does not come from a {k}×{k} \
             stride-2 convolution of a {h}×{wd} input"
        )));
    }

    let (n, o, _, _) = g.dims4()?;
    let c = w.dim(1)?;
    if prefers_gemm(g, n * gh * gw, c, o, k) {
        return transposed_gemm(g, w, input_hw);
    }

    // Both branches yield the gradient of the four phases at ⌈H/2⌉ × ⌈W/2⌉.
    let phases = if k == 1 {
        // Only the even phase fed the convolution, so the three others get zero gradient.
        let g_even = conv2d_input_grad(g, w, 0)?;
        let (n, c, eh, ew) = g_even.dims4()?;
        g_even.reshape((n, c, 1, eh, ew))?.pad_with_zeros(2, 0, 3)?.reshape((n, 4 * c, eh, ew))?
    } else {
        let padded_kernel = pad_spatial_to(w, k + 1, k + 1)?;
        conv2d_input_grad(g, &space_to_depth(&padded_kernel)?, 0)?
    };

    Ok(depth_to_space(&phases)?.narrow(2, 0, h)?.narrow(3, 0, wd)?)
}

/// Applies the transposed convolution with stride 2 and no padding of an odd `k`:
/// (N, O, H, W) with (O, C, k, k) → (N, C, 2H + k − 2, 2W + k − 2).
///
/// The kernel layout is PyTorch's `conv_transpose2d` layout (in, out, k, k). This is the adjoint of
/// [`conv2d_stride2`] with the same kernel, so [`conv2d_stride2`] of an output gradient is its input
/// gradient.
pub fn conv_transpose2d_stride2(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let k = odd_kernel_size(w, "conv_transpose2d_stride2")?;
    let (_, _, h, wd) = x.dims4()?;
    if h == 0 || wd == 0 {
        return Err(Error::invalid("conv_transpose2d_stride2 needs an input side of at least 1, got 0"));
    }
    conv2d_stride2_input_grad(x, w, (2 * h + k - 2, 2 * wd + k - 2))
}

/// Largest im2col matrix of the GEMM form, in floats (64 MiB); larger layers take the polyphase form.
const GEMM_TAPS_BUDGET: usize = 16 << 20;

/// Chooses im2col/col2im with one GEMM over the polyphase stride-1 convolution for a stride-2 layer on
/// `x` with `pixels` output pixels (all images), `c` input and `o` output channels and a k×k kernel.
///
/// The GEMM form runs on the CPU in f32 only; other devices take the polyphase form, which is made of
/// convolutions alone.
fn prefers_gemm(x: &Tensor, pixels: usize, c: usize, o: usize, k: usize) -> bool {
    if !(x.device().is_cpu() && x.dtype() == DType::F32) {
        return false;
    }
    // NOTE: the rule comes from timing 64- to 512-channel layers at 9² to 257² with batch 1 and 4 on one
    // 2-core AVX-512 machine. With 128 or more output channels the GEMM form took 0.3 to 0.9 times the
    // polyphase form's time, forward and backward; other CPUs may cross over elsewhere.
    o >= 128 && pixels * c * k * k <= GEMM_TAPS_BUDGET
}

/// [`conv2d_stride2`] as im2col and one GEMM with the kernel viewed as (O, C·k²). The images of the batch
/// are columns of the same GEMM, so the kernel gradient is one GEMM too.
fn conv2d_stride2_gemm(x: &Tensor, w: &Tensor, (h_out, w_out): (usize, usize)) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    let (o, _, k, _) = w.dims4()?;
    let cols = x.contiguous()?.apply_op1(Im2colStride2 { k, h_out, w_out })?;
    let y = w.reshape((o, c * k * k))?.matmul(&cols)?;
    Ok(y.reshape((o, n, h_out, w_out))?.transpose(0, 1)?.contiguous()?)
}

/// [`conv2d_stride2_input_grad`] as one GEMM with the kernel viewed as (O, C·k²), transposed, then col2im.
fn transposed_gemm(g: &Tensor, w: &Tensor, (h, wd): (usize, usize)) -> Result<Tensor> {
    let (n, o, gh, gw) = g.dims4()?;
    let (_, c, k, _) = w.dims4()?;
    let g_columns = g.transpose(0, 1)?.contiguous()?.reshape((o, n * gh * gw))?;
    let cols = w.reshape((o, c * k * k))?.t()?.matmul(&g_columns)?;
    Ok(cols.apply_op1(Col2imStride2 { k, images: n, h_in: gh, w_in: gw, h, w: wd })?)
}

/// im2col of a stride-2 correlation on the CPU: (N, C, H, W) → (C·k², N·Ho·Wo), row `c·k² + u·k + v` holding
/// the pixels `(2m + u, 2j + v)` of channel `c`, and column `(n·Ho + m)·Wo + j` the output pixel `(m, j)`
/// of image `n`.
struct Im2colStride2 {
    k: usize,
    h_out: usize,
    w_out: usize,
}

impl CustomOp1 for Im2colStride2 {
    fn name(&self) -> &'static str {
        "pegan-im2col-stride2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let Im2colStride2 { k, h_out, w_out } = *self;
        if 2 * h_out + k - 2 > h || 2 * w_out + k - 2 > w {
            candle_core::bail!(
                "im2col of a {h}×{w} input cannot have {h_out}×{w_out} stride-2 outputs of a {k}×{k} kernel"
            );
        }
        let x = f32_data(storage, layout, "im2col input")?;
        let pixels = h_out * w_out;
        let mut cols = vec![0f32; c * k * k * n * pixels];
        // One (Ho·Wo) block per (channel, tap, image).
        for (block_index, block) in cols.chunks_exact_mut(pixels).enumerate() {
            let (row, image) = (block_index / n, block_index % n);
            let (channel, tap) = (row / (k * k), row % (k * k));
            let (u, v) = (tap / k, tap % k);
            let source = &x[(image * c + channel) * h * w..][..h * w];
            for (m, out) in block.chunks_exact_mut(w_out).enumerate() {
                let line = &source[(2 * m + u) * w..][..w];
                for (j, value) in out.iter_mut().enumerate() {
                    *value = line[2 * j + v];
                }
            }
        }
        Ok((CpuStorage::F32(cols), Shape::from((c * k * k, n * pixels))))
    }

    fn bwd(&self, x: &Tensor, _cols: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // im2col is a gather, so its adjoint is the scatter-add col2im.
        let (images, _, h, w) = x.dims4()?;
        let op = Col2imStride2 { k: self.k, images, h_in: self.h_out, w_in: self.w_out, h, w };
        Ok(Some(grad.contiguous()?.apply_op1(op)?))
    }
}

/// col2im of a stride-2 transposed convolution on the CPU: (C·k², N·Hi·Wi) → (N, C, H, W), adding row
/// `c·k² + u·k + v` at column `(n·Hi + m)·Wi + j` to the pixel `(2m + u, 2j + v)` of channel `c` of image
/// `n`. Output pixels that no tap reaches (the last row and column when H or W exceeds 2Hi + k − 2) are
/// zero.
struct Col2imStride2 {
    k: usize,
    images: usize,
    h_in: usize,
    w_in: usize,
    h: usize,
    w: usize,
}

impl CustomOp1 for Col2imStride2 {
    fn name(&self) -> &'static str {
        "pegan-col2im-stride2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, columns) = layout.shape().dims2()?;
        let Col2imStride2 { k, images: n, h_in, w_in, h, w } = *self;
        let pixels = h_in * w_in;
        if rows % (k * k) != 0 || columns != n * pixels || 2 * h_in + k - 2 > h || 2 * w_in + k - 2 > w {
            candle_core::bail!(
                "col2im cannot place a ({rows}, {columns}) matrix of {n} images' {h_in}×{w_in} stride-2 taps of a \
                 {k}×{k} kernel in {h}×{w}"
            );
        }
        let c = rows / (k * k);
        let cols = f32_data(storage, layout, "col2im input")?;
        let mut out = vec![0f32; n * c * h * w];
        for (plane, target) in out.chunks_exact_mut(h * w).enumerate() {
            let (image, channel) = (plane / c, plane % c);
            for tap in 0..k * k {
                let (u, v) = (tap / k, tap % k);
                let block = &cols[(channel * k * k + tap) * columns + image * pixels..][..pixels];
                for (m, values) in block.chunks_exact(w_in).enumerate() {
                    let line = &mut target[(2 * m + u) * w..][..w];
                    for (j, value) in values.iter().enumerate() {
                        line[2 * j + v] += value;
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }

    fn bwd(&self, _cols: &Tensor, _out: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // The adjoint of the scatter-add is the gather im2col.
        let op = Im2colStride2 { k: self.k, h_out: self.h_in, w_out: self.w_in };
        Ok(Some(grad.contiguous()?.apply_op1(op)?))
    }
}
