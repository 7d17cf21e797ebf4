//! A trained (or partly trained) SinGAN and its native file format.
//!
//! The file is a safetensors archive. Tensor keys mirror MMGeneration's state dict
//! (`generator.blocks.{s}.head.conv.weight`, …), plus `fixed_noises.{s}` for the reconstruction noise.
//! The safetensors header metadata contains one entry, `pegan`, a JSON [`ModelMetadata`]. Generation
//! needs nothing else: no training image and no reference files.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image::MAX_IMAGE_SIDE;
use crate::rng::SeededRng;
use crate::singan::block::DiscriminatorBlock;
use crate::singan::config::SinGanConfig;
use crate::singan::generator::SinGanGenerator;

/// Version of the file layout written by this library. Files with a larger version are rejected.
pub const FORMAT_VERSION: u32 = 1;

/// Metadata key in the safetensors header.
const METADATA_KEY: &str = "pegan";

/// Model kind stored in the metadata, so that a StyleGAN2 file is not mistaken for a SinGAN one.
pub const MODEL_KIND: &str = "singan";

/// Everything about a model except its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// File layout version ([`FORMAT_VERSION`] when written by this library).
    pub format_version: u32,
    /// Always `"singan"` for this model kind.
    pub kind: String,
    /// Version of pegan that wrote the file.
    pub library_version: String,
    /// The full configuration the model was built and trained with.
    pub config: SinGanConfig,
    /// Unpadded (height, width) of every stage at the trained size, stage 0 coarsest.
    pub stage_sizes: Vec<[usize; 2]>,
    /// Noise amplitude `w_s` per stage; only stages whose amplitude is known are listed.
    pub noise_weights: Vec<f64>,
    /// Number of stages whose training finished (stages `0 .. finished_stages`).
    pub finished_stages: usize,
    /// (height, width) of the training image in pixels.
    pub training_image_size: [usize; 2],
    /// Seed of the training run, if the model was trained by pegan.
    pub seed: Option<u64>,
    /// Content hash of the training image's decoded pixels ([`crate::image::LoadedImage::pixel_hash`]),
    /// which [`crate::singan::SinGanTrainer::resume`] compares with the image it is given. `None` for
    /// MMGeneration imports and for files written before pegan stored it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_image_hash: Option<String>,
    /// Origin of the weights: `"pegan"` or `"mmgeneration"`.
    pub source: String,
}

/// A SinGAN: generator, discriminator (absent for generator-only imports), fixed noises and metadata.
#[derive(Debug, Clone)]
pub struct SinGanModel {
    pub metadata: ModelMetadata,
    pub generator: SinGanGenerator,
    pub discriminator: Option<Vec<DiscriminatorBlock>>,
    /// Reconstruction noise per stage at the trained size: N(0, 1) at stage 0, zeros elsewhere.
    pub fixed_noises: Vec<Tensor>,
    pub device: Device,
}

impl SinGanModel {
    /// Builds an untrained model with every block initialised, for a pyramid of `stage_sizes`.
    pub fn new(
        config: &SinGanConfig,
        stage_sizes: &[(usize, usize)],
        training_image_size: (usize, usize),
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        Self::with_initial_weights(config, stage_sizes, training_image_size, seed, true, device)
    }

