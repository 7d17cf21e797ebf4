//! Checks `ops::conv2d` and `ops::conv2d_input_grad` against direct per-pixel loops, against each
//! other (the transposed convolution is the adjoint of the convolution), and their gradients against
//! central finite differences in f64, including the gradient-penalty path that differentiates through
//! `conv2d_input_grad`.

use candle_core::{DType, Device, Tensor, Var};
use pegan_core::ops::leaky_relu::bias_leaky_relu;
use pegan_core::ops::{conv2d, conv2d_bias_leaky_relu, conv2d_input_grad, conv2d_weight_grad, set_num_threads};
use pegan_core::Error;

/// Deterministic values in [-1, 1) from a 64-bit xorshift generator.
fn random_values(len: usize, seed: u64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

fn random_tensor(dims: &[usize], seed: u64, dtype: DType) -> Tensor {
    let len = dims.iter().product();
    Tensor::from_vec(random_values(len, seed), dims, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn to_f64_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// One convolution configuration: batch, in channels, out channels, input height and width,
/// kernel size and padding.
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k: usize,
    p: usize,
}

impl Case {
    fn h_out(&self) -> usize {
        self.h + 2 * self.p + 1 - self.k
    }
    fn w_out(&self) -> usize {
        self.w + 2 * self.p + 1 - self.k
    }
    fn x_dims(&self) -> [usize; 4] {
        [self.n, self.c_in, self.h, self.w]
    }
    fn w_dims(&self) -> [usize; 4] {
        [self.c_out, self.c_in, self.k, self.k]
    }
    fn y_dims(&self) -> [usize; 4] {
        [self.n, self.c_out, self.h_out(), self.w_out()]
    }
}

const CASES: &[Case] = &[
    Case { n: 1, c_in: 3, c_out: 5, h: 7, w: 9, k: 3, p: 0 },
    Case { n: 4, c_in: 5, c_out: 17, h: 11, w: 6, k: 3, p: 1 },
    Case { n: 1, c_in: 32, c_out: 32, h: 13, w: 10, k: 3, p: 1 },
    Case { n: 4, c_in: 17, c_out: 3, h: 5, w: 7, k: 3, p: 0 },
    Case { n: 1, c_in: 3, c_out: 32, h: 9, w: 8, k: 1, p: 0 },
    Case { n: 2, c_in: 5, c_out: 5, h: 6, w: 9, k: 5, p: 2 },
    Case { n: 1, c_in: 17, c_out: 32, h: 3, w: 3, k: 3, p: 0 },
    Case { n: 4, c_in: 32, c_out: 17, h: 1, w: 5, k: 3, p: 1 },
    Case { n: 1, c_in: 64, c_out: 33, h: 19, w: 23, k: 3, p: 1 },
    // Enough output channels but narrow rows: im2col tiles and the gemm crate.
    Case { n: 2, c_in: 20, c_out: 130, h: 9, w: 21, k: 3, p: 1 },
    // Enough output channels, depth (c_in · k²) and width for the implicit GEMM of the CPU kernels: a
    // partial last panel of 64 channels and rows that end in a partial block of 6 pixels.
    Case { n: 2, c_in: 20, c_out: 130, h: 3, w: 67, k: 3, p: 1 },
    Case { n: 1, c_in: 16, c_out: 200, h: 4, w: 70, k: 3, p: 0 },
    Case { n: 1, c_in: 24, c_out: 70, h: 3, w: 65, k: 3, p: 1 },
    // A depth of 1080 runs in two chunks whose accumulators carry over.
    Case { n: 1, c_in: 120, c_out: 130, h: 2, w: 64, k: 3, p: 1 },
    // The input gradient of this one is an implicit GEMM with padding 2 (border blocks on patches).
    Case { n: 2, c_in: 136, c_out: 20, h: 3, w: 66, k: 3, p: 0 },
    // Enough output channels but too little depth: im2col tiles and the gemm crate.
    Case { n: 2, c_in: 4, c_out: 140, h: 3, w: 70, k: 3, p: 1 },
    // Many output pixels: several tiles per image, tiles that end mid-row, rows wider than 16 lanes.
    Case { n: 2, c_in: 40, c_out: 24, h: 45, w: 37, k: 3, p: 1 },
    Case { n: 1, c_in: 3, c_out: 1, h: 33, w: 70, k: 3, p: 0 },
    // A single input channel, fewer than the threads: the weight gradient also splits the pixels.
    Case { n: 2, c_in: 1, c_out: 16, h: 64, w: 64, k: 9, p: 4 },
    // Implicit weight gradient: a weight gradient of more than 2^18 values, which the tasks share by
    // taps, with a last range of 36 output channels (4 vectors, the last one partial) ...
    Case { n: 2, c_in: 300, c_out: 100, h: 2, w: 64, k: 3, p: 1 },
    // ... a 5x5 kernel with padding 2 (two edge pixels on each side) and a range of 20 channels (2 vectors,
    // 12 taps per block, the last block partial), rows of 2 images in one chunk ...
    Case { n: 2, c_in: 7, c_out: 20, h: 5, w: 66, k: 5, p: 2 },
    // ... and chunks that end within an image: 2048-pixel chunks of 68-pixel rows.
    Case { n: 2, c_in: 8, c_out: 33, h: 40, w: 70, k: 3, p: 0 },
    // Winograd F(2x2, 3x3) for wide layers on narrow rows (64 or more 2x2 tiles), forward and weight
    // gradient: an odd output size (partial tiles at the bottom and right) ...
    Case { n: 2, c_in: 64, c_out: 130, h: 15, w: 17, k: 3, p: 1 },
    // ... an even one without padding ...
    Case { n: 1, c_in: 70, c_out: 128, h: 18, w: 20, k: 3, p: 0 },
    // ... and an input gradient of 130 channels from 64 (the forward pass takes the direct kernel).
    Case { n: 2, c_in: 130, c_out: 64, h: 15, w: 15, k: 3, p: 1 },
];

/// Direct convolution: y[n, o, i, j] = sum over c, a, b of x[n, c, i + a - p, j + b - p] * w[o, c, a, b].
fn reference_conv2d(x: &[f64], wt: &[f64], c: Case) -> Vec<f64> {
    let (ho, wo) = (c.h_out(), c.w_out());
    let mut y = vec![0.0; c.n * c.c_out * ho * wo];
    for n in 0..c.n {
        for o in 0..c.c_out {
            for i in 0..ho {
                for j in 0..wo {
                    let mut acc = 0.0;
                    for ci in 0..c.c_in {
                        for a in 0..c.k {
                            for b in 0..c.k {
                                let (yy, xx) = ((i + a) as isize - c.p as isize, (j + b) as isize - c.p as isize);
                                if yy < 0 || xx < 0 || yy >= c.h as isize || xx >= c.w as isize {
                                    continue;
                                }
                                let xv = x[((n * c.c_in + ci) * c.h + yy as usize) * c.w + xx as usize];
                                acc += xv * wt[((o * c.c_in + ci) * c.k + a) * c.k + b];
                            }
                        }
                    }
                    y[((n * c.c_out + o) * ho + i) * wo + j] = acc;
                }
            }
        }
    }
    y
}

/// Direct transposed convolution: scatters every g[n, o, i, j] * w[o, c, a, b] to dx[n, c, i + a - p, j + b - p].
fn reference_input_grad(g: &[f64], wt: &[f64], c: Case) -> Vec<f64> {
    let (ho, wo) = (c.h_out(), c.w_out());
    let mut dx = vec![0.0; c.n * c.c_in * c.h * c.w];
    for n in 0..c.n {
        for o in 0..c.c_out {
            for i in 0..ho {
                for j in 0..wo {
                    let gv = g[((n * c.c_out + o) * ho + i) * wo + j];
                    for ci in 0..c.c_in {
                        for a in 0..c.k {
                            for b in 0..c.k {
                                let (yy, xx) = ((i + a) as isize - c.p as isize, (j + b) as isize - c.p as isize);
                                if yy < 0 || xx < 0 || yy >= c.h as isize || xx >= c.w as isize {
                                    continue;
                                }
                                dx[((n * c.c_in + ci) * c.h + yy as usize) * c.w + xx as usize] +=
                                    gv * wt[((o * c.c_in + ci) * c.k + a) * c.k + b];
                            }
                        }
                    }
                }
            }
        }
    }
    dx
}

/// Direct weight gradient: dw[o, c, a, b] = sum over n, i, j of g[n, o, i, j] * x[n, c, i + a - p, j + b - p].
fn reference_weight_grad(x: &[f64], g: &[f64], c: Case) -> Vec<f64> {
    let (ho, wo) = (c.h_out(), c.w_out());
    let mut dw = vec![0.0; c.c_out * c.c_in * c.k * c.k];
    for n in 0..c.n {
        for o in 0..c.c_out {
            for ci in 0..c.c_in {
                for a in 0..c.k {
                    for b in 0..c.k {
                        let mut acc = 0.0;
                        for i in 0..ho {
                            for j in 0..wo {
                                let (yy, xx) = ((i + a) as isize - c.p as isize, (j + b) as isize - c.p as isize);
                                if yy < 0 || xx < 0 || yy >= c.h as isize || xx >= c.w as isize {
                                    continue;
                                }
                                acc += g[((n * c.c_out + o) * ho + i) * wo + j]
                                    * x[((n * c.c_in + ci) * c.h + yy as usize) * c.w + xx as usize];
                            }
                        }
                        dw[((o * c.c_in + ci) * c.k + a) * c.k + b] += acc;
                    }
                }
            }
        }
    }
    dw
}

/// Returns the f32 tolerance for sums of `terms` products of values in [-1, 1]: rounding errors grow
/// about as the square root of the term count.
fn f32_tolerance(terms: usize) -> f64 {
    2e-6 * (terms as f64).sqrt()
}

/// Asserts |actual - expected| <= tol * (1 + |expected|) element by element.
fn assert_close(actual: &[f64], expected: &[f64], tol: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= tol * (1.0 + e.abs()), "{what}: element {i} is {a}, expected {e} (tolerance {tol})");
    }
}

