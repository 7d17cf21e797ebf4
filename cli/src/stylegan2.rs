//! `pegan stylegan2`: train MS-PIE StyleGAN2 on a folder of images, sample it at any supported size, and
//! interpolate between seeds. Models are pegan files or MMGeneration `.pth` checkpoints.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pegan_core::progress::Control;
use pegan_core::stylegan2::dataset::ImageFolder;
use pegan_core::stylegan2::head::ChosenScale;
use pegan_core::stylegan2::mmgen::load_mmgen_stylegan2;
use pegan_core::stylegan2::model::{StyleGan2Model, TrainingData};
use pegan_core::stylegan2::preset::StyleGan2Config;
use pegan_core::stylegan2::sample::{
    scale_for_size, LatentSpace, NoiseMode, SampleOptions, StyleGan2Sampler, StyleMix,
};
use pegan_core::stylegan2::scale::ScaleSampling;
use pegan_core::stylegan2::train::{StyleGan2Progress, StyleGan2Trainer, TrainOutcome};

use crate::console::errln;
use crate::options::{check_not_input, ComputeArgs};
use crate::train::{install_interrupt_handler, EXIT_INTERRUPTED};

/// Largest number of seeds one call samples.
const MAX_SEEDS: usize = 4096;

#[derive(Debug, Subcommand)]
pub enum StyleGan2Command {
    /// Train a model on a folder of PNG or JPEG images.
    Train(TrainArgs),
    /// Sample images from a model, one file per seed or one grid.
    Sample(SampleArgs),
    /// Write the frames of a walk through latent space between seeds.
    Interpolate(InterpolateArgs),
    /// Convert an MMGeneration StyleGAN2 checkpoint (.pth) into a pegan model file.
    Convert(ConvertArgs),
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Folder of training images (searched recursively; every image is centre-cropped to a square).
    pub data: PathBuf,

    /// Built-in configuration: config-a … config-k, config-f-256-896, config-f-256-1024 (the paper's FFHQ
    /// models), or tiny and small (reduced models that train on a CPU on 32–64 px images) [default: small].
    #[arg(long)]
    pub preset: Option<String>,

    /// JSON file whose fields override the preset, e.g. {"training": {"batch_size": 8}}.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Model file to write; with --resume, the checkpoint to continue, overwritten as training goes on.
    #[arg(short, long, value_name = "MODEL")]
    pub output: PathBuf,

    /// Continue training the model in -o from its last saved iteration.
    #[arg(long)]
    pub resume: bool,

    /// Train until this many iterations in total [default: the preset's total_iters].
    #[arg(long, value_name = "N")]
    pub iters: Option<u64>,

    /// Seed of the weights, latents, noise and data order [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,

    /// How the training scale is drawn: uniform (what the reference code does) or weighted (what its
    /// configs list) [default: the preset's].
    #[arg(long, value_enum)]
    pub scale_sampling: Option<ScaleSamplingArg>,

    /// Save the model every N iterations (and always at the end).
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: u64,

    /// Write a grid of fixed-seed samples every N iterations into --samples-dir (0 = never).
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub sample_every: u64,

    /// Folder of the sample grids [default: next to the model, MODEL-samples/].
    #[arg(long, value_name = "DIR")]
    pub samples_dir: Option<PathBuf>,

    /// Append one JSON object per iteration (losses, scale, penalties) to this file.
    #[arg(long, value_name = "FILE")]
    pub loss_log: Option<PathBuf>,

    /// Refuse to start when an iteration's estimated peak memory exceeds this many MiB (0 = no check)
    /// [default: the memory available when training starts; GPUs are not checked]
    #[arg(long, value_name = "MIB")]
    pub memory_limit: Option<u64>,

