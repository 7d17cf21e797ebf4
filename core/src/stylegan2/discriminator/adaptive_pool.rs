//! Adaptive average pooling with an explicit adjoint.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Adaptive average pooling to a fixed output size, as PyTorch's `AdaptiveAvgPool2d` computes it.
///
/// Along an axis of length `L` pooled to `S` cells, cell `i` averages the input indices
/// `⌊i·L/S⌋ … ⌈(i+1)·L/S⌉ − 1`, so neighbouring cells overlap when `S` does not divide `L`. The pooling is a
/// matrix product on each spatial axis, which makes the adjoint a product with the transposed matrices.
#[derive(Debug, Clone)]
pub struct AdaptiveAvgPool2d {
    output_hw: (usize, usize),
    span: tracing::Span,
}

impl AdaptiveAvgPool2d {
    /// Creates the pooling to `output_hw` cells, at least 1×1.
    pub fn new(output_hw: (usize, usize)) -> Result<Self> {
        if output_hw.0 == 0 || output_hw.1 == 0 {
            return Err(Error::invalid(format!(
                "adaptive pooling output size {output_hw:?} is invalid: use at least 1×1"
            )));
        }
        Ok(AdaptiveAvgPool2d { output_hw, span: tracing::trace_span!("adaptive_avg_pool2d") })
    }

    pub fn output_hw(&self) -> (usize, usize) {
        self.output_hw
    }

    /// Builds the (S, L) matrix whose row `i` averages the input indices of output cell `i`.
    fn pooling_matrix(input: usize, output: usize, like: &Tensor) -> Result<Tensor> {
        let mut values = vec![0f64; output * input];
        for i in 0..output {
            let start = i * input / output;
            let end = ((i + 1) * input).div_ceil(output);
            for j in start..end {
                values[i * input + j] = 1.0 / (end - start) as f64;
            }
        }
        Ok(Tensor::from_vec(values, (output, input), like.device())?.to_dtype(like.dtype())?)
    }

    /// Pools (N, C, H, W) to (N, C, S_h, S_w).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (_, _, h, w) = x.dims4()?;
        if h == 0 || w == 0 {
            return Err(Error::invalid(format!("adaptive pooling needs a non-empty input, got {h}×{w}")));
        }
        let rows = Self::pooling_matrix(h, self.output_hw.0, x)?;
        let cols = Self::pooling_matrix(w, self.output_hw.1, x)?;
        apply_separable(x, &rows, &cols)
    }

    /// Computes `∂(Σ forward(x) · g)/∂x` for an input of spatial size `input_hw`.
    pub fn input_grad(&self, g: &Tensor, input_hw: (usize, usize)) -> Result<Tensor> {
        let _enter = self.span.enter();
        let rows = Self::pooling_matrix(input_hw.0, self.output_hw.0, g)?;
        let cols = Self::pooling_matrix(input_hw.1, self.output_hw.1, g)?;
        apply_separable(g, &rows.t()?, &cols.t()?)
    }
}

/// Computes `rows · x · colsᵀ` on the spatial axes: (N, C, H, W) with rows (A, H) and cols (B, W) → (N, C, A, B).
fn apply_separable(x: &Tensor, rows: &Tensor, cols: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (a, b) = (rows.dim(0)?, cols.dim(0)?);

    let along_w = x.reshape((n * c * h, w))?.matmul(&cols.t()?)?;
    let transposed = along_w.reshape((n * c, h, b))?.transpose(1, 2)?.contiguous()?;
    let along_h = transposed.reshape((n * c * b, h))?.matmul(&rows.t()?)?;
    Ok(along_h.reshape((n * c, b, a))?.transpose(1, 2)?.contiguous()?.reshape((n, c, a, b))?)
}
