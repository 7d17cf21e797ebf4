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
//! multiply-adds for the usual "insert zeros between the pixels, then convolve". Every public function
//! here is differentiable in both arguments (the GEMM forms are single ops whose gradients are each
//! other), so explicit gradient penalties built from them can be back-propagated to the kernels.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

use super::{f32_data, num_threads, run_tasks, SharedMut};
use crate::error::{Error, Result};
use crate::ops::conv::{conv2d, conv2d_input_grad, matmul};

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

/// Applies [`conv2d_stride2`] as im2col and one GEMM per image with the kernel viewed as (O, C·k²).
///
/// The whole layer is one graph node, because candle's backward pass adds a zero-filled accumulator for
/// every node. At 512 channels the kernel-sized ones of a reshape-transpose-matmul chain cost more than
/// the GEMMs.
fn conv2d_stride2_gemm(x: &Tensor, w: &Tensor, (h_out, w_out): (usize, usize)) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, Stride2Gemm { h_out, w_out })?)
}

/// Applies [`conv2d_stride2_input_grad`] as one GEMM per image with the kernel viewed as (O, C·k²),
/// transposed, then col2im, in one graph node.
fn transposed_gemm(g: &Tensor, w: &Tensor, (h, wd): (usize, usize)) -> Result<Tensor> {
    Ok(g.contiguous()?.apply_op2(&w.contiguous()?, Stride2TransposedGemm { h, w: wd })?)
}

/// Geometry of a stride-2 correlation of an odd k×k kernel: `n` images of `c` channels of `h`×`w`
/// pixels, `o` output channels of `h_out`×`w_out` pixels.
#[derive(Clone, Copy, Debug)]
struct Stride2 {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    h_out: usize,
    w_out: usize,
}

impl Stride2 {
    /// Reads the geometry from the input and kernel layouts and checks that the outputs fit the input.
    fn new(input: &Layout, kernel: &Layout, (h_out, w_out): (usize, usize)) -> candle_core::Result<Stride2> {
        let (n, c, h, w) = input.shape().dims4()?;
        let (o, kernel_c, k, kw) = kernel.shape().dims4()?;
        if kernel_c != c || kw != k || k % 2 == 0 || 2 * h_out + k - 2 > h || 2 * w_out + k - 2 > w {
            candle_core::bail!(
                "a {k}×{kw} kernel {:?} cannot make {h_out}×{w_out} stride-2 outputs from a {:?} input",
                kernel.dims(),
                input.dims()
            );
        }
        Ok(Stride2 { n, c, h, w, o, k, h_out, w_out })
    }

    fn taps(&self) -> usize {
        self.c * self.k * self.k
    }

    fn out_pixels(&self) -> usize {
        self.h_out * self.w_out
    }

    /// im2col: (N, C, H, W) → (C·k², N·Ho·Wo), row `c·k² + u·k + v` containing the pixels `(2m + u, 2j + v)`
    /// of channel `c`, and column `(n·Ho + m)·Wo + j` the output pixel `(m, j)` of image `n`.
    fn im2col(&self, x: &[f32]) -> Vec<f32> {
        let Stride2 { n, c, h, w, k, h_out, w_out, .. } = *self;
        let pixels = self.out_pixels();
        let len = c * k * k * n * pixels;
        // Every value is written below, through raw pointers, so the matrix starts uninitialised.
        let mut cols: Vec<f32> = Vec::with_capacity(len);
        let dst = SharedMut(cols.as_mut_ptr());
        // One task per channel: its k² rows of every image.
        run_tasks(c, num_threads(), |_, channel| {
            for tap in 0..k * k {
                let (u, v) = (tap / k, tap % k);
                for image in 0..n {
                    let source = &x[(image * c + channel) * h * w..][..h * w];
                    let start = ((channel * k * k + tap) * n + image) * pixels;
                    for m in 0..h_out {
                        let line = &source[(2 * m + u) * w..][..w];
                        for j in 0..w_out {
                            // SAFETY: value (m, j) of the block of `pixels` values that belongs to this
                            // task's channel only.
                            unsafe { dst.ptr().add(start + m * w_out + j).write(line[2 * j + v]) };
                        }
                    }
                }
            }
        });
        // SAFETY: the tasks wrote the k² rows of every channel, for every image and output pixel.
        unsafe { cols.set_len(len) };
        cols
    }

