//! Configuration of the StyleGAN2 / MS-PIE networks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::encoding::EncodingConfig;
use crate::error::{Error, Result};

/// Channel width `C(r)` per resolution, as MMGeneration's StyleGAN2 generators and discriminators size their layers.
///
/// The default rule is 512 up to 32 px, then `256·m` at 64, `128·m` at 128, `64·m` at 256, `32·m` at 512 and
/// `16·m` at 1024, with `m` the channel multiplier. Reduced models (tests, CPU training presets) override
/// entries with an explicit map from resolution to width.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelTable {
    /// `channel_multiplier` of the reference: 2 for most configs, 1 for config g.
    pub multiplier: usize,
    /// Explicit widths that replace the rule, keyed by resolution (a power of two from 4 to 1024).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<usize, usize>,
}

/// Maximum width of any layer, which bounds the memory that a malformed configuration can request.
pub const MAX_CHANNELS: usize = 4096;

impl ChannelTable {
    /// Creates the reference table for `multiplier`, without overrides.
    pub fn with_multiplier(multiplier: usize) -> Self {
        ChannelTable { multiplier, overrides: BTreeMap::new() }
    }

    /// Returns the width at `resolution` (4, 8, …, 1024): the override if there is one, else the reference rule.
    pub fn width(&self, resolution: usize) -> usize {
        if let Some(&w) = self.overrides.get(&resolution) {
            return w;
        }

        let m = self.multiplier;
        match resolution {
            0..=32 => 512,
            64 => 256 * m,
            128 => 128 * m,
            256 => 64 * m,
            512 => 32 * m,
            _ => 16 * m,
        }
    }

    /// Checks the multiplier and every override against [`MAX_CHANNELS`].
    pub fn validate(&self) -> Result<()> {
        // Written as a division so that a huge multiplier from a file cannot overflow `512 · multiplier`.
        let max_multiplier = MAX_CHANNELS / 512;
        if self.multiplier == 0 || self.multiplier > max_multiplier {
            return Err(Error::invalid(format!(
                "channel multiplier {} is out of range 1..={max_multiplier}: use 1 or 2 as the reference configs do",
                self.multiplier
            )));
        }
        for (&r, &w) in &self.overrides {
            if !r.is_power_of_two() || !(4..=1024).contains(&r) {
                return Err(Error::invalid(format!(
                    "channel table entry for resolution {r} is invalid: use a power of two from 4 to 1024"
                )));
            }
            if w == 0 || w > MAX_CHANNELS {
                return Err(Error::invalid(format!(
                    "channel table width {w} at resolution {r} is out of range 1..={MAX_CHANNELS}"
                )));
            }
        }
        Ok(())
    }
}

/// Maximum `out_size` of a generator, in pixels.
pub const MAX_OUT_SIZE: usize = 1024;

/// Maximum `style_channels`.
pub const MAX_STYLE_CHANNELS: usize = 2048;

/// Maximum number of mapping layers (`num_mlps`).
pub const MAX_MAPPING_LAYERS: usize = 16;

/// Maximum side of the head grid (`head_pos_size`) at chosen scale 0.
pub const MAX_HEAD_SIZE: usize = 64;

/// Maximum interpolation padding (`interp_pad`), in pixels.
pub const MAX_INTERP_PAD: usize = 16;

/// Maximum SPE table size (`init_size`), in rows.
pub const MAX_SPE_INIT_SIZE: usize = 4096;

/// Maximum number of trainable parameters of a generator configuration (2^28, 1 GiB in float32).
/// The reference generators have about 30 million.
pub const MAX_GENERATOR_PARAMETERS: usize = 1 << 28;

/// Reference generator class that a configuration describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GeneratorKind {
    /// `MSStyleGANv2Generator`: samples at any chosen scale.
    #[serde(rename = "mspie", alias = "ms_pie")]
    MsPie,
    /// `StyleGANv2Generator` (configs a and b): learned 4×4 constant, transposed-conv upsampling, one scale.
    Baseline,
}

