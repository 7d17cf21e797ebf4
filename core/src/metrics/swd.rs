//! Multi-scale sliced Wasserstein distance (SWD) between two sets of images, the metric of progressive
//! GAN (Karras, Aila, Laine, Lehtinen, ICLR 2018), after `metrics/sliced_wasserstein.py` of
//! tkarras/progressive_growing_of_gans.
//!
//! For every image a Laplacian pyramid is built with the 5-tap Gaussian `[1, 4, 6, 4, 1] / 16` (mirror
//! borders, down and up by 2) while the short side is at least 16 pixels. From each level of each image
//! 128 patches of 7 × 7 pixels × 3 channels (descriptors) are taken at random positions. The descriptors
//! of one level are normalised per colour channel to zero mean and unit standard deviation. Then 4 times
//! 128 random unit directions are drawn, both sets are projected onto each direction, and the 1-D
//! Wasserstein-1 distance of the projections (mean absolute difference of the sorted values) is averaged.
//! Each level's distance is reported multiplied by 10³, as in the reference, together with their mean.
//!
//! Where this implementation differs from the reference:
//! - Normalisation: the reference normalises each set with its own per-channel mean and standard
//!   deviation (population, ddof 0). That is the default here ([`DescriptorNormalization::PerSet`]).
//!   It makes the metric blind to a global per-channel gain or offset between the sets.
//!   [`DescriptorNormalization::Union`] uses the statistics of both sets together and detects such a change.
//! - Patch positions: the reference draws every set's positions independently. Here an image's positions
//!   come from a stream seeded by the seed, the level and the image's pixel hash (plus its occurrence
//!   number among identical images). An image therefore gets the same patches in either set and in any
//!   order, so identical sets give exactly 0 and swapping the sets gives the same value, where the
//!   reference reports its sampling noise.
//! - Sizes: the reference assumes square images with a power-of-two side and counts levels by the height.
//!   Here levels continue while the short side is at least 16, a level is `ceil(side / 2)` of the one above
//!   (what taking every second sample gives), and the upsampled coarser level is cropped to the finer size.
//! - Unequal image counts: the 1-D distance is the Wasserstein-1 distance between the empirical
//!   distributions, `∫₀¹ |F⁻¹(t) − G⁻¹(t)| dt`. For equal counts this is the reference's mean absolute
//!   difference of sorted values; the reference accepts equal counts only.
//! - A channel whose descriptors all have one value (standard deviation 0) is centred but not scaled,
//!   where the reference divides by zero.
//! - Components of a descriptor are ordered channel, row, column; the reference's patches are transposed
//!   (channel, column, row). The directions are isotropic, so this fixed permutation does not change the
//!   distribution of the result.
//! - Random numbers come from [`SeededRng`] (ChaCha), not NumPy, so values differ from the reference's by
//!   sampling noise. Pixels are RGB in 0–255 as float32, as in the reference. Means and standard
//!   deviations are accumulated in float64, projections are float32 matrix products, and the
//!   Wasserstein distances are accumulated in float64.
//!
//! Memory: about `levels × images × patches_per_image × 147 × 4` bytes per set for the descriptors
//! (75 KB per image and level with the defaults), plus the projections of one direction batch.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::image::{load_image, LoadedImage, MAX_IMAGE_SIDE};
use crate::pyramid::resize_linear_u8;
use crate::rng::SeededRng;

/// Colour channels of a descriptor (RGB).
const CHANNELS: usize = 3;

/// Stream tags, so that patch positions and directions never share a random stream.
const PATCH_STREAM: u64 = 1;
const DIRECTION_STREAM: u64 = 2;

/// Scope of the per-channel mean and standard deviation that normalise the descriptors of a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DescriptorNormalization {
    /// Each set with its own statistics, as the reference does.
    #[default]
    PerSet,
    /// Both sets with the statistics of their union.
    Union,
}

impl DescriptorNormalization {
    /// Returns the command-line name: `per-set` or `union`.
    pub fn name(self) -> &'static str {
        match self {
            DescriptorNormalization::PerSet => "per-set",
            DescriptorNormalization::Union => "union",
        }
    }
}

