//! The SinGAN image pyramid.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Settings of the image pyramid (`min_size`, `max_size`, `scale_factor_init` in the reference dataset config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PyramidConfig {
    /// Short side of the coarsest stage, in pixels.
    pub min_size: usize,
    /// Long side above which the number of stages stops growing, in pixels.
    pub max_size: usize,
    /// Initial scale factor between stages (0.75 in every reference config).
    pub scale_factor_init: f64,
    /// Shrink the image so that its long side is at most `max_size` before building the pyramid, as the
    /// official SinGAN does. False (the MMGeneration rule) keeps the original size as the finest stage.
    #[serde(default)]
    pub resize_to_max_size: bool,
}

impl PyramidConfig {
    pub fn validate(&self) -> Result<()> {
        if self.min_size < 2 || self.max_size < self.min_size {
            return Err(Error::invalid(format!(
                "pyramid sizes must satisfy 2 <= min_size <= max_size, got min_size {} and max_size {}",
                self.min_size, self.max_size
            )));
        }
        if !(self.scale_factor_init > 0.0 && self.scale_factor_init < 1.0) {
            return Err(Error::invalid(format!(
                "scale_factor_init must be in (0, 1), got {}",
                self.scale_factor_init
            )));
        }
        Ok(())
    }
}

/// Stage sizes of the SinGAN image pyramid for one training image, as MMGeneration's `create_real_pyramid`
/// computes them.
///
/// Stage `s` is the original image rescaled by `scale_factor^(num_scales − s)`, with each side rounded by
/// `int(side × factor + 0.5)` (mmcv's `rescale_size`). Every stage is cut from the original image, so for an
/// image whose long side exceeds `max_size` the finest stage keeps the original size and `max_size` only
/// shrinks `scale_factor`. The official SinGAN instead shrinks the image to `max_size` first.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePyramid {
    /// Index `S` of the finest stage, so the pyramid has `S + 1` stages `0 ..= S`.
    pub num_scales: usize,
    /// Factor between the sides of consecutive stages, in `(0, 1]`.
    pub scale_factor: f64,
    /// `(height, width)` of every stage in pixels, stage 0 (the coarsest) first.
    pub sizes: Vec<(usize, usize)>,
}

impl ScalePyramid {
    /// Plans the stages for an image of `height × width` pixels, in float64 like the reference.
    ///
    /// Errors: an invalid `config`, a short side below `min_size`, or an aspect ratio so extreme that
    /// `max_size` leaves no stage above the coarsest one or no pixel on the short side.
    pub fn plan(height: usize, width: usize, config: &PyramidConfig) -> Result<ScalePyramid> {
        config.validate()?;
        let short = height.min(width);
        let long = height.max(width);
        if short < config.min_size {
            return Err(Error::invalid(format!(
                "image of {height} × {width} pixels (height × width) is too small for the pyramid: its short side \
                 {short} is below min_size {}; use an image whose short side is at least {} pixels, or lower min_size",
                config.min_size, config.min_size
            )));
        }

        let min_size = config.min_size as f64;
        let max_size = config.max_size as f64;
        let log_init = config.scale_factor_init.ln();

        // Stages needed to shrink the short side to min_size, and stages "saved" because the long side exceeds
        // max_size. Their difference is S.
        let raw_stages = ((min_size / short as f64).ln() / log_init).ceil() as i64 + 1;
        let stages_to_stop = ((max_size.min(long as f64) / long as f64).ln() / log_init).ceil() as i64;
        let stop_scale = raw_stages - stages_to_stop;
        if stop_scale < 1 {
            return Err(Error::invalid(format!(
                "image of {height} × {width} pixels (height × width) leaves no pyramid stage above the coarsest \
                 (num_scales would be {stop_scale}), because its long side exceeds max_size {} by more than its short \
                 side exceeds min_size {}; raise max_size to at least {long} or crop the image to a less elongated shape",
                config.max_size, config.min_size
            )));
        }

        // The factor is chosen so that the image shrunk to max_size would reach min_size at stage 0.
        let scale1 = (max_size / long as f64).min(1.0);
        let short_at_max = rescaled_side(height, scale1).min(rescaled_side(width, scale1));
        if short_at_max == 0 {
            return Err(Error::invalid(format!(
                "image of {height} × {width} pixels (height × width) has a short side of 0 pixels after scaling its \
                 long side to max_size {}; raise max_size to at least {long} or crop the image",
                config.max_size
            )));
        }
        let scale_factor = (min_size / short_at_max as f64).powf(1.0 / stop_scale as f64);
        if scale_factor > 1.0 {
            return Err(Error::invalid(format!(
                "image of {height} × {width} pixels (height × width) would need upscaling between pyramid stages \
                 (scale factor {scale_factor}), because max_size {} shrinks its short side below min_size {}; \
                 raise max_size to at least {long} or crop the image",
                config.max_size, config.min_size
            )));
        }

        let num_scales = stop_scale as usize;
        let mut sizes = Vec::with_capacity(num_scales + 1);
        for stage in 0..=num_scales {
            let factor = scale_factor.powf((num_scales - stage) as f64);
            let size = (rescaled_side(height, factor), rescaled_side(width, factor));
            if size.0 == 0 || size.1 == 0 {
                return Err(Error::invalid(format!(
                    "pyramid stage {stage} of a {height} × {width} image would be {} × {} pixels; \
                     use a less elongated image or raise min_size",
                    size.0, size.1
                )));
            }
            sizes.push(size);
        }
        Ok(ScalePyramid {
            num_scales,
            scale_factor,
            sizes,
        })
    }

