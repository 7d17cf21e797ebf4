//! SinGAN configuration: the architecture variant, the training schedule and the image pyramid.
//!
//! The field names and defaults mirror the MMGeneration v0.7.3 configs (`configs/singan/*.py` and
//! `configs/positional_encoding_in_gans/singan_*.py`), so a preset JSON file reads like the reference config.

use serde::{Deserialize, Serialize};

use crate::encoding::EncodingConfig;
use crate::error::{Error, Result};
use crate::json::merge_json;
use crate::pyramid::PyramidConfig;
use crate::singan::block::BlockShape;

/// Largest accepted `num_layers` of a generator or discriminator block (every reference config has 5).
///
/// The limits below are sanity bounds far above the reference values. They reject a corrupt or hostile
/// config before its sizes reach an allocation or an integer overflow.
pub const MAX_NUM_LAYERS: usize = 32;

/// Largest accepted convolution `kernel_size`, in pixels (every reference config has 3).
pub const MAX_KERNEL_SIZE: usize = 11;

/// Largest accepted channel count of any layer, noise map or encoding (the reference's widest layer has 128).
pub const MAX_CHANNELS: usize = 1024;

/// Largest accepted `init_size` of a sinusoidal positional encoding, in table rows (the reference uses 1024).
/// Longer axes still work, because the table grows to the requested length.
pub const MAX_SPE_INIT_SIZE: usize = 65536;

/// The SinGAN variants compared by Xu et al. (CVPR 2021), one per released MMGeneration config family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Original SinGAN: valid convolutions, a 5-pixel zero frame around each stage input.
    Baseline,
    /// Padding-free generator: the stage input is stretched by bicubic interpolation instead of zero-padded.
    InterpPad,
    /// Interpolation padding with a discriminator that has no batch norm.
    InterpPadNobn,
    /// Cartesian spatial grid added to the stage-0 noise; zero padding 1 in every conv.
    Csg,
    /// Sinusoidal positional encoding, embedding dim 4 (8 channels), added to the stage-0 noise.
    Spe4,
    /// Sinusoidal positional encoding, embedding dim 8 (16 channels).
    Spe8,
}

impl Variant {
    /// Every variant, in the order the CLI lists them.
    pub const ALL: [Variant; 6] =
        [Variant::Baseline, Variant::InterpPad, Variant::InterpPadNobn, Variant::Csg, Variant::Spe4, Variant::Spe8];

    /// Returns the command-line name (`baseline`, `interp-pad`, `interp-pad-nobn`, `csg`, `spe4`, `spe8`).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::InterpPad => "interp-pad",
            Variant::InterpPadNobn => "interp-pad-nobn",
            Variant::Csg => "csg",
            Variant::Spe4 => "spe4",
            Variant::Spe8 => "spe8",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(name: &str) -> Result<Self> {
        Variant::ALL.into_iter().find(|v| v.name() == name).ok_or_else(|| {
            let names: Vec<_> = Variant::ALL.iter().map(|v| v.name()).collect();
            Error::invalid(format!("unknown SinGAN variant '{name}': use one of {}", names.join(", ")))
        })
    }
}

/// MMGeneration model class that the config describes.
///
/// The classes differ in the noise channels of stages ≥ 1: `SinGAN` draws 3 independent channels,
/// `PESinGAN` draws 1 channel that is broadcast over B, G and R.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelType {
    #[serde(rename = "SinGAN")]
    SinGan,
    #[serde(rename = "PESinGAN")]
    PeSinGan,
}

/// Generator settings (`SinGANMultiScaleGenerator` / `SinGANMSGeneratorPE`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Convolutions per stage block, head and tail included.
    pub num_layers: usize,
    /// Square kernel size of every convolution, in pixels.
    pub kernel_size: usize,
    /// Feature width of stages 0–3; it doubles every 4 stages up to `max_channels`.
    pub base_channels: usize,
    /// Lower bound of the hidden widths inside a block.
    pub min_feat_channels: usize,
    /// Upper bound of the feature width (128 in the reference).
    pub max_channels: usize,
    /// Zero padding of every convolution: 0 (valid) or 1 (CSG and SPE configs).
    pub padding: usize,
    /// Whether the stage input is enlarged by the head padding `(kernel_size - 1) / 2 × num_layers` before block 0's head.
    pub pad_at_head: bool,
    /// Interpolation padding: stretch the previous image to the padded size instead of zero-padding it.
    pub interp_pad: bool,
    /// Sample the noise directly at the padded size (used together with `interp_pad`).
    pub noise_with_pad: bool,
    /// Input channels of stage 0: 3, or the channel count of the positional encoding.
    pub first_stage_in_channels: usize,
    /// Positional encoding added to the stage-0 noise, if any.
    pub positional_encoding: Option<EncodingConfig>,
}

