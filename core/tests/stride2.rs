//! Checks the polyphase stride-2 convolutions of `ops::stride2` against candle's own strided
//! `conv2d` and `conv_transpose2d` (in f64, where pegan's CPU kernels are not used, and in f32, where
//! they are), and the transposed convolution against the adjoint identity with the strided one.

use candle_core::{DType, Device, Tensor, Var};
use pegan_core::ops::{conv2d_stride2, conv2d_stride2_input_grad, conv_transpose2d_stride2};

/// Deterministic values in [-1, 1) from a 64-bit xorshift generator.
fn random_tensor(dims: &[usize], seed: u64, dtype: DType) -> Tensor {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let len = dims.iter().product();
    let values: Vec<f64> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(values, dims, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn max_abs_difference(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let diff = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
    diff.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

/// Batch, channels in, channels out, height, width, kernel side: odd and even sides, channel counts that
/// are not multiples of the SIMD width, batch 1 and 4. Layers with 128 or more output channels (of the
/// correlation; input channels of the transposed convolution) take the im2col/GEMM form, the others the
/// polyphase form, so the last three cases cover the first.
const CASES: [(usize, usize, usize, usize, usize, usize); 8] = [
    (1, 3, 5, 7, 9, 3),
    (4, 17, 6, 8, 5, 3),
    (2, 5, 3, 6, 6, 1),
    (1, 2, 7, 11, 6, 5),
    (1, 33, 20, 4, 4, 3),
    (2, 5, 130, 7, 8, 3),
    (3, 130, 129, 5, 6, 3),
    (1, 129, 7, 9, 7, 1),
];

/// Largest difference allowed, relative to the largest output magnitude: sums of up to 1,170 products
/// round differently in another order.
const TOLERANCE: [(DType, f64); 2] = [(DType::F64, 1e-13), (DType::F32, 2e-6)];

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn stride2_conv_matches_candle() {
    for (index, &(n, c, o, h, w, k)) in CASES.iter().enumerate() {
        for (dtype, tolerance) in TOLERANCE {
            let x = random_tensor(&[n, c, h, w], index as u64 + 1, dtype);
            let kernel = random_tensor(&[o, c, k, k], index as u64 + 50, dtype);
            let expected = x.conv2d(&kernel, 0, 2, 1, 1).unwrap();
            let actual = conv2d_stride2(&x, &kernel).unwrap();
            let error = max_abs_difference(&actual, &expected);
            let bound = tolerance * max_abs(&expected).max(1.0);
            assert!(error <= bound, "case {index} {dtype:?}: max difference {error}, allowed {bound}");
        }
    }
}

#[test]
fn stride2_transposed_conv_matches_candle() {
    for (index, &(n, c, o, h, w, k)) in CASES.iter().enumerate() {
        for (dtype, tolerance) in TOLERANCE {
            let x = random_tensor(&[n, c, h, w], index as u64 + 100, dtype);
            let kernel = random_tensor(&[c, o, k, k], index as u64 + 150, dtype);
            let expected = x.conv_transpose2d(&kernel, 0, 0, 2, 1).unwrap();
            let actual = conv_transpose2d_stride2(&x, &kernel).unwrap();
            let error = max_abs_difference(&actual, &expected);
            let bound = tolerance * max_abs(&expected).max(1.0);
            assert!(error <= bound, "case {index} {dtype:?}: max difference {error}, allowed {bound}");
        }
    }
}

#[test]
fn transposed_conv_is_adjoint_of_stride2() {
    // <conv_transpose(x, K), y> = <x, conv2d_stride2(y, K)> for every x, y.
    for (index, &(n, c, o, h, w, k)) in CASES.iter().enumerate() {
        let x = random_tensor(&[n, c, h, w], index as u64 + 200, DType::F64);
        let kernel = random_tensor(&[c, o, k, k], index as u64 + 250, DType::F64);
        let up = conv_transpose2d_stride2(&x, &kernel).unwrap();
        let y = random_tensor(up.dims(), index as u64 + 300, DType::F64);
        let lhs: f64 = (&up * &y).unwrap().sum_all().unwrap().to_scalar().unwrap();
        let down = conv2d_stride2(&y, &kernel).unwrap();
        let rhs: f64 = (&down * &x).unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!((lhs - rhs).abs() <= 1e-10 * (1.0 + lhs.abs()), "case {index}: {lhs} vs {rhs}");
    }
}

#[test]
fn transposed_conv_gradients_match_candle() {
    // Gradients of sum(conv_transpose(x, K) · r) with respect to x and K through pegan's ops equal those
    // through candle's own transposed convolution. The discriminator's gradient penalty differentiates
    // through this path (the input gradient of its stride-2 layers). The f64 case takes the polyphase
    // form, the f32 case with 130 input channels the GEMM form and its custom im2col and col2im.
    for (dtype, (n, c, o, h, w), tolerance) in
        [(DType::F64, (2, 6, 5, 5, 7), 1e-10), (DType::F32, (2, 130, 5, 4, 6), 2e-6)]
    {
        let x = Var::from_tensor(&random_tensor(&[n, c, h, w], 400, dtype)).unwrap();
        let kernel = Var::from_tensor(&random_tensor(&[c, o, 3, 3], 401, dtype)).unwrap();
        let r = random_tensor(&[n, o, 2 * h + 1, 2 * w + 1], 402, dtype);

        let ours = (conv_transpose2d_stride2(&x, &kernel).unwrap() * &r).unwrap().sum_all().unwrap();
        let grads = ours.backward().unwrap();
        let theirs = (x.conv_transpose2d(&kernel, 0, 0, 2, 1).unwrap() * &r).unwrap().sum_all().unwrap();
        let reference = theirs.backward().unwrap();

        for (name, var) in [("input", &x), ("kernel", &kernel)] {
            let expected = reference.get(var).unwrap();
            let error = max_abs_difference(grads.get(var).unwrap(), expected);
            let bound = tolerance * max_abs(expected).max(1.0);
            assert!(error <= bound, "{dtype:?} {name} gradient: max difference {error}, allowed {bound}");
        }
    }
}

/// Gradients of sum(conv2d_stride2(x, K) · r) with respect to x and K, as the discriminator's training
/// step takes them.
fn stride2_conv_gradients(x: &Tensor, kernel: &Tensor, r: &Tensor) -> [Tensor; 2] {
    let (x, kernel) = (Var::from_tensor(x).unwrap(), Var::from_tensor(kernel).unwrap());
    let grads = (conv2d_stride2(&x, &kernel).unwrap() * r).unwrap().sum_all().unwrap().backward().unwrap();
    [grads.get(&x).unwrap().clone(), grads.get(&kernel).unwrap().clone()]
}

#[test]
fn stride2_conv_gradients_match_candle() {
    // The f64 case takes the polyphase form. candle's own backward pass fails on a width whose last
    // column the stride skips, so this case has none.
    let x = random_tensor(&[2, 6, 9, 7], 500, DType::F64);
    let kernel = random_tensor(&[5, 6, 3, 3], 501, DType::F64);
    let r = random_tensor(&[2, 5, 4, 3], 502, DType::F64);
    let ours = stride2_conv_gradients(&x, &kernel, &r);

    let (x, kernel) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&kernel).unwrap());
    let reference = (x.conv2d(&kernel, 0, 2, 1, 1).unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, var, actual) in [("input", &x, &ours[0]), ("kernel", &kernel, &ours[1])] {
        let expected = reference.get(var).unwrap();
        let error = max_abs_difference(actual, expected);
        let bound = 1e-10 * max_abs(expected).max(1.0);
        assert!(error <= bound, "{name} gradient: max difference {error}, allowed {bound}");
    }
}

#[test]
fn stride2_conv_gemm_gradients_match_polyphase() {
    // 130 output channels in f32 take the GEMM form, the same values in f64 the polyphase form, which
    // the test above checks against candle. Batch 3, and a width whose last column the stride skips.
    let x = random_tensor(&[3, 7, 9, 8], 510, DType::F64);
    let kernel = random_tensor(&[130, 7, 3, 3], 511, DType::F64);
    let r = random_tensor(&[3, 130, 4, 3], 512, DType::F64);
    let expected = stride2_conv_gradients(&x, &kernel, &r);
    let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let actual = stride2_conv_gradients(&f32(&x), &f32(&kernel), &f32(&r));
    for (name, actual, expected) in [("input", &actual[0], &expected[0]), ("kernel", &actual[1], &expected[1])] {
        assert_eq!(actual.dims(), expected.dims(), "{name} gradient shape");
        let error = max_abs_difference(actual, expected);
        let bound = 2e-6 * max_abs(expected).max(1.0);
        assert!(error <= bound, "{name} gradient: max difference {error}, allowed {bound}");
    }
}

#[test]
fn stride2_input_grad_rejects_mismatched_size() {
    let g = Tensor::zeros((1, 4, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let kernel = Tensor::zeros((4, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let error = conv2d_stride2_input_grad(&g, &kernel, (9, 9)).unwrap_err().to_string();
    assert!(error.contains("3×3 pixels"), "{error}");
}

#[test]
fn even_kernel_is_rejected() {
    let x = Tensor::zeros((1, 2, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let kernel = Tensor::zeros((3, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let error = conv2d_stride2(&x, &kernel).unwrap_err().to_string();
    assert!(error.contains("odd side"), "{error}");
}