    /// Builds an untrained model; without `with_discriminator` the discriminator is `None`.
    fn with_initial_weights(
        config: &SinGanConfig,
        stage_sizes: &[(usize, usize)],
        training_image_size: (usize, usize),
        seed: u64,
        with_discriminator: bool,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        if stage_sizes.is_empty() {
            return Err(Error::invalid("a SinGAN needs at least one stage"));
        }
        let num_stages = stage_sizes.len();
        let mut rng = SeededRng::new(seed);
        let generator = SinGanGenerator::new(config, num_stages, &mut rng, device)?;
        let discriminator = if with_discriminator {
            let blocks = (0..num_stages)
                .map(|stage| {
                    let shape = config.discriminator_block_shape(stage);
                    DiscriminatorBlock::new(shape, config.discriminator.batch_norm, &mut rng, device)
                })
                .collect::<Result<Vec<_>>>()?;
            Some(blocks)
        } else {
            None
        };

        let pad = config.noise_padding();
        let fixed_noises = stage_sizes
            .iter()
            .enumerate()
            .map(|(stage, &(h, w))| {
                let shape = [1, config.noise_channels(stage), h + 2 * pad, w + 2 * pad];
                if stage == 0 {
                    rng.normal(&shape, 0.0, 1.0, device)
                } else {
                    Ok(Tensor::zeros(&shape, DType::F32, device)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;

        let metadata = ModelMetadata {
            format_version: FORMAT_VERSION,
            kind: MODEL_KIND.into(),
            library_version: crate::VERSION.into(),
            config: config.clone(),
            stage_sizes: stage_sizes.iter().map(|&(h, w)| [h, w]).collect(),
            noise_weights: vec![1.0],
            finished_stages: 0,
            training_image_size: [training_image_size.0, training_image_size.1],
            seed: Some(seed),
            training_image_hash: None,
            source: "pegan".into(),
        };
        Ok(SinGanModel { metadata, generator, discriminator, fixed_noises, device: device.clone() })
    }

    pub fn config(&self) -> &SinGanConfig {
        &self.metadata.config
    }

    pub fn num_stages(&self) -> usize {
        self.metadata.stage_sizes.len()
    }

    /// Unpadded (height, width) of every stage at the trained size.
    pub fn stage_sizes(&self) -> Vec<(usize, usize)> {
        self.metadata.stage_sizes.iter().map(|s| (s[0], s[1])).collect()
    }

    /// True when every stage has finished training.
    pub fn is_complete(&self) -> bool {
        self.metadata.finished_stages == self.num_stages()
    }

    /// Returns every tensor under its file key.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (stage, block) in self.generator.blocks.iter().enumerate() {
            block.collect_tensors(&format!("generator.blocks.{stage}"), &mut out);
        }
        if let Some(blocks) = &self.discriminator {
            for (stage, block) in blocks.iter().enumerate() {
                block.collect_tensors(&format!("discriminator.blocks.{stage}"), &mut out);
            }
        }
        for (stage, noise) in self.fixed_noises.iter().enumerate() {
            out.push((format!("fixed_noises.{stage}"), noise.clone()));
        }
        out
    }

    /// Serialises the model to bytes in the native format.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let tensors = self
            .named_tensors()
            .into_iter()
            .map(|(name, t)| Ok((name, t.to_device(&Device::Cpu)?.contiguous()?)))
            .collect::<Result<Vec<_>>>()?;
        let metadata_json = serde_json::to_string(&self.metadata).expect("metadata serialises");
        let info = HashMap::from([(METADATA_KEY.to_string(), metadata_json)]);
        safetensors::serialize(tensors, Some(info)).map_err(|e| Error::model(format!("cannot serialise: {e}")))
    }

    /// Writes the model atomically: a temporary file in the same folder, renamed over `path` when complete.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        write_atomically(path, &bytes)
    }

    /// Reads a model file written by [`Self::save`].
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::read(path, e))?;
        Self::from_bytes(&bytes, device).map_err(|e| match e {
            Error::InvalidModel(reason) => Error::read(path, format!("not a valid pegan model file: {reason}")),
            other => other,
        })
    }

    /// Parses a model from the bytes of a native file.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let metadata = read_metadata(bytes)?;
        let tensors = candle_core::safetensors::load_buffer(bytes, device)
            .map_err(|e| Error::model(format!("corrupt tensor data: {e}")))?;
        Self::from_parts(metadata, &tensors, device)
    }

    /// Assembles a model from metadata and a map of tensors under file keys.
    ///
    /// The metadata is checked against the stored tensors' shapes before any block is built, so a
    /// file whose metadata claims sizes that its tensors do not have is rejected without allocating
    /// for those sizes. Non-finite (NaN or infinite) values are rejected too.
    pub fn from_parts(metadata: ModelMetadata, tensors: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        metadata.config.validate().map_err(|e| Error::model(format!("stored config is invalid: {e}")))?;
        check_metadata_sizes(&metadata)?;
        let has_discriminator = tensors.keys().any(|k| k.starts_with("discriminator."));
        check_stored_shapes(&metadata, tensors, has_discriminator)?;
        check_finite(tensors)?;

        // Build the skeleton with throw-away weights, then overwrite every tensor from the file. The
        // checks above bound every allocation here by the size of the stored tensors.
        let stage_sizes: Vec<(usize, usize)> = metadata.stage_sizes.iter().map(|s| (s[0], s[1])).collect();
        let mut model = SinGanModel::with_initial_weights(
            &metadata.config,
            &stage_sizes,
            (metadata.training_image_size[0], metadata.training_image_size[1]),
            0,
            has_discriminator,
            device,
        )?;
        for (stage, block) in model.generator.blocks.iter().enumerate() {
            block.load_tensors(&format!("generator.blocks.{stage}"), tensors)?;
        }
        if let Some(blocks) = &model.discriminator {
            for (stage, block) in blocks.iter().enumerate() {
                block.load_tensors(&format!("discriminator.blocks.{stage}"), tensors)?;
            }
        }
        for (stage, slot) in model.fixed_noises.iter_mut().enumerate() {
            let noise = &tensors[&format!("fixed_noises.{stage}")];
            *slot = noise.to_dtype(DType::F32)?.to_device(device)?;
        }
        model.metadata = metadata;
        Ok(model)
    }
}

/// Checks the stage and image sizes and the per-stage counts of the metadata.
fn check_metadata_sizes(metadata: &ModelMetadata) -> Result<()> {
    let sizes = &metadata.stage_sizes;
    let valid_side = |side: usize| (1..=MAX_IMAGE_SIDE).contains(&side);
    if sizes.is_empty() || sizes.iter().any(|&[h, w]| !valid_side(h) || !valid_side(w)) {
        return Err(Error::model(format!(
            "invalid stage sizes {sizes:?}: need at least one stage, each side between 1 and {MAX_IMAGE_SIDE} pixels"
        )));
    }
    let [image_h, image_w] = metadata.training_image_size;
    if !valid_side(image_h) || !valid_side(image_w) {
        return Err(Error::model(format!(
            "invalid training image size {image_w}×{image_h} (width × height): each side must be between 1 and \
             {MAX_IMAGE_SIDE} pixels"
        )));
    }
    if metadata.finished_stages > sizes.len() || metadata.noise_weights.len() > sizes.len() {
        return Err(Error::model(format!(
            "{} finished stages and {} noise amplitudes for {} stages",
            metadata.finished_stages,
            metadata.noise_weights.len(),
            sizes.len()
        )));
    }
    if metadata.noise_weights.len() < metadata.finished_stages {
        return Err(Error::model("a finished stage has no noise amplitude"));
    }
    Ok(())
}

