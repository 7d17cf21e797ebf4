//! Loading of MMGeneration v0.7.3 SinGAN checkpoints: the `.pth` state dict and its `.pkl` companion.
//!
//! The loader infers the variant from the tensors and the noise shapes, never from the file name:
//!
//! | evidence | conclusion |
//! | --- | --- |
//! | a `generator.…._float_tensor` key | SPE, with `embedding_dim` = half the head input channels of generator block 0 |
//! | head input channels of generator block 0 | 2: CSG, 3: no encoding |
//! | 1-channel fixed noise at every stage ≥ 1 | `PESinGAN` (3 channels: `SinGAN`) |
//! | fixed-noise sizes that form a pyramid only after removing `2P` = 10 pixels | noise stored padded: interpolation padding |
//! | `discriminator.….bn.…` keys | discriminator with batch norm; other `discriminator.` keys: without |
//! | widths of block 0 | `base_channels` of generator and discriminator |
//!
//! Every tensor the inferred configuration needs must be present with the expected shape, and no
//! other tensor may be, so a wrong inference is reported instead of producing a broken model.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::encoding::EncodingConfig;
use crate::error::{Error, Result};
use crate::pickle::{read_singan_pickle, SinGanPickle};
use crate::singan::config::{ModelType, Preset, SinGanConfig, Variant};

/// An MMGeneration SinGAN checkpoint in a neutral form, before any model is built from it.
#[derive(Debug, Clone)]
pub struct MmgenSinGan {
    /// State-dict tensors, float32, keyed exactly as in the checkpoint. BatchNorm `num_batches_tracked`
    /// and the SPE `_float_tensor` placeholder are dropped, because no computation reads them.
    pub weights: HashMap<String, Tensor>,
    /// Noise amplitude `w_s` of every stage.
    pub noise_weights: Vec<f64>,
    /// Fixed reconstruction noise of every stage, `(1, C, H, W)` on the CPU, at the stored (possibly padded) size.
    pub fixed_noises: Vec<Tensor>,
    /// Index `S` of the last stage: the model has `S + 1` stages.
    pub num_scales: usize,
    /// The configuration inferred from the tensors and the noise shapes.
    pub config: SinGanConfig,
    /// Whether the checkpoint contains the discriminator. Generator-only checkpoints can sample but not train.
    pub has_discriminator: bool,
}

/// Loads an MMGeneration SinGAN checkpoint (`.pth`) and its companion `.pkl` file.
///
/// Errors name the file and the problem: an unreadable or corrupt file, a missing or unexpected key
/// with its shape, or a `.pkl` that does not match the checkpoint.
pub fn load_mmgen_singan(pth: &Path, pkl: &Path) -> Result<MmgenSinGan> {
    let pickle_bytes = std::fs::read(pkl).map_err(|e| Error::read(pkl, e))?;
    let data = read_singan_pickle(&pickle_bytes).map_err(|e| with_file(pkl, e))?;
    let noise_shapes = check_stages(&data).map_err(|e| with_file(pkl, e))?;

    let declared = read_declared_tensors(pth)?;
    let inferred = infer_config(&declared, &noise_shapes).map_err(|e| with_file(pth, e))?;
    let expected = expected_tensors(&inferred.config, noise_shapes.len(), inferred.has_discriminator);
    check_tensors(&declared, &expected, &inferred.config, noise_shapes.len()).map_err(|e| with_file(pth, e))?;

    let weights = load_weights(pth, &declared, &expected)?;
    let fixed_noises = data
        .fixed_noises
        .into_iter()
        .map(|(shape, values)| Tensor::from_vec(values, shape, &Device::Cpu))
        .collect::<candle_core::Result<Vec<_>>>()?;

    Ok(MmgenSinGan {
        weights,
        noise_weights: data.noise_weights,
        fixed_noises,
        num_scales: noise_shapes.len() - 1,
        config: inferred.config,
        has_discriminator: inferred.has_discriminator,
    })
}

/// Prefixes the message of an [`Error::InvalidModel`] with the file it concerns.
fn with_file(path: &Path, error: Error) -> Error {
    match error {
        Error::InvalidModel(message) => Error::model(format!("{}: {message}", path.display())),
        other => other,
    }
}

