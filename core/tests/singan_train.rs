//! Training smoke tests on the tiny preset, the model file, retargeting sizes and bad input.

mod common;

use candle_core::Device;
use common::{data_dir, max_abs_diff};
use pegan_core::image::load_image;
use pegan_core::progress::Control;
use pegan_core::singan::{
    NoiseMode, OutputSize, Preset, SampleOptions, SinGanConfig, SinGanModel, SinGanTrainer, TrainOutcome, Variant,
};

fn balloons() -> pegan_core::image::LoadedImage {
    load_image(&data_dir().join("singan/balloons.png")).expect("balloons.png loads")
}

fn train_tiny(variant: Variant, seed: u64, iterations: usize) -> (SinGanModel, Vec<f64>) {
    let config = SinGanConfig::preset(variant, Preset::Tiny)
        .unwrap()
        .with_overrides(&serde_json::json!({ "train": { "iters_per_scale": iterations } }))
        .unwrap();
    let mut trainer = SinGanTrainer::new(&balloons(), &config, seed, &Device::Cpu).unwrap();
    let mut stage0_recon = Vec::new();
    let outcome = trainer
        .train(
            &mut |p| {
                assert!(p.loss_d.is_finite() && p.loss_g_adv.is_finite() && p.loss_recon.is_finite());
                if p.stage == 0 {
                    stage0_recon.push(p.loss_recon);
                }
                Control::Continue
            },
            &mut |_| Ok(()),
        )
        .unwrap();
    assert_eq!(outcome, TrainOutcome::Finished);
    (trainer.into_model(), stage0_recon)
}

#[test]
fn tiny_training_reduces_reconstruction_error() {
    let (model, recon) = train_tiny(Variant::Csg, 1, 40);
    assert!(model.is_complete());
    assert_eq!(model.metadata.noise_weights.len(), model.num_stages());
    let first = recon[..5].iter().sum::<f64>() / 5.0;
    let last = recon[recon.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.7 * first, "stage-0 reconstruction error went from {first} to {last}");
}

#[test]
fn every_variant_trains_and_samples() {
    for variant in Variant::ALL {
        let (model, _) = train_tiny(variant, 2, 2);
        let image = model.sample(&SampleOptions::default(), 0).unwrap();
        let sizes = model.stage_sizes();
        let (h, w) = *sizes.last().unwrap();
        assert_eq!(image.dims(), &[1, 3, h, w], "{variant:?}");
        let values = image.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{variant:?} produced non-finite pixels");
    }
}

#[test]
fn same_seed_gives_same_pixels() {
    let (a, _) = train_tiny(Variant::Baseline, 5, 3);
    let (b, _) = train_tiny(Variant::Baseline, 5, 3);
    let options = SampleOptions { seed: 11, ..SampleOptions::default() };
    let diff = max_abs_diff(&a.sample(&options, 0).unwrap(), &b.sample(&options, 0).unwrap());
    assert_eq!(diff, 0.0, "two runs with one seed differ");

    let other = SampleOptions { seed: 12, ..SampleOptions::default() };
    let diff = max_abs_diff(&a.sample(&options, 0).unwrap(), &a.sample(&other, 0).unwrap());
    assert!(diff > 1e-3, "different sampling seeds gave the same image");
}