/// Settings of the SWD. [`Default`] gives the reference's values and seed 0.
#[derive(Debug, Clone, PartialEq)]
pub struct SwdConfig {
    /// Side of the square patches taken as descriptors, in pixels (odd; 7 in the reference).
    pub patch_size: usize,
    /// Patches taken from each image at each level (128).
    pub patches_per_image: usize,
    /// Independent batches of random directions (4).
    pub repeats: usize,
    /// Random unit directions per batch (128).
    pub directions_per_repeat: usize,
    /// Smallest short side of a pyramid level, in pixels (16).
    pub min_resolution: usize,
    /// Statistics used to normalise the descriptors.
    pub normalization: DescriptorNormalization,
    /// Seed of the patch positions and directions.
    pub seed: u64,
    /// (height, width) in pixels to resize every image to before the pyramid, or `None` to require
    /// images of one size. Resizing is bilinear, as the SinGAN pyramid, and aliases when it shrinks a lot.
    pub resize: Option<(usize, usize)>,
}

impl Default for SwdConfig {
    fn default() -> Self {
        SwdConfig {
            patch_size: 7,
            patches_per_image: 128,
            repeats: 4,
            directions_per_repeat: 128,
            min_resolution: 16,
            normalization: DescriptorNormalization::PerSet,
            seed: 0,
            resize: None,
        }
    }
}

impl SwdConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.patch_size == 0 || self.patch_size.is_multiple_of(2) {
            return Err(Error::invalid(format!("SWD patch_size must be odd, got {}", self.patch_size)));
        }
        if self.min_resolution < self.patch_size {
            return Err(Error::invalid(format!(
                "SWD min_resolution {} is smaller than patch_size {}, so the coarsest level could not hold a patch",
                self.min_resolution, self.patch_size
            )));
        }
        let counts = [
            ("patches_per_image", self.patches_per_image),
            ("repeats", self.repeats),
            ("directions_per_repeat", self.directions_per_repeat),
        ];
        for (name, count) in counts {
            if count == 0 {
                return Err(Error::invalid(format!("SWD {name} must be at least 1")));
            }
        }
        if let Some((height, width)) = self.resize {
            let valid = |side: usize| (self.min_resolution..=MAX_IMAGE_SIDE).contains(&side);
            if !valid(height) || !valid(width) {
                return Err(Error::invalid(format!(
                    "SWD resize target {width}×{height} (width × height) must have sides from {} to {MAX_IMAGE_SIDE} pixels",
                    self.min_resolution
                )));
            }
        }
        Ok(())
    }
}

/// The SWD of one pyramid level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwdLevel {
    /// Height of the level in pixels.
    pub height: usize,
    /// Width of the level in pixels.
    pub width: usize,
    /// Sliced Wasserstein distance × 10³.
    pub swd: f64,
}

/// Result of [`sliced_wasserstein`]: one value per level, finest first, and their mean.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwdReport {
    /// SWD × 10³ per pyramid level, the finest (the image size) first.
    pub per_level: Vec<SwdLevel>,
    /// Mean of the per-level values (× 10³).
    pub average: f64,
    /// Number of real images compared.
    pub real_images: usize,
    /// Number of fake images compared.
    pub fake_images: usize,
}

/// A float32 RGB image as three planes (CHW), values 0–255.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePlanes {
    pub height: usize,
    pub width: usize,
    /// `3 × height × width` values, red plane first.
    pub data: Vec<f32>,
}

impl ImagePlanes {
    /// Converts a decoded image (BGR `u8`) into RGB planes.
    pub fn from_image(image: &LoadedImage) -> Self {
        Self::from_bgr(&image.bgr, image.height, image.width)
    }

    /// Converts HWC BGR `u8` pixels, `height × width × 3` bytes, into RGB planes.
    fn from_bgr(bgr: &[u8], height: usize, width: usize) -> Self {
        let plane = height * width;
        let mut data = vec![0f32; CHANNELS * plane];
        for (index, pixel) in bgr.chunks_exact(3).enumerate() {
            // BGR to RGB plane order.
            data[index] = f32::from(pixel[2]);
            data[plane + index] = f32::from(pixel[1]);
            data[2 * plane + index] = f32::from(pixel[0]);
        }
        ImagePlanes { height, width, data }
    }

