//! The fused bias leaky ReLU of StyleGAN2 (mmcv `fused_bias_leakyrelu`): `√2 · lrelu(x + b, 0.2)`.
//!
//! The gain √2 keeps the activations' second moment roughly constant from layer to layer, which the
//! equalized learning rate assumes.

use candle_core::{Tensor, Var};

use crate::error::Result;
use crate::ops::leaky_relu::{bias_leaky_relu, leaky_relu_derivative};

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
    ///
    /// On the CPU in f32 this is one pass over `x` (bias, leaky ReLU and gain together), where
    /// [`FusedBiasLeakyRelu::forward_traced`] makes three and keeps the slope.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let bias = (self.bias.as_tensor() * self.lr_mul)?;
        bias_leaky_relu(x, &bias, NEGATIVE_SLOPE, GAIN)
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The fused CPU pass against the three-op form, for feature vectors and for maps.
    #[test]
    fn fused_forward_matches_traced_form() {
        for dims in [vec![3usize, 5], vec![2, 3, 4, 5]] {
            let x = Tensor::randn(0f32, 1.0, dims.as_slice(), &Device::Cpu).unwrap();
            let bias = Var::randn(0f32, 1.0, dims[1], &Device::Cpu).unwrap();
            let activation = FusedBiasLeakyRelu::new(bias, 0.5);
            let fused = values(&activation.forward(&x).unwrap());
            let traced = values(&activation.forward_traced(&x).unwrap().0);
            for (index, (f, t)) in fused.iter().zip(&traced).enumerate() {
                assert!((f - t).abs() <= 1e-6 * (1.0 + t.abs()), "{dims:?} value {index}: fused {f}, traced {t}");
            }
        }
    }

    /// Gradients with respect to the input and the bias against those of the three-op form.
    #[test]
    fn fused_gradients_match_traced_form() {
        let x = Var::randn(0f32, 1.0, (2, 3, 4, 5), &Device::Cpu).unwrap();
        let bias = Var::randn(0f32, 1.0, 3, &Device::Cpu).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &Device::Cpu).unwrap();
        let activation = FusedBiasLeakyRelu::new(bias.clone(), 0.5);
        let fused = (activation.forward(&x).unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let traced = (activation.forward_traced(&x).unwrap().0 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in [("input", x.as_tensor()), ("bias", bias.as_tensor())] {
            let (f, t) = (values(fused.get(var).unwrap()), values(traced.get(var).unwrap()));
            assert_eq!(f.len(), t.len(), "{name} gradient length");
            for (index, (a, b)) in f.iter().zip(&t).enumerate() {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{name} gradient {index}: fused {a}, traced {b}");
            }
        }
    }
}
