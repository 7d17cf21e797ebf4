//! The work of the GPU check: parity of a target device against a reference device, short training
//! runs with the gradient penalties, and timings on the target, collected into a [`Report`].
//!
//! `core/tests/gpu_check_smoke.rs` includes this file to run the smoke mode on the CPU.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

use pegan_core::image::load_image;
use pegan_core::layers::NormMode;
use pegan_core::progress::Control;
use pegan_core::rng::SeededRng;
use pegan_core::singan::generator::StageStart;
use pegan_core::singan::penalty::gradient_penalty;
use pegan_core::singan::{
    NoiseMode, OutputSize, Preset, SampleOptions, SinGanConfig, SinGanModel, SinGanTrainer, Variant,
};
use pegan_core::stylegan2::config::GeneratorKind;
use pegan_core::stylegan2::dataset::ImageFolder;
use pegan_core::stylegan2::generator::Noise;
use pegan_core::stylegan2::head::ChosenScale;
use pegan_core::stylegan2::mapping::broadcast_style;
use pegan_core::stylegan2::model::StyleGan2Model;
use pegan_core::stylegan2::preset::StyleGan2Config;
use pegan_core::stylegan2::r1::{r1_penalty, R1_LOSS_WEIGHT};
use pegan_core::stylegan2::sample::{SampleOptions as StyleGan2SampleOptions, StyleGan2Sampler};
use pegan_core::stylegan2::train::{path_length_penalty, StyleGan2Trainer};
use pegan_core::{Error, Result};

/// Largest accepted difference of an image, relative to `max(1, max |reference|)`. Images are in about
/// [-1, 1], so this is 1e-3 in pixel units.
pub const IMAGE_TOLERANCE: f64 = 1e-3;
/// Largest accepted difference of a gradient tensor, relative to its largest reference magnitude.
pub const GRADIENT_TOLERANCE: f64 = 1e-3;
/// Largest accepted difference of a loss or penalty value, relative to `max(1, |reference|)`.
pub const LOSS_TOLERANCE: f64 = 1e-3;

/// Options of the check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Small models and sizes (the `tiny` presets) so that a CPU finishes in seconds; for CI.
    pub smoke: bool,
    /// Run the timings on the target device.
    pub timings: bool,
    /// Timed runs per measurement, after one warm-up run.
    pub timing_runs: usize,
    /// Training image of SinGAN; crops of it are the StyleGAN2 training folder.
    pub image: PathBuf,
    /// Folder for the StyleGAN2 training images.
    pub work_dir: PathBuf,
    pub seed: u64,
}

/// Result of one comparison of the target against the reference.
#[derive(Debug, Clone, Serialize)]
pub struct ParityEntry {
    pub name: String,
    pub max_abs_diff: f64,
    /// The scale that the tolerance is relative to (see the tolerance constants).
    pub scale: f64,
    pub tolerance: f64,
    pub passed: bool,
    /// The worst tensor of a gradient comparison, or other detail.
    pub detail: String,
}

/// Losses of a short training run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingEntry {
    pub name: String,
    pub device: String,
    pub iterations: usize,
    /// One line per reported iteration, e.g. `loss_d=… r1=…`.
    pub losses: Vec<String>,
    pub all_finite: bool,
    pub seconds: f64,
}

/// One timed operation on the target device.
#[derive(Debug, Clone, Serialize)]
pub struct TimingEntry {
    /// Stable name shared with bench/gpu_torch.py, which times the same work in PyTorch.
    pub name: String,
    pub device: String,
    pub what: String,
    pub median_ms: f64,
    pub min_ms: f64,
    pub runs: usize,
}

/// A section that failed with an error instead of producing its entries.
#[derive(Debug, Clone, Serialize)]
pub struct FailureEntry {
    pub section: String,
    pub error: String,
}

/// Everything the check found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target_device: String,
    pub reference_device: String,
    pub mode: String,
    pub image_tolerance: f64,
    pub gradient_tolerance: f64,
    pub loss_tolerance: f64,
    pub parity: Vec<ParityEntry>,
    pub training: Vec<TrainingEntry>,
    pub timings: Vec<TimingEntry>,
    pub failures: Vec<FailureEntry>,
    pub passed: bool,
    pub elapsed_s: f64,
}

