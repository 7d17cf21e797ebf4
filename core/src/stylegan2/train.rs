//! MS-PIE StyleGAN2 training, as MMGeneration's `MSPIEStyleGAN2.train_step`.
//!
//! Every iteration draws one chosen scale, resizes the real batch to that scale's side, then makes one
//! discriminator step (non-saturating logistic loss, plus the weighted R1 penalty every `r1_interval`
//! iterations) and one generator step (non-saturating loss, plus the weighted path-length penalty every
//! `pl_interval` iterations), and finally moves the EMA generator. The penalties are added to the same loss
//! and the same Adam step, unlike the official StyleGAN2 code, as in the reference.
//!
//! All randomness of iteration `t` (scale, latents, mixing, noise maps, path-length directions) comes from a
//! stream seeded by (seed, t), and the data order is a function of (seed, t) too, so a run resumed from a
//! checkpoint continues exactly as an uninterrupted one.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::alloc::MemoryLimit;
use crate::error::{Error, Result};
use crate::progress::Control;
use crate::resample::{resize, ResizeKernel};
use crate::rng::SeededRng;
use crate::stylegan2::dataset::{BatchLoader, ImageFolder};
use crate::stylegan2::discriminator::{DiscriminatorConfig, DiscriminatorKind};
use crate::stylegan2::generator::{Generator, Noise};
use crate::stylegan2::head::ChosenScale;
use crate::stylegan2::model::StyleGan2Model;
use crate::stylegan2::optim::{ema_update, Adam, AdamConfig, EMA_MOMENTUM};
use crate::stylegan2::r1::r1_penalty;
use crate::stylegan2::sample::block_widths;
use crate::stylegan2::scale::{MsPieScaleSampler, ScaleSampling};

/// Training hyper-parameters. Defaults are those of MMGeneration's StyleGAN2 configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    /// Images per iteration. The reference uses 3 per GPU on 8 GPUs; minibatch stddev needs N ≤ 4 or a
    /// multiple of 4.
    pub batch_size: usize,
    /// Iterations of a full run.
    pub total_iters: u64,
    /// Chosen scales drawn for training (`[0, 2, 4]` gives 256, 384 and 512 px at out_size 256).
    pub multi_input_scales: Vec<usize>,
    /// Probabilities the configs list for the scales; see [`ScaleSampling`] for how they are used.
    pub multi_scale_probability: Option<Vec<f64>>,
    /// Uniform (what the reference code does) or weighted (what its configs list).
    pub scale_sampling: ScaleSampling,
    /// Generator optimiser; its lazy interval is the path-length interval.
    pub g_optimizer: AdamConfig,
    /// Discriminator optimiser; its lazy interval is the R1 interval.
    pub d_optimizer: AdamConfig,
    /// Weight of the R1 penalty when it runs: `γ/2 · interval` = 10/2 · 16 = 80.
    pub r1_weight: f64,
    /// R1 runs at iterations divisible by this (16).
    pub r1_interval: u64,
    /// Weight of the path-length penalty when it runs: 2 · interval = 8.
    pub pl_weight: f64,
    /// The path-length penalty runs at iterations divisible by this (4); 0 disables it.
    pub pl_interval: u64,
    /// Decay of the running path-length mean (0.01).
    pub pl_decay: f64,
    /// The penalty's batch is `max(1, batch_size / pl_batch_shrink)` (2).
    pub pl_batch_shrink: usize,
    /// `false` (reference): the path-length penalty always runs at chosen scale 0; `true`: at the
    /// iteration's scale. The reference binds the drawn scale to a generator it never calls, so it probably
    /// intended `true`, but its released models were trained with `false`.
    pub pl_at_drawn_scale: bool,
    /// EMA momentum per iteration, 0.5^(32/10000).
    pub ema_momentum: f64,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            batch_size: 3,
            total_iters: 1_100_002,
            multi_input_scales: vec![0, 2, 4],
            multi_scale_probability: Some(vec![0.5, 0.25, 0.25]),
            scale_sampling: ScaleSampling::Uniform,
            g_optimizer: AdamConfig { lr: 0.002, betas: (0.0, 0.99), eps: 1e-8, lazy_interval: Some(4) },
            d_optimizer: AdamConfig { lr: 0.002, betas: (0.0, 0.99), eps: 1e-8, lazy_interval: Some(16) },
            r1_weight: 80.0,
            r1_interval: 16,
            pl_weight: 8.0,
            pl_interval: 4,
            pl_decay: 0.01,
            pl_batch_shrink: 2,
            pl_at_drawn_scale: false,
            ema_momentum: EMA_MOMENTUM,
        }
    }
}

