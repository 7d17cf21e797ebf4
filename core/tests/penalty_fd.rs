//! The WGAN-GP gradient penalty's weight gradients against central finite differences, in f64.
//!
//! candle's backward pass detaches the gradients it returns, so a penalty on an input gradient taken
//! with candle's autograd would silently lose terms. pegan builds the input gradient from explicit
//! tensor ops; these tests check every weight of every layer against finite differences.

use candle_core::{DType, Device, Tensor, Var};
use pegan_core::rng::SeededRng;
use pegan_core::singan::block::{BlockShape, DiscriminatorBlock};
use pegan_core::singan::penalty::gradient_penalty;

fn set_element(var: &Var, index: usize, value: f64) {
    let dims = var.as_tensor().dims().to_vec();
    let mut values = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    values[index] = value;
    var.set(&Tensor::from_vec(values, dims, &Device::Cpu).unwrap()).unwrap();
}

fn get_element(var: &Var, index: usize) -> f64 {
    var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap()[index]
}

fn check_penalty_gradients(batch_norm: bool, batch: usize) {
    let device = Device::Cpu;
    let mut rng = SeededRng::new(7);
    let shape = BlockShape { in_channels: 3, channels: 4, num_layers: 5, kernel_size: 3, padding: 0 };
    let critic = DiscriminatorBlock::new(shape, batch_norm, &mut rng, &device).unwrap().to_dtype(DType::F64).unwrap();

    // Larger weights than the N(0, 0.02²) init keep the penalty away from its trivial value of 1.
    for var in critic.trainable() {
        let scaled = (var.as_tensor() * 20.0).unwrap();
        var.set(&scaled).unwrap();
    }

    let real = rng.normal(&[batch, 3, 13, 14], 0.0, 1.0, &device).unwrap().to_dtype(DType::F64).unwrap();
    let fake = rng.normal(&[batch, 3, 13, 14], 0.0, 1.0, &device).unwrap().to_dtype(DType::F64).unwrap();
    let alpha = rng.uniform(&[batch, 1, 1, 1], &device).unwrap().to_dtype(DType::F64).unwrap();
    let loss = |c: &DiscriminatorBlock| -> f64 {
        gradient_penalty(c, &real, &fake, &alpha).unwrap().to_scalar::<f64>().unwrap()
    };

    let penalty = gradient_penalty(&critic, &real, &fake, &alpha).unwrap();
    let grads = penalty.backward().unwrap();

    let eps = 1e-6;
    let mut checked = 0;
    for (layer, var) in critic.trainable().iter().enumerate() {
        let analytic = grads.get(var.as_tensor()).map(|g| g.flatten_all().unwrap().to_vec1::<f64>().unwrap());
        let count = var.as_tensor().elem_count();
        let scale = analytic.as_ref().map(|g| g.iter().fold(0f64, |m, v| m.max(v.abs()))).unwrap_or(0.0);
        for k in 0..5 {
            let index = (k * 7919 + layer * 31) % count;
            let original = get_element(var, index);
            set_element(var, index, original + eps);
            let plus = loss(&critic);
            set_element(var, index, original - eps);
            let minus = loss(&critic);
            set_element(var, index, original);
            let numeric = (plus - minus) / (2.0 * eps);
            let analytic_value = analytic.as_ref().map(|g| g[index]).unwrap_or(0.0);
            let tolerance = 1e-5 * scale.max(numeric.abs()).max(1e-3);
            assert!(
                (numeric - analytic_value).abs() <= tolerance,
                "tensor {layer}, element {index}: finite difference {numeric}, autograd {analytic_value}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 5 * critic.trainable().len());
}

#[test]
fn penalty_gradients_batch_norm_critic() {
    check_penalty_gradients(true, 1);
}

#[test]
fn penalty_gradients_batch_norm_batch_two() {
    check_penalty_gradients(true, 2);
}

#[test]
fn penalty_gradients_critic_without_norm() {
    check_penalty_gradients(false, 1);
}

#[test]
fn penalty_gradient_reaches_every_layer() {
    let device = Device::Cpu;
    let mut rng = SeededRng::new(3);
    let shape = BlockShape { in_channels: 3, channels: 4, num_layers: 5, kernel_size: 3, padding: 0 };
    let critic = DiscriminatorBlock::new(shape, true, &mut rng, &device).unwrap();
    let real = rng.normal(&[1, 3, 15, 16], 0.0, 1.0, &device).unwrap();
    let fake = rng.normal(&[1, 3, 15, 16], 0.0, 1.0, &device).unwrap();
    let alpha = rng.uniform(&[1, 1, 1, 1], &device).unwrap();
    let grads = gradient_penalty(&critic, &real, &fake, &alpha).unwrap().backward().unwrap();

    // Every conv weight must receive a non-zero gradient; candle's detached backward loses the deeper ones.
    for (index, var) in critic.trainable().iter().enumerate().filter(|(_, v)| v.as_tensor().rank() == 4) {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("conv weight {index} got no gradient"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0, "conv weight {index} has a zero gradient");
    }
}
