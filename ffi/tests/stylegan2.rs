//! Compares images generated through the StyleGAN2 C functions with images of the core's
//! `StyleGan2Sampler`, on the reduced MMGeneration MS-PIE config-f checkpoint of the test vectors.

use std::ffi::{c_void, CStr, CString};
use std::path::{Path, PathBuf};

use pegan::*;
use pegan_core::image::{tensor_to_samples, SampleLayout, SampleType};
use pegan_core::stylegan2::mmgen::load_mmgen_stylegan2;
use pegan_core::stylegan2::model::StyleGan2Model;
use pegan_core::stylegan2::sample::{scale_for_size, NoiseMode, SampleOptions, StyleGan2Sampler, StyleMix};

fn checkpoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/vectors/stylegan2/mspie_config-f_small/checkpoint.pth")
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(pegan_last_error_message()) }.to_string_lossy().into_owned()
}

/// A context and a model loaded through the C API, freed on drop.
struct CModel {
    context: *mut PeganContext,
    model: *mut PeganStyleGan2Model,
}

impl CModel {
    fn load(path: &Path) -> Self {
        let mut context = std::ptr::null_mut();
        assert_eq!(unsafe { pegan_context_new(std::ptr::null(), &mut context) }, PeganStatus::Ok, "{}", last_error());
        let path = CString::new(path.to_str().unwrap()).unwrap();
        let mut model = std::ptr::null_mut();
        let status = unsafe { pegan_stylegan2_model_load(context, path.as_ptr(), std::ptr::null(), &mut model) };
        assert_eq!(status, PeganStatus::Ok, "{}", last_error());
        CModel { context, model }
    }

    /// Generates a `width` x `height` image with `channels` float samples per pixel.
    fn generate_f32(&self, options: &PeganStyleGan2SampleOptions, width: u32, height: u32, channels: u32) -> Vec<f32> {
        let mut pixels = vec![0f32; (width * height * channels) as usize];
        let out = PeganImage {
            width,
            height,
            channels,
            row_stride: (width * channels) as usize * 4,
            sample_type: PEGAN_SAMPLE_TYPE_F32,
            data: pixels.as_mut_ptr().cast::<c_void>(),
        };
        let status = unsafe { pegan_stylegan2_generate(self.model, options, &out, pixels.len() * 4) };
        assert_eq!(status, PeganStatus::Ok, "{}", last_error());
        pixels
    }
}

impl Drop for CModel {
    fn drop(&mut self) {
        unsafe {
            pegan_stylegan2_model_free(self.model);
            pegan_context_free(self.context);
        }
    }
}

fn default_options() -> PeganStyleGan2SampleOptions {
    let mut options = std::mem::MaybeUninit::<PeganStyleGan2SampleOptions>::uninit();
    unsafe {
        pegan_stylegan2_sample_options_init(options.as_mut_ptr());
        options.assume_init()
    }
}

