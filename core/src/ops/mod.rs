//! Tensor operations shared by the models: the convolution entry points every layer calls.

pub mod conv;

pub use conv::{conv2d, conv2d_input_grad, conv2d_weight_grad, num_threads, set_num_threads};
