//! Image-quality metrics.

pub mod swd;
