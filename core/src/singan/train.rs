//! SinGAN training, stage by stage, as MMGeneration's `SinGAN.train_step`.
//!
//! Each stage trains only its own generator and discriminator blocks, for `iters_per_scale`
//! iterations of `disc_steps` WGAN-GP discriminator updates and `generator_steps` generator updates
//! (adversarial loss plus 10 × reconstruction MSE). Earlier blocks stay fixed but keep running in
//! batch-norm training mode, so their running statistics keep moving, as in the reference.

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::alloc::MemoryLimit;
use crate::error::{Error, Result};
use crate::image::{bgr_u8_to_tensor, LoadedImage};
use crate::layers::NormMode;
use crate::progress::{Control, TrainProgress};
use crate::pyramid::{resize_linear_u8, ScalePyramid};
use crate::resample::{resize, ResizeKernel};
use crate::rng::SeededRng;
use crate::singan::block::DiscriminatorBlock;
use crate::singan::config::SinGanConfig;
use crate::singan::generator::StageStart;
use crate::singan::model::SinGanModel;
use crate::singan::penalty::gradient_penalty;

/// Result of a call to [`SinGanTrainer::train`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainOutcome {
    /// Every stage finished.
    Finished,
    /// The progress callback cancelled; the model keeps every stage that finished before.
    Cancelled,
}

/// Losses of the last discriminator and generator steps.
#[derive(Debug, Clone, Copy, Default)]
struct StepLosses {
    loss_d: f64,
    gradient_penalty: f64,
    loss_g_adv: f64,
    loss_recon: f64,
}

/// Trains a [`SinGanModel`] on one image.
pub struct SinGanTrainer {
    model: SinGanModel,
    /// The image pyramid, one (1, 3, H_s, W_s) tensor per stage, BGR in [-1, 1].
    reals: Vec<Tensor>,
    seed: u64,
    /// Largest estimated peak memory that [`SinGanTrainer::train`] starts with; `None` skips the check.
    memory_limit: Option<MemoryLimit>,
}

/// Estimated peak memory, in bytes, of training `stages` of a pyramid with `stage_sizes` (height, width).
/// The peak is at the largest of those stages: the autograd graphs of the generator and discriminator
/// passes and of the gradient penalty's second-order pass, all proportional to the stage's feature maps.
///
/// NOTE: the factor was fitted to peak resident sizes of CPU runs; GPU memory was not measured.
pub fn estimate_training_memory(
    config: &SinGanConfig,
    stage_sizes: &[(usize, usize)],
    stages: std::ops::Range<usize>,
) -> u64 {
    let pad = 2 * config.head_padding() as u64;
    let features = stages
        .filter_map(|stage| stage_sizes.get(stage).map(|&size| (stage, size)))
        .map(|(stage, (h, w))| {
            let (h, w) = (h as u64, w as u64);
            let generator = (h + pad) * (w + pad) * (config.generator_channels(stage) * config.generator.num_layers) as u64;
            let discriminator = h * w * (config.discriminator_channels(stage) * config.discriminator.num_layers) as u64;
            generator + discriminator
        })
        .max()
        .unwrap_or(0);
    tracing::debug!(features, "SinGAN training memory estimate input");
    4 * SINGAN_FEATURE_FACTOR * features + SINGAN_BASE_BYTES
}

/// f32 values of working memory per feature-map value of the generator and discriminator. Peak resident
/// sizes of CPU runs were 22 to 28 bytes (5.5 to 7 values) per value at finest stages of 128×96 to 400×267
/// px; 8 leaves a margin.
const SINGAN_FEATURE_FACTOR: u64 = 8;

/// Memory of the process apart from the stage: code, the pyramid, the earlier stages' weights.
const SINGAN_BASE_BYTES: u64 = 64 << 20;

impl SinGanTrainer {
    /// Prepares a new model for `image`: plans the pyramid and initialises every block from `seed`.
    pub fn new(image: &LoadedImage, config: &SinGanConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let reals = build_reals(image, config, device)?;
        let sizes: Vec<(usize, usize)> = reals.iter().map(|r| (r.dims()[2], r.dims()[3])).collect();
        let mut model = SinGanModel::new(config, &sizes, (image.height, image.width), seed, device)?;
        model.metadata.training_image_hash = Some(image.pixel_hash());
        let memory_limit = MemoryLimit::default_for(device)?;
        Ok(SinGanTrainer { model, reals, seed, memory_limit })
    }

