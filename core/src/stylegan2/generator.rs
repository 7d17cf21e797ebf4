//! The StyleGAN2 generator with MS-PIE (`MSStyleGANv2Generator`) and the baseline (`StyleGANv2Generator`).
//!
//! Dataflow at out_size 256 (L = 14 style rows, 13 noise maps, 6 blocks):
//!
//! ```text
//! x    = head(chosen scale)
//! x    = conv1(x, row 0, noise 0)
//! skip = to_rgb1(x, row 1)
//! for b in 0..6:
//!     x    = convs[2b](x, row 2b+1, noise 2b+1)       upsampling conv
//!     x    = convs[2b+1](x, row 2b+2, noise 2b+2)
//!     skip = to_rgbs[b](x, row 2b+3, skip)            row 2b+3 is shared with convs[2b+2]
//! image = skip                                         (N, 3, H, W), BGR, not clamped
//! ```
//!
//! Parameters live in a [`ParamStore`] under the reference's state-dict keys (without the `generator.` or
//! `generator_ema.` prefix). The noise maps `injected_noise_{l}` are buffers kept here, outside the store.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::encoding::EncodingConfig;
use crate::error::{Error, Result};
use crate::rng::SeededRng;
use crate::stylegan2::config::{GeneratorConfig, GeneratorKind};
use crate::stylegan2::head::{ChosenScale, GeneratorHead};
use crate::stylegan2::mapping::{self, broadcast_style, mix_styles, MappingNetwork};
use crate::stylegan2::modulated::{StyleConv, StyleConvTrace, ToRgb, ToRgbTrace, Upsampling, IMAGE_CHANNELS};
use crate::stylegan2::params::{ParamPath, ParamStore};

/// Maximum difference tolerated between a stored FIR kernel buffer and its fixed value.
const KERNEL_TOLERANCE: f64 = 1e-6;

