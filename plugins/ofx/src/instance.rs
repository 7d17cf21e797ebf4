//! One effect instance: its parameters, its cached model and image, and the actions that use them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openfx_sys as ofx;
use openfx_sys::OfxRectD;
use pegan_core::singan::NoiseMode;

use crate::describe::{param, size_mode, EffectKind, SizeMode};
use crate::generate::{
    file_stamp, generate, scaled_side, Canvas, GenerateRequest, LoadedModel, Model, ModelFamily, SinGanRequest,
};
use crate::host::{Clip, Effect, OfxError, OfxResult, Param, ParamSet, Props, STAT_ERR_VALUE};
use crate::pixels::{write_window, Components, Depth, ImageTarget};
use crate::stylegan2::{chosen_scale, noise_mode, Interpolation, StyleGan2Request};

/// Handles of the parameters, looked up once; the host keeps them valid for the instance's lifetime.
/// Parameters that an effect lacks are `None`.
struct Params {
    model_file: Param,
    size_mode: Param,
    width: Param,
    height: Param,
    seed: Param,
    /// SinGAN effects.
    width_factor: Option<Param>,
    height_factor: Option<Param>,
    /// SinGAN Retarget.
    start_stage: Option<Param>,
    /// SinGAN Sample and StyleGAN2 Sample, with different options.
    noise_mode: Option<Param>,
    /// StyleGAN2 Sample.
    truncation: Option<Param>,
    interpolation_seed: Option<Param>,
    interpolation: Option<Param>,
}

impl Params {
    fn look_up(kind: EffectKind, set: ParamSet) -> OfxResult<Params> {
        let optional = |name: &'static [u8], present: bool| present.then(|| set.handle(name)).transpose();
        let singan = kind.family() == ModelFamily::SinGan;
        let stylegan2 = kind.family() == ModelFamily::StyleGan2;
        Ok(Params {
            model_file: set.handle(param::MODEL_FILE)?,
            size_mode: set.handle(param::SIZE_MODE)?,
            width: set.handle(param::WIDTH)?,
            height: set.handle(param::HEIGHT)?,
            seed: set.handle(param::SEED)?,
            width_factor: optional(param::WIDTH_FACTOR, singan)?,
            height_factor: optional(param::HEIGHT_FACTOR, singan)?,
            start_stage: optional(param::START_STAGE, kind == EffectKind::Retarget)?,
            noise_mode: optional(param::NOISE_MODE, !kind.noise_modes().is_empty())?,
            truncation: optional(param::TRUNCATION, stylegan2)?,
            interpolation_seed: optional(param::INTERPOLATION_SEED, stylegan2)?,
            interpolation: optional(param::INTERPOLATION, stylegan2)?,
        })
    }

    /// Returns the parameters whose animation changes the image from frame to frame.
    fn animatable(&self) -> impl Iterator<Item = &Param> {
        [Some(&self.seed), self.truncation.as_ref(), self.interpolation_seed.as_ref(), self.interpolation.as_ref()]
            .into_iter()
            .flatten()
    }
}

/// Reads an optional parameter at `time`, or returns `default` when the effect lacks it.
fn int_or(param: &Option<Param>, time: f64, default: i32) -> OfxResult<i32> {
    param.as_ref().map_or(Ok(default), |param| param.int_at(time))
}

fn double_or(param: &Option<Param>, time: f64, default: f64) -> OfxResult<f64> {
    param.as_ref().map_or(Ok(default), |param| param.double_at(time))
}

/// Parameter values at one time, before the size is resolved against the model. Values of
/// parameters that the effect lacks are their defaults.
struct Settings {
    model_path: PathBuf,
    size_mode: SizeMode,
    factors: (f64, f64),
    pixels: (i32, i32),
    seed: i32,
    start_stage: i32,
    noise_index: i32,
    truncation: f64,
    interpolation_seed: i32,
    interpolation: f64,
}

