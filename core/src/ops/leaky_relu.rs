//! Leaky ReLU, its input gradient and its derivative as single passes over the tensor on the CPU.
//!
//! Written with candle's own ops, `max(z, a·z)` takes two passes forward, and candle differentiates
//! `maximum` with two comparisons and four more full-size ops. SinGAN's layers apply leaky ReLU to
//! maps of up to 6 million values per layer, several times per training step, so these passes add up
//! to seconds per iteration. Here the forward pass and the gradient are one pass each on the CPU in
//! f32; other devices and dtypes use the composed form with the same results. The same holds for a
//! per-channel bias and a gain applied with the activation (StyleGAN2's fused bias leaky ReLU, and
//! SinGAN's batch-norm shift in eval mode).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use super::{f32_data, num_threads, run_tasks, widest_fn, SharedMut};
use crate::error::{Error, Result};

/// Applies leaky ReLU with negative slope `slope` (0 ≤ slope ≤ 1): `z` where `z > 0`, else `slope·z`.
///
/// Differentiable; its derivative is taken as `slope` at 0, as PyTorch does.
pub fn leaky_relu(z: &Tensor, slope: f64) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&slope) {
        return Err(Error::invalid(format!("leaky ReLU takes a negative slope in [0, 1], got {slope}")));
    }
    if uses_cpu_kernel(z) {
        return Ok(z.contiguous()?.apply_op1(LeakyRelu { slope })?);
    }
    // max(z, a·z) equals leaky ReLU for 0 ≤ a ≤ 1.
    Ok(z.maximum(&(z * slope)?)?)
}

/// Computes `∂(Σ leaky_relu(z) · g)/∂z = g ⊙ (1 where z > 0, else slope)`.
///
/// Linear in `g` and differentiable in it; the gradient with respect to `z` is zero (the derivative is a
/// step function), so second-order gradients through it are exact almost everywhere.
pub fn leaky_relu_input_grad(g: &Tensor, z: &Tensor, slope: f64) -> Result<Tensor> {
    if uses_cpu_kernel(g) && z.dtype() == DType::F32 && z.device().is_cpu() && g.dims() == z.dims() {
        return Ok(g.contiguous()?.apply_op2(&z.contiguous()?.detach(), LeakyReluGrad { slope })?);
    }
    let positive = z.gt(0.0)?.to_dtype(g.dtype())?.detach();
    Ok((g * ((positive * (1.0 - slope))? + slope)?)?)
}

/// Returns the local derivative `gain · (1 where z > 0, else slope)` of `gain · leaky_relu(z)`, detached
/// from the graph (it is piecewise constant in `z`).
pub fn leaky_relu_derivative(z: &Tensor, slope: f64, gain: f64) -> Result<Tensor> {
    if uses_cpu_kernel(z) {
        return Ok(z.contiguous()?.apply_op1_no_bwd(&LeakyReluDerivative { slope, gain })?);
    }
    let positive = z.detach().gt(0.0)?.to_dtype(z.dtype())?;
    Ok(positive.affine((1.0 - slope) * gain, slope * gain)?)
}

/// Computes `gain · leaky_relu(x + b)` with the bias `b` (C) broadcast along axis 1 of `x` (N, C, ...),
/// differentiable in both. On the CPU in f32 it is one pass over `x`.
pub fn bias_leaky_relu(x: &Tensor, bias: &Tensor, slope: f64, gain: f64) -> Result<Tensor> {
    let channels = match x.dims() {
        [_, channels, ..] => *channels,
        dims => return Err(Error::invalid(format!("bias leaky ReLU takes an input (N, C, ...), got {dims:?}"))),
    };
    if !(0.0..=1.0).contains(&slope) || gain.is_nan() || gain <= 0.0 {
        return Err(Error::invalid(format!(
            "bias leaky ReLU takes a slope in [0, 1] and a positive gain, got slope {slope} and gain {gain}"
        )));
    }
    if bias.dims() != [channels] {
        return Err(Error::invalid(format!(
            "bias leaky ReLU bias {:?} does not match input {:?}: expected ({channels})",
            bias.dims(),
            x.dims()
        )));
    }
    if uses_cpu_kernel(x) && uses_cpu_kernel(bias) {
        return Ok(x.contiguous()?.apply_op2(&bias.contiguous()?, BiasLeakyRelu { slope, gain })?);
    }
    let mut shape = vec![1usize; x.rank()];
    shape[1] = channels;
    let pre = x.broadcast_add(&bias.reshape(shape)?)?;
    Ok(leaky_relu(&pre, slope)?.affine(gain, 0.0)?)
}