impl Report {
    fn new(target: &Device, reference: &Device, smoke: bool) -> Self {
        Report {
            target_device: device_name(target),
            reference_device: device_name(reference),
            mode: if smoke { "smoke" } else { "full" }.into(),
            image_tolerance: IMAGE_TOLERANCE,
            gradient_tolerance: GRADIENT_TOLERANCE,
            loss_tolerance: LOSS_TOLERANCE,
            parity: Vec::new(),
            training: Vec::new(),
            timings: Vec::new(),
            failures: Vec::new(),
            passed: false,
            elapsed_s: 0.0,
        }
    }

    /// Runs one section and records its error, if any, so that later sections still run.
    fn section(&mut self, name: &str, body: impl FnOnce(&mut Report) -> Result<()>) {
        let started = Instant::now();
        eprintln!("gpu_check: {name} ...");
        if let Err(error) = body(self) {
            eprintln!("gpu_check: {name} failed: {error}");
            self.failures.push(FailureEntry { section: name.into(), error: error.to_string() });
        } else {
            eprintln!("gpu_check: {name} done in {:.1} s", started.elapsed().as_secs_f64());
        }
    }

    /// Renders the report as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        md.push_str(&format!(
            "# pegan GPU check\n\nTarget `{}` against reference `{}`, {} mode, {:.0} s. Result: **{}**.\n\n",
            self.target_device,
            self.reference_device,
            self.mode,
            self.elapsed_s,
            if self.passed { "passed" } else { "FAILED" }
        ));
        md.push_str(&format!(
            "Tolerances (f32): images {} × max(1, max|reference|); gradients {} × max|reference gradient| per \
             tensor; losses {} × max(1, |reference|).\n\n",
            self.image_tolerance, self.gradient_tolerance, self.loss_tolerance
        ));
        md.push_str(
            "## Parity\n\n| check | max abs diff | scale | tolerance | result | detail |\n|---|---|---|---|---|---|\n",
        );
        for p in &self.parity {
            md.push_str(&format!(
                "| {} | {:.3e} | {:.3e} | {:.0e} | {} | {} |\n",
                p.name,
                p.max_abs_diff,
                p.scale,
                p.tolerance,
                if p.passed { "ok" } else { "FAIL" },
                p.detail
            ));
        }
        md.push_str(
            "\n## Training\n\n| run | device | iterations | finite | seconds | losses |\n|---|---|---|---|---|---|\n",
        );
        for t in &self.training {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {:.2} | {} |\n",
                t.name,
                t.device,
                t.iterations,
                if t.all_finite { "yes" } else { "NO" },
                t.seconds,
                t.losses.join("; ")
            ));
        }
        md.push_str(
            "\n## Timings\n\n| name | device | work | median ms | min ms | runs |\n|---|---|---|---|---|---|\n",
        );
        for t in &self.timings {
            md.push_str(&format!(
                "| {} | {} | {} | {:.2} | {:.2} | {} |\n",
                t.name, t.device, t.what, t.median_ms, t.min_ms, t.runs
            ));
        }
        if !self.failures.is_empty() {
            md.push_str("\n## Failed sections\n\n");
            for f in &self.failures {
                md.push_str(&format!("- {}: {}\n", f.section, f.error.replace('\n', " ")));
            }
        }
        md
    }

    /// Writes `report.json` and `report.md` into `folder`.
    pub fn write(&self, folder: &Path) -> Result<()> {
        std::fs::create_dir_all(folder).map_err(|e| Error::write(folder, e))?;
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::invalid(e.to_string()))?;
        let json_path = folder.join("report.json");
        std::fs::write(&json_path, json).map_err(|e| Error::write(&json_path, e))?;
        let md_path = folder.join("report.md");
        std::fs::write(&md_path, self.to_markdown()).map_err(|e| Error::write(&md_path, e))?;
        Ok(())
    }
}

pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Runs every section and returns the report; a failed section is recorded, not returned as an error.
pub fn run(options: &CheckOptions, target: &Device, reference: &Device) -> Report {
    let started = Instant::now();
    let mut report = Report::new(target, reference, options.smoke);

    for variant in [Variant::Csg, Variant::Baseline] {
        report.section(&format!("singan {} generation parity", variant.name()), |r| {
            singan_generation_parity(r, options, variant, target, reference)
        });
    }
    report.section("singan gradient parity", |r| singan_gradient_parity(r, options, target, reference));
    report.section("singan training", |r| singan_training(r, options, target));
    report.section("stylegan2 sampling parity", |r| stylegan2_sampling_parity(r, options, target, reference));
    report.section("stylegan2 gradient parity", |r| stylegan2_gradient_parity(r, options, target, reference));
    report.section("stylegan2 training", |r| stylegan2_training(r, options, target, reference));
    if options.timings {
        report.section("singan timings", |r| singan_timings(r, options, target));
        report.section("stylegan2 timings", |r| stylegan2_timings(r, options, target));
    }

    let training_finite = report.training.iter().all(|t| t.all_finite);
    report.passed = report.failures.is_empty() && report.parity.iter().all(|p| p.passed) && training_finite;
    report.elapsed_s = started.elapsed().as_secs_f64();
    report
}

fn singan_preset(options: &CheckOptions) -> Preset {
    if options.smoke {
        Preset::Tiny
    } else {
        Preset::Paper
    }
}

/// Builds an untrained SinGAN on the check image, with every stage marked finished so that it samples,
/// and returns it with its training pyramid.
fn singan_model(options: &CheckOptions, variant: Variant) -> Result<(SinGanModel, Vec<Tensor>)> {
    let config = SinGanConfig::preset(variant, singan_preset(options))?;
    let image = load_image(&options.image)?;
    let trainer = SinGanTrainer::new(&image, &config, options.seed, &Device::Cpu)?;
    let reals = trainer.reals().to_vec();
    let mut model = trainer.into_model();
    let stages = model.num_stages();
    model.metadata.finished_stages = stages;
    model.metadata.noise_weights =
        (0..stages).map(|s| if s == 0 { 1.0 } else { config.train.noise_weight_init }).collect();
    Ok((model, reals))
}

