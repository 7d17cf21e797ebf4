//! Device selection by name: `cpu`, `cuda`, `cuda:N` or `metal`, or a comma-separated list of them
//! tried in order, such as `cuda:0,cpu`.
//!
//! A single name never falls back: when the device cannot be opened, the error states the cause (a build
//! without CUDA or Metal support, no NVIDIA driver, a driver without a GPU or too old for this build,
//! a device number that does not exist) and what to do. A list is how a caller asks for a fallback;
//! each device that fails before the one that opens is logged as a warning.

use candle_core::Device;

use crate::error::{Error, Result};

/// One device of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    Cpu,
    /// A CUDA GPU by ordinal, as `nvidia-smi` numbers them unless `CUDA_VISIBLE_DEVICES` reorders them.
    Cuda(usize),
    Metal,
}

impl std::fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceRequest::Cpu => write!(f, "cpu"),
            DeviceRequest::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
            DeviceRequest::Metal => write!(f, "metal"),
        }
    }
}

impl DeviceRequest {
    /// Parses one device name: `cpu`, `cuda` (the same as `cuda:0`), `cuda:N` or `metal`, in any case.
    pub fn parse(name: &str) -> Result<Self> {
        let trimmed = name.trim();
        let lower = trimmed.to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => return Ok(DeviceRequest::Cpu),
            "cuda" => return Ok(DeviceRequest::Cuda(0)),
            "metal" => return Ok(DeviceRequest::Metal),
            _ => {}
        }
        if let Some(number) = lower.strip_prefix("cuda:") {
            return number.parse::<usize>().map(DeviceRequest::Cuda).map_err(|_| {
                Error::Device(format!(
                    "invalid CUDA device '{trimmed}': write cuda:N with N a device number counted from 0, e.g. cuda:0"
                ))
            });
        }
        Err(Error::Device(format!(
            "invalid device '{trimmed}': use cpu, cuda, cuda:N or metal, or a list such as cuda:0,cpu to fall back"
        )))
    }

    /// Opens the device, or explains why it cannot be opened.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceRequest::Cpu => Ok(Device::Cpu),
            DeviceRequest::Cuda(ordinal) => open_cuda(ordinal),
            DeviceRequest::Metal => open_metal(),
        }
    }
}

/// Parses a device request: one name or a comma-separated list of names to try in order.
///
/// Every entry is checked before any device is opened, so a typo in a fallback entry is an error
/// even when the first device would open.
pub fn parse_device_list(spec: &str) -> Result<Vec<DeviceRequest>> {
    if spec.trim().is_empty() {
        return Err(Error::Device(
            "no device given: use cpu, cuda, cuda:N or metal, or a list such as cuda:0,cpu to fall back".into(),
        ));
    }
    spec.split(',').map(DeviceRequest::parse).collect()
}

/// Opens the device named by `spec`, a name or a comma-separated list tried in order.
///
/// CUDA and Metal need the matching cargo feature. A single name fails with an error that names the
/// cause and the fix instead of silently using the CPU. With a list such as `cuda:0,cpu` the first
/// device that opens is returned, and a warning is logged for each one that failed before it.
pub fn parse_device(spec: &str) -> Result<Device> {
    let requests = parse_device_list(spec)?;
    let mut failures: Vec<(DeviceRequest, Error)> = Vec::new();
    for &request in &requests {
        match request.open() {
            Ok(device) => {
                for (failed, error) in &failures {
                    tracing::warn!(requested = %failed, using = %request, %error, "device unavailable; using the next one in the list");
                }
                return Ok(device);
            }
            Err(error) => failures.push((request, error)),
        }
    }
    if failures.len() == 1 {
        return Err(failures.pop().expect("one failure").1);
    }
    let reasons: Vec<String> = failures.iter().map(|(request, error)| format!("{request}: {error}")).collect();
    Err(Error::Device(format!("none of the devices in '{}' could be opened. {}", spec.trim(), reasons.join(" | "))))
}

/// Returns the number of CUDA GPUs that the driver reports, or the same error as opening one would.
pub fn cuda_device_count() -> Result<usize> {
    cuda::device_count()
}

/// Formats the error for a request of device `name` in a build without CUDA support.
#[cfg(not(feature = "cuda"))]
fn cuda_not_built_message(name: &str) -> String {
    format!(
        "device '{name}' needs CUDA, but this build of pegan has no CUDA support: rebuild with `--features cuda` \
         (scripts/build-cuda.sh does it), or use the device cpu ('{name},cpu' falls back to the CPU)"
    )
}