/// Checks the stage structure of the `.pkl` data and returns the `(C, H, W)` of every fixed noise.
fn check_stages(data: &SinGanPickle) -> Result<Vec<[usize; 3]>> {
    let stages = data.fixed_noises.len();
    if stages == 0 {
        return Err(Error::model("fixed_noises is empty; a SinGAN has at least one stage"));
    }
    if data.noise_weights.len() != stages || data.curr_stage + 1 != stages {
        return Err(Error::model(format!(
            "{stages} fixed noises, {} noise weights and curr_stage {}: a finished model has S + 1 of each and curr_stage S",
            data.noise_weights.len(),
            data.curr_stage
        )));
    }
    data.fixed_noises
        .iter()
        .enumerate()
        .map(|(stage, (shape, _))| match shape.as_slice() {
            &[1, channels, height, width] if channels > 0 && height > 0 && width > 0 => Ok([channels, height, width]),
            _ => Err(Error::model(format!(
                "fixed_noises[{stage}] has shape {shape:?}; expected (1, C, H, W) with non-zero sizes"
            ))),
        })
        .collect()
}

/// Shape and element type of a state-dict tensor, as declared in the checkpoint before any data is read.
#[derive(Debug, Clone, PartialEq)]
struct DeclaredTensor {
    shape: Vec<usize>,
    dtype: DType,
}

/// Reads the names, shapes and types of the state-dict tensors, after checking the zip container.
fn read_declared_tensors(pth: &Path) -> Result<HashMap<String, DeclaredTensor>> {
    let entry_sizes = verify_zip_entries(pth)?;
    let path = pth.to_path_buf();
    let infos =
        guard_candle_panic(pth, || candle_core::pickle::read_pth_tensor_info(&path, false, Some("state_dict")))?
            .map_err(|e| Error::read(pth, format!("not a PyTorch checkpoint with a 'state_dict' entry ({e})")))?;

    let mut declared = HashMap::with_capacity(infos.len());
    for info in infos {
        let shape = info.layout.dims().to_vec();
        // The storage must hold the tensor, so that reading it cannot allocate more than the file declares.
        let needed = shape
            .iter()
            .try_fold(info.dtype.size_in_bytes(), |bytes, &size| bytes.checked_mul(size))
            .and_then(|bytes| bytes.checked_add(info.layout.start_offset()));
        let available = entry_sizes.get(&info.path).copied();
        if needed.is_none() || available.is_none() || needed.map(|n| n as u64) > available {
            return Err(Error::read(
                pth,
                format!(
                    "tensor '{}' of shape {shape:?} needs {needed:?} bytes, but its storage '{}' holds {available:?}",
                    info.name, info.path
                ),
            ));
        }
        declared.insert(info.name, DeclaredTensor { shape, dtype: info.dtype });
    }
    Ok(declared)
}

/// Reads every entry of the zip container, so that a corrupt or truncated file fails its CRC or
/// length check here, and returns each entry's uncompressed size in bytes.
///
/// candle stops reading `data.pkl` at its `STOP` opcode and therefore never reaches the CRC check.
fn verify_zip_entries(pth: &Path) -> Result<HashMap<String, u64>> {
    let file = std::fs::File::open(pth).map_err(|e| Error::read(pth, e))?;
    let file_length = file.metadata().map_err(|e| Error::read(pth, e))?.len();
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| Error::read(pth, format!("not a zip-format PyTorch checkpoint or truncated ({e})")))?;

    let mut sizes = HashMap::with_capacity(archive.len());
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| Error::read(pth, e))?;
        let name = entry.name().map_err(|e| Error::read(pth, e))?.into_owned();
        let size = entry.size();
        // torch.save stores entries uncompressed, so an entry larger than the file is corrupt.
        if entry.compression() == zip::CompressionMethod::Stored && size > file_length {
            return Err(Error::read(
                pth,
                format!("zip entry '{name}' declares {size} bytes, more than the file's {file_length}"),
            ));
        }
        let copied = std::io::copy(&mut entry, &mut std::io::sink())
            .map_err(|e| Error::read(pth, format!("zip entry '{name}' is corrupt ({e})")))?;
        if copied != size {
            return Err(Error::read(pth, format!("zip entry '{name}' has {copied} bytes instead of {size}")));
        }
        sizes.insert(name, size);
    }
    Ok(sizes)
}

