//! Layers shared by the SinGAN generator and discriminator: batch norm with running statistics and
//! the mmcv `ConvModule` (convolution, optional batch norm, activation).
//!
//! Every layer can also run "traced": it keeps what its input gradient needs, so that
//! [`ConvModule::input_grad`] computes `∂(Σ output · g)/∂input` from ordinary differentiable tensor ops.
//! Gradient penalties are built on that explicit backward pass, because candle's own backward pass
//! detaches the gradients it returns and so cannot be differentiated a second time.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};

use crate::error::{Error, Result};
use crate::ops::conv::{conv2d, conv2d_input_grad};
use crate::ops::leaky_relu::{leaky_relu, leaky_relu_input_grad};
use crate::rng::SeededRng;

/// Mean over N, H and W per channel: (N, C, H, W) → (1, C, 1, 1).
///
/// The map is laid out as (C, N·H·W) first, because candle's CPU reduction over the non-contiguous axes
/// (0, 2, 3) takes a slow strided path.
fn channel_mean(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let rows = if n == 1 { x.reshape((c, h * w))? } else { x.transpose(0, 1)?.contiguous()?.reshape((c, n * h * w))? };
    Ok(rows.mean_keepdim(1)?.reshape((1, c, 1, 1))?)
}

/// Normalisation mode of the batch norm layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormMode {
    /// Batch statistics; running statistics are updated with momentum 0.1 (PyTorch training mode).
    Train,
    /// Stored running statistics (PyTorch eval mode); nothing is updated.
    Eval,
}

/// `BatchNorm2d` with affine parameters and running statistics (eps 1e-5, momentum 0.1).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    pub weight: Var,
    pub bias: Var,
    pub running_mean: Var,
    pub running_var: Var,
    eps: f64,
    momentum: f64,
}

/// Tensors a train-mode batch norm keeps for its input gradient.
#[derive(Debug, Clone)]
pub struct BatchNormTrace {
    /// Normalised input `x̂`, (N, C, H, W).
    normalized: Tensor,
    /// `1 / sqrt(var + eps)` per channel, (1, C, 1, 1).
    inv_std: Tensor,
}

impl BatchNorm2d {
    /// Creates a layer with weight 1, bias 0, running mean 0 and running variance 1.
    pub fn new(channels: usize, device: &Device) -> Result<Self> {
        Ok(BatchNorm2d {
            weight: Var::ones(channels, DType::F32, device)?,
            bias: Var::zeros(channels, DType::F32, device)?,
            running_mean: Var::zeros(channels, DType::F32, device)?,
            running_var: Var::ones(channels, DType::F32, device)?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    fn channel_view(t: &Tensor) -> Result<Tensor> {
        Ok(t.reshape((1, t.elem_count(), 1, 1))?)
    }

    /// Normalises `x`; returns the output and, in train mode, the trace for [`Self::input_grad`].
    pub fn forward_traced(&self, x: &Tensor, mode: NormMode) -> Result<(Tensor, Option<BatchNormTrace>)> {
        let gamma = Self::channel_view(self.weight.as_tensor())?;
        let beta = Self::channel_view(self.bias.as_tensor())?;
        match mode {
            NormMode::Eval => {
                // (x − μ)·γ/σ + β as one scale and one shift per channel: two passes over the map, not four.
                let inv_std = (Self::channel_view(self.running_var.as_tensor())? + self.eps)?.sqrt()?.recip()?;
                let mean = Self::channel_view(self.running_mean.as_tensor())?;
                let scale = (inv_std * gamma)?;
                let shift = (beta - (mean * &scale)?)?;
                Ok((x.broadcast_mul(&scale)?.broadcast_add(&shift)?, None))
            }
            NormMode::Train => {
                let (n, _c, h, w) = x.dims4()?;
                let count = n * h * w;
                if count < 2 {
                    return Err(Error::invalid(format!(
                        "batch norm in training mode needs more than one value per channel, got a {n}×{h}×{w} map"
                    )));
                }

                // Biased variance normalises; the unbiased one feeds the running estimate, as in PyTorch.
                let mean = channel_mean(x)?;
                let centered = x.broadcast_sub(&mean)?;
                let var = channel_mean(&centered.sqr()?)?;
                let inv_std = (&var + self.eps)?.sqrt()?.recip()?;
                let normalized = centered.broadcast_mul(&inv_std)?;
                let y = normalized.broadcast_mul(&gamma)?.broadcast_add(&beta)?;

                let unbiased = (var.detach().flatten_all()? * (count as f64 / (count - 1) as f64))?;
                let m = self.momentum;
                let new_mean = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean.detach().flatten_all()? * m)?)?;
                let new_var = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
                self.running_mean.set(&new_mean)?;
                self.running_var.set(&new_var)?;

                Ok((y, Some(BatchNormTrace { normalized, inv_std })))
            }
        }
    }

    /// Gradient of `Σ output · g` with respect to the input.
    ///
    /// Train mode: `γ/σ · (g − mean(g) − x̂ · mean(g · x̂))` per channel, means over N, H and W.
    /// Eval mode: `γ · g / sqrt(running_var + eps)`.
    pub fn input_grad(&self, trace: Option<&BatchNormTrace>, g: &Tensor) -> Result<Tensor> {
        let gamma = Self::channel_view(self.weight.as_tensor())?;
        match trace {
            Some(trace) => {
                let mean_g = channel_mean(g)?;
                let mean_gx = channel_mean(&(g * &trace.normalized)?)?;
                let centered = g.broadcast_sub(&mean_g)?.sub(&trace.normalized.broadcast_mul(&mean_gx)?)?;
                Ok(centered.broadcast_mul(&trace.inv_std.broadcast_mul(&gamma)?)?)
            }
            None => {
                let inv_std = (Self::channel_view(self.running_var.as_tensor())? + self.eps)?.sqrt()?.recip()?;
                Ok(g.broadcast_mul(&inv_std.broadcast_mul(&gamma)?)?)
            }
        }
    }
}

/// Activation after a convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    LeakyRelu(f64),
    Tanh,
    Identity,
}

