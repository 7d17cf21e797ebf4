//! Random samples, reconstruction, retargeting and injection from a trained SinGAN.
//!
//! Retargeting scales every stage of the pyramid by the ratio of the requested size to the trained
//! size, `H_s' = round(H_s · r_v)`, `W_s' = round(W_s · r_h)`, and the finest stage gets exactly the
//! requested size. The reference has no helper for this; the rule mirrors how the pyramid was built.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::layers::NormMode;
use crate::resample::resize;
use crate::rng::SeededRng;
use crate::singan::generator::{StageStart, STAGE_UPSAMPLER};
use crate::singan::model::SinGanModel;

/// Size of the generated image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutputSize {
    /// The size of the training image.
    Trained,
    /// An exact size in pixels.
    Pixels { width: usize, height: usize },
    /// Multiples of the trained width and height (1.0 = trained size).
    Factors { width: f64, height: f64 },
}

/// Noise that drives the stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseMode {
    /// Fresh Gaussian noise at every stage, from the request's seed.
    Random,
    /// The stored reconstruction noise: reproduces the training image (trained size only).
    Reconstruction,
}

/// Largest side accepted for an output image, in pixels.
pub const MAX_SIDE: usize = 65_536;

/// A generation request.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    pub size: OutputSize,
    pub mode: NoiseMode,
    /// Seed of the random noise; sample `i` of a batch uses a stream derived from `(seed, i)`.
    pub seed: u64,
    /// First stage that gets random noise. Stages before it reproduce the training image
    /// (SinGAN's "generation from a start scale").
    pub start_stage: usize,
    /// Image injected at `start_stage` instead of the reconstruction: (1, 3, H, W), BGR, in [-1, 1],
    /// any size (it is resized to the stage size).
    pub start_image: Option<Tensor>,
    /// Upper bound for the estimated working memory; larger requests fail before allocating.
    pub memory_limit_bytes: u64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            size: OutputSize::Trained,
            mode: NoiseMode::Random,
            seed: 0,
            start_stage: 0,
            start_image: None,
            memory_limit_bytes: 8 << 30,
        }
    }
}

