//! The effects of the bundle and what they tell the host in the describe actions: contexts, pixel
//! depths, components, clips, parameters and thread safety.

use openfx_sys as ofx;

use crate::generate::ModelFamily;
use crate::host::{Effect, OfxError, OfxResult, ParamSet, Props, STAT_ERR_VALUE};
use crate::MAX_SIDE;

/// The effects in the bundle, in the order of `OfxGetPlugin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectKind {
    /// Filter: retargets the model's image to a size in pixels or relative to the Source clip.
    Retarget,
    /// Generator: a random sample (or the reconstruction) of the model at a chosen size.
    Sample,
    /// Generator: a StyleGAN2 image of a seed, or of a latent between two seeds, at a chosen size.
    StyleGan2Sample,
}

impl EffectKind {
    #[cfg(test)]
    pub const ALL: [EffectKind; 3] = [EffectKind::Retarget, EffectKind::Sample, EffectKind::StyleGan2Sample];

    /// Returns the plug-in identifier, a reverse domain name as the OpenFX standard recommends.
    pub const fn identifier(self) -> &'static [u8] {
        match self {
            EffectKind::Retarget => b"org.pegan.SinGanRetarget\0",
            EffectKind::Sample => b"org.pegan.SinGanSample\0",
            EffectKind::StyleGan2Sample => b"org.pegan.StyleGan2Sample\0",
        }
    }

    /// Returns the kind of model file that the effect reads.
    pub fn family(self) -> ModelFamily {
        match self {
            EffectKind::Retarget | EffectKind::Sample => ModelFamily::SinGan,
            EffectKind::StyleGan2Sample => ModelFamily::StyleGan2,
        }
    }

    fn label(self) -> &'static str {
        match self {
            EffectKind::Retarget => "SinGAN Retarget",
            EffectKind::Sample => "SinGAN Sample",
            EffectKind::StyleGan2Sample => "StyleGAN2 Sample",
        }
    }

    fn description(self) -> &'static str {
        match self {
            EffectKind::Retarget => {
                "Generates the image of a pegan SinGAN model at a new width and height, or as factors of the trained \
                 or the Source size. Models with a spatial encoding (CSG, SPE) keep the layout of their training \
                 image. The Source pixels are not used."
            }
            EffectKind::Sample => {
                "Generates a random sample of a pegan SinGAN model, or its reconstruction of the training image. \
                 Animate the seed for a new sample per frame."
            }
            EffectKind::StyleGan2Sample => {
                "Generates the image of a seed from a pegan StyleGAN2 (MS-PIE) model or an MMGeneration StyleGAN2 \
                 checkpoint, at the trained size or a larger one. Animate Interpolation to move the latent from \
                 Seed to Interpolate to seed over time."
            }
        }
    }

    fn contexts(self) -> [&'static [u8]; 2] {
        match self {
            EffectKind::Retarget => [ofx::kOfxImageEffectContextFilter, ofx::kOfxImageEffectContextGeneral],
            EffectKind::Sample | EffectKind::StyleGan2Sample => {
                [ofx::kOfxImageEffectContextGenerator, ofx::kOfxImageEffectContextGeneral]
            }
        }
    }

    /// Options of the size mode parameter, in choice index order.
    pub fn size_modes(self) -> &'static [SizeMode] {
        match self {
            EffectKind::Retarget => &[SizeMode::TrainedFactors, SizeMode::SourceFactors, SizeMode::Pixels],
            EffectKind::Sample => &[SizeMode::TrainedFactors, SizeMode::Pixels],
            EffectKind::StyleGan2Sample => &[SizeMode::Trained, SizeMode::Pixels],
        }
    }

    /// Options of the noise mode parameter, in choice index order, or none for the retarget effect.
    pub fn noise_modes(self) -> &'static [&'static str] {
        match self {
            EffectKind::Retarget => &[],
            EffectKind::Sample => &SINGAN_NOISE_MODES,
            EffectKind::StyleGan2Sample => &STYLEGAN2_NOISE_MODES,
        }
    }
}

