//! Helpers shared by the integration tests: test-data paths and array comparison.
#![allow(dead_code)]

pub mod fill;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// The repository's `tests/data` folder.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data")
}

/// A reference-vector folder, e.g. `vectors("singan/csg")`.
pub fn vectors(sub: &str) -> PathBuf {
    data_dir().join("vectors").join(sub)
}

/// Every member of an `.npz` archive, on the CPU.
pub fn read_npz(path: &std::path::Path) -> HashMap<String, Tensor> {
    Tensor::read_npz(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())).into_iter().collect()
}

/// One `.npy` array, on the CPU.
pub fn read_npy(path: &std::path::Path) -> Tensor {
    Tensor::read_npy(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Largest absolute element difference; panics on a shape mismatch.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

/// Largest absolute element.
pub fn max_abs(a: &Tensor) -> f64 {
    a.to_dtype(DType::F64).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}
