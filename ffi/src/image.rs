//! Images at the boundary: the `PeganImage` struct, its validation against the caller's buffer
//! length, and PNG/JPEG file helpers.

use std::ffi::{c_char, c_void};

use pegan_core::image::{load_image, save_png, LoadedImage, SampleLayout, SampleType, MAX_IMAGE_SIDE};

use crate::status::{boundary, boundary_void, FfiError, FfiResult, PeganStatus};
use crate::strings::required_path;

/// Type of one sample (one channel of one pixel) in a `PeganImage`.
pub type PeganSampleType = u32;

/// 8-bit unsigned samples, 0 (black) to 255 (full intensity).
pub const PEGAN_SAMPLE_TYPE_U8: PeganSampleType = 0;
/// 16-bit unsigned samples in native byte order, 0 to 65535. Training quantises them to 8 bits as
/// `round(v * 255 / 65535)`, as the model works on 8-bit images.
pub const PEGAN_SAMPLE_TYPE_U16: PeganSampleType = 1;
/// 32-bit float samples in native byte order, nominally 0.0 to 1.0. Inputs are clamped to that range
/// and NaN counts as 0.0; outputs are always within it.
pub const PEGAN_SAMPLE_TYPE_F32: PeganSampleType = 2;

/// An image in a buffer owned by the caller: interleaved samples, rows from top to bottom.
///
/// Pixels have 1 channel (grey), 3 (red, green, blue) or 4 (red, green, blue, alpha), in that order.
/// Row `y` starts at byte `y * row_stride` of `data`. Only the first `width * channels * sample size`
/// bytes of a row are pixels, so the last row needs no bytes past its pixels. Every function that
/// takes a `PeganImage` also takes the buffer length in bytes and rejects an image that does not fit
/// in it, so it never reads or writes outside `[data, data + buffer_len)`.
#[repr(C)]
pub struct PeganImage {
    /// Width in pixels, at least 1.
    pub width: u32,
    /// Height in pixels, at least 1.
    pub height: u32,
    /// Samples per pixel: 1, 3 or 4.
    pub channels: u32,
    /// Bytes from the start of one row to the start of the next, at least `width * channels * sample
    /// size`.
    pub row_stride: usize,
    /// One of the `PEGAN_SAMPLE_TYPE_*` constants.
    pub sample_type: PeganSampleType,
    /// The pixels. Functions that only read the image never write through this pointer.
    pub data: *mut c_void,
}

/// A caller image checked against its buffer.
pub(crate) struct CheckedImage {
    pub layout: SampleLayout,
    /// Bytes from `data` to the end of the last row's pixels.
    pub len: usize,
    pub data: *mut u8,
}

impl CheckedImage {
    /// Returns the pixels as a byte slice of exactly `len` bytes.
    ///
    /// # Safety
    /// The caller's promise that `data` is readable for the buffer length it passed.
    pub unsafe fn bytes<'a>(&self) -> &'a [u8] {
        std::slice::from_raw_parts(self.data, self.len)
    }

    /// Returns the pixels as a writable byte slice of exactly `len` bytes.
    ///
    /// # Safety
    /// The caller's promise that `data` is writable for the buffer length it passed and that no other
    /// thread uses those bytes during the call.
    pub unsafe fn bytes_mut<'a>(&self) -> &'a mut [u8] {
        std::slice::from_raw_parts_mut(self.data, self.len)
    }
}

fn sample_type(value: PeganSampleType, function: &str, argument: &str) -> FfiResult<SampleType> {
    match value {
        PEGAN_SAMPLE_TYPE_U8 => Ok(SampleType::U8),
        PEGAN_SAMPLE_TYPE_U16 => Ok(SampleType::U16),
        PEGAN_SAMPLE_TYPE_F32 => Ok(SampleType::F32),
        other => Err(FfiError::invalid(format!(
            "{function}: {argument}->sample_type {other} is unknown: use PEGAN_SAMPLE_TYPE_U8 (0), \
             PEGAN_SAMPLE_TYPE_U16 (1) or PEGAN_SAMPLE_TYPE_F32 (2)"
        ))),
    }
}

