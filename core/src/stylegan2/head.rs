//! The input of the synthesis network: a learned constant, a Cartesian spatial grid (CSG) or a
//! sinusoidal positional encoding (SPE), sized by the chosen scale.
//!
//! The chosen scale `(ch, cw)` adds `ch` rows and `cw` columns to the head, and every block doubles the
//! side, so an MS-PIE generator built for 256 px produces `(4 + ch)·64 × (4 + cw)·64` images.

use candle_core::{DType, Device, Tensor, Var};

use crate::encoding::PositionalEncoding;
use crate::error::{Error, Result};
use crate::resample::{resize, ResizeKernel};
use crate::stylegan2::config::GeneratorConfig;
use crate::stylegan2::params::{Init, ParamPath};

/// Bilinear interpolation with `align_corners=True`, the only resize of the MS-PIE generator.
pub const BILINEAR: ResizeKernel = ResizeKernel::Bilinear { align_corners: true };

/// Maximum chosen scale per axis, which bounds the image a caller can request (side `(4 + 64)·out_size/4`).
pub const MAX_CHOSEN_SCALE: usize = 64;

/// Rows and columns added to the head grid (`chosen_scale` of the reference). An integer `cs` means `(cs, cs)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ChosenScale {
    /// Rows added to the head grid.
    pub height: usize,
    /// Columns added to the head grid.
    pub width: usize,
}

impl ChosenScale {
    pub fn new(height: usize, width: usize) -> Self {
        ChosenScale { height, width }
    }

    pub fn is_zero(&self) -> bool {
        self.height == 0 && self.width == 0
    }

    /// Checks both axes against [`MAX_CHOSEN_SCALE`].
    pub fn validate(&self) -> Result<()> {
        if self.height > MAX_CHOSEN_SCALE || self.width > MAX_CHOSEN_SCALE {
            return Err(Error::invalid(format!(
                "chosen scale {}x{} (columns x rows) is out of range: each must be 0..={MAX_CHOSEN_SCALE}",
                self.width, self.height
            )));
        }
        Ok(())
    }
}

impl From<usize> for ChosenScale {
    fn from(cs: usize) -> Self {
        ChosenScale { height: cs, width: cs }
    }
}

impl From<(usize, usize)> for ChosenScale {
    fn from((height, width): (usize, usize)) -> Self {
        ChosenScale { height, width }
    }
}

/// Input of the synthesis network: a learned constant or a positional-encoding grid.
#[derive(Debug, Clone)]
pub enum GeneratorHead {
    /// `constant_input.input` of shape (1, C(4), s, s) with `s = size`, repeated over the batch and resized
    /// bilinearly to `(s + ch, s + cw)` when the chosen scale is not zero.
    Constant { input: Var, size: usize },
    /// A CSG or SPE grid at `base + chosen scale`, evaluated there or (with `interpolate`) evaluated at
    /// `base` and resized bilinearly. It carries no parameters and no gradient.
    Encoding { encoding: PositionalEncoding, base: (usize, usize), interpolate: bool },
}

impl GeneratorHead {
    /// Builds the head of `config`. The constant input is created under `path` as `constant_input.input`.
    pub fn new(config: &GeneratorConfig, path: &ParamPath) -> Result<Self> {
        match &config.head_pos_encoding {
            None => {
                let (size, _) = config.head_base_size();
                let channels = config.channels.width(4);
                let input =
                    path.pp("constant_input").param("input", &[1, channels, size, size], Init::Normal { std: 1.0 })?;
                Ok(GeneratorHead::Constant { input, size })
            }
            Some(encoding) => {
                encoding.validate()?;
                Ok(GeneratorHead::Encoding {
                    encoding: PositionalEncoding::new(encoding),
                    base: config.head_base_size(),
                    interpolate: config.interp_head,
                })
            }
        }
    }

    /// Returns the channels of the head tensor.
    pub fn channels(&self) -> usize {
        match self {
            GeneratorHead::Constant { input, .. } => input.dims()[1],
            GeneratorHead::Encoding { encoding, .. } => encoding.channels(),
        }
    }

    /// Returns the side lengths (height, width) of the head tensor at `scale`.
    pub fn size(&self, scale: ChosenScale) -> (usize, usize) {
        let (h, w) = match self {
            GeneratorHead::Constant { size, .. } => (*size, *size),
            GeneratorHead::Encoding { base, .. } => *base,
        };
        (h + scale.height, w + scale.width)
    }

    /// Builds the head tensor `(batch, channels, H, W)` at `scale`, in `dtype` on `device`.
    ///
    /// The constant head keeps its gradient, and the grids are constants.
    pub fn forward(
        &self,
        batch: usize,
        scale: impl Into<ChosenScale>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let scale = scale.into();
        let _span = tracing::trace_span!("head").entered();
        if batch == 0 {
            return Err(Error::invalid("the generator head needs a batch of at least one sample"));
        }
        scale.validate()?;

        let (h, w) = self.size(scale);
        let single = match self {
            GeneratorHead::Constant { input, .. } => {
                let input = input.as_tensor();
                if scale.is_zero() {
                    input.clone()
                } else {
                    resize(input, h, w, BILINEAR)?
                }
            }
            GeneratorHead::Encoding { encoding, base, interpolate } => {
                // The grids are computed in float32, as the reference does, and cast afterwards.
                let grid = if *interpolate {
                    let grid = encoding.grid(1, base.0, base.1, device)?;
                    resize(&grid, h, w, BILINEAR)?
                } else {
                    encoding.grid(1, h, w, device)?
                };
                grid.to_dtype(dtype)?
            }
        };
        Ok(single.repeat((batch, 1, 1, 1))?)
    }
}
