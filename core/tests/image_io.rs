//! Image files, caller buffers and tensor conversions at the library boundary.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{GrayAlphaImage, GrayImage, ImageBuffer, Rgb, RgbImage, RgbaImage};
use pegan_core::image::{
    bgr_u8_to_tensor, decode_image, load_image, save_png, tensor_to_rgb8, tensor_to_samples, LoadedImage, SampleLayout,
    SampleType, MAX_IMAGE_SIDE,
};
use pegan_core::Error;

fn pattern(x: u32, y: u32, channel: u32) -> u8 {
    ((x * 31 + y * 17 + channel * 71) % 256) as u8
}

fn rgb_pattern(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([pattern(x, y, 0), pattern(x, y, 1), pattern(x, y, 2)])
    })
}

/// Expected BGR bytes of an RGB image.
fn bgr_of(image: &RgbImage) -> Vec<u8> {
    image.pixels().flat_map(|p| [p.0[2], p.0[1], p.0[0]]).collect()
}

fn assert_read_error(error: Error, path: &Path, fragment: &str) {
    match error {
        Error::Read {
            path: error_path,
            reason,
        } => {
            assert_eq!(error_path, path);
            assert!(reason.contains(fragment), "reason {reason:?} lacks {fragment:?}");
        }
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn load_rgb_png() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rgb.png");
    let image = rgb_pattern(7, 5);
    image.save(&path).unwrap();

    let loaded = load_image(&path).unwrap();
    assert_eq!((loaded.width, loaded.height), (7, 5));
    assert_eq!(loaded.bgr, bgr_of(&image));
    assert_eq!(loaded.alpha, None);
    assert_eq!(loaded.source_channels, 3);
    assert_eq!(loaded.source_bit_depth, 8);
}

#[test]
fn load_rgba_png_keeps_alpha_apart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rgba.png");
    let image = RgbaImage::from_fn(6, 4, |x, y| {
        image::Rgba([pattern(x, y, 0), pattern(x, y, 1), pattern(x, y, 2), (x * 40 + y) as u8])
    });
    image.save(&path).unwrap();

    let loaded = load_image(&path).unwrap();
    let expected_bgr: Vec<u8> = image.pixels().flat_map(|p| [p.0[2], p.0[1], p.0[0]]).collect();
    let expected_alpha: Vec<u8> = image.pixels().map(|p| p.0[3]).collect();
    assert_eq!(loaded.bgr, expected_bgr);
    assert_eq!(loaded.alpha, Some(expected_alpha));
    assert_eq!(loaded.source_channels, 4);
}

#[test]
fn load_grey_png_repeats_channel() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grey.png");
    let image = GrayImage::from_fn(5, 3, |x, y| image::Luma([pattern(x, y, 0)]));
    image.save(&path).unwrap();

    let loaded = load_image(&path).unwrap();
    let expected: Vec<u8> = image.pixels().flat_map(|p| [p.0[0]; 3]).collect();
    assert_eq!(loaded.bgr, expected);
    assert_eq!(loaded.alpha, None);
    assert_eq!(loaded.source_channels, 1);
}

#[test]
fn load_grey_alpha_png() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grey_alpha.png");
    let image = GrayAlphaImage::from_fn(4, 4, |x, y| image::LumaA([pattern(x, y, 0), (x * y * 10) as u8]));
    image.save(&path).unwrap();

    let loaded = load_image(&path).unwrap();
    assert_eq!(loaded.source_channels, 2);
    assert_eq!(loaded.bgr[..3], [pattern(0, 0, 0); 3]);
    assert_eq!(loaded.alpha, Some(image.pixels().map(|p| p.0[1]).collect()));
}

#[test]
fn load_16_bit_png_rounds_to_8_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.png");
    let samples: [u16; 9] = [0, 1, 128, 129, 257, 32767, 32768, 65279, 65535];
    let image: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_fn(3, 3, |x, y| Rgb([samples[(y * 3 + x) as usize], 0, 65535]));
    image.save(&path).unwrap();

    let loaded = load_image(&path).unwrap();
    assert_eq!(loaded.source_bit_depth, 16);
    for (index, &sample) in samples.iter().enumerate() {
        let expected = (f64::from(sample) * 255.0 / 65535.0).round() as u8;
        // BGR: red is the third byte of each pixel.
        assert_eq!(loaded.bgr[index * 3 + 2], expected, "sample {sample}");
        assert_eq!(loaded.bgr[index * 3], 255, "blue of pixel {index}");
    }
}