/// Checks the image at `image` against a buffer of `buffer_len` bytes.
///
/// Sides above `max_side` give `PEGAN_STATUS_TOO_LARGE`, as do sizes in bytes that overflow `usize`.
pub(crate) unsafe fn check_image(
    image: *const PeganImage,
    buffer_len: usize,
    max_side: usize,
    function: &str,
    argument: &str,
) -> FfiResult<CheckedImage> {
    let image = image.as_ref().ok_or_else(|| FfiError::null(function, argument))?;
    if image.data.is_null() {
        return Err(FfiError::null(function, &format!("{argument}->data")));
    }

    let sample_type = sample_type(image.sample_type, function, argument)?;
    if !matches!(image.channels, 1 | 3 | 4) {
        return Err(FfiError::invalid(format!(
            "{function}: {argument}->channels is {}: use 1 (grey), 3 (RGB) or 4 (RGBA)",
            image.channels
        )));
    }
    if image.width == 0 || image.height == 0 {
        return Err(FfiError::invalid(format!(
            "{function}: {argument} is {} x {} pixels (width x height): both must be at least 1",
            image.width, image.height
        )));
    }
    let (width, height) = (image.width as usize, image.height as usize);
    if width > max_side || height > max_side {
        return Err(FfiError::too_large(format!(
            "{function}: {argument} is {width} x {height} pixels (width x height), above the limit of \
             {max_side} pixels per side"
        )));
    }

    let overflow = |what: &str| FfiError::too_large(format!("{function}: {argument}: {what} does not fit in size_t"));
    let row_bytes = width
        .checked_mul(image.channels as usize)
        .and_then(|n| n.checked_mul(sample_type.size_in_bytes()))
        .ok_or_else(|| overflow("one row in bytes"))?;
    if image.row_stride < row_bytes {
        return Err(FfiError::invalid(format!(
            "{function}: {argument}->row_stride {} bytes is smaller than one row of pixels, width {width} x \
             channels {} x {} bytes per sample = {row_bytes}: pass a stride of at least {row_bytes}",
            image.row_stride,
            image.channels,
            sample_type.size_in_bytes()
        )));
    }
    let required = image
        .row_stride
        .checked_mul(height - 1)
        .and_then(|n| n.checked_add(row_bytes))
        .ok_or_else(|| overflow(&format!("row_stride {} x height {height}", image.row_stride)))?;
    if required > isize::MAX as usize {
        return Err(overflow(&format!("an image of {required} bytes")));
    }
    if buffer_len < required {
        return Err(FfiError::invalid(format!(
            "{function}: the buffer of {argument} has {buffer_len} bytes, but {height} rows with row_stride {} \
             need at least {required}: pass a larger buffer or fix the width, height or stride",
            image.row_stride
        )));
    }

    let layout =
        SampleLayout { width, height, channels: image.channels as usize, row_stride: image.row_stride, sample_type };
    Ok(CheckedImage { layout, len: required, data: image.data.cast::<u8>() })
}

/// Checks an input image and converts it to the library's 8-bit BGR form.
pub(crate) unsafe fn read_input_image(
    image: *const PeganImage,
    buffer_len: usize,
    function: &str,
    argument: &str,
) -> FfiResult<LoadedImage> {
    let checked = check_image(image, buffer_len, MAX_IMAGE_SIDE, function, argument)?;
    let loaded = LoadedImage::from_samples(checked.bytes(), &checked.layout)
        .map_err(|e| FfiError::invalid(format!("{function}: {argument}: {e}")))?;
    Ok(loaded)
}

