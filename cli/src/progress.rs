//! Progress bars on stderr and the JSON-lines loss log of a training run.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pegan_core::progress::TrainProgress;

use crate::console::errln;

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
            errln!("{line}");
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

/// Loss history of a training run, as JSON lines (each a `TrainProgress`).
///
/// There are two record kinds. Every iteration adds one with `"stage_finished": false`. After a stage
/// has been saved, one more record repeats that stage's last iteration with `"stage_finished": true`.
/// The file is written only from the first record on, so a run that records nothing leaves no empty
/// file and does not touch an existing one.
pub struct LossLog {
    path: PathBuf,
    /// Lines of an earlier run that the first record writes back ahead of itself.
    kept_lines: Vec<String>,
    /// The open file, from the first record on.
    writer: Option<BufWriter<File>>,
}

impl LossLog {
    /// Prepares the log of a new run at `path`. The first record replaces any file there.
    pub fn create(path: &Path) -> Self {
        LossLog { path: path.to_path_buf(), kept_lines: Vec::new(), writer: None }
    }

    /// Prepares the log of a run resumed at stage `finished_stages`.
    ///
    /// The records of the stages before it are kept. The records of later stages came from the
    /// interrupted stage, whose training was discarded and is repeated, so the first record drops
    /// them and the log reads as that of an uninterrupted run.
    pub fn resume(path: &Path, finished_stages: usize) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => {
                return Err(anyhow::Error::new(error)
                    .context(format!("cannot read the loss log {} to resume it", path.display())))
            }
        };

        let mut kept_lines = Vec::new();
        let mut dropped = 0usize;
        let mut unreadable = 0usize;
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let stage = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|record| record.get("stage").and_then(serde_json::Value::as_u64));
            match stage {
                Some(stage) if (stage as usize) < finished_stages => kept_lines.push(line.to_string()),
                Some(_) => dropped += 1,
                None => unreadable += 1,
            }
        }
        if dropped > 0 {
            tracing::info!(dropped, log = %path.display(), "dropping the loss records of the stage that is trained again");
        }
        if unreadable > 0 {
            tracing::warn!(
                unreadable,
                log = %path.display(),
                "dropping loss log lines that are not JSON records with a stage, e.g. a line cut short by a crash"
            );
        }
        Ok(LossLog { path: path.to_path_buf(), kept_lines, writer: None })
    }

    /// Appends one report as a JSON line and flushes it, so the log is complete up to the last iteration.
    pub fn record(&mut self, report: &TrainProgress) -> Result<()> {
        let line = serde_json::to_string(report).expect("TrainProgress serialises to JSON");
        let Some(writer) = &mut self.writer else {
            return self.start(&line);
        };
        writeln!(writer, "{line}")
            .and_then(|()| writer.flush())
            .with_context(|| format!("cannot write the loss log {}", self.path.display()))
    }

    /// Writes the kept lines and the first record atomically, then opens the file for appending.
    fn start(&mut self, first_line: &str) -> Result<()> {
        let mut text = String::new();
        for line in self.kept_lines.drain(..).chain(std::iter::once(first_line.to_string())) {
            text.push_str(&line);
            text.push('\n');
        }
        pegan_core::singan::model::write_atomically(&self.path, text.as_bytes())
            .context("cannot write the loss log")?;
        let file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open the loss log {} for writing", self.path.display()))?;
        self.writer = Some(BufWriter::new(file));
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