/// Runs a candle checkpoint reader and turns a panic into an error.
///
/// candle 0.11.1's pickle reader indexes argument tuples with `Vec::remove`, which panics on a
/// malformed tensor record instead of returning an error.
// NOTE: this relies on unwinding; a build with `panic = "abort"` still aborts on such a file.
fn guard_candle_panic<T>(pth: &Path, read: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T> {
    std::panic::catch_unwind(read)
        .map_err(|_| Error::read(pth, "the checkpoint's pickle data is malformed (the reader panicked)"))
}

/// Configuration and discriminator presence inferred by [`infer_config`].
struct InferredModel {
    config: SinGanConfig,
    has_discriminator: bool,
}

const GENERATOR_HEAD: &str = "generator.blocks.0.head.conv.weight";
const DISCRIMINATOR_HEAD: &str = "discriminator.blocks.0.head.conv.weight";
/// The SPE placeholder buffer of the generator's stage-0 encoding.
const SPE_BUFFER: &str = "generator.head_position_encode._float_tensor";

/// Infers the SinGAN configuration from the declared tensors and the `(C, H, W)` fixed-noise shapes.
fn infer_config(declared: &HashMap<String, DeclaredTensor>, noise_shapes: &[[usize; 3]]) -> Result<InferredModel> {
    let (generator_width, head_inputs) = conv_widths(declared, GENERATOR_HEAD)?;
    let is_spe = declared.keys().any(|key| key.starts_with("generator.") && key.ends_with("._float_tensor"));
    let encoding_dim = match (is_spe, head_inputs) {
        (true, channels) if channels >= 8 && channels % 2 == 0 => Some(channels / 2),
        (true, channels) => {
            return Err(Error::model(format!(
                "the SPE buffer is present but {GENERATOR_HEAD} has {channels} input channels; SPE needs an even count of at least 8"
            )))
        }
        (false, 2 | 3) => None,
        (false, channels) => {
            return Err(Error::model(format!(
                "{GENERATOR_HEAD} has {channels} input channels; expected 2 (CSG), 3 (no encoding) or 2 × embedding_dim with an SPE buffer"
            )))
        }
    };
    let has_encoding = is_spe || head_inputs == 2;

    let model_type = infer_model_type(noise_shapes, has_encoding)?;
    let padded_noise = infer_noise_padding(noise_shapes, has_encoding, model_type);
    let has_discriminator = declared.keys().any(|key| key.starts_with("discriminator."));
    let discriminator_bn = declared.keys().any(|key| key.starts_with("discriminator.") && key.contains(".bn."));

    let variant = match (is_spe, has_encoding, model_type) {
        (true, _, _) if encoding_dim == Some(8) => Variant::Spe8,
        // NOTE: `Variant` names only dims 4 and 8, so another dim is labelled spe4; `embedding_dim` is exact.
        (true, _, _) => Variant::Spe4,
        (false, true, _) => Variant::Csg,
        (false, false, ModelType::SinGan) => Variant::Baseline,
        (false, false, ModelType::PeSinGan) if has_discriminator && !discriminator_bn => Variant::InterpPadNobn,
        (false, false, ModelType::PeSinGan) => Variant::InterpPad,
    };
    if padded_noise && (has_encoding || model_type == ModelType::SinGan) {
        return Err(Error::model(format!(
            "the .pkl stores noises 10 pixels larger than the stage sizes, as only interpolation-padding models do, \
             but the tensors describe a {} model; check that the .pkl belongs to this checkpoint",
            variant.name()
        )));
    }

    let mut config = SinGanConfig::preset(variant, Preset::Paper)?;
    config.model_type = model_type;
    if generator_width > config.generator.max_channels {
        return Err(Error::model(format!(
            "{GENERATOR_HEAD} has {generator_width} output channels, more than the reference cap of {}",
            config.generator.max_channels
        )));
    }
    config.generator.base_channels = generator_width;
    config.generator.min_feat_channels = generator_width;
    config.generator.first_stage_in_channels = head_inputs;
    if let (Some(dim), Some(EncodingConfig::Spe { embedding_dim, .. })) =
        (encoding_dim, config.generator.positional_encoding.as_mut())
    {
        *embedding_dim = dim;
    }
    if !has_encoding {
        // Interpolation padding without padded noise resizes the noise as well (reference `noise_with_pad=False`).
        config.generator.noise_with_pad = padded_noise;
    }
    config.train.fixed_noise_with_pad = padded_noise;
    config.train.first_fixed_noises_ch = noise_shapes[0][0];

    if has_discriminator {
        let (discriminator_width, _) = conv_widths(declared, DISCRIMINATOR_HEAD)?;
        if discriminator_width > config.discriminator.max_channels {
            return Err(Error::model(format!(
                "{DISCRIMINATOR_HEAD} has {discriminator_width} output channels, more than the reference cap of {}",
                config.discriminator.max_channels
            )));
        }
        config.discriminator.base_channels = discriminator_width;
        config.discriminator.min_feat_channels = discriminator_width;
        config.discriminator.batch_norm = discriminator_bn;
    }

    config.validate().map_err(|e| {
        Error::model(format!(
            "the inferred {} configuration is inconsistent ({e}); check that the .pkl belongs to this checkpoint",
            variant.name()
        ))
    })?;
    Ok(InferredModel { config, has_discriminator })
}

/// Output and input channels of a 4-D convolution weight.
fn conv_widths(declared: &HashMap<String, DeclaredTensor>, key: &str) -> Result<(usize, usize)> {
    let tensor = declared
        .get(key)
        .ok_or_else(|| Error::model(format!("missing key '{key}'; this is not a SinGAN state dict")))?;
    match tensor.shape.as_slice() {
        &[outputs, inputs, _, _] => Ok((outputs, inputs)),
        shape => Err(Error::model(format!("key '{key}' has shape {shape:?}; a convolution weight has 4 dimensions"))),
    }
}

/// `PESinGAN` draws 1 noise channel at stages ≥ 1 and `SinGAN` draws 3.
///
/// A single-stage model shows neither; it is taken as `PESinGAN` with an encoding and `SinGAN` without,
/// as in every reference config.
fn infer_model_type(noise_shapes: &[[usize; 3]], has_encoding: bool) -> Result<ModelType> {
    let later_channels: Vec<usize> = noise_shapes[1..].iter().map(|shape| shape[0]).collect();
    if later_channels.is_empty() {
        return Ok(if has_encoding { ModelType::PeSinGan } else { ModelType::SinGan });
    }
    if later_channels.iter().all(|&c| c == 1) {
        Ok(ModelType::PeSinGan)
    } else if later_channels.iter().all(|&c| c == 3) {
        Ok(ModelType::SinGan)
    } else {
        Err(Error::model(format!(
            "fixed noises of stages 1 and later have {later_channels:?} channels; expected all 1 (PESinGAN) or all 3 (SinGAN)"
        )))
    }
}

/// Head padding `P` of every reference config, in pixels per side: `(kernel_size − 1) / 2 × num_layers`.
const REFERENCE_HEAD_PADDING: usize = 5;

/// Decides whether the fixed noises are stored padded (`H_s + 2P`, `W_s + 2P`), as interpolation
/// padding stores them.
///
/// The stage sizes come from one pyramid rule, so the stored sizes form a pyramid either as they are
/// or after removing `2P`. When both readings fit (a single stage, a square image, few stages) or
/// neither does, the reference configs decide: only `PESinGAN` models without an encoding pad.
fn infer_noise_padding(noise_shapes: &[[usize; 3]], has_encoding: bool, model_type: ModelType) -> bool {
    let sizes: Vec<(usize, usize)> = noise_shapes.iter().map(|shape| (shape[1], shape[2])).collect();
    let border = 2 * REFERENCE_HEAD_PADDING;
    let unpadded_fits = is_reference_pyramid(&sizes);
    let padded_fits = sizes.iter().all(|&(h, w)| h > border && w > border)
        && is_reference_pyramid(&sizes.iter().map(|&(h, w)| (h - border, w - border)).collect::<Vec<_>>());
    match (unpadded_fits, padded_fits) {
        (true, false) => false,
        (false, true) => true,
        _ => !has_encoding && model_type == ModelType::PeSinGan,
    }
}

/// Checks whether stage sizes `(h, w)`, coarsest first, follow MMGeneration's pyramid rule
/// `size_s = int(size_S · f^(S − s) + 0.5)` with one factor `f` in `(0, 1]` for both axes.
///
/// Each stage bounds `f`: `size_s − 0.5 ≤ size_S · f^k < size_s + 0.5` with `k = S − s`. The sizes fit
/// when the intersection of all bounds is not empty.
fn is_reference_pyramid(sizes: &[(usize, usize)]) -> bool {
    let Some(&(top_height, top_width)) = sizes.last() else {
        return false;
    };
    let last = sizes.len() - 1;
    let (mut low, mut high) = (0.0f64, 1.0f64);
    for (stage, &(height, width)) in sizes[..last].iter().enumerate() {
        let exponent = 1.0 / (last - stage) as f64;
        for (size, top) in [(height, top_height), (width, top_width)] {
            let (size, top) = (size as f64, top as f64);
            low = low.max(((size - 0.5) / top).max(0.0).powf(exponent));
            high = high.min(((size + 0.5) / top).powf(exponent));
        }
    }
    // The relative slack absorbs the rounding of the float64 powers in the reference.
    low <= high * (1.0 + 1e-9)
}

/// Element type of a state-dict entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    /// A parameter or buffer that computations read; stored as float32 in the reference.
    Float,
    /// BatchNorm `num_batches_tracked` (int64) or the SPE placeholder; checked, then dropped.
    Dropped,
}

