//! The SinGAN image pyramid.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Settings of the image pyramid (`min_size`, `max_size`, `scale_factor_init` in the reference dataset config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PyramidConfig {
    /// Short side of the coarsest stage, in pixels.
    pub min_size: usize,
    /// Long side above which the number of stages stops growing, in pixels.
    pub max_size: usize,
    /// Initial scale factor between stages (0.75 in every reference config).
    pub scale_factor_init: f64,
}

impl PyramidConfig {
    pub fn validate(&self) -> Result<()> {
        if self.min_size < 2 || self.max_size < self.min_size {
            return Err(Error::invalid(format!(
                "pyramid sizes must satisfy 2 <= min_size <= max_size, got min_size {} and max_size {}",
                self.min_size, self.max_size
            )));
        }
        if !(self.scale_factor_init > 0.0 && self.scale_factor_init < 1.0) {
            return Err(Error::invalid(format!(
                "scale_factor_init must be in (0, 1), got {}",
                self.scale_factor_init
            )));
        }
        Ok(())
    }
}
