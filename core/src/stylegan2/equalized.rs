//! Equalized-learning-rate layers: the stored weight is the raw parameter `weight_orig`, scaled at every
//! forward pass by `lr_mul / √fan_in` (MMGeneration's `EqualizedLR` in `mmgen/models/architectures/pggan/modules.py`).
//!
//! Keeping the scale out of the parameter gives every weight the same effective learning rate under Adam.
//! Each layer also offers `input_grad`, the explicit backward pass that R1 and the path-length penalty
//! differentiate a second time (candle's own backward pass detaches its results).

use candle_core::{Tensor, Var};

use crate::error::Result;
use crate::stylegan2::activation::FusedBiasLeakyRelu;
use crate::stylegan2::params::{Init, ParamPath};

use crate::ops::conv::{conv2d, conv2d_input_grad};

/// MMGeneration's `EqualLinearActModule`: `y = x · (lr_mul/√in · V)ᵀ + lr_mul · b`, optionally followed by the
/// fused bias leaky ReLU (the bias then moves into the activation, as in the reference).
///
/// Keys under the module path: `linear.weight_orig` (out, in) and `bias` (out).
#[derive(Debug, Clone)]
pub struct EqualizedLinear {
    weight: Var,
    bias: Var,
    /// `lr_mul / √in_features`, applied to the raw weight.
    weight_scale: f64,
    lr_mul: f64,
    activation: Option<FusedBiasLeakyRelu>,
}

/// Forward-pass values that [`EqualizedLinear::input_grad`] needs.
#[derive(Debug, Clone)]
pub struct LinearTrace {
    activation_slope: Option<Tensor>,
}

impl EqualizedLinear {
    /// Builds the layer at `path`. `weight_std` is the initial standard deviation of the raw weight
    /// (`1/lr_mul` in the reference), `bias_init` the initial bias (1 for style modulation, else 0).
    pub fn new(
        path: &ParamPath,
        in_features: usize,
        out_features: usize,
        lr_mul: f64,
        bias_init: f32,
        with_activation: bool,
    ) -> Result<Self> {
        let weight = path.param(
            "linear.weight_orig",
            &[out_features, in_features],
            Init::Normal { std: (1.0 / lr_mul) as f32 },
        )?;
        let bias = path.param("bias", &[out_features], Init::Constant(bias_init))?;
        let activation = with_activation.then(|| FusedBiasLeakyRelu::new(bias.clone(), lr_mul));
        Ok(EqualizedLinear { weight, bias, weight_scale: lr_mul / (in_features as f64).sqrt(), lr_mul, activation })
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Returns the weight used at run time, `lr_mul/√in · V`, shape (out, in).
    pub fn effective_weight(&self) -> Result<Tensor> {
        Ok((self.weight.as_tensor() * self.weight_scale)?)
    }

    /// (N, in) → (N, out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_traced(x)?.0)
    }

    /// Forward pass that also returns what the input gradient needs.
    pub fn forward_traced(&self, x: &Tensor) -> Result<(Tensor, LinearTrace)> {
        let y = x.matmul(&self.effective_weight()?.t()?)?;
        match &self.activation {
            Some(act) => {
                let (out, slope) = act.forward_traced(&y)?;
                Ok((out, LinearTrace { activation_slope: Some(slope) }))
            }
            None => {
                let bias = (self.bias.as_tensor() * self.lr_mul)?;
                Ok((y.broadcast_add(&bias)?, LinearTrace { activation_slope: None }))
            }
        }
    }

    /// `∂(Σ forward(x) · g)/∂x` for the traced input, (N, out) → (N, in); differentiable in `g` and the weights.
    pub fn input_grad(&self, trace: &LinearTrace, g: &Tensor) -> Result<Tensor> {
        let g = match &trace.activation_slope {
            Some(slope) => FusedBiasLeakyRelu::input_grad(slope, g)?,
            None => g.clone(),
        };
        Ok(g.matmul(&self.effective_weight()?)?)
    }
}

/// An equalized-learning-rate convolution without bias, stride 1, square kernel, zero padding `padding`.
///
/// Key under the module path: `weight_orig` (out, in, k, k), scaled by `1/√(in·k²)` at run time.
#[derive(Debug, Clone)]
pub struct EqualizedConv2d {
    weight: Var,
    weight_scale: f64,
    padding: usize,
}

impl EqualizedConv2d {
    pub fn new(
        path: &ParamPath,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight =
            path.param("weight_orig", &[out_channels, in_channels, kernel, kernel], Init::Normal { std: 1.0 })?;
        let fan_in = in_channels * kernel * kernel;
        Ok(EqualizedConv2d { weight, weight_scale: 1.0 / (fan_in as f64).sqrt(), padding })
    }

    pub fn in_channels(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn kernel_size(&self) -> usize {
        self.weight.dims()[2]
    }

    pub fn padding(&self) -> usize {
        self.padding
    }

    /// Returns the weight used at run time, `V / √(in·k²)`.
    pub fn effective_weight(&self) -> Result<Tensor> {
        Ok((self.weight.as_tensor() * self.weight_scale)?)
    }

    /// (N, in, H, W) → (N, out, H + 2p − k + 1, W + 2p − k + 1).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d(x, &self.effective_weight()?, self.padding)
    }

    /// `∂(Σ forward(x) · g)/∂x`; linear in `g` and differentiable in `g` and the weight.
    pub fn input_grad(&self, g: &Tensor) -> Result<Tensor> {
        conv2d_input_grad(g, &self.effective_weight()?, self.padding)
    }
}
