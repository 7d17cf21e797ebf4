//! Loading MMGeneration v0.7.3 StyleGAN2 / MS-PIE checkpoints (`.pth`), such as the paper's released FFHQ
//! models, with no conversion step.
//!
//! The architecture is read from the tensors, never from the file name:
//!
//! | evidence | conclusion |
//! | --- | --- |
//! | `convs.0.conv.blur.kernel` | baseline generator (transposed conv + blur), configs a and b |
//! | `constant_input.input` (1, C, s, s) | constant head; s = 6 means padding-free convs |
//! | `head_pos_enc._float_tensor` | SPE head, `embedding_dim` = half the input width of `conv1` |
//! | neither, `conv1` input width 2 | CSG head |
//! | `injected_noise_1` side ≠ 2 × `injected_noise_0` side | padding-free convs with interpolation padding 4 |
//! | number of `convs.{m}` | `out_size = 4 · 2^(m/2)` |
//! | `final_linear.0` input = 4 · C(4) | MS-PIE discriminator (adaptive pool 2×2); 16 · C(4): baseline |
//!
//! Widths come from the weight shapes. One setting cannot be read from the tensors: whether an SPE or CSG
//! head is interpolated (`interp_head`, configs e and j) or evaluated at the larger size (f, k). It is read
//! from the config text in the checkpoint's `meta` when present; otherwise the loader assumes `false` and
//! says so in a warning, and the caller can pass the preset instead.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::encoding::EncodingConfig;
use crate::error::{Error, Result};
use crate::stylegan2::config::{ChannelTable, GeneratorConfig, GeneratorKind};
use crate::stylegan2::discriminator::{DiscriminatorConfig, DiscriminatorKind};
use crate::stylegan2::model::StyleGan2Model;
use crate::stylegan2::preset::StyleGan2Config;
use crate::stylegan2::train::TrainingConfig;

/// Key of the running path-length mean in the reference state dict.
const MEAN_PATH_LENGTH_KEY: &str = "gen_auxiliary_losses.0.mean_path_length";

/// Loads an MMGeneration StyleGAN2 checkpoint onto `device`.
///
/// With `config`, the checkpoint must match that configuration exactly; without it the configuration is
/// inferred (see the module documentation). Errors name the file and the first missing, unexpected or
/// mis-shaped key.
pub fn load_mmgen_stylegan2(path: &Path, config: Option<&StyleGan2Config>, device: &Device) -> Result<StyleGan2Model> {
    let tensors = read_state_dict(path)?;
    let meta_config = read_meta_config(path);
    let with_file = |e: Error| match e {
        Error::InvalidModel(reason) => Error::read(path, format!("not a usable StyleGAN2 checkpoint: {reason}")),
        other => other,
    };

    let config = match config {
        Some(c) => c.clone(),
        None => infer_config(&tensors, meta_config.as_deref()).map_err(with_file)?,
    };
    from_state_dict(&config, &tensors, device).map_err(with_file)
}

/// Builds a model from a reference state dict (`generator.`, `generator_ema.`, `discriminator.` keys).
pub fn from_state_dict(config: &StyleGan2Config, tensors: &HashMap<String, Tensor>, device: &Device) -> Result<StyleGan2Model> {
    config.validate()?;
    let has_ema = tensors.keys().any(|k| k.starts_with("generator_ema."));
    let has_generator = tensors.keys().any(|k| k.starts_with("generator."));
    if !has_ema && !has_generator {
        return Err(Error::model("no 'generator.' or 'generator_ema.' keys: this is not a StyleGAN2 checkpoint"));
    }
    let has_discriminator = tensors.keys().any(|k| k.starts_with("discriminator."));
    let known = |k: &str| {
        ["generator.", "generator_ema.", "discriminator."].iter().any(|p| k.starts_with(p)) || k == MEAN_PATH_LENGTH_KEY
    };
    if let Some(stray) = tensors.keys().filter(|k| !known(k)).min() {
        return Err(Error::model(format!(
            "unexpected tensor '{stray}' of shape {:?}: the checkpoint contains more than a StyleGAN2 GAN",
            tensors[stray].dims()
        )));
    }

    let mut model = StyleGan2Model::skeleton(config, device, has_discriminator)?;
    // A checkpoint trained without EMA has only `generator.`; sample with it then.
    let primary = if has_generator { "generator." } else { "generator_ema." };
    let ema = if has_ema { "generator_ema." } else { "generator." };
    model.generator.load_state_dict(&model.generator_params, tensors, primary)?;
    model.generator_ema.load_state_dict(&model.generator_ema_params, tensors, ema)?;
    if let Some((d, params)) = &model.discriminator {
        params.load(tensors, "discriminator.", crate::stylegan2::discriminator::Discriminator::is_buffer_key)?;
        d.check_buffers(tensors, "discriminator.")?;
    }
    if let Some(mean) = tensors.get(MEAN_PATH_LENGTH_KEY) {
        model.mean_path_length = mean.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?.first().copied().unwrap_or(0.0);
    }
    model.metadata.source = "mmgeneration".to_string();
    Ok(model)
}