#[test]
fn model_file_round_trips() {
    let (model, _) = train_tiny(Variant::InterpPad, 3, 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.pegan");
    model.save(&path).unwrap();
    let loaded = SinGanModel::load(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.metadata, model.metadata);

    let options = SampleOptions { seed: 4, ..SampleOptions::default() };
    let diff = max_abs_diff(&model.sample(&options, 0).unwrap(), &loaded.sample(&options, 0).unwrap());
    assert_eq!(diff, 0.0);
    let recon = SampleOptions { mode: NoiseMode::Reconstruction, ..SampleOptions::default() };
    let diff = max_abs_diff(&model.sample(&recon, 0).unwrap(), &loaded.sample(&recon, 0).unwrap());
    assert_eq!(diff, 0.0);
}

#[test]
fn retarget_gives_exact_sizes() {
    let (model, _) = train_tiny(Variant::Csg, 6, 1);
    let (h, w) = *model.stage_sizes().last().unwrap();
    let mid = model.stage_sizes()[1];
    let cases = [(31, 17), (13, 7), (mid.1 - 1, mid.0 - 1), (w / 2, h / 2), (3 * w, 3 * h), (h, w), (1, 1)];
    for start_stage in [0, 2] {
        for (width, height) in cases {
            let options =
                SampleOptions { size: OutputSize::Pixels { width, height }, start_stage, ..SampleOptions::default() };
            let image = model.sample(&options, 0).unwrap();
            assert_eq!(image.dims(), &[1, 3, height, width], "start stage {start_stage}");
        }
    }
    let half = SampleOptions { size: OutputSize::Factors { width: 0.5, height: 3.0 }, ..SampleOptions::default() };
    let image = model.sample(&half, 0).unwrap();
    assert_eq!(image.dims(), &[1, 3, (3 * h as u64) as usize, (w as f64 * 0.5 + 0.5) as usize]);
}

#[test]
fn bad_sample_requests_are_rejected() {
    let (model, _) = train_tiny(Variant::Baseline, 8, 1);
    let zero = SampleOptions { size: OutputSize::Pixels { width: 0, height: 10 }, ..SampleOptions::default() };
    let message = model.sample(&zero, 0).unwrap_err().to_string();
    assert!(message.contains("0×10"), "{message}");

    let negative = SampleOptions { size: OutputSize::Factors { width: -1.0, height: 1.0 }, ..SampleOptions::default() };
    assert!(model.sample(&negative, 0).unwrap_err().to_string().contains("-1"));

    let huge = SampleOptions { size: OutputSize::Pixels { width: 60_000, height: 60_000 }, ..SampleOptions::default() };
    let message = model.sample(&huge, 0).unwrap_err().to_string();
    assert!(message.contains("MiB"), "{message}");

    let stage = SampleOptions { start_stage: 99, ..SampleOptions::default() };
    assert!(model.sample(&stage, 0).unwrap_err().to_string().contains("99"));
}

#[test]
fn cancelled_training_keeps_finished_stages() {
    let config = SinGanConfig::preset(Variant::Csg, Preset::Tiny).unwrap();
    let mut trainer = SinGanTrainer::new(&balloons(), &config, 9, &Device::Cpu).unwrap();
    let mut saved = Vec::new();
    let outcome = trainer
        .train(&mut |p| if p.stage == 1 && p.iteration == 2 { Control::Cancel } else { Control::Continue }, &mut |m| {
            saved.push(m.metadata.finished_stages);
            Ok(())
        })
        .unwrap();
    assert_eq!(outcome, TrainOutcome::Cancelled);
    assert_eq!(saved, vec![1]);
    let model = trainer.into_model();
    assert_eq!(model.metadata.finished_stages, 1);

    let message = model.sample(&SampleOptions::default(), 0).unwrap_err().to_string();
    assert!(message.contains("only stage 0") && message.contains("resume"), "{message}");

    // Resuming finishes the remaining stages and gives the model an uninterrupted run would.
    let mut resumed = SinGanTrainer::resume(model, &balloons()).unwrap();
    let outcome = resumed.train(&mut |_| Control::Continue, &mut |_| Ok(())).unwrap();
    assert_eq!(outcome, TrainOutcome::Finished);
    let resumed = resumed.into_model();

    let mut straight = SinGanTrainer::new(&balloons(), &config, 9, &Device::Cpu).unwrap();
    straight.train(&mut |_| Control::Continue, &mut |_| Ok(())).unwrap();
    let straight = straight.into_model();
    let options = SampleOptions::default();
    let diff = max_abs_diff(&resumed.sample(&options, 0).unwrap(), &straight.sample(&options, 0).unwrap());
    assert!(diff < 1e-5, "resumed training differs from an uninterrupted run by {diff}");
}

#[test]
fn corrupt_model_files_are_rejected() {
    let (model, _) = train_tiny(Variant::Baseline, 10, 1);
    let dir = tempfile::tempdir().unwrap();
    let bytes = model.to_bytes().unwrap();

    let truncated = dir.path().join("truncated.pegan");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let message = SinGanModel::load(&truncated, &Device::Cpu).unwrap_err().to_string();
    assert!(message.contains("truncated.pegan"), "{message}");

    let garbage = dir.path().join("garbage.pegan");
    std::fs::write(&garbage, b"not a model at all").unwrap();
    assert!(SinGanModel::load(&garbage, &Device::Cpu).is_err());

    let empty = dir.path().join("empty.pegan");
    std::fs::write(&empty, b"").unwrap();
    assert!(SinGanModel::load(&empty, &Device::Cpu).is_err());

    let missing = dir.path().join("missing.pegan");
    let message = SinGanModel::load(&missing, &Device::Cpu).unwrap_err().to_string();
    assert!(message.contains("missing.pegan"), "{message}");

    // A file from a newer format version names the version and the fix.
    let mut newer = model.clone();
    newer.metadata.format_version = 99;
    let path = dir.path().join("newer.pegan");
    newer.save(&path).unwrap();
    let message = SinGanModel::load(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(message.contains("99") && message.contains("upgrade"), "{message}");
}

#[test]
fn unknown_variant_is_rejected() {
    let message = Variant::from_name("spe16").unwrap_err().to_string();
    assert!(message.contains("spe16") && message.contains("csg"), "{message}");
}

/// Trains a baseline model for one iteration of stage 0 and stops before stage 1, so later stages are untrained.
fn partly_trained(seed: u64) -> SinGanModel {
    let config = SinGanConfig::preset(Variant::Baseline, Preset::Tiny)
        .unwrap()
        .with_overrides(&serde_json::json!({ "train": { "iters_per_scale": 1 } }))
        .unwrap();
    let mut trainer = SinGanTrainer::new(&balloons(), &config, seed, &Device::Cpu).unwrap();
    let outcome = trainer
        .train(&mut |p| if p.stage == 1 { Control::Cancel } else { Control::Continue }, &mut |_| Ok(()))
        .unwrap();
    assert_eq!(outcome, TrainOutcome::Cancelled);
    trainer.into_model()
}

/// Loads `model` from bytes after `tamper` has changed its metadata, and returns the error message.
fn load_error(model: &SinGanModel, tamper: impl FnOnce(&mut pegan_core::singan::ModelMetadata)) -> String {
    let mut tampered = model.clone();
    tamper(&mut tampered.metadata);
    let bytes = tampered.to_bytes().unwrap();
    match SinGanModel::from_bytes(&bytes, &Device::Cpu) {
        Ok(_) => panic!("tampered metadata {:?} loaded", tampered.metadata),
        Err(error) => error.to_string(),
    }
}

#[test]
fn metadata_that_contradicts_tensors_is_rejected() {
    let model = partly_trained(21);

    // Each claim would have made the loader allocate terabytes (and abort) before any shape check.
    let message = load_error(&model, |m| m.stage_sizes[0] = [1 << 20, 1 << 20]);
    assert!(message.contains("stage sizes"), "{message}");
    assert!(message.contains("16384"), "{message}");
    let message = load_error(&model, |m| {
        m.config.generator.base_channels = 1 << 20;
        m.config.generator.max_channels = 1 << 20;
    });
    assert!(message.contains("generator.base_channels"), "{message}");
    assert!(message.contains("1024"), "{message}");
    let message = load_error(&model, |m| m.config.discriminator.num_layers = 1 << 40);
    assert!(message.contains("num_layers"), "{message}");
    assert!(message.contains("32"), "{message}");
    let message = load_error(&model, |m| m.config.generator.kernel_size = 1001);
    assert!(message.contains("kernel_size"), "{message}");
    assert!(message.contains("11"), "{message}");

    // Claims within the bounds must match the stored tensors.
    let message = load_error(&model, |m| m.stage_sizes[1] = [4096, 4096]);
    assert!(message.contains("'fixed_noises.1'"), "{message}");
    assert!(message.contains("4096"), "{message}");
    let message = load_error(&model, |m| {
        m.config.generator.base_channels = 1024;
        m.config.generator.max_channels = 1024;
    });
    assert!(message.contains("'generator.blocks.0.head.conv.weight'"), "{message}");
    let message = load_error(&model, |m| m.config.generator.num_layers = 30);
    assert!(message.contains("missing tensor 'generator.blocks.0.body.block4.conv.weight'"), "{message}");
    let message = load_error(&model, |m| {
        m.config.discriminator.base_channels = 512;
        m.config.discriminator.max_channels = 512;
    });
    assert!(message.contains("'discriminator.blocks.0.head.conv.weight'"), "{message}");
    let message = load_error(&model, |m| m.training_image_size = [0, 5]);
    assert!(message.contains("training image size"), "{message}");
}

#[test]
fn non_finite_tensors_are_rejected_by_name() {
    let model = partly_trained(22);
    let cases = [("generator.blocks.0.head.conv.weight", f32::INFINITY), ("fixed_noises.0", f32::NAN)];
    for (key, bad_value) in cases {
        let mut tensors: std::collections::HashMap<_, _> = model.named_tensors().into_iter().collect();
        let original = &tensors[key];
        let mut values = original.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        values[3] = bad_value;
        let corrupted = candle_core::Tensor::from_vec(values, original.dims(), &Device::Cpu).unwrap();
        tensors.insert(key.to_string(), corrupted);

        let message = SinGanModel::from_parts(model.metadata.clone(), &tensors, &Device::Cpu).unwrap_err().to_string();
        assert!(message.contains(&format!("'{key}'")), "{message}");
        assert!(message.contains(&bad_value.to_string()), "{message}");
    }
}

#[test]
fn resume_checks_image_content() {
    let model = partly_trained(23);
    let image = balloons();
    assert_eq!(model.metadata.training_image_hash, Some(image.pixel_hash()));

    // One changed pixel keeps the size, so only the content hash distinguishes the images.
    let mut edited = image.clone();
    edited.bgr[100] = edited.bgr[100].wrapping_add(1);
    let message =
        SinGanTrainer::resume(model.clone(), &edited).err().expect("resuming on an edited image fails").to_string();
    assert!(message.contains("differ"), "{message}");
    assert!(message.contains("same image"), "{message}");
    assert!(SinGanTrainer::resume(model.clone(), &image).is_ok());

    // A file without the hash, as older versions wrote, loads and resumes without the check.
    let mut old = model.clone();
    old.metadata.training_image_hash = None;
    let bytes = old.to_bytes().unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8_lossy(&bytes[8..8 + header_len]).into_owned();
    assert!(!header.contains("training_image_hash"), "{header}");
    let loaded = SinGanModel::from_bytes(&bytes, &Device::Cpu).unwrap();
    assert_eq!(loaded.metadata.training_image_hash, None);
    assert!(SinGanTrainer::resume(loaded, &edited).is_ok());
}

#[test]
fn config_bounds_and_signs_are_checked() {
    let base = SinGanConfig::preset(Variant::Csg, Preset::Tiny).unwrap();
    let cases = [
        (serde_json::json!({ "train": { "lr_g": -0.0005 } }), "train.lr_g"),
        (serde_json::json!({ "train": { "lr_d": 0.0 } }), "train.lr_d"),
        (serde_json::json!({ "train": { "lr_gamma": -1.0 } }), "train.lr_gamma"),
        (serde_json::json!({ "train": { "gp_weight": -0.1 } }), "train.gp_weight"),
        (serde_json::json!({ "train": { "betas": [0.5, 1.0] } }), "train.betas[1]"),
        (serde_json::json!({ "generator": { "num_layers": 33 } }), "num_layers"),
        (serde_json::json!({ "discriminator": { "kernel_size": 13 } }), "kernel_size"),
        (serde_json::json!({ "discriminator": { "max_channels": 1025 } }), "discriminator.max_channels"),
        (serde_json::json!({ "generator": { "min_feat_channels": 0 } }), "generator.min_feat_channels"),
    ];
    for (overrides, names) in cases {
        let message = base.with_overrides(&overrides).unwrap_err().to_string();
        assert!(message.contains(names), "{overrides}: {message}");
    }

    let spe = SinGanConfig::preset(Variant::Spe4, Preset::Tiny).unwrap();
    let huge_table = serde_json::json!({ "generator": { "positional_encoding": { "init_size": 1u64 << 40 } } });
    let message = spe.with_overrides(&huge_table).unwrap_err().to_string();
    assert!(message.contains("init_size"), "{message}");
}