/// Lists every state-dict entry of a checkpoint of `config` with `num_stages` stages, in state-dict order.
fn expected_tensors(
    config: &SinGanConfig,
    num_stages: usize,
    has_discriminator: bool,
) -> Vec<(String, Vec<usize>, EntryKind)> {
    let mut entries = Vec::new();
    if matches!(config.generator.positional_encoding, Some(EncodingConfig::Spe { .. })) {
        entries.push((SPE_BUFFER.to_string(), vec![1], EntryKind::Dropped));
    }
    let g = &config.generator;
    for stage in 0..num_stages {
        let in_channels = if stage == 0 { g.first_stage_in_channels } else { 3 };
        let block = BlockLayout {
            prefix: format!("generator.blocks.{stage}"),
            in_channels,
            width: config.generator_channels(stage),
            out_channels: 3,
            num_layers: g.num_layers,
            kernel_size: g.kernel_size,
            batch_norm: true,
        };
        block.push_entries(&mut entries);
    }
    if has_discriminator {
        let d = &config.discriminator;
        for stage in 0..num_stages {
            let block = BlockLayout {
                prefix: format!("discriminator.blocks.{stage}"),
                in_channels: 3,
                width: config.discriminator_channels(stage),
                out_channels: 1,
                num_layers: d.num_layers,
                kernel_size: d.kernel_size,
                batch_norm: d.batch_norm,
            };
            block.push_entries(&mut entries);
        }
    }
    entries
}