    /// Continues training `model` on `image` from its first unfinished stage.
    pub fn resume(model: SinGanModel, image: &LoadedImage) -> Result<Self> {
        if model.discriminator.is_none() {
            return Err(Error::invalid(
                "the model has no discriminator (a generator-only import), so its training cannot be resumed",
            ));
        }
        let [th, tw] = model.metadata.training_image_size;
        if (image.height, image.width) != (th, tw) {
            return Err(Error::invalid(format!(
                "the model was trained on a {tw}×{th} image but the given image is {}×{}: resume with the same image",
                image.width, image.height
            )));
        }
        check_same_image(&model, image)?;
        let reals = build_reals(image, model.config(), &model.device)?;
        let sizes: Vec<(usize, usize)> = reals.iter().map(|r| (r.dims()[2], r.dims()[3])).collect();
        if sizes != model.stage_sizes() {
            return Err(Error::invalid(format!(
                "the image's pyramid {sizes:?} differs from the model's stages {:?}",
                model.stage_sizes()
            )));
        }
        let seed = model.metadata.seed.unwrap_or(0);
        let memory_limit = MemoryLimit::default_for(&model.device)?;
        Ok(SinGanTrainer { model, reals, seed, memory_limit })
    }

    pub fn model(&self) -> &SinGanModel {
        &self.model
    }

    pub fn into_model(self) -> SinGanModel {
        self.model
    }

    /// Sets the largest estimated peak memory, in bytes, that training starts with; `None` skips the check.
    /// The default is [`MemoryLimit::default_for`] the device.
    pub fn set_memory_limit(&mut self, limit: Option<u64>) {
        self.memory_limit = limit.map(MemoryLimit::Set);
    }

    /// Estimated peak memory, in bytes, of the unfinished stages ([`estimate_training_memory`]).
    pub fn estimate_memory(&self) -> u64 {
        let stages = self.model.metadata.finished_stages..self.model.num_stages();
        estimate_training_memory(self.model.config(), &self.model.stage_sizes(), stages)
    }

    /// Fails when the unfinished stages' estimated memory exceeds the limit, naming both and the fixes.
    pub fn check_memory(&self) -> Result<()> {
        let needed = self.estimate_memory();
        let limit_mib = self.memory_limit.map(|l| l.bytes() >> 20);
        tracing::info!(needed_mib = needed >> 20, limit_mib, "training memory estimate");
        let Some(limit) = self.memory_limit.filter(|limit| needed > limit.bytes()) else {
            return Ok(());
        };
        let (h, w) = self.model.stage_sizes().last().copied().unwrap_or_default();
        Err(Error::too_large(format!(
            "training up to {w}×{h} px needs about {} MiB of memory, more than {}: lower data.max_size with \
             data.resize_to_max_size on, use a smaller image, or train on a GPU",
            needed >> 20,
            limit.describe()
        )))
    }

    /// Returns the training pyramid, coarsest first.
    pub fn reals(&self) -> &[Tensor] {
        &self.reals
    }

    /// Trains every unfinished stage.
    ///
    /// `progress` is called after every iteration and once more, with `stage_finished` set, after each
    /// stage has been recorded; it may cancel at any call. `on_stage_finished` is called with
    /// the model after each stage, e.g. to save it; an error there stops training.
    pub fn train(
        &mut self,
        progress: &mut dyn FnMut(&TrainProgress) -> Control,
        on_stage_finished: &mut dyn FnMut(&SinGanModel) -> Result<()>,
    ) -> Result<TrainOutcome> {
        self.check_memory()?;
        let started = Instant::now();
        let num_stages = self.model.num_stages();
        for stage in self.model.metadata.finished_stages..num_stages {
            tracing::info!(stage, num_stages, "training stage");

            // A cancelled stage has already moved weights, batch-norm statistics and the next noise
            // amplitude. The snapshot restores the model of the last finished stage, so the caller's
            // model equals the one it saved and a resumed run matches an uninterrupted one.
            let snapshot = self.model.to_bytes()?;
            let Some(mut last_report) = self.train_stage(stage, started, progress)? else {
                self.model = SinGanModel::from_bytes(&snapshot, &self.model.device)?;
                tracing::info!(stage, "training cancelled; stages before this one are kept");
                return Ok(TrainOutcome::Cancelled);
            };
            self.model.metadata.finished_stages = stage + 1;
            on_stage_finished(&self.model)?;
            tracing::info!(stage, elapsed_s = started.elapsed().as_secs_f64(), "stage finished");

            last_report.stage_finished = true;
            last_report.elapsed_s = started.elapsed().as_secs_f64();
            if progress(&last_report) == Control::Cancel && stage + 1 < num_stages {
                tracing::info!(stage, "training cancelled after a finished stage");
                return Ok(TrainOutcome::Cancelled);
            }
        }
        Ok(TrainOutcome::Finished)
    }

