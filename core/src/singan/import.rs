//! Conversion of an MMGeneration SinGAN checkpoint into a [`SinGanModel`].

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::singan::mmgen::{load_mmgen_singan, MmgenSinGan};
use crate::singan::model::{ModelMetadata, SinGanModel, FORMAT_VERSION, MODEL_KIND};

impl SinGanModel {
    /// Loads a released MMGeneration SinGAN: the `.pth` checkpoint and its `.pkl` companion with the
    /// fixed noises and noise amplitudes.
    pub fn load_mmgen(pth: &Path, pkl: &Path, device: &Device) -> Result<Self> {
        let checkpoint = load_mmgen_singan(pth, pkl)?;
        Self::from_mmgen(checkpoint, device)
    }

    /// Builds a model from a loaded MMGeneration checkpoint.
    pub fn from_mmgen(checkpoint: MmgenSinGan, device: &Device) -> Result<Self> {
        let config = checkpoint.config.clone();
        let pad = config.noise_padding();
        let stage_sizes = checkpoint
            .fixed_noises
            .iter()
            .map(|noise| {
                let (_, _, h, w) = noise.dims4()?;
                if h <= 2 * pad || w <= 2 * pad {
                    return Err(Error::model(format!(
                        "fixed noise of shape {:?} is smaller than its padding",
                        noise.dims()
                    )));
                }
                Ok([h - 2 * pad, w - 2 * pad])
            })
            .collect::<Result<Vec<_>>>()?;
        if checkpoint.noise_weights.len() != stage_sizes.len() {
            return Err(Error::model(format!(
                "{} noise amplitudes for {} stages",
                checkpoint.noise_weights.len(),
                stage_sizes.len()
            )));
        }
        let top = *stage_sizes.last().ok_or_else(|| Error::model("the checkpoint has no stages"))?;

        let metadata = ModelMetadata {
            format_version: FORMAT_VERSION,
            kind: MODEL_KIND.into(),
            library_version: crate::VERSION.into(),
            config,
            stage_sizes,
            noise_weights: checkpoint.noise_weights.clone(),
            finished_stages: checkpoint.fixed_noises.len(),
            training_image_size: top,
            seed: None,
            training_image_hash: None,
            source: "mmgeneration".into(),
        };

        let mut tensors: HashMap<String, Tensor> = checkpoint
            .weights
            .into_iter()
            .filter(|(key, _)| checkpoint.has_discriminator || !key.starts_with("discriminator."))
            .collect();
        for (stage, noise) in checkpoint.fixed_noises.into_iter().enumerate() {
            tensors.insert(format!("fixed_noises.{stage}"), noise);
        }
        SinGanModel::from_parts(metadata, &tensors, device)
    }
}
