//! Resizing of NCHW tensors with PyTorch's `F.interpolate` semantics, which candle lacks.
//!
//! For fixed input and output sizes, `nearest`, `bilinear` and `bicubic` interpolation are linear and separable.
//! [`resize`] therefore builds one interpolation matrix per axis and computes `out = M_h · X · M_wᵀ` for every
//! (N, C) plane with matmuls. The result equals PyTorch's up to float32 summation order, works on any device,
//! and candle's autograd differentiates it to any order.
//!
//! Source coordinates and weights are computed in float32, as PyTorch does for float32 tensors on the CPU
//! (`area_pixel_compute_scale`, `area_pixel_compute_source_index`, `guard_index_and_lambda`, `nearest_idx` and
//! the cubic coefficients in ATen's `UpSample.h`, PyTorch 1.6 to 2.x).

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Keys cubic convolution parameter used by PyTorch's bicubic mode.
const CUBIC_A: f32 = -0.75;

/// Interpolation kernel of [`resize`], named after the `mode` of `F.interpolate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeKernel {
    /// Legacy `nearest`: `src = min(floor(dst × in/out), in − 1)`, with `in/out` in float32.
    Nearest,
    /// `bilinear` with two taps per axis.
    Bilinear { align_corners: bool },
    /// `bicubic` with four clamped taps per axis and `A = −0.75`.
    Bicubic { align_corners: bool },
}

/// Builds the matrix that resizes one axis from `in_len` to `out_len` samples.
///
/// The result is row-major `out_len × in_len`: row `d` contains the weight of every input sample in output sample `d`.
/// Taps that fall outside `0 .. in_len` are clamped to the border, so a weight can accumulate on one column.
/// A zero length gives an empty matrix.
pub fn interpolation_matrix(in_len: usize, out_len: usize, kernel: ResizeKernel) -> Vec<f32> {
    let mut matrix = vec![0f32; out_len * in_len];
    if in_len == 0 || out_len == 0 {
        return matrix;
    }

    for (dst, row) in matrix.chunks_exact_mut(in_len).enumerate() {
        match kernel {
            ResizeKernel::Nearest => {
                row[nearest_source_index(dst, in_len, out_len)] = 1.0;
            }
            ResizeKernel::Bilinear { align_corners } => {
                let scale = pixel_scale(in_len, out_len, align_corners);
                let src = source_coordinate(scale, dst, align_corners, false);
                let (index, lambda) = guard_index_and_lambda(src, in_len);
                // `index` is at least 0 here because bilinear source coordinates are clamped to 0 first.
                let i0 = index as usize;
                let i1 = if i0 + 1 < in_len { i0 + 1 } else { i0 };
                row[i0] += 1.0 - lambda;
                row[i1] += lambda;
            }
            ResizeKernel::Bicubic { align_corners } => {
                let scale = pixel_scale(in_len, out_len, align_corners);
                let src = source_coordinate(scale, dst, align_corners, true);
                let (index, t) = guard_index_and_lambda(src, in_len);
                let last = in_len as i64 - 1;
                for (tap, weight) in cubic_coefficients(t).into_iter().enumerate() {
                    let column = (index - 1 + tap as i64).clamp(0, last) as usize;
                    row[column] += weight;
                }
            }
        }
    }
    matrix
}