/// Generator settings, named as the arguments of MMGeneration's `MSStyleGANv2Generator`.
///
/// The blur kernel is always `[1, 3, 3, 1]` and the image has 3 channels (BGR), as in every reference config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Generator class.
    pub kind: GeneratorKind,
    /// Image side at chosen scale 0, in pixels: a power of two. The model has `log2(out_size) − 2` blocks.
    pub out_size: usize,
    /// Width of `z`, `w` and every style vector (512 in every reference config).
    pub style_channels: usize,
    /// Number of equalized linear layers of the mapping network (8 in the reference).
    pub num_mlps: usize,
    /// Learning-rate multiplier of the mapping network's weights and biases (0.01 in the reference).
    pub lr_mlp: f64,
    /// Channel width per resolution.
    pub channels: ChannelTable,
    /// Positional encoding fed to `conv1`, or `null` for the learned constant input.
    pub head_pos_encoding: Option<EncodingConfig>,
    /// Side lengths (height, width) of the CSG or SPE head grid at chosen scale 0. The constant head ignores them.
    pub head_pos_size: [usize; 2],
    /// Whether the CSG or SPE grid is built at `head_pos_size` and resized bilinearly to the chosen scale,
    /// instead of being evaluated at the larger size. No effect on the constant head.
    pub interp_head: bool,
    /// Whether every 3×3 convolution is valid (padding 0). The constant head is then 6×6 instead of 4×4.
    pub no_pad: bool,
    /// Extra pixels of the bilinear resize in the upsampling convs, which resizes a side `r` to `2r + interp_pad`.
    /// `null` means 0.
    pub interp_pad: Option<usize>,
    /// Whether the upsampling convs convolve first and resize after (configs c–g) instead of resizing first.
    pub up_after_conv: bool,
    /// Whether the upsampling convs use a bilinear resize (`align_corners=True`) and a stride-1 conv instead of
    /// a transposed conv followed by a blur.
    pub deconv2conv: bool,
    /// Probability of style mixing per training batch (0.9 in the reference).
    pub mix_prob: f64,
}

impl GeneratorConfig {
    /// Returns the number of synthesis blocks, each doubling the side: `log2(out_size) − 2`.
    pub fn num_blocks(&self) -> usize {
        (self.out_size.max(4).trailing_zeros() as usize).saturating_sub(2)
    }

    /// Returns the number of style rows of the W+ latent, `L = 2·log2(out_size) − 2`.
    pub fn num_latents(&self) -> usize {
        2 * self.num_blocks() + 2
    }

    /// Returns the pixels that a 3×3 style conv removes from each side length: 2 with `no_pad`, else 0.
    pub fn conv_shrink(&self) -> usize {
        if self.no_pad {
            2
        } else {
            0
        }
    }

    /// Returns the zero padding of the 3×3 style convs: 0 with `no_pad`, else 1.
    pub fn conv_padding(&self) -> usize {
        if self.no_pad {
            0
        } else {
            1
        }
    }

    /// Returns the side lengths of the head tensor at chosen scale 0: the constant's size (4, or 6 with `no_pad`) or
    /// `head_pos_size`.
    pub fn head_base_size(&self) -> (usize, usize) {
        match self.head_pos_encoding {
            None => {
                let s = 4 + self.conv_shrink();
                (s, s)
            }
            Some(_) => (self.head_pos_size[0], self.head_pos_size[1]),
        }
    }

    /// Returns the channels of the head tensor: `C(4)` for the constant, 2 for the CSG, `2·embedding_dim` for the SPE.
    pub fn head_channels(&self) -> usize {
        match &self.head_pos_encoding {
            None => self.channels.width(4),
            Some(encoding) => encoding.channels(),
        }
    }

    /// Checks every value that sizes a tensor, so that a malformed file cannot request absurd memory,
    /// and the combinations that the synthesis network relies on.
    pub fn validate(&self) -> Result<()> {
        self.channels.validate()?;
        if !self.out_size.is_power_of_two() || !(8..=MAX_OUT_SIZE).contains(&self.out_size) {
            return Err(Error::invalid(format!(
                "generator out_size {} is invalid: use a power of two from 8 to {MAX_OUT_SIZE}",
                self.out_size
            )));
        }
        if !(1..=MAX_STYLE_CHANNELS).contains(&self.style_channels) {
            return Err(Error::invalid(format!(
                "style_channels {} is out of range 1..={MAX_STYLE_CHANNELS}",
                self.style_channels
            )));
        }
        if !(1..=MAX_MAPPING_LAYERS).contains(&self.num_mlps) {
            return Err(Error::invalid(format!("num_mlps {} is out of range 1..={MAX_MAPPING_LAYERS}", self.num_mlps)));
        }
        if !(self.lr_mlp.is_finite() && self.lr_mlp > 0.0 && self.lr_mlp <= 1.0) {
            return Err(Error::invalid(format!(
                "lr_mlp {} is invalid: use a learning-rate multiplier in (0, 1], 0.01 in the reference",
                self.lr_mlp
            )));
        }
        if !(0.0..=1.0).contains(&self.mix_prob) {
            return Err(Error::invalid(format!(
                "mix_prob {} is out of range: use a probability in [0, 1], 0.9 in the reference",
                self.mix_prob
            )));
        }
        for side in self.head_pos_size {
            if !(1..=MAX_HEAD_SIZE).contains(&side) {
                return Err(Error::invalid(format!(
                    "head_pos_size {:?} is out of range: each side must be 1..={MAX_HEAD_SIZE}",
                    self.head_pos_size
                )));
            }
        }
        if let Some(pad) = self.interp_pad {
            if pad > MAX_INTERP_PAD {
                return Err(Error::invalid(format!("interp_pad {pad} is out of range 0..={MAX_INTERP_PAD}")));
            }
        }

        self.validate_encoding()?;
        self.validate_kind()?;
        self.validate_sizes()?;

        let parameters = self.num_parameters();
        if parameters > MAX_GENERATOR_PARAMETERS {
            return Err(Error::invalid(format!(
                "this generator configuration has {parameters} parameters, more than the limit of \
                 {MAX_GENERATOR_PARAMETERS}: reduce the channel table or style_channels"
            )));
        }
        Ok(())
    }

