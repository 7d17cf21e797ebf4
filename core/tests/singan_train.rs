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
    let cases = [
        (31, 17),
        (13, 7),
        (mid.1 - 1, mid.0 - 1),
        (w / 2, h / 2),
        (3 * w, 3 * h),
        (h, w),
        (1, 1),
    ];
    for start_stage in [0, 2] {
        for (width, height) in cases {
            let options = SampleOptions {
                size: OutputSize::Pixels { width, height },
                start_stage,
                ..SampleOptions::default()
            };
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
        .train(
            &mut |p| if p.stage == 1 && p.iteration == 2 { Control::Cancel } else { Control::Continue },
            &mut |m| {
                saved.push(m.metadata.finished_stages);
                Ok(())
            },
        )
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
