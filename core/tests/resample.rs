//! `resize` against a per-pixel evaluation of PyTorch's interpolation formulas, and its gradient against finite
//! differences.

use candle_core::{DType, Device, Tensor, Var};
use pegan_core::resample::{interpolation_matrix, resize, ResizeKernel};

const KERNELS: [ResizeKernel; 5] = [
    ResizeKernel::Nearest,
    ResizeKernel::Bilinear { align_corners: false },
    ResizeKernel::Bilinear { align_corners: true },
    ResizeKernel::Bicubic { align_corners: false },
    ResizeKernel::Bicubic { align_corners: true },
];

/// (input length, output length) pairs: up, down, equal, odd, and length 1 on either side.
const LENGTHS: [(usize, usize); 12] = [
    (5, 9),
    (9, 5),
    (7, 7),
    (1, 4),
    (4, 1),
    (1, 1),
    (6, 13),
    (13, 6),
    (25, 33),
    (33, 25),
    (2, 1),
    (3, 10),
];

/// Deterministic values in [-1, 1) from a linear congruential generator.
fn pseudo_random(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Keys cubic convolution kernel with A = -0.75, written piecewise in |x|.
fn keys_cubic(x: f64) -> f64 {
    let a = -0.75;
    let x = x.abs();
    if x <= 1.0 {
        (a + 2.0) * x.powi(3) - (a + 3.0) * x.powi(2) + 1.0
    } else if x < 2.0 {
        a * x.powi(3) - 5.0 * a * x.powi(2) + 8.0 * a * x - 4.0 * a
    } else {
        0.0
    }
}

/// Source taps (index, weight) of one output sample, evaluated directly from PyTorch's documented rules.
fn taps(dst: usize, in_len: usize, out_len: usize, kernel: ResizeKernel) -> Vec<(usize, f64)> {
    let last = in_len as i64 - 1;
    let clamp = |i: i64| i.clamp(0, last) as usize;
    let source = |align_corners: bool| -> f64 {
        if align_corners {
            if out_len == 1 {
                0.0
            } else {
                dst as f64 * (in_len - 1) as f64 / (out_len - 1) as f64
            }
        } else {
            (dst as f64 + 0.5) * in_len as f64 / out_len as f64 - 0.5
        }
    };
    match kernel {
        ResizeKernel::Nearest => {
            let scale = in_len as f32 / out_len as f32;
            vec![(((dst as f32 * scale).floor() as usize).min(in_len - 1), 1.0)]
        }
        ResizeKernel::Bilinear { align_corners } => {
            let src = source(align_corners).max(0.0);
            let left = src.floor() as i64;
            let fraction = src - left as f64;
            vec![(clamp(left), 1.0 - fraction), (clamp(left + 1), fraction)]
        }
        ResizeKernel::Bicubic { align_corners } => {
            let src = source(align_corners);
            let left = src.floor() as i64;
            let t = src - left as f64;
            vec![
                (clamp(left - 1), keys_cubic(t + 1.0)),
                (clamp(left), keys_cubic(t)),
                (clamp(left + 1), keys_cubic(1.0 - t)),
                (clamp(left + 2), keys_cubic(2.0 - t)),
            ]
        }
    }
}

/// Resizes one row-major plane pixel by pixel in float64.
fn reference_plane(plane: &[f32], h: usize, w: usize, out_h: usize, out_w: usize, kernel: ResizeKernel) -> Vec<f64> {
    let mut out = Vec::with_capacity(out_h * out_w);
    for oy in 0..out_h {
        let rows = taps(oy, h, out_h, kernel);
        for ox in 0..out_w {
            let columns = taps(ox, w, out_w, kernel);
            let mut value = 0.0;
            for &(iy, wy) in &rows {
                for &(ix, wx) in &columns {
                    value += wy * wx * f64::from(plane[iy * w + ix]);
                }
            }
            out.push(value);
        }
    }
    out
}

fn max_abs_difference(actual: &[f32], expected: &[f64]) -> f64 {
    actual
        .iter()
        .zip(expected)
        .map(|(&a, &e)| (f64::from(a) - e).abs())
        .fold(0.0, f64::max)
}

#[test]
fn resize_matches_per_pixel_formula() {
    let device = Device::Cpu;
    for kernel in KERNELS {
        for (case, &(h, out_h)) in LENGTHS.iter().enumerate() {
            // Pair each height change with a different width change so both axes see every case.
            let (w, out_w) = LENGTHS[(case + 5) % LENGTHS.len()];
            let (n, c) = (2, 3);
            let values = pseudo_random(n * c * h * w, case as u64);
            let x = Tensor::from_vec(values.clone(), (n, c, h, w), &device).unwrap();
            let y = resize(&x, out_h, out_w, kernel).unwrap();
            assert_eq!(y.dims(), &[n, c, out_h, out_w], "{kernel:?} {h}x{w} -> {out_h}x{out_w}");

            let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (index, (plane, out_plane)) in values
                .chunks_exact(h * w)
                .zip(y.chunks_exact(out_h * out_w))
                .enumerate()
            {
                let expected = reference_plane(plane, h, w, out_h, out_w, kernel);
                let error = max_abs_difference(out_plane, &expected);
                assert!(
                    error < 1e-5,
                    "{kernel:?} {h}x{w} -> {out_h}x{out_w}, plane {index}: max error {error}"
                );
            }
        }
    }
}

#[test]
fn nearest_matrix_matches_pytorch_indices() {
    // F.interpolate(mode='nearest') from 3 to 5 samples reads 0, 0, 1, 1, 2 (scale 0.6 in float32).
    let matrix = interpolation_matrix(3, 5, ResizeKernel::Nearest);
    let sources: Vec<usize> = matrix
        .chunks_exact(3)
        .map(|row| row.iter().position(|&v| v == 1.0).unwrap())
        .collect();
    assert_eq!(sources, vec![0, 0, 1, 1, 2]);
}

#[test]
fn bilinear_half_pixel_clamps_borders() {
    // Half-pixel bilinear from 2 to 4 samples: coordinates -0.25 (clamped to 0), 0.25, 0.75, 1.25 (last pixel).
    let matrix = interpolation_matrix(2, 4, ResizeKernel::Bilinear { align_corners: false });
    assert_eq!(matrix, vec![1.0, 0.0, 0.75, 0.25, 0.25, 0.75, 0.0, 1.0]);
}

#[test]
fn bicubic_align_corners_keeps_endpoints() {
    let matrix = interpolation_matrix(6, 11, ResizeKernel::Bicubic { align_corners: true });
    assert_eq!(&matrix[..6], &[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(&matrix[10 * 6..], &[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
}

#[test]
fn matrix_rows_sum_to_one() {
    for kernel in KERNELS {
        for &(in_len, out_len) in &LENGTHS {
            let matrix = interpolation_matrix(in_len, out_len, kernel);
            assert_eq!(matrix.len(), in_len * out_len);
            for (row, weights) in matrix.chunks_exact(in_len).enumerate() {
                let sum: f32 = weights.iter().sum();
                assert!(
                    (sum - 1.0).abs() < 1e-6,
                    "{kernel:?} {in_len} -> {out_len}, row {row}: sum {sum}"
                );
            }
        }
    }
}

#[test]
fn resize_same_size_is_exact_copy() {
    let x = Tensor::from_vec(pseudo_random(2 * 9 * 11, 3), (1, 2, 9, 11), &Device::Cpu).unwrap();
    for kernel in [ResizeKernel::Nearest, ResizeKernel::Bicubic { align_corners: true }] {
        let y = resize(&x, 9, 11, kernel).unwrap();
        let difference = (y - &x)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(difference, 0.0, "{kernel:?}");
    }
}

#[test]
fn resize_non_contiguous_input() {
    let x = Tensor::from_vec(pseudo_random(3 * 7 * 5, 4), (1, 3, 7, 5), &Device::Cpu).unwrap();
    let transposed = x.transpose(2, 3).unwrap();
    let kernel = ResizeKernel::Bicubic { align_corners: true };
    let from_view = resize(&transposed, 4, 10, kernel).unwrap();
    let from_copy = resize(&transposed.contiguous().unwrap(), 4, 10, kernel).unwrap();
    let difference = (from_view - from_copy)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(difference, 0.0);
}

#[test]
fn resize_keeps_float64() {
    let x = Tensor::from_vec(vec![0.0f64, 1.0, 2.0, 3.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
    let y = resize(&x, 3, 3, ResizeKernel::Bilinear { align_corners: true }).unwrap();
    assert_eq!(y.dtype(), DType::F64);
    let values = y.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(values, vec![0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0]);
}

#[test]
fn resize_rejects_bad_input() {
    let device = Device::Cpu;
    let kernel = ResizeKernel::Nearest;
    let rank3 = Tensor::zeros((3, 4, 4), DType::F32, &device).unwrap();
    let error = resize(&rank3, 2, 2, kernel).unwrap_err().to_string();
    assert!(error.contains("rank 4"), "{error}");

    let image = Tensor::zeros((1, 3, 4, 4), DType::F32, &device).unwrap();
    let error = resize(&image, 0, 2, kernel).unwrap_err().to_string();
    assert!(error.contains("0 × 2"), "{error}");

    let empty = Tensor::zeros((1, 3, 0, 4), DType::F32, &device).unwrap();
    assert!(resize(&empty, 2, 2, kernel).is_err());

    let integers = Tensor::zeros((1, 3, 4, 4), DType::U8, &device).unwrap();
    let error = resize(&integers, 2, 2, kernel).unwrap_err().to_string();
    assert!(error.contains("floating-point"), "{error}");
}

/// Sum of `resize(x) · r` for plain values, used for finite differences.
fn weighted_sum(
    x: &[f64],
    shape: (usize, usize, usize, usize),
    out: (usize, usize),
    r: &Tensor,
    kernel: ResizeKernel,
) -> f64 {
    let x = Tensor::from_vec(x.to_vec(), shape, &Device::Cpu).unwrap();
    resize(&x, out.0, out.1, kernel)
        .unwrap()
        .mul(r)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn resize_gradient_matches_finite_differences() {
    let device = Device::Cpu;
    let shape = (2, 2, 5, 7);
    let out = (8, 4);
    let count = shape.0 * shape.1 * shape.2 * shape.3;
    let x_values: Vec<f64> = pseudo_random(count, 11).into_iter().map(f64::from).collect();
    let r_values: Vec<f64> = pseudo_random(shape.0 * shape.1 * out.0 * out.1, 12)
        .into_iter()
        .map(f64::from)
        .collect();
    let r = Tensor::from_vec(r_values, (shape.0, shape.1, out.0, out.1), &device).unwrap();

    for kernel in KERNELS {
        let x = Var::from_tensor(&Tensor::from_vec(x_values.clone(), shape, &device).unwrap()).unwrap();
        let loss = resize(x.as_tensor(), out.0, out.1, kernel)
            .unwrap()
            .mul(&r)
            .unwrap()
            .sum_all()
            .unwrap();
        let gradients = loss.backward().unwrap();
        let gradient = gradients.get(x.as_tensor()).expect("x has a gradient");
        let gradient = gradient.flatten_all().unwrap().to_vec1::<f64>().unwrap();

        let step = 1e-3;
        for index in 0..count {
            let mut plus = x_values.clone();
            plus[index] += step;
            let mut minus = x_values.clone();
            minus[index] -= step;
            let numeric = (weighted_sum(&plus, shape, out, &r, kernel) - weighted_sum(&minus, shape, out, &r, kernel))
                / (2.0 * step);
            assert!(
                (numeric - gradient[index]).abs() < 1e-8,
                "{kernel:?}, element {index}: autograd {} vs finite difference {numeric}",
                gradient[index]
            );
        }
    }
}