/// Largest batch accepted; bounds the memory a typo can request.
pub const MAX_BATCH_SIZE: usize = 256;

impl TrainingConfig {
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(Error::invalid(format!(
                "batch size {} is out of range 1..={MAX_BATCH_SIZE}",
                self.batch_size
            )));
        }
        if self.batch_size > 4 && self.batch_size % 4 != 0 {
            return Err(Error::invalid(format!(
                "batch size {} does not suit minibatch stddev (groups of 4): use 1–4 or a multiple of 4",
                self.batch_size
            )));
        }
        if let Some(&too_large) = self.multi_input_scales.iter().find(|&&cs| cs > crate::stylegan2::head::MAX_CHOSEN_SCALE) {
            return Err(Error::invalid(format!(
                "training scale {too_large} in multi_input_scales is out of range: use 0..={}",
                crate::stylegan2::head::MAX_CHOSEN_SCALE
            )));
        }
        MsPieScaleSampler::new(
            &self.multi_input_scales,
            self.multi_scale_probability.as_deref(),
            self.scale_sampling,
        )?;
        self.g_optimizer.validate("generator")?;
        self.d_optimizer.validate("discriminator")?;
        for (name, value) in [("r1_weight", self.r1_weight), ("pl_weight", self.pl_weight), ("pl_decay", self.pl_decay)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Error::invalid(format!("{name} = {value} must be a finite value ≥ 0")));
            }
        }
        if self.r1_interval == 0 {
            return Err(Error::invalid("r1_interval must be at least 1 (set r1_weight to 0 to disable R1)"));
        }
        if self.pl_batch_shrink == 0 {
            return Err(Error::invalid("pl_batch_shrink must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.ema_momentum) {
            return Err(Error::invalid(format!("ema_momentum {} must lie in [0, 1)", self.ema_momentum)));
        }
        Ok(())
    }
}

/// One report from [`StyleGan2Trainer::train`], after every iteration.
#[derive(Debug, Clone, Serialize)]
pub struct StyleGan2Progress {
    /// Iterations finished so far, counted from 1 (the reference's runner iteration + 1).
    pub iteration: u64,
    /// Iteration at which this call stops.
    pub target_iteration: u64,
    /// Chosen scale of the iteration.
    pub chosen_scale: usize,
    /// Side of the images of the iteration, in pixels.
    pub side: usize,
    /// Discriminator loss, including the weighted R1 penalty when it ran.
    pub loss_d: f64,
    /// Generator loss, including the weighted path-length penalty when it ran.
    pub loss_g: f64,
    /// Unweighted R1 penalty, on iterations where it ran.
    pub r1: Option<f64>,
    /// Unweighted path-length penalty, on iterations where it ran.
    pub path_length_penalty: Option<f64>,
    /// Running path-length mean after the iteration.
    pub mean_path_length: f64,
    /// Seconds since this call started.
    pub elapsed_s: f64,
}

/// Result of [`StyleGan2Trainer::train`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainOutcome {
    /// The target iteration was reached.
    Finished,
    /// The callback cancelled. The model contains every finished iteration.
    Cancelled,
}

/// Trains a [`StyleGan2Model`] on a folder of images.
pub struct StyleGan2Trainer {
    model: StyleGan2Model,
    folder: ImageFolder,
    loader: Option<BatchLoader>,
    g_adam: Adam,
    d_adam: Adam,
    sampler: MsPieScaleSampler,
    /// Side the loader decodes to: the largest training side, so each batch is only ever downscaled.
    data_side: usize,
}

impl StyleGan2Trainer {
    /// Prepares training of `model` (new or resumed) on the images of `folder`, refusing a configuration whose
    /// [estimated memory](estimate_training_memory) exceeds [`MemoryLimit::default_for`] the device: the
    /// memory available on the CPU, or the environment variable `PEGAN_MEMORY_LIMIT_MIB`.
    pub fn new(model: StyleGan2Model, folder: ImageFolder) -> Result<Self> {
        let limit = MemoryLimit::default_for(&model.device)?;
        Self::checked(model, folder, limit)
    }

