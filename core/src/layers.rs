//! Layers shared by the SinGAN generator and discriminator: batch norm with running statistics and
//! the mmcv `ConvModule` (convolution, optional batch norm, activation).
//!
//! Every layer can also run "traced": it keeps what its input gradient needs, so that
//! [`ConvModule::input_grad`] computes `∂(Σ output · g)/∂input` from ordinary differentiable tensor ops.
//! Gradient penalties are built on that explicit backward pass, because candle's own backward pass
//! detaches the gradients it returns and so cannot be differentiated a second time.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var, D};

use crate::error::{Error, Result};
use crate::ops::batch_norm::{self, BatchStats};
use crate::ops::conv::{conv2d, conv2d_input_grad};
use crate::ops::conv_leaky_relu::conv2d_bias_leaky_relu;
use crate::ops::leaky_relu::{leaky_relu, leaky_relu_input_grad};
use crate::rng::SeededRng;

/// Mean over N, H and W per channel: (N, C, H, W) → (1, C, 1, 1).
///
/// The map is laid out as (C, N·H·W) first, because candle's CPU reduction over the non-contiguous axes
/// (0, 2, 3) takes a slow strided path.
fn channel_mean(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let rows =
        if n == 1 { x.reshape((c, h * w))? } else { x.transpose(0, 1)?.contiguous()?.reshape((c, n * h * w))? };
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
pub struct BatchNormTrace(TraceKind);

#[derive(Debug, Clone)]
enum TraceKind {
    /// The fused CPU kernels' input and batch statistics.
    Fused { input: Tensor, stats: Arc<BatchStats> },
    /// The composed ops' normalised input `x̂` (N, C, H, W) and `1/√(var + eps)` (1, C, 1, 1).
    Composed { normalized: Tensor, inv_std: Tensor },
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
    ///
    /// Train mode runs the fused kernels of [`crate::ops::batch_norm`] where they apply (f32 or f64 on
    /// the CPU) and candle's ops elsewhere.
    pub fn forward_traced(&self, x: &Tensor, mode: NormMode) -> Result<(Tensor, Option<BatchNormTrace>)> {
        match mode {
            NormMode::Eval => {
                // (x − μ)·γ/σ + β as one scale and one shift per channel: two passes over the map, not four.
                let (scale, shift) = self.eval_scale_shift()?;
                let (scale, shift) = (Self::channel_view(&scale)?, Self::channel_view(&shift)?);
                Ok((x.broadcast_mul(&scale)?.broadcast_add(&shift)?, None))
            }
            NormMode::Train if batch_norm::supports(x) => {
                let (y, stats) =
                    batch_norm::batch_norm_train(x, self.weight.as_tensor(), self.bias.as_tensor(), self.eps)?;
                let device = x.device();
                let mean = Tensor::new(stats.mean.as_slice(), device)?;
                let unbiased = Tensor::new(stats.unbiased_var().as_slice(), device)?;
                self.update_running_stats(&mean, &unbiased)?;
                Ok((y, Some(BatchNormTrace(TraceKind::Fused { input: x.clone(), stats }))))
            }
            NormMode::Train => {
                let (y, trace) = self.composed_train_forward(x)?;
                Ok((y, Some(trace)))
            }
        }
    }

    /// Returns the eval-mode map `x·scale + shift` per channel: `scale = γ/√(running_var + eps)` and
    /// `shift = β − running_mean·scale`, (C,) each.
    pub fn eval_scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let inv_std = (self.running_var.as_tensor() + self.eps)?.sqrt()?.recip()?;
        let scale = (inv_std * self.weight.as_tensor())?;
        let shift = (self.bias.as_tensor() - (self.running_mean.as_tensor() * &scale)?)?;
        Ok((scale, shift))
    }

    /// Runs the train-mode forward pass with candle's ops, for devices without the fused kernels.
    fn composed_train_forward(&self, x: &Tensor) -> Result<(Tensor, BatchNormTrace)> {
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
        let gamma = Self::channel_view(self.weight.as_tensor())?;
        let beta = Self::channel_view(self.bias.as_tensor())?;
        let y = normalized.broadcast_mul(&gamma)?.broadcast_add(&beta)?;

        let unbiased = (var.detach().flatten_all()? * (count as f64 / (count - 1) as f64))?;
        self.update_running_stats(&mean.detach().flatten_all()?, &unbiased)?;
        Ok((y, BatchNormTrace(TraceKind::Composed { normalized, inv_std })))
    }

    /// Moves the running statistics towards the batch's (C values each), with momentum 0.1.
    fn update_running_stats(&self, mean: &Tensor, unbiased_var: &Tensor) -> Result<()> {
        let m = self.momentum;
        let dtype = self.running_mean.dtype();
        let new_mean = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean.to_dtype(dtype)? * m)?)?;
        let new_var = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased_var.to_dtype(dtype)? * m)?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        Ok(())
    }

    /// Gradient of `Σ output · g` with respect to the input.
    ///
    /// Train mode: `γ/σ · (g − mean(g) − x̂ · mean(g · x̂))` per channel, means over N, H and W.
    /// Eval mode: `γ · g / sqrt(running_var + eps)`.
    pub fn input_grad(&self, trace: Option<&BatchNormTrace>, g: &Tensor) -> Result<Tensor> {
        match trace.map(|trace| &trace.0) {
            Some(TraceKind::Fused { input, stats }) => {
                batch_norm::batch_norm_input_grad(g, input, self.weight.as_tensor(), stats)
            }
            Some(TraceKind::Composed { normalized, inv_std }) => {
                let mean_g = channel_mean(g)?;
                let mean_gx = channel_mean(&(g * normalized)?)?;
                let centered = g.broadcast_sub(&mean_g)?.sub(&normalized.broadcast_mul(&mean_gx)?)?;
                let gamma = Self::channel_view(self.weight.as_tensor())?;
                Ok(centered.broadcast_mul(&inv_std.broadcast_mul(&gamma)?)?)
            }
            None => {
                let (scale, _) = self.eval_scale_shift()?;
                Ok(g.broadcast_mul(&Self::channel_view(&scale)?)?)
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
        // In eval mode without a trace, the batch norm's shift and the leaky ReLU are applied as the
        // convolution stores its output, or in one pass after it.
        if let (Some(bn), NormMode::Eval, Activation::LeakyRelu(slope)) = (&self.norm, mode, self.activation) {
            let (weight, shift) = self.eval_kernel_and_shift(bn)?;
            return conv2d_bias_leaky_relu(x, &weight, &shift, self.padding, slope);
        }
        Ok(self.forward_traced(x, mode)?.0)
    }

    /// Applies the layer and keeps what [`Self::input_grad`] needs.
    pub fn forward_traced(&self, x: &Tensor, mode: NormMode) -> Result<(Tensor, ConvTrace)> {
        let (pre_activation, norm) = match (&self.norm, mode) {
            // In eval mode the batch norm is a fixed affine map per channel. Its scale folded into the
            // kernel, it costs one pass over the map instead of two.
            (Some(bn), NormMode::Eval) => {
                let (z, shift) = self.eval_conv(bn, x)?;
                (z.broadcast_add(&shift.reshape((1, (), 1, 1))?)?, None)
            }
            (norm, mode) => {
                let mut z = conv2d(x, self.weight.as_tensor(), self.padding)?;
                if let Some(bias) = &self.bias {
                    z = z.broadcast_add(&bias.as_tensor().reshape((1, (), 1, 1))?)?;
                }
                match norm {
                    Some(bn) => bn.forward_traced(&z, mode)?,
                    None => (z, None),
                }
            }
        };

        let output = match self.activation {
            Activation::LeakyRelu(slope) => leaky_relu(&pre_activation, slope)?,
            Activation::Tanh => pre_activation.tanh()?,
            Activation::Identity => pre_activation.clone(),
        };
        let trace = ConvTrace { pre_activation, output: output.clone(), norm };
        Ok((output, trace))
    }

    /// Returns the convolution with the eval-mode batch norm's scale folded into the kernel, and the
    /// per-channel shift that remains to be added.
    fn eval_conv(&self, bn: &BatchNorm2d, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (weight, shift) = self.eval_kernel_and_shift(bn)?;
        Ok((conv2d(x, &weight, self.padding)?, shift))
    }

    /// Returns the kernel with the eval-mode batch norm's scale folded in, and the batch norm's shift.
    fn eval_kernel_and_shift(&self, bn: &BatchNorm2d) -> Result<(Tensor, Tensor)> {
        let (scale, shift) = bn.eval_scale_shift()?;
        let weight = self.weight.broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
        Ok((weight, shift))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an f64 batch norm of `channels` channels with random affine parameters and running statistics.
    fn random_layer(channels: usize, rng: &mut SeededRng) -> BatchNorm2d {
        let mut var = |mean: f32, std: f32| {
            Var::from_tensor(&rng.normal(&[channels], mean, std, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap())
                .unwrap()
        };
        BatchNorm2d {
            weight: var(1.0, 0.5),
            bias: var(0.0, 0.5),
            running_mean: var(0.0, 1.0),
            running_var: Var::from_tensor(&(var(0.0, 1.0).as_tensor().abs().unwrap() + 0.5).unwrap()).unwrap(),
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    fn random_map(dims: &[usize], mean: f32, std: f32, rng: &mut SeededRng) -> Tensor {
        rng.normal(dims, mean, std, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    fn copy_layer(bn: &BatchNorm2d) -> BatchNorm2d {
        let copy = |v: &Var| Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap();
        BatchNorm2d {
            weight: copy(&bn.weight),
            bias: copy(&bn.bias),
            running_mean: copy(&bn.running_mean),
            running_var: copy(&bn.running_var),
            eps: bn.eps,
            momentum: bn.momentum,
        }
    }

    /// Runs the train-mode forward pass through the fused kernels or the composed ops.
    fn train_forward(bn: &BatchNorm2d, x: &Tensor, fused: bool) -> (Tensor, BatchNormTrace) {
        if fused {
            let (y, trace) = bn.forward_traced(x, NormMode::Train).unwrap();
            let trace = trace.unwrap();
            assert!(matches!(trace.0, TraceKind::Fused { .. }), "f64 CPU maps take the fused kernels");
            (y, trace)
        } else {
            bn.composed_train_forward(x).unwrap()
        }
    }

    /// Batch 2, 5 channels, 7×9 pixels, with channel means far from zero, so that the statistics and
    /// their gradients matter.
    fn input(rng: &mut SeededRng) -> Tensor {
        let offsets =
            Tensor::new(&[3.0f64, -2.0, 0.5, 10.0, -0.25], &Device::Cpu).unwrap().reshape((1, 5, 1, 1)).unwrap();
        random_map(&[2, 5, 7, 9], 0.0, 2.0, rng).broadcast_add(&offsets).unwrap()
    }

    #[test]
    fn fused_forward_matches_composed() {
        let mut rng = SeededRng::new(11);
        let fused_layer = random_layer(5, &mut rng);
        let composed_layer = copy_layer(&fused_layer);
        let x = input(&mut rng);

        let (fused, _) = train_forward(&fused_layer, &x, true);
        let (composed, _) = train_forward(&composed_layer, &x, false);
        assert!(max_abs_diff(&fused, &composed) < 1e-12);
        assert!(max_abs_diff(&fused_layer.running_mean, &composed_layer.running_mean) < 1e-12);
        assert!(max_abs_diff(&fused_layer.running_var, &composed_layer.running_var) < 1e-12);
        // The output's mean per channel is β.
        let mean = channel_mean(&fused).unwrap().flatten_all().unwrap();
        assert!(max_abs_diff(&mean, fused_layer.bias.as_tensor()) < 1e-12);
    }

    #[test]
    fn fused_gradients_match_composed() {
        let mut rng = SeededRng::new(12);
        let bn = random_layer(5, &mut rng);
        let x = Var::from_tensor(&input(&mut rng)).unwrap();
        let r = random_map(&[2, 5, 7, 9], 0.0, 1.0, &mut rng);

        let gradients = |fused: bool| {
            let (y, _) = train_forward(&bn, &x, fused);
            // A non-linear loss, so that the output gradient varies with y.
            let grads = (y.sqr().unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap();
            [x.as_tensor(), bn.weight.as_tensor(), bn.bias.as_tensor()].map(|t| grads.get(t).unwrap().clone())
        };
        let (fused, composed) = (gradients(true), gradients(false));
        for (name, (a, b)) in ["input", "weight", "bias"].iter().zip(fused.iter().zip(&composed)) {
            let diff = max_abs_diff(a, b);
            assert!(diff < 1e-10, "{name} gradient differs by {diff}");
        }
    }

    #[test]
    fn fused_second_order_matches_composed() {
        let mut rng = SeededRng::new(13);
        let bn = random_layer(5, &mut rng);
        let x = Var::from_tensor(&input(&mut rng)).unwrap();
        let g = Var::from_tensor(&random_map(&[2, 5, 7, 9], 0.5, 1.0, &mut rng)).unwrap();
        let r = random_map(&[2, 5, 7, 9], 0.0, 1.0, &mut rng);

        // As in a gradient penalty: a non-linear function of the input gradient, differentiated with
        // respect to the input, the upstream gradient and the weight.
        let run = |fused: bool| {
            let (_, trace) = train_forward(&bn, &x, fused);
            let dx = bn.input_grad(Some(&trace), &g).unwrap();
            let grads = (dx.sqr().unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let wrt = [x.as_tensor(), g.as_tensor(), bn.weight.as_tensor()].map(|t| grads.get(t).unwrap().clone());
            (dx, wrt)
        };
        let ((fused_dx, fused), (composed_dx, composed)) = (run(true), run(false));
        assert!(max_abs_diff(&fused_dx, &composed_dx) < 1e-10);
        for (name, (a, b)) in ["input", "upstream gradient", "weight"].iter().zip(fused.iter().zip(&composed)) {
            let diff = max_abs_diff(a, b);
            assert!(diff < 1e-9, "second-order {name} gradient differs by {diff}");
        }
    }
}