    /// Builds every stage from the original `height × width` HWC BGR `uint8` image, stage 0 first.
    ///
    /// Each stage is resized from the original with [`resize_linear_u8`], so a stage of the original size is a
    /// copy. The image should have the size the pyramid was planned for; another size is resized to the
    /// planned stage sizes all the same.
    ///
    /// # Panics
    /// If `image_bgr.len()` is not `height × width × 3`, or the image is empty.
    pub fn build_levels(&self, image_bgr: &[u8], height: usize, width: usize) -> Vec<Vec<u8>> {
        self.sizes
            .iter()
            .map(|&(out_height, out_width)| resize_linear_u8(image_bgr, height, width, 3, out_height, out_width))
            .collect()
    }
}

/// mmcv's `rescale_size` rule for one side: `int(side × factor + 0.5)`.
fn rescaled_side(side: usize, factor: f64) -> usize {
    (side as f64 * factor + 0.5) as usize
}

/// Resizes an HWC `uint8` image with OpenCV's `cv2.resize(..., INTER_LINEAR)`, bit for bit on downscaling.
///
/// This is OpenCV 4.x's fixed-point path for 8-bit images: half-pixel source coordinates rounded to float32,
/// 11-bit weights, an integer horizontal pass, and a vertical pass with two truncating shifts. Channels are
/// independent. An output of the input size returns a copy, and an output with a zero side is empty.
/// Upscaling runs the same arithmetic but may differ from OpenCV by one grey level in a few values; the
/// pyramid only downscales.
///
/// # Panics
/// If `src.len()` is not `height × width × channels`, or the input is empty while the output is not.
pub fn resize_linear_u8(
    src: &[u8],
    height: usize,
    width: usize,
    channels: usize,
    out_height: usize,
    out_width: usize,
) -> Vec<u8> {
    let expected_len = height.checked_mul(width).and_then(|n| n.checked_mul(channels));
    assert!(
        expected_len == Some(src.len()),
        "image buffer has {} bytes but {height} × {width} × {channels} (height × width × channels) needs {:?}",
        src.len(),
        expected_len
    );
    if out_height == 0 || out_width == 0 || channels == 0 {
        return Vec::new();
    }
    assert!(
        height > 0,
        "cannot resize an image of height 0 to {out_height} × {out_width}"
    );
    assert!(
        width > 0,
        "cannot resize an image of width 0 to {out_height} × {out_width}"
    );
    if (out_height, out_width) == (height, width) {
        return src.to_vec();
    }

    let columns = LinearTaps::new(width, out_width);
    let rows = LinearTaps::new(height, out_height);

    // Horizontal pass over every source row: 0 ..= 255 × 2048, so i32 is wide enough.
    let out_row_len = out_width * channels;
    let mut horizontal = vec![0i32; height * out_row_len];
    for (src_row, dst_row) in src
        .chunks_exact(width * channels)
        .zip(horizontal.chunks_exact_mut(out_row_len))
    {
        for d in 0..out_width {
            let left = columns.first[d] * channels;
            let right = columns.second[d] * channels;
            for ch in 0..channels {
                dst_row[d * channels + ch] = columns.first_weight[d] * i32::from(src_row[left + ch])
                    + columns.second_weight[d] * i32::from(src_row[right + ch]);
            }
        }
    }

    // Vertical pass. Shifting each product by 4 and then 16 mirrors OpenCV's SIMD code, which multiplies
    // 16-bit values and keeps the high half. Rounding the exact sum once does not reproduce OpenCV.
    let mut out = vec![0u8; out_height * out_row_len];
    for (r, dst_row) in out.chunks_exact_mut(out_row_len).enumerate() {
        let top = &horizontal[rows.first[r] * out_row_len..][..out_row_len];
        let bottom = &horizontal[rows.second[r] * out_row_len..][..out_row_len];
        let (b0, b1) = (rows.first_weight[r], rows.second_weight[r]);
        for ((value, &t), &b) in dst_row.iter_mut().zip(top).zip(bottom) {
            let sum = ((b0 * (t >> 4)) >> 16) + ((b1 * (b >> 4)) >> 16);
            *value = ((sum + 2) >> 2).clamp(0, 255) as u8;
        }
    }
    out
}

/// Two-tap source indices and 11-bit fixed-point weights along one axis, as OpenCV's `resize` sets them up.
struct LinearTaps {
    first: Vec<usize>,
    second: Vec<usize>,
    first_weight: Vec<i32>,
    second_weight: Vec<i32>,
}

impl LinearTaps {
    /// Weight of a whole pixel: 2^11.
    const ONE: f32 = 2048.0;

    fn new(in_len: usize, out_len: usize) -> LinearTaps {
        // OpenCV derives the scale as 1 / (out / in) in float64 and rounds each coordinate to float32.
        let scale = 1.0 / (out_len as f64 / in_len as f64);
        let last = in_len - 1;
        let mut taps = LinearTaps {
            first: Vec::with_capacity(out_len),
            second: Vec::with_capacity(out_len),
            first_weight: Vec::with_capacity(out_len),
            second_weight: Vec::with_capacity(out_len),
        };
        for d in 0..out_len {
            let x = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let floor = x.floor();
            let mut fraction = x - floor;
            let mut index = floor as i64;
            if index < 0 {
                index = 0;
                fraction = 0.0;
            }
            if index >= last as i64 {
                index = last as i64;
                fraction = 0.0;
            }
            let index = index as usize;
            taps.first.push(index);
            taps.second.push((index + 1).min(last));
            // OpenCV rounds both weights separately (`saturate_cast<short>`, ties to even).
            taps.first_weight
                .push(((1.0 - fraction) * Self::ONE).round_ties_even() as i32);
            taps.second_weight.push((fraction * Self::ONE).round_ties_even() as i32);
        }
        taps
    }
}
