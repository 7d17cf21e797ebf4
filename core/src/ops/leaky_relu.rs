//! Leaky ReLU, its input gradient and its derivative as single passes over the tensor on the CPU.
//!
//! Written with candle's own ops, `max(z, a·z)` takes two passes forward, and candle differentiates
//! `maximum` with two comparisons and four more full-size ops. SinGAN's layers apply leaky ReLU to
//! maps of up to 6 million values per layer, several times per training step, so these passes add up
//! to seconds per iteration. Here the forward pass and the gradient are one pass each on the CPU in
//! f32; other devices and dtypes use the composed form with the same results.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use super::f32_data;
use crate::error::Result;

/// Applies leaky ReLU with negative slope `slope` (0 ≤ slope < 1): `z` where `z > 0`, else `slope·z`.
///
/// Differentiable; its derivative is taken as `slope` at 0, as PyTorch does.
pub fn leaky_relu(z: &Tensor, slope: f64) -> Result<Tensor> {
    if uses_cpu_kernel(z) {
        return Ok(z.contiguous()?.apply_op1(LeakyRelu { slope })?);
    }
    // max(z, a·z) equals leaky ReLU for 0 ≤ a < 1.
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

fn uses_cpu_kernel(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
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
        let out = z.iter().map(|&value| if value > 0.0 { value } else { slope * value }).collect();
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
        let out = g.iter().zip(z).map(|(&gv, &zv)| if zv > 0.0 { gv } else { slope * gv }).collect();
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
