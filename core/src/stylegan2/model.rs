//! A StyleGAN2 / MS-PIE model (generator, EMA generator, discriminator) and its native file format.
//!
//! The file is a safetensors archive whose tensor keys are MMGeneration's state-dict keys
//! (`generator.…`, `generator_ema.…`, `discriminator.…`), plus `optimizer.{generator,discriminator}.…` for
//! a resumable checkpoint. The header metadata entry `pegan` contains a JSON [`StyleGan2Metadata`] with the
//! full configuration, so sampling needs nothing but this file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::SeededRng;
use crate::singan::model::{read_metadata_json, write_atomically};
use crate::stylegan2::discriminator::Discriminator;
use crate::stylegan2::generator::Generator;
use crate::stylegan2::params::ParamStore;
use crate::stylegan2::preset::StyleGan2Config;

/// Version of the file layout written by this library. Files with a larger version are rejected.
pub const FORMAT_VERSION: u32 = 1;

/// Model kind stored in the metadata, so that a SinGAN file is not mistaken for a StyleGAN2 one.
pub const MODEL_KIND: &str = "stylegan2";

/// Metadata key in the safetensors header (shared with the SinGAN format).
const METADATA_KEY: &str = "pegan";

/// Everything about a model except its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StyleGan2Metadata {
    /// File layout version ([`FORMAT_VERSION`] when written by this library).
    pub format_version: u32,
    /// Always `"stylegan2"`.
    pub kind: String,
    /// Version of pegan that wrote the file.
    pub library_version: String,
    /// Architecture and training configuration.
    pub config: StyleGan2Config,
    /// Training iterations finished.
    pub iteration: u64,
    /// Seed of the training run, if pegan trained the model.
    pub seed: Option<u64>,
    /// Origin of the weights: `"pegan"` or `"mmgeneration"`.
    pub source: String,
    /// Running mean of the path length (`gen_auxiliary_losses.0.mean_path_length`).
    pub mean_path_length: f64,
    /// Adam step counts of the generator and discriminator, when the file carries optimiser state.
    #[serde(default)]
    pub optimizer_steps: Option<[u64; 2]>,
    /// Image folder of the latest training run, when the file was written by training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_data: Option<TrainingData>,
}

/// Image folder a model was trained on, recorded so that resuming on another folder can be noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingData {
    /// Absolute path of the folder, as given to training (with links resolved where possible).
    pub folder: String,
    /// Number of training images found in it.
    pub images: usize,
}

/// Adam moments carried by a checkpoint, keyed `optimizer.{generator,discriminator}.{param}.exp_avg[_sq]`.
#[derive(Debug, Clone)]
pub struct OptimizerState {
    pub tensors: HashMap<String, Tensor>,
    pub generator_steps: u64,
    pub discriminator_steps: u64,
}

/// A StyleGAN2 model. Sampling uses the EMA generator, as the reference's evaluation does.
pub struct StyleGan2Model {
    pub metadata: StyleGan2Metadata,
    pub generator: Generator,
    pub generator_params: ParamStore,
    pub generator_ema: Generator,
    pub generator_ema_params: ParamStore,
    /// Absent in generator-only files, which can sample but not train.
    pub discriminator: Option<(Discriminator, ParamStore)>,
    /// Running path-length mean, mirrored in the metadata on save.
    pub mean_path_length: f64,
    pub optimizer_state: Option<OptimizerState>,
    pub device: Device,
}

impl StyleGan2Model {
    /// Builds a model and initialises it for training from `seed`. The EMA generator starts as
    /// a copy of the generator.
    pub fn new(config: &StyleGan2Config, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let mut rng = SeededRng::new(seed);
        let mut model = Self::skeleton(config, device, true)?;
        model.generator_params.initialise(&mut rng.fork())?;
        model.generator.draw_noise_buffers(&mut rng.fork())?;
        model.generator_ema_params.copy_from(&model.generator_params)?;
        let buffers = model.generator.noise_buffers().to_vec();
        model.generator_ema.set_noise_buffers(buffers)?;
        if let Some((_, params)) = &model.discriminator {
            params.initialise(&mut rng.fork())?;
        }
        model.metadata.seed = Some(seed);
        Ok(model)
    }