/// Writes a sampler image into float samples with the layout the C API uses.
fn core_samples(image: &candle_core::Tensor, width: usize, height: usize, channels: usize) -> Vec<f32> {
    let layout =
        SampleLayout { width, height, channels, row_stride: width * channels * 4, sample_type: SampleType::F32 };
    let mut bytes = vec![0u8; width * height * channels * 4];
    tensor_to_samples(image, &layout, &mut bytes).unwrap();
    bytes.chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn core_model() -> StyleGan2Model {
    load_mmgen_stylegan2(&checkpoint(), None, &candle_core::Device::Cpu).unwrap()
}

#[test]
fn c_image_equals_core_sampler() {
    let c_model = CModel::load(&checkpoint());
    let model = core_model();

    // Non-square, truncated and mixed, with random noise: every option that reaches the sampler.
    let (width, height, seed) = (48usize, 64usize, 17u64);
    let mut options = default_options();
    options.width = width as u32;
    options.height = height as u32;
    options.seed = seed;
    options.truncation = 0.7;
    options.truncation_seed = 3;
    options.mix_enabled = true;
    options.mix_seed = 5;
    options.mix_inject_index = 3;
    let from_c = c_model.generate_f32(&options, width as u32, height as u32, 3);

    let scale = scale_for_size(&model.generator_ema, height, width).unwrap();
    let request = SampleOptions {
        scale,
        truncation: 0.7,
        mean_latent_seed: 3,
        mix: Some(StyleMix { seed: 5, inject_index: 3 }),
        ..SampleOptions::default()
    };
    let sampler = StyleGan2Sampler::new(&model, request).unwrap();
    let from_core = core_samples(&sampler.sample_seed(seed).unwrap(), width, height, 3);
    assert_eq!(from_c, from_core);
}

#[test]
fn c_latent_equals_seed_latent() {
    let c_model = CModel::load(&checkpoint());
    let model = core_model();
    let sampler = StyleGan2Sampler::new(&model, SampleOptions::default()).unwrap();

    // The seed's own z, passed as a latent with the seed as noise seed, gives the seed's image.
    let seed = 9;
    let z: Vec<f32> = sampler.z_for_seed(seed).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let mut options = default_options();
    options.seed = seed;
    let from_seed = c_model.generate_f32(&options, 32, 32, 3);
    options.latent = z.as_ptr();
    options.latent_len = z.len();
    let from_latent = c_model.generate_f32(&options, 32, 32, 3);
    assert_eq!(from_latent, from_seed);

    let from_core = core_samples(&sampler.sample_seed(seed).unwrap(), 32, 32, 3);
    assert_eq!(from_seed, from_core);
}

#[test]
fn c_noise_modes_equal_core() {
    let c_model = CModel::load(&checkpoint());
    let model = core_model();

    for (mode, noise, use_ema) in [
        (PEGAN_STYLEGAN2_NOISE_MODE_FIXED, NoiseMode::Fixed, true),
        (PEGAN_STYLEGAN2_NOISE_MODE_ZERO, NoiseMode::Zero, false),
    ] {
        let mut options = default_options();
        options.seed = 4;
        options.noise_mode = mode;
        options.use_ema = use_ema;
        let from_c = c_model.generate_f32(&options, 32, 32, 4);

        let sampler =
            StyleGan2Sampler::new(&model, SampleOptions { noise, use_ema, ..SampleOptions::default() }).unwrap();
        let from_core = core_samples(&sampler.sample_seed(4).unwrap(), 32, 32, 4);
        assert_eq!(from_c, from_core, "{noise:?}, use_ema {use_ema}");
    }
}

#[test]
fn info_matches_generator() {
    let c_model = CModel::load(&checkpoint());
    let mut info = PeganStyleGan2Info::default();
    assert_eq!(unsafe { pegan_stylegan2_model_info(c_model.model, &mut info) }, PeganStatus::Ok);

    // Every size the info promises is one the generator produces, at both ends of the range.
    let model = core_model();
    for k in [0, 1, 5, 64] {
        let (height, width) =
            ((info.height + k * info.height_step) as usize, (info.width + k * info.width_step) as usize);
        let scale = scale_for_size(&model.generator_ema, height, width).unwrap();
        assert_eq!(model.generator_ema.output_size(scale).unwrap(), (height, width), "k = {k}");
    }
    assert_eq!(info.max_width, info.width + 64 * info.width_step);
    assert_eq!(info.max_height, info.height + 64 * info.height_step);
    assert_eq!(info.num_style_rows as usize, model.generator_ema.num_latents());
    assert_eq!(info.style_channels as usize, model.generator_ema.style_channels());
}

/// Trains `iterations` iterations of the tiny preset through the C API on the images in `data_dir`.
fn train_through_c(data_dir: &Path, seed: u64, iterations: u64) -> CModel {
    let mut context = std::ptr::null_mut();
    assert_eq!(unsafe { pegan_context_new(std::ptr::null(), &mut context) }, PeganStatus::Ok, "{}", last_error());
    let config = CString::new(
        r#"{"preset": "tiny", "overrides": {"training": {"batch_size": 2, "multi_input_scales": [0, 2],
            "multi_scale_probability": null}}}"#,
    )
    .unwrap();
    let options = PeganStyleGan2TrainOptions {
        config_json: config.as_ptr(),
        seed,
        iterations,
        output_path: std::ptr::null(),
        checkpoint_every: 0,
        progress_callback: None,
        progress_user_data: std::ptr::null_mut(),
    };
    let data_dir = CString::new(data_dir.to_str().unwrap()).unwrap();
    let mut model = std::ptr::null_mut();
    let status = unsafe { pegan_stylegan2_train(context, data_dir.as_ptr(), &options, &mut model) };
    assert_eq!(status, PeganStatus::Ok, "{}", last_error());
    CModel { context, model }
}

#[test]
fn training_is_reproducible() {
    let folder = tempfile::tempdir().unwrap();
    for index in 0..4u32 {
        let image =
            image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, (index * 60) as u8]));
        image.save(folder.path().join(format!("image{index}.png"))).unwrap();
    }

    // Two runs with one seed give the same weights, so the same images; another seed does not.
    let first = train_through_c(folder.path(), 3, 2).generate_f32(&default_options(), 32, 32, 3);
    let second = train_through_c(folder.path(), 3, 2).generate_f32(&default_options(), 32, 32, 3);
    let other_seed = train_through_c(folder.path(), 4, 2).generate_f32(&default_options(), 32, 32, 3);
    assert_eq!(first, second);
    assert_ne!(first, other_seed);
}