/// Reads the `state_dict` entry of a zip-format `.pth` file as float32 tensors on the CPU.
fn read_state_dict(path: &Path) -> Result<HashMap<String, Tensor>> {
    let mut magic = [0u8; 2];
    let mut file = std::fs::File::open(path).map_err(|e| Error::read(path, e))?;
    if file.read_exact(&mut magic).is_err() || &magic != b"PK" {
        return Err(Error::read(
            path,
            "not a zip-format PyTorch checkpoint (legacy files cannot be read): re-save it in Python with \
             torch.save(torch.load(path), new_path)",
        ));
    }
    let entries = candle_core::pickle::read_all_with_key(path, Some("state_dict"))
        .or_else(|_| candle_core::pickle::read_all(path))
        .map_err(|e| Error::read(path, format!("cannot read the tensors: {e}")))?;
    let mut tensors = HashMap::new();
    for (key, tensor) in entries {
        // BatchNorm-style integer counters do not occur in StyleGAN2; keep every float tensor as f32.
        let tensor = if tensor.dtype().is_float() { tensor.to_dtype(DType::F32)? } else { tensor };
        tensors.insert(key, tensor);
    }
    if tensors.is_empty() {
        return Err(Error::read(path, "the checkpoint contains no tensors"));
    }
    Ok(tensors)
}

/// Reads the config text stored in the checkpoint's `meta` dict, if the file has one that candle's pickle reader
/// can parse.
fn read_meta_config(path: &Path) -> Option<String> {
    use candle_core::pickle::{Object, Stack};

    let file = std::fs::File::open(path).ok()?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).ok()?;
    let name = zip.file_names().filter_map(|n| n.ok()).find(|n| n.ends_with("data.pkl"))?.into_owned();
    let mut reader = std::io::BufReader::new(zip.by_name(&name).ok()?);
    let mut stack = Stack::empty();
    stack.read_loop(&mut reader).ok()?;
    let root = stack.finalize().ok()?.dict().ok()?;
    let meta = root.into_iter().find(|(k, _)| matches!(k, Object::Unicode(s) if s == "meta"))?.1.dict().ok()?;
    let config = meta.into_iter().find(|(k, _)| matches!(k, Object::Unicode(s) if s == "config"))?.1;
    config.unicode().ok()
}

/// Infers the configuration from the tensors (module documentation), with the reference training settings.
pub fn infer_config(tensors: &HashMap<String, Tensor>, meta_config: Option<&str>) -> Result<StyleGan2Config> {
    let prefix = if tensors.keys().any(|k| k.starts_with("generator_ema.")) { "generator_ema." } else { "generator." };
    let generator = infer_generator(tensors, prefix, meta_config)?;
    let discriminator = if tensors.keys().any(|k| k.starts_with("discriminator.")) {
        infer_discriminator(tensors)?
    } else {
        // A generator-only file: the discriminator config is stored but never built.
        DiscriminatorConfig { in_size: generator.out_size, ..DiscriminatorConfig::default() }
    };
    let mut training = TrainingConfig::default();
    if generator.kind == GeneratorKind::Baseline {
        training.multi_input_scales = vec![0];
        training.multi_scale_probability = None;
    }
    Ok(StyleGan2Config { generator, discriminator, training })
}

fn dims<'a>(tensors: &'a HashMap<String, Tensor>, key: &str) -> Result<&'a [usize]> {
    tensors.get(key).map(|t| t.dims()).ok_or_else(|| Error::model(format!("missing tensor '{key}'")))
}

