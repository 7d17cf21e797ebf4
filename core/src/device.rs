//! Device selection by name: `cpu`, `cuda`, `cuda:N` or `metal`.

use candle_core::Device;

use crate::error::{Error, Result};

/// Opens the device named by `spec`.
///
/// CUDA and Metal need the matching cargo feature. Without it the error names the feature instead of
/// silently falling back to the CPU.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    if spec.eq_ignore_ascii_case("cpu") {
        return Ok(Device::Cpu);
    }

    if let Some(rest) = spec.strip_prefix("cuda") {
        let ordinal = match rest.strip_prefix(':') {
            Some(number) => number.parse::<usize>().map_err(|_| {
                Error::Device(format!("invalid CUDA device '{spec}': write cuda:N with N a device number, e.g. cuda:0"))
            })?,
            None if rest.is_empty() => 0,
            None => return Err(Error::Device(format!("invalid device '{spec}': use cpu, cuda, cuda:N or metal"))),
        };
        return open_cuda(ordinal, spec);
    }

    if spec.eq_ignore_ascii_case("metal") {
        return open_metal();
    }

    Err(Error::Device(format!("invalid device '{spec}': use cpu, cuda, cuda:N or metal")))
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize, spec: &str) -> Result<Device> {
    Device::new_cuda(ordinal)
        .map_err(|e| Error::Device(format!("cannot open CUDA device '{spec}' (no driver or no such device?): {e}")))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize, spec: &str) -> Result<Device> {
    Err(Error::Device(format!(
        "device '{spec}' needs CUDA, but this build of pegan has no CUDA support: rebuild with `--features cuda` or use --device cpu"
    )))
}

#[cfg(feature = "metal")]
fn open_metal() -> Result<Device> {
    Device::new_metal(0).map_err(|e| Error::Device(format!("cannot open the Metal device: {e}")))
}

#[cfg(not(feature = "metal"))]
fn open_metal() -> Result<Device> {
    Err(Error::Device(
        "device 'metal' needs Metal, but this build of pegan has no Metal support: rebuild with `--features metal` or use --device cpu"
            .into(),
    ))
}