    fn train_stage(
        &mut self,
        stage: usize,
        started: Instant,
        progress: &mut dyn FnMut(&TrainProgress) -> Control,
    ) -> Result<Option<TrainProgress>> {
        let config = self.model.config().clone();
        let train = &config.train;
        let num_stages = self.model.num_stages();

        // A stream per stage, so a resumed run draws what an uninterrupted one would.
        let mut rng = SeededRng::new(self.seed ^ (stage as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));

        self.copy_previous_stage(stage)?;
        let generator_vars = self.model.generator.blocks[stage].trainable();
        let discriminator_vars = self.discriminator()?[stage].trainable();
        let adam =
            |lr: f64| ParamsAdamW { lr, beta1: train.betas[0], beta2: train.betas[1], eps: 1e-8, weight_decay: 0.0 };
        let mut optimizer_g = AdamW::new(generator_vars, adam(train.lr_g))?;
        let mut optimizer_d = AdamW::new(discriminator_vars, adam(train.lr_d))?;

        let mut last_report = None;
        for iteration in 0..train.iters_per_scale {
            // MultiStepLR: multiply by gamma once per milestone passed.
            let drops = train.lr_milestones.iter().filter(|&&m| iteration >= m).count() as i32;
            optimizer_g.set_learning_rate(train.lr_g * train.lr_gamma.powi(drops));
            optimizer_d.set_learning_rate(train.lr_d * train.lr_gamma.powi(drops));

            let losses = self.iteration(stage, &mut rng, &mut optimizer_d, &mut optimizer_g)?;
            if [losses.loss_d, losses.loss_g_adv, losses.loss_recon].iter().any(|v| !v.is_finite()) {
                return Err(Error::invalid(format!(
                    "training diverged at stage {stage}, iteration {}: losses D {} G {} recon {}; \
                     lower the learning rates or check the image",
                    iteration + 1,
                    losses.loss_d,
                    losses.loss_g_adv,
                    losses.loss_recon
                )));
            }

            // The reference sets the next stage's noise amplitude after the first iteration of this stage.
            if iteration == 0 && stage + 1 < num_stages && self.model.metadata.noise_weights.len() == stage + 1 {
                let amplitude = self.next_noise_amplitude(stage)?;
                self.model.metadata.noise_weights.push(amplitude);
            }

            let report = TrainProgress {
                stage,
                num_stages,
                iteration: iteration + 1,
                iters_per_stage: train.iters_per_scale,
                loss_d: losses.loss_d,
                gradient_penalty: losses.gradient_penalty,
                loss_g_adv: losses.loss_g_adv,
                loss_recon: losses.loss_recon,
                elapsed_s: started.elapsed().as_secs_f64(),
                stage_finished: false,
            };
            tracing::debug!(?report, "iteration");
            if progress(&report) == Control::Cancel {
                return Ok(None);
            }
            last_report = Some(report);
        }
        Ok(last_report)
    }