/// Reads a PNG or JPEG file into a new 8-bit image.
///
/// On success `*out_image` describes a malloc'd buffer of `row_stride * height` bytes with
/// `row_stride = width * channels`: 3 channels (RGB) for an opaque source and 4 (RGBA) for one with
/// alpha. Grey sources become three equal channels, 16-bit sources are quantised to 8 bits, and the
/// EXIF orientation is applied. Free the pixels with `pegan_image_free`. On failure `*out_image` is
/// zeroed.
///
/// Errors:
/// - `PEGAN_STATUS_NULL_POINTER`: an argument is NULL.
/// - `PEGAN_STATUS_INVALID_ARGUMENT`: `path` is empty.
/// - `PEGAN_STATUS_IO`: the file is missing, unreadable, not PNG or JPEG, corrupt, or larger than
///   16384 pixels per side.
/// - `PEGAN_STATUS_OUT_OF_MEMORY`: the pixel buffer cannot be allocated.
///
/// Thread safety: may be called from several threads at once with different `out_image` structs.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string. `out_image` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pegan_image_load(path: *const c_char, out_image: *mut PeganImage) -> PeganStatus {
    const FUNCTION: &str = "pegan_image_load";
    boundary(FUNCTION, || {
        let out = out_image.as_mut().ok_or_else(|| FfiError::null(FUNCTION, "out_image"))?;
        *out =
            PeganImage { width: 0, height: 0, channels: 0, row_stride: 0, sample_type: 0, data: std::ptr::null_mut() };
        let path = required_path(path, FUNCTION, "path")?;

        let loaded = load_image(&path)?;
        let channels: usize = if loaded.alpha.is_some() { 4 } else { 3 };
        let size = loaded.width * loaded.height * channels;
        // SAFETY: malloc has no preconditions; the result is checked before use.
        let data = libc::malloc(size.max(1)).cast::<u8>();
        if data.is_null() {
            return Err(FfiError::new(
                PeganStatus::OutOfMemory,
                format!("{FUNCTION}: cannot allocate {size} bytes for the pixels of {}", path.display()),
            ));
        }

        // SAFETY: `data` was just allocated with `size` bytes and nothing else refers to it.
        let pixels = std::slice::from_raw_parts_mut(data, size);
        for (index, (pixel, bgr)) in pixels.chunks_exact_mut(channels).zip(loaded.bgr.chunks_exact(3)).enumerate() {
            pixel[..3].copy_from_slice(&[bgr[2], bgr[1], bgr[0]]);
            if let Some(alpha) = &loaded.alpha {
                pixel[3] = alpha[index];
            }
        }

        // Both sides are at most MAX_IMAGE_SIDE, so they fit in u32.
        *out = PeganImage {
            width: loaded.width as u32,
            height: loaded.height as u32,
            channels: channels as u32,
            row_stride: loaded.width * channels,
            sample_type: PEGAN_SAMPLE_TYPE_U8,
            data: data.cast::<c_void>(),
        };
        Ok(())
    })
}

/// Frees the pixels of an image filled by `pegan_image_load` and sets `image->data` to NULL. A NULL
/// `image` or a NULL `image->data` is allowed and does nothing.
///
/// Never pass an image whose buffer the caller allocated.
///
/// Thread safety: may be called from any thread, once per image.
///
/// # Safety
/// `image` is NULL or points to a `PeganImage` whose `data` is NULL or came from `pegan_image_load`
/// and has not been freed.
#[no_mangle]
pub unsafe extern "C" fn pegan_image_free(image: *mut PeganImage) {
    boundary_void(|| {
        if let Some(image) = image.as_mut() {
            libc::free(image.data);
            image.data = std::ptr::null_mut();
        }
    })
}

/// Writes an image as an 8-bit RGB PNG file, replacing `path` atomically (through a temporary file in
/// the same folder).
///
/// Grey images are written as three equal channels, alpha is dropped, and 16-bit and float samples
/// are quantised to 8 bits. `image_len` is the size of the buffer at `image->data` in bytes.
///
/// Errors:
/// - `PEGAN_STATUS_NULL_POINTER`: an argument or `image->data` is NULL.
/// - `PEGAN_STATUS_INVALID_ARGUMENT`: `path` is empty, the image is invalid (see `PeganImage`), or
///   its buffer is too short.
/// - `PEGAN_STATUS_TOO_LARGE`: a side is above 16384 pixels.
/// - `PEGAN_STATUS_IO`: the file cannot be written.
///
/// Thread safety: may be called from several threads at once, also on one image.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string. `image` is NULL or points to a `PeganImage` whose `data`
/// is readable for `image_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn pegan_image_save_png(
    path: *const c_char,
    image: *const PeganImage,
    image_len: usize,
) -> PeganStatus {
    const FUNCTION: &str = "pegan_image_save_png";
    boundary(FUNCTION, || {
        let path = required_path(path, FUNCTION, "path")?;
        let loaded = read_input_image(image, image_len, FUNCTION, "image")?;

        let rgb: Vec<u8> = loaded.bgr.chunks_exact(3).flat_map(|bgr| [bgr[2], bgr[1], bgr[0]]).collect();
        let rgb = ::image::RgbImage::from_raw(loaded.width as u32, loaded.height as u32, rgb)
            .ok_or_else(|| FfiError::invalid(format!("{FUNCTION}: the pixel buffer does not match the image size")))?;
        save_png(&rgb, &path)?;
        Ok(())
    })
}
