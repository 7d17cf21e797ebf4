//! MS-PIE scale sampling: the `chosen_scale` of each training iteration (`MSPIEStyleGAN2.train_step`).
//!
//! The reference configs list `multi_input_scales = [0, 2, 4]` with `multi_scale_probability =
//! [0.5, 0.25, 0.25]`, but `MSPIEStyleGAN2.train_step` passes the probabilities to `np.random.choice` as its
//! `replace` argument, so every scale is drawn with probability 1/3. The released models were trained that
//! way. [`ScaleSampling::Uniform`] reproduces it and is the default; [`ScaleSampling::Weighted`] applies the
//! probabilities the configs state.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::SeededRng;

/// Use of the configured probabilities by [`MsPieScaleSampler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScaleSampling {
    /// Every scale equally likely, as the reference code behaves (its probabilities are ignored).
    #[default]
    Uniform,
    /// Scales drawn with the configured probabilities, as the reference configs intend.
    Weighted,
}

/// Draws the head-grid enlargement `cs` of each training iteration; the training side is `(4 + cs)·out/4`.
#[derive(Debug, Clone, PartialEq)]
pub struct MsPieScaleSampler {
    scales: Vec<usize>,
    /// Cumulative probabilities for [`ScaleSampling::Weighted`]; the last entry is 1.
    cumulative: Vec<f64>,
    sampling: ScaleSampling,
}

impl MsPieScaleSampler {
    /// `scales` are the chosen scales (for example `[0, 2, 4]`); `probabilities`, if given, has one
    /// non-negative entry per scale and a positive sum (it is normalised).
    pub fn new(scales: &[usize], probabilities: Option<&[f64]>, sampling: ScaleSampling) -> Result<Self> {
        if scales.is_empty() {
            return Err(Error::invalid("multi_input_scales is empty: list at least one chosen scale, e.g. [0]"));
        }
        let probabilities: Vec<f64> = match probabilities {
            Some(p) => {
                if p.len() != scales.len() {
                    return Err(Error::invalid(format!(
                        "multi_scale_probability has {} entries for the {} scales {scales:?} of multi_input_scales: \
                         give one per scale, or null",
                        p.len(),
                        scales.len()
                    )));
                }
                if let Some(bad) = p.iter().find(|v| !v.is_finite() || **v < 0.0) {
                    return Err(Error::invalid(format!("scale probability {bad} must be a finite value ≥ 0")));
                }
                p.to_vec()
            }
            None => vec![1.0; scales.len()],
        };
        let total: f64 = probabilities.iter().sum();
        if total <= 0.0 {
            return Err(Error::invalid("scale probabilities sum to 0: give at least one positive probability"));
        }
        let mut running = 0.0;
        let mut cumulative: Vec<f64> = probabilities
            .iter()
            .map(|p| {
                running += p / total;
                running
            })
            .collect();
        *cumulative.last_mut().expect("non-empty") = 1.0;
        Ok(MsPieScaleSampler { scales: scales.to_vec(), cumulative, sampling })
    }

    pub fn scales(&self) -> &[usize] {
        &self.scales
    }

    pub fn sampling(&self) -> ScaleSampling {
        self.sampling
    }

    /// Probability of drawing each scale, in the order of [`MsPieScaleSampler::scales`].
    pub fn probabilities(&self) -> Vec<f64> {
        match self.sampling {
            ScaleSampling::Uniform => vec![1.0 / self.scales.len() as f64; self.scales.len()],
            ScaleSampling::Weighted => {
                let mut previous = 0.0;
                self.cumulative
                    .iter()
                    .map(|&c| {
                        let p = c - previous;
                        previous = c;
                        p
                    })
                    .collect()
            }
        }
    }

    /// Draws one scale from one uniform number of `rng`.
    pub fn draw(&self, rng: &mut SeededRng) -> usize {
        let u = rng.next_f64();
        let index = match self.sampling {
            ScaleSampling::Uniform => ((u * self.scales.len() as f64) as usize).min(self.scales.len() - 1),
            ScaleSampling::Weighted => self.cumulative.iter().position(|&c| u < c).unwrap_or(self.scales.len() - 1),
        };
        self.scales[index]
    }
}
