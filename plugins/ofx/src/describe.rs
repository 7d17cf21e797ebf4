//! The two effects of the bundle and what they tell the host in the describe actions: contexts, pixel
//! depths, components, clips, parameters and thread safety.

use openfx_sys as ofx;

use crate::host::{Effect, OfxError, OfxResult, ParamSet, Props, STAT_ERR_VALUE};
use crate::MAX_SIDE;

/// The effects in the bundle, in the order of `OfxGetPlugin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectKind {
    /// Filter: retargets the model's image to a size in pixels or relative to the Source clip.
    Retarget,
    /// Generator: a random sample (or the reconstruction) of the model at a chosen size.
    Sample,
}

impl EffectKind {
    #[cfg(test)]
    pub const ALL: [EffectKind; 2] = [EffectKind::Retarget, EffectKind::Sample];

    /// Returns the plug-in identifier, a reverse domain name as the OpenFX standard recommends.
    pub const fn identifier(self) -> &'static [u8] {
        match self {
            EffectKind::Retarget => b"org.pegan.SinGanRetarget\0",
            EffectKind::Sample => b"org.pegan.SinGanSample\0",
        }
    }

    fn label(self) -> &'static str {
        match self {
            EffectKind::Retarget => "SinGAN Retarget",
            EffectKind::Sample => "SinGAN Sample",
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
        }
    }

    fn contexts(self) -> [&'static [u8]; 2] {
        match self {
            EffectKind::Retarget => [ofx::kOfxImageEffectContextFilter, ofx::kOfxImageEffectContextGeneral],
            EffectKind::Sample => [ofx::kOfxImageEffectContextGenerator, ofx::kOfxImageEffectContextGeneral],
        }
    }

    /// Options of the size mode parameter, in choice index order.
    pub fn size_modes(self) -> &'static [SizeMode] {
        match self {
            EffectKind::Retarget => &[SizeMode::TrainedFactors, SizeMode::SourceFactors, SizeMode::Pixels],
            EffectKind::Sample => &[SizeMode::TrainedFactors, SizeMode::Pixels],
        }
    }
}

/// Reference of the output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeMode {
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
}

/// Options of the noise mode parameter of the sample effect, in choice index order.
pub const NOISE_MODE_LABELS: [&str; 2] = ["Random", "Reconstruction"];

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
    model.set_text(
        ofx::kOfxParamPropHint,
        0,
        "A SinGAN model file written by `pegan singan train` or `pegan convert`",
    )?;
    model.set_string(ofx::kOfxParamPropStringMode, 0, ofx::kOfxParamStringIsFilePath)?;
    model.set_int(ofx::kOfxParamPropStringFilePathExists, 0, 1)?;
    model.set_int(ofx::kOfxParamPropAnimates, 0, 0)?;
    model.set_text(ofx::kOfxParamPropDefault, 0, "")?;

    let size_mode = params.define(ofx::kOfxParamTypeChoice, param::SIZE_MODE)?;
    size_mode.set_text(ofx::kOfxPropLabel, 0, "Output size")?;
    size_mode.set_text(ofx::kOfxParamPropHint, 0, "How the width and height of the generated image are given")?;
    for (index, mode) in kind.size_modes().iter().enumerate() {
        size_mode.set_text(ofx::kOfxParamPropChoiceOption, index as i32, mode.label())?;
    }
    size_mode.set_int(ofx::kOfxParamPropDefault, 0, 0)?;
    size_mode.set_int(ofx::kOfxParamPropAnimates, 0, 0)?;

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

    for (name, label) in [(param::WIDTH, "Width"), (param::HEIGHT, "Height")] {
        let side = params.define(ofx::kOfxParamTypeInteger, name)?;
        side.set_text(ofx::kOfxPropLabel, 0, label)?;
        side.set_text(ofx::kOfxParamPropHint, 0, "Size in pixels when Output size is Width and height in pixels")?;
        side.set_int(ofx::kOfxParamPropDefault, 0, 256)?;
        side.set_int(ofx::kOfxParamPropMin, 0, 1)?;
        side.set_int(ofx::kOfxParamPropMax, 0, MAX_SIDE as i32)?;
        side.set_int(ofx::kOfxParamPropDisplayMin, 0, 16)?;
        side.set_int(ofx::kOfxParamPropDisplayMax, 0, 2048)?;
        side.set_int(ofx::kOfxParamPropAnimates, 0, 0)?;
    }

    let seed = params.define(ofx::kOfxParamTypeInteger, param::SEED)?;
    seed.set_text(ofx::kOfxPropLabel, 0, "Seed")?;
    seed.set_text(ofx::kOfxParamPropHint, 0, "Seed of the random noise; one seed and size give one image")?;
    seed.set_int(ofx::kOfxParamPropDefault, 0, 0)?;
    seed.set_int(ofx::kOfxParamPropMin, 0, 0)?;
    seed.set_int(ofx::kOfxParamPropMax, 0, i32::MAX)?;
    seed.set_int(ofx::kOfxParamPropDisplayMin, 0, 0)?;
    seed.set_int(ofx::kOfxParamPropDisplayMax, 0, 1000)?;
    seed.set_int(ofx::kOfxParamPropAnimates, 0, 1)?;

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
            let noise = params.define(ofx::kOfxParamTypeChoice, param::NOISE_MODE)?;
            noise.set_text(ofx::kOfxPropLabel, 0, "Noise")?;
            noise.set_text(
                ofx::kOfxParamPropHint,
                0,
                "Random draws new noise from the seed; Reconstruction uses the noise stored at training and \
                 reproduces the training image, at the trained size only",
            )?;
            for (index, label) in NOISE_MODE_LABELS.iter().enumerate() {
                noise.set_text(ofx::kOfxParamPropChoiceOption, index as i32, label)?;
            }
            noise.set_int(ofx::kOfxParamPropDefault, 0, 0)?;
            noise.set_int(ofx::kOfxParamPropAnimates, 0, 0)?;
        }
    }
    Ok(())
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