    fn zeros(height: usize, width: usize) -> Self {
        ImagePlanes { height, width, data: vec![0.0; CHANNELS * height * width] }
    }

    fn plane(&self, channel: usize) -> &[f32] {
        let size = self.height * self.width;
        &self.data[channel * size..(channel + 1) * size]
    }
}

/// Computes the multi-scale SWD between `real` and `fake`, as described in the module documentation.
///
/// Every image of both sets must have one size, unless `config.resize` is set. The result does not
/// depend on the order of the images within a set.
///
/// Errors: an invalid `config`, an empty set, images of different sizes without `config.resize`,
/// images whose short side is below `config.min_resolution`, or an image whose pixel buffer does not
/// match its size.
pub fn sliced_wasserstein(real: &[LoadedImage], fake: &[LoadedImage], config: &SwdConfig) -> Result<SwdReport> {
    config.validate()?;
    for (images, name) in [(real, "real"), (fake, "fake")] {
        if images.is_empty() {
            return Err(Error::invalid(format!("the {name} image set is empty; SWD needs at least one image per set")));
        }
    }
    let labelled = |images: &[LoadedImage], name: &str| -> Vec<String> {
        (0..images.len()).map(|index| format!("{name} image {index}")).collect()
    };
    let (height, width) = common_size(real, &labelled(real, "real"), fake, &labelled(fake, "fake"), config)?;
    let sizes = level_sizes(height, width, config.min_resolution);
    if sizes.is_empty() {
        return Err(Error::invalid(format!(
            "the images are {width}×{height} (width × height), but SWD needs a short side of at least {} pixels",
            config.min_resolution
        )));
    }

    let real_descriptors = set_descriptors(real, (height, width), &sizes, config);
    let fake_descriptors = set_descriptors(fake, (height, width), &sizes, config);
    let dim = CHANNELS * config.patch_size * config.patch_size;

    let mut per_level = Vec::with_capacity(sizes.len());
    for (level, (mut a, mut b)) in real_descriptors.into_iter().zip(fake_descriptors).enumerate() {
        let area = config.patch_size * config.patch_size;
        match config.normalization {
            DescriptorNormalization::PerSet => {
                let stats_a = channel_statistics(&[&a], area);
                normalise(&mut a, area, &stats_a);
                let stats_b = channel_statistics(&[&b], area);
                normalise(&mut b, area, &stats_b);
            }
            DescriptorNormalization::Union => {
                let stats = channel_statistics(&[&a, &b], area);
                normalise(&mut a, area, &stats);
                normalise(&mut b, area, &stats);
            }
        }

        let mut rng = SeededRng::new(stream_seed(&[config.seed, DIRECTION_STREAM, level as u64]));
        let distance = sliced_distance(&a, &b, dim, config.repeats, config.directions_per_repeat, &mut rng)?;
        let (height, width) = sizes[level];
        per_level.push(SwdLevel { height, width, swd: distance * 1e3 });
    }

    let average = per_level.iter().map(|level| level.swd).sum::<f64>() / per_level.len() as f64;
    Ok(SwdReport { per_level, average, real_images: real.len(), fake_images: fake.len() })
}

/// Computes the SWD between the PNG and JPEG images of two folders.
///
/// Each folder contributes its files ending in `.png`, `.jpg` or `.jpeg` (any case), in file-name order,
/// at most `max_images` of them when given. Subfolders and other files are skipped.
///
/// Errors: those of [`load_image_folder`] and [`sliced_wasserstein`]; a size mismatch names the file.
pub fn sliced_wasserstein_folders(
    real_folder: &Path,
    fake_folder: &Path,
    max_images: Option<usize>,
    config: &SwdConfig,
) -> Result<SwdReport> {
    config.validate()?;
    let (real_paths, real) = load_image_folder(real_folder, max_images)?;
    let (fake_paths, fake) = load_image_folder(fake_folder, max_images)?;
    let label = |paths: &[PathBuf]| -> Vec<String> { paths.iter().map(|p| p.display().to_string()).collect() };
    common_size(&real, &label(&real_paths), &fake, &label(&fake_paths), config)?;
    sliced_wasserstein(&real, &fake, config)
}

