//! Configuration of the StyleGAN2 / MS-PIE discriminator.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stylegan2::config::ChannelTable;

/// Smallest and largest `in_size`: the channel table covers the resolutions 4 to 1024.
const IN_SIZE_RANGE: std::ops::RangeInclusive<usize> = 4..=1024;

/// Discriminator architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiscriminatorKind {
    /// `MSStyleGAN2Discriminator`: adaptive average pooling to 2×2 before the linear layers, so it accepts
    /// any input side that is a multiple of `2^R`, with R the number of ResBlocks.
    #[serde(rename = "mspie", alias = "ms_pie")]
    MsPie,
    /// `StyleGAN2Discriminator`: flattens the final 4×4 map, so only `in_size × in_size` inputs are accepted.
    Baseline,
}

/// Hyperparameters of a [`Discriminator`](super::Discriminator). `Default` is the MS-PIE discriminator of the
/// reference configs c–k (in_size 256, channel multiplier 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscriminatorConfig {
    /// Architecture variant.
    pub kind: DiscriminatorKind,
    /// Training resolution, a power of two from 4 to 1024. It sets the number of ResBlocks,
    /// `log2(in_size) − 2`, and their widths `C(in_size) → … → C(4)`.
    pub in_size: usize,
    /// Channel width per resolution.
    pub channels: ChannelTable,
    /// Maximum number of samples that share one minibatch-stddev statistic (4 in the reference).
    pub mbstd_group_size: usize,
    /// Number of channel groups, each with its own stddev feature map (1 in the reference).
    pub mbstd_channel_groups: usize,
}

impl Default for DiscriminatorConfig {
    fn default() -> Self {
        DiscriminatorConfig {
            kind: DiscriminatorKind::MsPie,
            in_size: 256,
            channels: ChannelTable::with_multiplier(2),
            mbstd_group_size: 4,
            mbstd_channel_groups: 1,
        }
    }
}

impl DiscriminatorConfig {
    /// Checks the sizes, the channel table and the minibatch-stddev settings.
    pub fn validate(&self) -> Result<()> {
        if !self.in_size.is_power_of_two() || !IN_SIZE_RANGE.contains(&self.in_size) {
            return Err(Error::invalid(format!(
                "discriminator in_size {} is invalid: use a power of two from {} to {}",
                self.in_size,
                IN_SIZE_RANGE.start(),
                IN_SIZE_RANGE.end()
            )));
        }
        self.channels.validate()?;
        if self.mbstd_group_size == 0 {
            return Err(Error::invalid("minibatch-stddev group size 0 is invalid: use 4 as the reference does"));
        }
        let final_width = self.channels.width(4);
        if self.mbstd_channel_groups == 0 || !final_width.is_multiple_of(self.mbstd_channel_groups) {
            return Err(Error::invalid(format!(
                "minibatch-stddev channel groups {} must divide the final width C(4) = {final_width}: use 1 as the \
                 reference does",
                self.mbstd_channel_groups
            )));
        }
        Ok(())
    }

    /// Returns the number of ResBlocks, `log2(in_size) − 2`.
    pub fn num_blocks(&self) -> usize {
        self.in_size.trailing_zeros().saturating_sub(2) as usize
    }

    /// Returns the factor by which the ResBlocks shrink each side, `2^num_blocks`.
    pub fn downsampling_factor(&self) -> usize {
        1 << self.num_blocks()
    }
}