/// Discriminator settings (`SinGANMultiScaleDiscriminator`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscriminatorConfig {
    pub num_layers: usize,
    pub kernel_size: usize,
    pub base_channels: usize,
    pub min_feat_channels: usize,
    pub max_channels: usize,
    /// Batch norm after the head and body convolutions; without it those convolutions get a bias.
    pub batch_norm: bool,
}

/// Training schedule and losses (`train_cfg` plus the loss weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Factor of the noise amplitude: `w_{s+1} = noise_weight_init × RMSE(upsampled reconstruction, real)`.
    pub noise_weight_init: f64,
    /// Training iterations per stage.
    pub iters_per_scale: usize,
    /// Discriminator updates per iteration.
    pub disc_steps: usize,
    /// Generator updates per iteration.
    pub generator_steps: usize,
    /// Adam learning rate of the discriminator.
    pub lr_d: f64,
    /// Adam learning rate of the generator.
    pub lr_g: f64,
    /// Local iterations after which both learning rates are multiplied by `lr_gamma`.
    pub lr_milestones: Vec<usize>,
    pub lr_gamma: f64,
    /// Adam β1 and β2.
    pub betas: [f64; 2],
    /// Weight of the WGAN-GP gradient penalty.
    pub gp_weight: f64,
    /// Weight of the reconstruction mean squared error.
    pub recon_weight: f64,
    /// Channels of the fixed stage-0 reconstruction noise.
    pub first_fixed_noises_ch: usize,
    /// Whether fixed noises are stored at the padded size (interpolation-padding configs).
    pub fixed_noise_with_pad: bool,
}

/// A complete SinGAN configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinGanConfig {
    /// Variant name, informative only: the fields below define the architecture.
    pub variant: Variant,
    pub model_type: ModelType,
    pub generator: GeneratorConfig,
    pub discriminator: DiscriminatorConfig,
    pub train: TrainConfig,
    pub data: PyramidConfig,
}

/// A named training schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// The reference schedule: 2000 iterations per stage, images up to 250 pixels. Meant for a GPU.
    Paper,
    /// A short schedule for two CPU cores: a few minutes on the bundled example image.
    Fast,
    /// A schedule of a few iterations on a small pyramid, for tests.
    Tiny,
}

impl Preset {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "paper" => Ok(Preset::Paper),
            "fast" => Ok(Preset::Fast),
            "tiny" => Ok(Preset::Tiny),
            other => Err(Error::invalid(format!("unknown preset '{other}': use paper, fast or tiny"))),
        }
    }
}

const PRESET_FILES: [(Variant, &str); 6] = [
    (Variant::Baseline, include_str!("../../presets/singan/baseline.json")),
    (Variant::InterpPad, include_str!("../../presets/singan/interp-pad.json")),
    (Variant::InterpPadNobn, include_str!("../../presets/singan/interp-pad-nobn.json")),
    (Variant::Csg, include_str!("../../presets/singan/csg.json")),
    (Variant::Spe4, include_str!("../../presets/singan/spe4.json")),
    (Variant::Spe8, include_str!("../../presets/singan/spe8.json")),
];
const FAST_OVERLAY: &str = include_str!("../../presets/singan/fast.json");
const TINY_OVERLAY: &str = include_str!("../../presets/singan/tiny.json");

impl SinGanConfig {
    /// Returns the built-in configuration of `variant` with the schedule of `preset`.
    pub fn preset(variant: Variant, preset: Preset) -> Result<Self> {
        let text =
            PRESET_FILES.iter().find(|(v, _)| *v == variant).map(|(_, t)| *t).expect("every variant has a preset");
        let mut value: serde_json::Value = serde_json::from_str(text).expect("built-in presets are valid JSON");
        let overlay = match preset {
            Preset::Paper => None,
            Preset::Fast => Some(FAST_OVERLAY),
            Preset::Tiny => Some(TINY_OVERLAY),
        };
        if let Some(overlay) = overlay {
            let overlay: serde_json::Value = serde_json::from_str(overlay).expect("built-in overlays are valid JSON");
            merge_json(&mut value, &overlay);
        }
        let config: SinGanConfig = serde_json::from_value(value).expect("built-in presets match SinGanConfig");
        config.validate()?;
        Ok(config)
    }