/// Loads the PNG and JPEG files of `folder` in file-name order, at most `max_images` of them when given.
/// Returns their paths and images.
///
/// Errors: a folder that cannot be listed, a folder without such files, or a file that cannot be decoded.
pub fn load_image_folder(folder: &Path, max_images: Option<usize>) -> Result<(Vec<PathBuf>, Vec<LoadedImage>)> {
    let entries = std::fs::read_dir(folder).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::read(folder, "folder not found"),
        _ => Error::read(folder, e),
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::read(folder, e))?.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["png", "jpg", "jpeg"].iter().any(|known| e.eq_ignore_ascii_case(known)));
        if is_image && path.is_file() {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(Error::read(folder, "the folder contains no .png, .jpg or .jpeg files"));
    }
    paths.sort();
    if let Some(limit) = max_images {
        paths.truncate(limit);
    }

    let images = paths.iter().map(load_image).collect::<Result<Vec<_>>>()?;
    tracing::debug!(folder = %folder.display(), images = images.len(), "loaded SWD images");
    Ok((paths, images))
}

/// Builds the Laplacian pyramid of `image` with `num_levels` levels (at least one), whose sizes are those
/// of [`level_sizes`]. Every level but the last contains the detail lost by downsampling, and the last
/// is the low-pass residual.
pub fn laplacian_pyramid(image: &ImagePlanes, num_levels: usize) -> Vec<ImagePlanes> {
    let mut levels = vec![image.clone()];
    for _ in 1..num_levels {
        let finer = levels.last_mut().expect("the pyramid starts with the image");
        let coarser = pyramid_down(finer);
        let upsampled = pyramid_up(&coarser, finer.height, finer.width);
        for (value, subtracted) in finer.data.iter_mut().zip(&upsampled.data) {
            *value -= subtracted;
        }
        levels.push(coarser);
    }
    levels
}

/// Returns the (height, width) of every pyramid level of a `height × width` image, finest first:
/// each level halves the one above, rounding up, while the short side is at least `min_resolution`.
pub fn level_sizes(height: usize, width: usize, min_resolution: usize) -> Vec<(usize, usize)> {
    let mut sizes = Vec::new();
    let (mut h, mut w) = (height, width);
    while h.min(w) >= min_resolution.max(1) {
        sizes.push((h, w));
        (h, w) = (h.div_ceil(2), w.div_ceil(2));
    }
    sizes
}

/// Computes the 1-D Wasserstein-1 distance `∫₀¹ |F⁻¹(t) − G⁻¹(t)| dt` between the empirical
/// distributions of `a` and `b` (the mean absolute difference of the sorted values when the lengths match).
///
/// Errors: an empty input or a NaN value.
pub fn wasserstein_1d(a: &[f32], b: &[f32]) -> Result<f64> {
    if a.is_empty() || b.is_empty() {
        return Err(Error::invalid("the Wasserstein distance needs at least one value on each side"));
    }
    if a.iter().chain(b).any(|v| v.is_nan()) {
        return Err(Error::invalid("the Wasserstein distance is undefined for NaN values"));
    }
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable_by(f32::total_cmp);
    b.sort_unstable_by(f32::total_cmp);
    Ok(wasserstein_sorted(&a, &b))
}

