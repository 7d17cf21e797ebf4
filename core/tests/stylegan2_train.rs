//! StyleGAN2 training: optimiser, EMA, scale sampling, data order, checkpoints and resume.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use pegan_core::rng::SeededRng;
use pegan_core::stylegan2::dataset::ImageFolder;
use pegan_core::stylegan2::model::StyleGan2Model;
use pegan_core::stylegan2::optim::{ema_update, Adam, AdamConfig, EMA_MOMENTUM};
use pegan_core::stylegan2::params::{Init, ParamStore};
use pegan_core::stylegan2::preset::StyleGan2Config;
use pegan_core::stylegan2::scale::{MsPieScaleSampler, ScaleSampling};
use pegan_core::stylegan2::train::StyleGan2Trainer;
use pegan_core::progress::Control;

fn faces() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/data/twemoji-faces-64")
}

/// Returns the tiny preset with a batch of 2, so a test iteration stays short.
fn tiny_config() -> StyleGan2Config {
    let config = StyleGan2Config::preset("tiny").unwrap();
    config.with_overrides(&serde_json::json!({"training": {"batch_size": 2}})).unwrap()
}

fn tensors_of(model: &StyleGan2Model) -> HashMap<String, Tensor> {
    model.named_tensors().unwrap().into_iter().collect()
}

#[test]
fn adam_lazy_adjusted_update() {
    let store = ParamStore::new(&Device::Cpu);
    let var = store.root().param("w", &[3], Init::Constant(0.0)).unwrap();
    var.set(&Tensor::new(&[1.0f32, -2.0, 0.5], &Device::Cpu).unwrap()).unwrap();
    let config = AdamConfig { lr: 0.002, betas: (0.0, 0.99), eps: 1e-8, lazy_interval: Some(4) };
    let (lr, b1, b2) = config.effective();
    assert!((lr - 0.0016).abs() < 1e-15, "lr {lr}");
    assert_eq!(b1, 0.0);
    assert!((b2 - 0.99f64.powf(0.8)).abs() < 1e-15, "beta2 {b2}");

    let mut adam = Adam::new(&store, config).unwrap();
    let mut expected = [1.0f64, -2.0, 0.5];
    let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
    for step in 1..=3 {
        // Loss Σ c_i w_i² gives the gradient 2 c_i w_i.
        let c = Tensor::new(&[1.0f32, 3.0, -0.5], &Device::Cpu).unwrap();
        let loss = (var.as_tensor().sqr().unwrap() * &c).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        adam.step(&grads).unwrap();
        let coef = [1.0, 3.0, -0.5];
        for i in 0..3 {
            let g = 2.0 * coef[i] * expected[i];
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            let m_hat = m[i] / (1.0 - b1.powi(step));
            let v_hat = v[i] / (1.0 - b2.powi(step));
            expected[i] -= lr * m_hat / (v_hat.sqrt() + 1e-8);
        }
    }
    let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
    for i in 0..3 {
        assert!((got[i] as f64 - expected[i]).abs() < 1e-6, "element {i}: {} vs {}", got[i], expected[i]);
    }
}

#[test]
fn ema_update_step() {
    let trained = ParamStore::new(&Device::Cpu);
    trained.root().param("w", &[2], Init::Constant(0.0)).unwrap().set(&Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap()).unwrap();
    let ema = trained.deep_copy().unwrap();
    ema.get("w").unwrap().set(&Tensor::new(&[0.0f32, 0.0], &Device::Cpu).unwrap()).unwrap();
    ema_update(&ema, &trained, EMA_MOMENTUM).unwrap();
    let got: Vec<f32> = ema.get("w").unwrap().as_tensor().to_vec1().unwrap();
    let step = 1.0 - EMA_MOMENTUM;
    assert!((got[0] as f64 - step).abs() < 1e-7, "{got:?}");
    assert!((got[1] as f64 - 2.0 * step).abs() < 1e-7, "{got:?}");
    assert!((EMA_MOMENTUM - 0.5f64.powf(0.0032)).abs() < 1e-15);
}

