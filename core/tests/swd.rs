//! Sliced Wasserstein distance: hand-checked 1-D and 2-D cases, the Laplacian pyramid, the invariances
//! of the multi-scale metric, its response to blur and colour changes, and bad input.

use pegan_core::image::LoadedImage;
use pegan_core::metrics::swd::{
    laplacian_pyramid, level_sizes, sliced_distance, sliced_wasserstein, sliced_wasserstein_folders, wasserstein_1d,
    DescriptorNormalization, ImagePlanes, SwdConfig, SwdReport,
};
use pegan_core::rng::SeededRng;

/// SplitMix64, for test images that do not depend on the library's random streams.
struct TestRng(u64);

impl TestRng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn image_from_fn(width: usize, height: usize, mut pixel: impl FnMut(usize, usize, usize) -> f64) -> LoadedImage {
    let mut bgr = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            for channel in 0..3 {
                bgr.push(pixel(x, y, channel).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    LoadedImage { width, height, bgr, alpha: None, source_channels: 3, source_bit_depth: 8 }
}

/// Images of one texture family, 32 × 32 pixels: a plane wave with a random phase per image plus
/// independent pixel noise.
fn texture_set(count: usize, seed: u64) -> Vec<LoadedImage> {
    let mut rng = TestRng(seed);
    (0..count)
        .map(|_| {
            let phase = std::f64::consts::TAU * rng.unit();
            let mut noise = TestRng(rng.next());
            image_from_fn(32, 32, |x, y, channel| {
                let wave = (0.5 * x as f64 + 0.3 * y as f64 + phase).sin();
                90.0 + 30.0 * channel as f64 + 40.0 * wave + 60.0 * (noise.unit() - 0.5)
            })
        })
        .collect()
}

/// 3 × 3 box blur with clamped borders.
fn blurred(image: &LoadedImage) -> LoadedImage {
    let (width, height) = (image.width, image.height);
    image_from_fn(width, height, |x, y, channel| {
        let mut sum = 0.0;
        for dy in -1i64..=1 {
            for dx in -1i64..=1 {
                let sx = (x as i64 + dx).clamp(0, width as i64 - 1) as usize;
                let sy = (y as i64 + dy).clamp(0, height as i64 - 1) as usize;
                sum += f64::from(image.bgr[(sy * width + sx) * 3 + channel]);
            }
        }
        sum / 9.0
    })
}

/// Applies `v ↦ gain × v + offset` to every sample.
fn recoloured(image: &LoadedImage, gain: f64, offset: f64) -> LoadedImage {
    image_from_fn(image.width, image.height, |x, y, channel| {
        gain * f64::from(image.bgr[(y * image.width + x) * 3 + channel]) + offset
    })
}

fn swd(real: &[LoadedImage], fake: &[LoadedImage], config: &SwdConfig) -> SwdReport {
    sliced_wasserstein(real, fake, config).unwrap()
}

#[test]
fn wasserstein_1d_known_cases() {
    // Each case is worked out by hand from the quantile functions.
    let cases: [(&[f32], &[f32], f64); 5] = [
        (&[0.0, 1.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0], 1.0),
        (&[3.0, 0.0, 2.0, 1.0], &[4.0, 1.0, 3.0, 2.0], 1.0),
        (&[5.0], &[2.0], 3.0),
        // F⁻¹ = 0 on [0, 1]; G⁻¹ = 0, 1, 2 on thirds: 1/3 · 1 + 1/3 · 2.
        (&[0.0, 0.0], &[0.0, 1.0, 2.0], 1.0),
        // The quantile functions differ by 1 on [1/2, 3/4).
        (&[0.0, 1.0], &[0.0, 0.0, 0.0, 1.0], 0.25),
    ];
    for (a, b, expected) in cases {
        let distance = wasserstein_1d(a, b).unwrap();
        assert!((distance - expected).abs() < 1e-12, "W1({a:?}, {b:?}) = {distance}, expected {expected}");
        let swapped = wasserstein_1d(b, a).unwrap();
        assert!((swapped - expected).abs() < 1e-12, "W1({b:?}, {a:?}) = {swapped}, expected {expected}");
    }
}

#[test]
fn wasserstein_1d_rejects_empty_and_nan() {
    assert!(wasserstein_1d(&[], &[1.0]).is_err());
    assert!(wasserstein_1d(&[f32::NAN], &[1.0]).is_err());
}

#[test]
fn sliced_distance_in_one_dimension_is_w1() {
    // The only unit directions in 1-D are +1 and −1, and W1 does not change when both sets flip sign.
    let a = [0.0, 0.5, 3.0, -2.0, 7.0];
    let b = [1.0, 1.5, 2.0, 4.0, -1.0];
    let expected = wasserstein_1d(&a, &b).unwrap();
    let mut rng = SeededRng::new(3);
    let sliced = sliced_distance(&a, &b, 1, 4, 16, &mut rng).unwrap();
    assert!((sliced - expected).abs() < 1e-9, "sliced {sliced}, W1 {expected}");
}

#[test]
fn sliced_distance_of_shift_is_two_over_pi() {
    // Shifting a 2-D cloud by (1, 0) shifts its projection on u by u_x, so W1 = |u_x|. For uniform unit
    // directions E|u_x| = E|cos θ| = 2/π; 4 × 1024 directions leave a standard error of about 0.005.
    let mut rng = TestRng(11);
    let a: Vec<f32> = (0..2 * 500).map(|_| (rng.unit() * 4.0 - 2.0) as f32).collect();
    let b: Vec<f32> = a.chunks(2).flat_map(|p| [p[0] + 1.0, p[1]]).collect();
    let mut directions = SeededRng::new(5);
    let sliced = sliced_distance(&a, &b, 2, 4, 1024, &mut directions).unwrap();
    let expected = 2.0 / std::f64::consts::PI;
    assert!((sliced - expected).abs() < 0.02, "sliced {sliced}, expected about {expected}");
}

#[test]
fn sliced_distance_rejects_bad_shapes() {
    let mut rng = SeededRng::new(0);
    assert!(sliced_distance(&[1.0, 2.0, 3.0], &[1.0, 2.0], 2, 1, 1, &mut rng).is_err());
    assert!(sliced_distance(&[], &[1.0], 1, 1, 1, &mut rng).is_err());
    assert!(sliced_distance(&[1.0], &[1.0], 0, 1, 1, &mut rng).is_err());
}

#[test]
fn level_sizes_halve_rounding_up() {
    assert_eq!(level_sizes(64, 64, 16), vec![(64, 64), (32, 32), (16, 16)]);
    assert_eq!(level_sizes(100, 64, 16), vec![(100, 64), (50, 32), (25, 16)]);
    assert_eq!(level_sizes(33, 40, 16), vec![(33, 40), (17, 20)]);
    assert!(level_sizes(15, 100, 16).is_empty());
}

#[test]
fn pyramid_of_constant_image_has_no_detail() {
    let image = image_from_fn(37, 20, |_, _, channel| [10.0, 100.0, 200.0][channel]);
    let sizes = level_sizes(20, 37, 5);
    let pyramid = laplacian_pyramid(&ImagePlanes::from_image(&image), sizes.len());
    assert_eq!(pyramid.len(), sizes.len());
    for (level, &(height, width)) in pyramid.iter().zip(&sizes) {
        assert_eq!((level.height, level.width), (height, width));
    }

    for (index, level) in pyramid[..pyramid.len() - 1].iter().enumerate() {
        assert!(level.data.iter().all(|&v| v == 0.0), "detail level {index} of a constant image is not zero");
    }
    // The residual keeps the colour; planes are RGB while the image is stored BGR.
    let residual = pyramid.last().unwrap();
    let plane = residual.height * residual.width;
    assert!(residual.data[..plane].iter().all(|&v| v == 200.0));
    assert!(residual.data[2 * plane..].iter().all(|&v| v == 10.0));
}

#[test]
fn identical_sets_give_zero() {
    let images = texture_set(6, 1);
    let report = swd(&images, &images.clone(), &SwdConfig::default());
    assert_eq!(report.per_level.len(), 2, "32 × 32 images have levels 32 and 16");
    for level in &report.per_level {
        assert_eq!(level.swd, 0.0, "level {}×{}", level.width, level.height);
    }
    assert_eq!(report.average, 0.0);
}

#[test]
fn image_order_and_set_order_do_not_matter() {
    let real = texture_set(8, 2);
    let fake = texture_set(8, 3);
    let config = SwdConfig { seed: 4, ..SwdConfig::default() };
    let forward = swd(&real, &fake, &config);

    let mut shuffled_real = real.clone();
    shuffled_real.reverse();
    shuffled_real.swap(0, 3);
    let mut shuffled_fake = fake.clone();
    shuffled_fake.rotate_left(3);
    assert_eq!(swd(&shuffled_real, &shuffled_fake, &config), forward);

    let swapped = swd(&fake, &real, &config);
    assert_eq!(swapped.per_level, forward.per_level);
    assert_eq!(swapped.average, forward.average);

    let union = SwdConfig { normalization: DescriptorNormalization::Union, ..config };
    let union_forward = swd(&real, &fake, &union);
    assert_eq!(swd(&shuffled_real, &shuffled_fake, &union), union_forward);
    assert_eq!(swd(&fake, &real, &union).per_level, union_forward.per_level);
}

#[test]
fn seed_reproduces_and_changes_value() {
    let real = texture_set(6, 5);
    let fake = texture_set(6, 6);
    let first = swd(&real, &fake, &SwdConfig { seed: 1, ..SwdConfig::default() });
    let again = swd(&real, &fake, &SwdConfig { seed: 1, ..SwdConfig::default() });
    let other = swd(&real, &fake, &SwdConfig { seed: 2, ..SwdConfig::default() });
    assert_eq!(first, again);
    assert_ne!(first.average, other.average);
}

#[test]
fn blurred_copy_is_farther_than_another_sample() {
    let pool = texture_set(24, 7);
    let (real, other) = pool.split_at(12);
    let blurred_copy: Vec<LoadedImage> = real.iter().map(blurred).collect();

    for normalization in [DescriptorNormalization::PerSet, DescriptorNormalization::Union] {
        let config = SwdConfig { normalization, ..SwdConfig::default() };
        let baseline = swd(real, other, &config);
        let blur = swd(real, &blurred_copy, &config);
        assert!(
            blur.per_level[0].swd > 2.0 * baseline.per_level[0].swd,
            "{normalization:?}: finest level {} for the blurred copy, {} for another sample",
            blur.per_level[0].swd,
            baseline.per_level[0].swd
        );
        assert!(blur.average > baseline.average, "{normalization:?}: {blur:?} vs {baseline:?}");
    }
}

#[test]
fn colour_gain_shows_only_with_union_normalisation() {
    let pool = texture_set(24, 8);
    let (real, other) = pool.split_at(12);
    let dimmed: Vec<LoadedImage> = real.iter().map(|image| recoloured(image, 0.6, 20.0)).collect();

    let union = SwdConfig { normalization: DescriptorNormalization::Union, ..SwdConfig::default() };
    let union_baseline = swd(real, other, &union).average;
    let union_dimmed = swd(real, &dimmed, &union).average;
    assert!(union_dimmed > 3.0 * union_baseline, "union: dimmed {union_dimmed}, another sample {union_baseline}");

    // Per-set statistics undo a gain and offset, so only sampling noise and rounding remain.
    let per_set_baseline = swd(real, other, &SwdConfig::default()).average;
    let per_set_dimmed = swd(real, &dimmed, &SwdConfig::default()).average;
    assert!(per_set_dimmed < union_dimmed / 3.0, "per-set: dimmed {per_set_dimmed}, union {union_dimmed}");
    assert!(
        per_set_dimmed < 2.0 * per_set_baseline,
        "per-set: dimmed {per_set_dimmed}, another sample {per_set_baseline}"
    );
}

#[test]
fn unequal_set_sizes_are_compared() {
    let real = texture_set(9, 9);
    let fake = texture_set(4, 10);
    let report = swd(&real, &fake, &SwdConfig::default());
    assert_eq!((report.real_images, report.fake_images), (9, 4));
    assert!(report.average.is_finite(), "{report:?}");
    assert!(report.average > 0.0, "{report:?}");
}

#[test]
fn different_sizes_need_resize() {
    let real = texture_set(3, 11);
    let wide = vec![image_from_fn(40, 32, |x, y, _| ((x * 7 + y * 3) % 256) as f64)];
    let message = sliced_wasserstein(&real, &wide, &SwdConfig::default()).unwrap_err().to_string();
    assert!(message.contains("40×32"), "{message}");
    assert!(message.contains("32×32"), "{message}");
    assert!(message.contains("--resize"), "{message}");

    let config = SwdConfig { resize: Some((24, 20)), ..SwdConfig::default() };
    let report = swd(&real, &wide, &config);
    assert_eq!(report.per_level.len(), 1);
    assert_eq!((report.per_level[0].height, report.per_level[0].width), (24, 20));
}

#[test]
fn bad_input_is_rejected() {
    let images = texture_set(2, 12);
    let message = sliced_wasserstein(&images, &[], &SwdConfig::default()).unwrap_err().to_string();
    assert!(message.contains("fake"), "{message}");
    assert!(message.contains("empty"), "{message}");

    let tiny = vec![image_from_fn(12, 40, |_, _, _| 0.0)];
    let message = sliced_wasserstein(&tiny, &tiny, &SwdConfig::default()).unwrap_err().to_string();
    assert!(message.contains("12×40"), "{message}");
    assert!(message.contains("16"), "{message}");

    let mut broken = images.clone();
    broken[1].bgr.truncate(10);
    let message = sliced_wasserstein(&images, &broken, &SwdConfig::default()).unwrap_err().to_string();
    assert!(message.contains("fake image 1"), "{message}");

    let even_patch = SwdConfig { patch_size: 6, ..SwdConfig::default() };
    assert!(sliced_wasserstein(&images, &images, &even_patch).is_err());
}

#[test]
fn folders_match_in_memory_sets() {
    let folder = tempfile::tempdir().unwrap();
    let (real_dir, fake_dir) = (folder.path().join("real"), folder.path().join("fake"));
    std::fs::create_dir_all(&real_dir).unwrap();
    std::fs::create_dir_all(&fake_dir).unwrap();
    let real = texture_set(5, 13);
    let fake = texture_set(5, 14);
    for (dir, images) in [(&real_dir, &real), (&fake_dir, &fake)] {
        for (index, image) in images.iter().enumerate() {
            let rgb: Vec<u8> = image.bgr.chunks(3).flat_map(|p| [p[2], p[1], p[0]]).collect();
            let png = image::RgbImage::from_raw(image.width as u32, image.height as u32, rgb).unwrap();
            pegan_core::image::save_png(&png, dir.join(format!("{index}.png"))).unwrap();
        }
    }
    std::fs::write(real_dir.join("notes.txt"), "not an image").unwrap();

    let config = SwdConfig::default();
    let from_folders = sliced_wasserstein_folders(&real_dir, &fake_dir, None, &config).unwrap();
    assert_eq!(from_folders, swd(&real, &fake, &config));

    let limited = sliced_wasserstein_folders(&real_dir, &fake_dir, Some(3), &config).unwrap();
    assert_eq!((limited.real_images, limited.fake_images), (3, 3));

    let empty = folder.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let message = sliced_wasserstein_folders(&real_dir, &empty, None, &config).unwrap_err().to_string();
    assert!(message.contains("empty"), "{message}");
    assert!(message.contains("no .png"), "{message}");
}