    fn validate_encoding(&self) -> Result<()> {
        let Some(encoding) = &self.head_pos_encoding else {
            return Ok(());
        };
        if let EncodingConfig::Spe { embedding_dim, init_size, .. } = encoding {
            // Compared by division so that a huge `embedding_dim` from a file cannot overflow `2 · embedding_dim`.
            if *embedding_dim > MAX_CHANNELS / 2 {
                return Err(Error::invalid(format!(
                    "SPE embedding_dim {embedding_dim} gives more than {MAX_CHANNELS} head channels: use at most {}",
                    MAX_CHANNELS / 2
                )));
            }
            if *init_size > MAX_SPE_INIT_SIZE {
                return Err(Error::invalid(format!(
                    "SPE init_size {init_size} is out of range: use at most {MAX_SPE_INIT_SIZE} rows (256 in the \
                     reference)"
                )));
            }
        }
        encoding.validate()
    }

    fn validate_kind(&self) -> Result<()> {
        if self.kind != GeneratorKind::Baseline {
            return Ok(());
        }
        if self.head_pos_encoding.is_some()
            || self.no_pad
            || self.interp_pad.is_some()
            || self.deconv2conv
            || self.up_after_conv
        {
            return Err(Error::invalid(
                "a baseline generator has a constant head, zero padding and transposed-conv upsampling: set \
                 head_pos_encoding to null, no_pad, deconv2conv and up_after_conv to false and interp_pad to null",
            ));
        }
        Ok(())
    }

    /// Checks that `conv1` yields 4×4 at chosen scale 0 and that every block doubles the side exactly,
    /// which the ToRGB skip upsampler (always ×2) needs.
    fn validate_sizes(&self) -> Result<()> {
        let (h, w) = self.head_base_size();
        let shrink = self.conv_shrink();
        // NOTE: the reference also accepts other head sizes, which give images of side
        // (head − shrink)·out_size/4 at chosen scale 0. This port rejects them so that out_size keeps its meaning.
        if (h.checked_sub(shrink), w.checked_sub(shrink)) != (Some(4), Some(4)) {
            return Err(Error::invalid(format!(
                "head_pos_size {:?} gives a conv1 output of {}×{} at chosen scale 0, but the model needs 4×4: \
                 use [{s}, {s}]",
                self.head_pos_size,
                h.saturating_sub(shrink),
                w.saturating_sub(shrink),
                s = 4 + shrink
            )));
        }
        if !self.deconv2conv && self.interp_pad.is_some() {
            return Err(Error::invalid(
                "interp_pad needs deconv2conv: the transposed-conv upsampling has no interpolation step, so set it \
                 to null",
            ));
        }
        if !self.deconv2conv && self.no_pad {
            return Err(Error::invalid(
                "no_pad needs deconv2conv: the transposed-conv upsampling cannot keep the block sizes without padding",
            ));
        }
        if self.deconv2conv {
            // Side after a block of input side r: 2r + delta, where `delta` must be 0.
            let pad = self.interp_pad.unwrap_or(0) as i64;
            let shrink = shrink as i64;
            let delta = if self.up_after_conv { pad - 3 * shrink } else { pad - 2 * shrink };
            if delta != 0 {
                return Err(Error::invalid(format!(
                    "no_pad {}, interp_pad {:?} and up_after_conv {} make every block output 2r{delta:+} pixels \
                     instead of 2r: use interp_pad {} for this combination",
                    self.no_pad,
                    self.interp_pad,
                    self.up_after_conv,
                    if self.up_after_conv { 3 * shrink } else { 2 * shrink }
                )));
            }
        }
        Ok(())
    }

