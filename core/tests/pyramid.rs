//! Pyramid planning and the OpenCV-exact `uint8` resize, checked against the reference vectors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use pegan_core::pyramid::{resize_linear_u8, PyramidConfig, ScalePyramid};
use serde::Deserialize;

/// Balloons image of the reference vectors: 186 × 248 (height × width).
const BALLOONS_HW: (usize, usize) = (186, 248);

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data")
}

fn config(min_size: usize, max_size: usize) -> PyramidConfig {
    PyramidConfig {
        min_size,
        max_size,
        scale_factor_init: 0.75,
        resize_to_max_size: false,
    }
}

#[derive(Deserialize)]
struct PyramidCase {
    min_size: usize,
    max_size: usize,
    scale_factor_init: f64,
    scale_factor: f64,
    stop_scale: usize,
    sizes_hw: Vec<(usize, usize)>,
}

#[derive(Deserialize)]
struct PyramidVectors {
    per_config: HashMap<String, PyramidCase>,
    small_tier: PyramidCase,
}

fn read_vectors() -> PyramidVectors {
    let path = data_dir().join("vectors/singan/pyramid.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("pyramid.json does not match the expected layout")
}

fn case_config(case: &PyramidCase) -> PyramidConfig {
    PyramidConfig {
        min_size: case.min_size,
        max_size: case.max_size,
        scale_factor_init: case.scale_factor_init,
        resize_to_max_size: false,
    }
}

fn assert_plan_matches(name: &str, plan: &ScalePyramid, case: &PyramidCase) {
    assert_eq!(plan.num_scales, case.stop_scale, "{name}: num_scales");
    assert!(
        (plan.scale_factor - case.scale_factor).abs() <= 1e-15,
        "{name}: scale factor {} differs from the reference {}",
        plan.scale_factor,
        case.scale_factor
    );
    assert_eq!(plan.sizes, case.sizes_hw, "{name}: stage sizes");
}

/// Reads the small-tier levels `s0 ..= s5` as (height, width, HWC bytes).
fn read_small_tier_levels() -> Vec<(usize, usize, Vec<u8>)> {
    let path = data_dir().join("vectors/singan/pyramid_small_bgr_uint8.npz");
    let members: HashMap<String, Tensor> = Tensor::read_npz(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .into_iter()
        .collect();
    (0..=5)
        .map(|stage| {
            let tensor = &members[&format!("s{stage}")];
            let (height, width, channels) = tensor.dims3().expect("levels are HWC");
            assert_eq!(channels, 3, "s{stage} channel count");
            let bytes = tensor
                .flatten_all()
                .and_then(|t| t.to_vec1::<u8>())
                .expect("levels are uint8");
            (height, width, bytes)
        })
        .collect()
}

#[test]
fn plan_matches_every_reference_config() {
    let vectors = read_vectors();
    assert_eq!(vectors.per_config.len(), 7, "pyramid.json lists seven configs");
    for (name, case) in &vectors.per_config {
        let plan = ScalePyramid::plan(BALLOONS_HW.0, BALLOONS_HW.1, &case_config(case)).unwrap();
        assert_plan_matches(name, &plan, case);
    }
}

#[test]
fn plan_balloons_has_nine_stages() {
    let plan = ScalePyramid::plan(186, 248, &config(25, 250)).unwrap();
    assert_eq!(plan.num_scales, 8);
    assert_eq!(plan.sizes.len(), 9);
    assert_eq!(plan.scale_factor, 0.7781321924164794);
}

#[test]
fn plan_matches_worked_example_table() {
    // (f_s rounded to 6 digits, H_s, W_s) from the balloons worked example of the reference specification.
    let table = [
        (0.134409, 25, 33),
        (0.172732, 32, 43),
        (0.221983, 41, 55),
        (0.285277, 53, 71),
        (0.366618, 68, 91),
        (0.471151, 88, 117),
        (0.605490, 113, 150),
        (0.778132, 145, 193),
        (1.000000, 186, 248),
    ];
    let plan = ScalePyramid::plan(186, 248, &config(25, 250)).unwrap();
    for (stage, &(factor, height, width)) in table.iter().enumerate() {
        let planned = plan.scale_factor.powi((plan.num_scales - stage) as i32);
        assert!(
            (planned - factor).abs() < 5e-7,
            "stage {stage}: factor {planned}, table {factor}"
        );
        assert_eq!(plan.sizes[stage], (height, width), "stage {stage} size");
    }
}

#[test]
fn plan_reproduces_max_size_quirk() {
    // 375 × 500 (height × width) with max_size 250: n_raw 11, scale2stop 3, so S = 8; scale1 = 0.5 gives
    // sf = (25 / 188)^(1/8), yet the stages are cut from the full-size image.
    let plan = ScalePyramid::plan(375, 500, &config(25, 250)).unwrap();
    assert_eq!(plan.num_scales, 8);
    assert!(
        (plan.scale_factor - 0.777093).abs() < 5e-7,
        "scale factor {}",
        plan.scale_factor
    );
    assert_eq!(plan.scale_factor, (25.0f64 / 188.0).powf(1.0 / 8.0));
    assert_eq!(plan.sizes.first(), Some(&(50, 66)));
    assert_eq!(plan.sizes.last(), Some(&(375, 500)));
}

#[test]
fn small_tier_levels_are_bit_exact() {
    let vectors = read_vectors();
    let levels = read_small_tier_levels();
    let (height, width, image) = &levels[5];
    assert_eq!((*height, *width), (68, 91), "s5 is the input image");

    let plan = ScalePyramid::plan(*height, *width, &case_config(&vectors.small_tier)).unwrap();
    assert_plan_matches("small_tier", &plan, &vectors.small_tier);

    let built = plan.build_levels(image, *height, *width);
    assert_eq!(built.len(), 6);
    for (stage, (expected, actual)) in levels.iter().zip(&built).enumerate() {
        let (expected_height, expected_width, expected_bytes) = expected;
        assert_eq!(plan.sizes[stage], (*expected_height, *expected_width), "s{stage} size");
        let mismatches: Vec<usize> = (0..expected_bytes.len())
            .filter(|&i| expected_bytes[i] != actual[i])
            .collect();
        assert!(
            mismatches.is_empty(),
            "s{stage}: {} of {} values differ, first at flat indices {:?}",
            mismatches.len(),
            expected_bytes.len(),
            &mismatches[..mismatches.len().min(10)]
        );
    }
}

#[test]
fn plan_every_sample_image() {
    let dir = data_dir().join("singan");
    let mut planned = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("png") {
            continue;
        }
        let (width, height) = image::image_dimensions(&path).unwrap();
        let (height, width) = (height as usize, width as usize);
        for cfg in [config(25, 250), config(25, 500)] {
            let plan = ScalePyramid::plan(height, width, &cfg).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(plan.sizes.len() >= 2, "{}: {} stages", path.display(), plan.sizes.len());
            assert_eq!(plan.sizes.len(), plan.num_scales + 1, "{}", path.display());
            assert_eq!(
                plan.sizes.last(),
                Some(&(height, width)),
                "{}: finest stage",
                path.display()
            );
            for pair in plan.sizes.windows(2) {
                assert!(pair[0].0 <= pair[1].0, "{}: heights {pair:?}", path.display());
                assert!(pair[0].1 <= pair[1].1, "{}: widths {pair:?}", path.display());
            }
            let coarsest_short = plan.sizes[0].0.min(plan.sizes[0].1);
            assert!(
                coarsest_short >= cfg.min_size,
                "{}: coarsest {:?}",
                path.display(),
                plan.sizes[0]
            );
        }
        planned += 1;
    }
    assert!(
        planned >= 10,
        "expected the sample images in {}, found {planned}",
        dir.display()
    );
}

#[test]
fn plan_rejects_short_side_below_min_size() {
    let error = ScalePyramid::plan(20, 300, &config(25, 250)).unwrap_err().to_string();
    assert!(error.contains("20 × 300"), "{error}");
    assert!(error.contains("min_size 25"), "{error}");
}

#[test]
fn plan_rejects_elongated_image() {
    let error = ScalePyramid::plan(25, 1000, &config(25, 250)).unwrap_err().to_string();
    assert!(error.contains("25 × 1000"), "{error}");
    assert!(error.contains("max_size"), "{error}");
}

#[test]
fn plan_rejects_zero_size() {
    assert!(ScalePyramid::plan(0, 100, &config(25, 250)).is_err());
}

#[test]
fn plan_rejects_invalid_config() {
    let bad = PyramidConfig {
        min_size: 25,
        max_size: 250,
        scale_factor_init: 1.5,
        resize_to_max_size: false,
    };
    assert!(ScalePyramid::plan(186, 248, &bad).is_err());
}

#[test]
fn plan_short_side_equal_to_min_size() {
    // ceil(0) + 1 = 1 stage to shrink, so S = 1 and both stages keep the original size.
    let plan = ScalePyramid::plan(25, 40, &config(25, 250)).unwrap();
    assert_eq!(plan.num_scales, 1);
    assert_eq!(plan.sizes, vec![(25, 40), (25, 40)]);
}

#[test]
#[should_panic(expected = "image buffer has")]
fn build_levels_panics_on_short_buffer() {
    let plan = ScalePyramid::plan(68, 91, &config(25, 250)).unwrap();
    let image = vec![0u8; 68 * 91 * 3 - 1];
    plan.build_levels(&image, 68, 91);
}

#[test]
fn resize_u8_same_size_is_copy() {
    let image: Vec<u8> = (0..5 * 7 * 3).map(|v| (v * 37 % 256) as u8).collect();
    assert_eq!(resize_linear_u8(&image, 5, 7, 3, 5, 7), image);
}

#[test]
fn resize_u8_halving_is_box_average() {
    // At exactly half size every output pixel sits between four input pixels with weights 1/4.
    let (height, width, channels) = (6, 10, 3);
    let image: Vec<u8> = (0..height * width * channels)
        .map(|v| ((v * 97 + 13) % 256) as u8)
        .collect();
    let out = resize_linear_u8(&image, height, width, channels, height / 2, width / 2);
    let pixel = |y: usize, x: usize, c: usize| u32::from(image[(y * width + x) * channels + c]);
    for y in 0..height / 2 {
        for x in 0..width / 2 {
            for c in 0..channels {
                let sum = pixel(2 * y, 2 * x, c)
                    + pixel(2 * y, 2 * x + 1, c)
                    + pixel(2 * y + 1, 2 * x, c)
                    + pixel(2 * y + 1, 2 * x + 1, c);
                let expected = ((sum + 2) >> 2) as u8;
                assert_eq!(
                    out[(y * (width / 2) + x) * channels + c],
                    expected,
                    "pixel ({y}, {x}, {c})"
                );
            }
        }
    }
}

#[test]
fn resize_u8_constant_image_stays_constant() {
    let image = vec![201u8; 17 * 23];
    let out = resize_linear_u8(&image, 17, 23, 1, 9, 11);
    assert!(out.iter().all(|&v| v == 201), "{out:?}");
}

#[test]
fn resize_u8_zero_output_is_empty() {
    assert!(resize_linear_u8(&[7; 12], 2, 2, 3, 0, 1).is_empty());
}

#[test]
#[should_panic(expected = "image buffer has 10 bytes")]
fn resize_u8_panics_on_wrong_buffer_length() {
    resize_linear_u8(&[0; 10], 2, 2, 3, 1, 1);
}
