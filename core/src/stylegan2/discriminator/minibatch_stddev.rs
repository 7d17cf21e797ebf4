//! The minibatch standard deviation layer of the StyleGAN2 discriminator.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Epsilon added to the variance inside the square root of the minibatch stddev (`eps` of `ModMBStddevLayer`).
pub const MBSTD_EPS: f64 = 1e-8;

/// The minibatch standard deviation layer (`ModMBStddevLayer`), without parameters.
///
/// With `G = min(N, group_size)` and `M = N/G`, sample `n = g·M + m` (a strided grouping) belongs to group
/// `m`. Per group and channel group, the layer takes the biased variance over the G members of every
/// feature, adds [`MBSTD_EPS`], takes the square root and averages over the group's channels and positions. Sample
/// `n` receives that statistic as a constant map, appended as the last channel(s). Every output therefore
/// depends on all G samples of its group.
#[derive(Debug, Clone)]
pub struct MinibatchStddev {
    group_size: usize,
    channel_groups: usize,
    span: tracing::Span,
}

/// Activations of a [`MinibatchStddev`] forward pass, kept for its `input_grad`.
#[derive(Debug, Clone)]
pub struct MinibatchStddevTrace {
    /// Members per group, `G = min(N, group_size)`.
    group_len: usize,
    /// `∂σ/∂x` per input element, shape (G, M, channel_groups, C/channel_groups, H, W). It stays attached to
    /// the graph, so penalties on the input gradient see the second-order path through the variance.
    sigma_grad: Tensor,
}

impl MinibatchStddev {
    /// Creates the layer. Both arguments must be at least 1.
    pub fn new(group_size: usize, channel_groups: usize) -> Result<Self> {
        if group_size == 0 || channel_groups == 0 {
            return Err(Error::invalid(format!(
                "minibatch stddev needs a group size and channel groups of at least 1, got {group_size} and \
                 {channel_groups}"
            )));
        }
        let span = tracing::trace_span!("minibatch_stddev", group_size, channel_groups);
        Ok(MinibatchStddev { group_size, channel_groups, span })
    }

    /// Checks that a batch of `n` samples can be grouped: `n ≤ group_size` or a multiple of it.
    pub fn check_batch(&self, n: usize) -> Result<()> {
        if n == 0 || (n > self.group_size && !n.is_multiple_of(self.group_size)) {
            return Err(Error::invalid(format!(
                "minibatch stddev cannot group a batch of {n}: use a batch of 1 to {gs} or a multiple of {gs}",
                gs = self.group_size
            )));
        }
        Ok(())
    }

    /// Appends the stddev maps: (N, C, H, W) → (N, C + channel_groups, H, W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_traced(x)?.0)
    }

    /// Appends the stddev maps and also returns the trace that [`MinibatchStddev::input_grad`] needs.
    pub fn forward_traced(&self, x: &Tensor) -> Result<(Tensor, MinibatchStddevTrace)> {
        let _enter = self.span.enter();
        let (n, c, h, w) = x.dims4()?;
        self.check_batch(n)?;
        if !c.is_multiple_of(self.channel_groups) {
            return Err(Error::invalid(format!(
                "minibatch stddev with {} channel groups cannot split {c} channels: use a number of channel groups \
                 that divides {c}",
                self.channel_groups
            )));
        }

        let group_len = n.min(self.group_size);
        let num_groups = n / group_len;
        let cg = self.channel_groups;
        let group_channels = c / cg;

        let y = x.reshape((group_len, num_groups, cg, group_channels, h, w))?;
        let centered = y.broadcast_sub(&y.mean_keepdim(0)?)?;
        let stddev = (centered.sqr()?.mean_keepdim(0)? + MBSTD_EPS)?.sqrt()?;
        let sigma = stddev.reshape((num_groups, cg, group_channels * h * w))?.mean(2)?;

        // Sample g·M + m gets σ[m]: broadcasting over a leading member axis gives exactly that order.
        let maps = sigma.reshape((1, num_groups, cg, 1, 1))?.broadcast_as((group_len, num_groups, cg, h, w))?;
        let out = Tensor::cat(&[x, &maps.reshape((n, cg, h, w))?], 1)?;

        // ∂σ/∂y = (y − mean)/(G·std) · 1/(C/cg·H·W). The mean's own derivative drops out, because the
        // centred values sum to zero over the group.
        let scale = 1.0 / (group_len * group_channels * h * w) as f64;
        let sigma_grad = (centered.broadcast_div(&stddev)? * scale)?;
        Ok((out, MinibatchStddevTrace { group_len, sigma_grad }))
    }

    /// Computes `∂(Σ forward(x) · g)/∂x` for the traced input, which mixes the samples of each group.
    pub fn input_grad(&self, trace: &MinibatchStddevTrace, g: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (n, c_out, h, w) = g.dims4()?;
        let cg = self.channel_groups;
        let c = c_out - cg;
        let group_len = trace.group_len;
        let num_groups = n / group_len;

        // Each σ[m] feeds H·W positions of G samples, so its gradient is the sum over those.
        let g_sigma = g.narrow(1, c, cg)?.reshape((group_len, num_groups, cg, h * w))?.sum(3)?.sum(0)?;
        let g_sigma = g_sigma.reshape((1, num_groups, cg, 1, 1, 1))?;
        let through_sigma = trace.sigma_grad.broadcast_mul(&g_sigma)?.reshape((n, c, h, w))?;

        Ok((g.narrow(1, 0, c)? + through_sigma)?)
    }
}