    #[command(flatten)]
    pub compute: ComputeArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScaleSamplingArg {
    Uniform,
    Weighted,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum NoiseArg {
    /// Fresh noise maps from each seed (the reference's default).
    #[default]
    Random,
    /// The model's stored noise maps (trained size only).
    Fixed,
    /// No noise.
    Zero,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum SpaceArg {
    /// Spherical interpolation of z.
    #[default]
    Z,
    /// Linear interpolation of the mapped w.
    W,
}

/// Options shared by sample and interpolate.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// pegan model file, or an MMGeneration StyleGAN2 checkpoint (.pth).
    pub model: PathBuf,

    /// Built-in preset describing a .pth checkpoint, when its architecture cannot be read from the tensors
    /// (configs e and j interpolate their head, which their tensors do not show).
    #[arg(long)]
    pub preset: Option<String>,

    /// Output size in pixels: SIDE or WIDTHxHEIGHT, e.g. 896 or 896x512. Sizes are (4 + k)·out/4 per axis.
    #[arg(long, value_name = "SIZE", conflicts_with = "scale")]
    pub size: Option<String>,

    /// Chosen scale instead of a size: K or KWxKH (columns x rows), added to the 4×4 head grid.
    #[arg(long, value_name = "SCALE")]
    pub scale: Option<String>,

    /// Truncation ψ in [0, 1]: lower values give more typical, less varied images.
    #[arg(long, default_value_t = 1.0)]
    pub truncation: f64,

    /// Seed of the mean latent that truncation pulls towards (estimated from 4096 samples).
    #[arg(long, default_value_t = 0)]
    pub truncation_seed: u64,

    /// Noise maps.
    #[arg(long, value_enum, default_value_t = NoiseArg::Random)]
    pub noise: NoiseArg,

    /// Sample the trained generator instead of its moving average.
    #[arg(long)]
    pub no_ema: bool,

    #[command(flatten)]
    pub compute: ComputeArgs,
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Seeds: a list and ranges, e.g. 0-15 or 1,4,9-12.
    #[arg(long, default_value = "0")]
    pub seeds: String,

    /// Mix in the style of this seed from --mix-at on.
    #[arg(long, value_name = "SEED")]
    pub mix_seed: Option<u64>,

    /// First style row taken from --mix-seed (1 … L−1; low values mix coarse structure).
    #[arg(long, value_name = "ROW", requires = "mix_seed")]
    pub mix_at: Option<usize>,

    /// Write one grid image instead of one file per seed.
    #[arg(long)]
    pub grid: bool,

    /// Output: a PNG file (one seed or --grid), or a folder for one PNG per seed.
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct InterpolateArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Seeds to visit in order, e.g. 0,5,9.
    #[arg(long)]
    pub seeds: String,

    /// Frames per segment between two seeds.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,

    /// Latent space of the walk.
    #[arg(long, value_enum, default_value_t = SpaceArg::Z)]
    pub space: SpaceArg,

    /// Folder for the numbered frames frame_00000.png, …
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// MMGeneration StyleGAN2 checkpoint (.pth).
    pub checkpoint: PathBuf,

    /// Built-in preset to load the checkpoint with, instead of reading the architecture from it.
    #[arg(long)]
    pub preset: Option<String>,

    /// pegan model file to write.
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn run(command: StyleGan2Command, bars: &MultiProgress) -> Result<ExitCode> {
    match command {
        StyleGan2Command::Train(args) => train(&args, bars),
        StyleGan2Command::Sample(args) => sample(&args).map(|()| ExitCode::SUCCESS),
        StyleGan2Command::Interpolate(args) => interpolate(&args).map(|()| ExitCode::SUCCESS),
        StyleGan2Command::Convert(args) => convert(&args).map(|()| ExitCode::SUCCESS),
    }
}

/// Rejects an output path that is one of the command's inputs, so a typo cannot overwrite them.
fn refuse_overwriting_input(output: &Path, inputs: &[&Path]) -> Result<()> {
    let named: Vec<(&Path, &str)> = inputs.iter().map(|p| (*p, "input")).collect();
    check_not_input(output, "output", &named)
}

/// Loads a pegan StyleGAN2 model or an MMGeneration checkpoint (recognised by its zip signature).
pub fn load_model(path: &Path, preset: Option<&str>, device: &Device) -> Result<StyleGan2Model> {
    let preset = preset.map(StyleGan2Config::preset).transpose()?;
    if is_pytorch_checkpoint(path) {
        return Ok(load_mmgen_stylegan2(path, preset.as_ref(), device)?);
    }
    if preset.is_some() {
        bail!(
            "--preset applies to .pth checkpoints only; {} is a pegan model file that stores its configuration",
            path.display()
        );
    }
    Ok(StyleGan2Model::load(path, device)?)
}

/// Returns whether `path` is read as a PyTorch checkpoint: a zip archive (what `torch.save` writes) or a `.pth` name.
fn is_pytorch_checkpoint(path: &Path) -> bool {
    let mut magic = [0u8; 2];
    let is_zip = File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .map(|()| &magic == b"PK")
        .unwrap_or(false);
    is_zip || path.extension().is_some_and(|e| e == "pth")
}

/// Returns `word` for one, `word` + "s" for any other count.
fn plural(count: usize, word: &str) -> String {
    if count == 1 {
        format!("1 {word}")
    } else {
        format!("{count} {word}s")
    }
}

/// Returns the absolute form of a path whose folder may not exist yet: the nearest existing ancestor with
/// links resolved, followed by the rest of the path.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    for ancestor in absolute.ancestors() {
        if let Ok(real) = std::fs::canonicalize(ancestor) {
            let rest = absolute.strip_prefix(ancestor).unwrap_or(Path::new(""));
            return real.join(rest);
        }
    }
    absolute
}

fn train(args: &TrainArgs, bars: &MultiProgress) -> Result<ExitCode> {
    let device = args.compute.open()?;
    refuse_overwriting_input(&args.output, &[&args.data])?;
    if let Some(log) = &args.loss_log {
        refuse_overwriting_input(log, &[&args.data, &args.output])?;
    }
    crate::options::check_not_folder(&args.output, "model file")?;
    crate::options::check_parent_folder(&args.output, "model file")?;
    if !args.resume && args.output.exists() {
        bail!(
            "{} already exists: continue its training with --resume, or choose another -o so the model is not replaced",
            args.output.display()
        );
    }
    let folder = ImageFolder::open(&args.data)?;

    let mut model = if args.resume {
        if !args.output.exists() {
            bail!("cannot resume: {} does not exist; start training without --resume", args.output.display());
        }
        // A resumed model keeps its stored configuration and seed, so options that would change them are errors.
        let fixed = [
            ("--config", args.config.is_some()),
            ("--preset", args.preset.is_some()),
            ("--seed", args.seed.is_some()),
            ("--scale-sampling", args.scale_sampling.is_some()),
        ];
        if let Some((option, _)) = fixed.iter().find(|(_, given)| *given) {
            bail!(
                "{option} cannot change a model being resumed; it keeps the configuration and seed stored in {}: \
                 drop {option}",
                args.output.display()
            );
        }
        load_model(&args.output, None, &device).context("cannot resume")?
    } else {
        let mut config = StyleGan2Config::preset(args.preset.as_deref().unwrap_or("small"))?;
        if let Some(path) = &args.config {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let overrides: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
            config = config.with_overrides(&overrides)?;
        }
        if let Some(sampling) = args.scale_sampling {
            config.training.scale_sampling = match sampling {
                ScaleSamplingArg::Uniform => ScaleSampling::Uniform,
                ScaleSamplingArg::Weighted => ScaleSampling::Weighted,
            };
            config.validate()?;
        }
        StyleGan2Model::new(&config, args.seed.unwrap_or(0), &device)?
    };
    let target = args.iters.unwrap_or(model.config().training.total_iters);
    let start = model.metadata.iteration;
    if target <= start {
        if target == 0 {
            bail!("--iters 0 trains nothing: give the total number of iterations to reach, e.g. --iters 1000");
        }
        bail!("the model has already trained {start} iterations; ask for more with --iters N (N > {start})");
    }

    // Resuming on other data is allowed (a folder may move), but it changes what the model learns.
    let data = TrainingData { folder: resolved(&args.data).display().to_string(), images: folder.len() };
    if let Some(previous) = model.metadata.training_data.as_ref().filter(|previous| **previous != data) {
        errln!(
            "warning: {} was trained on {} ({} images) and now continues on {} ({} images); give the earlier \
             folder to keep training on the same data",
            args.output.display(),
            previous.folder,
            previous.images,
            data.folder,
            data.images
        );
    }
    model.metadata.training_data = Some(data);

    // The trainer checks the training sizes and memory before any file or folder is created.
    let images = folder.len();
    let mut trainer = match args.memory_limit {
        None => StyleGan2Trainer::new(model, folder)?,
        Some(0) => StyleGan2Trainer::with_memory_limit(model, folder, None)?,
        Some(mib) => StyleGan2Trainer::with_memory_limit(model, folder, Some(mib.saturating_mul(1 << 20)))?,
    };

    let samples_dir = args.samples_dir.clone().unwrap_or_else(|| {
        let stem = args.output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        args.output.with_file_name(format!("{stem}-samples"))
    });
    if args.sample_every > 0 {
        // Sample grids are PNG files, so inside the data folder they would join the training images of the
        // next run.
        if resolved(&samples_dir).starts_with(resolved(&args.data)) {
            bail!(
                "the sample grids would go to {}, inside the training folder {}, and become training images: \
                 choose --samples-dir (or -o) outside it, or --sample-every 0",
                samples_dir.display(),
                args.data.display()
            );
        }
        std::fs::create_dir_all(&samples_dir).with_context(|| format!("cannot create {}", samples_dir.display()))?;
    }
    let mut loss_log = match &args.loss_log {
        Some(path) => Some(BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open the loss log {}", path.display()))?,
        )),
        None => None,
    };