    /// As [`StyleGan2Trainer::new`] with an explicit limit in bytes for the estimated peak memory of an
    /// iteration; `None` skips the check.
    pub fn with_memory_limit(model: StyleGan2Model, folder: ImageFolder, limit: Option<u64>) -> Result<Self> {
        Self::checked(model, folder, limit.map(MemoryLimit::Set))
    }

    fn checked(model: StyleGan2Model, folder: ImageFolder, limit: Option<MemoryLimit>) -> Result<Self> {
        let training = &model.metadata.config.training;
        training.validate()?;
        if model.discriminator.is_none() {
            return Err(Error::invalid(
                "the model has no discriminator (a generator-only file), so it cannot be trained",
            ));
        }
        let sampler = MsPieScaleSampler::new(
            &training.multi_input_scales,
            training.multi_scale_probability.as_deref(),
            training.scale_sampling,
        )?;

        // Reject a batch or training side the discriminator cannot take now, not at the iteration that first
        // draws it. The trainer resizes the images itself, so the fixes name the configuration.
        let (discriminator, _) = model.discriminator.as_ref().expect("checked above");
        discriminator.check_batch(training.batch_size)?;
        let d_config = discriminator.config();
        let mut data_side = 0;
        for &cs in &training.multi_input_scales {
            let (side, _) = model.generator.output_size(ChosenScale::from(cs))?;
            if discriminator.check_sides(side, side).is_err() {
                let start = format!("training scale {cs} makes {side}×{side} px images, but the");
                let in_size = d_config.in_size;
                return Err(Error::invalid(match d_config.kind {
                    DiscriminatorKind::MsPie => format!(
                        "{start} MS-PIE discriminator with in_size {in_size} needs sides that are multiples of {}: \
                         remove {cs} from training.multi_input_scales, or lower discriminator.in_size",
                        d_config.downsampling_factor()
                    ),
                    DiscriminatorKind::Baseline => format!(
                        "{start} baseline discriminator scores only {in_size}×{in_size} px: train only at the scale \
                         whose side is {in_size} px, set discriminator.in_size to {side}, or use the MS-PIE \
                         discriminator (\"kind\": \"mspie\")"
                    ),
                }));
            }
            data_side = data_side.max(side);
        }

        let needed = estimate_training_memory(&model)?;
        tracing::info!(needed_mib = needed >> 20, limit_mib = limit.map(|l| l.bytes() >> 20), "training memory estimate");
        if let Some(limit) = limit.filter(|limit| needed > limit.bytes()) {
            let scales = if training.multi_input_scales.len() > 1 {
                "remove the largest scales from training.multi_input_scales, "
            } else {
                ""
            };
            return Err(Error::too_large(format!(
                "training at {data_side}×{data_side} px with batch size {} needs about {} MiB of memory, more \
                 than {}: lower training.batch_size, {scales}or train on a GPU",
                training.batch_size,
                needed >> 20,
                limit.describe()
            )));
        }

        let mut g_adam = Adam::new(&model.generator_params, training.g_optimizer)?;
        let d_params = &model.discriminator.as_ref().expect("checked above").1;
        let mut d_adam = Adam::new(d_params, training.d_optimizer)?;
        if let Some(state) = &model.optimizer_state {
            g_adam.restore(&state.tensors, "optimizer.generator.", state.generator_steps)?;
            d_adam.restore(&state.tensors, "optimizer.discriminator.", state.discriminator_steps)?;
        } else if model.metadata.iteration > 0 {
            tracing::warn!(
                iteration = model.metadata.iteration,
                "the model carries no optimiser state; Adam restarts from zero moments"
            );
        }
        Ok(StyleGan2Trainer { model, folder, loader: None, g_adam, d_adam, sampler, data_side })
    }

    pub fn model(&self) -> &StyleGan2Model {
        &self.model
    }

    /// Stores the optimiser state in the model and returns it, ready to save as a resumable checkpoint.
    pub fn checkpoint(&mut self) -> Result<&StyleGan2Model> {
        let (mut tensors, generator_steps) = self.g_adam.state("optimizer.generator.")?;
        let (d_tensors, discriminator_steps) = self.d_adam.state("optimizer.discriminator.")?;
        tensors.extend(d_tensors);
        self.model.set_optimizer_state(tensors, generator_steps, discriminator_steps);
        Ok(&self.model)
    }

