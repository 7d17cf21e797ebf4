//! The R1 gradient penalty on real images, as MMGeneration v0.7.3's `R1GradientPenalty` computes it with
//! `norm_mode='HWC'`.
//!
//! With `g = ∂(Σ_n D(x)_n)/∂x` taken over the whole real batch, the penalty is `(1/N) Σ_n Σ_{c,h,w} g_n²`.
//! The training loss adds `R1_LOSS_WEIGHT · penalty` every `R1_INTERVAL` iterations (lazy regularisation).
//!
//! Two properties of the StyleGAN2 discriminator shape this penalty:
//!
//! - The minibatch-stddev layer couples the samples of a group, so `g_n` also contains terms from the
//!   logits of the other samples. The penalty of a batch is therefore not the mean of per-sample penalties,
//!   and the reference computes it over each GPU's local batch (3 images in the shipped configs).
//! - Everything in front of the stddev layer is piecewise linear in the input, so the biases receive an R1
//!   gradient only through the stddev statistic. The gradient is exactly 0 for the biases behind that layer
//!   (`final_conv.1.bias`, `final_linear.0.bias`), and `final_linear.1.bias` does not enter `g` at all
//!   (candle returns no gradient for it). The `convs.*` biases get small gradients, on the reference test
//!   model 200 to 800 times below the largest gradient of the discriminator.

use candle_core::Tensor;

use crate::error::Result;
use crate::stylegan2::discriminator::Discriminator;

/// R1 weight γ of the reference configs. The training loss uses γ/2 times the penalty.
pub const R1_GAMMA: f64 = 10.0;

/// Iterations between two R1 evaluations (lazy regularisation): the penalty is added when
/// `iteration % R1_INTERVAL == 0`.
pub const R1_INTERVAL: usize = 16;

/// Weight of the penalty in the discriminator loss, `γ/2 · R1_INTERVAL` = 80. The interval factor
/// compensates for evaluating the penalty only every `R1_INTERVAL` iterations.
pub const R1_LOSS_WEIGHT: f64 = R1_GAMMA / 2.0 * R1_INTERVAL as f64;

/// Computes the unweighted R1 penalty `(1/N) Σ_n ‖∂(Σ_m D(x)_m)/∂x_n‖²` of the real batch `x` (N, 3, H, W)
/// as a scalar.
///
/// The result is differentiable with respect to the discriminator's parameters: the input gradient comes
/// from [`Discriminator::input_grad`], an explicit backward pass made of tensor ops, and its activations
/// stay attached to the graph. The input itself is detached. The caller multiplies by the weight
/// ([`R1_LOSS_WEIGHT`] in the reference).
///
/// NOTE: the reference evaluates the penalty per GPU, on local batches of 3 real images, and DDP averages
/// the resulting gradients. A larger batch here changes the minibatch-stddev groups and so the value. To
/// reproduce the reference, call this once per group of 3 images and average the results.
pub fn r1_penalty(discriminator: &Discriminator, real: &Tensor) -> Result<Tensor> {
    let real = real.detach();
    let (scores, trace) = discriminator.forward_traced(&real)?;

    // ∂(Σ_n D_n)/∂D_n is one for every sample.
    let input_grad = discriminator.input_grad(&trace, &scores.ones_like()?)?;

    let batch = real.dim(0)? as f64;
    Ok((input_grad.sqr()?.sum_all()? / batch)?)
}
