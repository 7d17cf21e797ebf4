//! Convolution, per-channel bias and leaky ReLU as one op: the layer of an eval-mode SinGAN generator,
//! whose batch norm is folded into the kernel (scale) and the bias (shift).
//!
//! Where the convolution runs as an implicit GEMM on the CPU, the bias and the activation are applied to
//! each register block before it is stored. The output is then written once, where a separate activation
//! pass would read it and write it again. Elsewhere the op is [`conv2d`] followed by [`bias_leaky_relu`].

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::conv::{
    conv2d, conv2d_shape, input_grad_unchecked, runs_implicit_gemm, uses_cpu_kernels, weight_grad_unchecked,
    Correlation,
};
use super::leaky_relu::{bias_leaky_relu, leaky_relu_input_grad};
use crate::{Error, Result};

/// Applies `leaky_relu(conv2d(x, w, padding) + bias)` with negative slope `slope` (0 ≤ slope ≤ 1).
///
/// `x` is (N, Cin, H, W), `w` is (Cout, Cin, k, k) and `bias` is (Cout). The result is differentiable in
/// all three and equals [`conv2d`] followed by [`bias_leaky_relu`] with gain 1 value for value.
pub fn conv2d_bias_leaky_relu(x: &Tensor, w: &Tensor, bias: &Tensor, padding: usize, slope: f64) -> Result<Tensor> {
    let shape = conv2d_shape(x, w, padding)?;
    if !(0.0..=1.0).contains(&slope) {
        return Err(Error::invalid(format!("leaky ReLU takes a negative slope in [0, 1], got {slope}")));
    }
    if bias.dtype() != x.dtype() || !bias.device().same_device(x.device()) {
        return Err(Error::invalid(format!(
            "convolution bias {:?} ({:?} on {:?}) must have the dtype and device of the input ({:?} on {:?})",
            bias.dims(),
            bias.dtype(),
            bias.device(),
            x.dtype(),
            x.device()
        )));
    }
    if bias.dims() != [shape.c_out] {
        return Err(Error::invalid(format!(
            "convolution bias {:?} does not match weight {:?}: expected ({})",
            bias.dims(),
            w.dims(),
            shape.c_out
        )));
    }

    let geometry = Correlation {
        batch: shape.batch,
        c_in: shape.c_in,
        h_in: shape.h,
        w_in: shape.w,
        c_out: shape.c_out,
        k: shape.k,
        pad: padding as isize,
        h_out: shape.h_out,
        w_out: shape.w_out,
    };
    // The checks above give the bias the input's dtype and device.
    if uses_cpu_kernels(x) && runs_implicit_gemm(&geometry) {
        let op = Conv2dBiasLeakyRelu { geometry, slope };
        return Ok(x.contiguous()?.apply_op3(&w.contiguous()?, &bias.contiguous()?, op)?);
    }
    bias_leaky_relu(&conv2d(x, w, padding)?, bias, slope, 1.0)
}

/// [`conv2d_bias_leaky_relu`] on the CPU in f32 for a geometry that runs as an implicit GEMM:
/// arguments (x, w, bias).
struct Conv2dBiasLeakyRelu {
    geometry: Correlation,
    slope: f64,
}

impl CustomOp3 for Conv2dBiasLeakyRelu {
    fn name(&self) -> &'static str {
        "pegan-conv2d-bias-leaky-relu"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
        bias_storage: &CpuStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let x = super::f32_data(x_storage, x_layout, "convolution input")?;
        let w = super::f32_data(w_storage, w_layout, "convolution weight")?;
        let bias = super::f32_data(bias_storage, bias_layout, "convolution bias")?;
        if x.len() != g.batch * g.c_in * g.in_pixels() || w.len() != g.c_out * g.patch_len() || bias.len() != g.c_out {
            candle_core::bail!(
                "convolution arguments {:?}, {:?} and {:?} do not match the geometry {g:?}",
                x_layout.dims(),
                w_layout.dims(),
                bias_layout.dims()
            );
        }
        let shape = Shape::from((g.batch, g.c_out, g.h_out, g.w_out));

        #[cfg(target_arch = "x86_64")]
        {
            let activation = super::implicit_gemm::BiasLeakyRelu { bias, slope: self.slope as f32 };
            let y = super::implicit_gemm::correlate(x, w, g, Some(activation), super::num_threads());
            Ok((CpuStorage::F32(y), shape))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            // `runs_implicit_gemm` is false off x86-64, so the op is never built there.
            let _ = shape;
            candle_core::bail!("the fused convolution and leaky ReLU needs an x86-64 CPU with AVX-512F")
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // y > 0 exactly where the pre-activation is positive (for slope 0 too, where y = max(z, 0)), so y
        // can replace the pre-activation in the leaky ReLU's derivative.
        let grad_pre = leaky_relu_input_grad(grad, y, self.slope).map_err(candle_core::Error::wrap)?;
        let padding = self.geometry.pad as usize;
        let grad_x = x.track_op().then(|| input_grad_unchecked(&grad_pre, w, padding)).transpose()?;
        let grad_w = w.track_op().then(|| weight_grad_unchecked(x, &grad_pre, padding, self.geometry.k)).transpose()?;
        let grad_bias = bias.track_op().then(|| grad_pre.sum((0, 2, 3))).transpose()?;
        Ok((grad_x, grad_w, grad_bias))
    }
}