    /// One training iteration of `stage`: the discriminator steps, then the generator steps.
    fn iteration(
        &self,
        stage: usize,
        rng: &mut SeededRng,
        optimizer_d: &mut AdamW,
        optimizer_g: &mut AdamW,
    ) -> Result<StepLosses> {
        let train = &self.model.config().train;
        let mut losses = StepLosses::default();
        for _ in 0..train.disc_steps {
            let (loss_d, gp) = self.discriminator_step(stage, rng, optimizer_d)?;
            losses.loss_d = loss_d;
            losses.gradient_penalty = gp;
        }
        for _ in 0..train.generator_steps {
            let (adv, recon) = self.generator_step(stage, rng, optimizer_g)?;
            losses.loss_g_adv = adv;
            losses.loss_recon = recon;
        }
        Ok(losses)
    }

    /// Runs `count` iterations of `stage` with fresh optimisers and reports nothing; for benchmarks.
    ///
    /// Noise amplitudes of stages up to `stage` must be known; missing ones are set to the
    /// reference's initial factor 0.1.
    pub fn run_iterations(&mut self, stage: usize, count: usize) -> Result<()> {
        if stage >= self.model.num_stages() {
            return Err(Error::invalid(format!("stage {stage} does not exist")));
        }
        while self.model.metadata.noise_weights.len() <= stage {
            self.model.metadata.noise_weights.push(self.model.config().train.noise_weight_init);
        }
        let train = self.model.config().train.clone();
        let adam =
            |lr: f64| ParamsAdamW { lr, beta1: train.betas[0], beta2: train.betas[1], eps: 1e-8, weight_decay: 0.0 };
        let mut optimizer_g = AdamW::new(self.model.generator.blocks[stage].trainable(), adam(train.lr_g))?;
        let mut optimizer_d = AdamW::new(self.discriminator()?[stage].trainable(), adam(train.lr_d))?;
        let mut rng = SeededRng::new(self.seed);
        for _ in 0..count {
            self.iteration(stage, &mut rng, &mut optimizer_d, &mut optimizer_g)?;
        }
        Ok(())
    }

    fn discriminator(&self) -> Result<&Vec<DiscriminatorBlock>> {
        self.model.discriminator.as_ref().ok_or_else(|| Error::invalid("the model has no discriminator"))
    }

    /// Initialises stage `stage` from stage `stage − 1` when their shapes match (reference rule).
    fn copy_previous_stage(&self, stage: usize) -> Result<()> {
        if stage == 0 {
            return Ok(());
        }
        let blocks = &self.model.generator.blocks;
        if blocks[stage].shape == blocks[stage - 1].shape {
            blocks[stage].copy_from(&blocks[stage - 1])?;
        }
        let critics = self.discriminator()?;
        if critics[stage].shape == critics[stage - 1].shape {
            critics[stage].copy_from(&critics[stage - 1])?;
        }
        Ok(())
    }

    /// Fresh Gaussian noise for stages `0 ..= stage` at the trained sizes.
    fn random_noises(&self, stage: usize, rng: &mut SeededRng) -> Result<Vec<Tensor>> {
        let config = self.model.config();
        let pad = config.noise_padding();
        self.model.stage_sizes()[..=stage]
            .iter()
            .enumerate()
            .map(|(s, &(h, w))| {
                rng.normal(&[1, config.noise_channels(s), h + 2 * pad, w + 2 * pad], 0.0, 1.0, &self.model.device)
            })
            .collect()
    }

    /// Runs the generator up to `stage` in training mode; only `stage`'s block is differentiable.
    fn generate(&self, noises: &[Tensor], stage: usize) -> Result<Tensor> {
        let start = StageStart { stage: 0, previous: None };
        let outputs = self.model.generator.forward(
            noises,
            &self.model.metadata.noise_weights,
            &self.model.stage_sizes(),
            &start,
            stage,
            NormMode::Train,
            Some(stage),
        )?;
        Ok(outputs.last().expect("one output per stage").clone())
    }

    /// One WGAN-GP discriminator update; returns (total loss, weighted penalty).
    fn discriminator_step(&self, stage: usize, rng: &mut SeededRng, optimizer: &mut AdamW) -> Result<(f64, f64)> {
        let critic = &self.discriminator()?[stage];
        let real = &self.reals[stage];
        let noises = self.random_noises(stage, rng)?;
        let fake = self.generate(&noises, stage)?.detach();

        let score_fake = critic.forward(&fake, NormMode::Train)?.mean_all()?;
        let score_real = critic.forward(real, NormMode::Train)?.mean_all()?;
        let alpha = rng.uniform(&[1, 1, 1, 1], &self.model.device)?;
        let penalty = (gradient_penalty(critic, real, &fake, &alpha)? * self.model.config().train.gp_weight)?;

        let loss = ((score_fake - score_real)? + &penalty)?;
        optimizer.backward_step(&loss)?;
        Ok((loss.to_scalar::<f32>()? as f64, penalty.to_scalar::<f32>()? as f64))
    }