    pub fn into_model(mut self) -> Result<StyleGan2Model> {
        self.checkpoint()?;
        Ok(self.model)
    }

    /// Trains until `target_iteration` iterations have finished in total.
    ///
    /// `on_iteration` runs after every iteration with the trainer (to save checkpoints or sample grids) and
    /// the report; it may cancel, and an error from it stops training.
    pub fn train(
        &mut self,
        target_iteration: u64,
        on_iteration: &mut dyn FnMut(&mut StyleGan2Trainer, &StyleGan2Progress) -> Result<Control>,
    ) -> Result<TrainOutcome> {
        let started = Instant::now();
        while self.model.metadata.iteration < target_iteration {
            let mut report = self.run_iteration()?;
            report.target_iteration = target_iteration;
            report.elapsed_s = started.elapsed().as_secs_f64();
            if on_iteration(self, &report)? == Control::Cancel {
                return Ok(TrainOutcome::Cancelled);
            }
        }
        Ok(TrainOutcome::Finished)
    }

    /// Runs one iteration (the model's next) and returns its report.
    pub fn run_iteration(&mut self) -> Result<StyleGan2Progress> {
        let t = self.model.metadata.iteration;
        let training = self.model.metadata.config.training.clone();
        let seed = self.model.metadata.seed.unwrap_or(0);
        let mut rng = SeededRng::new(iteration_seed(seed, t));
        let device = self.model.device.clone();

        let cs = self.sampler.draw(&mut rng);
        let scale = ChosenScale::from(cs);
        let (side, side_w) = self.model.generator.output_size(scale)?;
        debug_assert_eq!(side, side_w);
        let reals = self.next_real_batch(t, &device)?;
        let reals = if reals.dim(2)? == side {
            reals
        } else {
            resize(&reals, side, side, ResizeKernel::Bilinear { align_corners: true })?
        };
        let n = training.batch_size;
        let (discriminator, _) = self.model.discriminator.as_ref().expect("checked in new");

        // Discriminator step: logistic loss on detached fakes and on reals, plus R1 on the reals.
        let fakes = training_sample(&self.model.generator, n, scale, &mut rng)?.0.detach();
        let fake_logits = discriminator.forward(&fakes)?;
        let real_logits = discriminator.forward(&reals)?;
        let mut loss_d = (softplus(&fake_logits)?.mean_all()? + softplus(&real_logits.neg()?)?.mean_all()?)?;
        let mut r1_value = None;
        if t % training.r1_interval == 0 && training.r1_weight > 0.0 {
            let r1 = r1_penalty(discriminator, &reals)?;
            r1_value = Some(r1.to_dtype(DType::F64)?.to_scalar::<f64>()?);
            loss_d = (loss_d + (r1 * training.r1_weight)?)?;
        }
        let loss_d_value = scalar(&loss_d)?;
        check_finite("discriminator loss", loss_d_value, t)?;
        let grads = loss_d.backward()?;
        self.d_adam.step(&grads)?;
        drop(grads);

        // Generator step: fresh latents and noise, non-saturating loss, plus path length.
        let (fakes, _) = training_sample(&self.model.generator, n, scale, &mut rng)?;
        let mut loss_g = softplus(&discriminator.forward(&fakes)?.neg()?)?.mean_all()?;
        let mut pl_value = None;
        if training.pl_interval > 0 && t % training.pl_interval == 0 && training.pl_weight > 0.0 {
            let pl_scale = if training.pl_at_drawn_scale { scale } else { ChosenScale::from(0) };
            let pl_batch = (n / training.pl_batch_shrink).max(1);
            let (penalty, new_mean) = path_length_penalty(
                &self.model.generator,
                pl_batch,
                pl_scale,
                self.model.mean_path_length,
                training.pl_decay,
                &mut rng,
            )?;
            pl_value = Some(scalar(&penalty)?);
            self.model.mean_path_length = new_mean;
            loss_g = (loss_g + (penalty * training.pl_weight)?)?;
        }
        let loss_g_value = scalar(&loss_g)?;
        check_finite("generator loss", loss_g_value, t)?;
        let grads = loss_g.backward()?;
        self.g_adam.step(&grads)?;
        drop(grads);

        // EMA of the generator's parameters; its buffers follow the trained generator's.
        ema_update(&self.model.generator_ema_params, &self.model.generator_params, training.ema_momentum)?;

        self.model.metadata.iteration = t + 1;
        Ok(StyleGan2Progress {
            iteration: t + 1,
            target_iteration: t + 1,
            chosen_scale: cs,
            side,
            loss_d: loss_d_value,
            loss_g: loss_g_value,
            r1: r1_value,
            path_length_penalty: pl_value,
            mean_path_length: self.model.mean_path_length,
            elapsed_s: 0.0,
        })
    }

