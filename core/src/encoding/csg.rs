//! Cartesian spatial grid (CSG): the x and y coordinate of every pixel, each spanning `[-1, 1]`.

use candle_core::{Device, Tensor};

use crate::encoding::grid_element_count;
use crate::error::Result;

/// Cartesian spatial grid of MMGeneration v0.7.3 (`CatersianGrid`, registered as `CSG` and `CSG2d`).
///
/// Channel 0 is x, which varies along the width, and channel 1 is y, which varies along the height.
/// The corners are exactly −1 and 1 (the align-corners convention of `grid_sample`), and an axis of
/// length 1 is −1. The grid has no parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CartesianGrid;

impl CartesianGrid {
    /// Number of channels of the grid: x and y.
    pub const CHANNELS: usize = 2;

    pub fn new() -> Self {
        CartesianGrid
    }

    pub fn channels(&self) -> usize {
        Self::CHANNELS
    }

    /// Builds the grid as a float32 tensor `(batch, 2, height, width)`; every batch element contains the same grid.
    pub fn grid(&self, batch: usize, height: usize, width: usize, device: &Device) -> Result<Tensor> {
        let values = self.grid_values(height, width)?;
        // The element count of the whole batch is checked before the copies are made.
        grid_element_count(batch, Self::CHANNELS, height, width)?;
        let batched = values.repeat(batch);
        Ok(Tensor::from_vec(batched, (batch, Self::CHANNELS, height, width), device)?)
    }

    /// Computes one grid `(2, height, width)` as row-major float32 values.
    pub fn grid_values(&self, height: usize, width: usize) -> Result<Vec<f32>> {
        let count = grid_element_count(1, Self::CHANNELS, height, width)?;
        let mut values = Vec::with_capacity(count);
        for _ in 0..height {
            values.extend((0..width).map(|j| axis_coordinate(j, width)));
        }
        for i in 0..height {
            let y = axis_coordinate(i, height);
            values.extend(std::iter::repeat(y).take(width));
        }
        Ok(values)
    }
}

/// Coordinate of sample `index` on an axis of `len` samples: `2 index / max(len − 1, 1) − 1`.
///
/// The reference evaluates `2 * arange(len) / max(len - 1., 1.) - 1.` on a float32 tensor, so each step
/// rounds to float32: the doubling (exact below 2^24), the division, then the subtraction.
/// Following that order makes the grid bit-exact; a float64 evaluation differs by up to 1 ulp.
fn axis_coordinate(index: usize, len: usize) -> f32 {
    let doubled = (2 * index) as f32;
    let divisor = len.saturating_sub(1).max(1) as f32;
    doubled / divisor - 1.0
}