    /// One generator update; returns (adversarial loss, unweighted reconstruction MSE).
    fn generator_step(&self, stage: usize, rng: &mut SeededRng, optimizer: &mut AdamW) -> Result<(f64, f64)> {
        let critic = &self.discriminator()?[stage];
        let real = &self.reals[stage];
        let noises = self.random_noises(stage, rng)?;
        let fake = self.generate(&noises, stage)?;
        let recon = self.generate(&self.model.fixed_noises, stage)?;

        let adversarial = critic.forward(&fake, NormMode::Train)?.mean_all()?.neg()?;
        let recon_mse = (recon - real)?.sqr()?.mean_all()?;
        let loss = (&adversarial + (&recon_mse * self.model.config().train.recon_weight)?)?;
        optimizer.backward_step(&loss)?;
        Ok((adversarial.to_scalar::<f32>()? as f64, recon_mse.to_scalar::<f32>()? as f64))
    }

    /// `w_{s+1} = noise_weight_init × RMSE(nearest(recon_s → size_{s+1}), real_{s+1})`.
    fn next_noise_amplitude(&self, stage: usize) -> Result<f64> {
        let recon = self.generate(&self.model.fixed_noises, stage)?.detach();
        let next = &self.reals[stage + 1];
        let (h, w) = (next.dims()[2], next.dims()[3]);
        let upsampled = resize(&recon, h, w, ResizeKernel::Nearest)?;
        let mse = (upsampled - next)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
        Ok(self.model.config().train.noise_weight_init * mse.sqrt())
    }
}

/// Rejects an image whose pixels differ from those the model was trained on. A model without a stored
/// hash (written by an older pegan) is accepted with a warning, because the image cannot be checked.
fn check_same_image(model: &SinGanModel, image: &LoadedImage) -> Result<()> {
    let Some(stored) = &model.metadata.training_image_hash else {
        tracing::warn!(
            "the model does not record a hash of its training image (it was written by an older pegan), so \
             resuming cannot check that the image is the same one"
        );
        return Ok(());
    };
    let image_hash = image.pixel_hash();
    if *stored != image_hash {
        return Err(Error::invalid(format!(
            "the image's pixels (hash {image_hash}) differ from those the model was trained on (hash {stored}): \
             resume with the same image"
        )));
    }
    Ok(())
}

/// Builds the training pyramid of `image` as tensors.
fn build_reals(image: &LoadedImage, config: &SinGanConfig, device: &Device) -> Result<Vec<Tensor>> {
    let (bgr, height, width) = shrink_to_max_size(image, config);
    let pyramid = ScalePyramid::plan(height, width, &config.data)?;
    let levels = pyramid.build_levels(&bgr, height, width);
    pyramid.sizes.iter().zip(levels).map(|(&(h, w), level)| bgr_u8_to_tensor(&level, h, w, device)).collect()
}

/// Returns the image to build the pyramid from: the original, or with `resize_to_max_size` one whose long side is
/// at most `max_size` (rounded half up, bilinear as the pyramid levels).
fn shrink_to_max_size(image: &LoadedImage, config: &SinGanConfig) -> (Vec<u8>, usize, usize) {
    let max_size = config.data.max_size;
    let long_side = image.height.max(image.width);
    if !config.data.resize_to_max_size || long_side <= max_size {
        return (image.bgr.clone(), image.height, image.width);
    }
    let factor = max_size as f64 / long_side as f64;
    let scale = |len: usize| ((len as f64 * factor + 0.5).floor() as usize).max(1);
    let (height, width) = (scale(image.height), scale(image.width));
    let bgr = resize_linear_u8(&image.bgr, image.height, image.width, 3, height, width);
    (bgr, height, width)
}