#[test]
fn decode_jpeg_bytes() {
    // A smooth image survives JPEG at quality 95 within a few grey levels.
    let image = RgbImage::from_fn(32, 24, |x, y| Rgb([(x * 8) as u8, (y * 10) as u8, 128]));
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95)
        .encode_image(&image)
        .unwrap();

    let loaded = decode_image(&bytes).unwrap();
    assert_eq!((loaded.width, loaded.height), (32, 24));
    assert_eq!(loaded.source_channels, 3);
    assert_eq!(loaded.alpha, None);
    let expected = bgr_of(&image);
    let mean_error: f64 = loaded
        .bgr
        .iter()
        .zip(&expected)
        .map(|(&a, &b)| f64::from(a.abs_diff(b)))
        .sum::<f64>()
        / expected.len() as f64;
    assert!(mean_error < 3.0, "mean absolute error {mean_error}");
}

#[test]
fn load_missing_file_is_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.png");
    assert_read_error(load_image(&path).unwrap_err(), &path, "not found");
}

#[test]
fn load_empty_file_is_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.png");
    std::fs::write(&path, b"").unwrap();
    assert_read_error(load_image(&path).unwrap_err(), &path, "empty");
}

#[test]
fn load_corrupt_png_is_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.png");
    let mut bytes = Vec::new();
    rgb_pattern(16, 16)
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&path, &bytes).unwrap();
    assert_read_error(load_image(&path).unwrap_err(), &path, "corrupt");
}

#[test]
fn load_unknown_format_is_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.png");
    std::fs::write(&path, b"this is not an image at all").unwrap();
    assert_read_error(load_image(&path).unwrap_err(), &path, "unsupported");
}

#[test]
fn decode_empty_buffer_is_invalid() {
    let error = decode_image(&[]).unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
}

#[test]
fn from_samples_rgb_u8_with_row_padding() {
    // 3 × 2 RGB pixels, rows padded to 12 bytes. The padding bytes are 0xEE and must be ignored.
    let layout = SampleLayout {
        width: 3,
        height: 2,
        channels: 3,
        row_stride: 12,
        sample_type: SampleType::U8,
    };
    let mut data = vec![0xEE; 12 + 9];
    for y in 0..2 {
        for i in 0..9 {
            data[y * 12 + i] = (y * 9 + i) as u8;
        }
    }
    let image = LoadedImage::from_samples(&data, &layout).unwrap();
    assert_eq!((image.width, image.height), (3, 2));
    assert_eq!(
        image.bgr,
        vec![2, 1, 0, 5, 4, 3, 8, 7, 6, 11, 10, 9, 14, 13, 12, 17, 16, 15]
    );
    assert_eq!(image.alpha, None);
    assert_eq!((image.source_channels, image.source_bit_depth), (3, 8));
}

#[test]
fn from_samples_grey_and_rgba() {
    let grey = SampleLayout {
        width: 2,
        height: 1,
        channels: 1,
        row_stride: 2,
        sample_type: SampleType::U8,
    };
    let image = LoadedImage::from_samples(&[10, 200], &grey).unwrap();
    assert_eq!(image.bgr, vec![10, 10, 10, 200, 200, 200]);

    let rgba = SampleLayout {
        width: 2,
        height: 1,
        channels: 4,
        row_stride: 8,
        sample_type: SampleType::U8,
    };
    let image = LoadedImage::from_samples(&[1, 2, 3, 4, 5, 6, 7, 8], &rgba).unwrap();
    assert_eq!(image.bgr, vec![3, 2, 1, 7, 6, 5]);
    assert_eq!(image.alpha, Some(vec![4, 8]));
}

#[test]
fn from_samples_u16_and_f32() {
    let words: [u16; 3] = [0, 32896, 65535];
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let layout = SampleLayout {
        width: 1,
        height: 1,
        channels: 3,
        row_stride: 6,
        sample_type: SampleType::U16,
    };
    let image = LoadedImage::from_samples(&bytes, &layout).unwrap();
    assert_eq!(image.bgr, vec![255, 128, 0]);
    assert_eq!(image.source_bit_depth, 16);

    // Out-of-range floats are clamped, and NaN becomes 0.
    let floats: [f32; 6] = [0.5, -0.25, 1.75, f32::NAN, 1.0, 0.0];
    let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_ne_bytes()).collect();
    let layout = SampleLayout {
        width: 2,
        height: 1,
        channels: 3,
        row_stride: 24,
        sample_type: SampleType::F32,
    };
    let image = LoadedImage::from_samples(&bytes, &layout).unwrap();
    assert_eq!(image.bgr, vec![255, 0, 128, 0, 255, 0]);
    assert_eq!(image.source_bit_depth, 32);
}

