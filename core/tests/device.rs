//! Device selection: names, lists with a fallback, and the errors for devices that cannot be opened.
//! The CUDA-specific messages (no driver, no GPU, old driver) have unit tests in `core/src/device.rs`,
//! because a machine without a GPU cannot produce them here.

use candle_core::Device;
use pegan_core::device::{cuda_device_count, parse_device, parse_device_list, DeviceRequest};
use pegan_core::Error;

fn device_error(spec: &str) -> String {
    match parse_device(spec) {
        Ok(device) => panic!("'{spec}' opened {device:?}, expected an error"),
        Err(Error::Device(message)) => message,
        Err(other) => panic!("'{spec}' failed with {other:?}, expected Error::Device"),
    }
}

#[test]
fn cpu_opens_in_any_case() {
    for spec in ["cpu", "CPU", " cpu "] {
        assert!(matches!(parse_device(spec), Ok(Device::Cpu)), "{spec}");
    }
}

#[test]
fn names_parse_to_requests() {
    assert_eq!(DeviceRequest::parse("cuda").unwrap(), DeviceRequest::Cuda(0));
    assert_eq!(DeviceRequest::parse("CUDA:3").unwrap(), DeviceRequest::Cuda(3));
    assert_eq!(DeviceRequest::parse("metal").unwrap(), DeviceRequest::Metal);
    assert_eq!(DeviceRequest::Cuda(2).to_string(), "cuda:2");
}

#[test]
fn list_parses_in_order() {
    assert_eq!(
        parse_device_list("cuda:1, cuda:0,cpu").unwrap(),
        vec![DeviceRequest::Cuda(1), DeviceRequest::Cuda(0), DeviceRequest::Cpu]
    );
}

#[test]
fn invalid_names_are_rejected() {
    for spec in ["gpu", "cuda0", "tpu:0"] {
        let message = device_error(spec);
        assert!(message.contains(&format!("invalid device '{spec}'")), "{message}");
        assert!(message.contains("use cpu, cuda, cuda:N or metal"), "{message}");
    }
}

#[test]
fn invalid_cuda_ordinal_is_rejected() {
    for spec in ["cuda:x", "cuda:-1", "cuda:"] {
        let message = device_error(spec);
        assert!(message.contains(&format!("invalid CUDA device '{spec}'")), "{message}");
        assert!(message.contains("cuda:0"), "{message}");
    }
}

#[test]
fn empty_request_is_rejected() {
    let message = device_error("  ");
    assert!(message.contains("no device given"), "{message}");
}

#[test]
fn typo_in_fallback_is_rejected() {
    // The first entry would open, but a typo anywhere in the list is reported before anything opens.
    let message = device_error("cpu,cdua:0");
    assert!(message.contains("invalid device 'cdua:0'"), "{message}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_feature_names_rebuild() {
    let message = device_error("cuda:0");
    assert!(message.contains("no CUDA support"), "{message}");
    assert!(message.contains("--features cuda"), "{message}");
    assert!(message.contains("'cuda:0,cpu'"), "{message}");
    assert!(cuda_device_count().is_err());
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_falls_back_to_cpu_when_listed() {
    assert!(matches!(parse_device("cuda:0,cpu"), Ok(Device::Cpu)));
}

#[cfg(not(any(feature = "cuda", feature = "metal")))]
#[test]
fn list_without_working_device_names_each() {
    let message = device_error("cuda:1,metal");
    assert!(message.contains("none of the devices in 'cuda:1,metal' could be opened"), "{message}");
    assert!(message.contains("cuda:1: device 'cuda:1' needs CUDA"), "{message}");
    assert!(message.contains("metal: device 'metal' needs Metal"), "{message}");
}

#[cfg(not(feature = "metal"))]
#[test]
fn metal_without_feature_names_rebuild() {
    let message = device_error("metal");
    assert!(message.contains("no Metal support"), "{message}");
    assert!(message.contains("--features metal"), "{message}");
}

/// With CUDA built in, a device number far beyond any machine's is an error on every machine: no
/// driver, no GPU, or no such device. Which one depends on the machine; none may panic or open.
#[cfg(feature = "cuda")]
#[test]
fn cuda_out_of_range_ordinal_is_an_error() {
    let message = device_error("cuda:4096");
    let known = ["no NVIDIA driver found", "reports no GPU", "does not exist", "too old"];
    assert!(known.iter().any(|cause| message.contains(cause)), "{message}");
    if let Ok(count) = cuda_device_count() {
        let expected = if count == 1 { "1 CUDA device".to_string() } else { format!("{count} CUDA devices") };
        assert!(message.contains(&expected), "{message}");
    }
}