/// Computes the sliced Wasserstein distance between two sets of `dim`-component vectors, stored row by
/// row in `a` and `b`: the mean over `repeats × directions` random unit directions, drawn from `rng`,
/// of the 1-D Wasserstein-1 distance of the projections. The value is not scaled by 10³.
///
/// Errors: `dim`, `repeats` or `directions` of 0, a set that is empty or not a whole number of rows,
/// or a NaN in the projections.
pub fn sliced_distance(
    a: &[f32],
    b: &[f32],
    dim: usize,
    repeats: usize,
    directions: usize,
    rng: &mut SeededRng,
) -> Result<f64> {
    if dim == 0 || repeats == 0 || directions == 0 {
        return Err(Error::invalid(format!(
            "sliced distance needs dim, repeats and directions of at least 1, got {dim}, {repeats} and {directions}"
        )));
    }
    for (set, name) in [(a, "first"), (b, "second")] {
        if set.is_empty() || set.len() % dim != 0 {
            return Err(Error::invalid(format!(
                "the {name} set has {} values, which is not a positive multiple of the dimension {dim}",
                set.len()
            )));
        }
    }
    let a = Tensor::from_slice(a, (a.len() / dim, dim), &Device::Cpu)?;
    let b = Tensor::from_slice(b, (b.len() / dim, dim), &Device::Cpu)?;

    let mut total = 0.0;
    for _ in 0..repeats {
        let basis = unit_directions(dim, directions, rng)?;
        let projected_a = project(&a, &basis)?;
        let projected_b = project(&b, &basis)?;
        let mut sum = 0.0;
        for (column_a, column_b) in projected_a.iter().zip(&projected_b) {
            sum += wasserstein_1d(column_a, column_b)?;
        }
        total += sum / directions as f64;
    }
    Ok(total / repeats as f64)
}

