//! Writing a generated [`Canvas`] into a host image at a render scale and within a render window.
//!
//! OpenFX pixel coordinates have their origin at the bottom left and y grows upwards, and a render at
//! scale `s` addresses pixel `p` as the canonical interval `[p / s, (p + 1) / s)`. Each output pixel
//! is the area-weighted mean of the canvas pixels under that interval, so scale 1 copies the canvas
//! exactly and scale 0.5 averages 2 x 2 blocks anchored at the bottom left. A proxy render is thus the
//! full render filtered down, with the same noise and structure, never a different sample.

use std::ffi::c_void;

use openfx_sys::OfxRectI;

use crate::generate::Canvas;
use crate::host::{OfxError, OfxResult, STAT_ERR_UNSUPPORTED, STAT_ERR_VALUE};

/// Sample type of a host image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// 8-bit unsigned, 0 to 255: `round(v * 255)`, as the C API quantises.
    Byte,
    /// 32-bit float, 0.0 to 1.0.
    Float,
}

impl Depth {
    /// Parses the `kOfxImageEffectPropPixelDepth` value of an image.
    pub fn parse(value: &str) -> OfxResult<Self> {
        if value == crate::host::text(openfx_sys::kOfxBitDepthByte) {
            Ok(Depth::Byte)
        } else if value == crate::host::text(openfx_sys::kOfxBitDepthFloat) {
            Ok(Depth::Float)
        } else {
            Err(OfxError::new(
                STAT_ERR_UNSUPPORTED,
                format!("pixel depth {value} is not supported: pegan renders 8-bit (OfxBitDepthByte) and float images"),
            ))
        }
    }

    fn sample_bytes(self) -> usize {
        match self {
            Depth::Byte => 1,
            Depth::Float => 4,
        }
    }
}

/// Channels of a host image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Components {
    Rgba,
    Rgb,
}

impl Components {
    /// Parses the `kOfxImageEffectPropComponents` value of an image.
    pub fn parse(value: &str) -> OfxResult<Self> {
        if value == crate::host::text(openfx_sys::kOfxImageComponentRGBA) {
            Ok(Components::Rgba)
        } else if value == crate::host::text(openfx_sys::kOfxImageComponentRGB) {
            Ok(Components::Rgb)
        } else {
            Err(OfxError::new(
                STAT_ERR_UNSUPPORTED,
                format!("components {value} are not supported: pegan renders RGBA and RGB images"),
            ))
        }
    }

    fn count(self) -> usize {
        match self {
            Components::Rgba => 4,
            Components::Rgb => 3,
        }
    }
}

/// A host image as the render action receives it.
#[derive(Debug, Clone, Copy)]
pub struct ImageTarget {
    pub data: *mut c_void,
    /// Addressable pixels, in pixel coordinates at the render scale.
    pub bounds: OfxRectI,
    /// Bytes from one row to the row above it; negative for images stored top row first.
    pub row_bytes: isize,
    pub depth: Depth,
    pub components: Components,
}

impl ImageTarget {
    fn pixel_bytes(&self) -> usize {
        self.depth.sample_bytes() * self.components.count()
    }

    /// Checks the layout and returns the part of `window` that lies inside the bounds.
    fn checked_window(&self, window: OfxRectI) -> OfxResult<OfxRectI> {
        if self.data.is_null() {
            return Err(OfxError::new(STAT_ERR_VALUE, "the host passed an output image without pixel data"));
        }
        let bounds = self.bounds;
        let width = i64::from(bounds.x2) - i64::from(bounds.x1);
        let row = width.max(0).checked_mul(self.pixel_bytes() as i64);
        if row.is_none_or(|row| (self.row_bytes as i64).unsigned_abs() < row as u64) {
            return Err(OfxError::new(
                STAT_ERR_VALUE,
                format!(
                    "the output image's row bytes {} are fewer than its {width} pixels of {} bytes need",
                    self.row_bytes,
                    self.pixel_bytes()
                ),
            ));
        }
        Ok(OfxRectI {
            x1: window.x1.max(bounds.x1),
            y1: window.y1.max(bounds.y1),
            x2: window.x2.min(bounds.x2),
            y2: window.y2.min(bounds.y2),
        })
    }
}

/// Canvas pixels under one output pixel along one axis, with weights that sum to 1.
type Footprint = Vec<(usize, f32)>;

/// Computes the footprint of output pixels `first..last` along an axis of `len` canvas pixels at
/// `scale`. An output pixel entirely outside the canvas gets an empty footprint.
fn footprints(first: i32, last: i32, scale: f64, len: usize) -> Vec<Footprint> {
    (first..last)
        .map(|p| {
            let start = (f64::from(p) / scale).max(0.0);
            let end = (f64::from(p + 1) / scale).min(len as f64);
            if end <= start {
                return Vec::new();
            }
            let mut weights: Footprint = Vec::new();
            let mut i = start.floor() as usize;
            while (i as f64) < end && i < len {
                let overlap = end.min(i as f64 + 1.0) - start.max(i as f64);
                if overlap > 0.0 {
                    weights.push((i, overlap as f32));
                }
                i += 1;
            }
            let total: f32 = weights.iter().map(|&(_, weight)| weight).sum();
            for (_, weight) in &mut weights {
                *weight /= total;
            }
            weights
        })
        .collect()
}