/// Layout of one stage block: a head, `num_layers − 2` body convolutions and a tail (mmcv `ConvModule`s).
struct BlockLayout {
    prefix: String,
    in_channels: usize,
    width: usize,
    out_channels: usize,
    num_layers: usize,
    kernel_size: usize,
    batch_norm: bool,
}

impl BlockLayout {
    fn push_entries(&self, entries: &mut Vec<(String, Vec<usize>, EntryKind)>) {
        let k = self.kernel_size;
        let mut layers = vec![("head".to_string(), self.in_channels)];
        layers.extend((1..self.num_layers.saturating_sub(1)).map(|i| (format!("body.block{i}"), self.width)));
        for (layer, inputs) in layers {
            let name = format!("{}.{layer}", self.prefix);
            entries.push((format!("{name}.conv.weight"), vec![self.width, inputs, k, k], EntryKind::Float));
            if self.batch_norm {
                // mmcv gives a convolution a bias only when no norm layer follows it.
                for field in ["weight", "bias", "running_mean", "running_var"] {
                    entries.push((format!("{name}.bn.{field}"), vec![self.width], EntryKind::Float));
                }
                entries.push((format!("{name}.bn.num_batches_tracked"), vec![], EntryKind::Dropped));
            } else {
                entries.push((format!("{name}.conv.bias"), vec![self.width], EntryKind::Float));
            }
        }
        let tail = format!("{}.tail.conv", self.prefix);
        entries.push((format!("{tail}.weight"), vec![self.out_channels, self.width, k, k], EntryKind::Float));
        entries.push((format!("{tail}.bias"), vec![self.out_channels], EntryKind::Float));
    }
}

