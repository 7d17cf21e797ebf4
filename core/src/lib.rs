//! pegan-core: positional encodings as a spatial inductive bias in GANs.
//!
//! This crate implements the models of *Positional Encoding as Spatial Inductive Bias in GANs*
//! (Xu, Wang, Chen, Zhou, Loy, CVPR 2021) on candle: SinGAN with interpolation padding, a Cartesian
//! spatial grid (CSG) or a sinusoidal positional encoding (SPE), trained on a single image and sampled
//! or retargeted to any size. Numerics follow MMGeneration v0.7.3, the reference implementation.
//!
//! Tensors are NCHW float32. Images inside the models are in `[-1, 1]` and in BGR channel order, as in
//! the reference; [`image`] converts at file and buffer boundaries.

pub mod alloc;
pub mod device;
pub mod encoding;
pub mod error;
pub mod image;
pub mod json;
pub mod layers;
pub mod metrics;
pub mod ops;
pub mod pickle;
pub mod progress;
pub mod pyramid;
pub mod resample;
pub mod rng;
pub mod singan;
pub mod stylegan2;

pub use error::{Error, Result};

/// Version of the library, as in Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
