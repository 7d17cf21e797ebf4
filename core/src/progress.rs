//! Progress reports from long operations, and cancellation by the caller.

use serde::Serialize;

/// One report from training.
#[derive(Debug, Clone, Serialize)]
pub struct TrainProgress {
    /// Stage being trained (0 = coarsest).
    pub stage: usize,
    /// Number of stages in the model.
    pub num_stages: usize,
    /// Iteration within the stage, counted from 1.
    pub iteration: usize,
    /// Iterations per stage.
    pub iters_per_stage: usize,
    /// Discriminator loss of the last discriminator step (WGAN loss plus the weighted penalty).
    pub loss_d: f64,
    /// Weighted gradient penalty of the last discriminator step.
    pub gradient_penalty: f64,
    /// Adversarial generator loss of the last generator step.
    pub loss_g_adv: f64,
    /// Reconstruction mean squared error of the last generator step, unweighted.
    pub loss_recon: f64,
    /// Seconds since training (or this resumed run) started.
    pub elapsed_s: f64,
    /// True on the last report of a stage, after the stage has been recorded as finished.
    pub stage_finished: bool,
}

/// Decision of the progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Stop as soon as possible. Training keeps every stage that finished before the stop.
    Cancel,
}
