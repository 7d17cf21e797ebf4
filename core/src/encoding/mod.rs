//! Explicit spatial encodings that replace the positional signal of zero padding.

use serde::{Deserialize, Serialize};

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