/// Reference of the output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeMode {
    /// The model's trained size.
    Trained,
    /// The width and height factors times the model's trained size.
    TrainedFactors,
    /// The width and height factors times the size of the Source clip's region of definition.
    SourceFactors,
    /// The width and height parameters, in pixels.
    Pixels,
}

impl SizeMode {
    fn label(self) -> &'static str {
        match self {
            SizeMode::Trained => "Trained size",
            SizeMode::TrainedFactors => "Factors of the trained size",
            SizeMode::SourceFactors => "Factors of the source size",
            SizeMode::Pixels => "Width and height in pixels",
        }
    }
}

/// Parameter names, which hosts store in project files: never rename one.
pub mod param {
    pub const MODEL_FILE: &[u8] = b"modelFile\0";
    pub const SIZE_MODE: &[u8] = b"sizeMode\0";
    pub const WIDTH_FACTOR: &[u8] = b"widthFactor\0";
    pub const HEIGHT_FACTOR: &[u8] = b"heightFactor\0";
    pub const WIDTH: &[u8] = b"width\0";
    pub const HEIGHT: &[u8] = b"height\0";
    pub const SEED: &[u8] = b"seed\0";
    pub const START_STAGE: &[u8] = b"startStage\0";
    pub const NOISE_MODE: &[u8] = b"noiseMode\0";
    pub const TRUNCATION: &[u8] = b"truncation\0";
    pub const INTERPOLATION_SEED: &[u8] = b"interpolationSeed\0";
    pub const INTERPOLATION: &[u8] = b"interpolation\0";
}

/// Options of the noise mode parameter of SinGAN Sample, in choice index order.
pub const SINGAN_NOISE_MODES: [&str; 2] = ["Random", "Reconstruction"];

/// Options of the noise mode parameter of StyleGAN2 Sample, in choice index order: the noise modes of
/// the C API's `PEGAN_STYLEGAN2_NOISE_MODE_*` constants, which have the same indices.
pub const STYLEGAN2_NOISE_MODES: [&str; 3] = ["Random", "Fixed", "Zero"];

/// Sets the properties common to every context (the describe action).
pub fn describe(kind: EffectKind, effect: Effect) -> OfxResult<()> {
    let props = effect.props()?;
    props.set_text(ofx::kOfxPropLabel, 0, kind.label())?;
    props.set_text(ofx::kOfxImageEffectPluginPropGrouping, 0, "pegan")?;
    // Hosts before OpenFX 1.2 lack the description property; it is optional, so a failure is ignored.
    let _ = props.set_text(ofx::kOfxPropPluginDescription, 0, kind.description());

    props.set_strings(ofx::kOfxImageEffectPropSupportedContexts, &kind.contexts())?;
    props
        .set_strings(ofx::kOfxImageEffectPropSupportedPixelDepths, &[ofx::kOfxBitDepthByte, ofx::kOfxBitDepthFloat])?;

    // Every instance keeps its state behind a mutex and pegan's models may be used from several
    // threads at once, so the host may render one instance on several threads. Splitting a frame into
    // tiles would not help: every tile needs the whole generated image, which the instance caches.
    props.set_string(ofx::kOfxImageEffectPluginRenderThreadSafety, 0, ofx::kOfxImageEffectRenderFullySafe)?;
    props.set_int(ofx::kOfxImageEffectPluginPropHostFrameThreading, 0, 0)?;
    props.set_int(ofx::kOfxImageEffectPluginPropSingleInstance, 0, 0)?;

    // Render scales and render windows are honoured; clips share one depth and one aspect ratio.
    props.set_int(ofx::kOfxImageEffectPropSupportsMultiResolution, 0, 1)?;
    props.set_int(ofx::kOfxImageEffectPropSupportsTiles, 0, 1)?;
    props.set_int(ofx::kOfxImageEffectPropTemporalClipAccess, 0, 0)?;
    props.set_int(ofx::kOfxImageEffectPropSupportsMultipleClipDepths, 0, 0)?;
    props.set_int(ofx::kOfxImageEffectPropSupportsMultipleClipPARs, 0, 0)?;
    props.set_int(ofx::kOfxImageEffectPluginPropFieldRenderTwiceAlways, 0, 0)?;
    Ok(())
}