/// Draws a `dim × count` matrix whose columns are independent random unit vectors.
fn unit_directions(dim: usize, count: usize, rng: &mut SeededRng) -> Result<Tensor> {
    let mut values = rng.normal(&[dim, count], 0.0, 1.0, &Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    for column in 0..count {
        let norm = (0..dim).map(|row| f64::from(values[row * count + column]).powi(2)).sum::<f64>().sqrt();
        for row in 0..dim {
            values[row * count + column] = (f64::from(values[row * count + column]) / norm) as f32;
        }
    }
    Ok(Tensor::from_vec(values, (dim, count), &Device::Cpu)?)
}

/// Projects the rows of `set` onto the columns of `basis` and returns one vector of projections per column.
fn project(set: &Tensor, basis: &Tensor) -> Result<Vec<Vec<f32>>> {
    let projections = set.matmul(basis)?.t()?.contiguous()?;
    Ok(projections.to_vec2::<f32>()?)
}

/// Wasserstein-1 distance of two sorted samples, by walking the breakpoints of both quantile
/// functions. Positions are counted in units of `1 / (n × m)`, so the walk is exact in integers.
fn wasserstein_sorted(a: &[f32], b: &[f32]) -> f64 {
    let (n, m) = (a.len() as u128, b.len() as u128);
    let (mut i, mut j) = (0usize, 0usize);
    let mut position = 0u128;
    let mut total = 0.0;
    while position < n * m {
        let next_a = (i as u128 + 1) * m;
        let next_b = (j as u128 + 1) * n;
        let next = next_a.min(next_b);
        total += (next - position) as f64 * (f64::from(a[i]) - f64::from(b[j])).abs();
        position = next;
        if next == next_a {
            i += 1;
        }
        if next == next_b {
            j += 1;
        }
    }
    total / (n * m) as f64
}

/// Checks that every image of both sets, after the optional resize, has one size, and returns it.
fn common_size(
    real: &[LoadedImage],
    real_labels: &[String],
    fake: &[LoadedImage],
    fake_labels: &[String],
    config: &SwdConfig,
) -> Result<(usize, usize)> {
    let mut images = real.iter().zip(real_labels).chain(fake.iter().zip(fake_labels));
    for (image, label) in images.clone() {
        if image.height.checked_mul(image.width).and_then(|n| n.checked_mul(3)) != Some(image.bgr.len()) {
            return Err(Error::invalid(format!(
                "{label} has {} bytes of pixels but is {}×{} (width × height), which needs width × height × 3",
                image.bgr.len(),
                image.width,
                image.height
            )));
        }
    }
    if let Some(size) = config.resize {
        return Ok(size);
    }

    let (first, first_label) = images.next().expect("both sets are non-empty");
    for (image, label) in images {
        if (image.height, image.width) != (first.height, first.width) {
            return Err(Error::invalid(format!(
                "{label} is {}×{} but {first_label} is {}×{} (width × height): SWD compares images of one \
                 size, so resize them first or request a common size (`--resize WIDTHxHEIGHT` in the CLI)",
                image.width, image.height, first.width, first.height
            )));
        }
    }
    Ok((first.height, first.width))
}

/// Takes the descriptors of every level from every image of a set; returns one row-major matrix per level.
///
/// Images are visited in the order of their pixel digest, so the result does not depend on the input
/// order. Each image's patch positions depend only on the seed, its pixels, its occurrence number among
/// identical images and the level.
fn set_descriptors(
    images: &[LoadedImage],
    (height, width): (usize, usize),
    sizes: &[(usize, usize)],
    config: &SwdConfig,
) -> Vec<Vec<f32>> {
    let mut order: Vec<(u64, usize)> = images.iter().enumerate().map(|(i, image)| (image.pixel_digest(), i)).collect();
    order.sort_by_key(|&(digest, _)| digest);

    let dim = CHANNELS * config.patch_size * config.patch_size;
    let mut descriptors: Vec<Vec<f32>> =
        sizes.iter().map(|_| Vec::with_capacity(images.len() * config.patches_per_image * dim)).collect();
    let mut occurrence = 0u64;
    for (position, &(digest, index)) in order.iter().enumerate() {
        occurrence = if position > 0 && order[position - 1].0 == digest { occurrence + 1 } else { 0 };

        let image = &images[index];
        let planes = if (image.height, image.width) == (height, width) {
            ImagePlanes::from_image(image)
        } else {
            let bgr = resize_linear_u8(&image.bgr, image.height, image.width, 3, height, width);
            ImagePlanes::from_bgr(&bgr, height, width)
        };

        for (level, planes) in laplacian_pyramid(&planes, sizes.len()).iter().enumerate() {
            let mut rng = SeededRng::new(stream_seed(&[config.seed, PATCH_STREAM, digest, occurrence, level as u64]));
            sample_patches(planes, config.patch_size, config.patches_per_image, &mut rng, &mut descriptors[level]);
        }
    }
    descriptors
}

/// Appends `count` patches of `size × size` pixels at uniformly random positions that lie wholly inside
/// the image, each as `3 × size × size` values ordered channel, row, column.
fn sample_patches(image: &ImagePlanes, size: usize, count: usize, rng: &mut SeededRng, out: &mut Vec<f32>) {
    let half = size / 2;
    // Centres range over half ..= side − 1 − half. `next_u64() % n` is biased by under n / 2⁶⁴, far below the sampling noise.
    let rows = (image.height - 2 * half) as u64;
    let columns = (image.width - 2 * half) as u64;
    for _ in 0..count {
        let top = (rng.next_u64() % rows) as usize;
        let left = (rng.next_u64() % columns) as usize;
        for channel in 0..CHANNELS {
            let plane = image.plane(channel);
            for row in top..top + size {
                out.extend_from_slice(&plane[row * image.width + left..][..size]);
            }
        }
    }
}

/// Per-channel (mean, population standard deviation) over every value of the given descriptor matrices.
///
/// Each set's sums are taken separately and then added. Float addition of two values is commutative, so
/// the union statistics of two sets do not depend on their order.
fn channel_statistics(sets: &[&[f32]], area: usize) -> [(f64, f64); CHANNELS] {
    std::array::from_fn(|channel| {
        // Two passes: the mean first, then the squared deviations, which stays accurate when the spread is small.
        let count: usize = sets.iter().map(|set| set.len() / CHANNELS).sum();
        let sum: f64 = sets.iter().map(|set| channel_values(set, channel, area).sum::<f64>()).sum();
        let mean = sum / count as f64;
        let squares: f64 =
            sets.iter().map(|set| channel_values(set, channel, area).map(|v| (v - mean).powi(2)).sum::<f64>()).sum();
        (mean, (squares / count as f64).sqrt())
    })
}

/// Values of one colour channel in a descriptor matrix, as f64.
fn channel_values(set: &[f32], channel: usize, area: usize) -> impl Iterator<Item = f64> + '_ {
    set.chunks_exact(CHANNELS * area)
        .flat_map(move |row| row[channel * area..(channel + 1) * area].iter().map(|&v| f64::from(v)))
}