fn uses_cpu_kernel(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// `gain · leaky_relu(x + b)` for an f32 tensor x (N, C, ...) and a bias b (C) on the CPU: arguments (x, b).
struct BiasLeakyRelu {
    slope: f64,
    gain: f64,
}

/// Values per task of [`BiasLeakyRelu`]: tasks of whole channel planes of about this size.
const VALUES_PER_TASK: usize = 1 << 16;

impl CustomOp2 for BiasLeakyRelu {
    fn name(&self) -> &'static str {
        "pegan-bias-leaky-relu"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        b_storage: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(x_storage, x_layout, "bias leaky ReLU input")?;
        let bias = f32_data(b_storage, b_layout, "bias leaky ReLU bias")?;
        let dims = x_layout.dims();
        if dims.len() < 2 || bias.len() != dims[1] {
            candle_core::bail!("bias of {} values does not match input {dims:?}: expected one per channel", bias.len());
        }
        let plane: usize = dims[2..].iter().product();
        let planes = dims[0] * dims[1];
        let (positive, negative) = (self.gain as f32, (self.gain * self.slope) as f32);

        // Every value is written below, so the output starts uninitialised.
        let mut out: Vec<f32> = Vec::with_capacity(x.len());
        let planes_per_task = (VALUES_PER_TASK / plane.max(1)).clamp(1, planes.max(1));
        let dst = SharedMut(out.as_mut_ptr());
        run_tasks(planes.div_ceil(planes_per_task), num_threads(), |_, task| {
            for index in task * planes_per_task..planes.min((task + 1) * planes_per_task) {
                let b = bias[index % dims[1]];
                let src = &x[index * plane..(index + 1) * plane];
                // SAFETY: plane `index` of the output is written by this task alone.
                let row = unsafe { std::slice::from_raw_parts_mut(dst.ptr().add(index * plane), plane) };
                bias_leaky_relu_plane(row, src, b, positive, negative);
            }
        });
        // SAFETY: the tasks wrote every plane.
        unsafe { out.set_len(x.len()) };
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // The slope is piecewise constant in x + b, so the gradient is linear in `grad` (and differentiable
        // in it) with the slope of the forward input.
        let mut shape = vec![1usize; x.rank()];
        shape[1] = bias.dim(0)?;
        let pre = x.broadcast_add(&bias.reshape(shape)?)?.detach();
        let grad_pre =
            grad.contiguous()?.apply_op2(&pre, LeakyReluGrad { slope: self.slope })?.affine(self.gain, 0.0)?;
        let grad_x = x.track_op().then(|| grad_pre.clone());
        let grad_bias = if bias.track_op() {
            let mut summed = grad_pre.sum_keepdim(0)?;
            for axis in 2..x.rank() {
                summed = summed.sum_keepdim(axis)?;
            }
            Some(summed.flatten_all()?)
        } else {
            None
        };
        Ok((grad_x, grad_bias))
    }
}

/// Leaky ReLU of one f32 tensor.
struct LeakyRelu {
    slope: f64,
}

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "pegan-leaky-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let slope = self.slope as f32;
        let z = f32_data(storage, layout, "leaky ReLU input")?;
        // max(z, slope·z) for 0 ≤ slope ≤ 1, which vectorises.
        let out = leaky_relu_values(z, slope);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, z: &Tensor, _out: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?.apply_op2(&z.detach(), LeakyReluGrad { slope: self.slope })?;
        Ok(Some(grad))
    }
}

