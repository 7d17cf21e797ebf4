//! StyleGAN2 with MS-PIE (multi-scale training with positional encoding), as in MMGeneration v0.7.3.
//!
//! One generator samples at several resolutions: the side of its head grid grows by `chosen_scale`, and
//! every block doubles it, so a model trained at 256–512 samples at 896 or at non-square sizes. The head
//! is a learned constant, a Cartesian spatial grid (CSG) or a sinusoidal positional encoding (SPE).

pub mod activation;
pub mod config;
pub mod dataset;
pub mod discriminator;
pub mod equalized;
pub mod fir;
pub mod generator;
pub mod head;
pub mod mapping;
pub mod mmgen;
pub mod model;
pub mod modulated;
pub mod optim;
pub mod params;
pub mod preset;
pub mod r1;
pub mod sample;
pub mod scale;
pub mod train;
