//! `pegan singan train`: training with a progress bar, a loss log, a save after every stage,
//! Ctrl-C cancellation and resumption.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar};
use pegan_core::image::LoadedImage;
use pegan_core::progress::{Control, TrainProgress};
use pegan_core::singan::{SinGanConfig, SinGanModel, SinGanTrainer, TrainOutcome, Variant};

use crate::console::errln;
use crate::options::{check_not_folder, check_not_input, check_parent_folder, load_model, quote_path, with_suffix};
use crate::progress::{LossLog, TrainBar};
use crate::singan::TrainArgs;

/// Exit status after Ctrl-C, as shells report a process ended by SIGINT (128 + 2).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// Trains the model of `args`, or resumes it, and saves it after every finished stage.
pub fn run_train(args: &TrainArgs, bars: &MultiProgress) -> Result<ExitCode> {
    let loss_log_path = args.loss_log.clone().unwrap_or_else(|| with_suffix(&args.output, ".losses.jsonl"));
    check_output_paths(args, &loss_log_path)?;
    let device = args.compute.open()?;
    let image = pegan_core::image::load_image(&args.image).context("cannot load the training image")?;

    let mut trainer = if args.resume {
        resume_trainer(args, &image, &device)?
    } else {
        let config = build_config(args)?;
        check_no_partial_model(args)?;
        SinGanTrainer::new(&image, &config, args.seed, &device)?
    };
    match args.memory_limit {
        None => {}
        Some(0) => trainer.set_memory_limit(None),
        Some(mib) => trainer.set_memory_limit(Some(mib.saturating_mul(1 << 20))),
    }

    let model = trainer.model();
    let first_stage = model.metadata.finished_stages;
    let num_stages = model.num_stages();
    let iters_per_stage = model.config().train.iters_per_scale;
    if model.is_complete() {
        errln!("{} already has all {num_stages} stages trained; nothing to do", args.output.display());
        return Ok(ExitCode::SUCCESS);
    }
    // Before the loss log is created, so that a refused run leaves no file.
    trainer.check_memory()?;
    print_plan(args, &image, model);

    let mut loss_log =
        if args.resume { LossLog::resume(&loss_log_path, first_stage)? } else { LossLog::create(&loss_log_path) };

    let bar = TrainBar::new(bars, first_stage, num_stages, iters_per_stage);
    let interrupted = install_interrupt_handler(bar.handle())?;
    let started = Instant::now();

    let outcome = run_stages(&mut trainer, &bar, &mut loss_log, &interrupted, &args.output);
    let finished_stages = trainer.model().metadata.finished_stages;
    match outcome {
        Ok(TrainOutcome::Finished) => {
            bar.finish();
            errln!(
                "trained stages {first_stage}–{} in {:.1} s; model saved to {}, losses to {}",
                num_stages - 1,
                started.elapsed().as_secs_f64(),
                args.output.display(),
                loss_log.path().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(TrainOutcome::Cancelled) => {
            bar.abandon();
            errln!("{}", interrupted_message(args, finished_stages, num_stages));
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
        Err(error) => {
            bar.abandon();
            if finished_stages > 0 {
                tracing::warn!(
                    finished_stages,
                    model = %args.output.display(),
                    "training failed; the finished stages are saved and `--resume` continues from them"
                );
            }
            Err(error)
        }
    }
}

/// Rejects output paths that are folders, lie in a missing folder, or name an input file, before any
/// work starts. With --resume the model at -o is read and then replaced, as intended.
fn check_output_paths(args: &TrainArgs, loss_log: &Path) -> Result<()> {
    let mut inputs: Vec<(&Path, &str)> = vec![(&args.image, "training image")];
    if let Some(config) = &args.config {
        inputs.push((config, "config file"));
    }

    check_not_folder(&args.output, "model file")?;
    check_parent_folder(&args.output, "model file")?;
    check_not_input(&args.output, "model file", &inputs)?;

    inputs.push((&args.output, "model file"));
    check_not_folder(loss_log, "loss log")?;
    check_parent_folder(loss_log, "loss log")?;
    check_not_input(loss_log, "loss log", &inputs)?;
    Ok(())
}

/// Trains the remaining stages, logging every iteration and saving the model after every stage.
fn run_stages(
    trainer: &mut SinGanTrainer,
    bar: &TrainBar,
    loss_log: &mut LossLog,
    interrupted: &AtomicBool,
    model_path: &Path,
) -> Result<TrainOutcome> {
    // The progress callback cannot return an error, so a failed log write cancels training and is kept here.
    let mut log_error: Option<anyhow::Error> = None;
    let mut on_progress = |report: &TrainProgress| {
        bar.update(report);
        if let Err(error) = loss_log.record(report) {
            log_error = Some(error);
            return Control::Cancel;
        }
        if interrupted.load(Ordering::SeqCst) {
            Control::Cancel
        } else {
            Control::Continue
        }
    };

    let mut stage_started = Instant::now();
    let mut on_stage_finished = |model: &SinGanModel| -> pegan_core::Result<()> {
        model.save(model_path)?;
        let stage = model.metadata.finished_stages - 1;
        let [height, width] = model.metadata.stage_sizes[stage];
        bar.note(&format!(
            "stage {stage} of 0–{} ({width}×{height} px) finished in {:.1} s; saved to {}",
            model.num_stages() - 1,
            stage_started.elapsed().as_secs_f64(),
            model_path.display()
        ));
        stage_started = Instant::now();
        Ok(())
    };

    let outcome = trainer.train(&mut on_progress, &mut on_stage_finished);
    if let Some(error) = log_error {
        return Err(error.context("training stopped because the loss log could not be written"));
    }
    Ok(outcome?)
}

/// Builds the configuration from --variant, --preset and --config.
fn build_config(args: &TrainArgs) -> Result<SinGanConfig> {
    let Some(path) = &args.config else {
        let variant = args.variant.ok_or_else(|| anyhow!("pass --variant or a complete --config"))?;
        return Ok(SinGanConfig::preset(variant, args.preset)?);
    };

    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the config file {}", path.display()))?;
    let overrides: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("config file {} is not valid JSON", path.display()))?;
    if !overrides.is_object() {
        bail!(
            "config file {} must contain a JSON object, such as {{\"train\": {{\"iters_per_scale\": 500}}}}",
            path.display()
        );
    }

    match args.variant {
        Some(variant) => {
            check_variant_agrees(&overrides, variant, path)?;
            let base = SinGanConfig::preset(variant, args.preset)?;
            base.with_overrides(&overrides).with_context(|| format!("cannot apply the config file {}", path.display()))
        }
        None => SinGanConfig::from_json(&text).with_context(|| {
            format!(
                "config file {} is not a complete config: pass --variant to merge it over that variant's preset",
                path.display()
            )
        }),
    }
}

/// Rejects a config file whose `"variant"` differs from --variant, because the merged config would
/// carry that variant's label on the architecture of --variant.
fn check_variant_agrees(overrides: &serde_json::Value, variant: Variant, path: &Path) -> Result<()> {
    let Some(value) = overrides.get("variant") else { return Ok(()) };
    if value.as_str() != Some(variant.name()) {
        bail!(
            "config file {} sets \"variant\": {value} but --variant is {}: remove \"variant\" from the file or \
             pass the same variant",
            path.display(),
            variant.name()
        );
    }
    Ok(())
}

/// Loads the partly trained model at -o and prepares it to continue on the same image.
fn resume_trainer(args: &TrainArgs, image: &LoadedImage, device: &candle_core::Device) -> Result<SinGanTrainer> {
    if !args.output.exists() {
        bail!(
            "model file {} not found: --resume continues a model saved by an earlier run; drop --resume to start a new one",
            args.output.display()
        );
    }
    let model = load_model(&args.output, device)?;
    let trainer = SinGanTrainer::resume(model, image)
        .with_context(|| format!("cannot resume {} on {}", args.output.display(), args.image.display()))?;
    Ok(trainer)
}

/// Rejects starting over on a partly trained model, which is most likely a forgotten --resume.
fn check_no_partial_model(args: &TrainArgs) -> Result<()> {
    if !args.output.exists() {
        return Ok(());
    }
    // Only the header is needed; a file that is no pegan model is simply overwritten.
    let Ok(bytes) = std::fs::read(&args.output) else { return Ok(()) };
    let Ok(metadata) = pegan_core::singan::model::read_metadata(&bytes) else { return Ok(()) };
    let stages = metadata.stage_sizes.len();
    if metadata.finished_stages < stages {
        bail!(
            "{} contains a partly trained model ({} of {stages} stages finished): add --resume to continue it, \
             or delete the file to start over",
            args.output.display(),
            metadata.finished_stages
        );
    }
    Ok(())
}

/// Prints what is about to be trained, so a long run starts with its plan on screen.
fn print_plan(args: &TrainArgs, image: &LoadedImage, model: &SinGanModel) {
    let config = model.config();
    let sizes = model.stage_sizes();
    let (first_h, first_w) = sizes[0];
    let (last_h, last_w) = sizes[sizes.len() - 1];
    let stages = if args.resume {
        format!("resuming at stage {} of 0–{}", model.metadata.finished_stages, sizes.len() - 1)
    } else {
        format!("{} stages", sizes.len())
    };
    errln!(
        "training {} on {} ({}×{} px): {stages} from {first_w}×{first_h} to {last_w}×{last_h} px, {} iterations each",
        config.variant.name(),
        args.image.display(),
        image.width,
        image.height,
        config.train.iters_per_scale,
    );
}

/// Installs the Ctrl-C handler. The first press makes training stop after the current iteration,
/// and a second press exits at once.
pub(crate) fn install_interrupt_handler(bar: ProgressBar) -> Result<Arc<AtomicBool>> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // The model file is written atomically, so exiting here cannot leave a half-written file.
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
        bar.suspend(|| errln!("stopping after the current iteration; press Ctrl-C again to exit at once"));
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(interrupted)
}

/// Formats the message that names the saved stages and the command that resumes training.
fn interrupted_message(args: &TrainArgs, finished_stages: usize, num_stages: usize) -> String {
    if finished_stages == 0 {
        return "interrupted before stage 0 finished: nothing was saved; run the same command again to start over"
            .to_string();
    }
    let mut resume = format!("pegan singan train {} --resume", quote_path(&args.image));
    resume.push_str(&args.compute.to_command_line());
    if let Some(log) = &args.loss_log {
        resume.push_str(&format!(" --loss-log {}", quote_path(log)));
    }
    resume.push_str(&format!(" -o {}", quote_path(&args.output)));
    format!(
        "interrupted: stages 0–{} of 0–{} are saved in {}; continue with: {resume}",
        finished_stages - 1,
        num_stages - 1,
        args.output.display()
    )
}
