//! SinGAN and its positional-encoding variants.

pub mod block;
pub mod config;
pub mod generator;
pub mod import;
pub mod mmgen;
pub mod model;
pub mod penalty;
pub mod sample;
pub mod train;

pub use config::{Preset, SinGanConfig, Variant};
pub use model::{ModelMetadata, SinGanModel};
pub use sample::{NoiseMode, OutputSize, SampleOptions};
pub use train::{SinGanTrainer, TrainOutcome};
