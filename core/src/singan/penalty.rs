//! WGAN-GP gradient penalty in "pixel" norm mode (mmgen `GradientPenaltyLoss`, `norm_mode='pixel'`).

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::layers::{channel_l2_norm, NormMode};
use crate::singan::block::DiscriminatorBlock;

/// Unweighted gradient penalty `mean over (n, i, j) of (‖∂ΣD(x̃)/∂x̃ [n, :, i, j]‖₂ − 1)²`,
/// with `x̃ = α·real + (1 − α)·fake` and one `α` per sample.
///
/// `alpha` has shape (N, 1, 1, 1). The discriminator runs in training mode, as in the reference, so its
/// batch-norm statistics come from `x̃` and its running statistics move. The result is differentiable
/// with respect to the discriminator's weights: the input gradient is an explicit backward pass made
/// of ordinary tensor ops, not candle's detached gradients.
pub fn gradient_penalty(
    discriminator: &DiscriminatorBlock,
    real: &Tensor,
    fake: &Tensor,
    alpha: &Tensor,
) -> Result<Tensor> {
    if real.dims() != fake.dims() {
        return Err(Error::invalid(format!(
            "gradient penalty needs real and fake batches of one shape, got {:?} and {:?}",
            real.dims(),
            fake.dims()
        )));
    }

    let mixed = (real.detach().broadcast_mul(alpha)? + fake.detach().broadcast_mul(&(1.0 - alpha)?)?)?;
    let (scores, trace) = discriminator.forward_traced(&mixed, NormMode::Train)?;

    // ∂(Σ D)/∂D is one everywhere.
    let ones = scores.ones_like()?;
    let input_grad = discriminator.input_grad(&trace, &ones)?;

    let norm = channel_l2_norm(&input_grad)?;
    Ok((norm - 1.0)?.sqr()?.mean_all()?)
}