/// Defines the clips and parameters of one context (the describe-in-context action).
pub fn describe_in_context(kind: EffectKind, effect: Effect, in_args: Props) -> OfxResult<()> {
    let context = in_args.string(ofx::kOfxImageEffectPropContext, 0)?;
    if !kind.contexts().iter().any(|supported| crate::host::text(supported) == context) {
        return Err(OfxError::new(
            crate::host::STAT_ERR_UNSUPPORTED,
            format!("{} does not support the context {context}", kind.label()),
        ));
    }

    if kind == EffectKind::Retarget {
        let source = effect.define_clip(ofx::kOfxImageEffectSimpleSourceClipName)?;
        source.set_strings(
            ofx::kOfxImageEffectPropSupportedComponents,
            &[ofx::kOfxImageComponentRGBA, ofx::kOfxImageComponentRGB, ofx::kOfxImageComponentAlpha],
        )?;
        source.set_int(ofx::kOfxImageEffectPropSupportsTiles, 0, 1)?;
        let optional = context == crate::host::text(ofx::kOfxImageEffectContextGeneral);
        source.set_int(ofx::kOfxImageClipPropOptional, 0, i32::from(optional))?;
    }

    let output = effect.define_clip(ofx::kOfxImageEffectOutputClipName)?;
    output.set_strings(
        ofx::kOfxImageEffectPropSupportedComponents,
        &[ofx::kOfxImageComponentRGBA, ofx::kOfxImageComponentRGB],
    )?;
    output.set_int(ofx::kOfxImageEffectPropSupportsTiles, 0, 1)?;

    define_params(kind, ParamSet { handle: effect.param_set()?, suites: effect.suites })
}

fn define_params(kind: EffectKind, params: ParamSet) -> OfxResult<()> {
    let model = params.define(ofx::kOfxParamTypeString, param::MODEL_FILE)?;
    model.set_text(ofx::kOfxPropLabel, 0, "Model file")?;
    model.set_text(ofx::kOfxParamPropHint, 0, &format!("Path of {}", kind.family().model_files()))?;
    model.set_string(ofx::kOfxParamPropStringMode, 0, ofx::kOfxParamStringIsFilePath)?;
    model.set_int(ofx::kOfxParamPropStringFilePathExists, 0, 1)?;
    model.set_int(ofx::kOfxParamPropAnimates, 0, 0)?;
    model.set_text(ofx::kOfxParamPropDefault, 0, "")?;

    define_size_params(kind, params)?;

    let seed = params.define(ofx::kOfxParamTypeInteger, param::SEED)?;
    seed.set_text(ofx::kOfxPropLabel, 0, "Seed")?;
    let seed_hint = match kind.family() {
        ModelFamily::SinGan => "Seed of the random noise; one seed and size give one image",
        ModelFamily::StyleGan2 => "Seed of the latent z and of the random noise maps; one seed and size give one image",
    };
    seed.set_text(ofx::kOfxParamPropHint, 0, seed_hint)?;
    define_seed_range(seed)?;

    match kind {
        EffectKind::Retarget => {
            let start = params.define(ofx::kOfxParamTypeInteger, param::START_STAGE)?;
            start.set_text(ofx::kOfxPropLabel, 0, "Start stage")?;
            start.set_text(
                ofx::kOfxParamPropHint,
                0,
                "First stage that gets random noise: 0 gives a fully random image, and each higher stage keeps more \
                 of the training image's layout",
            )?;
            start.set_int(ofx::kOfxParamPropDefault, 0, 0)?;
            start.set_int(ofx::kOfxParamPropMin, 0, 0)?;
            start.set_int(ofx::kOfxParamPropMax, 0, 100)?;
            start.set_int(ofx::kOfxParamPropDisplayMin, 0, 0)?;
            start.set_int(ofx::kOfxParamPropDisplayMax, 0, 10)?;
            start.set_int(ofx::kOfxParamPropAnimates, 0, 0)?;
        }
        EffectKind::Sample => {
            define_noise_mode(
                kind,
                params,
                "Random draws new noise from the seed; Reconstruction uses the noise stored at training and \
                 reproduces the training image, at the trained size only",
            )?;
        }
        EffectKind::StyleGan2Sample => {
            define_noise_mode(
                kind,
                params,
                "Noise maps added after every convolution: Random draws them from the seed, Fixed uses the maps \
                 stored in the model (trained size only), and Zero adds none",
            )?;
            define_stylegan2_params(params)?;
        }
    }
    Ok(())
}