/// `gain · leaky_relu'(z)` of one f32 tensor, without a gradient.
struct LeakyReluDerivative {
    slope: f64,
    gain: f64,
}

impl CustomOp1 for LeakyReluDerivative {
    fn name(&self) -> &'static str {
        "pegan-leaky-relu-derivative"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (positive, negative) = (self.gain as f32, (self.slope * self.gain) as f32);
        let z = f32_data(storage, layout, "leaky ReLU input")?;
        let out = z.iter().map(|&value| if value > 0.0 { positive } else { negative }).collect();
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `g ⊙ leaky_relu'(z)` for f32 tensors (g, z) of one shape; differentiable in `g` only.
struct LeakyReluGrad {
    slope: f64,
}

impl CustomOp2 for LeakyReluGrad {
    fn name(&self) -> &'static str {
        "pegan-leaky-relu-grad"
    }

    fn cpu_fwd(
        &self,
        g_storage: &CpuStorage,
        g_layout: &Layout,
        z_storage: &CpuStorage,
        z_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if g_layout.shape() != z_layout.shape() {
            candle_core::bail!(
                "leaky ReLU gradient {:?} and input {:?} differ in shape",
                g_layout.shape(),
                z_layout.shape()
            );
        }
        let slope = self.slope as f32;
        let g = f32_data(g_storage, g_layout, "leaky ReLU gradient")?;
        let z = f32_data(z_storage, z_layout, "leaky ReLU input")?;
        let out = leaky_relu_grad_values(g, z, slope);
        Ok((CpuStorage::F32(out), g_layout.shape().clone()))
    }

    fn bwd(
        &self,
        _g: &Tensor,
        z: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // Linear in g with the same factor; the factor is piecewise constant in z.
        let grad_g = grad.contiguous()?.apply_op2(&z.detach(), LeakyReluGrad { slope: self.slope })?;
        Ok((Some(grad_g), None))
    }
}

widest_fn! {
    /// Writes `gain · leaky_relu(x + b)` of one plane to `out`, as `max(pre · positive, pre · negative)`
    /// with `positive = gain` and `negative = gain · slope`.
    fn bias_leaky_relu_plane(out: &mut [f32], x: &[f32], b: f32, positive: f32, negative: f32) {
        for (o, &value) in out.iter_mut().zip(x) {
            // With gain > 0 and 0 ≤ slope ≤ 1 the larger product is the right one, and max vectorises
            // where a branch on the sign did not.
            let pre = value + b;
            *o = (pre * positive).max(pre * negative);
        }
    }
}

widest_fn! {
    /// Returns `max(z, slope · z)`, the leaky ReLU for 0 ≤ slope ≤ 1, in a form that vectorises.
    fn leaky_relu_values(z: &[f32], slope: f32) -> Vec<f32> {
        z.iter().map(|&value| value.max(slope * value)).collect()
    }
}

