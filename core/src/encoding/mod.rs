//! Explicit spatial encodings that replace the positional signal of zero padding.

pub mod csg;
pub mod spe;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use csg::CartesianGrid;
pub use spe::SinusoidalPositionalEmbedding;

use crate::error::{Error, Result};

/// A positional encoding as written in a config file (`{"type": "CSG"}` or `{"type": "SPE", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum EncodingConfig {
    /// Cartesian spatial grid: 2 channels, x then y, each spanning `[-1, 1]`.
    #[serde(rename = "CSG")]
    Csg,
    /// Sinusoidal positional encoding: `2 × embedding_dim` channels.
    #[serde(rename = "SPE")]
    Spe {
        embedding_dim: usize,
        padding_idx: usize,
        init_size: usize,
        div_half_dim: bool,
        center_shift: Option<i64>,
    },
}

impl EncodingConfig {
    /// Number of channels of the encoding grid.
    pub fn channels(&self) -> usize {
        match self {
            EncodingConfig::Csg => 2,
            EncodingConfig::Spe { embedding_dim, .. } => 2 * embedding_dim,
        }
    }
}

impl EncodingConfig {
    /// Checks the settings that building the encoding relies on.
    pub fn validate(&self) -> Result<()> {
        PositionalEncoding::new(self).validate()
    }
}

/// A positional encoding ready to produce grids, built from an [`EncodingConfig`].
#[derive(Debug, Clone)]
pub enum PositionalEncoding {
    Csg(CartesianGrid),
    Spe(SinusoidalPositionalEmbedding),
}

impl PositionalEncoding {
    /// Builds the encoding; invalid SPE settings are reported by [`validate`](Self::validate) and by [`grid`](Self::grid).
    pub fn new(config: &EncodingConfig) -> Self {
        match config {
            EncodingConfig::Csg => PositionalEncoding::Csg(CartesianGrid::new()),
            EncodingConfig::Spe { embedding_dim, padding_idx, init_size, div_half_dim, center_shift } => {
                PositionalEncoding::Spe(SinusoidalPositionalEmbedding::new(
                    *embedding_dim,
                    *padding_idx,
                    *init_size,
                    *div_half_dim,
                    *center_shift,
                ))
            }
        }
    }

    /// Checks the settings of the encoding (the CSG has none).
    pub fn validate(&self) -> Result<()> {
        match self {
            PositionalEncoding::Csg(_) => Ok(()),
            PositionalEncoding::Spe(spe) => spe.validate(),
        }
    }

    /// Number of channels of the grid.
    pub fn channels(&self) -> usize {
        match self {
            PositionalEncoding::Csg(csg) => csg.channels(),
            PositionalEncoding::Spe(spe) => spe.channels(),
        }
    }

    /// Builds the grid `(batch, channels, height, width)`, float32; every batch element contains the same grid.
    ///
    /// An SPE may grow its table here, which changes later grids only when `div_half_dim` is set.
    pub fn grid(&self, batch: usize, height: usize, width: usize, device: &Device) -> Result<Tensor> {
        match self {
            PositionalEncoding::Csg(csg) => csg.grid(batch, height, width, device),
            PositionalEncoding::Spe(spe) => spe.grid(batch, height, width, device),
        }
    }
}

/// Number of elements of a `(batch, channels, height, width)` grid.
///
/// Rejects empty grids, which are a caller's mistake, and sizes whose element count overflows `usize`.
pub(crate) fn grid_element_count(batch: usize, channels: usize, height: usize, width: usize) -> Result<usize> {
    if batch == 0 || height == 0 || width == 0 {
        return Err(Error::invalid(format!(
            "positional encoding grid of batch {batch}, height {height} and width {width} is empty: every size must be at least 1"
        )));
    }
    [channels, height, width]
        .iter()
        .try_fold(batch, |count, &size| count.checked_mul(size))
        .ok_or_else(|| {
            Error::invalid(format!(
                "positional encoding grid ({batch}, {channels}, {height}, {width}) has too many elements"
            ))
        })
}