#[test]
fn from_samples_rejects_bad_layouts() {
    let layout = |width, height, channels, row_stride| SampleLayout {
        width,
        height,
        channels,
        row_stride,
        sample_type: SampleType::U16,
    };
    let data = vec![0u8; 64];

    let error = LoadedImage::from_samples(&data, &layout(4, 2, 3, 20))
        .unwrap_err()
        .to_string();
    assert!(error.contains("row stride 20"), "{error}");
    assert!(error.contains("at least 24"), "{error}");

    let error = LoadedImage::from_samples(&data, &layout(4, 3, 3, 24))
        .unwrap_err()
        .to_string();
    assert!(error.contains("64 bytes"), "{error}");
    assert!(error.contains("at least 72"), "{error}");

    let error = LoadedImage::from_samples(&data, &layout(0, 3, 3, 24))
        .unwrap_err()
        .to_string();
    assert!(error.contains("at least 1"), "{error}");

    let error = LoadedImage::from_samples(&data, &layout(4, 2, 2, 24))
        .unwrap_err()
        .to_string();
    assert!(error.contains("got 2"), "{error}");

    let error = LoadedImage::from_samples(&data, &layout(usize::MAX / 4, 1, 3, 8))
        .unwrap_err()
        .to_string();
    assert!(error.contains("overflows"), "{error}");

    let error = LoadedImage::from_samples(&data, &layout(1, usize::MAX / 2, 3, 8))
        .unwrap_err()
        .to_string();
    assert!(error.contains("overflows"), "{error}");
}

#[test]
fn from_samples_rejects_oversized_image() {
    let width = MAX_IMAGE_SIDE + 1;
    let layout = SampleLayout {
        width,
        height: 1,
        channels: 1,
        row_stride: width,
        sample_type: SampleType::U8,
    };
    let error = LoadedImage::from_samples(&vec![0u8; width], &layout)
        .unwrap_err()
        .to_string();
    assert!(error.contains(&format!("{width} × 1")), "{error}");
}

#[test]
fn tensor_round_trip_is_exact() {
    // All 256 levels in every channel, 16 × 16 pixels.
    let (height, width) = (16, 16);
    let bgr: Vec<u8> = (0..height * width)
        .flat_map(|i| [i as u8, (255 - i) as u8, (i * 7 % 256) as u8])
        .collect();
    let tensor = bgr_u8_to_tensor(&bgr, height, width, &Device::Cpu).unwrap();
    assert_eq!(tensor.dims(), &[1, 3, height, width]);

    let first = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(first[0], (0.0f32 / 255.0 - 0.5) * 2.0);
    assert_eq!(first[height * width], (255.0f32 / 255.0 - 0.5) * 2.0);

    let rgb = tensor_to_rgb8(&tensor).unwrap();
    assert_eq!(bgr_of(&rgb), bgr);
    let rgb = tensor_to_rgb8(&tensor.squeeze(0).unwrap()).unwrap();
    assert_eq!(bgr_of(&rgb), bgr);
}

#[test]
fn tensor_to_rgb8_clamps_and_rounds() {
    // Channels are B, G, R; one pixel per value.
    let values = [-2.0f32, 2.0, f32::NAN, 0.0, -1.0, 1.0];
    let tensor = Tensor::from_vec(values.repeat(3), (1, 3, 2, 3), &Device::Cpu).unwrap();
    let rgb = tensor_to_rgb8(&tensor).unwrap();
    let reds: Vec<u8> = rgb.pixels().map(|p| p.0[0]).collect();
    assert_eq!(reds, vec![0, 255, 0, 128, 0, 255]);
}

#[test]
fn tensor_to_rgb8_rejects_wrong_shape() {
    let tensor = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let error = tensor_to_rgb8(&tensor).unwrap_err().to_string();
    assert!(error.contains("[1, 4, 2, 2]"), "{error}");
}

