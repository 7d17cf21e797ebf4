//! Progress bars on stderr and the JSON-lines loss log of a training run.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pegan_core::progress::TrainProgress;

/// Progress bar over every iteration of the stages that a training run trains.
pub struct TrainBar {
    bar: ProgressBar,
    first_stage: usize,
    iters_per_stage: usize,
}

impl TrainBar {
    /// Adds a bar for stages `first_stage .. num_stages` with `iters_per_stage` iterations each.
    pub fn new(bars: &MultiProgress, first_stage: usize, num_stages: usize, iters_per_stage: usize) -> Self {
        let total = (num_stages.saturating_sub(first_stage) * iters_per_stage) as u64;
        // NOTE: indicatif estimates the ETA from the recent iteration rate, and finer stages are slower
        // than coarser ones, so the ETA runs low until the last stage.
        let style =
            ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {percent:>3}% ETA {eta_precise}\n{msg}")
                .expect("the template is valid")
                .progress_chars("=> ");
        let bar = bars.add(ProgressBar::new(total).with_style(style));
        bar.enable_steady_tick(Duration::from_millis(500));
        TrainBar { bar, first_stage, iters_per_stage }
    }

    /// Moves the bar to the reported iteration and shows its stage and losses.
    pub fn update(&self, report: &TrainProgress) {
        let done_stages = report.stage.saturating_sub(self.first_stage);
        self.bar.set_position((done_stages * self.iters_per_stage + report.iteration) as u64);
        self.bar.set_message(format!(
            "stage {} of 0–{}, iteration {}/{}: D {:.4} (GP {:.4}), G {:.4}, reconstruction MSE {:.5}",
            report.stage,
            report.num_stages - 1,
            report.iteration,
            report.iters_per_stage,
            report.loss_d,
            report.gradient_penalty,
            report.loss_g_adv,
            report.loss_recon,
        ));
    }

    /// Prints a line above the bar, or as a plain stderr line when the bar is hidden because stderr is not a terminal.
    pub fn note(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// A clone of the underlying bar, for the Ctrl-C handler thread.
    pub fn handle(&self) -> ProgressBar {
        self.bar.clone()
    }

    /// Removes the bar after a finished run.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Stops drawing the bar and leaves its last state on screen, after a cancelled or failed run.
    pub fn abandon(&self) {
        self.bar.abandon();
    }
}

/// Bar over the images of one `pegan singan sample` call.
pub fn sample_bar(bars: &MultiProgress, count: usize) -> ProgressBar {
    let style = ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} images, ETA {eta_precise}")
        .expect("the template is valid")
        .progress_chars("=> ");
    bars.add(ProgressBar::new(count as u64).with_style(style))
}

/// Loss history of a training run: one JSON object per iteration and line (a `TrainProgress`).
pub struct LossLog {
    path: PathBuf,
    writer: BufWriter<File>,
}

impl LossLog {
    /// Creates the log at `path`, or appends to it when `append` is set (a resumed run).
    pub fn open(path: &Path, append: bool) -> Result<Self> {
        let mut options = OpenOptions::new();
        if append {
            options.append(true).create(true);
        } else {
            options.write(true).create(true).truncate(true);
        }
        let file =
            options.open(path).with_context(|| format!("cannot open the loss log {} for writing", path.display()))?;
        Ok(LossLog { path: path.to_path_buf(), writer: BufWriter::new(file) })
    }

    /// Appends one report as a JSON line and flushes it, so the log is complete up to the last iteration.
    pub fn record(&mut self, report: &TrainProgress) -> Result<()> {
        let line = serde_json::to_string(report).expect("TrainProgress serialises to JSON");
        writeln!(self.writer, "{line}")
            .and_then(|()| self.writer.flush())
            .with_context(|| format!("cannot write the loss log {}", self.path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
