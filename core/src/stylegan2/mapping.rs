//! The StyleGAN2 mapping network `z → w`, truncation and the W+ latent with style mixing.
//!
//! The mapping is MMGeneration's `style_mapping`: a pixel norm, then `num_mlps` equalized linear layers
//! with learning-rate multiplier `lr_mlp` (0.01), each followed by the fused bias leaky ReLU. The synthesis
//! network takes one style row per layer, the W+ latent of shape `(N, L, C)`. Mixing two styles fills the
//! first rows from one and the rest from the other.

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};
use crate::rng::SeededRng;
use crate::stylegan2::equalized::EqualizedLinear;
use crate::stylegan2::params::ParamPath;

/// Epsilon of the pixel norm, added to the root-mean-square (not inside a square root).
pub const PIXEL_NORM_EPSILON: f64 = 1e-6;

/// Number of batches that the mean latent averages, as in the reference's `get_mean_latent` (4 × 1024 samples).
pub const MEAN_LATENT_BATCHES: usize = 4;

/// Samples per batch of the mean latent.
pub const MEAN_LATENT_BATCH_SIZE: usize = 1024;

/// Normalises every row of `z` (N, C) by its root-mean-square, as MMGeneration's `PixelNorm` does:
/// `z / (‖z‖₂/√C + 1e-6)`.
///
/// The official StyleGAN2 uses `z · rsqrt(mean(z²) + 1e-8)` instead, which changes the result by about
/// 1e-6 relative for rows of unit root-mean-square.
pub fn pixel_norm(z: &Tensor) -> Result<Tensor> {
    let rms = z.sqr()?.mean_keepdim(D::Minus1)?.sqrt()?;
    Ok(z.broadcast_div(&(rms + PIXEL_NORM_EPSILON)?)?)
}

/// Mapping network `z → w` (`style_mapping` of the reference): pixel norm, then `num_mlps` equalized linear
/// layers with the fused bias leaky ReLU.
///
/// Keys: `style_mapping.{1..=num_mlps}.linear.weight_orig` (C, C) and `style_mapping.{j}.bias` (C). Index 0
/// is the parameter-free pixel norm.
#[derive(Debug, Clone)]
pub struct MappingNetwork {
    layers: Vec<EqualizedLinear>,
    style_channels: usize,
    device: Device,
    dtype: DType,
}

impl MappingNetwork {
    /// Builds the layers under `path`, the generator root, because the keys start with `style_mapping`.
    pub fn new(path: &ParamPath, style_channels: usize, num_mlps: usize, lr_mlp: f64) -> Result<Self> {
        let mapping = path.pp("style_mapping");
        let layers = (1..=num_mlps)
            .map(|j| EqualizedLinear::new(&mapping.pp(j), style_channels, style_channels, lr_mlp, 0.0, true))
            .collect::<Result<Vec<_>>>()?;
        Ok(MappingNetwork { layers, style_channels, device: path.device().clone(), dtype: path.dtype() })
    }

    pub fn style_channels(&self) -> usize {
        self.style_channels
    }

    /// Maps `z` (N, C) to `w` (N, C).
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("mapping").entered();
        let (_, channels) = z.dims2().map_err(|_| {
            Error::invalid(format!("mapping input z must have shape (N, {}), got {:?}", self.style_channels, z.dims()))
        })?;
        if channels != self.style_channels || z.dim(0)? == 0 {
            return Err(Error::invalid(format!(
                "mapping input z must have shape (N, {}) with N ≥ 1, got {:?}",
                self.style_channels,
                z.dims()
            )));
        }

        let mut h = pixel_norm(z)?;
        for layer in &self.layers {
            h = layer.forward(&h)?;
        }
        Ok(h)
    }

    /// Computes the mean latent `w̄`, (1, C), as the reference does: the average of the batch means of `w`
    /// over 4 batches of 1024 standard-normal `z`, here drawn from `rng`.
    ///
    /// The reference draws from PyTorch's generator, so its `w̄` cannot be reproduced: pass the stored one
    /// where parity matters.
    pub fn mean_latent(&self, rng: &mut SeededRng) -> Result<Tensor> {
        let mut sum = Tensor::zeros((1, self.style_channels), self.dtype, &self.device)?;
        for _ in 0..MEAN_LATENT_BATCHES {
            let z = rng
                .normal(&[MEAN_LATENT_BATCH_SIZE, self.style_channels], 0.0, 1.0, &self.device)?
                .to_dtype(self.dtype)?;
            sum = (sum + self.forward(&z)?.mean_keepdim(0)?)?;
        }
        Ok((sum / MEAN_LATENT_BATCHES as f64)?)
    }
}

/// Truncates styles `w` (N, C) towards the mean latent `w̄` (1, C) or (C): `w' = w̄ + ψ·(w − w̄)`.
pub fn truncate(w: &Tensor, mean_latent: &Tensor, psi: f64) -> Result<Tensor> {
    if !psi.is_finite() {
        return Err(Error::invalid(format!("truncation ψ must be finite, got {psi}")));
    }

    let channels = w.dim(D::Minus1)?;
    if mean_latent.elem_count() != channels {
        return Err(Error::invalid(format!(
            "mean latent of shape {:?} does not match styles of shape {:?}: it needs {channels} values",
            mean_latent.dims(),
            w.dims()
        )));
    }

    let mean = mean_latent.reshape((1, channels))?.to_dtype(w.dtype())?;
    Ok(w.broadcast_sub(&mean)?.affine(psi, 0.0)?.broadcast_add(&mean)?)
}

/// Builds the W+ latent (N, L, C) of one style per sample by repeating `w` (N, C) on all `num_latents` rows.
pub fn broadcast_style(w: &Tensor, num_latents: usize) -> Result<Tensor> {
    let (n, c) = w.dims2().map_err(|_| Error::invalid(format!("style must have shape (N, C), got {:?}", w.dims())))?;
    Ok(w.unsqueeze(1)?.broadcast_as((n, num_latents, c))?.contiguous()?)
}

/// Builds the W+ latent of two mixed styles: rows `0 … inject_index − 1` from `w1` and rows
/// `inject_index … L − 1` from `w2`.
///
/// `inject_index` may be 0 or `L` (then one style fills every row), as in the reference.
pub fn mix_styles(w1: &Tensor, w2: &Tensor, num_latents: usize, inject_index: usize) -> Result<Tensor> {
    if w1.dims() != w2.dims() {
        return Err(Error::invalid(format!(
            "mixed styles must have one shape, got {:?} and {:?}",
            w1.dims(),
            w2.dims()
        )));
    }
    if inject_index > num_latents {
        return Err(Error::invalid(format!(
            "inject_index {inject_index} is out of range: the latent has {num_latents} rows, use 0..={num_latents}"
        )));
    }

    let first = broadcast_style(w1, num_latents)?.narrow(1, 0, inject_index)?;
    let second = broadcast_style(w2, num_latents)?.narrow(1, inject_index, num_latents - inject_index)?;
    Ok(Tensor::cat(&[first, second], 1)?)
}

/// Draws `true` with probability `p` from `rng`.
pub(crate) fn bernoulli(rng: &mut SeededRng, p: f64) -> bool {
    // The top 53 bits give a uniform double in [0, 1).
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    u < p
}

/// Draws an integer uniformly from `low ..= high` (`low ≤ high`).
pub(crate) fn uniform_index(rng: &mut SeededRng, low: usize, high: usize) -> usize {
    let span = (high - low + 1) as u64;
    // The modulo bias is below span / 2^64, far under any measurable effect.
    low + (rng.next_u64() % span) as usize
}