/// Defines the output size mode and the sizes it refers to.
fn define_size_params(kind: EffectKind, params: ParamSet) -> OfxResult<()> {
    let size_mode = params.define(ofx::kOfxParamTypeChoice, param::SIZE_MODE)?;
    size_mode.set_text(ofx::kOfxPropLabel, 0, "Output size")?;
    size_mode.set_text(ofx::kOfxParamPropHint, 0, "How the width and height of the generated image are given")?;
    for (index, mode) in kind.size_modes().iter().enumerate() {
        size_mode.set_text(ofx::kOfxParamPropChoiceOption, index as i32, mode.label())?;
    }
    size_mode.set_int(ofx::kOfxParamPropDefault, 0, 0)?;
    size_mode.set_int(ofx::kOfxParamPropAnimates, 0, 0)?;

    if kind.family() == ModelFamily::SinGan {
        for (name, label) in [(param::WIDTH_FACTOR, "Width factor"), (param::HEIGHT_FACTOR, "Height factor")] {
            let factor = params.define(ofx::kOfxParamTypeDouble, name)?;
            factor.set_text(ofx::kOfxPropLabel, 0, label)?;
            factor.set_text(
                ofx::kOfxParamPropHint,
                0,
                "Multiple of the reference size chosen in Output size; 1 keeps it",
            )?;
            factor.set_double(ofx::kOfxParamPropDefault, 0, 1.0)?;
            factor.set_double(ofx::kOfxParamPropMin, 0, 0.01)?;
            factor.set_double(ofx::kOfxParamPropMax, 0, 100.0)?;
            factor.set_double(ofx::kOfxParamPropDisplayMin, 0, 0.25)?;
            factor.set_double(ofx::kOfxParamPropDisplayMax, 0, 4.0)?;
            factor.set_int(ofx::kOfxParamPropAnimates, 0, 0)?;
        }
    }

    let side_hint = match kind.family() {
        ModelFamily::SinGan => "Size in pixels when Output size is Width and height in pixels",
        ModelFamily::StyleGan2 => {
            "Size in pixels when Output size is Width and height in pixels: the trained size plus a multiple of a \
             quarter of it, such as 32, 40 or 48 for a model trained at 32"
        }
    };
    for (name, label) in [(param::WIDTH, "Width"), (param::HEIGHT, "Height")] {
        let side = params.define(ofx::kOfxParamTypeInteger, name)?;
        side.set_text(ofx::kOfxPropLabel, 0, label)?;
        side.set_text(ofx::kOfxParamPropHint, 0, side_hint)?;
        side.set_int(ofx::kOfxParamPropDefault, 0, 256)?;
        side.set_int(ofx::kOfxParamPropMin, 0, 1)?;
        side.set_int(ofx::kOfxParamPropMax, 0, MAX_SIDE as i32)?;
        side.set_int(ofx::kOfxParamPropDisplayMin, 0, 16)?;
        side.set_int(ofx::kOfxParamPropDisplayMax, 0, 2048)?;
        side.set_int(ofx::kOfxParamPropAnimates, 0, 0)?;
    }
    Ok(())
}

/// Sets the default, range and animation of a seed parameter.
fn define_seed_range(seed: Props) -> OfxResult<()> {
    seed.set_int(ofx::kOfxParamPropDefault, 0, 0)?;
    seed.set_int(ofx::kOfxParamPropMin, 0, 0)?;
    seed.set_int(ofx::kOfxParamPropMax, 0, i32::MAX)?;
    seed.set_int(ofx::kOfxParamPropDisplayMin, 0, 0)?;
    seed.set_int(ofx::kOfxParamPropDisplayMax, 0, 1000)?;
    seed.set_int(ofx::kOfxParamPropAnimates, 0, 1)
}

