//! MMGeneration StyleGAN2 checkpoints: architecture inference, loading, sampling and conversion to the
//! native format.

mod common;

use candle_core::Device;
use pegan_core::stylegan2::generator::Noise;
use pegan_core::stylegan2::head::ChosenScale;
use pegan_core::stylegan2::mapping::broadcast_style;
use pegan_core::stylegan2::mmgen::load_mmgen_stylegan2;
use pegan_core::stylegan2::model::StyleGan2Model;
use pegan_core::stylegan2::preset::StyleGan2Config;
use pegan_core::stylegan2::sample::{scale_for_size, NoiseMode, SampleOptions, StyleGan2Sampler};

fn checkpoint() -> std::path::PathBuf {
    common::vectors("stylegan2/mspie_config-f_small/checkpoint.pth")
}

fn out_ema_cs0(model: &StyleGan2Model) -> candle_core::Tensor {
    let z = common::read_npy(&common::vectors("stylegan2/mspie_config-f_small/z.npy"));
    let g = &model.generator_ema;
    let latent = broadcast_style(&g.map(&z).unwrap(), g.num_latents()).unwrap();
    g.synthesize(&latent, ChosenScale::default(), Noise::Buffers).unwrap()
}

#[test]
fn mmgen_checkpoint_inferred_and_matched() {
    let model = load_mmgen_stylegan2(&checkpoint(), None, &Device::Cpu).unwrap();
    // The inferred configuration equals the tiny preset, whose shapes the reduced model has. Channel tables are
    // compared by their widths: the multiplier does not matter where every width is explicit.
    let tiny = StyleGan2Config::preset("tiny").unwrap();
    let mut inferred = model.config().clone();
    for r in [4, 8, 16, 32] {
        assert_eq!(inferred.generator.channels.width(r), tiny.generator.channels.width(r), "generator C({r})");
        assert_eq!(inferred.discriminator.channels.width(r), tiny.discriminator.channels.width(r), "discriminator C({r})");
    }
    inferred.generator.channels = tiny.generator.channels.clone();
    inferred.discriminator.channels = tiny.discriminator.channels.clone();
    assert_eq!(inferred.generator, tiny.generator, "inferred generator differs from the tiny preset");
    assert_eq!(inferred.discriminator, tiny.discriminator, "inferred discriminator differs from the tiny preset");
    assert_eq!(model.metadata.source, "mmgeneration");

    let expected = common::read_npy(&common::vectors("stylegan2/mspie_config-f_small/out_ema_cs0.npy"));
    let diff = common::max_abs_diff(&out_ema_cs0(&model), &expected);
    assert!(diff < 1e-4, "out_ema_cs0 differs by {diff}");

    let d_in = common::read_npy(&common::vectors("stylegan2/mspie_config-f_small/disc_in_48.npy"));
    let d_out = common::read_npy(&common::vectors("stylegan2/mspie_config-f_small/disc_out_48.npy"));
    let (d, _) = model.discriminator.as_ref().expect("the checkpoint has a discriminator");
    let diff = common::max_abs_diff(&d.forward(&d_in).unwrap(), &d_out);
    assert!(diff < 1e-4, "discriminator at 48 px differs by {diff}");
}

#[test]
fn converted_checkpoint_same_images() {
    let model = load_mmgen_stylegan2(&checkpoint(), None, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("converted.safetensors");
    model.save(&path).unwrap();
    let converted = StyleGan2Model::load(&path, &Device::Cpu).unwrap();
    assert_eq!(common::max_abs_diff(&out_ema_cs0(&model), &out_ema_cs0(&converted)), 0.0);
}

#[test]
fn mismatched_preset_names_key() {
    let small = StyleGan2Config::preset("small").unwrap();
    let error = match load_mmgen_stylegan2(&checkpoint(), Some(&small), &Device::Cpu) {
        Ok(_) => panic!("the small preset cannot load the tiny checkpoint"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("checkpoint.pth"), "{error}");
    assert!(error.contains("has shape"), "{error}");
}

#[test]
fn legacy_checkpoint_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.pth");
    std::fs::write(&path, b"\x80\x02}q\x00.").unwrap();
    let error = load_mmgen_stylegan2(&path, None, &Device::Cpu).err().unwrap().to_string();
    assert!(error.contains("legacy.pth"), "{error}");
    assert!(error.contains("torch.save"), "{error}");
}

#[test]
fn sampler_sizes_seeds_truncation_mixing() {
    let model = load_mmgen_stylegan2(&checkpoint(), None, &Device::Cpu).unwrap();
    let g = &model.generator_ema;
    assert_eq!(scale_for_size(g, 48, 64).unwrap(), ChosenScale::new(2, 4));
    let error = scale_for_size(g, 50, 64).unwrap_err().to_string();
    assert!(error.contains("50"), "{error}");
    assert!(error.contains("48"), "{error}");

    let options = SampleOptions { scale: ChosenScale::new(2, 4), ..SampleOptions::default() };
    let sampler = StyleGan2Sampler::new(&model, options).unwrap();
    let a = sampler.sample_seed(7).unwrap();
    assert_eq!(a.dims(), [1, 3, 48, 64]);
    assert_eq!(common::max_abs_diff(&a, &sampler.sample_seed(7).unwrap()), 0.0, "a seed must be reproducible");
    assert!(common::max_abs_diff(&a, &sampler.sample_seed(8).unwrap()) > 1e-3);

    // ψ = 0 gives the mean latent's image for every seed (noise aside, so use zero noise).
    let mean = common::read_npy(&common::vectors("stylegan2/mspie_config-f_small/mean_latent_ema.npy"));
    let options = SampleOptions {
        truncation: 0.0,
        mean_latent: Some(mean),
        noise: NoiseMode::Zero,
        ..SampleOptions::default()
    };
    let sampler = StyleGan2Sampler::new(&model, options).unwrap();
    let diff = common::max_abs_diff(&sampler.sample_seed(1).unwrap(), &sampler.sample_seed(2).unwrap());
    assert!(diff < 1e-5, "ψ = 0 images differ by {diff}");

    let bad_mix = SampleOptions {
        mix: Some(pegan_core::stylegan2::sample::StyleMix { seed: 1, inject_index: 8 }),
        ..SampleOptions::default()
    };
    let error = StyleGan2Sampler::new(&model, bad_mix).err().unwrap().to_string();
    assert!(error.contains("1..=7"), "{error}");
    let fixed_elsewhere = SampleOptions { scale: ChosenScale::new(2, 2), noise: NoiseMode::Fixed, ..SampleOptions::default() };
    assert!(StyleGan2Sampler::new(&model, fixed_elsewhere).is_err());
}
