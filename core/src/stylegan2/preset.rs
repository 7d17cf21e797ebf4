//! The complete StyleGAN2 configuration (generator, discriminator, training) and the built-in presets.
//!
//! Each preset in `core/presets/stylegan2/` is one MMGeneration config of `configs/positional_encoding_in_gans/`
//! (configs a–k and the 256–896 and 256–1024 models), or a reduced model that trains on a CPU.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::json::merge_json;
use crate::stylegan2::config::{GeneratorConfig, GENERATOR_PRESETS};
use crate::stylegan2::discriminator::DiscriminatorConfig;
use crate::stylegan2::train::TrainingConfig;

/// Architecture and training settings of a StyleGAN2 model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StyleGan2Config {
    pub generator: GeneratorConfig,
    pub discriminator: DiscriminatorConfig,
    #[serde(default)]
    pub training: TrainingConfig,
}

impl StyleGan2Config {
    /// Names of the built-in presets.
    pub fn preset_names() -> Vec<&'static str> {
        GENERATOR_PRESETS.iter().map(|(name, _)| *name).collect()
    }

    /// Returns the built-in preset `name`.
    pub fn preset(name: &str) -> Result<Self> {
        let (_, text) = GENERATOR_PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            Error::invalid(format!(
                "unknown StyleGAN2 preset '{name}': use one of {}",
                Self::preset_names().join(", ")
            ))
        })?;
        Self::from_json(text).map_err(|e| Error::invalid(format!("built-in preset '{name}': {e}")))
    }

    /// Parses and validates a full configuration.
    pub fn from_json(text: &str) -> Result<Self> {
        let config: StyleGan2Config =
            serde_json::from_str(text).map_err(|e| Error::invalid(format!("invalid StyleGAN2 config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Applies a partial JSON object on top of this configuration (for `--config` files).
    pub fn with_overrides(&self, overrides: &serde_json::Value) -> Result<Self> {
        let mut value = serde_json::to_value(self).expect("config serialises");
        merge_json(&mut value, overrides);
        let config: StyleGan2Config = serde_json::from_value(value)
            .map_err(|e| Error::invalid(format!("invalid StyleGAN2 config override: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        self.generator.validate()?;
        self.discriminator.validate()?;
        self.training.validate()
    }
}
