//! Model loading and image generation on pegan-core, shared by the effects, and SinGAN generation.
//!
//! [`generate`] makes the same calls as `pegan_singan_generate` and `pegan_stylegan2_generate` of the
//! C API, so one request gives the same pixels through the plug-in and through the C API. The host
//! test compares the two.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use candle_core::{Device, Tensor};
use pegan_core::image::{tensor_to_samples, SampleLayout, SampleType};
use pegan_core::singan::{NoiseMode, OutputSize, SampleOptions, SinGanModel};

use crate::host::{OfxError, OfxResult};
use crate::stylegan2::{StyleGan2Loaded, StyleGan2Request};
use crate::MAX_SIDE;

/// Working-memory limit of one generation, the C API's default: 8 GiB.
pub const MEMORY_LIMIT_BYTES: u64 = 8 << 30;

/// Rejects a `width` x `height` image whose estimated working memory exceeds [`MEMORY_LIMIT_BYTES`].
pub fn check_memory(estimate_bytes: u64, width: usize, height: usize) -> OfxResult<()> {
    if estimate_bytes > MEMORY_LIMIT_BYTES {
        return Err(OfxError::failed(format!(
            "A {width} x {height} image needs about {} MiB of working memory, over the limit of {} MiB: choose a \
             smaller output size",
            estimate_bytes >> 20,
            MEMORY_LIMIT_BYTES >> 20
        )));
    }
    Ok(())
}

/// The kind of model file that an effect reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    SinGan,
    StyleGan2,
}

impl ModelFamily {
    /// Describes the files the family's effects accept, for hints and messages.
    pub fn model_files(self) -> &'static str {
        match self {
            ModelFamily::SinGan => "a pegan SinGAN model (written by `pegan singan train` or `pegan convert`)",
            ModelFamily::StyleGan2 => {
                "a pegan StyleGAN2 model (written by `pegan stylegan2 train` or `pegan stylegan2 convert`) or an \
                 MMGeneration StyleGAN2 checkpoint (.pth)"
            }
        }
    }
}

/// Size and modification time of a model file, to notice when it is replaced on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
}

/// Reads the stamp of a model file; fails with a message for the user when the file is missing.
pub fn file_stamp(path: &Path, family: ModelFamily) -> OfxResult<FileStamp> {
    let files = family.model_files();
    if path.as_os_str().is_empty() {
        return Err(OfxError::failed(format!("No model file is set: choose {files} in the Model file parameter")));
    }
    let metadata = std::fs::metadata(path).map_err(|error| {
        OfxError::failed(format!(
            "Model file '{}' cannot be read ({error}): choose an existing file, {files}, in the Model file parameter",
            path.display()
        ))
    })?;
    if !metadata.is_file() {
        return Err(OfxError::failed(format!(
            "Model file '{}' is not a file: choose {files} in the Model file parameter",
            path.display()
        )));
    }
    Ok(FileStamp { len: metadata.len(), modified: metadata.modified().ok() })
}

/// A model of either family, shared by the renders of one instance.
#[derive(Clone)]
pub enum Model {
    SinGan(Arc<SinGanModel>),
    StyleGan2(Arc<StyleGan2Loaded>),
}

/// A model loaded on the CPU, with the file it came from.
pub struct LoadedModel {
    pub path: PathBuf,
    pub stamp: FileStamp,
    pub model: Model,
}

impl LoadedModel {
    /// Loads a model file of `family`. A SinGAN model whose training was stopped loads, but
    /// [`generate`] rejects it.
    pub fn load(path: &Path, family: ModelFamily) -> OfxResult<Self> {
        let stamp = file_stamp(path, family)?;
        let model = match family {
            ModelFamily::SinGan => Model::SinGan(Arc::new(load_singan(path)?)),
            ModelFamily::StyleGan2 => Model::StyleGan2(Arc::new(StyleGan2Loaded::load(path)?)),
        };
        Ok(LoadedModel { path: path.to_path_buf(), stamp, model })
    }

