//! 2-D convolution entry points used by every layer of the library.
//!
//! [`conv2d`], [`conv2d_input_grad`] and [`conv2d_weight_grad`] take stride 1, dilation 1 and one
//! group, with the same zero padding on every side, and are differentiable in all their tensor
//! arguments. The backward pass of each is built from the other two, so gradient penalties, which
//! differentiate through `conv2d_input_grad`, get exact weight gradients.
//!
//! On the CPU in f32 they run as candle custom ops on at most [`num_threads`] threads of candle's CPU
//! thread pool. Where the CPU has AVX-512, wide layers on wide rows run as an implicit GEMM
//! (`implicit_gemm.rs`, `implicit_weight_grad.rs`) and layers with few output channels on direct
//! kernels. Wide 3×3 layers on narrow rows run on Winograd's F(2×2, 3×3) (`winograd.rs`), and the rest
//! on im2col tiles with the gemm crate. Other devices and dtypes use candle's own ops.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

use super::f32_data;
use crate::{Error, Result};

/// Shapes of one convolution: input (N, Cin, H, W), weight (Cout, Cin, k, k), output (N, Cout, Ho, Wo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvShape {
    pub batch: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub padding: usize,
    pub h_out: usize,
    pub w_out: usize,
}

/// Checks that `w` is a (Cout, Cin, k, k) kernel on the same device and with the same dtype as `other`.
fn check_kernel(other: &Tensor, other_name: &str, w: &Tensor) -> Result<(usize, usize, usize)> {
    let &[c_out, c_in, kh, kw] = w.dims() else {
        return Err(Error::invalid(format!(
            "convolution weight must have shape (Cout, Cin, k, k), got {:?}",
            w.dims()
        )));
    };
    if kh != kw || kh == 0 {
        return Err(Error::invalid(format!(
            "convolution weight must have a square, non-empty kernel, got shape {:?}",
            w.dims()
        )));
    }
    if other.dtype() != w.dtype() {
        return Err(Error::invalid(format!(
            "convolution {other_name} {:?} has dtype {:?} but the weight {:?} has dtype {:?}",
            other.dims(),
            other.dtype(),
            w.dims(),
            w.dtype()
        )));
    }
    if !other.device().same_device(w.device()) {
        return Err(Error::invalid(format!(
            "convolution {other_name} {:?} is on {:?} but the weight {:?} is on {:?}",
            other.dims(),
            other.device(),
            w.dims(),
            w.device()
        )));
    }
    Ok((c_out, c_in, kh))
}

/// Validates the arguments of [`conv2d`] and returns the shapes involved.
pub(crate) fn conv2d_shape(x: &Tensor, w: &Tensor, padding: usize) -> Result<ConvShape> {
    let &[batch, c_in, h, width] = x.dims() else {
        return Err(Error::invalid(format!("conv2d input must have shape (N, Cin, H, W), got {:?}", x.dims())));
    };
    let (c_out, c_in_w, k) = check_kernel(x, "input", w)?;
    if c_in != c_in_w {
        return Err(Error::invalid(format!(
            "conv2d input {:?} has {c_in} channels but the weight {:?} expects {c_in_w}",
            x.dims(),
            w.dims()
        )));
    }
    if h + 2 * padding < k || width + 2 * padding < k {
        return Err(Error::invalid(format!(
            "conv2d input {:?} with padding {padding} is smaller than the {k}x{k} kernel",
            x.dims()
        )));
    }
    Ok(ConvShape {
        batch,
        c_in,
        c_out,
        h,
        w: width,
        k,
        padding,
        h_out: h + 2 * padding - k + 1,
        w_out: width + 2 * padding - k + 1,
    })
}

/// Validates the arguments of [`conv2d_input_grad`] and returns the shapes of the forward
/// convolution whose input gradient is requested.
fn input_grad_shape(g: &Tensor, w: &Tensor, padding: usize) -> Result<ConvShape> {
    let &[batch, c_out, h_out, w_out] = g.dims() else {
        return Err(Error::invalid(format!(
            "conv2d_input_grad output gradient must have shape (N, Cout, Ho, Wo), got {:?}",
            g.dims()
        )));
    };
    let (c_out_w, c_in, k) = check_kernel(g, "output gradient", w)?;
    if c_out != c_out_w {
        return Err(Error::invalid(format!(
            "conv2d_input_grad output gradient {:?} has {c_out} channels but the weight {:?} produces {c_out_w}",
            g.dims(),
            w.dims()
        )));
    }
    if h_out + k - 1 <= 2 * padding || w_out + k - 1 <= 2 * padding {
        return Err(Error::invalid(format!(
            "conv2d_input_grad output gradient {:?} with a {k}x{k} kernel and padding {padding} gives an empty input",
            g.dims()
        )));
    }
    Ok(ConvShape {
        batch,
        c_in,
        c_out,
        h: h_out + k - 1 - 2 * padding,
        w: w_out + k - 1 - 2 * padding,
        k,
        padding,
        h_out,
        w_out,
    })
}

/// Applies a 2-D convolution with stride 1, dilation 1, one group and zero padding `padding` on each side.
///
/// `x` is (N, Cin, H, W) and `w` is (Cout, Cin, k, k). The output is (N, Cout, H + 2p - k + 1, W + 2p - k + 1).
/// The result is differentiable in `x` and `w`.
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
    conv2d_shape(x, w, padding)?;
    Ok(conv2d_unchecked(x, w, padding)?)
}

/// Computes the gradient of `sum(conv2d(x, w, padding) * g)` with respect to `x`.
///
/// This is the transposed convolution of `g` (N, Cout, Ho, Wo) with `w` (Cout, Cin, k, k). The output is
/// (N, Cin, Ho + k - 1 - 2p, Wo + k - 1 - 2p). The result is differentiable in `g` and `w`, so gradient
/// penalties built from it can be back-propagated to the weights.
pub fn conv2d_input_grad(g: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
    input_grad_shape(g, w, padding)?;
    Ok(input_grad_unchecked(g, w, padding)?)
}

/// Computes the gradient of `sum(conv2d(x, w, padding) * g)` with respect to `w`.
///
/// `x` is (N, Cin, H, W) and `g` is (N, Cout, Ho, Wo). The output is (Cout, Cin, k, k) with
/// k = H + 2p - Ho + 1, which must equal W + 2p - Wo + 1. The result is differentiable in `x` and `g`.
pub fn conv2d_weight_grad(x: &Tensor, g: &Tensor, padding: usize) -> Result<Tensor> {
    let k = weight_grad_kernel_size(x, g, padding)?;
    Ok(weight_grad_unchecked(x, g, padding, k)?)
}

/// Validates the arguments of [`conv2d_weight_grad`] and returns the kernel size.
fn weight_grad_kernel_size(x: &Tensor, g: &Tensor, padding: usize) -> Result<usize> {
    let (&[batch, _, h, w], &[batch_g, _, h_out, w_out]) = (x.dims(), g.dims()) else {
        return Err(Error::invalid(format!(
            "conv2d_weight_grad takes an input (N, Cin, H, W) and an output gradient (N, Cout, Ho, Wo), got {:?} and {:?}",
            x.dims(),
            g.dims()
        )));
    };
    if x.dtype() != g.dtype() || !x.device().same_device(g.device()) {
        return Err(Error::invalid(format!(
            "conv2d_weight_grad input {:?} ({:?} on {:?}) and output gradient {:?} ({:?} on {:?}) must share dtype and device",
            x.dims(),
            x.dtype(),
            x.device(),
            g.dims(),
            g.dtype(),
            g.device()
        )));
    }
    let kh = (h + 2 * padding + 1).checked_sub(h_out);
    let kw = (w + 2 * padding + 1).checked_sub(w_out);
    match (kh, kw) {
        (Some(k), Some(kw)) if batch == batch_g && k == kw && k > 0 => Ok(k),
        _ => Err(Error::invalid(format!(
            "conv2d_weight_grad output gradient {:?} does not match a square-kernel convolution of input {:?} with padding {padding}",
            g.dims(),
            x.dims()
        ))),
    }
}