/// Checks that the fixed noises and every convolution weight are stored with the shapes that the
/// metadata implies. The weights dominate a model's memory, so after this check building the model
/// allocates about as much as the file contains.
fn check_stored_shapes(
    metadata: &ModelMetadata,
    tensors: &HashMap<String, Tensor>,
    has_discriminator: bool,
) -> Result<()> {
    let config = &metadata.config;
    let pad = config.noise_padding();
    for (stage, &[h, w]) in metadata.stage_sizes.iter().enumerate() {
        let noise_shape = [1, config.noise_channels(stage), h + 2 * pad, w + 2 * pad];
        check_stored_shape(tensors, &format!("fixed_noises.{stage}"), &noise_shape)?;

        let prefix = format!("generator.blocks.{stage}");
        for (layer, shape) in config.generator_block_shape(stage).conv_weight_shapes(3) {
            check_stored_shape(tensors, &format!("{prefix}.{layer}.conv.weight"), &shape)?;
        }
        if has_discriminator {
            let prefix = format!("discriminator.blocks.{stage}");
            for (layer, shape) in config.discriminator_block_shape(stage).conv_weight_shapes(1) {
                check_stored_shape(tensors, &format!("{prefix}.{layer}.conv.weight"), &shape)?;
            }
        }
    }
    Ok(())
}

fn check_stored_shape(tensors: &HashMap<String, Tensor>, key: &str, expected: &[usize]) -> Result<()> {
    let tensor = tensors.get(key).ok_or_else(|| {
        Error::model(format!("missing tensor '{key}' of shape {expected:?} that the metadata implies"))
    })?;
    if tensor.dims() != expected {
        return Err(Error::model(format!(
            "tensor '{key}' has shape {:?}, but the metadata implies {expected:?}",
            tensor.dims()
        )));
    }
    Ok(())
}

/// Rejects the first tensor, in key order, that contains a NaN or an infinity.
fn check_finite(tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    for key in keys {
        let tensor = &tensors[key];
        if !tensor.dtype().is_float() {
            continue;
        }
        let values = tensor.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::model(format!(
                "tensor '{key}' contains the non-finite value {} at flat index {index}; the file is corrupt",
                values[index]
            )));
        }
    }
    Ok(())
}

/// Reads and checks the JSON metadata of a native model file.
pub fn read_metadata(bytes: &[u8]) -> Result<ModelMetadata> {
    let probe = read_metadata_json(bytes, MODEL_KIND, "a SinGAN", FORMAT_VERSION)?;
    serde_json::from_value(probe).map_err(|e| Error::model(format!("invalid metadata: {e}")))
}

/// Returns the `pegan` JSON metadata entry of a native model file after checking its format version and
/// model kind, which every model kind shares. `kind_name` reads like "a SinGAN" in the error message.
pub fn read_metadata_json(
    bytes: &[u8],
    kind: &str,
    kind_name: &str,
    format_version: u32,
) -> Result<serde_json::Value> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::model(format!("not a safetensors file or truncated ({e})")))?;
    let json = header.metadata().as_ref().and_then(|m| m.get(METADATA_KEY)).ok_or_else(|| {
        Error::model("the safetensors header has no 'pegan' metadata entry; was this file written by pegan?")
    })?;

    // Check the version and kind before the full parse, so a newer file gets the right message.
    let probe: serde_json::Value =
        serde_json::from_str(json).map_err(|e| Error::model(format!("metadata is not valid JSON: {e}")))?;
    let version = probe.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0);
    if version > format_version as u64 {
        return Err(Error::model(format!(
            "file format version {version} is newer than this pegan supports ({format_version}): upgrade pegan"
        )));
    }
    let found = probe.get("kind").and_then(|v| v.as_str()).unwrap_or("");
    if found != kind {
        return Err(Error::model(format!("the file contains a '{found}' model, not {kind_name}")));
    }
    Ok(probe)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and an atomic rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;

    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(folder).map_err(|e| Error::write(path, e))?;
    file.write_all(bytes).map_err(|e| Error::write(path, e))?;
    file.as_file().sync_all().map_err(|e| Error::write(path, e))?;

    // tempfile creates files readable by their owner only; a model file is an ordinary document.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let permissions = std::fs::Permissions::from_mode(0o644);
        file.as_file().set_permissions(permissions).map_err(|e| Error::write(path, e))?;
    }
    file.persist(path).map_err(|e| Error::write(path, e.error))?;
    Ok(())
}