    /// col2im, the adjoint of [`Self::im2col`]: adds every column entry to its input pixel, giving
    /// (N, C, H, W). Pixels that no tap reaches (the last row and column when H or W exceeds
    /// 2·Ho + k − 2) are zero.
    fn col2im(&self, cols: &[f32]) -> Vec<f32> {
        let Stride2 { n, c, h, w, k, w_out, .. } = *self;
        let (pixels, columns) = (self.out_pixels(), n * self.out_pixels());
        let mut out = vec![0f32; n * c * h * w];
        let dst = SharedMut(out.as_mut_ptr());
        run_tasks(n * c, num_threads(), |_, plane| {
            let (image, channel) = (plane / c, plane % c);
            // SAFETY: each task writes its own plane.
            let target = unsafe { std::slice::from_raw_parts_mut(dst.ptr().add(plane * h * w), h * w) };
            for tap in 0..k * k {
                let (u, v) = (tap / k, tap % k);
                let block = &cols[(channel * k * k + tap) * columns + image * pixels..][..pixels];
                for (m, values) in block.chunks_exact(w_out).enumerate() {
                    let line = &mut target[(2 * m + u) * w..][..w];
                    for (j, value) in values.iter().enumerate() {
                        line[2 * j + v] += value;
                    }
                }
            }
        });
        out
    }

    /// Runs `dst (m × n) = lhs (m × depth) · rhs (depth × n)` for every image, split into row blocks
    /// across the CPU pool, overwriting every row of every image's `dst` without reading it.
    /// `operands(image)` gives the image's (dst, lhs, rhs) offsets and strides.
    #[allow(clippy::type_complexity)]
    fn matmul_per_image(
        &self,
        (m, n, depth): (usize, usize, usize),
        dst: &mut [MaybeUninit<f32>],
        lhs: &[f32],
        rhs: &[f32],
        operands: impl Fn(usize) -> ((usize, (usize, usize)), (usize, (usize, usize)), (usize, (usize, usize))) + Sync,
    ) {
        // With fewer images than threads, each image's rows are split so that every thread gets one
        // block. More blocks would each pack the whole right-hand side again (measured slower).
        let threads = num_threads();
        let blocks = threads.div_ceil(self.n).clamp(1, m.div_ceil(16).max(1));
        let rows_per_block = m.div_ceil(blocks);
        // MaybeUninit<f32> has the layout of f32.
        let dst_ptr = SharedMut(dst.as_mut_ptr().cast::<f32>());
        run_tasks(self.n * blocks, threads, |_, index| {
            let (image, block) = (index / blocks, index % blocks);
            let rows = block * rows_per_block..m.min((block + 1) * rows_per_block);
            if rows.is_empty() {
                return;
            }
            let ((dst_offset, dst_strides), (lhs_offset, lhs_strides), (rhs_offset, rhs_strides)) = operands(image);
            // SAFETY: the offsets and strides address each image's matrices inside the slices, and the
            // row blocks of one image's dst are disjoint.
            unsafe {
                matmul(
                    (rows.len(), n, depth),
                    dst_ptr.ptr().add(dst_offset + rows.start * dst_strides.0),
                    dst_strides,
                    false,
                    lhs.as_ptr().add(lhs_offset + rows.start * lhs_strides.0),
                    lhs_strides,
                    rhs.as_ptr().add(rhs_offset),
                    rhs_strides,
                );
            }
        });
    }