    /// Builds the networks with zero weights, before a load or an initialisation.
    pub(crate) fn skeleton(config: &StyleGan2Config, device: &Device, with_discriminator: bool) -> Result<Self> {
        let generator_params = ParamStore::new(device);
        let generator = Generator::new(&config.generator, &generator_params.root())?;
        let generator_ema_params = ParamStore::new(device);
        let generator_ema = Generator::new(&config.generator, &generator_ema_params.root())?;
        let discriminator = if with_discriminator {
            let params = ParamStore::new(device);
            let d = Discriminator::new(config.discriminator.clone(), &params.root())?;
            Some((d, params))
        } else {
            None
        };
        Ok(StyleGan2Model {
            metadata: StyleGan2Metadata {
                format_version: FORMAT_VERSION,
                kind: MODEL_KIND.to_string(),
                library_version: crate::VERSION.to_string(),
                config: config.clone(),
                iteration: 0,
                seed: None,
                source: "pegan".to_string(),
                mean_path_length: 0.0,
                optimizer_steps: None,
                training_data: None,
            },
            generator,
            generator_params,
            generator_ema,
            generator_ema_params,
            discriminator,
            mean_path_length: 0.0,
            optimizer_state: None,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &StyleGan2Config {
        &self.metadata.config
    }

    /// Stores the optimiser state to be written with the next save.
    pub fn set_optimizer_state(
        &mut self,
        tensors: Vec<(String, Tensor)>,
        generator_steps: u64,
        discriminator_steps: u64,
    ) {
        self.optimizer_state =
            Some(OptimizerState { tensors: tensors.into_iter().collect(), generator_steps, discriminator_steps });
    }

    /// Returns every tensor under its file key.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (prefix, params, generator) in [
            ("generator.", &self.generator_params, &self.generator),
            ("generator_ema.", &self.generator_ema_params, &self.generator_ema),
        ] {
            out.extend(params.tensors().into_iter().map(|(k, t)| (format!("{prefix}{k}"), t)));
            out.extend(generator.buffer_tensors()?.into_iter().map(|(k, t)| (format!("{prefix}{k}"), t)));
        }
        if let Some((_, params)) = &self.discriminator {
            out.extend(params.tensors().into_iter().map(|(k, t)| (format!("discriminator.{k}"), t)));
            out.extend(blur_kernels(&self.discriminator_kernel_keys())?);
        }
        if let Some(state) = &self.optimizer_state {
            let mut optimizer: Vec<_> = state.tensors.iter().map(|(k, t)| (k.clone(), t.clone())).collect();
            optimizer.sort_by(|a, b| a.0.cmp(&b.0));
            out.extend(optimizer);
        }
        Ok(out)
    }

    /// File keys of the discriminator's fixed blur kernels, written so the file is a complete state dict.
    fn discriminator_kernel_keys(&self) -> Vec<String> {
        match &self.discriminator {
            Some((d, _)) => d.kernel_keys().into_iter().map(|k| format!("discriminator.{k}")).collect(),
            None => Vec::new(),
        }
    }

    /// Serialises the model to bytes in the native format.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let tensors = self
            .named_tensors()?
            .into_iter()
            .map(|(name, t)| Ok((name, t.to_device(&Device::Cpu)?.contiguous()?)))
            .collect::<Result<Vec<_>>>()?;
        let mut metadata = self.metadata.clone();
        metadata.mean_path_length = self.mean_path_length;
        metadata.optimizer_steps = self.optimizer_state.as_ref().map(|s| [s.generator_steps, s.discriminator_steps]);
        let json = serde_json::to_string(&metadata).expect("metadata serialises");
        let info = HashMap::from([(METADATA_KEY.to_string(), json)]);
        safetensors::serialize(tensors, Some(info)).map_err(|e| Error::model(format!("cannot serialise: {e}")))
    }