#[test]
fn conv2d_matches_reference_loop() {
    for (index, &case) in CASES.iter().enumerate() {
        let seed = 10 * index as u64;
        let x = random_values(case.x_dims().iter().product(), seed);
        let w = random_values(case.w_dims().iter().product(), seed + 1);
        let expected = reference_conv2d(&x, &w, case);
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, f32_tolerance(case.c_in * case.k * case.k))] {
            let xt = Tensor::from_vec(x.clone(), &case.x_dims(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let wt = Tensor::from_vec(w.clone(), &case.w_dims(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let y = conv2d(&xt, &wt, case.p).unwrap();
            assert_eq!(y.dims(), &case.y_dims(), "{case:?} {dtype:?}: output shape");
            assert_eq!(y.dtype(), dtype, "{case:?}: output dtype");
            assert_close(&to_f64_vec(&y), &expected, tol, &format!("{case:?} {dtype:?}"));
        }
    }
}

#[test]
fn input_grad_matches_reference_loop() {
    for (index, &case) in CASES.iter().enumerate() {
        let seed = 10 * index as u64 + 5;
        let g = random_values(case.y_dims().iter().product(), seed);
        let w = random_values(case.w_dims().iter().product(), seed + 1);
        let expected = reference_input_grad(&g, &w, case);
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, f32_tolerance(case.c_out * case.k * case.k))] {
            let gt = Tensor::from_vec(g.clone(), &case.y_dims(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let wt = Tensor::from_vec(w.clone(), &case.w_dims(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let dx = conv2d_input_grad(&gt, &wt, case.p).unwrap();
            assert_eq!(dx.dims(), &case.x_dims(), "{case:?} {dtype:?}: output shape");
            assert_close(&to_f64_vec(&dx), &expected, tol, &format!("{case:?} {dtype:?}"));
        }
    }
}

#[test]
fn weight_grad_matches_reference_loop() {
    for (index, &case) in CASES.iter().enumerate() {
        let seed = 10 * index as u64 + 6;
        let x = random_values(case.x_dims().iter().product(), seed);
        let g = random_values(case.y_dims().iter().product(), seed + 1);
        let expected = reference_weight_grad(&x, &g, case);
        // Sums run over up to 2 * 45 * 37 pixels, so f32 rounding grows with the image.
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-4)] {
            let xt = Tensor::from_vec(x.clone(), &case.x_dims(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let gt = Tensor::from_vec(g.clone(), &case.y_dims(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let dw = conv2d_weight_grad(&xt, &gt, case.p).unwrap();
            assert_eq!(dw.dims(), &case.w_dims(), "{case:?} {dtype:?}: output shape");
            assert_close(&to_f64_vec(&dw), &expected, tol, &format!("{case:?} {dtype:?}"));
        }
    }
}

#[test]
fn non_contiguous_arguments() {
    // x and g are built transposed so that their strides are not the contiguous ones.
    let case = Case { n: 2, c_in: 5, c_out: 7, h: 10, w: 9, k: 3, p: 1 };
    let x = random_tensor(&[case.n, case.c_in, case.w, case.h], 81, DType::F32).transpose(2, 3).unwrap();
    let w = random_tensor(&[case.c_in, case.c_out, case.k, case.k], 82, DType::F32).transpose(0, 1).unwrap();
    let g = random_tensor(&[case.c_out, case.n, case.h, case.w], 83, DType::F32).transpose(0, 1).unwrap();
    assert!(!x.is_contiguous(), "x is contiguous");
    assert!(!w.is_contiguous(), "w is contiguous");
    assert!(!g.is_contiguous(), "g is contiguous");
    let (xv, wv, gv) = (to_f64_vec(&x), to_f64_vec(&w), to_f64_vec(&g));
    assert_close(&to_f64_vec(&conv2d(&x, &w, case.p).unwrap()), &reference_conv2d(&xv, &wv, case), 2e-5, "conv2d");
    assert_close(
        &to_f64_vec(&conv2d_input_grad(&g, &w, case.p).unwrap()),
        &reference_input_grad(&gv, &wv, case),
        2e-5,
        "input grad",
    );
    assert_close(
        &to_f64_vec(&conv2d_weight_grad(&x, &g, case.p).unwrap()),
        &reference_weight_grad(&xv, &gv, case),
        1e-4,
        "weight grad",
    );
}

#[test]
fn input_grad_with_padding_above_kernel() {
    // Padding p >= k crops the transposed convolution's output on every side. 130 input channels take
    // the im2col + GEMM path of the CPU kernels with 7 output channels, the implicit GEMM with 16, and
    // 3 input channels the direct kernel.
    for case in [
        Case { n: 2, c_in: 3, c_out: 5, h: 4, w: 5, k: 3, p: 3 },
        Case { n: 1, c_in: 130, c_out: 7, h: 6, w: 3, k: 3, p: 4 },
        Case { n: 2, c_in: 130, c_out: 16, h: 3, w: 70, k: 3, p: 4 },
    ] {
        let g = random_values(case.y_dims().iter().product(), 71);
        let w = random_values(case.w_dims().iter().product(), 72);
        let expected = reference_input_grad(&g, &w, case);
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, f32_tolerance(case.c_out * case.k * case.k))] {
            let gt = Tensor::from_vec(g.clone(), &case.y_dims(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let wt = Tensor::from_vec(w.clone(), &case.w_dims(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let dx = conv2d_input_grad(&gt, &wt, case.p).unwrap();
            assert_eq!(dx.dims(), &case.x_dims(), "{case:?} {dtype:?}");
            assert_close(&to_f64_vec(&dx), &expected, tol, &format!("{case:?} {dtype:?}"));
        }
    }
}

#[test]
fn input_grad_is_adjoint_of_conv2d() {
    // <conv2d(x, w), g> = <x, conv2d_input_grad(g, w)> for every x, g.
    for (index, &case) in CASES.iter().enumerate() {
        let seed = 10 * index as u64 + 7;
        let x = random_tensor(&case.x_dims(), seed, DType::F64);
        let w = random_tensor(&case.w_dims(), seed + 1, DType::F64);
        let g = random_tensor(&case.y_dims(), seed + 2, DType::F64);
        let lhs: f64 = (conv2d(&x, &w, case.p).unwrap() * &g).unwrap().sum_all().unwrap().to_scalar().unwrap();
        let rhs: f64 =
            (conv2d_input_grad(&g, &w, case.p).unwrap() * &x).unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!((lhs - rhs).abs() <= 1e-10 * (1.0 + lhs.abs()), "{case:?}: {lhs} vs {rhs}");
    }
}

/// Central finite difference of `loss` at element `index` of `values`.
///
/// The losses below are polynomials of degree 2 to 4 in each element, so a step of 1e-3 keeps the
/// truncation error small while the rounding error of losses around 1e5 stays near 1e-8.
fn finite_difference(values: &[f64], index: usize, loss: &dyn Fn(&[f64]) -> f64) -> f64 {
    let eps = 1e-3;
    let mut shifted = values.to_vec();
    shifted[index] = values[index] + eps;
    let up = loss(&shifted);
    shifted[index] = values[index] - eps;
    let down = loss(&shifted);
    (up - down) / (2.0 * eps)
}

/// Indices of up to `count` elements spread evenly over `len`, including the first and the last.
fn sample_indices(len: usize, count: usize) -> Vec<usize> {
    if len <= count {
        return (0..len).collect();
    }
    (0..count).map(|i| i * (len - 1) / (count - 1)).collect()
}

/// Compares every sampled element of an analytic gradient with central finite differences.
fn check_gradient(analytic: &Tensor, values: &[f64], loss: &dyn Fn(&[f64]) -> f64, what: &str) {
    let analytic = to_f64_vec(analytic);
    assert_eq!(analytic.len(), values.len(), "{what}: gradient length");
    for index in sample_indices(values.len(), 24) {
        let numeric = finite_difference(values, index, loss);
        assert!(
            (analytic[index] - numeric).abs() <= 1e-5 * (1.0 + numeric.abs()),
            "{what}: d/d[{index}] analytic {} vs finite difference {numeric}",
            analytic[index]
        );
    }
}

fn tensor_of(values: &[f64], dims: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), dims, &Device::Cpu).unwrap()
}

fn scalar(t: Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

/// Computes a smooth non-linear loss of a conv2d output: sum(r * y + y^2 / 2).
fn conv2d_loss(x: &Tensor, w: &Tensor, r: &Tensor, p: usize) -> Tensor {
    let y = conv2d(x, w, p).unwrap();
    ((&y * r).unwrap() + (y.sqr().unwrap() * 0.5).unwrap()).unwrap().sum_all().unwrap()
}

#[test]
fn conv2d_gradients_match_finite_differences() {
    for (index, &case) in CASES.iter().enumerate() {
        let seed = 10 * index as u64 + 3;
        let x = random_values(case.x_dims().iter().product(), seed);
        let w = random_values(case.w_dims().iter().product(), seed + 1);
        let r = tensor_of(&random_values(case.y_dims().iter().product(), seed + 2), &case.y_dims());

        let xv = Var::from_tensor(&tensor_of(&x, &case.x_dims())).unwrap();
        let wv = Var::from_tensor(&tensor_of(&w, &case.w_dims())).unwrap();
        let grads = conv2d_loss(&xv, &wv, &r, case.p).backward().unwrap();
        let (dx, dw) = (grads.get(&xv).unwrap(), grads.get(&wv).unwrap());

        let w_fixed = tensor_of(&w, &case.w_dims());
        let loss_x = |v: &[f64]| scalar(conv2d_loss(&tensor_of(v, &case.x_dims()), &w_fixed, &r, case.p));
        check_gradient(dx, &x, &loss_x, &format!("{case:?} d/dx"));

        let x_fixed = tensor_of(&x, &case.x_dims());
        let loss_w = |v: &[f64]| scalar(conv2d_loss(&x_fixed, &tensor_of(v, &case.w_dims()), &r, case.p));
        check_gradient(dw, &w, &loss_w, &format!("{case:?} d/dw"));
    }
}

/// Computes a smooth non-linear loss of a transposed convolution, as in a gradient penalty: sum(r * dx + dx^2).
fn input_grad_loss(g: &Tensor, w: &Tensor, r: &Tensor, p: usize) -> Tensor {
    let dx = conv2d_input_grad(g, w, p).unwrap();
    ((&dx * r).unwrap() + dx.sqr().unwrap()).unwrap().sum_all().unwrap()
}

#[test]
fn input_grad_gradients_match_finite_differences() {
    for (index, &case) in CASES.iter().enumerate() {
        let seed = 10 * index as u64 + 4;
        let g = random_values(case.y_dims().iter().product(), seed);
        let w = random_values(case.w_dims().iter().product(), seed + 1);
        let r = tensor_of(&random_values(case.x_dims().iter().product(), seed + 2), &case.x_dims());

        let gv = Var::from_tensor(&tensor_of(&g, &case.y_dims())).unwrap();
        let wv = Var::from_tensor(&tensor_of(&w, &case.w_dims())).unwrap();
        let grads = input_grad_loss(&gv, &wv, &r, case.p).backward().unwrap();
        let (dg, dw) = (grads.get(&gv).unwrap(), grads.get(&wv).unwrap());

        let w_fixed = tensor_of(&w, &case.w_dims());
        let loss_g = |v: &[f64]| scalar(input_grad_loss(&tensor_of(v, &case.y_dims()), &w_fixed, &r, case.p));
        check_gradient(dg, &g, &loss_g, &format!("{case:?} d/dg"));

        let g_fixed = tensor_of(&g, &case.y_dims());
        let loss_w = |v: &[f64]| scalar(input_grad_loss(&g_fixed, &tensor_of(v, &case.w_dims()), &r, case.p));
        check_gradient(dw, &w, &loss_w, &format!("{case:?} d/dw"));
    }
}

/// Gradient penalty of a two-layer critic D(x) = sum(r * conv2d(leaky(conv2d(x, w1)), w2)), built by hand
/// the way the training code builds it: ||dD/dx||^2 with dD/dx from conv2d_input_grad.
fn gradient_penalty(x: &Tensor, w1: &Tensor, w2: &Tensor, r: &Tensor, p: usize) -> Tensor {
    let h = conv2d(x, w1, p).unwrap();
    // Smooth activation (softplus-like via h + h^2 / 4) so finite differences stay accurate.
    let slope = (h.clone() * 0.5).unwrap().affine(1.0, 1.0).unwrap();
    let dh = conv2d_input_grad(r, w2, p).unwrap();
    let dx = conv2d_input_grad(&(dh * slope).unwrap(), w1, p).unwrap();
    dx.sqr().unwrap().sum_all().unwrap()
}

#[test]
fn gradient_penalty_weight_gradient_matches_finite_differences() {
    let cases = [
        (Case { n: 2, c_in: 3, c_out: 5, h: 9, w: 7, k: 3, p: 1 }, 17),
        (Case { n: 1, c_in: 5, c_out: 17, h: 8, w: 11, k: 3, p: 0 }, 3),
        (Case { n: 4, c_in: 32, c_out: 32, h: 6, w: 5, k: 3, p: 1 }, 32),
    ];
    for (index, (case, c_mid)) in cases.into_iter().enumerate() {
        let seed = 100 + 10 * index as u64;
        let second = Case { c_in: case.c_out, c_out: c_mid, h: case.h_out(), w: case.w_out(), ..case };
        let x = tensor_of(&random_values(case.x_dims().iter().product(), seed), &case.x_dims());
        let w1 = random_values(case.w_dims().iter().product(), seed + 1);
        let w2 = random_values(second.w_dims().iter().product(), seed + 2);
        let r = tensor_of(&random_values(second.y_dims().iter().product(), seed + 3), &second.y_dims());

        let w1v = Var::from_tensor(&tensor_of(&w1, &case.w_dims())).unwrap();
        let w2v = Var::from_tensor(&tensor_of(&w2, &second.w_dims())).unwrap();
        let grads = gradient_penalty(&x, &w1v, &w2v, &r, case.p).backward().unwrap();

        let w2_fixed = tensor_of(&w2, &second.w_dims());
        let loss_w1 = |v: &[f64]| scalar(gradient_penalty(&x, &tensor_of(v, &case.w_dims()), &w2_fixed, &r, case.p));
        check_gradient(grads.get(&w1v).unwrap(), &w1, &loss_w1, &format!("{case:?} d/dw1"));

        let w1_fixed = tensor_of(&w1, &case.w_dims());
        let loss_w2 = |v: &[f64]| scalar(gradient_penalty(&x, &w1_fixed, &tensor_of(v, &second.w_dims()), &r, case.p));
        check_gradient(grads.get(&w2v).unwrap(), &w2, &loss_w2, &format!("{second:?} d/dw2"));
    }
}

/// Gradients of both losses in f32 (the dtype the models train in) agree with the f64 ones.
#[test]
fn f32_gradients_match_f64() {
    for (index, &case) in CASES.iter().enumerate() {
        let seed = 10 * index as u64 + 8;
        let mut per_dtype = Vec::new();
        for dtype in [DType::F64, DType::F32] {
            let x = Var::from_tensor(&random_tensor(&case.x_dims(), seed, dtype)).unwrap();
            let w = Var::from_tensor(&random_tensor(&case.w_dims(), seed + 1, dtype)).unwrap();
            let g = Var::from_tensor(&random_tensor(&case.y_dims(), seed + 2, dtype)).unwrap();
            let ry = random_tensor(&case.y_dims(), seed + 3, dtype);
            let rx = random_tensor(&case.x_dims(), seed + 4, dtype);
            let y = conv2d(&x, &w, case.p).unwrap();
            let dx = conv2d_input_grad(&g, &w, case.p).unwrap();
            let loss = ((y.sqr().unwrap() * &ry).unwrap().sum_all().unwrap()
                + (dx.sqr().unwrap() * &rx).unwrap().sum_all().unwrap())
            .unwrap();
            let grads = loss.backward().unwrap();
            per_dtype.push([
                to_f64_vec(grads.get(&x).unwrap()),
                to_f64_vec(grads.get(&w).unwrap()),
                to_f64_vec(grads.get(&g).unwrap()),
            ]);
        }
        for (name, (expected, actual)) in ["x", "w", "g"].iter().zip(per_dtype[0].iter().zip(&per_dtype[1])) {
            assert_gradients_agree(expected, actual, &format!("{case:?} d/d{name}"));
        }
    }
}

/// Asserts that two gradients agree within 1e-4 of the larger gradient entry (f32 against f64).
fn assert_gradients_agree(expected: &[f64], actual: &[f64], what: &str) {
    assert_eq!(expected.len(), actual.len(), "{what}: length");
    let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let max_error = expected.iter().zip(actual).fold(0.0f64, |m, (e, a)| m.max((e - a).abs()));
    assert!(max_error <= 1e-4 * (1.0 + scale), "{what}: max error {max_error}, scale {scale}");
}

/// The gradient penalty's weight gradients in f32 (the CPU kernels' custom backward passes) agree
/// with the f64 ones (candle's own ops, checked against finite differences above).
#[test]
fn gradient_penalty_f32_matches_f64() {
    let cases = [
        (Case { n: 2, c_in: 3, c_out: 32, h: 40, w: 23, k: 3, p: 1 }, 32),
        (Case { n: 1, c_in: 5, c_out: 17, h: 8, w: 11, k: 3, p: 0 }, 1),
        (Case { n: 4, c_in: 32, c_out: 130, h: 6, w: 5, k: 3, p: 1 }, 3),
        // Wide enough for Winograd's F(2x2, 3x3) in the first layer's forward pass and weight gradient.
        (Case { n: 2, c_in: 64, c_out: 128, h: 15, w: 15, k: 3, p: 1 }, 3),
    ];
    for (index, (case, c_mid)) in cases.into_iter().enumerate() {
        let seed = 200 + 10 * index as u64;
        let second = Case { c_in: case.c_out, c_out: c_mid, h: case.h_out(), w: case.w_out(), ..case };
        let mut per_dtype = Vec::new();
        for dtype in [DType::F64, DType::F32] {
            let x = random_tensor(&case.x_dims(), seed, dtype);
            let w1 = Var::from_tensor(&random_tensor(&case.w_dims(), seed + 1, dtype)).unwrap();
            let w2 = Var::from_tensor(&random_tensor(&second.w_dims(), seed + 2, dtype)).unwrap();
            let r = random_tensor(&second.y_dims(), seed + 3, dtype);
            let grads = gradient_penalty(&x, &w1, &w2, &r, case.p).backward().unwrap();
            per_dtype.push([to_f64_vec(grads.get(&w1).unwrap()), to_f64_vec(grads.get(&w2).unwrap())]);
        }
        assert_gradients_agree(&per_dtype[0][0], &per_dtype[1][0], &format!("{case:?} d/dw1"));
        assert_gradients_agree(&per_dtype[0][1], &per_dtype[1][1], &format!("{second:?} d/dw2"));
    }
}

/// Computes a smooth non-linear loss of a weight gradient: sum(r * dw + dw^2).
fn weight_grad_loss(x: &Tensor, g: &Tensor, r: &Tensor, p: usize) -> Tensor {
    let dw = conv2d_weight_grad(x, g, p).unwrap();
    ((&dw * r).unwrap() + dw.sqr().unwrap()).unwrap().sum_all().unwrap()
}

#[test]
fn weight_grad_gradients_match_finite_differences() {
    for (index, &case) in CASES.iter().enumerate().take(6) {
        let seed = 10 * index as u64 + 9;
        let x = random_values(case.x_dims().iter().product(), seed);
        let g = random_values(case.y_dims().iter().product(), seed + 1);
        let r = tensor_of(&random_values(case.w_dims().iter().product(), seed + 2), &case.w_dims());

        let xv = Var::from_tensor(&tensor_of(&x, &case.x_dims())).unwrap();
        let gv = Var::from_tensor(&tensor_of(&g, &case.y_dims())).unwrap();
        let grads = weight_grad_loss(&xv, &gv, &r, case.p).backward().unwrap();
        let (dx, dg) = (grads.get(&xv).unwrap(), grads.get(&gv).unwrap());

        let g_fixed = tensor_of(&g, &case.y_dims());
        let loss_x = |v: &[f64]| scalar(weight_grad_loss(&tensor_of(v, &case.x_dims()), &g_fixed, &r, case.p));
        check_gradient(dx, &x, &loss_x, &format!("{case:?} d/dx"));

        let x_fixed = tensor_of(&x, &case.x_dims());
        let loss_g = |v: &[f64]| scalar(weight_grad_loss(&x_fixed, &tensor_of(v, &case.y_dims()), &r, case.p));
        check_gradient(dg, &g, &loss_g, &format!("{case:?} d/dg"));
    }
}

#[test]
fn weight_grad_f32_gradients_match_f64() {
    for (index, &case) in CASES.iter().enumerate() {
        let seed = 10 * index as u64 + 2;
        let mut per_dtype = Vec::new();
        for dtype in [DType::F64, DType::F32] {
            let x = Var::from_tensor(&random_tensor(&case.x_dims(), seed, dtype)).unwrap();
            let g = Var::from_tensor(&random_tensor(&case.y_dims(), seed + 1, dtype)).unwrap();
            let r = random_tensor(&case.w_dims(), seed + 2, dtype);
            let grads = weight_grad_loss(&x, &g, &r, case.p).backward().unwrap();
            per_dtype.push([to_f64_vec(grads.get(&x).unwrap()), to_f64_vec(grads.get(&g).unwrap())]);
        }
        assert_gradients_agree(&per_dtype[0][0], &per_dtype[1][0], &format!("{case:?} d/dx"));
        assert_gradients_agree(&per_dtype[0][1], &per_dtype[1][1], &format!("{case:?} d/dg"));
    }
}

#[test]
fn weight_grad_rejects_bad_shapes() {
    let cpu = Device::Cpu;
    let x = Tensor::zeros((2, 3, 8, 8), DType::F32, &cpu).unwrap();
    let bad = [
        ("rank-3 gradient", x.clone(), Tensor::zeros((4, 6, 6), DType::F32, &cpu).unwrap(), 0),
        ("batch mismatch", x.clone(), Tensor::zeros((1, 4, 6, 6), DType::F32, &cpu).unwrap(), 0),
        ("non-square kernel", x.clone(), Tensor::zeros((2, 4, 6, 7), DType::F32, &cpu).unwrap(), 0),
        ("gradient larger than output", x.clone(), Tensor::zeros((2, 4, 11, 11), DType::F32, &cpu).unwrap(), 1),
        ("dtype mismatch", x.clone(), Tensor::zeros((2, 4, 6, 6), DType::F64, &cpu).unwrap(), 0),
    ];
    for (what, input, grad, padding) in bad {
        match conv2d_weight_grad(&input, &grad, padding) {
            Err(Error::InvalidArgument(message)) => {
                assert!(message.contains(&format!("{:?}", grad.dims())), "{what}: {message}")
            }
            other => panic!("{what}: expected InvalidArgument, got {other:?}"),
        }
    }
}

#[test]
fn thread_count_does_not_change_results() {
    let case = Case { n: 2, c_in: 17, c_out: 32, h: 37, w: 29, k: 3, p: 1 };
    let x = random_tensor(&case.x_dims(), 1, DType::F32);
    let w = random_tensor(&case.w_dims(), 2, DType::F32);
    let g = random_tensor(&case.y_dims(), 3, DType::F32);
    let mut outputs = Vec::new();
    // 64 is capped at the size of candle's thread pool.
    for threads in [1, 2, 0, 64] {
        set_num_threads(threads);
        let xv = Var::from_tensor(&x).unwrap();
        let wv = Var::from_tensor(&w).unwrap();
        let y = conv2d(&xv, &wv, case.p).unwrap();
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        outputs.push([to_f64_vec(&y), to_f64_vec(grads.get(&xv).unwrap()), to_f64_vec(grads.get(&wv).unwrap())]);
    }
    set_num_threads(0);
    for (threads, output) in [2, 0, 64].iter().zip(&outputs[1..]) {
        for (name, (a, b)) in ["y", "dx", "dw"].iter().zip(outputs[0].iter().zip(output)) {
            // Partial sums are added in a different order, so f32 rounding differs slightly.
            assert_close(a, b, 1e-4, &format!("{name} with {threads} threads vs 1"));
        }
    }
}

#[test]
fn conv2d_rejects_bad_shapes() {
    let cpu = Device::Cpu;
    let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &cpu).unwrap();
    let bad = [
        (
            "rank-3 input",
            Tensor::zeros((3, 8, 8), DType::F32, &cpu).unwrap(),
            Tensor::zeros((4, 3, 3, 3), DType::F32, &cpu).unwrap(),
            0,
        ),
        ("channel mismatch", x.clone(), Tensor::zeros((4, 2, 3, 3), DType::F32, &cpu).unwrap(), 0),
        ("non-square kernel", x.clone(), Tensor::zeros((4, 3, 3, 1), DType::F32, &cpu).unwrap(), 0),
        ("rank-3 kernel", x.clone(), Tensor::zeros((4, 3, 3), DType::F32, &cpu).unwrap(), 0),
        ("kernel larger than input", x.clone(), Tensor::zeros((4, 3, 9, 9), DType::F32, &cpu).unwrap(), 0),
        ("dtype mismatch", x.clone(), Tensor::zeros((4, 3, 3, 3), DType::F64, &cpu).unwrap(), 1),
    ];
    for (what, input, kernel, padding) in bad {
        match conv2d(&input, &kernel, padding) {
            Err(Error::InvalidArgument(message)) => {
                assert!(
                    message.contains(&format!("{:?}", kernel.dims()))
                        || message.contains(&format!("{:?}", input.dims())),
                    "{what}: {message}"
                )
            }
            other => panic!("{what}: expected InvalidArgument, got {other:?}"),
        }
    }
}

#[test]
fn input_grad_rejects_bad_shapes() {
    let cpu = Device::Cpu;
    let g = Tensor::zeros((1, 4, 6, 6), DType::F32, &cpu).unwrap();
    let bad = [
        (
            "rank-2 gradient",
            Tensor::zeros((4, 6), DType::F32, &cpu).unwrap(),
            Tensor::zeros((4, 3, 3, 3), DType::F32, &cpu).unwrap(),
            0,
        ),
        ("channel mismatch", g.clone(), Tensor::zeros((5, 3, 3, 3), DType::F32, &cpu).unwrap(), 0),
        (
            "empty output",
            Tensor::zeros((1, 4, 1, 1), DType::F32, &cpu).unwrap(),
            Tensor::zeros((4, 3, 3, 3), DType::F32, &cpu).unwrap(),
            2,
        ),
        ("dtype mismatch", g.clone(), Tensor::zeros((4, 3, 3, 3), DType::F64, &cpu).unwrap(), 1),
    ];
    for (what, grad, kernel, padding) in bad {
        match conv2d_input_grad(&grad, &kernel, padding) {
            Err(Error::InvalidArgument(message)) => {
                assert!(
                    message.contains(&format!("{:?}", kernel.dims()))
                        || message.contains(&format!("{:?}", grad.dims())),
                    "{what}: {message}"
                )
            }
            other => panic!("{what}: expected InvalidArgument, got {other:?}"),
        }
    }
}

/// Checks that inputs with no columns or no rows, which padding turns into non-empty outputs, give
/// all-zero results of the right shape. The cases reach Winograd (64 tiles and wide channels), the
/// direct AVX-512 weight gradient (one input channel) and the im2col path (127 output channels).
#[test]
fn empty_inputs_give_zero_results() {
    let cpu = Device::Cpu;
    let zeros = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &cpu).unwrap();
    let ones = |dims: &[usize]| Tensor::ones(dims, DType::F32, &cpu).unwrap();
    let all_zero = |t: &Tensor, context: &str| {
        let values = to_f64_vec(t);
        assert!(!values.is_empty(), "{context}: empty result");
        assert!(values.iter().all(|&v| v == 0.0), "{context}: non-zero values");
    };
    // (batch, c_in, c_out, input height, input width) with padding 2: the outputs are (h + 2) × (w + 2).
    let cases = [(1, 64, 128, 126, 0), (1, 64, 128, 0, 126), (1, 1, 8, 5, 0), (1, 8, 127, 126, 0)];
    for (n, c_in, c_out, h, w) in cases {
        let case_name = format!("{c_in} -> {c_out} channels, {h}x{w} input, padding 2");
        let y = conv2d(&zeros(&[n, c_in, h, w]), &ones(&[c_out, c_in, 3, 3]), 2).unwrap();
        assert_eq!(y.dims(), [n, c_out, h + 2, w + 2], "{case_name}: output shape");
        all_zero(&y, &format!("{case_name}, conv2d"));

        let dw = conv2d_weight_grad(&zeros(&[n, c_in, h, w]), &ones(&[n, c_out, h + 2, w + 2]), 2).unwrap();
        assert_eq!(dw.dims(), [c_out, c_in, 3, 3], "{case_name}: weight gradient shape");
        all_zero(&dw, &format!("{case_name}, weight gradient"));

        // The transposed direction: an empty gradient into a layer with padding 0 fills a larger input.
        let dx = conv2d_input_grad(&zeros(&[n, c_in, h, w]), &ones(&[c_in, c_out, 3, 3]), 0).unwrap();
        assert_eq!(dx.dims(), [n, c_out, h + 2, w + 2], "{case_name}: input gradient shape");
        all_zero(&dx, &format!("{case_name}, input gradient"));
    }

    // A convolution after those still works (a panic inside a task would poison the thread pool).
    let y = conv2d(&ones(&[1, 64, 16, 16]), &ones(&[128, 64, 3, 3]), 1).unwrap();
    assert_eq!(to_f64_vec(&y)[16 * 16 + 16 + 1], 64.0 * 9.0, "interior value after the empty inputs");
}

/// Leaky ReLU of `value` with negative slope `slope`, in f64.
fn leaky(value: f64, slope: f64) -> f64 {
    if value > 0.0 {
        value
    } else {
        slope * value
    }
}

/// Cases of `conv2d_bias_leaky_relu`. The first four run as an implicit GEMM that applies the bias and
/// activation to its register blocks: a partial last panel, partial blocks of 6 pixels, a depth of two
/// chunks, no padding. The last one runs on the direct kernel, followed by the separate activation pass.
const FUSED_CASES: &[Case] = &[
    Case { n: 2, c_in: 20, c_out: 130, h: 3, w: 67, k: 3, p: 1 },
    Case { n: 1, c_in: 24, c_out: 70, h: 3, w: 65, k: 3, p: 1 },
    Case { n: 1, c_in: 120, c_out: 130, h: 2, w: 64, k: 3, p: 1 },
    Case { n: 1, c_in: 16, c_out: 200, h: 4, w: 70, k: 3, p: 0 },
    Case { n: 2, c_in: 5, c_out: 17, h: 11, w: 6, k: 3, p: 1 },
];

#[test]
fn bias_leaky_relu_fusion_matches_reference() {
    for (index, &case) in FUSED_CASES.iter().enumerate() {
        for slope in [0.0, 0.2, 1.0] {
            let seed = 10 * index as u64 + 700;
            let x = random_tensor(&case.x_dims(), seed, DType::F32);
            let w = random_tensor(&case.w_dims(), seed + 1, DType::F32);
            let bias = random_tensor(&[case.c_out], seed + 2, DType::F32);
            let fused = conv2d_bias_leaky_relu(&x, &w, &bias, case.p, slope).unwrap();
            assert_eq!(fused.dims(), case.y_dims(), "{case:?} output shape");

            let (b, plane) = (to_f64_vec(&bias), case.h_out() * case.w_out());
            let expected: Vec<f64> = reference_conv2d(&to_f64_vec(&x), &to_f64_vec(&w), case)
                .iter()
                .enumerate()
                .map(|(i, &value)| leaky(value + b[i / plane % case.c_out], slope))
                .collect();
            let tol = f32_tolerance(case.c_in * case.k * case.k);
            assert_close(&to_f64_vec(&fused), &expected, tol, &format!("{case:?} slope {slope}"));

            // Same f32 sums in the same order, then the same bias and max: equal value for value.
            let composed = bias_leaky_relu(&conv2d(&x, &w, case.p).unwrap(), &bias, slope, 1.0).unwrap();
            assert_eq!(to_f64_vec(&fused), to_f64_vec(&composed), "{case:?} slope {slope}: fused against composed");
        }
    }
}

/// Computes the smooth loss sum(r * y + y^2 / 2) of `conv2d_bias_leaky_relu`, or of `conv2d` and
/// `bias_leaky_relu` when `fused` is false.
fn fused_loss(x: &Tensor, w: &Tensor, bias: &Tensor, r: &Tensor, p: usize, slope: f64, fused: bool) -> Tensor {
    let y = if fused {
        conv2d_bias_leaky_relu(x, w, bias, p, slope).unwrap()
    } else {
        bias_leaky_relu(&conv2d(x, w, p).unwrap(), bias, slope, 1.0).unwrap()
    };
    ((&y * r).unwrap() + (y.sqr().unwrap() * 0.5).unwrap()).unwrap().sum_all().unwrap()
}

/// The fused op's gradients in f32 agree with those of the composed ops in f64 (candle's own ops there).
#[test]
fn bias_leaky_relu_fusion_gradients_match_f64() {
    for (index, &case) in FUSED_CASES.iter().enumerate() {
        for slope in [0.0, 0.2] {
            let seed = 10 * index as u64 + 800;
            let mut per_dtype = Vec::new();
            for dtype in [DType::F64, DType::F32] {
                let x = Var::from_tensor(&random_tensor(&case.x_dims(), seed, dtype)).unwrap();
                let w = Var::from_tensor(&random_tensor(&case.w_dims(), seed + 1, dtype)).unwrap();
                let bias = Var::from_tensor(&random_tensor(&[case.c_out], seed + 2, dtype)).unwrap();
                let r = random_tensor(&case.y_dims(), seed + 3, dtype);
                let fused = dtype == DType::F32;
                let grads = fused_loss(&x, &w, &bias, &r, case.p, slope, fused).backward().unwrap();
                per_dtype.push([&x, &w, &bias].map(|var| to_f64_vec(grads.get(var).unwrap())));
            }
            for (name, (expected, actual)) in ["x", "w", "bias"].iter().zip(per_dtype[0].iter().zip(&per_dtype[1])) {
                assert_gradients_agree(expected, actual, &format!("{case:?} slope {slope} d/d{name}"));
            }
        }
    }
}

/// Infinite and NaN outputs of the convolution go through the fused activation as through
/// `bias_leaky_relu`: with slope 0, leaky_relu(+inf) is +inf, not 0 · inf = NaN.
#[test]
fn bias_leaky_relu_fusion_keeps_non_finite_values() {
    let case = FUSED_CASES[0];
    let mut x = random_values(case.x_dims().iter().product(), 900);
    x[40] = f64::INFINITY;
    x[200] = f64::NEG_INFINITY;
    x[300] = f64::NAN;
    let x = tensor_of(&x, &case.x_dims()).to_dtype(DType::F32).unwrap();
    let w = random_tensor(&case.w_dims(), 901, DType::F32);
    let bias = random_tensor(&[case.c_out], 902, DType::F32);
    for slope in [0.0, 0.2] {
        let fused = to_f64_vec(&conv2d_bias_leaky_relu(&x, &w, &bias, case.p, slope).unwrap());
        let composed = to_f64_vec(&bias_leaky_relu(&conv2d(&x, &w, case.p).unwrap(), &bias, slope, 1.0).unwrap());
        assert!(composed.iter().any(|v| v.is_infinite()), "the case needs infinite outputs");
        assert!(composed.iter().any(|v| v.is_nan()), "the case needs NaN outputs");
        for (i, (f, c)) in fused.iter().zip(&composed).enumerate() {
            assert!(f == c || (f.is_nan() && c.is_nan()), "slope {slope}, element {i}: fused {f}, composed {c}");
        }
    }
}

#[test]
fn bias_leaky_relu_fusion_rejects_bad_arguments() {
    let case = FUSED_CASES[0];
    let x = random_tensor(&case.x_dims(), 1, DType::F32);
    let w = random_tensor(&case.w_dims(), 2, DType::F32);
    let bias = random_tensor(&[case.c_out], 3, DType::F32);

    let short_bias = random_tensor(&[case.c_out - 1], 4, DType::F32);
    let error = conv2d_bias_leaky_relu(&x, &w, &short_bias, case.p, 0.2).unwrap_err().to_string();
    assert!(error.contains("[129]"), "{error}");
    assert!(error.contains("expected (130)"), "{error}");

    let f64_bias = bias.to_dtype(DType::F64).unwrap();
    let error = conv2d_bias_leaky_relu(&x, &w, &f64_bias, case.p, 0.2).unwrap_err().to_string();
    assert!(error.contains("bias [130] (F64"), "{error}");

    for slope in [-0.1, 1.5, f64::NAN] {
        let error = conv2d_bias_leaky_relu(&x, &w, &bias, case.p, slope).unwrap_err().to_string();
        assert!(error.contains("slope in [0, 1]"), "slope {slope}: {error}");
    }

    let error = conv2d_bias_leaky_relu(&x.narrow(1, 0, 19).unwrap(), &w, &bias, case.p, 0.2).unwrap_err();
    assert!(error.to_string().contains("19 channels"), "{error}");
}