    /// Correlates `x` with `kernel` (O, C, k, k) and returns y (N, O, Ho, Wo).
    fn correlate(&self, x: &[f32], kernel: &[f32]) -> Vec<f32> {
        let (taps, pixels) = (self.taps(), self.out_pixels());
        let cols = self.im2col(x);
        let len = self.n * self.o * pixels;
        let mut y: Vec<f32> = Vec::with_capacity(len);
        // y_n (O × P) = kernel (O × C·k²) · cols_n (C·k² × P).
        self.matmul_per_image((self.o, pixels, taps), y.spare_capacity_mut(), kernel, &cols, |image| {
            ((image * self.o * pixels, (pixels, 1)), (0, (taps, 1)), (image * pixels, (self.n * pixels, 1)))
        });
        // SAFETY: the products overwrote every row of every image (see `matmul_per_image`).
        unsafe { y.set_len(len) };
        y
    }

    /// Applies the transposed correlation of `g` (N, O, Ho, Wo) with `kernel` (O, C, k, k), giving (N, C, H, W).
    fn transposed(&self, g: &[f32], kernel: &[f32]) -> Vec<f32> {
        let (taps, pixels) = (self.taps(), self.out_pixels());
        let len = taps * self.n * pixels;
        let mut cols: Vec<f32> = Vec::with_capacity(len);
        // cols_n (C·k² × P) = kernelᵀ (C·k² × O) · g_n (O × P).
        self.matmul_per_image((taps, pixels, self.o), cols.spare_capacity_mut(), kernel, g, |image| {
            ((image * pixels, (self.n * pixels, 1)), (0, (1, taps)), (image * self.o * pixels, (pixels, 1)))
        });
        // SAFETY: the products overwrote every row of every image (see `matmul_per_image`).
        unsafe { cols.set_len(len) };
        self.col2im(&cols)
    }

    /// Computes the kernel gradient (O, C, k, k) `Σ_n g_n · im2col(x)_nᵀ` of the correlation of `x` with
    /// output gradient `g`.
    fn kernel_grad(&self, x: &[f32], g: &[f32]) -> Vec<f32> {
        let (taps, pixels) = (self.taps(), self.out_pixels());
        let len = self.o * taps;
        if self.n == 0 {
            return vec![0.0; len];
        }
        let cols = self.im2col(x);
        // The first image's products overwrite every row and the others add to them, so the gradient
        // starts uninitialised.
        let mut grad: Vec<f32> = Vec::with_capacity(len);
        let threads = num_threads();
        let blocks = threads.clamp(1, self.o.div_ceil(16).max(1));
        let rows_per_block = self.o.div_ceil(blocks);
        let dst = SharedMut(grad.as_mut_ptr());
        // One row block of the kernel gradient per thread; each sums over every image.
        run_tasks(blocks, threads, |_, block| {
            let rows = block * rows_per_block..self.o.min((block + 1) * rows_per_block);
            for image in 0..self.n {
                // SAFETY: this task owns rows `rows` of the gradient. g_n is (O × P), and the image's
                // im2col columns are (C·k² × P) with row stride N·P.
                unsafe {
                    matmul(
                        (rows.len(), taps, pixels),
                        dst.ptr().add(rows.start * taps),
                        (taps, 1),
                        image > 0,
                        g.as_ptr().add((image * self.o + rows.start) * pixels),
                        (pixels, 1),
                        cols.as_ptr().add(image * pixels),
                        (1, self.n * pixels),
                    );
                }
            }
        });
        // SAFETY: the row blocks cover all O rows, and each was overwritten by its first image's product.
        unsafe { grad.set_len(len) };
        grad
    }
}

/// Stride-2 correlation of (x, kernel) on the CPU in f32.
struct Stride2Gemm {
    h_out: usize,
    w_out: usize,
}