    /// Returns the size the model generates by default, (width, height) in pixels.
    pub fn trained_size(&self) -> OfxResult<(usize, usize)> {
        match &self.model {
            Model::SinGan(model) => {
                let (height, width) = model.stage_sizes().last().copied().unwrap_or((0, 0));
                Ok((width, height))
            }
            Model::StyleGan2(loaded) => loaded.trained_size(),
        }
    }
}

/// Returns whether a file starts like a zip archive, the container of PyTorch `.pth` checkpoints.
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK")
}

fn load_singan(path: &Path) -> OfxResult<SinGanModel> {
    SinGanModel::load(path, &Device::Cpu).map_err(|error| {
        // The file is read again only to name a model of the other family in the message.
        let bytes = std::fs::read(path).unwrap_or_default();
        let message = if pegan_core::stylegan2::model::read_metadata(&bytes).is_ok() {
            format!(
                "Model file '{}' is a StyleGAN2 model: use it with the StyleGAN2 Sample effect, or choose {} in the \
                 Model file parameter",
                path.display(),
                ModelFamily::SinGan.model_files()
            )
        } else if is_zip(&bytes) {
            format!(
                "Model file '{}' is a zip archive such as a PyTorch checkpoint (.pth): convert an MMGeneration SinGAN \
                 checkpoint with `pegan convert`, or use a StyleGAN2 checkpoint with the StyleGAN2 Sample effect",
                path.display()
            )
        } else {
            format!("{error}: choose {} in the Model file parameter", ModelFamily::SinGan.model_files())
        };
        OfxError::failed(message)
    })
}

/// Multiplies a side by a factor and rounds half up, as pegan-core's `OutputSize::Factors` does.
///
/// Returns `None` for a factor that is not positive or a result outside 1 to [`MAX_SIDE`] pixels.
pub fn scaled_side(side: usize, factor: f64) -> Option<usize> {
    if !factor.is_finite() || factor <= 0.0 {
        return None;
    }
    let pixels = (side as f64 * factor + 0.5).floor();
    (1.0..=MAX_SIDE as f64).contains(&pixels).then_some(pixels as usize)
}

/// A SinGAN generation request: everything that determines the pixels, besides the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinGanRequest {
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    pub start_stage: usize,
    pub noise: NoiseMode,
}

/// A generation request of either family.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerateRequest {
    SinGan(SinGanRequest),
    StyleGan2(StyleGan2Request),
}

impl GenerateRequest {
    /// Returns the size of the generated image, (width, height) in pixels.
    pub fn size(&self) -> (usize, usize) {
        match self {
            GenerateRequest::SinGan(request) => (request.width, request.height),
            GenerateRequest::StyleGan2(request) => (request.width, request.height),
        }
    }
}

/// A generated image at full resolution: RGB floats in [0, 1], rows from top to bottom.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<f32>,
}

impl Canvas {
    /// Converts a generated (1, 3, H, W) BGR tensor as the C API does for a 3-channel float image.
    pub fn from_tensor(image: &Tensor, width: usize, height: usize) -> OfxResult<Canvas> {
        let layout =
            SampleLayout { width, height, channels: 3, row_stride: width * 3 * 4, sample_type: SampleType::F32 };
        let mut bytes = vec![0u8; width * height * 3 * 4];
        tensor_to_samples(image, &layout, &mut bytes)?;
        let rgb = bytes
            .chunks_exact(4)
            .map(|sample| f32::from_ne_bytes([sample[0], sample[1], sample[2], sample[3]]))
            .collect();
        Ok(Canvas { width, height, rgb })
    }

    /// Returns the red, green and blue of the pixel in column `x` and row `row`, counted from the top.
    pub fn pixel(&self, x: usize, row: usize) -> [f32; 3] {
        let start = (row * self.width + x) * 3;
        [self.rgb[start], self.rgb[start + 1], self.rgb[start + 2]]
    }
}

/// Generates one image. `should_stop` is called between the stages of a SinGAN, and `Ok(None)`
/// means that it returned true before the image was finished. StyleGAN2 generation is one call
/// that cannot be stopped.
pub fn generate(model: &Model, request: &GenerateRequest, should_stop: &dyn Fn() -> bool) -> OfxResult<Option<Canvas>> {
    match (model, request) {
        (Model::SinGan(model), GenerateRequest::SinGan(request)) => generate_singan(model, request, should_stop),
        (Model::StyleGan2(loaded), GenerateRequest::StyleGan2(request)) => {
            crate::stylegan2::generate(loaded, request).map(Some)
        }
        _ => Err(OfxError::failed("internal error in pegan: the request does not match the model family")),
    }
}

