//! Sinusoidal positional encoding (SPE): a fairseq-style sinusoid table looked up per column and per row.

use std::sync::{Mutex, MutexGuard};

use candle_core::{Device, Tensor};

use crate::encoding::grid_element_count;
use crate::error::{Error, Result};

/// Sinusoidal positional embedding of MMGeneration v0.7.3 (`SinusoidalPositionalEmbedding`,
/// registered as `SPE` and `SPE2d`), used as a 2-D grid of `2 × embedding_dim` channels.
///
/// Row `p` of the 1-D table is `[sin(p·f_0) … sin(p·f_{d/2−1}), cos(p·f_0) … cos(p·f_{d/2−1})]` with
/// `f_k = exp(−k · ln(10000) / (d/2 − 1))`, or `/ (d/2)` with `div_half_dim`; row `padding_idx` is zero.
/// Channels `0 … d−1` of the grid hold the embedding of the column position and channels `d … 2d−1`
/// that of the row position.
///
/// The module is stateful, as in the reference: a grid axis longer than the table allows rebuilds the
/// table with more rows, and the larger table serves every later call. The table sits behind a mutex,
/// so [`grid`](Self::grid) takes `&self` and the module can be shared between threads.
#[derive(Debug)]
pub struct SinusoidalPositionalEmbedding {
    embedding_dim: usize,
    padding_idx: usize,
    init_size: usize,
    div_half_dim: bool,
    center_shift: Option<i64>,
    /// Built on the first call, so that an invalid configuration is reported by a `Result` and not at construction.
    table: Mutex<Option<SinusoidTable>>,
}

/// The 1-D embedding table: `rows × embedding_dim` float32 values, row-major.
#[derive(Debug, Clone)]
struct SinusoidTable {
    rows: usize,
    values: Vec<f32>,
}

impl SinusoidalPositionalEmbedding {
    /// Stores the settings; the table of `init_size` rows is built on the first call.
    ///
    /// Invalid settings (an odd or too small `embedding_dim`, `padding_idx ≥ init_size`) are reported
    /// by [`validate`](Self::validate) and by every grid call.
    pub fn new(
        embedding_dim: usize,
        padding_idx: usize,
        init_size: usize,
        div_half_dim: bool,
        center_shift: Option<i64>,
    ) -> Self {
        SinusoidalPositionalEmbedding {
            embedding_dim,
            padding_idx,
            init_size,
            div_half_dim,
            center_shift,
            table: Mutex::new(None),
        }
    }

    /// Checks the settings that the table construction relies on.
    pub fn validate(&self) -> Result<()> {
        // A table rebuilt for a long axis always divides by d/2 − 1 (see `table_for`), so d = 2 would divide by zero.
        if self.embedding_dim < 4 || self.embedding_dim % 2 != 0 {
            return Err(Error::invalid(format!(
                "SPE embedding_dim must be even and at least 4, got {}",
                self.embedding_dim
            )));
        }
        if self.padding_idx >= self.init_size {
            return Err(Error::invalid(format!(
                "SPE padding_idx {} must be smaller than init_size {} (the table row it zeroes must exist)",
                self.padding_idx, self.init_size
            )));
        }
        Ok(())
    }

    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    /// Number of grid channels: `2 × embedding_dim`.
    pub fn channels(&self) -> usize {
        2 * self.embedding_dim
    }

    /// Returns the configured centre shift; `None` means the axis values are `1 … n`.
    pub fn center_shift(&self) -> Option<i64> {
        self.center_shift
    }

    /// Number of rows of the current table: `init_size` until a long axis has grown it.
    pub fn table_rows(&self) -> usize {
        self.lock().as_ref().map_or(self.init_size, |table| table.rows)
    }

    /// Builds the grid `(batch, 2 × embedding_dim, height, width)`, float32, with the configured centre shift.
    pub fn grid(&self, batch: usize, height: usize, width: usize, device: &Device) -> Result<Tensor> {
        self.grid_with_center_shift(batch, height, width, None, device)
    }