    let model = trainer.model();
    let training = &model.config().training;
    let mut sides = Vec::with_capacity(training.multi_input_scales.len());
    for &cs in &training.multi_input_scales {
        sides.push(format!("{} px", model.generator.output_size(ChosenScale::from(cs))?.0));
    }
    errln!(
        "training StyleGAN2 on {} ({images} images): iterations {}–{target}, scales {:?} ({}), batch {}",
        args.data.display(),
        start + 1,
        training.multi_input_scales,
        sides.join(", "),
        training.batch_size,
    );

    let bar = bars.add(ProgressBar::new(target - start));
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} ETA {eta_precise}\n{msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    let interrupted = install_interrupt_handler(bar.clone())?;

    let outcome = trainer.train(target, &mut |trainer, report| {
        bar.set_position(report.iteration - start);
        bar.set_message(describe(report));
        if let Some(log) = loss_log.as_mut() {
            let line = serde_json::to_string(report).expect("reports serialise");
            // One flush per line, so the log follows training and a crash loses no finished iteration.
            writeln!(log, "{line}")
                .and_then(|()| log.flush())
                .map_err(|e| pegan_core::Error::write(args.loss_log.as_deref().unwrap_or(Path::new("")), e))?;
        }
        if args.sample_every > 0 && report.iteration % args.sample_every == 0 {
            let path = samples_dir.join(format!("iter_{:07}.png", report.iteration));
            write_training_grid(trainer.model(), &path)
                .map_err(|e| pegan_core::Error::write(&path, format!("{e:#}")))?;
        }
        let stop = interrupted.load(Ordering::SeqCst);
        if report.iteration % args.checkpoint_every == 0 || report.iteration == target || stop {
            trainer.checkpoint()?.save(&args.output)?;
        }
        Ok(if stop { Control::Cancel } else { Control::Continue })
    });
    bar.finish_and_clear();
    if let Some(log) = loss_log.as_mut() {
        log.flush().context("cannot write the loss log")?;
    }
    // A training image that fails to decode stops the run before its iteration changes any weight, so the
    // finished iterations are saved before the error is reported.
    if let Err(pegan_core::Error::Read { path, .. }) = &outcome {
        if trainer.model().metadata.iteration > start && path.starts_with(&args.data) {
            trainer.checkpoint()?.save(&args.output)?;
            let finished = trainer.model().metadata.iteration as usize;
            errln!("saved {} in {}", plural(finished, "finished iteration"), args.output.display());
        }
    }
    let outcome = outcome?;
    let done = trainer.model().metadata.iteration;
    match outcome {
        TrainOutcome::Finished => {
            errln!("trained {}; model saved in {}", plural(done as usize, "iteration"), args.output.display());
            Ok(ExitCode::SUCCESS)
        }
        TrainOutcome::Cancelled => {
            let mut resume = format!(
                "pegan stylegan2 train {} --resume --iters {target} -o {}",
                args.data.display(),
                args.output.display()
            );
            if let Some(log) = &args.loss_log {
                resume.push_str(&format!(" --loss-log {}", log.display()));
            }
            errln!("interrupted after iteration {done}, saved in {}; continue with: {resume}", args.output.display());
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
    }
}

fn describe(report: &StyleGan2Progress) -> String {
    let mut text =
        format!("iteration {}: {} px, D {:.4}, G {:.4}", report.iteration, report.side, report.loss_d, report.loss_g);
    if let Some(r1) = report.r1 {
        text.push_str(&format!(", R1 {r1:.5}"));
    }
    if let Some(pl) = report.path_length_penalty {
        text.push_str(&format!(", path length {pl:.5} (mean {:.4})", report.mean_path_length));
    }
    text
}

/// Writes a 4 × 4 grid of the EMA generator's images for seeds 0–15 at the model's first training scale.
fn write_training_grid(model: &StyleGan2Model, path: &Path) -> Result<()> {
    let scale = ChosenScale::from(model.config().training.multi_input_scales[0]);
    let sampler = StyleGan2Sampler::new(model, SampleOptions { scale, ..SampleOptions::default() })?;
    let images = (0..16).map(|seed| sampler.sample_seed(seed)).collect::<pegan_core::Result<Vec<_>>>()?;
    save_grid(&images, 4, path)
}

/// Parses `0-15`, `1,4,9-12` or `7` into a list of seeds.
pub fn parse_seeds(text: &str) -> Result<Vec<u64>> {
    let mut seeds = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| -> Result<u64> {
            let s = s.trim();
            if s.is_empty() {
                bail!("'{part}' in '{text}' lacks a seed: write seeds as N or ranges as A-B, e.g. 0-15");
            }
            s.parse::<u64>().with_context(|| format!("seed '{s}' in '{text}' is not a whole number ≥ 0"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if b < a {
                    bail!("seed range '{part}' runs backwards: write the smaller seed first, e.g. {b}-{a}");
                }
                if b - a >= MAX_SEEDS as u64 {
                    bail!("seed range '{part}' has more than {MAX_SEEDS} seeds; split the call");
                }
                seeds.extend(a..=b);
            }
            None => seeds.push(parse(part)?),
        }
        if seeds.len() > MAX_SEEDS {
            bail!("more than {MAX_SEEDS} seeds in '{text}'; split the call");
        }
    }
    if seeds.is_empty() {
        bail!("no seeds in '{text}': give a list or range such as 0-15");
    }
    Ok(seeds)
}

/// Parses `N` or `WIDTHxHEIGHT` into (height, width). Width comes first, as in every other size the CLI
/// reads or prints.
fn parse_pair(text: &str, what: &str) -> Result<(usize, usize)> {
    let number = |s: &str| -> Result<usize> {
        s.trim()
            .parse::<usize>()
            .with_context(|| {
                let form = if what == "scale" { "K or KWxKH" } else { "N or WIDTHxHEIGHT" };
                format!("{what} '{text}' is not {form} with whole numbers")
            })
    };
    match text.split_once(['x', 'X', '×']) {
        Some((w, h)) => Ok((number(h)?, number(w)?)),
        None => {
            let n = number(text)?;
            Ok((n, n))
        }
    }
}

fn sample_options(args: &ModelArgs, model: &StyleGan2Model) -> Result<SampleOptions> {
    let generator = if args.no_ema { &model.generator } else { &model.generator_ema };
    let scale = match (&args.size, &args.scale) {
        (Some(size), _) => {
            let (h, w) = parse_pair(size, "size")?;
            scale_for_size(generator, h, w)?
        }
        (None, Some(scale)) => {
            let (h, w) = parse_pair(scale, "scale")?;
            ChosenScale::new(h, w)
        }
        (None, None) => ChosenScale::default(),
    };
    if !(0.0..=1.0).contains(&args.truncation) {
        bail!("truncation ψ = {} is outside [0, 1]: use 1 for none, 0.7 for typical images", args.truncation);
    }
    Ok(SampleOptions {
        scale,
        truncation: args.truncation,
        mean_latent_seed: args.truncation_seed,
        noise: match args.noise {
            NoiseArg::Random => NoiseMode::Random,
            NoiseArg::Fixed => NoiseMode::Fixed,
            NoiseArg::Zero => NoiseMode::Zero,
        },
        use_ema: !args.no_ema,
        ..SampleOptions::default()
    })
}

fn sample(args: &SampleArgs) -> Result<()> {
    let device = args.model.compute.open()?;
    refuse_overwriting_input(&args.output, &[&args.model.model])?;
    let seeds = parse_seeds(&args.seeds)?;
    let model = load_model(&args.model.model, args.model.preset.as_deref(), &device)?;
    let mut options = sample_options(&args.model, &model)?;
    if let Some(seed) = args.mix_seed {
        let l = model.generator_ema.num_latents();
        options.mix = Some(StyleMix { seed, inject_index: args.mix_at.unwrap_or(l / 2) });
    }
    let sampler = StyleGan2Sampler::new(&model, options)?;
    let (h, w) = sampler.output_size()?;

    let single_file =
        args.grid || seeds.len() == 1 && args.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if single_file && seeds.len() * h * w > MAX_GRID_PIXELS {
        bail!(
            "a grid of {} images of {w}×{h} px is too large to assemble in memory: give fewer seeds, or drop --grid \
             and write one file per seed into a folder",
            seeds.len()
        );
    }
    if single_file {
        let images = seeds.iter().map(|&s| sampler.sample_seed(s)).collect::<pegan_core::Result<Vec<_>>>()?;
        let columns = (seeds.len() as f64).sqrt().ceil() as usize;
        save_grid(&images, columns, &args.output)?;
        errln!("wrote {} ({}, {w}×{h} px each)", args.output.display(), plural(seeds.len(), "seed"));
        return Ok(());
    }
    if args.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        bail!(
            "{} seeds need a folder as -o, or --grid for one image; {} names a PNG file",
            seeds.len(),
            args.output.display()
        );
    }
    // One file per seed: a repeated seed would overwrite its own file and make the count wrong.
    let mut seen = std::collections::HashSet::new();
    if let Some(seed) = seeds.iter().find(|&&seed| !seen.insert(seed)) {
        bail!(
            "seed {seed} appears more than once in '{}': list each seed once, or use --grid to repeat it in one image",
            args.seeds
        );
    }
    std::fs::create_dir_all(&args.output).with_context(|| format!("cannot create {}", args.output.display()))?;
    for &seed in &seeds {
        let path = args.output.join(format!("seed{seed:05}.png"));
        save_grid(&[sampler.sample_seed(seed)?], 1, &path)?;
    }
    errln!("wrote {} of {w}×{h} px to {}", plural(seeds.len(), "image"), args.output.display());
    Ok(())
}

