//! Image input and output at the library boundary: files, caller buffers and model tensors.
//!
//! Inside the library an image is HWC `uint8` in BGR order, which is what `mmcv.imread` (OpenCV `imread` with
//! the colour flag) returns in the reference. Inputs are converted to that form as follows:
//! - grey images become three equal channels;
//! - an alpha channel is kept apart in [`LoadedImage::alpha`], and the model ignores it, as the reference drops it;
//! - 16-bit samples become 8-bit as `round(v × 255 / 65535)`, because the reference pyramid works on `uint8`.
//!   NOTE: OpenCV's PNG reader keeps the high byte (`v >> 8`) instead, so a 16-bit file can differ from the
//!   reference pyramid by one grey level;
//! - float samples (caller buffers only) are clamped to `[0, 1]`, scaled by 255 and rounded, and NaN becomes 0;
//! - the EXIF orientation of a file is applied, as OpenCV 4.x does for the colour flag that mmcv uses by default.
//!
//! NOTE: JPEG files are decoded by the `image` crate, whose IDCT and chroma upsampling are not libjpeg's, so
//! decoded JPEG pixels can differ from OpenCV's by a few grey levels.
//!
//! Images with a side above [`MAX_IMAGE_SIDE`] are rejected before their pixels are allocated.
//! Multi-byte samples in caller buffers are in native byte order.

use std::io::{BufWriter, Cursor, Write};
use std::path::Path;

use ::image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Largest accepted width or height of an input image, in pixels.
pub const MAX_IMAGE_SIDE: usize = 16384;

/// A decoded input image in the library's internal layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Pixels as HWC `uint8` with three channels in BGR order, `height × width × 3` bytes.
    pub bgr: Vec<u8>,
    /// Alpha channel of an RGBA or grey-alpha source, `height × width` bytes, or `None` for an opaque source.
    pub alpha: Option<Vec<u8>>,
    /// Channel count of the decoded source samples (1 grey, 2 grey-alpha, 3 RGB, 4 RGBA).
    pub source_channels: u8,
    /// Bits per source sample (8, 16 or 32).
    pub source_bit_depth: u8,
}

/// Type of one sample in a caller buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleType {
    /// 8-bit unsigned, full range 0 ..= 255.
    U8,
    /// 16-bit unsigned, full range 0 ..= 65535, native byte order.
    U16,
    /// 32-bit float, nominal range 0 ..= 1, native byte order.
    F32,
}

impl SampleType {
    /// Size of one sample in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            SampleType::U8 => 1,
            SampleType::U16 => 2,
            SampleType::F32 => 4,
        }
    }

    fn bit_depth(self) -> u8 {
        (self.size_in_bytes() * 8) as u8
    }
}

/// Memory layout of an interleaved caller buffer: grey, RGB or RGBA rows separated by a stride.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleLayout {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Samples per pixel: 1 (grey), 3 (RGB) or 4 (RGBA).
    pub channels: usize,
    /// Distance between the starts of consecutive rows, in bytes.
    pub row_stride: usize,
    /// Type of every sample.
    pub sample_type: SampleType,
}