#[test]
fn scale_sampling_uniform_and_weighted() {
    let uniform = MsPieScaleSampler::new(&[0, 2, 4], Some(&[0.5, 0.25, 0.25]), ScaleSampling::Uniform).unwrap();
    let weighted = MsPieScaleSampler::new(&[0, 2, 4], Some(&[0.5, 0.25, 0.25]), ScaleSampling::Weighted).unwrap();
    let mut rng = SeededRng::new(3);
    let draws = 30_000;
    let mut counts = [[0usize; 3]; 2];
    for _ in 0..draws {
        counts[0][uniform.draw(&mut rng) / 2] += 1;
        counts[1][weighted.draw(&mut rng) / 2] += 1;
    }
    let freq = |c: usize| c as f64 / draws as f64;
    for (i, expected) in [1.0 / 3.0; 3].iter().enumerate() {
        assert!((freq(counts[0][i]) - expected).abs() < 0.015, "uniform {counts:?}");
    }
    for (i, expected) in [0.5, 0.25, 0.25].iter().enumerate() {
        assert!((freq(counts[1][i]) - expected).abs() < 0.015, "weighted {counts:?}");
    }
    assert!(MsPieScaleSampler::new(&[0, 2], Some(&[1.0]), ScaleSampling::Weighted).is_err());
    assert!(MsPieScaleSampler::new(&[], None, ScaleSampling::Uniform).is_err());
}

#[test]
fn data_order_per_epoch() {
    let folder = ImageFolder::open(&faces()).unwrap();
    let n = folder.len();
    assert_eq!(n, 1115);
    let batch = 5;
    let mut seen = vec![0usize; n];
    let mut flips = 0;
    for t in 0..(n / batch) as u64 {
        for (index, flip) in folder.batch_plan(7, t, batch) {
            seen[index] += 1;
            flips += flip as usize;
        }
    }
    assert!(seen.iter().all(|&c| c == 1), "an image was skipped or repeated in the first epoch");
    assert!((flips as f64 / n as f64 - 0.5).abs() < 0.06, "{flips} flips of {n}");
    assert_eq!(folder.batch_plan(7, 40, batch), folder.batch_plan(7, 40, batch));
    assert_ne!(folder.batch_plan(7, 40, batch), folder.batch_plan(8, 40, batch));

    let image = folder.load(0, 64, false).unwrap();
    let mirrored = folder.load(0, 64, true).unwrap();
    assert_eq!(image.dims(), [3, 64, 64]);
    let flipped_back = Tensor::cat(&(0..64).rev().map(|x| mirrored.narrow(2, x, 1).unwrap()).collect::<Vec<_>>(), 2).unwrap();
    assert_eq!(common::max_abs_diff(&image, &flipped_back), 0.0);
    let small = folder.load(0, 32, false).unwrap();
    assert_eq!(small.dims(), [3, 32, 32]);
}

#[test]
fn empty_folder_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let error = ImageFolder::open(dir.path()).unwrap_err().to_string();
    assert!(error.contains(&dir.path().display().to_string()), "{error}");
    assert!(error.contains("no .png"), "{error}");
}