/// Writes `canvas` into `target` for the render window at `scale` (x, y).
///
/// Pixels of the window that lie outside the canvas become transparent black; pixels outside the
/// window are left untouched. `aborted` is polled every 16 rows. Returns `Ok(false)` when it reported
/// an abort, leaving the image partly written.
pub fn write_window(
    canvas: &Canvas,
    scale: (f64, f64),
    window: OfxRectI,
    target: &ImageTarget,
    mut aborted: impl FnMut() -> bool,
) -> OfxResult<bool> {
    let (scale_x, scale_y) = scale;
    if !(scale_x.is_finite() && scale_x > 0.0 && scale_y.is_finite() && scale_y > 0.0) {
        return Err(OfxError::new(STAT_ERR_VALUE, format!("render scale {scale_x} x {scale_y} is not positive")));
    }
    let window = target.checked_window(window)?;
    if window.x2 <= window.x1 || window.y2 <= window.y1 {
        return Ok(true);
    }

    // Canvas rows count from the top, OpenFX rows from the bottom.
    let columns = footprints(window.x1, window.x2, scale_x, canvas.width);
    let rows_from_bottom = footprints(window.y1, window.y2, scale_y, canvas.height);
    let channels = target.components.count();
    let pixel_bytes = target.pixel_bytes();
    let mut row_bytes = vec![0u8; columns.len() * pixel_bytes];

    for (row_index, row_weights) in rows_from_bottom.iter().enumerate() {
        if row_index % 16 == 0 && aborted() {
            return Ok(false);
        }

        for (column_weights, pixel) in columns.iter().zip(row_bytes.chunks_exact_mut(pixel_bytes)) {
            let mut rgb = [0f32; 3];
            for &(y, weight_y) in row_weights {
                let canvas_row = canvas.height - 1 - y;
                for &(x, weight_x) in column_weights {
                    let value = canvas.pixel(x, canvas_row);
                    for (sum, sample) in rgb.iter_mut().zip(value) {
                        *sum += sample * (weight_y * weight_x);
                    }
                }
            }
            let covered = !row_weights.is_empty() && !column_weights.is_empty();
            let alpha = if covered { 1.0 } else { 0.0 };
            let samples = [rgb[0], rgb[1], rgb[2], alpha];
            for (slot, &value) in pixel.chunks_exact_mut(target.depth.sample_bytes()).zip(&samples[..channels]) {
                match target.depth {
                    Depth::Byte => slot[0] = (value.clamp(0.0, 1.0) * 255.0).round() as u8,
                    Depth::Float => slot.copy_from_slice(&value.to_ne_bytes()),
                }
            }
        }

        let y = window.y1 + row_index as i32;
        let offset = i64::from(y - target.bounds.y1) * target.row_bytes as i64
            + i64::from(window.x1 - target.bounds.x1) * pixel_bytes as i64;
        // SAFETY: checked_window keeps (x, y) inside the bounds, and the host guarantees that every
        // row of the bounds contains |row_bytes| >= width * pixel_bytes bytes at data + (y - y1) *
        // row_bytes, whatever the sign of row_bytes.
        unsafe {
            let destination = target.data.cast::<u8>().offset(offset as isize);
            std::ptr::copy_nonoverlapping(row_bytes.as_ptr(), destination, row_bytes.len());
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a 4 x 2 canvas whose red channel is 0.1 * (x + 4 * row), green 0.5 and blue 1 - red.
    fn canvas() -> Canvas {
        let (width, height) = (4, 2);
        let mut rgb = Vec::new();
        for row in 0..height {
            for x in 0..width {
                let red = 0.1 * (x + 4 * row) as f32;
                rgb.extend_from_slice(&[red, 0.5, 1.0 - red]);
            }
        }
        Canvas { width, height, rgb }
    }

    /// A host-style buffer: rows bottom first (positive row bytes) or top first (negative).
    struct Buffer {
        bytes: Vec<u8>,
        target: ImageTarget,
    }

    impl Buffer {
        fn new(bounds: OfxRectI, depth: Depth, components: Components, top_first: bool) -> Buffer {
            let stride = (bounds.x2 - bounds.x1) as usize * depth.sample_bytes() * components.count() + 8;
            let rows = (bounds.y2 - bounds.y1) as usize;
            let mut bytes = vec![0xAB; stride * rows];
            let (data, row_bytes) = if top_first {
                (unsafe { bytes.as_mut_ptr().add(stride * (rows - 1)) }, -(stride as isize))
            } else {
                (bytes.as_mut_ptr(), stride as isize)
            };
            let target = ImageTarget { data: data.cast(), bounds, row_bytes, depth, components };
            Buffer { bytes, target }
        }

        /// Returns pixel (x, y) as floats, reading bytes as 0-255 values.
        fn pixel(&self, x: i32, y: i32) -> Vec<f32> {
            let t = &self.target;
            let offset =
                (y - t.bounds.y1) as isize * t.row_bytes + ((x - t.bounds.x1) as usize * t.pixel_bytes()) as isize;
            let base = unsafe { t.data.cast::<u8>().offset(offset) };
            let start = unsafe { base.offset_from(self.bytes.as_ptr()) } as usize;
            let slice = &self.bytes[start..start + t.pixel_bytes()];
            match t.depth {
                Depth::Byte => slice.iter().map(|&b| f32::from(b)).collect(),
                Depth::Float => slice.chunks_exact(4).map(|s| f32::from_ne_bytes([s[0], s[1], s[2], s[3]])).collect(),
            }
        }
    }

    fn rect(x1: i32, y1: i32, x2: i32, y2: i32) -> OfxRectI {
        OfxRectI { x1, y1, x2, y2 }
    }

    #[test]
    fn scale_one_copies_rows_bottom_up() {
        let canvas = canvas();
        for top_first in [false, true] {
            let buffer = Buffer::new(rect(0, 0, 4, 2), Depth::Float, Components::Rgba, top_first);
            assert!(write_window(&canvas, (1.0, 1.0), rect(0, 0, 4, 2), &buffer.target, || false).unwrap());
            for y in 0..2 {
                for x in 0..4 {
                    let [r, g, b] = canvas.pixel(x as usize, 1 - y as usize);
                    assert_eq!(buffer.pixel(x, y), vec![r, g, b, 1.0], "pixel ({x}, {y}), top_first {top_first}");
                }
            }
        }
    }

    #[test]
    fn half_scale_averages_blocks() {
        let canvas = canvas();
        let buffer = Buffer::new(rect(0, 0, 2, 1), Depth::Float, Components::Rgb, false);
        write_window(&canvas, (0.5, 0.5), rect(0, 0, 2, 1), &buffer.target, || false).unwrap();
        // Pixel (1, 0) covers columns 2 and 3 of both rows: red (0.2 + 0.3 + 0.6 + 0.7) / 4.
        let pixel = buffer.pixel(1, 0);
        assert!((pixel[0] - 0.45).abs() < 1e-6, "{pixel:?}");
        assert!((pixel[1] - 0.5).abs() < 1e-6, "{pixel:?}");
        assert!((pixel[2] - 0.55).abs() < 1e-6, "{pixel:?}");
    }

    #[test]
    fn window_limits_the_written_pixels() {
        let canvas = canvas();
        let buffer = Buffer::new(rect(0, 0, 4, 2), Depth::Byte, Components::Rgba, true);
        write_window(&canvas, (1.0, 1.0), rect(1, 1, 3, 2), &buffer.target, || false).unwrap();
        assert_eq!(buffer.pixel(0, 1), vec![171.0; 4], "left of the window");
        assert_eq!(buffer.pixel(1, 0), vec![171.0; 4], "below the window");
        assert_eq!(buffer.pixel(3, 1), vec![171.0; 4], "right of the window");
        // Canvas row 0 is the top row, y = 1; red 0.1 quantises to round(25.5) = 26.
        assert_eq!(buffer.pixel(1, 1), vec![26.0, 128.0, 230.0, 255.0]);
    }

    #[test]
    fn pixels_outside_the_canvas_are_transparent() {
        let canvas = canvas();
        let buffer = Buffer::new(rect(-1, 0, 5, 2), Depth::Float, Components::Rgba, false);
        write_window(&canvas, (1.0, 1.0), rect(-1, 0, 5, 2), &buffer.target, || false).unwrap();
        assert_eq!(buffer.pixel(-1, 0), vec![0.0; 4]);
        assert_eq!(buffer.pixel(4, 1), vec![0.0; 4]);
        assert_eq!(buffer.pixel(0, 0)[3], 1.0);
    }

    #[test]
    fn abort_stops_before_writing() {
        let canvas = canvas();
        let buffer = Buffer::new(rect(0, 0, 4, 2), Depth::Float, Components::Rgba, false);
        let completed = write_window(&canvas, (1.0, 1.0), rect(0, 0, 4, 2), &buffer.target, || true).unwrap();
        assert!(!completed);
        assert!(buffer.bytes.iter().all(|&b| b == 0xAB));
    }

    #[test]
    fn short_rows_are_rejected() {
        let canvas = canvas();
        let mut buffer = Buffer::new(rect(0, 0, 4, 2), Depth::Float, Components::Rgba, false);
        buffer.target.row_bytes = 4 * 16 - 1;
        let error = write_window(&canvas, (1.0, 1.0), rect(0, 0, 4, 2), &buffer.target, || false).unwrap_err();
        assert!(error.message.contains("row bytes 63"), "{}", error.message);
    }

    #[test]
    fn unknown_depth_and_components_are_named() {
        assert!(Depth::parse("OfxBitDepthShort").unwrap_err().message.contains("OfxBitDepthShort"));
        assert!(Components::parse("OfxImageComponentAlpha").unwrap_err().message.contains("OfxImageComponentAlpha"));
    }
}