impl SampleLayout {
    /// Checks the layout against a buffer of `buffer_len` bytes and returns the bytes of pixel data per row.
    ///
    /// The last row needs only its pixel bytes, not a full stride.
    pub fn validate(&self, buffer_len: usize) -> Result<usize> {
        if self.width == 0 || self.height == 0 {
            return Err(Error::invalid(format!(
                "image width and height must be at least 1, got {} × {} (width × height)",
                self.width, self.height
            )));
        }
        if !matches!(self.channels, 1 | 3 | 4) {
            return Err(Error::invalid(format!(
                "channel count must be 1 (grey), 3 (RGB) or 4 (RGBA), got {}",
                self.channels
            )));
        }
        let row_bytes = self
            .width
            .checked_mul(self.channels)
            .and_then(|n| n.checked_mul(self.sample_type.size_in_bytes()))
            .ok_or_else(|| {
                Error::invalid(format!("image width {} overflows the size of one row in bytes", self.width))
            })?;
        if self.row_stride < row_bytes {
            return Err(Error::invalid(format!(
                "row stride {} bytes is smaller than one row of pixels, width {} × channels {} × {} bytes per sample \
                 = {row_bytes}; pass a stride of at least {row_bytes}",
                self.row_stride,
                self.width,
                self.channels,
                self.sample_type.size_in_bytes()
            )));
        }
        let required =
            self.row_stride.checked_mul(self.height - 1).and_then(|n| n.checked_add(row_bytes)).ok_or_else(|| {
                Error::invalid(format!(
                    "row stride {} × height {} overflows the buffer size",
                    self.row_stride, self.height
                ))
            })?;
        if buffer_len < required {
            return Err(Error::invalid(format!(
                "image buffer has {buffer_len} bytes but {} rows with stride {} need at least {required}; \
                 pass a larger buffer or fix the width, height or stride",
                self.height, self.row_stride
            )));
        }
        Ok(row_bytes)
    }
}

/// Reads and decodes a PNG or JPEG file.
///
/// Errors: [`Error::Read`] naming `path` when the file is missing, unreadable, empty, in another format,
/// corrupt, or larger than [`MAX_IMAGE_SIDE`] on a side.
pub fn load_image(path: impl AsRef<Path>) -> Result<LoadedImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::read(path, "file not found"),
        _ => Error::read(path, e),
    })?;
    decode(&bytes).map_err(|reason| Error::read(path, reason))
}

/// Decodes a PNG or JPEG image held in memory.
///
/// Errors: [`Error::InvalidArgument`] when the bytes are empty, in another format, corrupt, or describe an
/// image larger than [`MAX_IMAGE_SIDE`] on a side.
pub fn decode_image(bytes: &[u8]) -> Result<LoadedImage> {
    decode(bytes).map_err(|reason| Error::invalid(format!("cannot decode the image buffer: {reason}")))
}

impl LoadedImage {
    /// Returns a content hash of the decoded image: its width, height and BGR pixels, not its alpha
    /// channel or file encoding, so a PNG and a lossless re-encoding of it hash alike.
    ///
    /// The hash is [`Self::pixel_digest`] written as `fnv1a64:` and 16 hex digits.
    pub fn pixel_hash(&self) -> String {
        format!("fnv1a64:{:016x}", self.pixel_digest())
    }

    /// Computes the 64-bit FNV-1a hash of the width and height (as little-endian u64) and the BGR pixels.
    ///
    /// It detects an accidentally different image, but it is not a cryptographic hash, so it does not
    /// resist a deliberate collision.
    pub fn pixel_digest(&self) -> u64 {
        const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;

        let size = [self.width as u64, self.height as u64];
        let header = size.iter().flat_map(|side| side.to_le_bytes());
        header
            .chain(self.bgr.iter().copied())
            .fold(OFFSET_BASIS, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME))
    }

    /// Builds an image from an interleaved caller buffer of grey, RGB or RGBA samples.
    ///
    /// Errors: [`Error::InvalidArgument`] for an invalid layout (see [`SampleLayout::validate`]), a buffer too
    /// short for it, or a side above [`MAX_IMAGE_SIDE`].
    pub fn from_samples(data: &[u8], layout: &SampleLayout) -> Result<LoadedImage> {
        let row_bytes = layout.validate(data.len())?;
        check_side_limit(layout.width, layout.height).map_err(Error::invalid)?;

        let sample_size = layout.sample_type.size_in_bytes();
        let pixel_bytes = layout.channels * sample_size;
        let mut pixels = PixelSink::new(layout.width, layout.height, layout.channels == 4);
        for y in 0..layout.height {
            let row = &data[y * layout.row_stride..][..row_bytes];
            for pixel in row.chunks_exact(pixel_bytes) {
                let mut samples = pixel.chunks_exact(sample_size).map(|s| sample_to_u8(s, layout.sample_type));
                let mut next = || samples.next().unwrap_or(0);
                let rgba = match layout.channels {
                    1 => {
                        let grey = next();
                        [grey, grey, grey, u8::MAX]
                    }
                    3 => [next(), next(), next(), u8::MAX],
                    _ => [next(), next(), next(), next()],
                };
                pixels.push(rgba);
            }
        }
        Ok(pixels.finish(layout.channels as u8, layout.sample_type.bit_depth()))
    }
}