#[test]
fn model_save_load_roundtrip() {
    let model = StyleGan2Model::new(&tiny_config(), 11, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    model.save(&path).unwrap();
    let loaded = StyleGan2Model::load(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.metadata, model.metadata);
    let (a, b) = (tensors_of(&model), tensors_of(&loaded));
    assert_eq!(a.len(), b.len());
    for (key, t) in &a {
        assert_eq!(common::max_abs_diff(t, &b[key]), 0.0, "{key}");
    }
}

#[test]
fn resume_matches_uninterrupted_run() {
    let config = tiny_config();
    let folder = ImageFolder::open(&faces()).unwrap();

    // Iteration 0 runs R1 and path length; iteration 1 runs neither.
    let mut straight = StyleGan2Trainer::new(StyleGan2Model::new(&config, 5, &Device::Cpu).unwrap(), folder.clone()).unwrap();
    straight.train(3, &mut |_, _| Ok(Control::Continue)).unwrap();
    let straight = straight.into_model().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let mut first = StyleGan2Trainer::new(StyleGan2Model::new(&config, 5, &Device::Cpu).unwrap(), folder.clone()).unwrap();
    first.train(2, &mut |_, _| Ok(Control::Continue)).unwrap();
    first.checkpoint().unwrap().save(&path).unwrap();
    drop(first);
    let mut second = StyleGan2Trainer::new(StyleGan2Model::load(&path, &Device::Cpu).unwrap(), folder).unwrap();
    second.train(3, &mut |_, _| Ok(Control::Continue)).unwrap();
    let resumed = second.into_model().unwrap();

    assert_eq!(resumed.metadata.iteration, 3);
    let (a, b) = (tensors_of(&straight), tensors_of(&resumed));
    for (key, t) in &a {
        assert_eq!(common::max_abs_diff(t, &b[key]), 0.0, "{key} differs after resuming");
    }
    assert!(resumed.mean_path_length > 0.0);
}

/// Converts a (1, 3, H, W) BGR tensor in [-1, 1] into a decoded 8-bit image for the SWD.
fn to_loaded_image(t: &Tensor) -> pegan_core::image::LoadedImage {
    let (_, _, h, w) = t.dims4().unwrap();
    let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let plane = h * w;
    let mut bgr = vec![0u8; 3 * plane];
    for i in 0..plane {
        for c in 0..3 {
            bgr[3 * i + c] = (((values[c * plane + i] + 1.0) * 127.5).round().clamp(0.0, 255.0)) as u8;
        }
    }
    pegan_core::image::LoadedImage { width: w, height: h, bgr, alpha: None, source_channels: 3, source_bit_depth: 8 }
}

/// SWD × 10³ between 64 training images and 64 samples of the trained (not EMA) generator, at 32 px.
fn swd_to_data(model: &StyleGan2Model, folder: &ImageFolder, first_seed: u64) -> f64 {
    use pegan_core::metrics::swd::{sliced_wasserstein, SwdConfig};
    use pegan_core::stylegan2::sample::{SampleOptions, StyleGan2Sampler};

    let real: Vec<_> = (0..64)
        .map(|i| to_loaded_image(&folder.load(i * 17, 32, false).unwrap().unsqueeze(0).unwrap()))
        .collect();
    let sampler = StyleGan2Sampler::new(model, SampleOptions { use_ema: false, ..SampleOptions::default() }).unwrap();
    let fake: Vec<_> = (0..64).map(|seed| to_loaded_image(&sampler.sample_seed(first_seed + seed).unwrap())).collect();
    sliced_wasserstein(&real, &fake, &SwdConfig::default()).unwrap().average
}

#[test]
fn short_run_lowers_swd() {
    let folder = ImageFolder::open(&faces()).unwrap();
    let model = StyleGan2Model::new(&StyleGan2Config::preset("tiny").unwrap(), 1, &Device::Cpu).unwrap();
    let before = swd_to_data(&model, &folder, 1000);
    // Another set of samples from the same untrained model shows how much the estimate varies.
    let spread = (swd_to_data(&model, &folder, 5000) - before).abs();

    let mut trainer = StyleGan2Trainer::new(model, folder.clone()).unwrap();
    let mut reports = Vec::new();
    trainer
        .train(60, &mut |_, report| {
            reports.push(report.clone());
            Ok(Control::Continue)
        })
        .unwrap();
    assert_eq!(reports.len(), 60);
    for r in &reports {
        assert!(r.loss_d.is_finite(), "iteration {}: {r:?}", r.iteration);
        assert!(r.loss_g.is_finite(), "iteration {}: {r:?}", r.iteration);
        // Iterations are reported from 1, so the regularisers run on reports 1, 17, … (R1) and 1, 5, … (path length).
        assert_eq!(r.r1.is_some(), (r.iteration - 1) % 16 == 0, "R1 schedule at {}", r.iteration);
        assert_eq!(r.path_length_penalty.is_some(), (r.iteration - 1) % 4 == 0, "path-length schedule at {}", r.iteration);
    }
    let sides: std::collections::BTreeSet<usize> = reports.iter().map(|r| r.side).collect();
    assert_eq!(sides.into_iter().collect::<Vec<_>>(), [32, 48, 64], "every training scale should be drawn");

    let after = swd_to_data(trainer.model(), &folder, 1000);
    eprintln!("SWD ×10³ before {before:.2} (spread {spread:.2}), after {after:.2}");
    assert!(
        before - after > 5.0 * spread.max(1.0),
        "SWD ×10³ went from {before:.1} to {after:.1} with a sampling spread of {spread:.1}; training should lower it clearly"
    );
}