/// Subtracts each channel's mean and divides by its standard deviation, unless that is 0.
fn normalise(descriptors: &mut [f32], area: usize, statistics: &[(f64, f64); CHANNELS]) {
    for row in descriptors.chunks_exact_mut(CHANNELS * area) {
        for (channel, &(mean, std)) in statistics.iter().enumerate() {
            let scale = if std > 0.0 { 1.0 / std } else { 1.0 };
            for value in &mut row[channel * area..(channel + 1) * area] {
                *value = ((f64::from(*value) - mean) * scale) as f32;
            }
        }
    }
}

/// Blurs with the 5 × 5 Gaussian and keeps every second row and column, starting with the first.
fn pyramid_down(image: &ImagePlanes) -> ImagePlanes {
    let (height, width) = (image.height.div_ceil(2), image.width.div_ceil(2));
    let mut out = ImagePlanes::zeros(height, width);
    let mut rows = vec![0f32; image.height * width];
    for channel in 0..CHANNELS {
        let plane = image.plane(channel);
        // Horizontal pass at the kept columns, then vertical pass at the kept rows.
        for y in 0..image.height {
            let line = &plane[y * image.width..(y + 1) * image.width];
            for x in 0..width {
                rows[y * width + x] = filter_at(|i| line[i], image.width, 2 * x, 1.0);
            }
        }
        let target = &mut out.data[channel * height * width..(channel + 1) * height * width];
        for y in 0..height {
            for x in 0..width {
                target[y * width + x] = filter_at(|i| rows[i * width + x], image.height, 2 * y, 1.0);
            }
        }
    }
    out
}

/// Inserts zeros between the samples (doubling each side), blurs with 4 × the 5 × 5 Gaussian and crops
/// to `height × width`, which is at most twice the input's size.
fn pyramid_up(image: &ImagePlanes, height: usize, width: usize) -> ImagePlanes {
    let (full_height, full_width) = (2 * image.height, 2 * image.width);
    let mut out = ImagePlanes::zeros(height, width);
    let mut spread = vec![0f32; full_height * full_width];
    let mut rows = vec![0f32; full_height * width];
    for channel in 0..CHANNELS {
        let plane = image.plane(channel);
        spread.fill(0.0);
        for y in 0..image.height {
            for x in 0..image.width {
                spread[2 * y * full_width + 2 * x] = plane[y * image.width + x];
            }
        }
        // The 2-D gain of 4 is split as 2 per axis. Borders mirror at the zero-filled size, as the reference does.
        for y in 0..full_height {
            let line = &spread[y * full_width..(y + 1) * full_width];
            for x in 0..width {
                rows[y * width + x] = filter_at(|i| line[i], full_width, x, 2.0);
            }
        }
        let target = &mut out.data[channel * height * width..(channel + 1) * height * width];
        for y in 0..height {
            for x in 0..width {
                target[y * width + x] = filter_at(|i| rows[i * width + x], full_height, y, 2.0);
            }
        }
    }
    out
}

/// Applies `gain × [1, 4, 6, 4, 1] / 16` at `centre` of a line of `len` samples read through `sample`,
/// mirroring at the border samples (`d c b | a b c d | c b a`, SciPy's `mirror`, OpenCV's `REFLECT_101`).
fn filter_at(sample: impl Fn(usize) -> f32, len: usize, centre: usize, gain: f32) -> f32 {
    const TAPS: [f32; 5] = [1.0 / 16.0, 4.0 / 16.0, 6.0 / 16.0, 4.0 / 16.0, 1.0 / 16.0];
    let mut sum = 0.0;
    for (offset, tap) in TAPS.iter().enumerate() {
        let index = mirror(centre as isize + offset as isize - 2, len);
        sum += gain * tap * sample(index);
    }
    sum
}

/// Maps an index outside `0 .. len` back inside by mirroring about the first and last sample.
fn mirror(index: isize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len as isize - 1);
    let folded = index.rem_euclid(period);
    if folded >= len as isize {
        (period - folded) as usize
    } else {
        folded as usize
    }
}

/// Combines `parts` into the seed of an independent random stream (SplitMix64 mixing).
fn stream_seed(parts: &[u64]) -> u64 {
    parts.iter().fold(0x9E37_79B9_7F4A_7C15, |state, &part| splitmix64(state ^ part))
}

fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