fn interpolate(args: &InterpolateArgs) -> Result<()> {
    let device = args.model.compute.open()?;
    refuse_overwriting_input(&args.output, &[&args.model.model])?;
    let seeds = parse_seeds(&args.seeds)?;
    if args.steps == 0 || args.steps > 10_000 {
        bail!("--steps {} is out of range: use 1 to 10000 frames per segment", args.steps);
    }
    let model = load_model(&args.model.model, args.model.preset.as_deref(), &device)?;
    let options = sample_options(&args.model, &model)?;
    let sampler = StyleGan2Sampler::new(&model, options)?;
    std::fs::create_dir_all(&args.output).with_context(|| format!("cannot create {}", args.output.display()))?;
    let space = match args.space {
        SpaceArg::Z => LatentSpace::Z,
        SpaceArg::W => LatentSpace::W,
    };
    let frames = sampler.interpolate(&seeds, args.steps, space, &mut |index, image| {
        save_grid(std::slice::from_ref(image), 1, &args.output.join(format!("frame_{index:05}.png")))
            .map_err(|e| pegan_core::Error::invalid(format!("{e:#}")))
    })?;
    errln!("wrote {frames} frames to {}", args.output.display());
    Ok(())
}

fn convert(args: &ConvertArgs) -> Result<()> {
    refuse_overwriting_input(&args.output, &[&args.checkpoint])?;
    if args.checkpoint.is_file() && !is_pytorch_checkpoint(&args.checkpoint) {
        bail!(
            "{} is not a PyTorch checkpoint (a zip archive written by torch.save); if it is a pegan model file, it \
             needs no conversion: sample or train it as it is",
            args.checkpoint.display()
        );
    }
    let preset = args.preset.as_deref().map(StyleGan2Config::preset).transpose()?;
    let model = load_mmgen_stylegan2(&args.checkpoint, preset.as_ref(), &Device::Cpu)?;
    model.save(&args.output)?;
    let (h, w) = model.generator_ema.output_size(ChosenScale::default())?;
    errln!(
        "converted {} ({} generator, {w}×{h} px at scale 0{}) into {}",
        args.checkpoint.display(),
        match &model.config().generator.head_pos_encoding {
            None => "constant-head".to_string(),
            Some(e) => format!("{e:?}").split([' ', '{']).next().unwrap_or("").to_uppercase() + "-head",
        },
        if model.discriminator.is_some() { ", with discriminator" } else { "" },
        args.output.display()
    );
    Ok(())
}

/// Largest grid image, in pixels, that `--grid` writes (about 1.5 GiB of f32 working memory).
const MAX_GRID_PIXELS: usize = 128 << 20;

/// Tiles (1, 3, H, W) BGR images into a grid and writes it as PNG, atomically.
fn save_grid(images: &[Tensor], columns: usize, path: &Path) -> Result<()> {
    let columns = columns.max(1);
    let rows = images.len().div_ceil(columns);
    let (_, _, h, w) = images[0].dims4()?;
    let blank = images[0].ones_like()?.neg()?;
    let mut row_tensors = Vec::with_capacity(rows);
    for r in 0..rows {
        let row: Vec<Tensor> =
            (0..columns).map(|c| images.get(r * columns + c).cloned().unwrap_or_else(|| blank.clone())).collect();
        row_tensors.push(Tensor::cat(&row, 3)?);
    }
    let grid = Tensor::cat(&row_tensors, 2)?;
    debug_assert_eq!(grid.dims4()?, (1, 3, rows * h, columns * w));
    let rgb = pegan_core::image::tensor_to_rgb8(&grid)?;
    pegan_core::image::save_png(&rgb, path)?;
    Ok(())
}