/// Compares two tensors of one shape; the tolerance is relative to `max(floor, max |reference|)`.
fn compare(name: &str, reference: &Tensor, target: &Tensor, tolerance: f64, floor: f64) -> Result<ParityEntry> {
    if reference.dims() != target.dims() {
        return Err(Error::invalid(format!(
            "{name}: the reference has shape {:?} but the target {:?}",
            reference.dims(),
            target.dims()
        )));
    }
    let a = reference.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = target.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let max_abs_diff = (&a - &b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    let max_reference = a.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    let scale = max_reference.max(floor);
    let passed = max_abs_diff.is_finite() && max_abs_diff <= tolerance * scale;
    Ok(ParityEntry {
        name: name.into(),
        max_abs_diff,
        scale,
        tolerance,
        passed,
        detail: format!("shape {:?}", reference.dims()),
    })
}

fn compare_values(name: &str, reference: f64, target: f64) -> ParityEntry {
    let max_abs_diff = (reference - target).abs();
    let scale = reference.abs().max(1.0);
    ParityEntry {
        name: name.into(),
        max_abs_diff,
        scale,
        tolerance: LOSS_TOLERANCE,
        passed: max_abs_diff.is_finite() && max_abs_diff <= LOSS_TOLERANCE * scale,
        detail: format!("reference {reference:.6e}, target {target:.6e}"),
    }
}

/// Compares gradient lists tensor by tensor and returns one entry for the worst tensor.
fn compare_gradients(name: &str, reference: &[(String, Tensor)], target: &[(String, Tensor)]) -> Result<ParityEntry> {
    if reference.len() != target.len() {
        return Err(Error::invalid(format!(
            "{name}: {} reference gradients but {} target gradients",
            reference.len(),
            target.len()
        )));
    }
    let mut worst: Option<(f64, ParityEntry)> = None;
    let mut failed = Vec::new();
    for ((key, a), (_, b)) in reference.iter().zip(target) {
        // A floor far below f32 noise keeps an all-zero gradient from dividing by zero.
        let entry = compare(key, a, b, GRADIENT_TOLERANCE, 1e-30)?;
        if !entry.passed {
            failed.push(key.clone());
        }
        let ratio = entry.max_abs_diff / entry.scale;
        if worst.as_ref().is_none_or(|(r, _)| ratio > *r || ratio.is_nan()) {
            worst = Some((ratio, entry));
        }
    }
    let (_, worst) = worst.ok_or_else(|| Error::invalid(format!("{name}: no gradients to compare")))?;
    let detail = if failed.is_empty() {
        format!("{} tensors; worst {}", reference.len(), worst.name)
    } else {
        format!("{} tensors; outside tolerance: {}", reference.len(), failed.join(", "))
    };
    Ok(ParityEntry { name: name.into(), passed: failed.is_empty(), detail, ..worst })
}

fn gradients_of(grads: &candle_core::backprop::GradStore, vars: &[(String, Var)]) -> Result<Vec<(String, Tensor)>> {
    vars.iter()
        .map(|(key, var)| {
            let grad = grads.get(var.as_tensor()).cloned().unwrap_or(var.as_tensor().zeros_like()?);
            Ok((key.clone(), grad))
        })
        .collect()
}

fn singan_generation_parity(
    report: &mut Report,
    options: &CheckOptions,
    variant: Variant,
    target: &Device,
    reference: &Device,
) -> Result<()> {
    let (model, _) = singan_model(options, variant)?;
    let bytes = model.to_bytes()?;
    let on_reference = SinGanModel::from_bytes(&bytes, reference)?;
    let on_target = SinGanModel::from_bytes(&bytes, target)?;
    let &(height, width) = model.stage_sizes().last().expect("at least one stage");
    let cases = [
        ("sample", OutputSize::Trained, NoiseMode::Random),
        ("reconstruction", OutputSize::Trained, NoiseMode::Reconstruction),
        ("retarget 2x width", OutputSize::Factors { width: 2.0, height: 1.0 }, NoiseMode::Random),
        ("retarget half width", OutputSize::Pixels { width: width / 2, height }, NoiseMode::Random),
    ];
    for (label, size, mode) in cases {
        let sample_options = SampleOptions { size, mode, seed: options.seed + 1, ..Default::default() };
        let a = on_reference.sample(&sample_options, 0)?;
        let b = on_target.sample(&sample_options, 0)?;
        let (_, _, h, w) = a.dims4()?;
        let name = format!("singan {} {label} {w}x{h}", variant.name());
        report.parity.push(compare(&name, &a, &b, IMAGE_TOLERANCE, 1.0)?);
    }
    Ok(())
}

/// Losses and gradients of one WGAN-GP discriminator step and one generator step at the finest stage.
struct SinGanStepGradients {
    loss_d: f64,
    loss_g: f64,
    discriminator: Vec<(String, Tensor)>,
    generator: Vec<(String, Tensor)>,
}

fn singan_step_gradients(model: &SinGanModel, real: &Tensor, seed: u64) -> Result<SinGanStepGradients> {
    let device = &model.device;
    let config = model.config();
    let stage = model.num_stages() - 1;
    let sizes = model.stage_sizes();
    let pad = config.noise_padding();
    let mut rng = SeededRng::new(seed);
    let noises = sizes
        .iter()
        .enumerate()
        .map(|(s, &(h, w))| rng.normal(&[1, config.noise_channels(s), h + 2 * pad, w + 2 * pad], 0.0, 1.0, device))
        .collect::<Result<Vec<_>>>()?;
    let generate = |noises: &[Tensor]| -> Result<Tensor> {
        let start = StageStart { stage: 0, previous: None };
        let outputs = model.generator.forward(
            noises,
            &model.metadata.noise_weights,
            &sizes,
            &start,
            stage,
            NormMode::Train,
            Some(stage),
        )?;
        Ok(outputs.last().expect("one output per stage").clone())
    };
    let real = real.to_device(device)?;
    let critic = &model.discriminator.as_ref().ok_or_else(|| Error::invalid("the model has no discriminator"))?[stage];

    let fake = generate(&noises)?.detach();
    let score_fake = critic.forward(&fake, NormMode::Train)?.mean_all()?;
    let score_real = critic.forward(&real, NormMode::Train)?.mean_all()?;
    let alpha = rng.uniform(&[1, 1, 1, 1], device)?;
    let penalty = (gradient_penalty(critic, &real, &fake, &alpha)? * config.train.gp_weight)?;
    let loss_d = ((score_fake - score_real)? + penalty)?;
    let d_vars: Vec<(String, Var)> =
        critic.trainable().into_iter().enumerate().map(|(i, v)| (format!("discriminator.{stage}.{i}"), v)).collect();
    let discriminator = gradients_of(&loss_d.backward()?, &d_vars)?;

    let fake = generate(&noises)?;
    let recon = generate(&model.fixed_noises)?;
    let adversarial = critic.forward(&fake, NormMode::Train)?.mean_all()?.neg()?;
    let recon_mse = (recon - &real)?.sqr()?.mean_all()?;
    let loss_g = (adversarial + (recon_mse * config.train.recon_weight)?)?;
    let g_vars: Vec<(String, Var)> = model.generator.blocks[stage]
        .trainable()
        .into_iter()
        .enumerate()
        .map(|(i, v)| (format!("generator.{stage}.{i}"), v))
        .collect();
    let generator = gradients_of(&loss_g.backward()?, &g_vars)?;
    Ok(SinGanStepGradients {
        loss_d: loss_d.to_dtype(DType::F64)?.to_scalar()?,
        loss_g: loss_g.to_dtype(DType::F64)?.to_scalar()?,
        discriminator,
        generator,
    })
}

fn singan_gradient_parity(
    report: &mut Report,
    options: &CheckOptions,
    target: &Device,
    reference: &Device,
) -> Result<()> {
    let (model, reals) = singan_model(options, Variant::Csg)?;
    let bytes = model.to_bytes()?;
    let real = reals.last().expect("at least one stage");
    let a = singan_step_gradients(&SinGanModel::from_bytes(&bytes, reference)?, real, options.seed + 2)?;
    let b = singan_step_gradients(&SinGanModel::from_bytes(&bytes, target)?, real, options.seed + 2)?;
    let (_, _, h, w) = real.dims4()?;
    report.parity.push(compare_values(&format!("singan csg WGAN-GP loss_d {w}x{h}"), a.loss_d, b.loss_d));
    report.parity.push(compare_values(&format!("singan csg loss_g {w}x{h}"), a.loss_g, b.loss_g));
    report.parity.push(compare_gradients(
        &format!("singan csg discriminator gradients (with penalty) {w}x{h}"),
        &a.discriminator,
        &b.discriminator,
    )?);
    report.parity.push(compare_gradients(
        &format!("singan csg generator gradients {w}x{h}"),
        &a.generator,
        &b.generator,
    )?);
    Ok(())
}

/// Trains every stage for two iterations on the target and checks that the losses stay finite.
fn singan_training(report: &mut Report, options: &CheckOptions, target: &Device) -> Result<()> {
    let mut config = SinGanConfig::preset(Variant::Csg, singan_preset(options))?;
    config.train.iters_per_scale = 2;
    config.train.lr_milestones.clear();
    let image = load_image(&options.image)?;
    let mut trainer = SinGanTrainer::new(&image, &config, options.seed, target)?;
    let mut losses = Vec::new();
    let mut all_finite = true;
    let started = Instant::now();
    let mut iterations = 0;
    trainer.train(
        &mut |progress| {
            if !progress.stage_finished {
                iterations += 1;
                let values = [progress.loss_d, progress.gradient_penalty, progress.loss_g_adv, progress.loss_recon];
                all_finite &= values.iter().all(|v| v.is_finite());
                losses.push(format!(
                    "stage {} loss_d={:.4} gp={:.4} loss_g_adv={:.4} recon={:.4}",
                    progress.stage, values[0], values[1], values[2], values[3]
                ));
            }
            Control::Continue
        },
        &mut |_| Ok(()),
    )?;
    target.synchronize()?;
    report.training.push(TrainingEntry {
        name: format!("singan csg {:?} preset, every stage, 2 iterations each", singan_preset(options)),
        device: device_name(target),
        iterations,
        losses,
        all_finite,
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(())
}

fn stylegan2_preset(options: &CheckOptions) -> &'static str {
    if options.smoke {
        "tiny"
    } else {
        "config-f"
    }
}

fn stylegan2_sampling_parity(
    report: &mut Report,
    options: &CheckOptions,
    target: &Device,
    reference: &Device,
) -> Result<()> {
    let preset = stylegan2_preset(options);
    let config = StyleGan2Config::preset(preset)?;
    let bytes = StyleGan2Model::new(&config, options.seed, &Device::Cpu)?.to_bytes()?;
    let on_reference = StyleGan2Model::from_bytes(&bytes, reference)?;
    let on_target = StyleGan2Model::from_bytes(&bytes, target)?;
    let mut scales = vec![ChosenScale::default()];
    if config.generator.kind != GeneratorKind::Baseline {
        scales.push(ChosenScale::new(0, 2));
    }
    for scale in scales {
        let sample_options = StyleGan2SampleOptions { scale, ..Default::default() };
        let a = StyleGan2Sampler::new(&on_reference, sample_options.clone())?.sample_seed(options.seed + 3)?;
        let b = StyleGan2Sampler::new(&on_target, sample_options)?.sample_seed(options.seed + 3)?;
        let (_, _, h, w) = a.dims4()?;
        report.parity.push(compare(&format!("stylegan2 {preset} sample {w}x{h}"), &a, &b, IMAGE_TOLERANCE, 1.0)?);
    }
    Ok(())
}

/// R1 and path-length penalties and their parameter gradients on one device.
struct StyleGan2PenaltyGradients {
    r1: f64,
    path_length: f64,
    discriminator: Vec<(String, Tensor)>,
    generator: Vec<(String, Tensor)>,
}

fn stylegan2_penalty_gradients(model: &StyleGan2Model, seed: u64) -> Result<StyleGan2PenaltyGradients> {
    let device = &model.device;
    let (discriminator, d_params) =
        model.discriminator.as_ref().ok_or_else(|| Error::invalid("the model has no discriminator"))?;
    let side = model.config().generator.out_size;
    let mut rng = SeededRng::new(seed);
    let reals = rng.normal(&[4, 3, side, side], 0.0, 0.5, device)?;
    let r1 = r1_penalty(discriminator, &reals)?;
    let d_grads = gradients_of(&(&r1 * R1_LOSS_WEIGHT)?.backward()?, &d_params.vars())?;

    let (path_length, _) = path_length_penalty(&model.generator, 2, ChosenScale::default(), 0.0, 0.01, &mut rng)?;
    let g_grads = gradients_of(&path_length.backward()?, &model.generator_params.vars())?;
    Ok(StyleGan2PenaltyGradients {
        r1: r1.to_dtype(DType::F64)?.to_scalar()?,
        path_length: path_length.to_dtype(DType::F64)?.to_scalar()?,
        discriminator: d_grads,
        generator: g_grads,
    })
}

fn stylegan2_gradient_preset(options: &CheckOptions) -> &'static str {
    if options.smoke {
        "tiny"
    } else {
        "small"
    }
}

fn stylegan2_gradient_parity(
    report: &mut Report,
    options: &CheckOptions,
    target: &Device,
    reference: &Device,
) -> Result<()> {
    let preset = stylegan2_gradient_preset(options);
    let config = StyleGan2Config::preset(preset)?;
    let bytes = StyleGan2Model::new(&config, options.seed, &Device::Cpu)?.to_bytes()?;
    let a = stylegan2_penalty_gradients(&StyleGan2Model::from_bytes(&bytes, reference)?, options.seed + 4)?;
    let b = stylegan2_penalty_gradients(&StyleGan2Model::from_bytes(&bytes, target)?, options.seed + 4)?;
    report.parity.push(compare_values(&format!("stylegan2 {preset} R1 penalty"), a.r1, b.r1));
    report.parity.push(compare_values(
        &format!("stylegan2 {preset} path-length penalty"),
        a.path_length,
        b.path_length,
    ));
    report.parity.push(compare_gradients(
        &format!("stylegan2 {preset} discriminator gradients of R1"),
        &a.discriminator,
        &b.discriminator,
    )?);
    report.parity.push(compare_gradients(
        &format!("stylegan2 {preset} generator gradients of path length"),
        &a.generator,
        &b.generator,
    )?);
    Ok(())
}

/// Writes square crops of the check image, the StyleGAN2 training folder.
fn write_training_folder(options: &CheckOptions) -> Result<PathBuf> {
    let folder = options.work_dir.join("stylegan2-images");
    std::fs::create_dir_all(&folder).map_err(|e| Error::write(&folder, e))?;
    let source = image::open(&options.image).map_err(|e| Error::read(&options.image, e))?.to_rgb8();
    let side = source.width().min(source.height());
    let step = (source.width() - side) / 3;
    for i in 0..4u32 {
        let crop = image::imageops::crop_imm(&source, i * step, 0, side, side).to_image();
        let path = folder.join(format!("crop{i}.png"));
        crop.save(&path).map_err(|e| Error::write(&path, e))?;
    }
    Ok(folder)
}

/// `loss_d` and R1 (when it ran) of a training run's first iteration.
type FirstIteration = (f64, Option<f64>);

fn stylegan2_train_run(
    name: &str,
    bytes: &[u8],
    folder: &Path,
    device: &Device,
    iterations: usize,
) -> Result<(TrainingEntry, Option<FirstIteration>)> {
    let model = StyleGan2Model::from_bytes(bytes, device)?;
    let mut trainer = StyleGan2Trainer::new(model, ImageFolder::open(folder)?)?;
    let started = Instant::now();
    let mut losses = Vec::new();
    let mut all_finite = true;
    let mut first = None;
    for _ in 0..iterations {
        let progress = trainer.run_iteration()?;
        let penalties = [progress.r1, progress.path_length_penalty];
        all_finite &= progress.loss_d.is_finite()
            && progress.loss_g.is_finite()
            && penalties.iter().flatten().all(|v| v.is_finite());
        first.get_or_insert((progress.loss_d, progress.r1));
        losses.push(format!(
            "it {} side {} loss_d={:.4} loss_g={:.4} r1={} pl={}",
            progress.iteration,
            progress.side,
            progress.loss_d,
            progress.loss_g,
            progress.r1.map_or("-".into(), |v| format!("{v:.4e}")),
            progress.path_length_penalty.map_or("-".into(), |v| format!("{v:.4e}")),
        ));
    }
    device.synchronize()?;
    let entry = TrainingEntry {
        name: name.into(),
        device: device_name(device),
        iterations,
        losses,
        all_finite,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((entry, first))
}

/// Short StyleGAN2 training runs: the tiny model on both devices (the first iteration's loss_d and R1
/// come before any update, so they must match), and in full mode config-f on the target.
fn stylegan2_training(report: &mut Report, options: &CheckOptions, target: &Device, reference: &Device) -> Result<()> {
    let folder = write_training_folder(options)?;
    // The tiny model keeps the CPU's share short; the penalty gradients of the small one are checked above.
    let preset = "tiny";
    let config = StyleGan2Config::preset(preset)?;
    let bytes = StyleGan2Model::new(&config, options.seed, &Device::Cpu)?.to_bytes()?;
    let iterations = if options.smoke { 2 } else { 4 };
    let name = format!("stylegan2 {preset}, {iterations} iterations (R1 and path length at iteration 1)");
    let (entry_a, first_a) = stylegan2_train_run(&name, &bytes, &folder, reference, iterations)?;
    let (entry_b, first_b) = stylegan2_train_run(&name, &bytes, &folder, target, iterations)?;
    report.training.push(entry_a);
    report.training.push(entry_b);
    if let (Some((loss_a, r1_a)), Some((loss_b, r1_b))) = (first_a, first_b) {
        report.parity.push(compare_values(&format!("stylegan2 {preset} training iteration 1 loss_d"), loss_a, loss_b));
        if let (Some(r1_a), Some(r1_b)) = (r1_a, r1_b) {
            report.parity.push(compare_values(&format!("stylegan2 {preset} training iteration 1 R1"), r1_a, r1_b));
        }
    }

    if !options.smoke {
        let config = StyleGan2Config::preset("config-f")?;
        let bytes = StyleGan2Model::new(&config, options.seed, &Device::Cpu)?.to_bytes()?;
        let name = "stylegan2 config-f, 2 iterations (R1 and path length at iteration 1)";
        let (entry, _) = stylegan2_train_run(name, &bytes, &folder, target, 2)?;
        report.training.push(entry);
    }
    Ok(())
}

/// Times `work` on `device`: one warm-up run, then `runs` runs, each ended by a device synchronisation.
fn time_runs(
    name: &str,
    what: String,
    device: &Device,
    runs: usize,
    mut work: impl FnMut() -> Result<()>,
) -> Result<TimingEntry> {
    work()?;
    device.synchronize()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        work()?;
        device.synchronize()?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let entry = TimingEntry {
        name: name.into(),
        device: device_name(device),
        what,
        median_ms: times[times.len() / 2],
        min_ms: times[0],
        runs: times.len(),
    };
    eprintln!("gpu_check:   {name}: median {:.2} ms", entry.median_ms);
    Ok(entry)
}

/// SinGAN timings with the baseline variant, whose layers bench/gpu_torch.py rebuilds in PyTorch.
fn singan_timings(report: &mut Report, options: &CheckOptions, target: &Device) -> Result<()> {
    let (model, _) = singan_model(options, Variant::Baseline)?;
    let bytes = model.to_bytes()?;
    let on_target = SinGanModel::from_bytes(&bytes, target)?;
    let last = on_target.num_stages() - 1;
    let &(height, width) = on_target.stage_sizes().last().expect("at least one stage");
    let preset = format!("{:?}", singan_preset(options)).to_lowercase();

    for factor in [1usize, 4] {
        let sample_options = SampleOptions {
            size: OutputSize::Factors { width: factor as f64, height: 1.0 },
            seed: options.seed,
            memory_limit_bytes: 64 << 30,
            ..Default::default()
        };
        let mut index = 0;
        let entry = time_runs(
            &format!("singan_generate_{factor}x"),
            format!("baseline {preset}, all {} stages, output {}x{height}", last + 1, width * factor),
            target,
            options.timing_runs,
            || {
                index += 1;
                on_target.sample(&sample_options, index).map(drop)
            },
        )?;
        report.timings.push(entry);
    }

    let mut unfinished = SinGanModel::from_bytes(&bytes, target)?;
    unfinished.metadata.finished_stages = 0;
    unfinished.metadata.noise_weights.truncate(1);
    let image = load_image(&options.image)?;
    let mut trainer = SinGanTrainer::resume(unfinished, &image)?;
    let entry = time_runs(
        "singan_train_iteration_finest",
        format!("baseline {preset}, stage {last} ({width}x{height}): 3 D steps with WGAN-GP, 3 G steps"),
        target,
        options.timing_runs,
        || trainer.run_iterations(last, 1),
    )?;
    report.timings.push(entry);
    Ok(())
}

/// StyleGAN2 generator forward passes (mapping and synthesis, fixed noise maps made beforehand).
fn stylegan2_timings(report: &mut Report, options: &CheckOptions, target: &Device) -> Result<()> {
    let preset = stylegan2_preset(options);
    let config = StyleGan2Config::preset(preset)?;
    let model = StyleGan2Model::new(&config, options.seed, target)?;
    let generator = &model.generator;
    let (scales, batches): (Vec<usize>, Vec<usize>) =
        if options.smoke { (vec![0, 2], vec![1, 2]) } else { (vec![0, 10], vec![1, 16]) };
    for &cs in &scales {
        let scale = ChosenScale::from(cs);
        let (h, w) = generator.output_size(scale)?;
        for &batch in &batches {
            let noises = generator
                .noise_shapes(scale)?
                .iter()
                .map(|&(nh, nw)| Tensor::randn(0f32, 1.0, (batch, 1, nh, nw), target))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let z = SeededRng::new(options.seed).normal(&[batch, generator.style_channels()], 0.0, 1.0, target)?;
            let entry = time_runs(
                &format!("stylegan2_forward_{h}_b{batch}"),
                format!("{preset} generator, {w}x{h}, batch {batch}"),
                target,
                options.timing_runs,
                || {
                    let w = generator.map(&z)?;
                    let latent = broadcast_style(&w, generator.num_latents())?;
                    generator.synthesize(&latent, scale, Noise::Explicit(&noises)).map(drop)
                },
            )?;
            report.timings.push(entry);
        }
    }
    Ok(())
}