/// Checks that the checkpoint declares exactly the expected entries, with the expected shapes and types.
fn check_tensors(
    declared: &HashMap<String, DeclaredTensor>,
    expected: &[(String, Vec<usize>, EntryKind)],
    config: &SinGanConfig,
    num_stages: usize,
) -> Result<()> {
    let context = format!("the inferred {} model with {num_stages} stages", config.variant.name());
    for (key, shape, kind) in expected {
        let Some(tensor) = declared.get(key) else {
            return Err(Error::model(format!("missing key '{key}' (shape {shape:?}) for {context}")));
        };
        if &tensor.shape != shape {
            return Err(Error::model(format!(
                "key '{key}' has shape {:?}, but {context} needs {shape:?}",
                tensor.shape
            )));
        }
        let type_fits = match kind {
            EntryKind::Float => tensor.dtype.is_float(),
            // num_batches_tracked is int64; the SPE placeholder is float32 and its value is never read.
            EntryKind::Dropped => true,
        };
        if !type_fits {
            return Err(Error::model(format!("key '{key}' has type {:?}; expected a float type", tensor.dtype)));
        }
    }

    let expected_keys: HashMap<&str, ()> = expected.iter().map(|(key, _, _)| (key.as_str(), ())).collect();
    // Sorted, so that the reported key does not depend on hash order.
    let unexpected: BTreeMap<&String, &DeclaredTensor> =
        declared.iter().filter(|(key, _)| !expected_keys.contains_key(key.as_str())).collect();
    if let Some((key, tensor)) = unexpected.into_iter().next() {
        return Err(Error::model(format!("unexpected key '{key}' (shape {:?}) for {context}", tensor.shape)));
    }
    Ok(())
}

/// Reads the tensor data and keeps the float entries as float32.
fn load_weights(
    pth: &Path,
    declared: &HashMap<String, DeclaredTensor>,
    expected: &[(String, Vec<usize>, EntryKind)],
) -> Result<HashMap<String, Tensor>> {
    let path = pth.to_path_buf();
    let tensors = guard_candle_panic(pth, || candle_core::pickle::read_all_with_key(&path, Some("state_dict")))?
        .map_err(|e| Error::read(pth, format!("cannot read the tensor data ({e})")))?;
    let mut tensors: HashMap<String, Tensor> = tensors.into_iter().collect();

    let mut weights = HashMap::with_capacity(expected.len());
    for (key, shape, kind) in expected {
        if *kind != EntryKind::Float {
            continue;
        }
        let tensor = tensors
            .remove(key)
            .ok_or_else(|| Error::read(pth, format!("tensor '{key}' is declared but its data cannot be read")))?;
        if tensor.dims() != shape.as_slice() || declared.get(key).map(|d| d.dtype) != Some(tensor.dtype()) {
            return Err(Error::read(pth, format!("tensor '{key}' changed between two reads of the file")));
        }
        weights.insert(key.clone(), tensor.to_dtype(DType::F32)?);
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::is_reference_pyramid;

    #[test]
    fn balloons_pyramid_fits_only_unpadded() {
        let sizes = [(25, 33), (32, 43), (41, 55), (53, 71), (68, 91), (88, 117), (113, 150), (145, 193), (186, 248)];
        assert!(is_reference_pyramid(&sizes));
        let padded: Vec<_> = sizes.iter().map(|&(h, w)| (h + 10, w + 10)).collect();
        assert!(!is_reference_pyramid(&padded));
    }

    #[test]
    fn single_stage_fits() {
        assert!(is_reference_pyramid(&[(30, 40)]));
    }
}