/// Resizes the spatial axes of an NCHW float tensor to `out_h × out_w`.
///
/// The interpolation matrices are built on the device and in the dtype of `x`.
/// An axis whose matrix is the identity (same length with `Nearest` or `align_corners`, for example) is passed
/// through untouched. Errors: `x` not of rank 4, not floating point, or with a zero-sized axis; a zero output size.
pub fn resize(x: &Tensor, out_h: usize, out_w: usize, kernel: ResizeKernel) -> Result<Tensor> {
    let (n, c, in_h, in_w) = x.dims4().map_err(|_| {
        Error::invalid(format!(
            "resize expects an NCHW tensor of rank 4, got shape {:?}: add the missing batch or channel axis",
            x.dims()
        ))
    })?;
    if n == 0 || c == 0 || in_h == 0 || in_w == 0 {
        return Err(Error::invalid(format!(
            "resize input has an empty axis, shape {:?}: every axis must be at least 1",
            x.dims()
        )));
    }
    if out_h == 0 || out_w == 0 {
        return Err(Error::invalid(format!(
            "resize output size must be at least 1 × 1, got {out_h} × {out_w}"
        )));
    }
    let dtype = x.dtype();
    if !dtype.is_float() {
        return Err(Error::invalid(format!(
            "resize expects a floating-point tensor, got dtype {dtype:?}: convert it with to_dtype first"
        )));
    }

    let mut y = x.clone();

    // Width pass: the rows of all planes form one (N·C·H) × W matrix, multiplied by M_wᵀ.
    let m_w = interpolation_matrix(in_w, out_w, kernel);
    if !is_identity(&m_w, in_w, out_w) {
        let m_w_t = transpose(&m_w, out_w, in_w);
        let m_w_t = Tensor::from_vec(m_w_t, (in_w, out_w), x.device())?.to_dtype(dtype)?;
        y = y
            .reshape((n * c * in_h, in_w))?
            .matmul(&m_w_t)?
            .reshape((n, c, in_h, out_w))?;
    }

    // Height pass: M_h is broadcast over the N·C planes, without copying it per plane.
    let m_h = interpolation_matrix(in_h, out_h, kernel);
    if !is_identity(&m_h, in_h, out_h) {
        let m_h = Tensor::from_vec(m_h, (out_h, in_h), x.device())?.to_dtype(dtype)?;
        y = m_h
            .broadcast_matmul(&y.reshape((n * c, in_h, out_w))?)?
            .reshape((n, c, out_h, out_w))?;
    }
    Ok(y)
}

/// Ratio between input and output sample spacing, in float32 as in PyTorch's `area_pixel_compute_scale`.
fn pixel_scale(in_len: usize, out_len: usize, align_corners: bool) -> f32 {
    if align_corners {
        if out_len > 1 {
            (in_len - 1) as f32 / (out_len - 1) as f32
        } else {
            0.0
        }
    } else {
        in_len as f32 / out_len as f32
    }
}

/// Source coordinate of output sample `dst`. Half-pixel centres unless `align_corners`.
/// Negative coordinates are clamped to 0 for the linear kernel only, as PyTorch does.
fn source_coordinate(scale: f32, dst: usize, align_corners: bool, cubic: bool) -> f32 {
    if align_corners {
        return scale * dst as f32;
    }
    let src = scale * (dst as f32 + 0.5) - 0.5;
    if !cubic && src < 0.0 {
        0.0
    } else {
        src
    }
}

/// Splits a source coordinate into the left tap index (at most `in_len − 1`) and a fraction clamped to `[0, 1]`.
fn guard_index_and_lambda(src: f32, in_len: usize) -> (i64, f32) {
    let index = (src.floor() as i64).min(in_len as i64 - 1);
    let lambda = (src - index as f32).clamp(0.0, 1.0);
    (index, lambda)
}

/// Weights of the taps at offsets −1, 0, +1, +2 from the left tap, for fraction `t` (PyTorch's evaluation order).
fn cubic_coefficients(t: f32) -> [f32; 4] {
    // Inner branch of the Keys kernel, for |x| ≤ 1.
    let near = |x: f32| ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0;
    // Outer branch, for 1 < |x| < 2.
    let far = |x: f32| ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A;
    let u = 1.0 - t;
    [far(t + 1.0), near(t), near(u), far(u + 1.0)]
}

/// PyTorch's `nearest_idx`: exact shortcuts for equal and doubled sizes, else the float32 scale rule.
fn nearest_source_index(dst: usize, in_len: usize, out_len: usize) -> usize {
    if out_len == in_len {
        dst
    } else if out_len == 2 * in_len {
        dst / 2
    } else {
        let scale = in_len as f32 / out_len as f32;
        ((dst as f32 * scale).floor() as usize).min(in_len - 1)
    }
}

fn is_identity(matrix: &[f32], in_len: usize, out_len: usize) -> bool {
    in_len == out_len
        && matrix.chunks_exact(in_len).enumerate().all(|(row, weights)| {
            weights
                .iter()
                .enumerate()
                .all(|(col, &w)| w == if row == col { 1.0 } else { 0.0 })
        })
}

/// Transposes a row-major `rows × cols` matrix.
fn transpose(matrix: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = matrix[r * cols + c];
        }
    }
    out
}
