//! `pegan`: trains SinGAN models on one image, then samples, retargets, inspects and converts them, and
//! compares sets of images with the sliced Wasserstein distance.
//!
//! The binary only parses arguments, reports progress and prints errors; the models live in pegan-core.

mod console;
mod inspect;
mod metrics;
mod options;
mod progress;
mod singan;
mod stylegan2;
mod train;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::MultiProgress;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

/// Train SinGAN models with positional encodings on one image, then sample and retarget them.
#[derive(Debug, Parser)]
#[command(name = "pegan", version)]
struct Cli {
    /// Log more to stderr: -v adds debug messages, -vv trace messages. Without it only warnings are
    /// logged. RUST_LOG directives, when set, are applied on top.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train, sample and retarget SinGAN models.
    #[command(subcommand)]
    Singan(singan::SinGanCommand),

    /// Train MS-PIE StyleGAN2 on a folder of images; sample it at any supported size; interpolate.
    #[command(subcommand)]
    Stylegan2(stylegan2::StyleGan2Command),

    /// Print the metadata of a model file as JSON, followed by a summary of its stages.
    Inspect(inspect::InspectArgs),

    /// Convert an MMGeneration checkpoint (SinGAN .pth plus .pkl, or StyleGAN2 .pth) into a pegan model file.
    Convert(inspect::ConvertArgs),

    /// Compare sets of images with image-quality metrics.
    #[command(subcommand)]
    Metrics(metrics::MetricsCommand),
}

fn main() -> ExitCode {
    // Training reallocates the same large tensors thousands of times per iteration; see pegan_core::alloc.
    pegan_core::alloc::retain_freed_memory();
    let cli = Cli::parse();

    // Log lines and progress bars share stderr, so the bars are hidden while a line is written.
    let bars = MultiProgress::new();
    init_logging(cli.verbose, &bars);

    let result = match cli.command {
        Command::Singan(command) => singan::run(command, &bars),
        Command::Stylegan2(command) => stylegan2::run(command, &bars),
        Command::Inspect(args) => inspect::run_inspect(&args).map(|()| ExitCode::SUCCESS),
        Command::Convert(args) => inspect::run_convert(&args).map(|()| ExitCode::SUCCESS),
        Command::Metrics(command) => metrics::run(command).map(|()| ExitCode::SUCCESS),
    };

    match result {
        Ok(code) => code,
        Err(error) => {
            // `{:#}` joins the context chain with ": ", which keeps the message on one line.
            let message = format!("{error:#}").replace('\n', " ");
            console::errln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the tracing subscriber that writes to stderr without breaking the progress bars.
fn init_logging(verbose: u8, bars: &MultiProgress) {
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let filter = EnvFilter::builder().with_default_directive(level.into()).from_env_lossy();

    let bars = bars.clone();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(move || BarAwareStderr { bars: bars.clone() })
        // A failed write would be reported with `eprintln!`, which panics when stderr is a closed pipe.
        .log_internal_errors(false)
        .init();
}

/// Stderr writer that suspends the progress bars while a log line is written.
struct BarAwareStderr {
    bars: MultiProgress,
}

impl Write for BarAwareStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bars.suspend(|| std::io::stderr().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
