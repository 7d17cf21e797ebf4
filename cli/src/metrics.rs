//! `pegan metrics …`: image-quality metrics between folders of images.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use pegan_core::metrics::swd::{sliced_wasserstein_folders, DescriptorNormalization, SwdConfig, SwdReport};

use crate::console::outln;

#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// Multi-scale sliced Wasserstein distance (SWD × 10³) between two folders of images.
    ///
    /// The metric of progressive GAN (Karras et al. 2018): 7×7 patches from every level of a Laplacian
    /// pyramid, compared along random directions. Lower is closer; 0 means identical sets. Every image
    /// must have one size unless --resize is given.
    Swd(SwdArgs),
}

#[derive(Debug, Args)]
pub struct SwdArgs {
    /// Folder of real images (PNG or JPEG; other files and subfolders are skipped).
    #[arg(value_name = "REAL_DIR")]
    real: PathBuf,

    /// Folder of generated images (PNG or JPEG).
    #[arg(value_name = "FAKE_DIR")]
    fake: PathBuf,

    /// Seed of the patch positions and random directions.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,

    /// Use at most N images of each folder, the first in file-name order [default: all].
    #[arg(long, value_name = "N", value_parser = parse_image_limit, allow_negative_numbers = true)]
    max_images: Option<usize>,

    /// Resize every image to WIDTHxHEIGHT pixels (bilinear) before comparing, e.g. 128x96.
    #[arg(long, value_name = "WIDTHxHEIGHT", value_parser = parse_size)]
    resize: Option<(usize, usize)>,

    /// Statistics that normalise the patches: per-set (each set its own, as the reference does) or union
    /// (both sets together). Per-set hides a global colour gain or offset between the sets.
    #[arg(
        long,
        value_name = "MODE",
        default_value = "per-set",
        value_parser = PossibleValuesParser::new(["per-set", "union"]).map(|name| match name.as_str() {
            "union" => DescriptorNormalization::Union,
            _ => DescriptorNormalization::PerSet,
        })
    )]
    normalization: DescriptorNormalization,

    /// Print the result as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs one `pegan metrics` command.
pub fn run(command: MetricsCommand) -> Result<()> {
    match command {
        MetricsCommand::Swd(args) => run_swd(&args),
    }
}

fn run_swd(args: &SwdArgs) -> Result<()> {
    let config = SwdConfig {
        seed: args.seed,
        normalization: args.normalization,
        resize: args.resize.map(|(width, height)| (height, width)),
        ..SwdConfig::default()
    };
    let report = sliced_wasserstein_folders(&args.real, &args.fake, args.max_images, &config)
        .with_context(|| format!("cannot compute the SWD of {} and {}", args.real.display(), args.fake.display()))?;

    if args.json {
        let mut value = serde_json::to_value(&report).expect("the SWD report serialises to JSON");
        value["seed"] = args.seed.into();
        value["normalization"] = args.normalization.name().into();
        outln!("{value}")
    } else {
        outln!("{}", table(&report, args).trim_end())
    }
}

/// Formats the report for people: one row per pyramid level, then the average.
fn table(report: &SwdReport, args: &SwdArgs) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "SWD × 10³ of {} real and {} fake images, seed {}, {} normalisation",
        report.real_images,
        report.fake_images,
        args.seed,
        args.normalization.name()
    );
    let _ = writeln!(text, "level  width×height  SWD×1e3");
    for (index, level) in report.per_level.iter().enumerate() {
        let size = format!("{}×{}", level.width, level.height);
        let _ = writeln!(text, "{index:>5}  {size:>12}  {:>9.4}", level.swd);
    }
    let _ = writeln!(text, "{:>5}  {:>12}  {:>9.4}", "mean", "", report.average);
    text
}

/// Parses an image count of at least 1.
fn parse_image_limit(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("zero is not allowed; expected a whole number of images, at least 1".to_string()),
        Ok(count) => Ok(count),
        Err(_) => Err("expected a whole number of images, at least 1".to_string()),
    }
}

/// Parses WIDTHxHEIGHT in pixels, e.g. 128x96.
fn parse_size(text: &str) -> Result<(usize, usize), String> {
    let expected = "expected WIDTHxHEIGHT in pixels, such as 128x96";
    let (width, height) = text.trim().split_once(['x', 'X', '×']).ok_or_else(|| expected.to_string())?;
    let side = |value: &str| value.trim().parse::<usize>().ok().filter(|&v| v > 0);
    match (side(width), side(height)) {
        (Some(width), Some(height)) => Ok((width, height)),
        _ => Err(format!("{expected}, with whole numbers of at least 1")),
    }
}
