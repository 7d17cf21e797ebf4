//! `pegan inspect` and `pegan convert`: model metadata, and the import of MMGeneration checkpoints.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use pegan_core::singan::SinGanModel;

use crate::console::{errln, outln};
use crate::options::{check_not_folder, check_not_input, check_parent_folder, has_extension, load_model, quote_path};

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Model file written by pegan (SinGAN or StyleGAN2), an MMGeneration SinGAN checkpoint (.pth) together
    /// with --mmgen-pkl, or an MMGeneration StyleGAN2 checkpoint (.pth).
    #[arg(value_name = "MODEL")]
    model: PathBuf,

    /// The .pkl file with the fixed noises and noise amplitudes that belongs to an MMGeneration
    /// checkpoint given as MODEL.
    #[arg(long, value_name = "PKL")]
    mmgen_pkl: Option<PathBuf>,

    /// Print only the metadata JSON, without the summary.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// MMGeneration checkpoint (.pth), as written by MMGeneration v0.7: SinGAN (with --pkl) or StyleGAN2.
    #[arg(value_name = "CHECKPOINT")]
    checkpoint: PathBuf,

    /// The .pkl file with a SinGAN checkpoint's fixed noises and noise amplitudes. Without it the checkpoint
    /// is read as a StyleGAN2 one.
    #[arg(long, value_name = "FILE")]
    pkl: Option<PathBuf>,

    /// pegan model file to write.
    #[arg(short, long, value_name = "MODEL")]
    output: PathBuf,
}

/// Prints the metadata of a model as pretty JSON, then a summary unless --json is given.
pub fn run_inspect(args: &InspectArgs) -> Result<()> {
    if args.mmgen_pkl.is_none() && is_stylegan2_file(&args.model) {
        return inspect_stylegan2(args);
    }
    let model = match &args.mmgen_pkl {
        Some(pkl) => load_mmgen(&args.model, pkl)?,
        None => load_model(&args.model, &Device::Cpu)?,
    };

    let json = serde_json::to_string_pretty(&model.metadata).expect("metadata serialises to JSON");
    outln!("{json}")?;
    if !args.json {
        outln!("")?;
        outln!("{}", summary(&model, &args.model).trim_end())?;
    }
    Ok(())
}

/// Converts an MMGeneration checkpoint into a native model file.
pub fn run_convert(args: &ConvertArgs) -> Result<()> {
    check_not_folder(&args.output, "model file")?;
    check_parent_folder(&args.output, "model file")?;
    let Some(pkl) = &args.pkl else {
        check_not_input(&args.output, "model file", &[(args.checkpoint.as_path(), "checkpoint")])?;
        let model = crate::stylegan2::load_model(&args.checkpoint, None, &Device::Cpu)?;
        model.save(&args.output)?;
        errln!("converted the StyleGAN2 checkpoint {} to {}", args.checkpoint.display(), args.output.display());
        return Ok(());
    };
    let inputs = [(args.checkpoint.as_path(), "checkpoint"), (pkl.as_path(), ".pkl file")];
    check_not_input(&args.output, "model file", &inputs)?;

    let model = load_mmgen(&args.checkpoint, pkl)?;
    model.save(&args.output)?;
    errln!(
        "converted {} ({}, {} stages) to {}",
        args.checkpoint.display(),
        model.config().variant.name(),
        model.num_stages(),
        args.output.display()
    );
    Ok(())
}

/// Returns whether `path` is a pegan StyleGAN2 file or an MMGeneration StyleGAN2 checkpoint.
fn is_stylegan2_file(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else { return false };
    if bytes.starts_with(b"PK") {
        // A SinGAN .pth has generator.blocks.* keys; a StyleGAN2 one has generator.style_mapping.*.
        return bytes.windows(14).any(|w| w == b"style_mapping.");
    }
    // Only the kind is checked here, so that a damaged StyleGAN2 file reports its own error when loaded.
    let kind = pegan_core::stylegan2::model::MODEL_KIND;
    pegan_core::singan::model::read_metadata_json(&bytes, kind, "a StyleGAN2", u32::MAX).is_ok()
}