/// Converts HWC BGR `uint8` pixels to a `(1, 3, H, W)` float32 tensor with `v ↦ (v / 255 − 0.5) × 2`.
///
/// The arithmetic is float32 in the reference's order, so the values match the reference bit for bit.
/// Errors: [`Error::InvalidArgument`] when `bgr.len()` is not `height × width × 3`.
pub fn bgr_u8_to_tensor(bgr: &[u8], height: usize, width: usize, device: &Device) -> Result<Tensor> {
    let plane = height.checked_mul(width);
    if plane.and_then(|n| n.checked_mul(3)) != Some(bgr.len()) {
        return Err(Error::invalid(format!(
            "BGR buffer has {} bytes but a {height} × {width} (height × width) image needs height × width × 3",
            bgr.len()
        )));
    }
    let plane = height * width;
    let mut values = vec![0f32; 3 * plane];
    for (index, pixel) in bgr.chunks_exact(3).enumerate() {
        for (channel, &v) in pixel.iter().enumerate() {
            values[channel * plane + index] = (f32::from(v) / 255.0 - 0.5) * 2.0;
        }
    }
    Ok(Tensor::from_vec(values, (1, 3, height, width), device)?)
}

/// Converts a `(1, 3, H, W)` or `(3, H, W)` BGR tensor in `[-1, 1]` to an 8-bit RGB image.
///
/// Each value maps as `(x + 1) / 2 × 255`, clamped to `[0, 255]` and rounded to nearest, and NaN becomes 0.
/// The reference truncates without clamping, so its out-of-range values wrap around and its other values can be
/// one grey level lower.
pub fn tensor_to_rgb8(t: &Tensor) -> Result<RgbImage> {
    let (height, width, values) = bgr_planes(t)?;
    let plane = height * width;
    let mut rgb = Vec::with_capacity(3 * plane);
    for index in 0..plane {
        // BGR planes to interleaved RGB.
        for channel in [2, 1, 0] {
            rgb.push(unit_to_u8(unit_value(values[channel * plane + index])));
        }
    }
    let too_large = || Error::invalid(format!("image of {height} × {width} pixels is too large for an RGB image"));
    let width = u32::try_from(width).map_err(|_| too_large())?;
    let height = u32::try_from(height).map_err(|_| too_large())?;
    RgbImage::from_raw(width, height, rgb).ok_or_else(too_large)
}

/// Writes a `(1, 3, H, W)` or `(3, H, W)` BGR tensor in `[-1, 1]` into a caller buffer.
///
/// The layout selects grey (ITU-R BT.601 luma `0.299 R + 0.587 G + 0.114 B`), RGB or RGBA with opaque alpha,
/// and the sample type. Values are clamped to `[0, 1]` after `(x + 1) / 2` and NaN becomes 0. Integer samples are
/// rounded to nearest. Bytes between the end of a row's pixels and the next row are left untouched.
/// Errors: [`Error::InvalidArgument`] for an invalid layout, a buffer too short for it, or a layout size that
/// differs from the tensor's.
pub fn tensor_to_samples(t: &Tensor, layout: &SampleLayout, out: &mut [u8]) -> Result<()> {
    let row_bytes = layout.validate(out.len())?;
    let (height, width, values) = bgr_planes(t)?;
    if (height, width) != (layout.height, layout.width) {
        return Err(Error::invalid(format!(
            "the tensor contains a {height} × {width} image but the buffer layout is {} × {} (height × width); \
             size the buffer for the tensor",
            layout.height, layout.width
        )));
    }

    let plane = height * width;
    let sample_size = layout.sample_type.size_in_bytes();
    for y in 0..height {
        let row = &mut out[y * layout.row_stride..][..row_bytes];
        for (x, pixel) in row.chunks_exact_mut(layout.channels * sample_size).enumerate() {
            let index = y * width + x;
            let [blue, green, red] = [0, 1, 2].map(|channel| unit_value(values[channel * plane + index]));
            let rgba = [red, green, blue, 1.0];
            let luma = [0.299 * red + 0.587 * green + 0.114 * blue];
            let samples: &[f32] = match layout.channels {
                1 => &luma,
                3 => &rgba[..3],
                _ => &rgba,
            };
            for (slot, &value) in pixel.chunks_exact_mut(sample_size).zip(samples) {
                write_sample(slot, value, layout.sample_type);
            }
        }
    }
    Ok(())
}