/// Tensors [`ConvModule::forward_traced`] keeps for the input gradient.
#[derive(Debug, Clone)]
pub struct ConvTrace {
    /// Input of the activation.
    pre_activation: Tensor,
    /// Output of the activation (used by tanh's derivative).
    output: Tensor,
    norm: Option<BatchNormTrace>,
}

/// mmcv's `ConvModule`: a square convolution, then optional batch norm, then an activation.
///
/// Stride 1; `padding` zero pixels on each side. The convolution has a bias only when there is no
/// batch norm (mmcv's `bias='auto'`).
#[derive(Debug, Clone)]
pub struct ConvModule {
    pub weight: Var,
    pub bias: Option<Var>,
    pub norm: Option<BatchNorm2d>,
    pub activation: Activation,
    pub padding: usize,
}

impl ConvModule {
    /// Creates a layer initialised as the reference: weights ~ N(0, 0.02²), bias 0, batch norm (1, 0).
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel_size: usize,
        padding: usize,
        batch_norm: bool,
        activation: Activation,
        rng: &mut SeededRng,
        device: &Device,
    ) -> Result<Self> {
        let weight = rng.normal(&[out_channels, in_channels, kernel_size, kernel_size], 0.0, 0.02, device)?;
        let (bias, norm) = if batch_norm {
            (None, Some(BatchNorm2d::new(out_channels, device)?))
        } else {
            (Some(Var::zeros(out_channels, DType::F32, device)?), None)
        };
        Ok(ConvModule { weight: Var::from_tensor(&weight)?, bias, norm, activation, padding })
    }

    pub fn in_channels(&self) -> usize {
        self.weight.as_tensor().dims()[1]
    }

    pub fn out_channels(&self) -> usize {
        self.weight.as_tensor().dims()[0]
    }

    /// Applies the layer.
    pub fn forward(&self, x: &Tensor, mode: NormMode) -> Result<Tensor> {
        Ok(self.forward_traced(x, mode)?.0)
    }

    /// Applies the layer and keeps what [`Self::input_grad`] needs.
    pub fn forward_traced(&self, x: &Tensor, mode: NormMode) -> Result<(Tensor, ConvTrace)> {
        let mut z = conv2d(x, self.weight.as_tensor(), self.padding)?;
        if let Some(bias) = &self.bias {
            z = z.broadcast_add(&bias.as_tensor().reshape((1, (), 1, 1))?)?;
        }

        let (pre_activation, norm) = match &self.norm {
            Some(bn) => bn.forward_traced(&z, mode)?,
            None => (z, None),
        };

        let output = match self.activation {
            Activation::LeakyRelu(slope) => leaky_relu(&pre_activation, slope)?,
            Activation::Tanh => pre_activation.tanh()?,
            Activation::Identity => pre_activation.clone(),
        };
        let trace = ConvTrace { pre_activation, output: output.clone(), norm };
        Ok((output, trace))
    }

    /// Gradient of `Σ output · g` with respect to the layer input, as differentiable tensor ops.
    pub fn input_grad(&self, trace: &ConvTrace, g: &Tensor) -> Result<Tensor> {
        let g = match self.activation {
            Activation::LeakyRelu(slope) => leaky_relu_input_grad(g, &trace.pre_activation, slope)?,
            Activation::Tanh => (g * (1.0 - trace.output.sqr()?)?)?,
            Activation::Identity => g.clone(),
        };

        let g = match &self.norm {
            Some(bn) => bn.input_grad(trace.norm.as_ref(), &g)?,
            None => g,
        };

        conv2d_input_grad(&g, self.weight.as_tensor(), self.padding)
    }

    /// Trainable tensors: conv weight, conv bias or batch-norm affine parameters.
    pub fn trainable(&self) -> Vec<Var> {
        let mut vars = vec![self.weight.clone()];
        if let Some(bias) = &self.bias {
            vars.push(bias.clone());
        }
        if let Some(bn) = &self.norm {
            vars.push(bn.weight.clone());
            vars.push(bn.bias.clone());
        }
        vars
    }

    /// Appends every tensor under MMGeneration's key names (`{prefix}.conv.weight`, `{prefix}.bn.running_mean`, …).
    pub fn collect_tensors(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}.conv.weight"), self.weight.as_tensor().clone()));
        if let Some(bias) = &self.bias {
            out.push((format!("{prefix}.conv.bias"), bias.as_tensor().clone()));
        }
        if let Some(bn) = &self.norm {
            out.push((format!("{prefix}.bn.weight"), bn.weight.as_tensor().clone()));
            out.push((format!("{prefix}.bn.bias"), bn.bias.as_tensor().clone()));
            out.push((format!("{prefix}.bn.running_mean"), bn.running_mean.as_tensor().clone()));
            out.push((format!("{prefix}.bn.running_var"), bn.running_var.as_tensor().clone()));
        }
    }

    /// Overwrites every tensor from `tensors`, checking names and shapes; a layer built with the
    /// same configuration is expected.
    pub fn load_tensors(&self, prefix: &str, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let mut own = Vec::new();
        self.collect_tensors(prefix, &mut own);
        for (name, current) in own {
            let source = tensors
                .get(&name)
                .ok_or_else(|| Error::model(format!("missing tensor '{name}' of shape {:?}", current.dims())))?;
            if source.dims() != current.dims() {
                return Err(Error::model(format!(
                    "tensor '{name}' has shape {:?}, expected {:?}",
                    source.dims(),
                    current.dims()
                )));
            }
            let var = self.var_by_name(prefix, &name).expect("collected names map to vars");
            var.set(&source.to_dtype(DType::F32)?.to_device(current.device())?)?;
        }
        Ok(())
    }

    fn var_by_name(&self, prefix: &str, name: &str) -> Option<&Var> {
        let suffix = name.strip_prefix(prefix)?.strip_prefix('.')?;
        match suffix {
            "conv.weight" => Some(&self.weight),
            "conv.bias" => self.bias.as_ref(),
            "bn.weight" => self.norm.as_ref().map(|bn| &bn.weight),
            "bn.bias" => self.norm.as_ref().map(|bn| &bn.bias),
            "bn.running_mean" => self.norm.as_ref().map(|bn| &bn.running_mean),
            "bn.running_var" => self.norm.as_ref().map(|bn| &bn.running_var),
            _ => None,
        }
    }

    /// Copies the layer with every tensor converted to `dtype` (f64 for finite-difference checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<ConvModule> {
        let convert = |v: &Var| -> Result<Var> { Ok(Var::from_tensor(&v.as_tensor().to_dtype(dtype)?)?) };
        let norm = match &self.norm {
            Some(bn) => Some(BatchNorm2d {
                weight: convert(&bn.weight)?,
                bias: convert(&bn.bias)?,
                running_mean: convert(&bn.running_mean)?,
                running_var: convert(&bn.running_var)?,
                eps: bn.eps,
                momentum: bn.momentum,
            }),
            None => None,
        };
        Ok(ConvModule {
            weight: convert(&self.weight)?,
            bias: self.bias.as_ref().map(convert).transpose()?,
            norm,
            activation: self.activation,
            padding: self.padding,
        })
    }

    /// Copies every tensor of `other` (same shapes) into this layer, as a stage initialised from the previous one.
    pub fn copy_from(&self, other: &ConvModule) -> Result<()> {
        let mut theirs = Vec::new();
        other.collect_tensors("l", &mut theirs);
        let map: HashMap<String, Tensor> = theirs.into_iter().map(|(k, v)| (k, v.copy().unwrap_or(v))).collect();
        self.load_tensors("l", &map)
    }
}

/// Per-pixel L2 norm over the channel axis: (N, C, H, W) → (N, H, W).
pub fn channel_l2_norm(t: &Tensor) -> Result<Tensor> {
    Ok(t.sqr()?.sum(D::Minus(3))?.sqrt()?)
}
