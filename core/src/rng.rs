//! Seeded random numbers that do not depend on the device.
//!
//! Every random tensor (initial weights, noise maps, penalty mixing factors) is drawn on the host from
//! one ChaCha stream and then moved to the device. A seed therefore gives the same model and the same
//! pixels on the CPU and on a GPU.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::error::Result;

/// A seeded random stream.
#[derive(Debug, Clone)]
pub struct SeededRng {
    inner: ChaCha8Rng,
}

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        SeededRng { inner: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// Derives an independent stream, e.g. one per sample of a batch.
    pub fn fork(&mut self) -> SeededRng {
        SeededRng::new(self.inner.gen())
    }

    /// Draws a tensor of independent N(mean, std²) values.
    pub fn normal(&mut self, shape: &[usize], mean: f32, std: f32, device: &Device) -> Result<Tensor> {
        let count: usize = shape.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|_| {
                let z: f32 = self.inner.sample(StandardNormal);
                mean + std * z
            })
            .collect();
        Ok(Tensor::from_vec(values, shape, device)?)
    }

    /// Draws a tensor of independent U[0, 1) values.
    pub fn uniform(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let count: usize = shape.iter().product();
        let values: Vec<f32> = (0..count).map(|_| self.inner.gen::<f32>()).collect();
        Ok(Tensor::from_vec(values, shape, device)?)
    }

    /// Draws one value uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.inner.gen()
    }

    /// Draws one integer, e.g. to seed a derived stream.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.gen()
    }
}