    /// Parses a configuration from JSON text and validates it.
    pub fn from_json(text: &str) -> Result<Self> {
        let config: SinGanConfig =
            serde_json::from_str(text).map_err(|e| Error::invalid(format!("invalid SinGAN config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Applies a partial JSON object on top of this configuration (used for `--config` overrides).
    pub fn with_overrides(&self, overrides: &serde_json::Value) -> Result<Self> {
        let mut value = serde_json::to_value(self).expect("config serialises");
        merge_json(&mut value, overrides);
        let config: SinGanConfig = serde_json::from_value(value)
            .map_err(|e| Error::invalid(format!("invalid SinGAN config override: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Head padding `P = (kernel_size − 1) / 2 × num_layers`, in pixels per side (5 in every reference config).
    pub fn head_padding(&self) -> usize {
        (self.generator.kernel_size - 1) / 2 * self.generator.num_layers
    }

    /// Feature width of stage `s`: `min(base × 2^floor(s/4), max_channels)`.
    pub fn generator_channels(&self, stage: usize) -> usize {
        stage_channels(self.generator.base_channels, self.generator.max_channels, stage)
    }

    /// Feature width of discriminator stage `s`.
    pub fn discriminator_channels(&self, stage: usize) -> usize {
        stage_channels(self.discriminator.base_channels, self.discriminator.max_channels, stage)
    }

    /// Shape of the generator block of stage `s`.
    pub fn generator_block_shape(&self, stage: usize) -> BlockShape {
        let g = &self.generator;
        BlockShape {
            in_channels: if stage == 0 { g.first_stage_in_channels } else { 3 },
            channels: self.generator_channels(stage),
            num_layers: g.num_layers,
            kernel_size: g.kernel_size,
            padding: g.padding,
        }
    }

    /// Shape of the discriminator block of stage `s`: valid convolutions on a BGR image.
    pub fn discriminator_block_shape(&self, stage: usize) -> BlockShape {
        let d = &self.discriminator;
        BlockShape {
            in_channels: 3,
            channels: self.discriminator_channels(stage),
            num_layers: d.num_layers,
            kernel_size: d.kernel_size,
            padding: 0,
        }
    }

    /// Noise channels of stage `s` in random sampling and in the fixed reconstruction noise.
    pub fn noise_channels(&self, stage: usize) -> usize {
        match (stage, self.model_type) {
            (0, _) => self.train.first_fixed_noises_ch,
            (_, ModelType::SinGan) => 3,
            (_, ModelType::PeSinGan) => 1,
        }
    }

    /// Pixels added to each side of the noise maps (`P` when noises are sampled padded, else 0).
    pub fn noise_padding(&self) -> usize {
        if self.train.fixed_noise_with_pad {
            self.head_padding()
        } else {
            0
        }
    }

    /// Checks the values that the model code relies on, including the upper bounds [`MAX_NUM_LAYERS`],
    /// [`MAX_KERNEL_SIZE`], [`MAX_CHANNELS`] and [`MAX_SPE_INIT_SIZE`].
    pub fn validate(&self) -> Result<()> {
        let g = &self.generator;
        let d = &self.discriminator;
        if g.kernel_size % 2 == 0 || g.kernel_size == 0 || d.kernel_size % 2 == 0 || d.kernel_size == 0 {
            return Err(Error::invalid(format!(
                "kernel_size must be odd, got generator {} and discriminator {}",
                g.kernel_size, d.kernel_size
            )));
        }
        if g.kernel_size > MAX_KERNEL_SIZE || d.kernel_size > MAX_KERNEL_SIZE {
            return Err(Error::invalid(format!(
                "kernel_size must be at most {MAX_KERNEL_SIZE}, got generator {} and discriminator {}",
                g.kernel_size, d.kernel_size
            )));
        }
        if g.num_layers < 2 || d.num_layers < 2 {
            return Err(Error::invalid("num_layers must be at least 2 (a head and a tail)"));
        }
        if g.num_layers > MAX_NUM_LAYERS || d.num_layers > MAX_NUM_LAYERS {
            return Err(Error::invalid(format!(
                "num_layers must be at most {MAX_NUM_LAYERS}, got generator {} and discriminator {}",
                g.num_layers, d.num_layers
            )));
        }
        self.validate_channels()?;
        if g.padding > (g.kernel_size - 1) / 2 {
            return Err(Error::invalid(format!(
                "generator padding {} is larger than (kernel_size - 1) / 2 = {}",
                g.padding,
                (g.kernel_size - 1) / 2
            )));
        }
        if g.base_channels == 0 || d.base_channels == 0 || g.max_channels == 0 || d.max_channels == 0 {
            return Err(Error::invalid("channel counts must be at least 1"));
        }
        if g.pad_at_head == (g.padding > 0) {
            return Err(Error::invalid(
                "set pad_at_head for valid convolutions (padding 0) and not for padded ones (padding 1)",
            ));
        }
        if g.interp_pad && !g.pad_at_head {
            return Err(Error::invalid("interp_pad needs pad_at_head"));
        }
        if self.train.fixed_noise_with_pad != g.noise_with_pad {
            return Err(Error::invalid("train.fixed_noise_with_pad must equal generator.noise_with_pad"));
        }
        let encoding_channels = g.positional_encoding.as_ref().map(|e| e.channels());
        match encoding_channels {
            Some(c) if c != g.first_stage_in_channels => {
                return Err(Error::invalid(format!(
                    "first_stage_in_channels is {} but the positional encoding has {c} channels",
                    g.first_stage_in_channels
                )))
            }
            None if g.first_stage_in_channels != 3 => {
                return Err(Error::invalid("first_stage_in_channels must be 3 without a positional encoding"))
            }
            _ => {}
        }
        if let Some(c) = encoding_channels {
            if self.train.first_fixed_noises_ch != 1 && self.train.first_fixed_noises_ch != c {
                return Err(Error::invalid(format!(
                    "first_fixed_noises_ch must be 1 or the encoding's {c} channels, got {}",
                    self.train.first_fixed_noises_ch
                )));
            }
        } else if self.train.first_fixed_noises_ch != 1 && self.train.first_fixed_noises_ch != 3 {
            return Err(Error::invalid("first_fixed_noises_ch must be 1 or 3 without a positional encoding"));
        }
        if let Some(encoding) = &g.positional_encoding {
            encoding.validate()?;
            if let EncodingConfig::Spe { init_size, .. } = encoding {
                if *init_size > MAX_SPE_INIT_SIZE {
                    return Err(Error::invalid(format!(
                        "SPE init_size must be at most {MAX_SPE_INIT_SIZE}, got {init_size}"
                    )));
                }
            }
        }
        if self.train.iters_per_scale == 0 || self.train.disc_steps == 0 || self.train.generator_steps == 0 {
            return Err(Error::invalid("iters_per_scale, disc_steps and generator_steps must be at least 1"));
        }
        self.train.validate_numbers()?;
        self.data.validate()?;
        Ok(())
    }

    /// Checks every channel count against 1 ..= [`MAX_CHANNELS`].
    fn validate_channels(&self) -> Result<()> {
        let g = &self.generator;
        let d = &self.discriminator;
        let counts = [
            ("generator.base_channels", g.base_channels),
            ("generator.min_feat_channels", g.min_feat_channels),
            ("generator.max_channels", g.max_channels),
            ("generator.first_stage_in_channels", g.first_stage_in_channels),
            ("discriminator.base_channels", d.base_channels),
            ("discriminator.min_feat_channels", d.min_feat_channels),
            ("discriminator.max_channels", d.max_channels),
            ("train.first_fixed_noises_ch", self.train.first_fixed_noises_ch),
        ];
        for (name, count) in counts {
            if count == 0 || count > MAX_CHANNELS {
                return Err(Error::invalid(format!("{name} must be between 1 and {MAX_CHANNELS}, got {count}")));
            }
        }
        if let Some(encoding) = &g.positional_encoding {
            let channels = encoding.channels();
            if channels > MAX_CHANNELS {
                return Err(Error::invalid(format!(
                    "the positional encoding has {channels} channels, more than {MAX_CHANNELS}"
                )));
            }
        }
        Ok(())
    }
}

impl TrainConfig {
    /// Checks the learning rates, Adam betas and loss weights: finite, and positive where zero or a
    /// negative value would stop or reverse training.
    fn validate_numbers(&self) -> Result<()> {
        let positive = [("lr_d", self.lr_d), ("lr_g", self.lr_g), ("lr_gamma", self.lr_gamma)];
        for (name, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(Error::invalid(format!("train.{name} must be a finite number above 0, got {value}")));
            }
        }
        let non_negative = [
            ("gp_weight", self.gp_weight),
            ("recon_weight", self.recon_weight),
            ("noise_weight_init", self.noise_weight_init),
        ];
        for (name, value) in non_negative {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Error::invalid(format!("train.{name} must be a finite number of at least 0, got {value}")));
            }
        }
        for (index, beta) in self.betas.iter().enumerate() {
            if !(0.0..1.0).contains(beta) {
                return Err(Error::invalid(format!("train.betas[{index}] must be in [0, 1), got {beta}")));
            }
        }
        Ok(())
    }
}

fn stage_channels(base: usize, max: usize, stage: usize) -> usize {
    let doublings = (stage / 4).min(16) as u32;
    (base << doublings).min(max)
}

