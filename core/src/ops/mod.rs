//! Tensor operations shared by the models: the convolution entry points every layer calls, the stride-2
//! convolutions built on them, and a single-pass leaky ReLU.

pub mod conv;
pub mod leaky_relu;
pub mod stride2;

pub use conv::{conv2d, conv2d_input_grad, conv2d_weight_grad, num_threads, set_num_threads};
pub use leaky_relu::{leaky_relu, leaky_relu_derivative, leaky_relu_input_grad};
pub use stride2::{conv2d_stride2, conv2d_stride2_input_grad, conv_transpose2d_stride2};

/// Returns the contiguous f32 data of a custom op argument, or an error naming `what` (for example
/// "convolution input") when it is not f32 or not contiguous.
pub(crate) fn f32_data<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(data) = storage else {
        candle_core::bail!("pegan's CPU kernels take f32 tensors, but the {what} is not f32");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!(
            "pegan's CPU kernels take contiguous tensors, but the {what} has strides {:?}",
            layout.stride()
        );
    };
    Ok(&data[start..end])
}