/// Prints the metadata of a StyleGAN2 model and a summary of its sizes.
fn inspect_stylegan2(args: &InspectArgs) -> Result<()> {
    let model = crate::stylegan2::load_model(&args.model, None, &Device::Cpu)?;
    let json = serde_json::to_string_pretty(&model.metadata).expect("metadata serialises to JSON");
    outln!("{json}")?;
    if args.json {
        return Ok(());
    }

    let config = model.config();
    let g = &model.generator_ema;
    let (h, w) = g.output_size(pegan_core::stylegan2::head::ChosenScale::default())?;
    let head = match &config.generator.head_pos_encoding {
        None => "learned constant".to_string(),
        Some(pegan_core::encoding::EncodingConfig::Csg) => "CSG".to_string(),
        Some(pegan_core::encoding::EncodingConfig::Spe { embedding_dim, .. }) => format!("SPE (dim {embedding_dim})"),
    };
    outln!("")?;
    outln!(
        "StyleGAN2 ({:?}), {head} head, from {}, {} iterations trained",
        config.generator.kind,
        model.metadata.source,
        model.metadata.iteration
    )?;
    outln!(
        "generator: {} parameters, {} style rows of {} channels",
        model.generator_params.num_elements(),
        g.num_latents(),
        g.style_channels()
    )?;
    match &model.discriminator {
        Some((_, params)) => outln!("discriminator: {} parameters", params.num_elements())?,
        None => outln!("discriminator: absent (generator only)")?,
    }
    outln!("output: {w}×{h} px at scale 0, + {}×{} px per scale step", w / 4, h / 4)?;
    let sides: Vec<String> = config.training.multi_input_scales.iter().map(|&cs| format!("{}", h + cs * h / 4)).collect();
    outln!("training sides: {} px", sides.join(", "))?;
    Ok(())
}

fn load_mmgen(checkpoint: &Path, pkl: &Path) -> Result<SinGanModel> {
    for (path, what) in [(checkpoint, "checkpoint"), (pkl, ".pkl file")] {
        if !path.exists() {
            bail!("MMGeneration {what} {} not found: check the path", path.display());
        }
    }
    if !has_extension(pkl, "pkl") {
        tracing::warn!(pkl = %pkl.display(), "the MMGeneration noise file usually ends in .pkl");
    }
    SinGanModel::load_mmgen(checkpoint, pkl, &Device::Cpu)
        .with_context(|| format!("cannot import the MMGeneration checkpoint {}", checkpoint.display()))
}

/// Formats a summary for people: variant, training image, and every stage with its size and noise amplitude.
fn summary(model: &SinGanModel, path: &Path) -> String {
    let metadata = &model.metadata;
    let num_stages = model.num_stages();
    let [image_h, image_w] = metadata.training_image_size;
    let mut text = String::new();

    let seed = metadata.seed.map_or_else(|| "unknown".to_string(), |s| s.to_string());
    let _ = writeln!(
        text,
        "SinGAN, variant {}, from {} (format {}, written by pegan {})",
        metadata.config.variant.name(),
        metadata.source,
        metadata.format_version,
        metadata.library_version
    );
    let _ = writeln!(text, "training image: {image_w}×{image_h} px, seed {seed}");
    let discriminator = if model.discriminator.is_some() { "included" } else { "absent (generator only)" };
    let _ = writeln!(text, "discriminator: {discriminator}");

    if model.is_complete() {
        let _ = writeln!(text, "finished stages: all {num_stages}");
    } else {
        let _ = writeln!(
            text,
            "finished stages: {} of {num_stages}; continue with `pegan singan train IMAGE --resume -o {}`",
            metadata.finished_stages,
            quote_path(path)
        );
    }

    let _ = writeln!(text, "stage  width×height  noise amplitude  status");
    for (stage, &[height, width]) in metadata.stage_sizes.iter().enumerate() {
        let amplitude = metadata.noise_weights.get(stage).map_or_else(|| "-".to_string(), |w| format!("{w:.6}"));
        let status = if stage < metadata.finished_stages { "finished" } else { "not trained" };
        let size = format!("{width}×{height}");
        let _ = writeln!(text, "{stage:>5}  {size:>12}  {amplitude:>15}  {status}");
    }
    text
}