/// The model of the current model file and the last generated image, shared by all renders.
#[derive(Default)]
struct Cache {
    model: Option<LoadedModel>,
    image: Option<(PathBuf, GenerateRequest, Arc<Canvas>)>,
    /// The last error shown through a version 1 message suite, so that it is not shown again.
    last_error: Option<String>,
}

/// The data of one instance, stored in its `kOfxPropInstanceData` property.
pub struct Instance {
    kind: EffectKind,
    params: Params,
    output: Clip,
    source: Option<Clip>,
    cache: Mutex<Cache>,
}

// SAFETY: the clip and parameter handles are opaque tokens that the host keeps valid for the
// instance's lifetime and allows on render threads. The mutable state is in a Mutex.
unsafe impl Send for Instance {}
unsafe impl Sync for Instance {}

impl Instance {
    /// Looks up the clips and parameters (the create-instance action).
    pub fn create(kind: EffectKind, effect: Effect) -> OfxResult<Box<Instance>> {
        let params = Params::look_up(kind, ParamSet { handle: effect.param_set()?, suites: effect.suites })?;
        let output = effect
            .clip(ofx::kOfxImageEffectOutputClipName)?
            .ok_or_else(|| OfxError::new(STAT_ERR_VALUE, "the instance has no Output clip"))?;
        let source = match kind {
            EffectKind::Retarget => effect.clip(ofx::kOfxImageEffectSimpleSourceClipName)?,
            EffectKind::Sample | EffectKind::StyleGan2Sample => None,
        };
        Ok(Box::new(Instance { kind, params, output, source, cache: Mutex::new(Cache::default()) }))
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // A panic while the lock was held left at worst a stale cache, which is cleared.
        self.cache.lock().unwrap_or_else(|poisoned| {
            let mut cache = poisoned.into_inner();
            *cache = Cache::default();
            cache
        })
    }

    /// Frees the model and the generated image (the purge-caches action).
    pub fn purge_caches(&self) {
        *self.cache() = Cache::default();
    }

    fn settings(&self, time: f64) -> OfxResult<Settings> {
        let params = &self.params;
        Ok(Settings {
            model_path: PathBuf::from(params.model_file.string_at(time)?),
            size_mode: size_mode(self.kind, params.size_mode.int_at(time)?)?,
            factors: (double_or(&params.width_factor, time, 1.0)?, double_or(&params.height_factor, time, 1.0)?),
            pixels: (params.width.int_at(time)?, params.height.int_at(time)?),
            seed: params.seed.int_at(time)?,
            start_stage: int_or(&params.start_stage, time, 0)?,
            noise_index: int_or(&params.noise_mode, time, 0)?,
            truncation: double_or(&params.truncation, time, 1.0)?,
            interpolation_seed: int_or(&params.interpolation_seed, time, 0)?,
            interpolation: double_or(&params.interpolation, time, 0.0)?,
        })
    }