    /// Counts the trainable parameters, without buffers such as the noise maps and FIR kernels.
    pub fn num_parameters(&self) -> usize {
        let c = self.style_channels;
        let mapping = self.num_mlps * (c * c + c);
        let constant = if self.head_pos_encoding.is_none() {
            let (h, w) = self.head_base_size();
            self.channels.width(4) * h * w
        } else {
            0
        };
        // weight + style linear + style bias + noise strength + activation bias.
        let style_conv = |cin: usize, cout: usize| cout * cin * 9 + cin * c + cin + 1 + cout;
        // weight + style linear + style bias + output bias.
        let to_rgb = |cin: usize| 3 * cin + cin * c + cin + 3;

        let c4 = self.channels.width(4);
        let mut total = mapping + constant + style_conv(self.head_channels(), c4) + to_rgb(c4);
        for b in 0..self.num_blocks() {
            let cin = self.channels.width(1 << (b + 2));
            let cout = self.channels.width(1 << (b + 3));
            total += style_conv(cin, cout) + style_conv(cout, cout) + to_rgb(cout);
        }
        total
    }

    /// Returns the built-in preset `name` (see [`GENERATOR_PRESETS`]).
    pub fn preset(name: &str) -> Result<Self> {
        let text = GENERATOR_PRESETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t).ok_or_else(|| {
            let names: Vec<&str> = GENERATOR_PRESETS.iter().map(|(n, _)| *n).collect();
            Error::invalid(format!("unknown StyleGAN2 preset '{name}': use one of {}", names.join(", ")))
        })?;
        Self::from_preset_json(text).map_err(|e| Error::invalid(format!("built-in preset '{name}': {e}")))
    }

    /// Parses the `"generator"` object of a preset file (other top-level objects are ignored) and validates it.
    pub fn from_preset_json(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::invalid(format!("invalid StyleGAN2 config JSON: {e}")))?;
        let generator = value.get("generator").ok_or_else(|| {
            Error::invalid("StyleGAN2 config has no \"generator\" object: put the generator settings under that key")
        })?;
        Self::from_value(generator.clone())
    }

    /// Parses a generator configuration object and validates it.
    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        let config: GeneratorConfig = serde_json::from_value(value)
            .map_err(|e| Error::invalid(format!("invalid StyleGAN2 generator config: {e}")))?;
        config.validate()?;
        Ok(config)
    }
}

/// Built-in presets: configs a–k and the 256–896 and 256–1024 models of MMGeneration's
/// `configs/positional_encoding_in_gans/` (generator part), plus two reduced models for the CPU.
///
/// `tiny` has the shapes of the reduced reference-vector model (out 32, style 64, widths 64/48/32/24,
/// SPE dim 32, config-f options) and serves tests. `small` is a wider out-32 model for CPU training.
/// Both produce 32, 48 and 64 px images at chosen scales 0, 2 and 4.
pub const GENERATOR_PRESETS: [(&str, &str); 15] = [
    ("config-a", include_str!("../../presets/stylegan2/config-a.json")),
    ("config-b", include_str!("../../presets/stylegan2/config-b.json")),
    ("config-c", include_str!("../../presets/stylegan2/config-c.json")),
    ("config-d", include_str!("../../presets/stylegan2/config-d.json")),
    ("config-e", include_str!("../../presets/stylegan2/config-e.json")),
    ("config-f", include_str!("../../presets/stylegan2/config-f.json")),
    ("config-g", include_str!("../../presets/stylegan2/config-g.json")),
    ("config-h", include_str!("../../presets/stylegan2/config-h.json")),
    ("config-i", include_str!("../../presets/stylegan2/config-i.json")),
    ("config-j", include_str!("../../presets/stylegan2/config-j.json")),
    ("config-k", include_str!("../../presets/stylegan2/config-k.json")),
    ("config-f-256-896", include_str!("../../presets/stylegan2/config-f-256-896.json")),
    ("config-f-256-1024", include_str!("../../presets/stylegan2/config-f-256-1024.json")),
    ("tiny", include_str!("../../presets/stylegan2/tiny.json")),
    ("small", include_str!("../../presets/stylegan2/small.json")),
];