    fn next_real_batch(&mut self, t: u64, device: &Device) -> Result<Tensor> {
        let restart = self.loader.as_ref().is_none_or(|l| l.next_iteration() != t);
        if restart {
            let training = &self.model.metadata.config.training;
            self.loader = Some(BatchLoader::spawn(
                self.folder.clone(),
                self.data_side,
                training.batch_size,
                self.model.metadata.seed.unwrap_or(0),
                t,
            )?);
        }
        let batch = self.loader.as_mut().expect("started above").next_batch()?;
        Ok(batch.to_device(device)?)
    }
}

/// Feature-map values of one sample through the generator at `scale`: each style conv's input and output and
/// the three maps after it (noise, bias and activation), as [`estimate_memory`](super::sample::estimate_memory)
/// counts them for one layer.
fn generator_feature_values(generator: &Generator, scale: ChosenScale) -> Result<u64> {
    let mut values = 0u64;
    for (l, &(h, w)) in generator.noise_shapes(scale)?.iter().enumerate() {
        let (c_in, c_out) = block_widths(generator.config(), l);
        values += (h * w) as u64 * (c_in + 3 * c_out + 6);
    }
    Ok(values)
}

/// Values of one sample's modulated 3×3 kernels, summed over the style convs: each sample has its own
/// `c_out × c_in × 3 × 3` kernel, which dominates at 512 channels and small sides.
fn generator_kernel_values(generator: &Generator) -> u64 {
    let config = generator.config();
    let mut values = (config.head_channels() * config.channels.width(4) * 9) as u64;
    for b in 0..config.num_blocks() {
        let resolution = 8 << b;
        let c_in = config.channels.width(resolution / 2) as u64;
        let c_out = config.channels.width(resolution) as u64;
        values += 9 * c_out * (c_in + c_out);
    }
    values
}

/// Feature-map values of one `side × side` sample through the discriminator: the image and `convs.0`, then
/// per ResBlock its input, `conv1`, the blurred copy `conv2` reads, and the half-side output and skip.
fn discriminator_feature_values(config: &DiscriminatorConfig, side: usize) -> u64 {
    let mut side = side as u64;
    let mut values = side * side * (3 + config.channels.width(config.in_size) as u64);
    let mut resolution = config.in_size;
    for _ in 0..config.num_blocks() {
        let c = config.channels.width(resolution) as u64;
        let c_next = config.channels.width(resolution / 2) as u64;
        values += side * side * 3 * c + (side / 2) * (side / 2) * 2 * c_next;
        side /= 2;
        resolution /= 2;
    }
    values + side * side * 2 * config.channels.width(4) as u64
}

/// Estimated peak memory, in bytes, of a training iteration at the largest training side with both
/// penalties: the autograd graphs of the generator and discriminator passes, R1's second-order pass and
/// the path-length pass, plus the parameters, their EMA copy, Adam's two moments and the gradients.
///
/// NOTE: the factor on the feature maps was fitted to peak resident sizes of CPU runs at 32 to 256 px
/// ([`TRAINING_FEATURE_FACTOR`]); GPU memory, with its caching allocators, was not measured.
pub fn estimate_training_memory(model: &StyleGan2Model) -> Result<u64> {
    let training = &model.metadata.config.training;
    let (discriminator, d_params) = model
        .discriminator
        .as_ref()
        .ok_or_else(|| Error::invalid("the model has no discriminator, so it cannot be trained"))?;
    let n = training.batch_size as u64;
    let mut features = 0u64;
    for &cs in &training.multi_input_scales {
        let scale = ChosenScale::from(cs);
        let (side, _) = model.generator.output_size(scale)?;
        let values = generator_feature_values(&model.generator, scale)?
            + discriminator_feature_values(discriminator.config(), side);
        features = features.max(values);
    }
    let kernels = generator_kernel_values(&model.generator);
    let parameters = 5 * model.generator_params.num_elements() as u64 + 4 * d_params.num_elements() as u64;
    tracing::debug!(features, kernels, parameters, n, "training memory estimate inputs");
    let values = n * (TRAINING_FEATURE_FACTOR * features + TRAINING_KERNEL_FACTOR * kernels) + parameters;
    Ok(4 * values + PROCESS_BASE_BYTES)
}