    /// Returns the model of `path`, loading it on first use and again after the file changed.
    fn model<'c>(&self, cache: &'c mut Cache, path: &Path) -> OfxResult<&'c LoadedModel> {
        let family = self.kind.family();
        let current = match &cache.model {
            Some(loaded) => loaded.path == path && loaded.stamp == file_stamp(path, family)?,
            None => false,
        };
        if !current {
            cache.model = None;
            cache.image = None;
            cache.model = Some(LoadedModel::load(path, family)?);
        }
        Ok(cache.model.as_ref().expect("the model was loaded above"))
    }

    /// Resolves the parameters at `time` to a generation request, loading the model if needed.
    fn request(&self, cache: &mut Cache, time: f64) -> OfxResult<(PathBuf, GenerateRequest)> {
        let settings = self.settings(time)?;
        let model = self.model(cache, &settings.model_path)?;
        let (width, height) = self.output_size(&settings, model, time)?;
        let seed = non_negative(settings.seed, "Seed")?;

        let request = match &model.model {
            Model::SinGan(_) => {
                let start_stage = usize::try_from(settings.start_stage).map_err(|_| {
                    OfxError::failed(format!("Start stage {} is negative: choose 0 or more", settings.start_stage))
                })?;
                let noise = match settings.noise_index {
                    0 => NoiseMode::Random,
                    1 => NoiseMode::Reconstruction,
                    other => {
                        return Err(OfxError::failed(format!(
                            "Noise option {other} does not exist: choose Random or Reconstruction"
                        )));
                    }
                };
                GenerateRequest::SinGan(SinGanRequest { width, height, seed, start_stage, noise })
            }
            Model::StyleGan2(loaded) => {
                // Checked here as well as when generating, so that the region of definition fails too.
                chosen_scale(loaded, width, height)?;
                let interpolation = if settings.interpolation == 0.0 {
                    None
                } else {
                    let target_seed = non_negative(settings.interpolation_seed, "Interpolate to seed")?;
                    Some(Interpolation { target_seed, amount: settings.interpolation })
                };
                GenerateRequest::StyleGan2(StyleGan2Request {
                    width,
                    height,
                    seed,
                    truncation: settings.truncation,
                    noise: noise_mode(settings.noise_index)?,
                    interpolation,
                })
            }
        };
        Ok((settings.model_path, request))
    }

    /// Resolves the output size mode to (width, height) in pixels.
    fn output_size(&self, settings: &Settings, model: &LoadedModel, time: f64) -> OfxResult<(usize, usize)> {
        let (factor_x, factor_y) = settings.factors;
        match settings.size_mode {
            SizeMode::Pixels => {
                let (width, height) = settings.pixels;
                let side = |value: i32, name: &str| {
                    usize::try_from(value).ok().filter(|&v| (1..=crate::MAX_SIDE).contains(&v)).ok_or_else(|| {
                        OfxError::failed(format!(
                            "{name} {value} is out of range: choose 1 to {} pixels",
                            crate::MAX_SIDE
                        ))
                    })
                };
                Ok((side(width, "Width")?, side(height, "Height")?))
            }
            SizeMode::Trained => model.trained_size(),
            SizeMode::TrainedFactors => scale_size(model.trained_size()?, (factor_x, factor_y), "the trained size"),
            SizeMode::SourceFactors => {
                let source = self.source.filter(Clip::connected).ok_or_else(|| {
                    OfxError::failed(
                        "Output size is Factors of the source size, but the Source clip is not connected: connect \
                         it or choose another Output size",
                    )
                })?;
                let rod = source.region_of_definition(time)?;
                let aspect = source.props.double(ofx::kOfxImagePropPixelAspectRatio, 0).unwrap_or(1.0);
                let pixels = |extent: f64| (extent.max(0.0)).round() as usize;
                let size = (pixels((rod.x2 - rod.x1) / aspect.max(1e-6)), pixels(rod.y2 - rod.y1));
                scale_size(size, (factor_x, factor_y), "the Source clip's size")
            }
        }
    }

    /// Sets the region of definition to the generated size at the origin, in canonical coordinates
    /// (the get-region-of-definition action).
    pub fn region_of_definition(&self, in_args: Props, out_args: Props) -> OfxResult<()> {
        let time = in_args.double(ofx::kOfxPropTime, 0)?;
        let (_, request) = self.request(&mut self.cache(), time)?;
        let (width, height) = request.size();
        let aspect = self.output.props.double(ofx::kOfxImagePropPixelAspectRatio, 0).unwrap_or(1.0);
        let rod = OfxRectD { x1: 0.0, y1: 0.0, x2: width as f64 * aspect, y2: height as f64 };
        out_args.set_rect_d(ofx::kOfxImageEffectPropRegionOfDefinition, rod)
    }

    /// Sets an empty region of interest on the Source clip, whose pixels the effect never reads (the
    /// get-regions-of-interest action).
    pub fn regions_of_interest(&self, out_args: Props) -> OfxResult<()> {
        if self.source.is_some() {
            let empty = OfxRectD { x1: 0.0, y1: 0.0, x2: 0.0, y2: 0.0 };
            out_args.set_rect_d(b"OfxImageClipPropRoI_Source\0", empty)?;
        }
        Ok(())
    }

    /// Declares the output opaque, and varying over time when a seed, the truncation or the
    /// interpolation is animated (the get-clip-preferences action).
    pub fn clip_preferences(&self, out_args: Props) -> OfxResult<()> {
        out_args.set_string(ofx::kOfxImageEffectPropPreMultiplication, 0, ofx::kOfxImageOpaque)?;
        let varying = self.params.animatable().any(|param| param.num_keys() > 0);
        out_args.set_int(ofx::kOfxImageEffectFrameVarying, 0, i32::from(varying))
    }

    /// Generates the image, or reuses the cached one, and writes the render window (the render action).
    pub fn render(&self, effect: Effect, in_args: Props) -> OfxResult<()> {
        let time = in_args.double(ofx::kOfxPropTime, 0)?;
        let scale = in_args.double2(ofx::kOfxImageEffectPropRenderScale)?;
        let window = in_args.rect_i(ofx::kOfxImageEffectPropRenderWindow)?;
        if effect.aborted() {
            return Ok(());
        }

        let canvas = {
            let mut cache = self.cache();
            let (path, request) = self.request(&mut cache, time)?;
            match &cache.image {
                Some((cached_path, cached_request, canvas)) if *cached_path == path && *cached_request == request => {
                    Arc::clone(canvas)
                }
                _ => {
                    // A SinGAN checks the abort between its stages. NOTE: a StyleGAN2 image is one
                    // pegan-core call, so an abort is noticed only before and after it.
                    let model = cache.model.as_ref().expect("request loaded the model").model.clone();
                    let Some(canvas) = generate(&model, &request, &|| effect.aborted())? else {
                        return Ok(());
                    };
                    let canvas = Arc::new(canvas);
                    cache.image = Some((path, request, Arc::clone(&canvas)));
                    canvas
                }
            }
        };
        if effect.aborted() {
            return Ok(());
        }

        let image = self.output.image(time)?;
        let target = ImageTarget {
            data: image.props.pointer(ofx::kOfxImagePropData)?,
            bounds: image.props.rect_i(ofx::kOfxImagePropBounds)?,
            row_bytes: image.props.int(ofx::kOfxImagePropRowBytes, 0)? as isize,
            depth: Depth::parse(&image.props.string(ofx::kOfxImageEffectPropPixelDepth, 0)?)?,
            components: Components::parse(&image.props.string(ofx::kOfxImageEffectPropComponents, 0)?)?,
        };
        write_window(&canvas, scale, window, &target, || effect.aborted())?;
        Ok(())
    }

    /// Shows an error through the message suite. A version 1 host gets each distinct message once,
    /// because those messages are dialogs and the host repeats failing actions.
    pub fn report(&self, effect: Effect, error: &OfxError) {
        if effect.suites.message_v2.is_none() {
            let mut cache = self.cache();
            if cache.last_error.as_deref() == Some(error.message.as_str()) {
                return;
            }
            cache.last_error = Some(error.message.clone());
        }
        effect.post_error(&error.message);
    }

    /// Clears the error shown by [`Instance::report`] after an action succeeded.
    pub fn clear_report(&self, effect: Effect) {
        effect.clear_error();
        self.cache().last_error = None;
    }
}

/// Multiplies a (width, height) size by factors, rounding half up.
fn scale_size(size: (usize, usize), factors: (f64, f64), reference: &str) -> OfxResult<(usize, usize)> {
    let side = |side: usize, factor: f64, name: &str| {
        scaled_side(side, factor).ok_or_else(|| {
            OfxError::failed(format!(
                "{name} factor {factor} times {side} pixels of {reference} gives no size from 1 to {} pixels: choose \
                 another factor",
                crate::MAX_SIDE
            ))
        })
    };
    Ok((side(size.0, factors.0, "Width")?, side(size.1, factors.1, "Height")?))
}

/// Converts a seed parameter to the core's unsigned seed; `name` is the parameter's label.
fn non_negative(seed: i32, name: &str) -> OfxResult<u64> {
    u64::try_from(seed).map_err(|_| OfxError::failed(format!("{name} {seed} is negative: choose 0 or more")))
}