    /// Builds the grid with `center_shift` replacing the configured shift for this call.
    ///
    /// As in the reference forward, `None` falls back to the configured shift, so a call cannot switch
    /// a configured shift off.
    pub fn grid_with_center_shift(
        &self,
        batch: usize,
        height: usize,
        width: usize,
        center_shift: Option<i64>,
        device: &Device,
    ) -> Result<Tensor> {
        let channels = self.channels();
        grid_element_count(batch, channels, height, width)?;
        let values = self.grid_values(height, width, center_shift)?;
        let batched = values.repeat(batch);
        Ok(Tensor::from_vec(batched, (batch, channels, height, width), device)?)
    }

    /// Computes one grid `(2 × embedding_dim, height, width)` as row-major float32 values.
    ///
    /// `center_shift` replaces the configured shift when it is `Some`. The table may grow (see the type docs).
    pub fn grid_values(&self, height: usize, width: usize, center_shift: Option<i64>) -> Result<Vec<f32>> {
        self.validate()?;
        let dim = self.embedding_dim;
        let count = grid_element_count(1, 2 * dim, height, width)?;
        let shift = center_shift.or(self.center_shift);

        // One lock for both axes: the reference looks up x first, then y, and a rebuild triggered by
        // the x axis already serves the y axis. Holding the lock keeps that order atomic across threads.
        let mut guard = self.lock();
        let x_rows = self.axis_embeddings(&mut guard, width, shift)?;
        let y_rows = self.axis_embeddings(&mut guard, height, shift)?;
        drop(guard);

        let mut values = Vec::with_capacity(count);
        for channel in 0..dim {
            for _ in 0..height {
                values.extend((0..width).map(|j| x_rows[j * dim + channel]));
            }
        }
        for channel in 0..dim {
            for i in 0..height {
                let value = y_rows[i * dim + channel];
                values.extend(std::iter::repeat(value).take(width));
            }
        }
        Ok(values)
    }

    /// Looks up the embeddings of an axis of `len` samples: `len × embedding_dim` values, row-major.
    fn axis_embeddings(&self, table: &mut Option<SinusoidTable>, len: usize, shift: Option<i64>) -> Result<Vec<f32>> {
        let table = self.table_for(table, len)?;
        let dim = self.embedding_dim;
        let mut rows = Vec::with_capacity(len * dim);
        for position in axis_positions(len, shift, self.padding_idx) {
            rows.extend_from_slice(&table.values[position * dim..(position + 1) * dim]);
        }
        Ok(rows)
    }

    /// Returns a table with enough rows for an axis of `len` samples, building or growing it first.
    ///
    /// The largest position is `padding_idx + len`, so the reference rebuilds the table with exactly
    /// `padding_idx + 1 + len` rows when the current one is shorter. That rebuild calls the table
    /// constructor without `div_half_dim`, so it always divides by d/2 − 1; this port keeps the quirk,
    /// because with `div_half_dim = true` it changes the frequencies of every later grid.
    fn table_for<'t>(&self, table: &'t mut Option<SinusoidTable>, len: usize) -> Result<&'t SinusoidTable> {
        let needed_rows = self
            .padding_idx
            .checked_add(1)
            .and_then(|rows| rows.checked_add(len))
            .ok_or_else(|| Error::invalid(format!("SPE axis of {len} samples is too long")))?;
        let current = match table.take() {
            Some(current) => current,
            None => SinusoidTable::build(self.init_size, self.embedding_dim, self.padding_idx, self.div_half_dim)?,
        };
        let table = table.insert(if needed_rows > current.rows {
            SinusoidTable::build(needed_rows, self.embedding_dim, self.padding_idx, false)?
        } else {
            current
        });
        Ok(table)
    }

    fn lock(&self) -> MutexGuard<'_, Option<SinusoidTable>> {
        // A panic while the lock is held cannot leave a half-written table, because a table is only
        // ever replaced as a whole, so a poisoned lock still guards a valid table.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Clone for SinusoidalPositionalEmbedding {
    /// Copies the settings and the current table, including any growth.
    fn clone(&self) -> Self {
        let table = self.lock().clone();
        SinusoidalPositionalEmbedding {
            embedding_dim: self.embedding_dim,
            padding_idx: self.padding_idx,
            init_size: self.init_size,
            div_half_dim: self.div_half_dim,
            center_shift: self.center_shift,
            table: Mutex::new(table),
        }
    }
}