/// Formats the error for a request of device `name` when the NVIDIA driver library cannot be used;
/// `detail` is the cause.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn no_driver_message(name: &str, detail: &str) -> String {
    format!(
        "cannot open CUDA device '{name}': no NVIDIA driver found ({detail}): install the NVIDIA driver and check \
         `nvidia-smi`, or use the device cpu ('{name},cpu' falls back to the CPU)"
    )
}

/// Formats the error for a request of device `name` when the driver reports `count` GPUs and `name` is
/// not one of them.
fn no_such_device_message(name: &str, count: usize) -> String {
    match count {
        0 => format!("CUDA device '{name}' does not exist: the NVIDIA driver reports no GPU"),
        1 => format!("CUDA device '{name}' does not exist: this machine has 1 CUDA device, cuda:0"),
        n => {
            format!("CUDA device '{name}' does not exist: this machine has {n} CUDA devices, cuda:0 to cuda:{}", n - 1)
        }
    }
}

/// Codes of `CUresult` in cuda.h (CUDA 13.0) that [`driver_error_message`] explains.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod cu_result {
    pub const NOT_INITIALIZED: u32 = 3;
    pub const STUB_LIBRARY: u32 = 34;
    pub const INSUFFICIENT_DRIVER: u32 = 35;
    pub const NO_DEVICE: u32 = 100;
    pub const INVALID_DEVICE: u32 = 101;
    pub const SYSTEM_DRIVER_MISMATCH: u32 = 803;
    pub const COMPAT_NOT_SUPPORTED_ON_DEVICE: u32 = 804;
}

/// Formats the error for the CUDA driver error `code` (`code_name` as cuda.h spells it) while opening
/// device `name`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn driver_error_message(name: &str, code: u32, code_name: &str) -> String {
    let fallback = format!("or use the device cpu ('{name},cpu' falls back to the CPU)");
    match code {
        cu_result::STUB_LIBRARY => no_driver_message(
            name,
            "the libcuda.so.1 that was loaded is a CUDA toolkit's link stub, not the driver; \
             remove the stub's folder from LD_LIBRARY_PATH",
        ),
        cu_result::NOT_INITIALIZED => no_driver_message(name, &format!("the driver did not initialise, {code_name}")),
        cu_result::NO_DEVICE => format!(
            "cannot open CUDA device '{name}': the NVIDIA driver reports no GPU ({code_name}): check `nvidia-smi`, \
             CUDA_VISIBLE_DEVICES, and that a container was started with the GPU (e.g. `docker run --gpus all`); \
             {fallback}"
        ),
        cu_result::INVALID_DEVICE => format!("CUDA device '{name}' does not exist ({code_name})"),
        cu_result::INSUFFICIENT_DRIVER
        | cu_result::SYSTEM_DRIVER_MISMATCH
        | cu_result::COMPAT_NOT_SUPPORTED_ON_DEVICE => format!(
            "cannot open CUDA device '{name}': the NVIDIA driver is too old for the CUDA version this pegan was \
             built with ({code_name}): install a newer driver (CUDA 13.0, which scripts/build-cuda.sh uses, needs \
             driver 580 or newer) or rebuild pegan with an older CUDA toolkit; {fallback}"
        ),
        _ => format!(
            "cannot open CUDA device '{name}': the CUDA driver failed with {code_name} (code {code}); {fallback}"
        ),
    }
}