impl CustomOp2 for Stride2Gemm {
    fn name(&self) -> &'static str {
        "pegan-conv2d-stride2-gemm"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let geometry = Stride2::new(x_layout, w_layout, (self.h_out, self.w_out))?;
        let x = f32_data(x_storage, x_layout, "stride-2 convolution input")?;
        let kernel = f32_data(w_storage, w_layout, "stride-2 convolution kernel")?;
        let y = geometry.correlate(x, kernel);
        Ok((CpuStorage::F32(y), Shape::from((geometry.n, geometry.o, self.h_out, self.w_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // Arguments outside the autograd graph, such as input images, get no gradient.
        let (_, _, h, wd) = x.dims4()?;
        let grad = grad.contiguous()?;
        let grad_x = x.track_op().then(|| grad.apply_op2(w, Stride2TransposedGemm { h, w: wd })).transpose()?;
        let kernel_grad = Stride2KernelGrad { k: w.dim(2)? };
        let grad_w = w.track_op().then(|| x.apply_op2_no_bwd(&grad, &kernel_grad)).transpose()?;
        Ok((grad_x, grad_w))
    }
}

/// Stride-2 transposed correlation of (g, kernel) on the CPU in f32, to an `h`×`w` output.
struct Stride2TransposedGemm {
    h: usize,
    w: usize,
}

impl CustomOp2 for Stride2TransposedGemm {
    fn name(&self) -> &'static str {
        "pegan-conv-transpose2d-stride2-gemm"
    }

    fn cpu_fwd(
        &self,
        g_storage: &CpuStorage,
        g_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, _, h_out, w_out) = g_layout.shape().dims4()?;
        let (o, c, _, _) = w_layout.shape().dims4()?;
        let input = Layout::contiguous((n, c, self.h, self.w));
        let geometry = Stride2::new(&input, w_layout, (h_out, w_out))?;
        if g_layout.shape().dims()[1] != o {
            candle_core::bail!("output gradient {:?} does not match a kernel {:?}", g_layout.dims(), w_layout.dims());
        }
        let g = f32_data(g_storage, g_layout, "transposed convolution input")?;
        let kernel = f32_data(w_storage, w_layout, "transposed convolution kernel")?;
        let out = geometry.transposed(g, kernel);
        Ok((CpuStorage::F32(out), input.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        w: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // The transposed correlation is the adjoint of the correlation with the same kernel.
        let (_, _, h_out, w_out) = g.dims4()?;
        let grad = grad.contiguous()?;
        let grad_g = g.track_op().then(|| grad.apply_op2(w, Stride2Gemm { h_out, w_out })).transpose()?;
        let kernel_grad = Stride2KernelGrad { k: w.dim(2)? };
        let grad_w = w.track_op().then(|| grad.apply_op2_no_bwd(g, &kernel_grad)).transpose()?;
        Ok((grad_g, grad_w))
    }
}

/// Kernel gradient of a stride-2 correlation from (input, output gradient), on the CPU in f32.
struct Stride2KernelGrad {
    k: usize,
}

impl CustomOp2 for Stride2KernelGrad {
    fn name(&self) -> &'static str {
        "pegan-conv2d-stride2-kernel-grad"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, c, _, _) = x_layout.shape().dims4()?;
        let (_, o, h_out, w_out) = g_layout.shape().dims4()?;
        let kernel = Layout::contiguous((o, c, self.k, self.k));
        let geometry = Stride2::new(x_layout, &kernel, (h_out, w_out))?;
        if g_layout.shape().dims()[0] != geometry.n {
            candle_core::bail!("output gradient {:?} does not match an input {:?}", g_layout.dims(), x_layout.dims());
        }
        let x = f32_data(x_storage, x_layout, "stride-2 convolution input")?;
        let g = f32_data(g_storage, g_layout, "stride-2 convolution output gradient")?;
        let grad = geometry.kernel_grad(x, g);
        Ok((CpuStorage::F32(grad), kernel.shape().clone()))
    }
}
