//! `pegan singan …`: the arguments of train, sample and retarget, and the two generation commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use image::RgbImage;
use indicatif::MultiProgress;
use pegan_core::singan::{NoiseMode, OutputSize, Preset, SampleOptions, SinGanModel, Variant};

use crate::console::outln;
use crate::options::{
    check_not_file, check_not_folder, check_not_input, check_parent_folder, has_extension, load_image_tensor,
    load_model, parse_count, parse_factor, parse_pixels, ComputeArgs,
};
use crate::progress::sample_bar;

#[derive(Debug, Subcommand)]
pub enum SinGanCommand {
    /// Train a SinGAN on one image and save it as a model file.
    ///
    /// The model is saved after every finished stage. Ctrl-C stops training and keeps the finished
    /// stages, and `--resume` continues from them.
    Train(TrainArgs),

    /// Generate random images, at the trained size or retargeted to another one.
    Sample(SampleArgs),

    /// Generate one image at an exact size in pixels.
    Retarget(RetargetArgs),
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training image: PNG (8 or 16 bit, grey, RGB or RGBA; alpha is ignored) or JPEG.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,

    /// Model variant: the padding or positional encoding of the generator.
    #[arg(
        long,
        value_name = "VARIANT",
        value_parser = PossibleValuesParser::new(Variant::ALL.map(Variant::name)).try_map(|name| Variant::from_name(&name)),
        required_unless_present_any = ["resume", "config"],
        conflicts_with = "resume"
    )]
    pub variant: Option<Variant>,

    /// Training schedule: paper (the reference, 2000 iterations per stage, for a GPU), fast (a few
    /// minutes on two CPU cores) or tiny (seconds, for tests).
    #[arg(
        long,
        value_name = "PRESET",
        default_value = "fast",
        value_parser = PossibleValuesParser::new(["paper", "fast", "tiny"]).try_map(|name| Preset::from_name(&name)),
        conflicts_with = "resume"
    )]
    pub preset: Preset,

    /// JSON config file: an object merged over the preset of --variant (e.g. {"train": {"iters_per_scale": 500}}),
    /// or a complete config, which needs no --variant.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    pub config: Option<PathBuf>,

    /// Seed of the weight initialisation and the training noise; the same seed reproduces a run.
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "resume")]
    pub seed: u64,

    #[command(flatten)]
    pub compute: ComputeArgs,

    /// Loss history as JSON lines [default: MODEL.losses.jsonl]. Every iteration adds one object with
    /// "stage_finished": false. After each stage has been saved, one more object repeats that stage's
    /// last iteration with "stage_finished": true. The file is written from the first iteration on. A
    /// resumed run keeps the objects of the saved stages, drops those of the interrupted stage, which
    /// it trains again, and appends.
    #[arg(long, value_name = "FILE")]
    pub loss_log: Option<PathBuf>,

    /// Refuse to start when the estimated peak memory of training exceeds this many MiB (0 = no check)
    /// [default: the memory available when training starts; GPUs are not checked]
    #[arg(long, value_name = "MIB")]
    pub memory_limit: Option<u64>,

    /// Continue training the partly trained model at -o from its first unfinished stage, on the
    /// same IMAGE. Its stored config and seed are used.
    #[arg(long)]
    pub resume: bool,

    /// Model file to write (safetensors with pegan metadata), e.g. balloons.safetensors.
    #[arg(short, long, value_name = "MODEL")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Model file written by `pegan singan train` or `pegan convert`.
    #[arg(value_name = "MODEL")]
    model: PathBuf,

    /// Number of images to generate, from 1 to 10000.
    #[arg(
        short = 'n',
        long = "count",
        value_name = "N",
        default_value = "1",
        value_parser = parse_count,
        allow_negative_numbers = true
    )]
    count: usize,

    /// Output width in pixels [default: the trained width]. Needs --height.
    #[arg(
        long,
        value_name = "PIXELS",
        value_parser = parse_pixels,
        allow_negative_numbers = true,
        requires = "height",
        conflicts_with_all = ["scale_w", "scale_h", "recon"]
    )]
    width: Option<usize>,

    /// Output height in pixels [default: the trained height]. Needs --width.
    #[arg(
        long,
        value_name = "PIXELS",
        value_parser = parse_pixels,
        allow_negative_numbers = true,
        requires = "width",
        conflicts_with_all = ["scale_w", "scale_h", "recon"]
    )]
    height: Option<usize>,

    /// Output width as a multiple of the trained width (2 doubles it). Needs --scale-h.
    #[arg(
        long = "scale-w",
        value_name = "FACTOR",
        value_parser = parse_factor,
        allow_negative_numbers = true,
        requires = "scale_h",
        conflicts_with = "recon"
    )]
    scale_w: Option<f64>,

    /// Output height as a multiple of the trained height (0.5 halves it). Needs --scale-w.
    #[arg(
        long = "scale-h",
        value_name = "FACTOR",
        value_parser = parse_factor,
        allow_negative_numbers = true,
        requires = "scale_w",
        conflicts_with = "recon"
    )]
    scale_h: Option<f64>,

    /// Seed of the random noise; image i of a call depends only on the seed and i.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,

    /// First stage that gets random noise (0 = coarsest). Earlier stages reproduce the training
    /// image, so a later start keeps more of its layout.
    #[arg(long, value_name = "STAGE", default_value_t = 0, conflicts_with = "recon")]
    start_stage: usize,

    /// Image fed into --start-stage in place of the reconstruction (injection); it is resized to
    /// that stage's size.
    #[arg(long, value_name = "PNG", requires = "start_stage", conflicts_with = "recon")]
    start_image: Option<PathBuf>,

    /// Reconstruct the training image from the stored reconstruction noise instead of sampling.
    #[arg(long)]
    recon: bool,

    #[command(flatten)]
    compute: ComputeArgs,

    /// Folder for the images sample_000.png, sample_001.png, …; created if missing.
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
}