/// Encodes `img` as PNG at `path`, atomically.
///
/// The image goes to a temporary file in the destination directory, which then replaces `path` in one rename,
/// so readers never see a partial file. Errors: [`Error::Write`] naming `path`.
pub fn save_png(img: &RgbImage, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };

    let mut builder = tempfile::Builder::new();
    builder.prefix(".pegan-").suffix(".png.tmp");
    // tempfile creates files readable by the owner only, so request mode 0o666, which the umask then restricts.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut temporary = builder
        .tempfile_in(directory)
        .map_err(|e| Error::write(path, format!("cannot create a temporary file in {}: {e}", directory.display())))?;

    let mut writer = BufWriter::new(temporary.as_file_mut());
    img.write_to(&mut writer, ImageFormat::Png).map_err(|e| Error::write(path, e))?;
    writer.flush().map_err(|e| Error::write(path, e))?;
    drop(writer);
    temporary.as_file().sync_all().map_err(|e| Error::write(path, e))?;

    temporary.persist(path).map_err(|e| Error::write(path, e.error))?;
    Ok(())
}

/// Decodes PNG or JPEG bytes, or returns the reason they cannot be decoded.
fn decode(bytes: &[u8]) -> std::result::Result<LoadedImage, String> {
    if bytes.is_empty() {
        return Err("the data is empty (0 bytes)".to_string());
    }
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    // The side limit is checked from the header below. The default 512 MiB allocation cap is lifted because it
    // would reject images within that limit.
    let mut limits = Limits::no_limits();
    limits.max_image_width = Some(MAX_IMAGE_SIDE as u32);
    limits.max_image_height = Some(MAX_IMAGE_SIDE as u32);
    reader.limits(limits);

    let mut decoder = reader.into_decoder().map_err(describe_decode_error)?;
    let (width, height) = decoder.dimensions();
    check_side_limit(width as usize, height as usize)?;
    let color = decoder.color_type();
    let orientation = decoder.orientation().map_err(describe_decode_error)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(describe_decode_error)?;
    image.apply_orientation(orientation);

    let source_channels = color.channel_count();
    let source_bit_depth = (color.bits_per_pixel() / u16::from(source_channels)) as u8;
    let has_alpha = color.has_alpha();
    let (width, height) = (image.width() as usize, image.height() as usize);
    let mut pixels = PixelSink::new(width, height, has_alpha);
    match source_bit_depth {
        8 => image.into_rgba8().pixels().for_each(|p| pixels.push(p.0)),
        16 => image.into_rgba16().pixels().for_each(|p| pixels.push(p.0.map(u16_to_u8))),
        _ => image.into_rgba32f().pixels().for_each(|p| pixels.push(p.0.map(|v| unit_to_u8(clamp_unit(v))))),
    }
    Ok(pixels.finish(source_channels, source_bit_depth))
}