/// Generates one SinGAN image, with the checks and defaults of `pegan_singan_generate`.
fn generate_singan(
    model: &SinGanModel,
    request: &SinGanRequest,
    should_stop: &dyn Fn() -> bool,
) -> OfxResult<Option<Canvas>> {
    let (width, height) = (request.width, request.height);
    if !model.is_complete() {
        return Err(OfxError::failed(format!(
            "The model finished {} of its {} training stages, so it cannot generate images: resume its training with \
             `pegan singan train IMAGE --resume -o MODEL`",
            model.metadata.finished_stages,
            model.num_stages()
        )));
    }
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(OfxError::failed(format!(
            "The output size {width} x {height} pixels is out of range: choose 1 to {MAX_SIDE} pixels per side"
        )));
    }
    let last_stage = model.num_stages() - 1;
    if request.start_stage > last_stage {
        return Err(OfxError::failed(format!(
            "Start stage {} does not exist: this model has stages 0 to {last_stage}",
            request.start_stage
        )));
    }

    // The trained size goes through OutputSize::Trained, as in the C API: retargeting to the same size
    // can round the intermediate stages differently.
    let (trained_height, trained_width) = model.stage_sizes().last().copied().unwrap_or((0, 0));
    let size = if (width, height) == (trained_width, trained_height) {
        OutputSize::Trained
    } else {
        OutputSize::Pixels { width, height }
    };
    if request.noise == NoiseMode::Reconstruction && (size != OutputSize::Trained || request.start_stage != 0) {
        return Err(OfxError::failed(format!(
            "Reconstruction works only at the trained size {trained_width} x {trained_height} with start stage 0, but \
             {width} x {height} was requested: choose Random noise or the trained size"
        )));
    }
    check_memory(model.estimate_memory(&model.stage_sizes_for(size)?), width, height)?;

    let options = SampleOptions {
        size,
        mode: request.noise,
        seed: request.seed,
        start_stage: request.start_stage,
        start_image: None,
        memory_limit_bytes: MEMORY_LIMIT_BYTES,
    };
    // `sample_cancellable` returns the pixels of `sample`, which the C API calls, unless it is stopped.
    let image = match model.sample_cancellable(&options, 0, should_stop) {
        Err(pegan_core::Error::Cancelled) => return Ok(None),
        result => result?,
    };
    Canvas::from_tensor(&image, width, height).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_side_rounds_half_up() {
        assert_eq!(scaled_side(24, 1.0), Some(24));
        assert_eq!(scaled_side(24, 0.5), Some(12));
        assert_eq!(scaled_side(25, 0.5), Some(13));
        assert_eq!(scaled_side(18, 2.5), Some(45));
        assert_eq!(scaled_side(3, 0.1), None);
        assert_eq!(scaled_side(24, 0.0), None);
        assert_eq!(scaled_side(24, -1.0), None);
        assert_eq!(scaled_side(24, f64::NAN), None);
        assert_eq!(scaled_side(65_536, 2.0), None);
    }

    #[test]
    fn empty_model_path_is_rejected() {
        for family in [ModelFamily::SinGan, ModelFamily::StyleGan2] {
            let error = file_stamp(Path::new(""), family).unwrap_err();
            assert!(error.message.contains("No model file is set"), "{}", error.message);
            assert!(error.message.contains(family.model_files()), "{}", error.message);
        }
    }

    #[test]
    fn missing_model_file_names_the_path() {
        for family in [ModelFamily::SinGan, ModelFamily::StyleGan2] {
            let error = LoadedModel::load(Path::new("/nonexistent/model.pegan"), family).err().expect("loading fails");
            assert!(error.message.contains("/nonexistent/model.pegan"), "{}", error.message);
            assert!(error.message.contains("Model file parameter"), "{}", error.message);
        }
    }
}