/// f32 values of working memory per feature-map value and sample. Peak resident sizes measured on the CPU
/// were 77 to 83 bytes (19 to 21 values) from 32 to 256 px and batch sizes 4 and 8; 22 leaves a margin.
const TRAINING_FEATURE_FACTOR: u64 = 22;

/// f32 values of working memory per modulated-kernel value and sample: the modulated and demodulated
/// kernels of the forward pass, the path-length pass and their gradients. Fitted to config-f's channel
/// widths at 64 px (batch 2: 8.05 GB measured, 8.6 GB estimated).
const TRAINING_KERNEL_FACTOR: u64 = 10;

/// Memory of the process apart from the iteration: code, the data loader's decoded batches, allocator slack.
const PROCESS_BASE_BYTES: u64 = 128 << 20;

/// Seed of iteration `t`'s random stream.
fn iteration_seed(seed: u64, t: u64) -> u64 {
    let mut rng = SeededRng::new(seed ^ t.wrapping_mul(0xD1B5_4A32_D192_ED03));
    rng.next_u64()
}

/// `softplus(x) = max(x, 0) + log(1 + exp(−|x|))`, stable for large |x|.
fn softplus(x: &Tensor) -> Result<Tensor> {
    Ok((x.relu()? + ((x.abs()?.neg()?.exp()? + 1.0)?.log()?))?)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn check_finite(what: &str, value: f64, t: u64) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "the {what} became {value} at iteration {t}: training diverged; lower the learning rates or resume from an earlier checkpoint"
        )))
    }
}

/// Samples a training batch as the reference's default sampler in training mode: fresh `z`, style mixing
/// with the generator's `mix_prob` at a uniform index 1 … L−1, fresh noise per sample. Returns the images
/// and the W+ latent.
pub fn training_sample(
    generator: &Generator,
    n: usize,
    scale: ChosenScale,
    rng: &mut SeededRng,
) -> Result<(Tensor, Tensor)> {
    let latent = generator.sample_training_latent(n, rng)?.latent;
    let images = generator.synthesize(&latent, scale, Noise::Random(rng))?;
    Ok((images, latent))
}

/// Computes the path-length penalty and the new running mean.
///
/// `g = ∂Σ(img·y)/∂latent` with `y ~ N(0, 1)/√(H·W)`; `ℓ_i = √(mean over the L rows of Σ_C g²)`;
/// `μ' = μ + decay·(mean ℓ − μ)`; penalty `mean (ℓ_i − μ')²`, differentiable through `g` (the generator's
/// explicit backward pass) and through `μ'`.
pub fn path_length_penalty(
    generator: &Generator,
    n: usize,
    scale: ChosenScale,
    mean_path_length: f64,
    decay: f64,
    rng: &mut SeededRng,
) -> Result<(Tensor, f64)> {
    let latent = generator.sample_training_latent(n, rng)?.latent;
    let (images, trace) = generator.synthesize_traced(&latent, scale, Noise::Random(rng))?;
    let (_, _, h, w) = images.dims4()?;
    let directions = rng.normal(images.dims(), 0.0, 1.0, images.device())?;
    let directions = (directions / ((h * w) as f64).sqrt())?.to_dtype(images.dtype())?;

    let g = generator.latent_grad(&trace, &directions)?;
    let lengths = g.sqr()?.sum(D::Minus1)?.mean(1)?.sqrt()?;
    let mean_now = lengths.mean_all()?;
    let new_mean = ((mean_now - mean_path_length)? * decay)? + mean_path_length;
    let new_mean = new_mean?;
    let penalty = lengths.broadcast_sub(&new_mean)?.sqr()?.mean_all()?;
    Ok((penalty, scalar(&new_mean)?))
}