#[test]
fn tensor_to_samples_writes_layouts() {
    // One pixel: blue -1 (0), green 0 (0.5), red 1 (1).
    let tensor = Tensor::from_vec(vec![-1.0f32, 0.0, 1.0], (1, 3, 1, 1), &Device::Cpu).unwrap();

    let rgba = SampleLayout {
        width: 1,
        height: 1,
        channels: 4,
        row_stride: 4,
        sample_type: SampleType::U8,
    };
    let mut out = vec![0u8; 4];
    tensor_to_samples(&tensor, &rgba, &mut out).unwrap();
    assert_eq!(out, vec![255, 128, 0, 255]);

    let grey = SampleLayout {
        width: 1,
        height: 1,
        channels: 1,
        row_stride: 1,
        sample_type: SampleType::U8,
    };
    let mut out = vec![0u8; 1];
    tensor_to_samples(&tensor, &grey, &mut out).unwrap();
    let luma = (0.299f32 + 0.587 * 0.5) * 255.0;
    assert_eq!(out[0], luma.round() as u8);

    let deep = SampleLayout {
        width: 1,
        height: 1,
        channels: 3,
        row_stride: 6,
        sample_type: SampleType::U16,
    };
    let mut out = vec![0u8; 6];
    tensor_to_samples(&tensor, &deep, &mut out).unwrap();
    let words: Vec<u16> = out.chunks_exact(2).map(|b| u16::from_ne_bytes([b[0], b[1]])).collect();
    assert_eq!(words, vec![65535, 32768, 0]);

    let float = SampleLayout {
        width: 1,
        height: 1,
        channels: 3,
        row_stride: 12,
        sample_type: SampleType::F32,
    };
    let mut out = vec![0u8; 12];
    tensor_to_samples(&tensor, &float, &mut out).unwrap();
    let floats: Vec<f32> = out
        .chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(floats, vec![1.0, 0.5, 0.0]);
}

#[test]
fn tensor_to_samples_keeps_row_padding() {
    let bgr: Vec<u8> = (0..2 * 2 * 3).map(|v| v as u8 * 20).collect();
    let tensor = bgr_u8_to_tensor(&bgr, 2, 2, &Device::Cpu).unwrap();
    let layout = SampleLayout {
        width: 2,
        height: 2,
        channels: 3,
        row_stride: 8,
        sample_type: SampleType::U8,
    };
    let mut out = vec![0xAB; 14];
    tensor_to_samples(&tensor, &layout, &mut out).unwrap();
    assert_eq!(
        out,
        vec![40, 20, 0, 100, 80, 60, 0xAB, 0xAB, 160, 140, 120, 220, 200, 180]
    );
}

#[test]
fn tensor_to_samples_rejects_size_mismatch() {
    let tensor = Tensor::zeros((1, 3, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let layout = SampleLayout {
        width: 3,
        height: 2,
        channels: 3,
        row_stride: 9,
        sample_type: SampleType::U8,
    };
    let mut out = vec![0u8; 18];
    let error = tensor_to_samples(&tensor, &layout, &mut out).unwrap_err().to_string();
    assert!(error.contains("a 2 × 2 image"), "{error}");
    assert!(error.contains("layout is 2 × 3"), "{error}");

    let short = SampleLayout {
        width: 2,
        height: 2,
        channels: 3,
        row_stride: 6,
        sample_type: SampleType::U8,
    };
    assert!(tensor_to_samples(&tensor, &short, &mut out[..11]).is_err());
}

#[test]
fn save_png_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    let image = rgb_pattern(9, 4);
    save_png(&image, &path).unwrap();

    let read_back = image::open(&path).unwrap().to_rgb8();
    assert_eq!(read_back, image);
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        entries,
        vec![std::ffi::OsString::from("out.png")],
        "no temporary file is left behind"
    );

    // Saving again replaces the file.
    let second = rgb_pattern(3, 3);
    save_png(&second, &path).unwrap();
    assert_eq!(image::open(&path).unwrap().to_rgb8(), second);
}

#[test]
fn save_png_into_missing_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("out.png");
    match save_png(&rgb_pattern(2, 2), &path).unwrap_err() {
        Error::Write { path: error_path, .. } => assert_eq!(error_path, path),
        other => panic!("expected a write error, got {other:?}"),
    }
}

#[test]
fn bgr_to_tensor_matches_reference_bits() {
    // gp_real.npy is pyramid level s5 converted by the reference dataset code.
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/vectors/singan");
    let levels = Tensor::read_npz(vectors.join("pyramid_small_bgr_uint8.npz")).unwrap();
    let level = &levels.iter().find(|(name, _)| name == "s5").expect("member s5").1;
    let (height, width, _) = level.dims3().unwrap();
    let bgr = level.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let expected = Tensor::read_npy(vectors.join("interp-pad_disc-nobn/gp_real.npy")).unwrap();

    let tensor = bgr_u8_to_tensor(&bgr, height, width, &Device::Cpu).unwrap();
    assert_eq!(tensor.dims(), expected.dims());
    let actual = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let expected = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mismatches = actual
        .iter()
        .zip(&expected)
        .filter(|(a, e)| a.to_bits() != e.to_bits())
        .count();
    assert_eq!(mismatches, 0, "values that differ in their bits");
}