impl SinusoidTable {
    /// Builds the reference table (`get_embedding`) in float32, as PyTorch computes it.
    ///
    /// The frequency step `ln(10000) / divisor` is a float64 scalar, which PyTorch rounds to float32
    /// before it multiplies the float32 `arange`. Every later product, `exp`, `sin` and `cos` is float32 too.
    fn build(rows: usize, embedding_dim: usize, padding_idx: usize, div_half_dim: bool) -> Result<Self> {
        let half = embedding_dim / 2;
        let divisor = if div_half_dim { half } else { half - 1 };
        let step = -(10000f64.ln() / divisor as f64) as f32;
        let frequencies: Vec<f32> = (0..half).map(|k| (k as f32 * step).exp()).collect();

        let count = rows
            .checked_mul(embedding_dim)
            .ok_or_else(|| Error::invalid(format!("SPE table of {rows} rows is too large")))?;
        let mut values = Vec::with_capacity(count);
        for position in 0..rows {
            if position == padding_idx {
                values.extend(std::iter::repeat(0.0).take(embedding_dim));
                continue;
            }
            let p = position as f32;
            values.extend(frequencies.iter().map(|f| (p * f).sin()));
            values.extend(frequencies.iter().map(|f| (p * f).cos()));
        }
        Ok(SinusoidTable { rows, values })
    }
}

/// Table rows of an axis of `len` samples (the reference `make_positions` on the shifted axis values).
///
/// The axis values are `r_j = j + 1 + shift` with `shift = center_shift − c`, where `c = len/2` for an
/// even and `(len + 1)/2` for an odd length, and `shift = 0` without a centre shift. The position maker
/// ignores the values except for a comparison with `padding_idx`: an entry equal to it maps to row
/// `padding_idx` (the zero row), and every other entry to `padding_idx + (number of non-padding
/// entries up to and including it)`. So the rows are `padding_idx + 1 … padding_idx + len` unless
/// some `r_j` hits `padding_idx`, which with a shift of 200 needs an axis of about 400 samples.
fn axis_positions(len: usize, center_shift: Option<i64>, padding_idx: usize) -> Vec<usize> {
    // Every sum of a usize and an i64 fits in an i128, so no user value can overflow here.
    let shift = center_shift.map_or(0i128, |center| {
        let center_index = if len % 2 == 0 { len / 2 } else { len / 2 + 1 };
        center as i128 - center_index as i128
    });
    let mut counted = 0usize;
    (0..len)
        .map(|j| {
            let value = j as i128 + 1 + shift;
            if value == padding_idx as i128 {
                padding_idx
            } else {
                counted += 1;
                padding_idx + counted
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::axis_positions;

    #[test]
    fn positions_without_shift_count_from_one() {
        assert_eq!(axis_positions(4, None, 0), vec![1, 2, 3, 4]);
    }

    #[test]
    fn positions_skip_value_hitting_padding() {
        // center 3, w = 33 (odd): c = 17, shift = −14, r_j = j − 13, so column 13 hits 0.
        let positions = axis_positions(33, Some(3), 0);
        assert_eq!(positions[12], 13);
        assert_eq!(positions[13], 0);
        assert_eq!(positions[14], 14);
        assert_eq!(positions[32], 32);
    }

    #[test]
    fn positions_offset_by_padding_idx() {
        // With padding_idx 2 and no shift, r_j = j + 1 hits 2 at j = 1.
        assert_eq!(axis_positions(4, None, 2), vec![3, 2, 4, 5]);
    }
}