impl SinGanModel {
    /// Stage sizes for an output of `width × height` pixels.
    pub fn retarget_stage_sizes(&self, width: usize, height: usize) -> Result<Vec<(usize, usize)>> {
        if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(Error::invalid(format!(
                "output size {width}×{height} is out of range: width and height must be between 1 and {MAX_SIDE} pixels"
            )));
        }
        let trained = self.stage_sizes();
        let &(top_h, top_w) = trained.last().expect("a model has stages");
        let ratio_v = height as f64 / top_h as f64;
        let ratio_h = width as f64 / top_w as f64;
        let last = trained.len() - 1;
        Ok(trained
            .iter()
            .enumerate()
            .map(|(stage, &(h, w))| {
                if stage == last {
                    (height, width)
                } else {
                    // Round half up, as the pyramid does; never below one pixel.
                    let scale = |len: usize, ratio: f64| ((len as f64 * ratio + 0.5).floor() as usize).max(1);
                    (scale(h, ratio_v), scale(w, ratio_h))
                }
            })
            .collect())
    }

    /// Resolves a requested [`OutputSize`] to (height, width) per stage.
    pub fn stage_sizes_for(&self, size: OutputSize) -> Result<Vec<(usize, usize)>> {
        let &(top_h, top_w) = self.stage_sizes().last().expect("a model has stages");
        match size {
            OutputSize::Trained => Ok(self.stage_sizes()),
            OutputSize::Pixels { width, height } => self.retarget_stage_sizes(width, height),
            OutputSize::Factors { width, height } => {
                for (name, factor) in [("width", width), ("height", height)] {
                    if !factor.is_finite() || factor <= 0.0 {
                        return Err(Error::invalid(format!(
                            "{name} factor {factor} is invalid: use a positive number such as 0.5 or 2"
                        )));
                    }
                }
                let pixels = |len: usize, f: f64| (len as f64 * f + 0.5).floor();
                let (w, h) = (pixels(top_w, width), pixels(top_h, height));
                if w < 1.0 || h < 1.0 || w > MAX_SIDE as f64 || h > MAX_SIDE as f64 {
                    return Err(Error::invalid(format!(
                        "factors {width}×{height} give a {w}×{h} image: the result must be 1 to {MAX_SIDE} pixels per side"
                    )));
                }
                self.retarget_stage_sizes(w as usize, h as usize)
            }
        }
    }

    /// Estimated peak working memory, in bytes, of a forward pass over `stage_sizes`.
    pub fn estimate_memory(&self, stage_sizes: &[(usize, usize)]) -> u64 {
        let pad = (2 * self.config().head_padding()) as u64;
        stage_sizes
            .iter()
            .enumerate()
            .map(|(stage, &(h, w))| {
                let channels = self.config().generator_channels(stage) as u64;
                let pixels = (h as u64 + pad).saturating_mul(w as u64 + pad);
                // About eight feature maps of 4-byte floats are alive at once inside a block.
                pixels.saturating_mul(channels).saturating_mul(4 * 8)
            })
            .max()
            .unwrap_or(0)
    }

    /// Generates one image, (1, 3, H, W), BGR, in about [-1, 1] (no clamp, as the reference).
    ///
    /// `index` selects the sample of a batch: sample `i` depends only on `(seed, i)`.
    pub fn sample(&self, options: &SampleOptions, index: u64) -> Result<Tensor> {
        self.sample_cancellable(options, index, &|| false)
    }

    /// Generates one image like [`Self::sample`], calling `should_stop` before each pyramid stage.
    ///
    /// When `should_stop` returns true, the remaining stages are skipped and the call returns
    /// [`Error::Cancelled`]. A call that is not stopped returns the same pixels as [`Self::sample`].
    pub fn sample_cancellable(
        &self,
        options: &SampleOptions,
        index: u64,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        let finished = self.metadata.finished_stages;
        let num_stages = self.num_stages();
        if finished < num_stages {
            let done = match finished {
                0 => "no stage".to_string(),
                1 => "only stage 0".to_string(),
                n => format!("stages 0 to {}", n - 1),
            };
            return Err(Error::invalid(format!(
                "the model finished training {done} of its {num_stages} stages (0 to {}): resume training \
                 (`pegan singan train --resume`) before sampling",
                num_stages - 1
            )));
        }
        let last = num_stages - 1;
        if options.start_stage > last {
            return Err(Error::invalid(format!(
                "start stage {} does not exist: the model has stages 0 to {last}",
                options.start_stage
            )));
        }

        let sizes = self.stage_sizes_for(options.size)?;
        let estimate = self.estimate_memory(&sizes);
        if estimate > options.memory_limit_bytes {
            let &(h, w) = sizes.last().expect("non-empty");
            return Err(Error::invalid(format!(
                "a {w}×{h} output needs about {} MiB of working memory, over the limit of {} MiB: request a smaller size",
                estimate >> 20,
                options.memory_limit_bytes >> 20
            )));
        }

        let device = &self.device;
        match options.mode {
            NoiseMode::Reconstruction => {
                if sizes != self.stage_sizes() || options.start_stage != 0 || options.start_image.is_some() {
                    return Err(Error::invalid(
                        "reconstruction works only at the trained size, from stage 0, without a start image",
                    ));
                }
                let start = StageStart { stage: 0, previous: None };
                self.forward_stages(&self.fixed_noises, &sizes, start, last, should_stop)
            }
            NoiseMode::Random => {
                let mut rng = SeededRng::new(options.seed.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
                let pad = self.config().noise_padding();
                let mut noises = Vec::with_capacity(num_stages);
                for (stage, &(h, w)) in sizes.iter().enumerate() {
                    let shape = [1, self.config().noise_channels(stage), h + 2 * pad, w + 2 * pad];
                    noises.push(rng.normal(&shape, 0.0, 1.0, device)?);
                }

                let start = self.start_for(options, &sizes, should_stop)?;
                self.forward_stages(&noises, &sizes, start, last, should_stop)
            }
        }
    }

    /// Runs stages `start.stage ..= last` one generator call at a time and returns the output of
    /// `last`, or [`Error::Cancelled`] when `should_stop` returns true before a stage.
    ///
    /// Between two calls the output is resized to the next stage size with [`STAGE_UPSAMPLER`], as
    /// the generator does between the stages of one call, so the result is the same tensor.
    fn forward_stages(
        &self,
        noises: &[Tensor],
        sizes: &[(usize, usize)],
        start: StageStart,
        last: usize,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        let mut previous = start.previous;
        let mut output = None;
        for stage in start.stage..=last {
            if should_stop() {
                return Err(Error::Cancelled);
            }
            let stage_start = StageStart { stage, previous: previous.take() };
            let outputs = self.generator.forward(
                noises,
                &self.metadata.noise_weights,
                sizes,
                &stage_start,
                stage,
                NormMode::Eval,
                None,
            )?;
            let image = outputs.into_iter().next_back().expect("one output per stage");
            if stage < last {
                let (h, w) = sizes[stage + 1];
                previous = Some(resize(&image, h, w, STAGE_UPSAMPLER)?);
            }
            output = Some(image);
        }
        output.ok_or_else(|| Error::invalid(format!("no stage runs from stage {} to stage {last}", start.stage)))
    }

    /// Builds the image entering `options.start_stage`: the injected image, or the reconstruction of the
    /// earlier stages at the trained size, resized to the requested stage size.
    fn start_for(
        &self,
        options: &SampleOptions,
        sizes: &[(usize, usize)],
        should_stop: &dyn Fn() -> bool,
    ) -> Result<StageStart> {
        let stage = options.start_stage;
        let (h, w) = sizes[stage];
        if let Some(image) = &options.start_image {
            let (n, c, ih, iw) = image.dims4()?;
            if n != 1 || c != 3 || ih == 0 || iw == 0 {
                return Err(Error::invalid(format!(
                    "start image must have shape (1, 3, H, W), got {:?}",
                    image.dims()
                )));
            }
            let resized = resize(&image.to_device(&self.device)?, h, w, STAGE_UPSAMPLER)?;
            return Ok(StageStart { stage, previous: Some(resized) });
        }
        if stage == 0 {
            return Ok(StageStart { stage: 0, previous: None });
        }

        let trained = self.stage_sizes();
        let start = StageStart { stage: 0, previous: None };
        let coarse = self.forward_stages(&self.fixed_noises, &trained, start, stage - 1, should_stop)?;
        Ok(StageStart { stage, previous: Some(resize(&coarse, h, w, STAGE_UPSAMPLER)?) })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use candle_core::Device;

    use super::*;
    use crate::singan::config::{Preset, SinGanConfig, Variant};

    /// Builds an untrained tiny CSG model with three finished stages.
    fn three_stage_model() -> SinGanModel {
        let config = SinGanConfig::preset(Variant::Csg, Preset::Tiny).unwrap();
        let sizes = [(9, 12), (12, 16), (15, 20)];
        let mut model = SinGanModel::new(&config, &sizes, (15, 20), 3, &Device::Cpu).unwrap();
        model.metadata.noise_weights = vec![1.0, 0.5, 0.25];
        model.metadata.finished_stages = sizes.len();
        model
    }

    /// Returns a stop check that counts its calls and returns true from call `stop_at` on.
    fn counting_stop(calls: &Cell<usize>, stop_at: usize) -> impl Fn() -> bool + '_ {
        move || {
            calls.set(calls.get() + 1);
            calls.get() >= stop_at
        }
    }

    #[test]
    fn stop_check_runs_once_per_stage() {
        let model = three_stage_model();
        for start_stage in [0, 2] {
            let options = SampleOptions { seed: 4, start_stage, ..SampleOptions::default() };
            let calls = Cell::new(0);
            model.sample_cancellable(&options, 0, &counting_stop(&calls, usize::MAX)).unwrap();
            assert_eq!(calls.get(), 3, "start stage {start_stage}");
        }
    }

    #[test]
    fn stop_check_cancels_between_stages() {
        let model = three_stage_model();
        let options = SampleOptions { seed: 4, ..SampleOptions::default() };
        for stop_at in 1..=3 {
            let calls = Cell::new(0);
            let result = model.sample_cancellable(&options, 0, &counting_stop(&calls, stop_at));
            assert!(matches!(result, Err(Error::Cancelled)), "stop at call {stop_at}: {result:?}");
            assert_eq!(calls.get(), stop_at, "no stage runs after the check that stopped");
        }

        let reconstruction = SampleOptions { mode: NoiseMode::Reconstruction, ..SampleOptions::default() };
        let calls = Cell::new(0);
        let result = model.sample_cancellable(&reconstruction, 0, &counting_stop(&calls, 2));
        assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn stage_by_stage_equals_one_forward_pass() {
        let model = three_stage_model();
        let sizes = model.stage_sizes();
        let options = SampleOptions { seed: 9, ..SampleOptions::default() };
        let sampled = model.sample(&options, 0).unwrap();

        // The noise of sample 0 of seed 9, drawn as `sample` draws it, through one generator call.
        let mut rng = SeededRng::new(9);
        let pad = model.config().noise_padding();
        let noises: Vec<Tensor> = sizes
            .iter()
            .enumerate()
            .map(|(stage, &(h, w))| {
                let shape = [1, model.config().noise_channels(stage), h + 2 * pad, w + 2 * pad];
                rng.normal(&shape, 0.0, 1.0, &Device::Cpu).unwrap()
            })
            .collect();
        let start = StageStart { stage: 0, previous: None };
        let outputs = model
            .generator
            .forward(&noises, &model.metadata.noise_weights, &sizes, &start, 2, NormMode::Eval, None)
            .unwrap();
        let expected = outputs.last().unwrap();

        let difference = (&sampled - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(difference, 0.0);
    }
}