/// Source of the noise maps of one synthesis call, one map per style conv.
#[derive(Debug)]
pub enum Noise<'a> {
    /// One map per style conv in the order of [`Generator::noise_shapes`], each (N or 1, 1, H_l, W_l).
    Explicit(&'a [Tensor]),
    /// The stored buffers `injected_noise_{l}`, shared by every sample. They exist for chosen scale 0 only.
    Buffers,
    /// Fresh standard-normal maps, one per sample and layer, drawn from the stream.
    Random(&'a mut SeededRng),
}

/// A W+ latent drawn as in training, with the mixing boundary that was used.
#[derive(Debug, Clone)]
pub struct TrainingLatent {
    /// The latent (N, L, C).
    pub latent: Tensor,
    /// Mixing boundary `k`: rows `0 … k − 1` come from the first style and `k …` from the second. `None`
    /// without mixing.
    pub inject_index: Option<usize>,
}

/// Activations of one synthesis pass, kept for [`Generator::latent_grad`].
#[derive(Debug, Clone)]
pub struct SynthesisTrace {
    batch: usize,
    output_dims: Vec<usize>,
    conv1: StyleConvTrace,
    to_rgb1: ToRgbTrace,
    blocks: Vec<BlockTrace>,
}

/// Traces of the three layers of one synthesis block.
#[derive(Debug, Clone)]
struct BlockTrace {
    up: StyleConvTrace,
    conv: StyleConvTrace,
    to_rgb: ToRgbTrace,
}

/// The generator: mapping network, head and synthesis network.
#[derive(Debug, Clone)]
pub struct Generator {
    config: GeneratorConfig,
    mapping: MappingNetwork,
    head: GeneratorHead,
    conv1: StyleConv,
    to_rgb1: ToRgb,
    /// `convs.{2b}` (upsampling) and `convs.{2b+1}` of every block b.
    convs: Vec<StyleConv>,
    to_rgbs: Vec<ToRgb>,
    /// `injected_noise_{l}`, (1, 1, H_l, W_l) at chosen scale 0, zero until loaded or drawn.
    noise_buffers: Vec<Tensor>,
    device: Device,
    dtype: DType,
}

/// Builds the fixed `4·K` kernel of the ToRGB skip upsampler and of the baseline's blur: `[1,3,3,1]ᵀ[1,3,3,1] / 16`.
fn upsampling_kernel(device: &Device) -> Result<Tensor> {
    let taps = [1f32, 3.0, 3.0, 1.0];
    let values: Vec<f32> = taps.iter().flat_map(|a| taps.iter().map(move |b| a * b / 16.0)).collect();
    Ok(Tensor::from_vec(values, (4, 4), device)?)
}

impl Generator {
    /// Builds the generator of `config` under `path`, creating its parameters in the store (zero until
    /// [`ParamStore::initialise`] or a load) or reusing those already there, for example in a
    /// [`ParamStore::deep_copy_as`] copy.
    pub fn new(config: &GeneratorConfig, path: &ParamPath) -> Result<Self> {
        config.validate()?;
        let style = config.style_channels;
        let padding = config.conv_padding();

        let mapping = MappingNetwork::new(path, style, config.num_mlps, config.lr_mlp)?;
        let head = GeneratorHead::new(config, path)?;

        let c4 = config.channels.width(4);
        let conv1 = StyleConv::new(&path.pp("conv1"), head.channels(), c4, style, padding, Upsampling::None)?;
        let to_rgb1 = ToRgb::new(&path.pp("to_rgb1"), c4, style, false)?;

        let upsampling = match (config.deconv2conv, config.up_after_conv) {
            (false, _) => Upsampling::TransposedConvBlur,
            (true, true) => Upsampling::ConvThenResize { interp_pad: config.interp_pad.unwrap_or(0) },
            (true, false) => Upsampling::ResizeThenConv { interp_pad: config.interp_pad.unwrap_or(0) },
        };
        let path_convs = path.pp("convs");
        let path_to_rgbs = path.pp("to_rgbs");
        let mut convs = Vec::new();
        let mut to_rgbs = Vec::new();
        for b in 0..config.num_blocks() {
            let c_in = config.channels.width(1 << (b + 2));
            let c_out = config.channels.width(1 << (b + 3));
            convs.push(StyleConv::new(&path_convs.pp(2 * b), c_in, c_out, style, padding, upsampling)?);
            convs.push(StyleConv::new(&path_convs.pp(2 * b + 1), c_out, c_out, style, padding, Upsampling::None)?);
            to_rgbs.push(ToRgb::new(&path_to_rgbs.pp(b), c_out, style, true)?);
        }

        let mut generator = Generator {
            config: config.clone(),
            mapping,
            head,
            conv1,
            to_rgb1,
            convs,
            to_rgbs,
            noise_buffers: Vec::new(),
            device: path.device().clone(),
            dtype: path.dtype(),
        };
        generator.noise_buffers = generator
            .noise_shapes(ChosenScale::default())?
            .into_iter()
            .map(|(h, w)| Tensor::zeros((1, 1, h, w), generator.dtype, &generator.device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(generator)
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    pub fn mapping(&self) -> &MappingNetwork {
        &self.mapping
    }

    pub fn head(&self) -> &GeneratorHead {
        &self.head
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Returns the compute dtype: float32, or float64 for a generator built on a [`ParamStore::deep_copy_as`] copy.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Returns the number of style rows `L` of the W+ latent.
    pub fn num_latents(&self) -> usize {
        self.config.num_latents()
    }

    pub fn style_channels(&self) -> usize {
        self.config.style_channels
    }

    /// Maps `z` (N, C) to `w` (N, C).
    pub fn map(&self, z: &Tensor) -> Result<Tensor> {
        self.mapping.forward(z)
    }

    /// Computes the mean latent `w̄` (1, C) of 4 × 1024 samples drawn from `rng` (see [`MappingNetwork::mean_latent`]).
    pub fn mean_latent(&self, rng: &mut SeededRng) -> Result<Tensor> {
        self.mapping.mean_latent(rng)
    }

    /// Draws a W+ latent as the reference does in training mode: with probability `mix_prob` two `z`
    /// batches are mapped and mixed at a boundary `k` drawn uniformly from `1 ..= L − 1`, otherwise one
    /// style fills every row. One draw decides for the whole batch.
    pub fn sample_training_latent(&self, batch: usize, rng: &mut SeededRng) -> Result<TrainingLatent> {
        if batch == 0 {
            return Err(Error::invalid("a training latent needs a batch of at least one sample"));
        }

        let c = self.config.style_channels;
        let l = self.num_latents();
        let mix = mapping::bernoulli(rng, self.config.mix_prob);
        let z1 = rng.normal(&[batch, c], 0.0, 1.0, &self.device)?.to_dtype(self.dtype)?;
        let w1 = self.map(&z1)?;
        if !mix {
            return Ok(TrainingLatent { latent: broadcast_style(&w1, l)?, inject_index: None });
        }

        let z2 = rng.normal(&[batch, c], 0.0, 1.0, &self.device)?.to_dtype(self.dtype)?;
        let w2 = self.map(&z2)?;
        let k = mapping::uniform_index(rng, 1, l - 1);
        Ok(TrainingLatent { latent: mix_styles(&w1, &w2, l, k)?, inject_index: Some(k) })
    }

    /// Checks a chosen scale: within bounds, and zero for the baseline, which has a single scale.
    fn check_scale(&self, scale: ChosenScale) -> Result<()> {
        scale.validate()?;
        if self.config.kind == GeneratorKind::Baseline && !scale.is_zero() {
            return Err(Error::invalid(format!(
                "the baseline generator samples at one size only (chosen scale 0), got chosen scale {}x{} (columns x \
                 rows): sample at the trained size",
                scale.width, scale.height
            )));
        }
        Ok(())
    }

    /// Returns the side lengths (height, width) of the noise map of every style conv at `scale`, in layer order:
    /// `conv1`, then `convs.0`, `convs.1`, …
    pub fn noise_shapes(&self, scale: impl Into<ChosenScale>) -> Result<Vec<(usize, usize)>> {
        let scale = scale.into();
        self.check_scale(scale)?;

        let (head_h, head_w) = self.head.size(scale);
        let mut side = (self.conv1.output_len(head_h)?, self.conv1.output_len(head_w)?);
        let mut shapes = vec![side];
        for conv in &self.convs {
            side = (conv.output_len(side.0)?, conv.output_len(side.1)?);
            shapes.push(side);
        }
        Ok(shapes)
    }

    /// Returns the image side lengths (height, width) at `scale`: `(4 + ch, 4 + cw) · out_size / 4`.
    pub fn output_size(&self, scale: impl Into<ChosenScale>) -> Result<(usize, usize)> {
        let shapes = self.noise_shapes(scale)?;
        shapes.last().copied().ok_or_else(|| Error::model("the generator has no style conv"))
    }

    /// Returns the stored noise buffers `injected_noise_{l}`, (1, 1, H_l, W_l) at chosen scale 0.
    pub fn noise_buffers(&self) -> &[Tensor] {
        &self.noise_buffers
    }

    /// Replaces the noise buffers. Each must have the shape of chosen scale 0.
    pub fn set_noise_buffers(&mut self, buffers: Vec<Tensor>) -> Result<()> {
        let shapes = self.noise_shapes(ChosenScale::default())?;
        if buffers.len() != shapes.len() {
            return Err(Error::invalid(format!(
                "got {} noise buffers, but the generator has {} style convs",
                buffers.len(),
                shapes.len()
            )));
        }

        let mut converted = Vec::with_capacity(buffers.len());
        for (l, (buffer, (h, w))) in buffers.into_iter().zip(shapes).enumerate() {
            if buffer.dims() != [1, 1, h, w] {
                return Err(Error::invalid(format!(
                    "noise buffer {l} has shape {:?}, expected [1, 1, {h}, {w}]",
                    buffer.dims()
                )));
            }
            converted.push(buffer.to_dtype(self.dtype)?.to_device(&self.device)?);
        }
        self.noise_buffers = converted;
        Ok(())
    }

    /// Draws new standard-normal noise buffers, as the reference does at construction.
    pub fn draw_noise_buffers(&mut self, rng: &mut SeededRng) -> Result<()> {
        let buffers = self
            .noise_shapes(ChosenScale::default())?
            .into_iter()
            .map(|(h, w)| rng.normal(&[1, 1, h, w], 0.0, 1.0, &self.device))
            .collect::<Result<Vec<_>>>()?;
        self.set_noise_buffers(buffers)
    }

    /// Returns the keys of the FIR kernel buffers, each equal to `4·K`.
    fn kernel_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for b in 0..self.to_rgbs.len() {
            if self.convs[2 * b].upsampling() == Upsampling::TransposedConvBlur {
                keys.push(format!("convs.{}.conv.blur.kernel", 2 * b));
            }
            keys.push(format!("to_rgbs.{b}.upsample.kernel"));
        }
        keys
    }

    /// Returns whether `key` (without prefix) names a buffer of this architecture: a noise map, a FIR kernel, or
    /// the SPE's `head_pos_enc._float_tensor` placeholder. Pass it to [`ParamStore::load`].
    pub fn is_buffer_key(&self, key: &str) -> bool {
        if let Some(index) = key.strip_prefix("injected_noise_") {
            return index.parse::<usize>().is_ok_and(|l| l < self.noise_buffers.len() && index == l.to_string());
        }
        if key == "head_pos_enc._float_tensor" {
            return matches!(self.config.head_pos_encoding, Some(EncodingConfig::Spe { .. }));
        }
        self.kernel_keys().iter().any(|k| k == key)
    }

    /// Loads the buffers from a state dict whose generator keys start with `prefix` (for example
    /// `"generator_ema."`): every `injected_noise_{l}` must be present with its shape. FIR kernels, when
    /// present, must equal their fixed value. `_float_tensor` is ignored, because its content is uninitialised memory.
    pub fn load_buffers(&mut self, tensors: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
        let mut buffers = Vec::with_capacity(self.noise_buffers.len());
        for l in 0..self.noise_buffers.len() {
            let key = format!("{prefix}injected_noise_{l}");
            let tensor = tensors.get(&key).ok_or_else(|| {
                Error::model(format!("missing tensor '{key}' of shape {:?}", self.noise_buffers[l].dims()))
            })?;
            if tensor.dims() != self.noise_buffers[l].dims() {
                return Err(Error::model(format!(
                    "tensor '{key}' has shape {:?}, expected {:?}",
                    tensor.dims(),
                    self.noise_buffers[l].dims()
                )));
            }
            buffers.push(tensor.clone());
        }

        let expected = upsampling_kernel(&Device::Cpu)?;
        for key in self.kernel_keys() {
            let full = format!("{prefix}{key}");
            let Some(kernel) = tensors.get(&full) else { continue };
            let matches = kernel.dims() == expected.dims() && {
                let diff = (kernel.to_device(&Device::Cpu)?.to_dtype(DType::F32)? - &expected)?;
                diff.abs()?.max_all()?.to_scalar::<f32>()? as f64 <= KERNEL_TOLERANCE
            };
            if !matches {
                return Err(Error::model(format!(
                    "FIR kernel '{full}' differs from 4·K = [1,3,3,1]ᵀ[1,3,3,1]/16: the checkpoint uses another \
                     blur kernel, which this implementation does not support"
                )));
            }
        }
        self.set_noise_buffers(buffers)
    }

    /// Loads parameters into `store` (the store this generator was built on) and the buffers, from a
    /// state dict whose generator keys start with `prefix`.
    pub fn load_state_dict(
        &mut self,
        store: &ParamStore,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
    ) -> Result<()> {
        store.load(tensors, prefix, |key| self.is_buffer_key(key))?;
        self.load_buffers(tensors, prefix)
    }

    /// Returns the buffers as MMGeneration stores them: noise maps, FIR kernels (`4·K`) and, for an SPE head,
    /// the `_float_tensor` placeholder (zero).
    pub fn buffer_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out: Vec<(String, Tensor)> =
            self.noise_buffers.iter().enumerate().map(|(l, t)| (format!("injected_noise_{l}"), t.clone())).collect();
        if self.is_buffer_key("head_pos_enc._float_tensor") {
            out.push(("head_pos_enc._float_tensor".into(), Tensor::zeros(1, self.dtype, &self.device)?));
        }
        let kernel = upsampling_kernel(&self.device)?.to_dtype(self.dtype)?;
        for key in self.kernel_keys() {
            out.push((key, kernel.clone()));
        }
        Ok(out)
    }

    /// Lists every key and shape of the reference state dict of this generator, parameters and buffers, in the
    /// reference's order.
    ///
    /// NOTE: only the config-f order is checked against a key list written by the reference. The position of
    /// the baseline's `convs.{2b}.conv.blur.kernel` inside its group is unverified.
    pub fn state_dict_layout(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for (l, buffer) in self.noise_buffers.iter().enumerate() {
            out.push((format!("injected_noise_{l}"), buffer.dims().to_vec()));
        }
        let c = self.config.style_channels;
        for j in 1..=self.config.num_mlps {
            out.push((format!("style_mapping.{j}.bias"), vec![c]));
            out.push((format!("style_mapping.{j}.linear.weight_orig"), vec![c, c]));
        }
        match &self.head {
            GeneratorHead::Constant { input, .. } => out.push(("constant_input.input".into(), input.dims().to_vec())),
            GeneratorHead::Encoding { .. } => {
                if self.is_buffer_key("head_pos_enc._float_tensor") {
                    out.push(("head_pos_enc._float_tensor".into(), vec![1]));
                }
            }
        }

        let push_style_conv = |out: &mut Vec<(String, Vec<usize>)>, prefix: &str, conv: &StyleConv| {
            let m = conv.conv();
            let (cin, cout, k) = (m.in_channels(), m.out_channels(), m.kernel_size());
            out.push((format!("{prefix}.conv.weight_orig"), vec![1, cout, cin, k, k]));
            out.push((format!("{prefix}.conv.style_modulation.bias"), vec![cin]));
            out.push((format!("{prefix}.conv.style_modulation.linear.weight_orig"), vec![cin, c]));
            if conv.upsampling() == Upsampling::TransposedConvBlur {
                out.push((format!("{prefix}.conv.blur.kernel"), vec![4, 4]));
            }
            out.push((format!("{prefix}.noise_injector.weight"), vec![1]));
            out.push((format!("{prefix}.activate.bias"), vec![cout]));
        };
        let push_to_rgb = |out: &mut Vec<(String, Vec<usize>)>, prefix: &str, layer: &ToRgb| {
            let cin = layer.conv().in_channels();
            out.push((format!("{prefix}.bias"), vec![1, IMAGE_CHANNELS, 1, 1]));
            if layer.has_skip() {
                out.push((format!("{prefix}.upsample.kernel"), vec![4, 4]));
            }
            out.push((format!("{prefix}.conv.weight_orig"), vec![1, IMAGE_CHANNELS, cin, 1, 1]));
            out.push((format!("{prefix}.conv.style_modulation.bias"), vec![cin]));
            out.push((format!("{prefix}.conv.style_modulation.linear.weight_orig"), vec![cin, c]));
        };

        push_style_conv(&mut out, "conv1", &self.conv1);
        push_to_rgb(&mut out, "to_rgb1", &self.to_rgb1);
        for (m, conv) in self.convs.iter().enumerate() {
            push_style_conv(&mut out, &format!("convs.{m}"), conv);
        }
        for (b, layer) in self.to_rgbs.iter().enumerate() {
            push_to_rgb(&mut out, &format!("to_rgbs.{b}"), layer);
        }
        out
    }

    /// Turns a noise source into one map per style conv, checked against the shapes at `scale`.
    fn resolve_noise(&self, batch: usize, scale: ChosenScale, noise: Noise<'_>) -> Result<Vec<Tensor>> {
        let shapes = self.noise_shapes(scale)?;
        match noise {
            Noise::Explicit(maps) => {
                if maps.len() != shapes.len() {
                    return Err(Error::invalid(format!(
                        "got {} noise maps, but the generator has {} style convs",
                        maps.len(),
                        shapes.len()
                    )));
                }
                maps.iter()
                    .zip(&shapes)
                    .enumerate()
                    .map(|(l, (map, &(h, w)))| {
                        let dims = map.dims();
                        let fits = dims.len() == 4 && (dims[0] == batch || dims[0] == 1) && dims[1..] == [1, h, w];
                        if !fits {
                            return Err(Error::invalid(format!(
                                "noise map {l} has shape {dims:?}, expected ({batch} or 1, 1, {h}, {w}) at this \
                                 chosen scale"
                            )));
                        }
                        Ok(map.to_dtype(self.dtype)?.to_device(&self.device)?)
                    })
                    .collect()
            }
            Noise::Buffers => {
                if !scale.is_zero() {
                    return Err(Error::invalid(format!(
                        "the stored noise buffers exist for chosen scale 0 only, got ({}, {}): pass explicit \
                         noise maps or a random stream",
                        scale.height, scale.width
                    )));
                }
                Ok(self.noise_buffers.clone())
            }
            Noise::Random(rng) => shapes
                .iter()
                .map(|&(h, w)| Ok(rng.normal(&[batch, 1, h, w], 0.0, 1.0, &self.device)?.to_dtype(self.dtype)?))
                .collect(),
        }
    }

    /// Checks a W+ latent and returns its batch size.
    fn check_latent(&self, latent: &Tensor) -> Result<usize> {
        let (l, c) = (self.num_latents(), self.config.style_channels);
        match latent.dims() {
            &[n, rows, channels] if n > 0 && rows == l && channels == c => {
                if latent.dtype() != self.dtype {
                    return Err(Error::invalid(format!(
                        "latent has dtype {:?} but the generator computes in {:?}: convert it first",
                        latent.dtype(),
                        self.dtype
                    )));
                }
                Ok(n)
            }
            dims => Err(Error::invalid(format!("latent has shape {dims:?}, expected (N, {l}, {c}) with N ≥ 1"))),
        }
    }

    /// Runs the synthesis network on the W+ latent (N, L, C) at `scale` and returns the image (N, 3, H, W).
    pub fn synthesize(&self, latent: &Tensor, scale: impl Into<ChosenScale>, noise: Noise<'_>) -> Result<Tensor> {
        Ok(self.run(latent, scale.into(), noise, false)?.0)
    }

    /// Runs [`Generator::synthesize`] and also keeps what [`Generator::latent_grad`] needs.
    pub fn synthesize_traced(
        &self,
        latent: &Tensor,
        scale: impl Into<ChosenScale>,
        noise: Noise<'_>,
    ) -> Result<(Tensor, SynthesisTrace)> {
        let (image, trace) = self.run(latent, scale.into(), noise, true)?;
        Ok((image, trace.ok_or_else(|| Error::model("synthesis trace was not recorded"))?))
    }

    /// Runs the synthesis network, and records the trace only when `keep_trace` is set.
    fn run(
        &self,
        latent: &Tensor,
        scale: ChosenScale,
        noise: Noise<'_>,
        keep_trace: bool,
    ) -> Result<(Tensor, Option<SynthesisTrace>)> {
        let _span = tracing::trace_span!("synthesis", height = scale.height, width = scale.width).entered();
        let n = self.check_latent(latent)?;
        self.check_scale(scale)?;
        let noises = self.resolve_noise(n, scale, noise)?;

        let row = |j: usize| -> Result<Tensor> { Ok(latent.narrow(1, j, 1)?.squeeze(1)?.contiguous()?) };

        // Without a trace, the style convolutions skip their activation slopes.
        let style_conv = |layer: &StyleConv, x: &Tensor, j: usize| -> Result<(Tensor, Option<StyleConvTrace>)> {
            if keep_trace {
                let (out, trace) = layer.forward_traced(x, &row(j)?, &noises[j])?;
                Ok((out, Some(trace)))
            } else {
                Ok((layer.forward(x, &row(j)?, &noises[j])?, None))
            }
        };

        let to_rgb =
            |layer: &ToRgb, x: &Tensor, j: usize, skip: Option<&Tensor>| -> Result<(Tensor, Option<ToRgbTrace>)> {
                if keep_trace {
                    let (out, trace) = layer.forward_traced(x, &row(j)?, skip)?;
                    Ok((out, Some(trace)))
                } else {
                    Ok((layer.forward(x, &row(j)?, skip)?, None))
                }
            };

        let x = self.head.forward(n, scale, self.dtype, &self.device)?;
        let (mut x, conv1) = {
            let _span = tracing::trace_span!("conv1").entered();
            style_conv(&self.conv1, &x, 0)?
        };
        let (mut skip, to_rgb1) = to_rgb(&self.to_rgb1, &x, 1, None)?;

        let mut blocks = Vec::new();
        for (b, to_rgb_layer) in self.to_rgbs.iter().enumerate() {
            let _span = tracing::trace_span!("block", index = b).entered();
            let (up_out, up) = style_conv(&self.convs[2 * b], &x, 2 * b + 1)?;
            let (conv_out, conv) = style_conv(&self.convs[2 * b + 1], &up_out, 2 * b + 2)?;
            let (rgb, rgb_trace) = to_rgb(to_rgb_layer, &conv_out, 2 * b + 3, Some(&skip))?;
            x = conv_out;
            skip = rgb;
            if let (Some(up), Some(conv), Some(to_rgb)) = (up, conv, rgb_trace) {
                blocks.push(BlockTrace { up, conv, to_rgb });
            }
        }

        let trace = match (conv1, to_rgb1) {
            (Some(conv1), Some(to_rgb1)) => {
                Some(SynthesisTrace { batch: n, output_dims: skip.dims().to_vec(), conv1, to_rgb1, blocks })
            }
            _ => None,
        };
        Ok((skip, trace))
    }

    /// Computes `∂(Σ image · g_image)/∂latent`, (N, L, C), by the explicit backward pass of the synthesis network.
    ///
    /// The pass is built from differentiable tensor ops on the traced activations, so a penalty on the result
    /// (the path-length regulariser) back-propagates to every parameter and to the latent.
    pub fn latent_grad(&self, trace: &SynthesisTrace, g_image: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("latent_grad").entered();
        if g_image.dims() != trace.output_dims.as_slice() {
            return Err(Error::invalid(format!(
                "image gradient has shape {:?}, but the traced image has shape {:?}",
                g_image.dims(),
                trace.output_dims
            )));
        }

        let l = self.num_latents();
        let mut rows: Vec<Option<Tensor>> = vec![None; l];
        let mut add_row = |j: usize, g: Tensor| -> Result<()> {
            rows[j] = Some(match rows[j].take() {
                Some(acc) => (acc + g)?,
                None => g,
            });
            Ok(())
        };

        let g_image = g_image.to_dtype(self.dtype)?;
        let mut g_skip = g_image;
        // Gradient reaching the output of the current block from the next block's upsampling conv.
        let mut g_next: Option<Tensor> = None;
        for (b, block) in trace.blocks.iter().enumerate().rev() {
            let _span = tracing::trace_span!("block_backward", index = b).entered();
            let (g_rgb_x, g_w, g_skip_prev) = self.to_rgbs[b].backward(&block.to_rgb, &g_skip)?;
            add_row(2 * b + 3, g_w)?;
            let g_x = match g_next.take() {
                Some(g) => (g_rgb_x + g)?,
                None => g_rgb_x,
            };
            let (g_mid, g_w) = self.convs[2 * b + 1].backward(&block.conv, &g_x, true)?;
            add_row(2 * b + 2, g_w)?;
            let g_mid = g_mid.ok_or_else(|| Error::model("style conv backward lost its input gradient"))?;
            let (g_in, g_w) = self.convs[2 * b].backward(&block.up, &g_mid, true)?;
            add_row(2 * b + 1, g_w)?;
            g_next = g_in;
            g_skip = g_skip_prev.ok_or_else(|| Error::model("ToRGB backward lost its skip gradient"))?;
        }

        let (g_rgb_x, g_w, _) = self.to_rgb1.backward(&trace.to_rgb1, &g_skip)?;
        add_row(1, g_w)?;
        let g_x = match g_next {
            Some(g) => (g_rgb_x + g)?,
            None => g_rgb_x,
        };
        // The head does not depend on the latent, so conv1 needs no input gradient.
        let (_, g_w) = self.conv1.backward(&trace.conv1, &g_x, false)?;
        add_row(0, g_w)?;

        let zeros = Tensor::zeros((trace.batch, self.config.style_channels), self.dtype, &self.device)?;
        let rows: Vec<Tensor> = rows.into_iter().map(|r| r.unwrap_or_else(|| zeros.clone())).collect();
        Ok(Tensor::stack(&rows, 1)?)
    }
}