fn infer_generator(tensors: &HashMap<String, Tensor>, prefix: &str, meta_config: Option<&str>) -> Result<GeneratorConfig> {
    let key = |k: &str| format!("{prefix}{k}");

    let style_channels = dims(tensors, &key("style_mapping.1.linear.weight_orig"))?[1];
    let num_mlps = (1..=64).take_while(|j| tensors.contains_key(&key(&format!("style_mapping.{j}.linear.weight_orig")))).count();
    let num_convs = (0..64).take_while(|m| tensors.contains_key(&key(&format!("convs.{m}.conv.weight_orig")))).count();
    if num_convs == 0 || num_convs % 2 != 0 {
        return Err(Error::model(format!("found {num_convs} 'convs.*' layers; a StyleGAN2 generator has an even number")));
    }
    let num_blocks = num_convs / 2;
    let out_size = 4usize << num_blocks;

    let baseline = tensors.contains_key(&key("convs.0.conv.blur.kernel"));
    let conv1 = dims(tensors, &key("conv1.conv.weight_orig"))?;
    let conv1_in = conv1[2];
    let constant = tensors.get(&key("constant_input.input")).map(|t| t.dims().to_vec());
    let head_pos_encoding = if constant.is_some() {
        None
    } else if tensors.contains_key(&key("head_pos_enc._float_tensor")) {
        Some(EncodingConfig::Spe {
            embedding_dim: conv1_in / 2,
            padding_idx: 0,
            init_size: 256,
            div_half_dim: false,
            center_shift: Some(100),
        })
    } else if conv1_in == 2 {
        Some(EncodingConfig::Csg)
    } else {
        return Err(Error::model(format!(
            "cannot tell the generator head: no constant input, no SPE placeholder, and conv1 takes {conv1_in} channels"
        )));
    };

    let noise_side = |l: usize| dims(tensors, &key(&format!("injected_noise_{l}"))).map(|d| d[2]);
    let no_pad = match &constant {
        Some(d) => d[2] == 6,
        None => num_blocks > 0 && noise_side(1)? != 2 * noise_side(0)?,
    };

    // Widths per resolution: C(4) from conv1, C(2^(b+3)) from the first conv of block b.
    let mut widths = vec![(4usize, conv1[1])];
    for b in 0..num_blocks {
        widths.push((8usize << b, dims(tensors, &key(&format!("convs.{}.conv.weight_orig", 2 * b)))?[1]));
    }
    let channels = fit_channel_table(&widths);

    let interp_head = match (meta_config, &head_pos_encoding) {
        (_, None) => false,
        (Some(text), Some(_)) => text.contains("interp_head=True"),
        (None, Some(_)) => {
            tracing::warn!(
                "the checkpoint does not say whether its positional-encoding head is interpolated (configs e and j) \
                 or evaluated at each scale (d, f, i, k); assuming evaluated. Pass the preset to choose."
            );
            false
        }
    };

    Ok(GeneratorConfig {
        kind: if baseline { GeneratorKind::Baseline } else { GeneratorKind::MsPie },
        out_size,
        style_channels,
        num_mlps,
        lr_mlp: 0.01,
        channels,
        head_pos_encoding,
        head_pos_size: if no_pad { [6, 6] } else { [4, 4] },
        interp_head,
        no_pad,
        interp_pad: no_pad.then_some(4),
        up_after_conv: !no_pad && !baseline,
        deconv2conv: !baseline,
        mix_prob: 0.9,
    })
}

fn infer_discriminator(tensors: &HashMap<String, Tensor>) -> Result<DiscriminatorConfig> {
    let key = |k: &str| format!("discriminator.{k}");
    let num_resblocks = (1..64).take_while(|r| tensors.contains_key(&key(&format!("convs.{r}.conv1.0.conv.weight_orig")))).count();
    let in_size = 4usize << num_resblocks;

    let mut widths = vec![(in_size, dims(tensors, &key("convs.0.0.conv.weight_orig"))?[0])];
    for r in 1..=num_resblocks {
        widths.push((in_size >> r, dims(tensors, &key(&format!("convs.{r}.conv2.1.conv.weight_orig")))?[0]));
    }
    let final_width = widths.last().map(|w| w.1).unwrap_or(0);
    let linear_in = dims(tensors, &key("final_linear.0.linear.weight_orig"))?[1];
    let kind = if linear_in == 4 * final_width {
        DiscriminatorKind::MsPie
    } else if linear_in == 16 * final_width {
        DiscriminatorKind::Baseline
    } else {
        return Err(Error::model(format!(
            "final_linear.0 takes {linear_in} features, which fits neither a 2×2 pool nor a 4×4 map of {final_width} channels"
        )));
    };
    Ok(DiscriminatorConfig { kind, in_size, channels: fit_channel_table(&widths), ..DiscriminatorConfig::default() })
}

/// Returns the channel table with multiplier 2 or 1 that needs the fewest explicit entries to give `widths`.
fn fit_channel_table(widths: &[(usize, usize)]) -> ChannelTable {
    let table_for = |multiplier: usize| {
        let mut table = ChannelTable::with_multiplier(multiplier);
        for &(resolution, width) in widths {
            if table.width(resolution) != width {
                table.overrides.insert(resolution, width);
            }
        }
        table
    };
    let (two, one) = (table_for(2), table_for(1));
    if one.overrides.len() < two.overrides.len() {
        one
    } else {
        two
    }
}