fn define_noise_mode(kind: EffectKind, params: ParamSet, hint: &str) -> OfxResult<()> {
    let noise = params.define(ofx::kOfxParamTypeChoice, param::NOISE_MODE)?;
    noise.set_text(ofx::kOfxPropLabel, 0, "Noise")?;
    noise.set_text(ofx::kOfxParamPropHint, 0, hint)?;
    for (index, label) in kind.noise_modes().iter().enumerate() {
        noise.set_text(ofx::kOfxParamPropChoiceOption, index as i32, label)?;
    }
    noise.set_int(ofx::kOfxParamPropDefault, 0, 0)?;
    noise.set_int(ofx::kOfxParamPropAnimates, 0, 0)
}

/// Defines truncation ψ and the latent interpolation of StyleGAN2 Sample.
fn define_stylegan2_params(params: ParamSet) -> OfxResult<()> {
    let truncation = params.define(ofx::kOfxParamTypeDouble, param::TRUNCATION)?;
    truncation.set_text(ofx::kOfxPropLabel, 0, "Truncation")?;
    truncation.set_text(
        ofx::kOfxParamPropHint,
        0,
        "Truncation psi: 1 samples the full distribution, lower values pull the style towards the mean latent \
         for more typical images (0.7 is common), and 0 gives the mean latent's image",
    )?;
    truncation.set_double(ofx::kOfxParamPropDefault, 0, 1.0)?;
    truncation.set_double(ofx::kOfxParamPropMin, 0, 0.0)?;
    truncation.set_double(ofx::kOfxParamPropDisplayMin, 0, 0.0)?;
    truncation.set_double(ofx::kOfxParamPropDisplayMax, 0, 1.0)?;
    truncation.set_int(ofx::kOfxParamPropAnimates, 0, 1)?;

    let target = params.define(ofx::kOfxParamTypeInteger, param::INTERPOLATION_SEED)?;
    target.set_text(ofx::kOfxPropLabel, 0, "Interpolate to seed")?;
    target.set_text(
        ofx::kOfxParamPropHint,
        0,
        "Seed whose latent z the image moves to as Interpolation goes from 0 to 1; the noise maps stay those of \
         Seed",
    )?;
    define_seed_range(target)?;
    target.set_int(ofx::kOfxParamPropDefault, 0, 1)?;

    let amount = params.define(ofx::kOfxParamTypeDouble, param::INTERPOLATION)?;
    amount.set_text(ofx::kOfxPropLabel, 0, "Interpolation")?;
    amount.set_text(
        ofx::kOfxParamPropHint,
        0,
        "Position on the spherical path from the latent of Seed (0) to that of Interpolate to seed (1), as `pegan \
         stylegan2 interpolate` walks it; animate it for a walk through latent space",
    )?;
    amount.set_double(ofx::kOfxParamPropDefault, 0, 0.0)?;
    amount.set_double(ofx::kOfxParamPropMin, 0, 0.0)?;
    amount.set_double(ofx::kOfxParamPropMax, 0, 1.0)?;
    amount.set_double(ofx::kOfxParamPropDisplayMin, 0, 0.0)?;
    amount.set_double(ofx::kOfxParamPropDisplayMax, 0, 1.0)?;
    amount.set_int(ofx::kOfxParamPropAnimates, 0, 1)
}

/// Maps a choice index read from the host to a size mode, rejecting indices the effect lacks.
pub fn size_mode(kind: EffectKind, index: i32) -> OfxResult<SizeMode> {
    usize::try_from(index).ok().and_then(|i| kind.size_modes().get(i).copied()).ok_or_else(|| {
        OfxError::new(
            STAT_ERR_VALUE,
            format!("Output size option {index} does not exist: choose one of the {} options", kind.size_modes().len()),
        )
    })
}