fn describe_decode_error(error: ImageError) -> String {
    match error {
        ImageError::Unsupported(e) => format!("unsupported image format, expected PNG or JPEG ({e})"),
        ImageError::Decoding(e) => format!("corrupt or truncated image data ({e})"),
        // The decoder reads from memory, so an I/O error can only mean data that ends too early.
        ImageError::IoError(e) => format!("corrupt or truncated image data ({e})"),
        ImageError::Limits(e) => format!("image exceeds the size limit of {MAX_IMAGE_SIDE} pixels per side ({e})"),
        other => other.to_string(),
    }
}

fn check_side_limit(width: usize, height: usize) -> std::result::Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("image has no pixels ({width} × {height}, width × height)"));
    }
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(format!(
            "image is {width} × {height} pixels (width × height), above the limit of {MAX_IMAGE_SIDE} pixels \
             per side; downscale it first"
        ));
    }
    Ok(())
}

/// Collects RGBA pixels into the BGR plane and the optional alpha plane of a [`LoadedImage`].
struct PixelSink {
    width: usize,
    height: usize,
    bgr: Vec<u8>,
    alpha: Option<Vec<u8>>,
}

impl PixelSink {
    fn new(width: usize, height: usize, has_alpha: bool) -> PixelSink {
        let plane = width * height;
        PixelSink {
            width,
            height,
            bgr: Vec::with_capacity(3 * plane),
            alpha: has_alpha.then(|| Vec::with_capacity(plane)),
        }
    }

    fn push(&mut self, [red, green, blue, alpha]: [u8; 4]) {
        self.bgr.extend_from_slice(&[blue, green, red]);
        if let Some(plane) = &mut self.alpha {
            plane.push(alpha);
        }
    }

    fn finish(self, source_channels: u8, source_bit_depth: u8) -> LoadedImage {
        LoadedImage {
            width: self.width,
            height: self.height,
            bgr: self.bgr,
            alpha: self.alpha,
            source_channels,
            source_bit_depth,
        }
    }
}

/// Reads one native-endian sample and quantises it to 8 bits.
fn sample_to_u8(bytes: &[u8], sample_type: SampleType) -> u8 {
    match sample_type {
        SampleType::U8 => bytes[0],
        SampleType::U16 => u16_to_u8(u16::from_ne_bytes([bytes[0], bytes[1]])),
        SampleType::F32 => unit_to_u8(clamp_unit(f32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))),
    }
}

/// Writes one native-endian sample from a value in `[0, 1]`.
fn write_sample(slot: &mut [u8], value: f32, sample_type: SampleType) {
    match sample_type {
        SampleType::U8 => slot[0] = unit_to_u8(value),
        SampleType::U16 => slot.copy_from_slice(&((value * 65535.0).round() as u16).to_ne_bytes()),
        SampleType::F32 => slot.copy_from_slice(&value.to_ne_bytes()),
    }
}

/// `round(v × 255 / 65535)` in integers.
fn u16_to_u8(v: u16) -> u8 {
    ((u32::from(v) * 255 + 32767) / 65535) as u8
}

/// Clamps to `[0, 1]`, mapping NaN to 0.
fn clamp_unit(v: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(0.0, 1.0)
    }
}

/// Maps a model value in `[-1, 1]` to `[0, 1]`, clamped.
fn unit_value(x: f32) -> f32 {
    clamp_unit((x + 1.0) / 2.0)
}

/// Quantises a value in `[0, 1]` to 8 bits, rounding to nearest.
fn unit_to_u8(v: f32) -> u8 {
    (v * 255.0).round() as u8
}

/// Validates a BGR image tensor and returns its height, width and CHW float32 values on the CPU.
fn bgr_planes(t: &Tensor) -> Result<(usize, usize, Vec<f32>)> {
    let (height, width) = match t.dims() {
        &[1, 3, height, width] | &[3, height, width] => (height, width),
        dims => {
            return Err(Error::invalid(format!(
                "expected a BGR image tensor of shape (1, 3, H, W) or (3, H, W), got {dims:?}"
            )))
        }
    };
    let values = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((height, width, values))
}