fn open_cuda(ordinal: usize) -> Result<Device> {
    let name = DeviceRequest::Cuda(ordinal).to_string();
    let count = cuda::device_count_for(&name)?;
    if ordinal >= count {
        return Err(Error::Device(no_such_device_message(&name, count)));
    }
    cuda::open(ordinal, &name)
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use candle_core::cuda_backend::cudarc::driver::result;
    use candle_core::Device;

    use super::{driver_error_message, no_driver_message};
    use crate::error::{Error, Result};

    pub(super) fn device_count() -> Result<usize> {
        device_count_for("cuda")
    }

    /// Initialises the driver and counts the GPUs; `name` is the requested device, for the messages.
    ///
    /// cudarc panics when a build that loads the driver at run time cannot find libcuda, so the call
    /// runs under `catch_unwind`. A build that links libcuda (candle's default, and this project's)
    /// does not start at all without the library; the dynamic loader then reports libcuda.so.1 missing.
    pub(super) fn device_count_for(name: &str) -> Result<usize> {
        let probe = catch_unwind(|| {
            result::init()?;
            result::device::get_count()
        });
        match probe {
            Ok(Ok(count)) => Ok(usize::try_from(count).unwrap_or(0)),
            Ok(Err(error)) => Err(Error::Device(driver_error_message(name, error.0 as u32, &format!("{:?}", error.0)))),
            Err(payload) => Err(Error::Device(no_driver_message(name, &panic_text(payload.as_ref())))),
        }
    }

    pub(super) fn open(ordinal: usize, name: &str) -> Result<Device> {
        match catch_unwind(AssertUnwindSafe(|| Device::new_cuda(ordinal))) {
            Ok(Ok(device)) => Ok(device),
            Ok(Err(error)) => Err(Error::Device(format!("cannot open CUDA device '{name}': {error}"))),
            Err(payload) => {
                Err(Error::Device(format!("cannot open CUDA device '{name}': {}", panic_text(payload.as_ref()))))
            }
        }
    }

    fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
        if let Some(text) = payload.downcast_ref::<&str>() {
            (*text).to_string()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "the CUDA library panicked".to_string()
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use candle_core::Device;

    use super::cuda_not_built_message;
    use crate::error::{Error, Result};

    pub(super) fn device_count() -> Result<usize> {
        Err(Error::Device(cuda_not_built_message("cuda")))
    }

    pub(super) fn device_count_for(name: &str) -> Result<usize> {
        Err(Error::Device(cuda_not_built_message(name)))
    }

    pub(super) fn open(_ordinal: usize, name: &str) -> Result<Device> {
        Err(Error::Device(cuda_not_built_message(name)))
    }
}

#[cfg(feature = "metal")]
fn open_metal() -> Result<Device> {
    Device::new_metal(0).map_err(|e| Error::Device(format!("cannot open the Metal device: {e}")))
}

#[cfg(not(feature = "metal"))]
fn open_metal() -> Result<Device> {
    Err(Error::Device(
        "device 'metal' needs Metal, but this build of pegan has no Metal support: rebuild with `--features metal`, \
         or use the device cpu ('metal,cpu' falls back to the CPU)"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_library_means_no_driver() {
        let message = driver_error_message("cuda:0", cu_result::STUB_LIBRARY, "CUDA_ERROR_STUB_LIBRARY");
        assert!(message.contains("no NVIDIA driver found"), "{message}");
        assert!(message.contains("LD_LIBRARY_PATH"), "{message}");
        assert!(message.contains("'cuda:0,cpu'"), "{message}");
    }

    #[test]
    fn no_device_names_container_fix() {
        let message = driver_error_message("cuda:1", cu_result::NO_DEVICE, "CUDA_ERROR_NO_DEVICE");
        assert!(message.contains("reports no GPU"), "{message}");
        assert!(message.contains("CUDA_ERROR_NO_DEVICE"), "{message}");
        assert!(message.contains("--gpus all"), "{message}");
    }

    #[test]
    fn old_driver_names_update() {
        for (code, code_name) in [
            (cu_result::INSUFFICIENT_DRIVER, "CUDA_ERROR_INSUFFICIENT_DRIVER"),
            (cu_result::SYSTEM_DRIVER_MISMATCH, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"),
            (cu_result::COMPAT_NOT_SUPPORTED_ON_DEVICE, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE"),
        ] {
            let message = driver_error_message("cuda:0", code, code_name);
            assert!(message.contains("too old"), "{message}");
            assert!(message.contains(code_name), "{message}");
        }
    }

    #[test]
    fn unknown_driver_error_keeps_code() {
        let message = driver_error_message("cuda:0", 999, "CUDA_ERROR_UNKNOWN");
        assert!(message.contains("CUDA_ERROR_UNKNOWN (code 999)"), "{message}");
    }

    #[test]
    fn no_such_device_lists_ordinals() {
        assert_eq!(
            no_such_device_message("cuda:3", 2),
            "CUDA device 'cuda:3' does not exist: this machine has 2 CUDA devices, cuda:0 to cuda:1"
        );
        assert_eq!(
            no_such_device_message("cuda:1", 1),
            "CUDA device 'cuda:1' does not exist: this machine has 1 CUDA device, cuda:0"
        );
        assert!(no_such_device_message("cuda:0", 0).contains("reports no GPU"));
    }

    #[test]
    fn no_driver_differs_from_no_such_device() {
        let no_driver = driver_error_message("cuda:0", cu_result::STUB_LIBRARY, "CUDA_ERROR_STUB_LIBRARY");
        let no_device = no_such_device_message("cuda:0", 1);
        assert_ne!(no_driver, no_device);
        assert!(!no_device.contains("driver found"), "{no_device}");
    }
}