#[derive(Debug, Args)]
pub struct RetargetArgs {
    /// Model file written by `pegan singan train` or `pegan convert`.
    #[arg(value_name = "MODEL")]
    model: PathBuf,

    /// Output width in pixels.
    #[arg(long, value_name = "PIXELS", value_parser = parse_pixels, allow_negative_numbers = true)]
    width: usize,

    /// Output height in pixels.
    #[arg(long, value_name = "PIXELS", value_parser = parse_pixels, allow_negative_numbers = true)]
    height: usize,

    /// Seed of the random noise.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,

    /// First stage that gets random noise (0 = coarsest); earlier stages reproduce the training image.
    #[arg(long, value_name = "STAGE", default_value_t = 0)]
    start_stage: usize,

    #[command(flatten)]
    compute: ComputeArgs,

    /// PNG file to write.
    #[arg(short, long, value_name = "OUT.png")]
    output: PathBuf,
}

/// Runs one `pegan singan` command.
pub fn run(command: SinGanCommand, bars: &MultiProgress) -> Result<ExitCode> {
    match command {
        SinGanCommand::Train(args) => crate::train::run_train(&args, bars),
        SinGanCommand::Sample(args) => run_sample(&args, bars).map(|()| ExitCode::SUCCESS),
        SinGanCommand::Retarget(args) => run_retarget(&args).map(|()| ExitCode::SUCCESS),
    }
}

fn run_sample(args: &SampleArgs, bars: &MultiProgress) -> Result<()> {
    check_not_file(&args.output, "output folder")?;
    let mut inputs = vec![(args.model.as_path(), "model file")];
    if let Some(start_image) = &args.start_image {
        inputs.push((start_image.as_path(), "--start-image"));
    }
    for index in 0..args.count {
        check_not_input(&sample_path(&args.output, index), "sample", &inputs)?;
    }

    let device = args.compute.open()?;
    let model = load_model(&args.model, &device)?;

    let size = match (args.width, args.height, args.scale_w, args.scale_h) {
        (Some(width), Some(height), _, _) => OutputSize::Pixels { width, height },
        (_, _, Some(width), Some(height)) => OutputSize::Factors { width, height },
        _ => OutputSize::Trained,
    };
    let start_image = match &args.start_image {
        Some(path) => Some(load_image_tensor(path, &device).context("cannot load the --start-image")?),
        None => None,
    };
    let mode = if args.recon { NoiseMode::Reconstruction } else { NoiseMode::Random };
    if args.recon && args.count > 1 {
        tracing::warn!(count = args.count, "--recon reproduces one image, so all {} files will be equal", args.count);
    }
    let options =
        SampleOptions { size, mode, seed: args.seed, start_stage: args.start_stage, start_image, ..Default::default() };

    let bar = sample_bar(bars, args.count);
    for index in 0..args.count {
        let result = write_sample(&model, &options, index, &args.output);
        let path = match result {
            Ok(path) => path,
            Err(error) => {
                bar.abandon();
                return Err(error);
            }
        };
        if let Err(error) = bar.suspend(|| outln!("{}", path.display())) {
            bar.abandon();
            return Err(error);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Generates sample `index`, writes it to `folder`/sample_NNN.png and returns that path.
fn write_sample(model: &SinGanModel, options: &SampleOptions, index: usize, folder: &Path) -> Result<PathBuf> {
    let path = sample_path(folder, index);
    let image = generate_image(model, options, index as u64, &path)?;

    // The folder is created after the first image, so a request that the model rejects leaves no empty folder.
    if index == 0 {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create the output folder {}", folder.display()))?;
    }
    pegan_core::image::save_png(&image, &path)?;
    Ok(path)
}

/// Path of sample `index` in `folder`: sample_000.png, sample_001.png, …
fn sample_path(folder: &Path, index: usize) -> PathBuf {
    folder.join(format!("sample_{index:03}.png"))
}

fn run_retarget(args: &RetargetArgs) -> Result<()> {
    check_not_folder(&args.output, "output image")?;
    if !has_extension(&args.output, "png") {
        bail!("output {} must end in .png: pegan writes PNG images", args.output.display());
    }
    check_parent_folder(&args.output, "output image")?;
    check_not_input(&args.output, "output image", &[(args.model.as_path(), "model file")])?;

    let device = args.compute.open()?;
    let model = load_model(&args.model, &device)?;
    let options = SampleOptions {
        size: OutputSize::Pixels { width: args.width, height: args.height },
        seed: args.seed,
        start_stage: args.start_stage,
        ..Default::default()
    };
    let image = generate_image(&model, &options, 0, &args.output)?;
    pegan_core::image::save_png(&image, &args.output)?;
    outln!("{}", args.output.display())
}

/// Generates image `index` of a request as 8-bit RGB. `path` is its destination, named in errors.
fn generate_image(model: &SinGanModel, options: &SampleOptions, index: u64, path: &Path) -> Result<RgbImage> {
    let tensor = model.sample(options, index)?;
    let image = pegan_core::image::tensor_to_rgb8(&tensor)
        .with_context(|| format!("cannot convert the generated image for {}", path.display()))?;
    Ok(image)
}
