//! SinGAN and its positional-encoding variants.

pub mod config;

pub use config::{Preset, SinGanConfig, Variant};