/// Returns `true` if `t` can use this module's CPU kernels, which handle f32 on the CPU only.
pub(crate) fn uses_cpu_kernels(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// [`conv2d`] without argument checks. The backward passes call it with shapes that are valid by construction.
fn conv2d_unchecked(x: &Tensor, w: &Tensor, padding: usize) -> candle_core::Result<Tensor> {
    if uses_cpu_kernels(x) {
        return x.contiguous()?.apply_op2(&w.contiguous()?, Conv2dOp { padding });
    }
    x.conv2d(w, padding, 1, 1, 1)
}

/// [`conv2d_input_grad`] without argument checks.
pub(crate) fn input_grad_unchecked(g: &Tensor, w: &Tensor, padding: usize) -> candle_core::Result<Tensor> {
    if uses_cpu_kernels(g) {
        return g.contiguous()?.apply_op2(&w.contiguous()?, InputGradOp { padding });
    }
    let k = w.dim(3)?;
    if padding >= k {
        // The equivalent direct convolution would need negative padding.
        return g.conv_transpose2d(w, padding, 0, 1, 1);
    }
    // A transposed convolution is a direct convolution of the output gradient, padded by k - 1 - p,
    // with the spatially flipped kernel whose in and out channels are swapped. candle's own
    // conv_transpose2d is a direct loop and much slower on the CPU.
    let flipped = flip_kernel(w)?.transpose(0, 1)?;
    g.conv2d(&flipped, k - 1 - padding, 1, 1, 1)
}

/// [`conv2d_weight_grad`] without argument checks; `k` is the kernel size.
pub(crate) fn weight_grad_unchecked(x: &Tensor, g: &Tensor, padding: usize, k: usize) -> candle_core::Result<Tensor> {
    if uses_cpu_kernels(x) {
        return x.contiguous()?.apply_op2(&g.contiguous()?, WeightGradOp { padding, k });
    }
    // Treats the batch as the channel axis: correlating x^T (Cin, N, H, W) with g^T (Cout, N, Ho, Wo)
    // sums over the batch and gives (Cin, Cout, k, k).
    let grad = x.transpose(0, 1)?.conv2d(&g.transpose(0, 1)?, padding, 1, 1, 1)?;
    grad.transpose(0, 1)
}

/// Reverses the two spatial axes of a (Cout, Cin, k, k) kernel.
fn flip_kernel(w: &Tensor) -> candle_core::Result<Tensor> {
    let k = w.dim(3)?;
    let reversed: Vec<u32> = (0..k as u32).rev().collect();
    let index = Tensor::from_vec(reversed, k, w.device())?;
    w.index_select(&index, 2)?.index_select(&index, 3)
}

fn dims4(layout: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    layout.shape().dims4()
}

/// `conv2d` on the CPU in f32: arguments (x, w).
struct Conv2dOp {
    padding: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "pegan-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, c_in, h_in, w_in) = dims4(l1)?;
        let (c_out, _, k, _) = dims4(l2)?;
        let geometry = cpu::Correlation {
            batch,
            c_in,
            h_in,
            w_in,
            c_out,
            k,
            pad: self.padding as isize,
            h_out: h_in + 2 * self.padding + 1 - k,
            w_out: w_in + 2 * self.padding + 1 - k,
        };
        let x = f32_data(s1, l1, "convolution input")?;
        let w = f32_data(s2, l2, "convolution weight")?;
        let y = cpu::correlate(x, w, &geometry, num_threads());
        Ok((CpuStorage::F32(y), Shape::from((batch, c_out, geometry.h_out, geometry.w_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // Arguments outside the autograd graph, such as input images, get no gradient.
        let k = w.dim(3)?;
        let grad_x = x.track_op().then(|| input_grad_unchecked(grad, w, self.padding)).transpose()?;
        let grad_w = w.track_op().then(|| weight_grad_unchecked(x, grad, self.padding, k)).transpose()?;
        Ok((grad_x, grad_w))
    }
}

/// `conv2d_input_grad` on the CPU in f32: arguments (g, w).
struct InputGradOp {
    padding: usize,
}

impl CustomOp2 for InputGradOp {
    fn name(&self) -> &'static str {
        "pegan-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, c_out, h_out, w_out) = dims4(l1)?;
        let (_, c_in, k, _) = dims4(l2)?;
        let g = f32_data(s1, l1, "convolution output gradient")?;
        let w = f32_data(s2, l2, "convolution weight")?;
        // The transposed convolution correlates g, padded by k - 1 - p (cropped when that is negative),
        // with the flipped kernel whose in and out channels are swapped.
        let geometry = cpu::Correlation {
            batch,
            c_in: c_out,
            h_in: h_out,
            w_in: w_out,
            c_out: c_in,
            k,
            pad: k as isize - 1 - self.padding as isize,
            h_out: h_out + k - 1 - 2 * self.padding,
            w_out: w_out + k - 1 - 2 * self.padding,
        };
        let dx = cpu::correlate_transposed(g, w, &geometry, num_threads());
        Ok((CpuStorage::F32(dx), Shape::from((batch, c_in, geometry.h_out, geometry.w_out))))
    }

    fn bwd(
        &self,
        g: &Tensor,
        w: &Tensor,
        _dx: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // conv2d_input_grad(g, w) is the adjoint of x -> conv2d(x, w), so its gradient with respect to g
        // is the forward convolution, and with respect to w it is the weight gradient of that convolution
        // with `grad` as the input and g as the output gradient.
        let k = w.dim(3)?;
        let grad_g = g.track_op().then(|| conv2d_unchecked(grad, w, self.padding)).transpose()?;
        let grad_w = w.track_op().then(|| weight_grad_unchecked(grad, g, self.padding, k)).transpose()?;
        Ok((grad_g, grad_w))
    }
}

/// `conv2d_weight_grad` on the CPU in f32: arguments (x, g).
struct WeightGradOp {
    padding: usize,
    k: usize,
}

impl CustomOp2 for WeightGradOp {
    fn name(&self) -> &'static str {
        "pegan-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, c_in, h_in, w_in) = dims4(l1)?;
        let (_, c_out, h_out, w_out) = dims4(l2)?;
        let geometry =
            cpu::Correlation { batch, c_in, h_in, w_in, c_out, k: self.k, pad: self.padding as isize, h_out, w_out };
        let x = f32_data(s1, l1, "convolution input")?;
        let g = f32_data(s2, l2, "convolution output gradient")?;
        let dw = cpu::correlate_weight_grad(x, g, &geometry, num_threads());
        Ok((CpuStorage::F32(dw), Shape::from((c_out, c_in, self.k, self.k))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        _dw: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // The weight gradient is bilinear in (x, g): <dW(x, g), V> = <g, conv2d(x, V)> = <x, input_grad(g, V)>.
        let grad_x = x.track_op().then(|| input_grad_unchecked(g, grad, self.padding)).transpose()?;
        let grad_g = g.track_op().then(|| conv2d_unchecked(x, grad, self.padding)).transpose()?;
        Ok((grad_x, grad_g))
    }
}

pub(crate) use cpu::{matmul, runs_implicit_gemm, zero_padded_planes, Correlation};

/// Requested number of threads for the CPU convolution kernels, with 0 meaning all that candle's pool has.
static NUM_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the maximum number of threads the CPU convolution kernels use; 0 means all of candle's CPU pool.
///
/// The kernels spawn no threads: they run on the calling thread and the workers of candle's CPU pool
/// (`candle_core::utils::barrier_pool`, one thread per physical core unless `CANDLE_NUM_THREADS` or
/// `RAYON_NUM_THREADS` sets another count), so larger values are capped at the pool's size. The pool runs
/// one call at a time, so convolutions from several host threads do not oversubscribe the cores. The
/// setting is global to the process and applies to calls that start after it.
pub fn set_num_threads(n: usize) {
    NUM_THREADS.store(n, Ordering::Relaxed);
}

/// Returns the number of threads the CPU convolution kernels use, at least 1.
pub fn num_threads() -> usize {
    let pool_threads = candle_core::utils::barrier_pool().n_workers() + 1;
    match NUM_THREADS.load(Ordering::Relaxed) {
        0 => pool_threads,
        n => n.min(pool_threads),
    }
}

/// f32 CPU kernels and the choice between them. The im2col path copies tiles of the input into a
/// per-thread buffer and multiplies them with the gemm crate, one single-threaded GEMM per tile. The
/// direct kernels of the `avx512` submodule and the implicit GEMM read the input in place, and the
/// Winograd path transforms it in blocks of tiles. Tasks are spread over the threads of candle's pool.
mod cpu {
    use std::cell::RefCell;
    use std::ops::Range;

    use crate::ops::winograd::KernelLayout;
    use crate::ops::{run_tasks, SharedMut};

    /// Geometry of a cross-correlation with stride 1: for every image n,
    /// `out[n, o, i, j] = sum over c, a, b of input[n, c, i + a - pad, j + b - pad] * weight[o, c, a, b]`,
    /// where input values outside the image are zero.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Correlation {
        pub batch: usize,
        pub c_in: usize,
        pub h_in: usize,
        pub w_in: usize,
        pub c_out: usize,
        pub k: usize,
        /// Rows and columns of zeros before the input. Negative values crop the input instead.
        pub pad: isize,
        pub h_out: usize,
        pub w_out: usize,
    }

    impl Correlation {
        /// Length of one im2col column: the input values one output pixel reads.
        pub(crate) fn patch_len(&self) -> usize {
            self.c_in * self.k * self.k
        }

        pub(crate) fn in_pixels(&self) -> usize {
            self.h_in * self.w_in
        }

        pub(crate) fn out_pixels(&self) -> usize {
            self.h_out * self.w_out
        }

        /// Returns `true` if the im2col matrix of an image is the image itself (a 1x1 kernel without padding).
        fn is_pointwise(&self) -> bool {
            self.k == 1 && self.pad == 0 && self.h_in == self.h_out && self.w_in == self.w_out
        }
    }

    /// Copies each of the `planes` planes of `input` (h_in × w_in values each, contiguous) into a zeroed
    /// plane of `rows` × `columns` values, input pixel (y, x) landing at (y + pad, x + pad). Pixels that
    /// land outside are dropped, so a negative `pad` crops.
    pub(crate) fn zero_padded_planes(
        input: &[f32],
        planes: usize,
        (h_in, w_in): (usize, usize),
        (rows, columns): (usize, usize),
        pad: isize,
        threads: usize,
    ) -> Vec<f32> {
        let plane = rows * columns;
        let mut padded = vec![0.0f32; planes * plane];
        // Input columns x_lo..x_hi land inside the padded rows (all but those a crop removes).
        let (x_lo, x_hi) = ((-pad).max(0) as usize, (columns as isize - pad).clamp(0, w_in as isize) as usize);
        // Nothing lands inside when the input has no columns or the crop removes them all. This also keeps
        // a zero width away from `chunks_exact`, which rejects it.
        if x_hi <= x_lo {
            return padded;
        }

        let dst = SharedMut(padded.as_mut_ptr());
        run_tasks(planes, threads, |_, index| {
            let src = &input[index * h_in * w_in..(index + 1) * h_in * w_in];
            for (y, line) in src.chunks_exact(w_in).enumerate() {
                let row = y as isize + pad;
                if row < 0 || row >= rows as isize {
                    continue;
                }
                let start = index * plane + row as usize * columns + (x_lo as isize + pad) as usize;
                // SAFETY: plane `index` belongs to this task alone, and the run ends inside its row.
                let out = unsafe { std::slice::from_raw_parts_mut(dst.ptr().add(start), x_hi - x_lo) };
                out.copy_from_slice(&line[x_lo..x_hi]);
            }
        });
        padded
    }

    /// Im2col tile size, in bytes, when each tile value feeds few multiply-adds (fewer than
    /// `WIDE_OUTPUT_CHANNELS` output channels): small enough to stay in a core's L2 cache.
    const NARROW_TILE_BYTES: usize = 1 << 20;
    /// Im2col tile size, in bytes, for at least `WIDE_OUTPUT_CHANNELS` output channels, where the GEMM
    /// dominates and larger tiles spare repacking the weight matrix.
    const WIDE_TILE_BYTES: usize = 8 << 20;
    const WIDE_OUTPUT_CHANNELS: usize = 128;
    /// Upper bound on the im2col buffers of all threads together.
    const SCRATCH_BUDGET_BYTES: usize = 64 << 20;
    /// Tiles are not split below this many output pixels to balance threads; the GEMM gets inefficient.
    const MIN_TILE_PIXELS: usize = 128;

    /// Chooses the number of output pixels per im2col tile of `rows` values per pixel.
    fn tile_pixels(rows: usize, pixels: usize, batch: usize, c_out: usize, threads: usize) -> usize {
        let mut tile = (tile_bytes(c_out, threads) / (4 * rows.max(1))).clamp(1, pixels.max(1));
        // Split further so that every thread gets a few tiles, as long as tiles stay large enough.
        while threads > 1 && batch * pixels.div_ceil(tile) < 4 * threads && tile / 2 >= MIN_TILE_PIXELS {
            tile /= 2;
        }
        if tile >= LANES {
            tile -= tile % LANES;
        }
        tile
    }

    /// Size of one thread's im2col tile for `c_out` output channels, in bytes.
    fn tile_bytes(c_out: usize, threads: usize) -> usize {
        let target_bytes = if c_out >= WIDE_OUTPUT_CHANNELS { WIDE_TILE_BYTES } else { NARROW_TILE_BYTES };
        target_bytes.min(SCRATCH_BUDGET_BYTES / threads.max(1))
    }

    thread_local! {
        /// Per-thread im2col tile buffer, kept between calls to avoid page faults on every tile.
        static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }

    /// Runs `body` with this thread's scratch buffer of at least `len` elements.
    ///
    /// NOTE: the buffer is kept for the thread's lifetime, so each thread that ever ran a convolution
    /// keeps the largest tile it used: about `WIDE_TILE_BYTES`, plus its block of dw for a weight gradient.
    fn with_scratch<R>(len: usize, body: impl FnOnce(&mut [f32]) -> R) -> R {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < len {
                scratch.resize(len, 0.0);
            }
            body(&mut scratch[..len])
        })
    }

    /// Computes `dst (m x n) = lhs (m x depth) * rhs (depth x n)`, or adds the product to `dst` when
    /// `accumulate` is set. Strides are in elements, as (row stride, column stride).
    ///
    /// # Safety
    /// Every pointer must address its whole matrix under the given strides, and `dst` must not alias
    /// `lhs` or `rhs` or be written by another thread during the call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn matmul(
        (m, n, depth): (usize, usize, usize),
        dst: *mut f32,
        dst_strides: (usize, usize),
        accumulate: bool,
        lhs: *const f32,
        lhs_strides: (usize, usize),
        rhs: *const f32,
        rhs_strides: (usize, usize),
    ) {
        if m == 0 || n == 0 {
            return;
        }
        if depth == 0 {
            if !accumulate {
                for i in 0..m {
                    for j in 0..n {
                        *dst.add(i * dst_strides.0 + j * dst_strides.1) = 0.0;
                    }
                }
            }
            return;
        }
        gemm::gemm(
            m,
            n,
            depth,
            dst,
            dst_strides.1 as isize,
            dst_strides.0 as isize,
            accumulate,
            lhs,
            lhs_strides.1 as isize,
            lhs_strides.0 as isize,
            rhs,
            rhs_strides.1 as isize,
            rhs_strides.0 as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }

    /// Fills `col` with the im2col rows of input channels `channels` for output pixels `pixels` of one
    /// image: row `(c - channels.start) * k * k + a * k + b`, column `p - pixels.start` contains the input
    /// value that kernel tap (a, b) of channel c multiplies for output pixel p. Rows are `stride` apart
    /// and start at column `offset`; other columns are left as they are.
    fn im2col(
        image: &[f32],
        geometry: &Correlation,
        channels: Range<usize>,
        pixels: Range<usize>,
        col: &mut [f32],
        (stride, offset): (usize, usize),
    ) {
        let Correlation { h_in, w_in, w_out, k, pad, .. } = *geometry;
        let width = pixels.len();
        let mut r = 0;
        for c in channels {
            let plane = &image[c * h_in * w_in..(c + 1) * h_in * w_in];
            for a in 0..k {
                for b in 0..k {
                    let row = &mut col[r * stride + offset..r * stride + offset + width];
                    r += 1;
                    // Output columns j in [j_lo, j_hi) read input column j + shift, the others read padding.
                    let shift = b as isize - pad;
                    let j_lo = (-shift).clamp(0, w_out as isize) as usize;
                    let j_hi = (w_in as isize - shift).clamp(j_lo as isize, w_out as isize) as usize;
                    let mut p = pixels.start;
                    while p < pixels.end {
                        let (i, j0) = (p / w_out, p % w_out);
                        let j1 = w_out.min(j0 + pixels.end - p);
                        let out = &mut row[p - pixels.start..p - pixels.start + (j1 - j0)];
                        let y = i as isize + a as isize - pad;
                        if y < 0 || y >= h_in as isize {
                            out.fill(0.0);
                        } else {
                            let src = &plane[y as usize * w_in..(y as usize + 1) * w_in];
                            let copy_lo = j_lo.clamp(j0, j1);
                            let copy_hi = j_hi.clamp(copy_lo, j1);
                            out[..copy_lo - j0].fill(0.0);
                            if copy_hi > copy_lo {
                                let from = (copy_lo as isize + shift) as usize;
                                out[copy_lo - j0..copy_hi - j0].copy_from_slice(&src[from..from + (copy_hi - copy_lo)]);
                            }
                            out[copy_hi - j0..].fill(0.0);
                        }
                        p += j1 - j0;
                    }
                }
            }
        }
    }

    /// GEMM sizes that are a multiple of the AVX-512 f32 lane count let the gemm crate skip a packing
    /// copy of the im2col tile (measured: about 1.5x faster for 32 output channels, 5x for 3).
    const LANES: usize = 16;

    /// Output channel count from which the forward correlation, where it does not run as an implicit GEMM,
    /// uses im2col and the gemm crate instead of the direct AVX-512 kernel, because with many outputs per
    /// im2col value the GEMM is faster. Measured on a 2-core Xeon with AVX-512, 1 thread: 64 channels
    /// direct 137 vs GEMM 121 GFLOP/s, 512 channels 104 vs 147.
    const DIRECT_MAX_OUTPUTS: usize = 128;

    /// Output channel count from which a layer runs as an implicit GEMM, whose weight panels have 64
    /// channels. Measured on 2 threads: 64 -> 64 channels at 256x256 17.1 ms against 22.2 ms with the
    /// direct kernel, 32 -> 32 channels at 254x192 5.8 ms against 3.7 ms.
    const IMPLICIT_GEMM_MIN_OUTPUTS: usize = 64;
    /// Patch length (c_in · k²) from which a wide layer runs as an implicit GEMM rather than on im2col tiles
    /// and the gemm crate. Below it, the implicit GEMM's transposed stores cost more than the copies it
    /// saves (measured at 3 -> 128 channels: 4.2 ms against 2.7 ms on 2 threads).
    const IMPLICIT_GEMM_MIN_DEPTH: usize = 128;
    /// Output width from which a wide layer runs as an implicit GEMM. Narrower rows end in partial
    /// register blocks more often: 512 -> 512 channels at 16x16, batch 4, took 21.9 ms against 16.9 ms
    /// on im2col tiles (2 threads), while 128 -> 128 channels at 252x190 took 47 ms against 61 ms.
    const IMPLICIT_GEMM_MIN_WIDTH: usize = 64;

    /// The kernel that runs a stride-1 correlation on the CPU.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    enum ForwardPath {
        ImplicitGemm,
        Direct,
        Winograd,
        Im2colGemm,
    }

    /// Chooses the kernel for the geometry, by the measurements next to the constants above.
    fn forward_path(g: &Correlation) -> ForwardPath {
        #[cfg(target_arch = "x86_64")]
        if avx512::is_available() {
            // The implicit GEMM addresses an image with 32-bit offsets.
            if g.c_out >= IMPLICIT_GEMM_MIN_OUTPUTS
                && g.patch_len() >= IMPLICIT_GEMM_MIN_DEPTH
                && g.w_out >= IMPLICIT_GEMM_MIN_WIDTH
                && g.c_in * g.in_pixels() <= u32::MAX as usize
            {
                return ForwardPath::ImplicitGemm;
            }
            if g.c_out < DIRECT_MAX_OUTPUTS {
                return ForwardPath::Direct;
            }
        }
        // Wide 3x3 layers on narrow rows (measured, 2 threads: 512 channels at 16x16, batch 4, 10.4
        // against 16.2 ms on im2col tiles, 256 channels at 32x32, batch 4, 10.5 against 25.1 ms).
        if crate::ops::winograd::suits(g) {
            return ForwardPath::Winograd;
        }
        ForwardPath::Im2colGemm
    }

    /// Returns `true` if [`correlate`] runs this geometry as an implicit GEMM, which can also apply a
    /// bias and leaky ReLU to each output block before storing it.
    pub(crate) fn runs_implicit_gemm(g: &Correlation) -> bool {
        forward_path(g) == ForwardPath::ImplicitGemm
    }

    /// Computes the correlation of `input` (batch, c_in, h_in, w_in) with `weight` (c_out, c_in, k, k),
    /// both contiguous, and returns the contiguous (batch, c_out, h_out, w_out) output.
    pub(super) fn correlate(input: &[f32], weight: &[f32], geometry: &Correlation, threads: usize) -> Vec<f32> {
        match forward_path(geometry) {
            #[cfg(target_arch = "x86_64")]
            ForwardPath::ImplicitGemm => crate::ops::implicit_gemm::correlate(input, weight, geometry, None, threads),
            #[cfg(target_arch = "x86_64")]
            ForwardPath::Direct => avx512::correlate(input, weight, geometry, threads),
            ForwardPath::Winograd => {
                crate::ops::winograd::correlate(input, (weight, KernelLayout::Direct), geometry, threads)
            }
            _ => correlate_gemm(input, weight, geometry, threads),
        }
    }

    /// [`correlate`] with the kernel of the convolution whose input gradient this is: `weight` is
    /// (c_in, c_out, k, k) and is used rotated by 180 degrees. The Winograd path reads it as it is; the
    /// others take a flipped copy.
    pub(super) fn correlate_transposed(
        input: &[f32],
        weight: &[f32],
        geometry: &Correlation,
        threads: usize,
    ) -> Vec<f32> {
        if forward_path(geometry) == ForwardPath::Winograd {
            return crate::ops::winograd::correlate(input, (weight, KernelLayout::Transposed), geometry, threads);
        }
        let flipped = flip_and_swap_channels(weight, geometry.c_in, geometry.c_out, geometry.k, threads);
        correlate(input, &flipped, geometry, threads)
    }

    /// Computes the weight gradient of the correlation: `dw[o, c, a, b] = sum over n, i, j of
    /// grad[n, o, i, j] * input[n, c, i + a - pad, j + b - pad]`, returned as a contiguous (c_out, c_in, k, k).
    pub(super) fn correlate_weight_grad(
        input: &[f32],
        grad: &[f32],
        geometry: &Correlation,
        threads: usize,
    ) -> Vec<f32> {
        // The gemm crate is faster except when one side of the product is narrow. Measured on a 2-core
        // Xeon with AVX-512, 1 thread: 32 -> 32 channels GEMM 110 vs direct 100 GFLOP/s, 32 -> 3 channels
        // 12 vs 95, 3 -> 32 channels 65 vs 86.
        #[cfg(target_arch = "x86_64")]
        if (geometry.c_out < 16 || geometry.patch_len() < 64) && avx512::is_available() {
            return avx512::correlate_weight_grad(input, grad, geometry, threads);
        }
        // Rows of 64 or more pixels: the implicit GEMM (measured, 2 threads: 32 -> 32 channels at 256x194
        // 4.5 -> 3.1 ms, 64 -> 64 at 256² 21.5 -> 15.2 ms, 128 -> 128 at 254x192 53.5 -> 50.7 ms). On
        // 16-pixel rows it measured 32 against 18 ms (512 channels, batch 4), because an eighth of the
        // pixels take the edge path and every row pays its setup.
        #[cfg(target_arch = "x86_64")]
        // Its row mask has 32 bits, one per kernel row.
        if geometry.w_out >= IMPLICIT_GEMM_MIN_WIDTH && geometry.k <= 32 && avx512::is_available() {
            return crate::ops::implicit_weight_grad::correlate_weight_grad(input, grad, geometry, threads);
        }
        // Other wide 3x3 layers: Winograd's F(2x2, 3x3) (measured, 2 threads: 512 channels at 16x16,
        // batch 4, 11.5 against 15.4 ms on im2col tiles).
        if crate::ops::winograd::suits(geometry) {
            return crate::ops::winograd::correlate_weight_grad(input, grad, geometry, threads);
        }
        correlate_weight_grad_gemm(input, grad, geometry, threads)
    }

    /// [`correlate`] with im2col tiles and the gemm crate.
    fn correlate_gemm(input: &[f32], weight: &[f32], geometry: &Correlation, threads: usize) -> Vec<f32> {
        let g = *geometry;
        let (patch, pixels) = (g.patch_len(), g.out_pixels());
        let len = g.batch * g.c_out * pixels;
        if len == 0 || patch == 0 {
            return vec![0.0; len];
        }
        // The tasks below write every channel of every pixel once (the gemm crate overwrites its
        // destination), through raw pointers, so the buffer starts uninitialised instead of zero-filled.
        let mut output: Vec<f32> = Vec::with_capacity(len);

        let tile = if g.is_pointwise() { pixels } else { tile_pixels(patch, pixels, g.batch, g.c_out, threads) };
        let tiles_per_image = pixels.div_ceil(tile);
        // With fewer tiles than threads, split the output channels too; each part repeats the im2col.
        let tiles = g.batch * tiles_per_image;
        let channel_blocks = if tiles >= threads { 1 } else { threads.div_ceil(tiles).min(g.c_out.div_ceil(16)) };
        let block_channels = g.c_out.div_ceil(channel_blocks);
        let channel_blocks = g.c_out.div_ceil(block_channels);

        let dst = SharedMut(output.as_mut_ptr());
        run_tasks(tiles * channel_blocks, threads, |_, index| {
            let (tile_index, block) = (index / channel_blocks, index % channel_blocks);
            let (n, t) = (tile_index / tiles_per_image, tile_index % tiles_per_image);
            let pixel_range = t * tile..pixels.min((t + 1) * tile);
            let outputs = block * block_channels..g.c_out.min((block + 1) * block_channels);
            let image = &input[n * g.c_in * g.in_pixels()..(n + 1) * g.c_in * g.in_pixels()];
            let width = pixel_range.len();
            let lhs = weight[outputs.start * patch..].as_ptr();
            // SAFETY: (outputs, pixel_range) of image n is written by this task only, and lies in `output`.
            let dst_ptr = unsafe { dst.ptr().add((n * g.c_out + outputs.start) * pixels + pixel_range.start) };
            if g.is_pointwise() {
                let rhs = image[pixel_range.start..].as_ptr();
                // SAFETY: the input rows are c_in planes of `pixels` values each.
                unsafe {
                    matmul(
                        (outputs.len(), width, patch),
                        dst_ptr,
                        (pixels, 1),
                        false,
                        lhs,
                        (patch, 1),
                        rhs,
                        (pixels, 1),
                    );
                }
                return;
            }
            // A tile whose width is not a multiple of LANES gets zero columns up to one, and its
            // product goes to scratch space first.
            let stride = width.next_multiple_of(LANES);
            let staged = if stride == width { 0 } else { outputs.len() * stride };
            with_scratch(patch * stride + staged, |scratch| {
                let (col, staging) = scratch.split_at_mut(patch * stride);
                im2col(image, &g, 0..g.c_in, pixel_range.clone(), col, (stride, 0));
                for row in col.chunks_exact_mut(stride) {
                    row[width..].fill(0.0);
                }
                if staged == 0 {
                    // SAFETY: col is patch x width, the weight rows are patch long, and dst rows are `pixels` apart.
                    unsafe {
                        matmul(
                            (outputs.len(), width, patch),
                            dst_ptr,
                            (pixels, 1),
                            false,
                            lhs,
                            (patch, 1),
                            col.as_ptr(),
                            (width, 1),
                        );
                    }
                    return;
                }
                // SAFETY: staging is outputs x stride and col is patch x stride.
                unsafe {
                    matmul(
                        (outputs.len(), stride, patch),
                        staging.as_mut_ptr(),
                        (stride, 1),
                        false,
                        lhs,
                        (patch, 1),
                        col.as_ptr(),
                        (stride, 1),
                    );
                }
                for (o, row) in staging.chunks_exact(stride).enumerate() {
                    // SAFETY: row o of this task's output block, `width` values from pixel_range.start.
                    unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), dst_ptr.add(o * pixels), width) };
                }
            });
        });
        // SAFETY: the tiles and channel blocks cover every pixel and channel of every image, and each
        // task wrote its block in full.
        unsafe { output.set_len(len) };
        output
    }

    /// [`correlate_weight_grad`] with im2col tiles and the gemm crate.
    fn correlate_weight_grad_gemm(input: &[f32], grad: &[f32], geometry: &Correlation, threads: usize) -> Vec<f32> {
        let g = *geometry;
        let (patch, pixels, kk) = (g.patch_len(), g.out_pixels(), g.k * g.k);
        let len = g.c_out * patch;
        if len == 0 || g.batch == 0 || pixels == 0 {
            return vec![0.0; len];
        }

        // Tasks own disjoint blocks of input channels, so each builds only its own im2col rows and
        // writes its own part of dw. With fewer channels than threads, tasks also split the pixels
        // into parts, each adding into its own copy of dw.
        let channel_blocks = g.c_in.min(threads.max(1));
        let block_channels = g.c_in.div_ceil(channel_blocks);
        let channel_blocks = g.c_in.div_ceil(block_channels);
        let block_cols = block_channels * kk;
        // Work units: a tile of one image, or, for small images, a group of whole images whose pixels
        // form one longer GEMM, which spares reading and writing dw once per image. A group also
        // stages its output gradient rows next to each other.
        let unit_pixels = tile_bytes(g.c_out, threads) / (4 * (block_cols + g.c_out));
        let tile = if g.is_pointwise() { pixels } else { unit_pixels.clamp(1, pixels) };
        let tile = if tile >= LANES && tile < pixels { tile - tile % LANES } else { tile };
        let group = if g.is_pointwise() || tile < pixels { 1 } else { (unit_pixels / pixels).clamp(1, g.batch) };
        let mut units: Vec<(Range<usize>, Range<usize>)> = Vec::new();
        for n0 in (0..g.batch).step_by(group) {
            for t0 in (0..pixels).step_by(tile) {
                units.push((n0..g.batch.min(n0 + group), t0..pixels.min(t0 + tile)));
            }
        }
        let pixel_parts = if channel_blocks >= threads { 1 } else { units.len().min(threads.div_ceil(channel_blocks)) };

        let mut copies: Vec<Vec<f32>> = (0..pixel_parts).map(|_| vec![0.0f32; len]).collect();
        let copy_ptrs: Vec<SharedMut<f32>> = copies.iter_mut().map(|copy| SharedMut(copy.as_mut_ptr())).collect();
        run_tasks(channel_blocks * pixel_parts, threads, |_, index| {
            let (block, part) = (index % channel_blocks, index / channel_blocks);
            let channels = block * block_channels..g.c_in.min((block + 1) * block_channels);
            let cols = channels.len() * kk;
            let image = |n: usize| &input[n * g.c_in * g.in_pixels()..(n + 1) * g.c_in * g.in_pixels()];
            let max_width =
                units.iter().map(|(images, pixel_range)| images.len() * pixel_range.len()).max().unwrap_or(0);
            let staged_len = if group > 1 { g.c_out * max_width } else { 0 };
            // The task's block of dw is accumulated transposed, as (cols, c_out), because the gemm crate
            // runs faster with that destination (measured: 145 vs 95 GFLOP/s for 32 output channels).
            let col_len = if g.is_pointwise() { 0 } else { cols * max_width };
            with_scratch(cols * g.c_out + col_len + staged_len, |scratch| {
                let (acc, rest) = scratch.split_at_mut(cols * g.c_out);
                let (col, staged) = rest.split_at_mut(col_len);
                for (unit, (images, pixel_range)) in units.iter().enumerate().skip(part).step_by(pixel_parts) {
                    let accumulate = unit != part;
                    let (n0, len) = (images.start, pixel_range.len());
                    let width = images.len() * len;
                    let dst = acc.as_mut_ptr();
                    if g.is_pointwise() {
                        let lhs = grad[n0 * g.c_out * pixels + pixel_range.start..].as_ptr();
                        let rhs = image(n0)[channels.start * pixels + pixel_range.start..].as_ptr();
                        // SAFETY: acc is cols x c_out, grad rows are `pixels` apart, input planes too.
                        unsafe {
                            matmul(
                                (g.c_out, cols, width),
                                dst,
                                (1, g.c_out),
                                accumulate,
                                lhs,
                                (pixels, 1),
                                rhs,
                                (1, pixels),
                            );
                        }
                        continue;
                    }
                    // The output gradient rows of a group of images are staged next to each other.
                    let (lhs, lhs_stride) = if images.len() == 1 {
                        (grad[n0 * g.c_out * pixels + pixel_range.start..].as_ptr(), pixels)
                    } else {
                        (staged.as_ptr(), width)
                    };
                    for n in images.clone() {
                        let offset = (n - n0) * len;
                        im2col(image(n), &g, channels.clone(), pixel_range.clone(), col, (width, offset));
                        if images.len() > 1 {
                            for (o, row) in staged.chunks_exact_mut(width).take(g.c_out).enumerate() {
                                let start = (n * g.c_out + o) * pixels + pixel_range.start;
                                row[offset..offset + len].copy_from_slice(&grad[start..start + len]);
                            }
                        }
                    }
                    // SAFETY: col is cols x width read transposed, the output gradient rows are lhs_stride
                    // apart, and acc is cols x c_out.
                    unsafe {
                        matmul(
                            (g.c_out, cols, width),
                            dst,
                            (1, g.c_out),
                            accumulate,
                            lhs,
                            (lhs_stride, 1),
                            col.as_ptr(),
                            (1, width),
                        );
                    }
                }
                // SAFETY: columns channels.start * kk.. of copy `part` belong to this task alone.
                let block = unsafe { copy_ptrs[part].ptr().add(channels.start * kk) };
                transpose_into(acc, (cols, g.c_out), block, patch);
            });
        });

        let mut copies = copies.into_iter();
        let mut dw = copies.next().expect("at least one pixel part");
        for copy in copies {
            dw.iter_mut().zip(&copy).for_each(|(d, c)| *d += c);
        }
        dw
    }

    /// Writes the transpose of `src` (rows × columns, contiguous) to `dst`, whose rows are `dst_row`
    /// values apart. Where the CPU has AVX-512, 16 × 16 blocks are transposed in registers. The rest goes
    /// 16 source rows at a time, so that the writes stay within a few cache lines.
    fn transpose_into(src: &[f32], (rows, columns): (usize, usize), dst: *mut f32, dst_row: usize) {
        #[cfg(target_arch = "x86_64")]
        let (full_rows, full_columns) = if avx512::is_available() {
            let (full_rows, full_columns) = (rows / 16 * 16, columns / 16 * 16);
            for r0 in (0..full_rows).step_by(16) {
                for c0 in (0..full_columns).step_by(16) {
                    // SAFETY: both 16 × 16 blocks lie inside their matrices, and the CPU supports AVX-512F.
                    unsafe {
                        crate::ops::implicit_weight_grad::transpose_16x16(
                            src[r0 * columns + c0..].as_ptr(),
                            columns,
                            dst.add(c0 * dst_row + r0),
                            dst_row,
                        )
                    };
                }
            }
            (full_rows, full_columns)
        } else {
            (0, 0)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let (full_rows, full_columns) = (0, 0);

        // What the blocks left: the last columns of the full rows, then the last rows.
        let copy = |row_range: Range<usize>, column_range: Range<usize>| {
            for r0 in row_range.clone().step_by(16) {
                for c in column_range.clone() {
                    for r in r0..row_range.end.min(r0 + 16) {
                        // SAFETY: the caller's dst contains `columns` rows of at least `rows` values.
                        unsafe { *dst.add(c * dst_row + r) = src[r * columns + c] };
                    }
                }
            }
        };
        copy(0..full_rows, full_columns..columns);
        copy(full_rows..rows, 0..columns);
    }

    /// Returns `w` (c_out, c_in, k, k) with both spatial axes reversed and the channel axes swapped,
    /// as a contiguous (c_in, c_out, k, k).
    pub(super) fn flip_and_swap_channels(w: &[f32], c_out: usize, c_in: usize, k: usize, threads: usize) -> Vec<f32> {
        let kk = k * k;
        let mut flipped = vec![0.0f32; w.len()];
        // Each task writes the contiguous rows of a block of input channels (about 9 MiB in all for
        // 512 x 512 channels, so the copy is worth spreading over the threads).
        const BLOCK: usize = 16;
        let dst = SharedMut(flipped.as_mut_ptr());
        run_tasks(c_in.div_ceil(BLOCK), threads, |_, block| {
            let channels = block * BLOCK..c_in.min((block + 1) * BLOCK);
            #[cfg(target_arch = "x86_64")]
            if kk <= 16 && avx512::is_available() {
                // SAFETY: the rows of `channels` belong to this task alone, and the CPU supports AVX-512F.
                unsafe { avx512::flip_and_swap_block(w, dst, (c_out, c_in, kk), channels) };
                return;
            }
            for c in channels {
                for o in 0..c_out {
                    let src = &w[(o * c_in + c) * kk..(o * c_in + c + 1) * kk];
                    // SAFETY: row c of the output belongs to this task alone.
                    let out = unsafe { std::slice::from_raw_parts_mut(dst.ptr().add((c * c_out + o) * kk), kk) };
                    for (d, s) in out.iter_mut().zip(src.iter().rev()) {
                        *d = *s;
                    }
                }
            }
        });
        flipped
    }

    /// Direct correlation kernels written with AVX-512 intrinsics. Each vector contains 16 neighbouring
    /// output pixels of one row, so the input is read in place, without im2col.
    ///
    /// NOTE: the AVX-512 intrinsics need Rust 1.89 or newer, above the workspace's declared rust-version.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::incompatible_msrv)]
    mod avx512 {
        use std::arch::x86_64::*;
        use std::borrow::Cow;
        use std::sync::Mutex;

        use super::{run_tasks, Correlation, SharedMut};

        /// Pixels per vector.
        const LANES: usize = 16;
        /// Input channels per pass of the forward kernel, so that the input rows a block of output
        /// pixels reads stay in the L1 cache while all output channels are computed.
        const CHANNEL_CHUNK: usize = 32;
        /// Vector positions per task of the weight-gradient kernel (64 vectors are 1024 pixels).
        const WEIGHT_GRAD_CHUNK: usize = 64;

        pub(super) fn is_available() -> bool {
            std::is_x86_feature_detected!("avx512f")
        }

        /// Up to 16 consecutive output pixels of one row: the offset of the first one in the source
        /// (channel 0 of its image) and in the output (channel 0 of its image), and the lanes inside the row.
        #[derive(Clone, Copy, Default)]
        struct Position {
            src: usize,
            dst: usize,
            mask: u16,
        }

        /// The correlation input seen through its zero padding or cropping, so that the kernels read
        /// `data[n * image + c * plane + y * row + x]` at padded coordinates (y, x) without bounds checks.
        struct Source<'a> {
            data: Cow<'a, [f32]>,
            image: usize,
            plane: usize,
            row: usize,
        }

        /// Builds the padded input: a zero-bordered copy for positive padding, a view for none or cropping.
        fn source<'a>(input: &'a [f32], g: &Correlation, threads: usize) -> Source<'a> {
            let (h_src, w_src) = (g.h_out + g.k - 1, g.w_out + g.k - 1);
            if g.pad <= 0 {
                let crop = g.pad.unsigned_abs();
                let offset = crop * g.w_in + crop;
                return Source {
                    data: Cow::Borrowed(&input[offset..]),
                    image: g.c_in * g.in_pixels(),
                    plane: g.in_pixels(),
                    row: g.w_in,
                };
            }
            debug_assert!(h_src == g.h_in + 2 * g.pad as usize && w_src == g.w_in + 2 * g.pad as usize);
            let plane = h_src * w_src;
            let padded =
                super::zero_padded_planes(input, g.batch * g.c_in, (g.h_in, g.w_in), (h_src, w_src), g.pad, threads);
            Source { data: Cow::Owned(padded), image: g.c_in * plane, plane, row: w_src }
        }

        /// Lists the output vectors of every image, padded with empty positions to a multiple of `block`.
        fn positions(source: &Source, g: &Correlation, dst_image: usize, block: usize) -> Vec<Position> {
            let mut positions = Vec::with_capacity(g.batch * g.h_out * g.w_out.div_ceil(LANES) + block);
            for n in 0..g.batch {
                for i in 0..g.h_out {
                    for j in (0..g.w_out).step_by(LANES) {
                        let lanes = LANES.min(g.w_out - j);
                        positions.push(Position {
                            src: n * source.image + i * source.row + j,
                            dst: n * dst_image + i * g.w_out + j,
                            mask: if lanes == LANES { u16::MAX } else { (1u16 << lanes) - 1 },
                        });
                    }
                }
            }
            positions.resize(positions.len().next_multiple_of(block), Position::default());
            positions
        }

        /// Up to 16 consecutive output pixels of one row, for the forward kernel, which reads the
        /// unpadded input and masks off the lanes that fall into the padding.
        #[derive(Clone, Copy, Default)]
        struct OutputVector {
            /// Offset of input pixel (i - pad, j - pad) of channel 0 of the image; may lie outside it.
            src: isize,
            /// Offset of output pixel (i, j) of channel 0 of the image.
            dst: usize,
            /// Lanes inside the output row.
            mask: u16,
        }

        /// Lists the output vectors of every image, padded with empty vectors to a multiple of `block`,
        /// and for each vector and kernel tap (a, b) the lanes whose input pixel lies inside the image.
        fn output_vectors(g: &Correlation, block: usize) -> (Vec<OutputVector>, Vec<u16>) {
            let kk = g.k * g.k;
            let count = (g.batch * g.h_out * g.w_out.div_ceil(LANES)).next_multiple_of(block);
            let mut vectors = Vec::with_capacity(count);
            let mut tap_masks = Vec::with_capacity(count * kk);
            let (h_in, w_in, pad) = (g.h_in as isize, g.w_in as isize, g.pad);
            for n in 0..g.batch {
                for i in 0..g.h_out {
                    for j in (0..g.w_out).step_by(LANES) {
                        let lanes = LANES.min(g.w_out - j);
                        let (i, j) = (i as isize, j as isize);
                        let src = (n * g.c_in * g.in_pixels()) as isize + (i - pad) * w_in + (j - pad);
                        let dst = n * g.c_out * g.out_pixels() + i as usize * g.w_out + j as usize;
                        vectors.push(OutputVector { src, dst, mask: lane_mask(0, lanes as isize) });
                        for a in 0..g.k as isize {
                            let y = i + a - pad;
                            for b in 0..g.k as isize {
                                // Lane l reads input column j + l + b - pad.
                                let (lo, hi) = (pad - b - j, w_in + pad - b - j);
                                let inside = (0..h_in).contains(&y);
                                tap_masks.push(if inside { lane_mask(lo.max(0), hi.min(lanes as isize)) } else { 0 });
                            }
                        }
                    }
                }
            }
            vectors.resize(count, OutputVector::default());
            tap_masks.resize(count * kk, 0);
            (vectors, tap_masks)
        }

        /// Returns the mask of lanes lo..hi, empty when hi <= lo.
        fn lane_mask(lo: isize, hi: isize) -> u16 {
            let (lo, hi) = (lo.clamp(0, LANES as isize) as u32, hi.clamp(0, LANES as isize) as u32);
            if hi <= lo {
                return 0;
            }
            let below_hi = if hi == 16 { u16::MAX } else { (1u16 << hi) - 1 };
            below_hi & !((1u16 << lo) - 1)
        }

        /// Adds to output rows `0..rows_valid` (each `dst_plane` apart) at the NV vectors the
        /// correlation over `channels` input channels, or overwrites them unless `accumulate` is set.
        /// `weights` contains, for each kernel tap (`tap_stride` apart) and channel, the MR output
        /// channels' weights. `tap_masks` contains each vector's k * k tap masks.
        ///
        /// # Safety
        /// Every lane of every tap mask must address valid input memory, every lane of the vector
        /// masks valid output memory, and `weights` must hold k * k taps of `channels` x MR values.
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn forward_kernel<const MR: usize, const NV: usize>(
            src: *const f32,
            vectors: &[OutputVector; NV],
            tap_masks: &[u16],
            (channels, plane, row, k): (usize, usize, usize, usize),
            (weights, tap_stride): (*const f32, usize),
            dst: *mut f32,
            dst_plane: usize,
            rows_valid: usize,
            accumulate: bool,
        ) {
            let kk = k * k;
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            if accumulate {
                for (r, acc_row) in acc.iter_mut().enumerate().take(rows_valid) {
                    for (v, vector) in vectors.iter().enumerate() {
                        acc_row[v] = _mm512_maskz_loadu_ps(vector.mask, dst.add(r * dst_plane + vector.dst));
                    }
                }
            }
            for a in 0..k {
                for b in 0..k {
                    let tap = a * k + b;
                    let shift = (a * row + b) as isize;
                    // Lanes outside the input are masked off, so their addresses are never read.
                    let inputs: [*const f32; NV] = std::array::from_fn(|v| src.wrapping_offset(vectors[v].src + shift));
                    let masks: [u16; NV] = std::array::from_fn(|v| tap_masks[v * kk + tap]);
                    let mut w = weights.add(tap * tap_stride);
                    for c in 0..channels {
                        let mut wv = [_mm512_setzero_ps(); MR];
                        for (r, value) in wv.iter_mut().enumerate() {
                            *value = _mm512_set1_ps(*w.add(r));
                        }
                        w = w.add(MR);
                        for v in 0..NV {
                            let x = _mm512_maskz_loadu_ps(masks[v], inputs[v].wrapping_add(c * plane));
                            for r in 0..MR {
                                acc[r][v] = _mm512_fmadd_ps(wv[r], x, acc[r][v]);
                            }
                        }
                    }
                }
            }
            for (r, acc_row) in acc.iter().enumerate().take(rows_valid) {
                for (v, vector) in vectors.iter().enumerate() {
                    _mm512_mask_storeu_ps(dst.add(r * dst_plane + vector.dst), vector.mask, acc_row[v]);
                }
            }
        }

        /// Correlates with MR output channels and NV output vectors per kernel call.
        fn forward<const MR: usize, const NV: usize>(
            input: &[f32],
            weight: &[f32],
            g: &Correlation,
            threads: usize,
        ) -> Vec<f32> {
            let (kk, pixels, plane) = (g.k * g.k, g.out_pixels(), g.in_pixels());
            let mut output = vec![0.0f32; g.batch * g.c_out * pixels];
            let (vectors, tap_masks) = output_vectors(g, NV);

            // Weights as [output block][tap][input channel][MR], zero for the rows past c_out.
            let output_blocks = g.c_out.div_ceil(MR);
            let tap_stride = g.c_in * MR;
            let mut packed = vec![0.0f32; output_blocks * kk * tap_stride];
            for o in 0..g.c_out {
                for c in 0..g.c_in {
                    for t in 0..kk {
                        packed[((o / MR * kk + t) * g.c_in + c) * MR + o % MR] = weight[(o * g.c_in + c) * kk + t];
                    }
                }
            }

            // Tasks take a few vector blocks each, or, with few blocks, part of the output channels.
            let blocks = vectors.len() / NV;
            let target_tasks = if threads > 1 { 8 * threads } else { 1 };
            let blocks_per_task = (blocks / target_tasks).max(1);
            let block_groups = blocks.div_ceil(blocks_per_task);
            let output_groups =
                if block_groups >= target_tasks { 1 } else { target_tasks.div_ceil(block_groups).min(output_blocks) };
            let outputs_per_group = output_blocks.div_ceil(output_groups);

            let dst = SharedMut(output.as_mut_ptr());
            run_tasks(block_groups * output_groups, threads, |_, index| {
                let (group, output_group) = (index / output_groups, index % output_groups);
                let output_range =
                    output_group * outputs_per_group..output_blocks.min((output_group + 1) * outputs_per_group);
                for block in group * blocks_per_task..blocks.min((group + 1) * blocks_per_task) {
                    let block_vectors: &[OutputVector; NV] =
                        vectors[block * NV..(block + 1) * NV].try_into().expect("NV vectors");
                    let block_masks = &tap_masks[block * NV * kk..(block + 1) * NV * kk];
                    for c0 in (0..g.c_in).step_by(CHANNEL_CHUNK) {
                        let channels = CHANNEL_CHUNK.min(g.c_in - c0);
                        for ob in output_range.clone() {
                            // SAFETY: the tap masks keep every read inside the input images and the vector
                            // masks keep every write inside the output. The packed weights contain kk taps
                            // of c_in x MR values per output block, and only this task writes output block
                            // ob of these vectors.
                            unsafe {
                                forward_kernel::<MR, NV>(
                                    input.as_ptr().wrapping_add(c0 * plane),
                                    block_vectors,
                                    block_masks,
                                    (channels, plane, g.w_in, g.k),
                                    (packed.as_ptr().add(ob * kk * tap_stride + c0 * MR), tap_stride),
                                    dst.ptr().add(ob * MR * pixels),
                                    pixels,
                                    MR.min(g.c_out - ob * MR),
                                    c0 > 0,
                                );
                            }
                        }
                    }
                }
            });
            output
        }

        /// [`super::correlate`] with the direct kernel, choosing the register blocking by output channel count.
        pub(super) fn correlate(input: &[f32], weight: &[f32], g: &Correlation, threads: usize) -> Vec<f32> {
            if g.batch * g.c_out * g.out_pixels() == 0 {
                return Vec::new();
            }
            // Rows per block, each with the vectors that fill 24 accumulator registers. Larger blocks
            // reuse each input load more; the last block is padded with zero weights.
            let padded_rows = |mr: usize| g.c_out.next_multiple_of(mr);
            match g.c_out {
                1 => forward::<1, 16>(input, weight, g, threads),
                2 => forward::<2, 12>(input, weight, g, threads),
                3 => forward::<3, 8>(input, weight, g, threads),
                _ if padded_rows(8) <= padded_rows(6) => forward::<8, 3>(input, weight, g, threads),
                _ if padded_rows(6) <= padded_rows(4) => forward::<6, 4>(input, weight, g, threads),
                _ => forward::<4, 6>(input, weight, g, threads),
            }
        }

        /// Writes rows `channels` of [`super::flip_and_swap_channels`]'s output: for each input channel c and
        /// output channel o, the kk ≤ 16 taps of `w[o, c]` reversed. Each takes one masked load, permutation
        /// and store, which halved the time of the scalar loop for 512 × 512 channels (measured with perf).
        ///
        /// # Safety
        /// `dst` must address a (c_in, c_out, kk) buffer whose rows `channels` no other thread writes during the
        /// call, `w` must hold (c_out, c_in, kk) values, kk must be at most 16, and the CPU must support AVX-512F.
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn flip_and_swap_block(
            w: &[f32],
            dst: SharedMut<f32>,
            (c_out, c_in, kk): (usize, usize, usize),
            channels: std::ops::Range<usize>,
        ) {
            debug_assert!(kk <= 16 && w.len() >= c_out * c_in * kk);
            let mask = ((1u32 << kk) - 1) as u16;
            // Lane i takes tap kk − 1 − i. The lanes past kk are masked off.
            let reversed = _mm512_sub_epi32(
                _mm512_set1_epi32(kk as i32 - 1),
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            );
            let reversed = _mm512_max_epi32(reversed, _mm512_setzero_si512());
            for c in channels {
                for o in 0..c_out {
                    let taps = _mm512_maskz_loadu_ps(mask, w.as_ptr().add((o * c_in + c) * kk));
                    _mm512_mask_storeu_ps(
                        dst.ptr().add((c * c_out + o) * kk),
                        mask,
                        _mm512_permutexvar_ps(reversed, taps),
                    );
                }
            }
        }

        /// Adds to `dw[r * patch + t]` for r < MR and t < taps_valid the sum over `positions` of
        /// `grad[r * grad_plane + dst] * src[taps[t] + src]`, where the position supplies src and dst.
        ///
        /// # Safety
        /// Every masked lane must address valid memory, and `dw` must hold the MR x taps_valid entries.
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn weight_grad_kernel<const MR: usize, const TB: usize>(
            src: *const f32,
            grad: *const f32,
            grad_plane: usize,
            positions: &[Position],
            taps: &[usize; TB],
            dw: *mut f32,
            patch: usize,
            taps_valid: usize,
        ) {
            let mut acc = [[_mm512_setzero_ps(); TB]; MR];
            for position in positions {
                let mut gv = [_mm512_setzero_ps(); MR];
                for (r, value) in gv.iter_mut().enumerate() {
                    *value = _mm512_maskz_loadu_ps(position.mask, grad.add(r * grad_plane + position.dst));
                }
                for t in 0..TB {
                    let x = _mm512_maskz_loadu_ps(position.mask, src.add(taps[t] + position.src));
                    for r in 0..MR {
                        acc[r][t] = _mm512_fmadd_ps(gv[r], x, acc[r][t]);
                    }
                }
            }
            for (r, acc_row) in acc.iter().enumerate() {
                for (t, value) in acc_row.iter().enumerate().take(taps_valid) {
                    *dw.add(r * patch + t) += _mm512_reduce_add_ps(*value);
                }
            }
        }

        /// Taps per weight-gradient kernel call: the accumulators are MR x TB vectors.
        const TB: usize = 6;

        /// Runs the weight-gradient kernel for output rows `rows` (at most 4) and every tap.
        fn weight_grad_rows(
            src: &Source,
            grad: &[f32],
            g: &Correlation,
            positions: &[Position],
            taps: &[usize],
            rows: std::ops::Range<usize>,
            dw: &mut [f32],
        ) {
            let (patch, pixels) = (g.patch_len(), g.out_pixels());
            for t0 in (0..patch).step_by(TB) {
                // Taps past the end repeat the last one; their sums are not stored.
                let block: [usize; TB] = std::array::from_fn(|t| taps[(t0 + t).min(patch - 1)]);
                let taps_valid = TB.min(patch - t0);
                let grad_rows = grad[rows.start * pixels..].as_ptr();
                let dw_rows = dw[rows.start * patch + t0..].as_mut_ptr();
                // SAFETY: positions address valid source and gradient pixels, grad contains c_out >= rows.end
                // planes, and dw is c_out x patch.
                unsafe {
                    let args = (src.data.as_ptr(), grad_rows, pixels, positions, &block, dw_rows, patch, taps_valid);
                    match rows.len() {
                        4 => {
                            weight_grad_kernel::<4, TB>(args.0, args.1, args.2, args.3, args.4, args.5, args.6, args.7)
                        }
                        3 => {
                            weight_grad_kernel::<3, TB>(args.0, args.1, args.2, args.3, args.4, args.5, args.6, args.7)
                        }
                        2 => {
                            weight_grad_kernel::<2, TB>(args.0, args.1, args.2, args.3, args.4, args.5, args.6, args.7)
                        }
                        1 => {
                            weight_grad_kernel::<1, TB>(args.0, args.1, args.2, args.3, args.4, args.5, args.6, args.7)
                        }
                        _ => unreachable!("weight_grad_rows takes 1 to 4 rows"),
                    }
                }
            }
        }

        /// [`super::correlate_weight_grad`] with the direct kernel.
        pub(super) fn correlate_weight_grad(input: &[f32], grad: &[f32], g: &Correlation, threads: usize) -> Vec<f32> {
            let (patch, kk) = (g.patch_len(), g.k * g.k);
            let len = g.c_out * patch;
            if len == 0 || g.batch * g.out_pixels() == 0 {
                return vec![0.0; len];
            }
            let source = source(input, g, threads);
            let positions = positions(&source, g, g.c_out * g.out_pixels(), 1);
            let taps: Vec<usize> =
                (0..patch).map(|t| (t / kk) * source.plane + (t % kk / g.k) * source.row + t % g.k).collect();

            let chunk = WEIGHT_GRAD_CHUNK.min(positions.len().div_ceil(4 * threads.max(1))).max(1);
            let partials: Vec<Mutex<Vec<f32>>> = (0..threads.max(1)).map(|_| Mutex::new(Vec::new())).collect();
            run_tasks(positions.len().div_ceil(chunk), threads, |worker, index| {
                let mut dw = partials[worker].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if dw.is_empty() {
                    dw.resize(len, 0.0);
                }
                let chunk_positions = &positions[index * chunk..positions.len().min((index + 1) * chunk)];
                for o0 in (0..g.c_out).step_by(4) {
                    weight_grad_rows(&source, grad, g, chunk_positions, &taps, o0..g.c_out.min(o0 + 4), &mut dw);
                }
            });

            let mut partials = partials
                .into_iter()
                .map(|m| m.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()))
                .filter(|dw| !dw.is_empty());
            let mut total = partials.next().unwrap_or_else(|| vec![0.0; len]);
            for dw in partials {
                total.iter_mut().zip(&dw).for_each(|(t, d)| *t += d);
            }
            total
        }
    }

    #[cfg(test)]
    mod tests {
        use super::{im2col, Correlation};

        /// Input value that tap (a, b) of channel c reads for output pixel p, zero in the padding.
        fn tap_value(image: &[f32], g: &Correlation, (c, a, b): (usize, usize, usize), p: usize) -> f32 {
            let (i, j) = (p / g.w_out, p % g.w_out);
            let (y, x) = (i as isize + a as isize - g.pad, j as isize + b as isize - g.pad);
            if y < 0 || x < 0 || y >= g.h_in as isize || x >= g.w_in as isize {
                return 0.0;
            }
            image[(c * g.h_in + y as usize) * g.w_in + x as usize]
        }

        /// Checks im2col against [`tap_value`] on partial pixel ranges of several geometries: padding 0, 1
        /// and 2, cropping, and rows shorter and longer than 16 lanes.
        #[test]
        fn im2col_matches_tap_definition() {
            let geometries = [(3, 5, 7, 3, 1), (2, 9, 37, 3, 0), (1, 6, 20, 5, 2), (2, 6, 18, 3, -1), (1, 3, 40, 1, 0)];
            for (c_in, h_in, w_in, k, pad) in geometries {
                let (h_out, w_out) = (
                    (h_in as isize + 2 * pad - k as isize + 1) as usize,
                    (w_in as isize + 2 * pad - k as isize + 1) as usize,
                );
                let g = Correlation { batch: 1, c_in, h_in, w_in, c_out: 1, k, pad, h_out, w_out };
                let image: Vec<f32> = (0..c_in * h_in * w_in).map(|v| v as f32 + 1.0).collect();
                // The last channel, and all pixels but the first one and the last two.
                let (pixels, channels) = (1..g.out_pixels() - 2, c_in - 1..c_in);
                let (rows, stride, offset) = (channels.len() * k * k, pixels.len() + 5, 3);
                let layout = format!("c_in {c_in}, {h_in}x{w_in}, k {k}, pad {pad}");
                let mut col = vec![-1.0f32; rows * stride + offset];
                im2col(&image, &g, channels.clone(), pixels.clone(), &mut col, (stride, offset));

                let taps = channels.flat_map(|c| (0..k).flat_map(move |a| (0..k).map(move |b| (c, a, b))));
                for (r, (c, a, b)) in taps.enumerate() {
                    let row = &col[offset + r * stride..offset + (r + 1) * stride];
                    for (t, p) in pixels.clone().enumerate() {
                        let expected = tap_value(&image, &g, (c, a, b), p);
                        assert_eq!(row[t], expected, "{layout}: c {c}, tap ({a}, {b}), pixel {p}");
                    }
                    // Columns past the pixel range keep their values.
                    assert_eq!(row[pixels.len()], -1.0, "{layout}: row {r} written past its end");
                }
                assert_eq!(col[..offset], [-1.0; 3], "{layout}: values before the offset were written");
            }
        }
    }
}