    /// Writes the model atomically: a temporary file in the same folder, renamed over `path` when complete.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomically(path, &self.to_bytes()?)
    }

    /// Reads a model file written by [`StyleGan2Model::save`].
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::read(path, e))?;
        Self::from_bytes(&bytes, device).map_err(|e| match e {
            Error::InvalidModel(reason) => Error::read(path, format!("not a valid pegan StyleGAN2 model: {reason}")),
            other => other,
        })
    }

    /// Parses a model from the bytes of a native file.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let metadata = read_metadata(bytes)?;
        metadata.config.validate().map_err(|e| Error::model(format!("stored config is invalid: {e}")))?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| Error::model(format!("corrupt tensor data: {e}")))?;
        Self::from_parts(metadata, &tensors, device)
    }

    /// Assembles a model from metadata and tensors under file keys. Every tensor's shape is checked against
    /// the configuration before it is used, and non-finite values are rejected.
    pub fn from_parts(metadata: StyleGan2Metadata, tensors: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let has_discriminator = tensors.keys().any(|k| k.starts_with("discriminator."));
        let mut model = Self::skeleton(&metadata.config, device, has_discriminator)?;

        for (name, t) in tensors {
            if !name.starts_with("optimizer.") && !all_finite(t)? {
                return Err(Error::model(format!("tensor '{name}' contains NaN or infinite values")));
            }
        }

        let known_prefix =
            |k: &str| ["generator.", "generator_ema.", "discriminator.", "optimizer."].iter().any(|p| k.starts_with(p));
        if let Some(stray) = tensors.keys().filter(|k| !known_prefix(k)).min() {
            return Err(Error::model(format!("unexpected tensor '{stray}' in a StyleGAN2 model file")));
        }
        model.generator.load_state_dict(&model.generator_params, tensors, "generator.")?;
        model.generator_ema.load_state_dict(&model.generator_ema_params, tensors, "generator_ema.")?;
        if let Some((d, params)) = &model.discriminator {
            params.load(tensors, "discriminator.", Discriminator::is_buffer_key)?;
            d.check_buffers(tensors, "discriminator.")?;
        }

        if let Some([generator_steps, discriminator_steps]) = metadata.optimizer_steps {
            let optimizer: HashMap<String, Tensor> = tensors
                .iter()
                .filter(|(k, _)| k.starts_with("optimizer."))
                .map(|(k, t)| Ok((k.clone(), t.to_device(device)?)))
                .collect::<Result<_>>()?;
            model.optimizer_state = Some(OptimizerState { tensors: optimizer, generator_steps, discriminator_steps });
        }
        model.mean_path_length = metadata.mean_path_length;
        model.metadata = metadata;
        Ok(model)
    }
}

/// Returns the discriminator's blur kernel `K` under each of the given keys.
fn blur_kernels(keys: &[String]) -> Result<Vec<(String, Tensor)>> {
    let kernel = crate::stylegan2::discriminator::blur_kernel(&Device::Cpu)?;
    Ok(keys.iter().map(|k| (k.clone(), kernel.clone())).collect())
}

fn all_finite(t: &Tensor) -> Result<bool> {
    let sum = t.to_dtype(candle_core::DType::F64)?.abs()?.sum_all()?.to_scalar::<f64>()?;
    Ok(sum.is_finite())
}

/// Reads and checks the JSON metadata of a native StyleGAN2 model file.
pub fn read_metadata(bytes: &[u8]) -> Result<StyleGan2Metadata> {
    let probe = read_metadata_json(bytes, MODEL_KIND, "a StyleGAN2", FORMAT_VERSION)?;
    serde_json::from_value(probe).map_err(|e| Error::model(format!("invalid metadata: {e}")))
}
