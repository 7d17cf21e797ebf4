//! The fused bias leaky ReLU of StyleGAN2 (mmcv `fused_bias_leakyrelu`): `√2 · lrelu(x + b, 0.2)`.
//!
//! The gain √2 keeps the activations' second moment roughly constant from layer to layer, which the
//! equalized learning rate assumes.

use candle_core::{Tensor, Var};

use crate::error::Result;
use crate::ops::leaky_relu::leaky_relu_derivative;

/// Negative slope of the leaky ReLU.
pub const NEGATIVE_SLOPE: f64 = 0.2;

/// Gain applied after the leaky ReLU, `√2`.
pub const GAIN: f64 = std::f64::consts::SQRT_2;

/// `√2 · lrelu(x + lr_mul · b)` with the bias broadcast along axis 1 (channels or features).
#[derive(Debug, Clone)]
pub struct FusedBiasLeakyRelu {
    bias: Var,
    lr_mul: f64,
}

impl FusedBiasLeakyRelu {
    /// `bias` has one value per channel; `lr_mul` scales it at run time (0.01 in the mapping network).
    pub fn new(bias: Var, lr_mul: f64) -> Self {
        FusedBiasLeakyRelu { bias, lr_mul }
    }

    pub fn bias(&self) -> &Var {
        &self.bias
    }

    /// Applies the activation to (N, C) or (N, C, H, W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_traced(x)?.0)
    }

    /// Returns the output and the local slope `∂out/∂x` (`√2` or `0.2·√2` per element, no gradient).
    pub fn forward_traced(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let pre = self.add_bias(x)?;

        // The slope is piecewise constant, so treating it as a constant is exact wherever the
        // derivative exists, also for second-order gradients.
        let slope = leaky_relu_derivative(&pre, NEGATIVE_SLOPE, GAIN)?;

        let out = (pre * &slope)?;
        Ok((out, slope))
    }

    /// Adds `lr_mul · b` along axis 1.
    fn add_bias(&self, x: &Tensor) -> Result<Tensor> {
        let mut shape = vec![1usize; x.rank()];
        shape[1] = self.bias.dims()[0];
        let bias = (self.bias.as_tensor() * self.lr_mul)?.reshape(shape)?;
        Ok(x.broadcast_add(&bias)?)
    }

    /// `∂(Σ out · g)/∂x` given the slope from [`FusedBiasLeakyRelu::forward_traced`].
    pub fn input_grad(slope: &Tensor, g: &Tensor) -> Result<Tensor> {
        Ok((g * slope)?)
    }
}