widest_fn! {
    /// Returns the leaky ReLU's input gradient: `g` where `z > 0`, `slope · g` elsewhere.
    fn leaky_relu_grad_values(g: &[f32], z: &[f32], slope: f32) -> Vec<f32> {
        g.iter().zip(z).map(|(&gv, &zv)| if zv > 0.0 { gv } else { slope * gv }).collect()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn sample() -> Tensor {
        Tensor::new(&[[-2.0f32, -0.5, 0.0, 0.25, 3.0], [1.0, -1.0, 0.5, -0.125, 0.0]], &Device::Cpu).unwrap()
    }

    #[test]
    fn forward_matches_composed_form() {
        let z = sample();
        let composed = z.maximum(&(&z * 0.2).unwrap()).unwrap();
        assert_eq!(values(&leaky_relu(&z, 0.2).unwrap()), values(&composed));
    }

    #[test]
    fn gradient_is_one_or_slope() {
        let z = Var::from_tensor(&sample()).unwrap();
        let grads = leaky_relu(&z, 0.2).unwrap().sum_all().unwrap().backward().unwrap();
        let expected: Vec<f32> = values(&sample()).iter().map(|&value| if value > 0.0 { 1.0 } else { 0.2 }).collect();
        assert_eq!(values(grads.get(&z).unwrap()), expected);
    }

    #[test]
    fn input_grad_matches_composed_form() {
        let z = sample();
        let g = Tensor::new(&[[1.0f32, 2.0, 3.0, 4.0, 5.0], [-1.0, -2.0, -3.0, -4.0, -5.0]], &Device::Cpu).unwrap();
        let fast = leaky_relu_input_grad(&g, &z, 0.2).unwrap();
        let composed = leaky_relu_input_grad(&g.to_dtype(DType::F64).unwrap(), &z.to_dtype(DType::F64).unwrap(), 0.2)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(values(&fast), values(&composed));
    }

    #[test]
    fn derivative_matches_composed_form() {
        let z = sample();
        let fast = leaky_relu_derivative(&z, 0.2, 2.0).unwrap();
        let composed = leaky_relu_derivative(&z.to_dtype(DType::F64).unwrap(), 0.2, 2.0).unwrap();
        assert_eq!(values(&fast), values(&composed.to_dtype(DType::F32).unwrap()));
    }

    #[test]
    fn bias_leaky_relu_matches_composed_form() {
        // f32 on the CPU takes the fused pass, f64 the composed ops.
        for dims in [vec![3usize, 5], vec![2, 3, 4, 5]] {
            let x = Tensor::randn(0f32, 1.0, dims.as_slice(), &Device::Cpu).unwrap();
            let bias = Tensor::randn(0f32, 1.0, dims[1], &Device::Cpu).unwrap();
            let fused = bias_leaky_relu(&x, &bias, 0.2, 1.5).unwrap();
            let (x64, bias64) = (x.to_dtype(DType::F64).unwrap(), bias.to_dtype(DType::F64).unwrap());
            let composed = bias_leaky_relu(&x64, &bias64, 0.2, 1.5).unwrap().to_dtype(DType::F32).unwrap();
            for (index, (f, c)) in values(&fused).iter().zip(values(&composed)).enumerate() {
                assert!((f - c).abs() <= 1e-6 * (1.0 + c.abs()), "{dims:?} value {index}: fused {f}, composed {c}");
            }
        }
    }

    #[test]
    fn slopes_outside_unit_interval_are_rejected() {
        let z = sample();
        let message = leaky_relu(&z, 1.5).unwrap_err().to_string();
        assert!(message.contains("got 1.5"), "unexpected message: {message}");
        let bias = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let message = bias_leaky_relu(&z, &bias, -0.1, 1.0).unwrap_err().to_string();
        assert!(message.contains("slope -0.1"), "unexpected message: {message}");
        let message = bias_leaky_relu(&z, &bias, 0.2, 0.0).unwrap_err().to_string();
        assert!(message.contains("gain 0"), "unexpected message: {message}");
    }

    #[test]
    fn bias_leaky_relu_rejects_bad_bias() {
        let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let bias = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let message = bias_leaky_relu(&x, &bias, 0.2, 1.0).unwrap_err().to_string();
        assert!(message.contains("expected (3)"), "unexpected message: {message}");
    }

    #[test]
    fn input_grad_is_differentiable_in_g() {
        // d/dg Σ input_grad(g, z) · r = input_grad(r, z).
        let z = sample();
        let g = Var::from_tensor(&sample().affine(0.5, 1.0).unwrap()).unwrap();
        let r = sample().affine(-1.0, 0.5).unwrap();
        let loss = (leaky_relu_input_grad(&g, &z, 0.2).unwrap() * &r).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        assert_eq!(values(grads.get(&g).unwrap()), values(&leaky_relu_input_grad(&r, &z, 0.2).unwrap()));
    }
}
