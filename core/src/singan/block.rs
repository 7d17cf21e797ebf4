//! The per-stage blocks of the SinGAN generator and discriminator (mmgen `GeneratorBlock`,
//! `DiscriminatorBlock`).

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};

use crate::error::Result;
use crate::layers::{Activation, ConvModule, ConvTrace, NormMode};
use crate::rng::SeededRng;

/// Slope of every LeakyReLU in SinGAN.
const LEAKY_SLOPE: f64 = 0.2;

/// Head, body and tail convolutions shared by both block kinds.
#[derive(Debug, Clone)]
struct ConvStack {
    head: ConvModule,
    body: Vec<ConvModule>,
    tail: ConvModule,
}

impl ConvStack {
    fn layers(&self) -> impl Iterator<Item = (String, &ConvModule)> {
        let num_layers = self.body.len() + 2;
        std::iter::once(&self.head)
            .chain(&self.body)
            .chain(std::iter::once(&self.tail))
            .enumerate()
            .map(move |(index, layer)| (layer_name(index, num_layers), layer))
    }

    fn collect_tensors(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        for (name, layer) in self.layers() {
            layer.collect_tensors(&format!("{prefix}.{name}"), out);
        }
    }

    fn load_tensors(&self, prefix: &str, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (name, layer) in self.layers() {
            layer.load_tensors(&format!("{prefix}.{name}"), tensors)?;
        }
        Ok(())
    }

    fn trainable(&self) -> Vec<Var> {
        self.layers().flat_map(|(_, layer)| layer.trainable()).collect()
    }

    fn to_dtype(&self, dtype: candle_core::DType) -> Result<ConvStack> {
        Ok(ConvStack {
            head: self.head.to_dtype(dtype)?,
            body: self.body.iter().map(|l| l.to_dtype(dtype)).collect::<Result<Vec<_>>>()?,
            tail: self.tail.to_dtype(dtype)?,
        })
    }

    fn copy_from(&self, other: &ConvStack) -> Result<()> {
        for ((_, mine), (_, theirs)) in self.layers().zip(other.layers()) {
            mine.copy_from(theirs)?;
        }
        Ok(())
    }
}

/// Shape of a block: input channels, feature width, layer count, kernel size and conv padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockShape {
    pub in_channels: usize,
    pub channels: usize,
    pub num_layers: usize,
    pub kernel_size: usize,
    pub padding: usize,
}

impl BlockShape {
    /// Returns the key suffix (`head`, `body.block1`, …, `tail`) and the `(out, in, k, k)` shape of every
    /// convolution weight of a block of this shape, head first. `tail_channels` is the output width of the
    /// tail: 3 for a generator, 1 for a discriminator.
    pub fn conv_weight_shapes(&self, tail_channels: usize) -> Vec<(String, [usize; 4])> {
        let k = self.kernel_size;
        (0..self.num_layers)
            .map(|index| {
                let in_channels = if index == 0 { self.in_channels } else { self.channels };
                let out_channels = if index + 1 == self.num_layers { tail_channels } else { self.channels };
                (layer_name(index, self.num_layers), [out_channels, in_channels, k, k])
            })
            .collect()
    }
}

/// Name of layer `index` of a block of `num_layers` layers, as in the reference's state dict.
fn layer_name(index: usize, num_layers: usize) -> String {
    if index == 0 {
        "head".to_string()
    } else if index + 1 == num_layers {
        "tail".to_string()
    } else {
        format!("body.block{index}")
    }
}

/// One generator stage: `tail(body(head(x))) + prev`, with a tanh tail and no clamp.
#[derive(Debug, Clone)]
pub struct GeneratorBlock {
    stack: ConvStack,
    pub shape: BlockShape,
}

impl GeneratorBlock {
    pub fn new(shape: BlockShape, rng: &mut SeededRng, device: &Device) -> Result<Self> {
        let BlockShape { in_channels, channels, num_layers, kernel_size, padding } = shape;
        let hidden = |rng: &mut SeededRng, cin| {
            ConvModule::new(cin, channels, kernel_size, padding, true, Activation::LeakyRelu(LEAKY_SLOPE), rng, device)
        };
        let head = hidden(rng, in_channels)?;
        let body = (0..num_layers - 2).map(|_| hidden(rng, channels)).collect::<Result<Vec<_>>>()?;
        let tail = ConvModule::new(channels, 3, kernel_size, padding, false, Activation::Tanh, rng, device)?;
        Ok(GeneratorBlock { stack: ConvStack { head, body, tail }, shape })
    }

    /// Maps the stage input `x` to an image and adds the previous stage's upsampled image `prev`.
    pub fn forward(&self, x: &Tensor, prev: &Tensor, mode: NormMode) -> Result<Tensor> {
        let mut h = self.stack.head.forward(x, mode)?;
        for layer in &self.stack.body {
            h = layer.forward(&h, mode)?;
        }
        let image = self.stack.tail.forward(&h, mode)?;
        Ok(image.broadcast_add(prev)?)
    }

    pub fn trainable(&self) -> Vec<Var> {
        self.stack.trainable()
    }

    pub fn collect_tensors(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.stack.collect_tensors(prefix, out)
    }

    pub fn load_tensors(&self, prefix: &str, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.stack.load_tensors(prefix, tensors)
    }

    /// Copies the block with every tensor converted to `dtype` (f64 for finite-difference checks).
    pub fn to_dtype(&self, dtype: candle_core::DType) -> Result<GeneratorBlock> {
        Ok(GeneratorBlock { stack: self.stack.to_dtype(dtype)?, shape: self.shape })
    }

    /// Copies every weight and statistic from `other`, which must have the same shape.
    pub fn copy_from(&self, other: &GeneratorBlock) -> Result<()> {
        self.stack.copy_from(&other.stack)
    }
}

/// The activations of one discriminator pass, kept for [`DiscriminatorBlock::input_grad`].
#[derive(Debug, Clone)]
pub struct DiscriminatorTrace {
    traces: Vec<ConvTrace>,
}

/// One discriminator stage: a fully convolutional critic whose output is a score map
/// `(N, 1, H − 10, W − 10)` for 5 valid 3×3 convolutions.
#[derive(Debug, Clone)]
pub struct DiscriminatorBlock {
    stack: ConvStack,
    pub shape: BlockShape,
    pub batch_norm: bool,
}

impl DiscriminatorBlock {
    pub fn new(shape: BlockShape, batch_norm: bool, rng: &mut SeededRng, device: &Device) -> Result<Self> {
        let BlockShape { in_channels, channels, num_layers, kernel_size, padding } = shape;
        let hidden = |rng: &mut SeededRng, cin| {
            ConvModule::new(
                cin,
                channels,
                kernel_size,
                padding,
                batch_norm,
                Activation::LeakyRelu(LEAKY_SLOPE),
                rng,
                device,
            )
        };
        let head = hidden(rng, in_channels)?;
        let body = (0..num_layers - 2).map(|_| hidden(rng, channels)).collect::<Result<Vec<_>>>()?;
        let tail = ConvModule::new(channels, 1, kernel_size, padding, false, Activation::Identity, rng, device)?;
        Ok(DiscriminatorBlock { stack: ConvStack { head, body, tail }, shape, batch_norm })
    }

    /// Scores `x`; higher means "more real" under the WGAN loss.
    pub fn forward(&self, x: &Tensor, mode: NormMode) -> Result<Tensor> {
        Ok(self.forward_traced(x, mode)?.0)
    }

    /// Scores `x` and keeps the activations for [`Self::input_grad`].
    pub fn forward_traced(&self, x: &Tensor, mode: NormMode) -> Result<(Tensor, DiscriminatorTrace)> {
        let mut traces = Vec::with_capacity(self.shape.num_layers);
        let mut h = x.clone();
        for (_, layer) in self.stack.layers() {
            let (out, trace) = layer.forward_traced(&h, mode)?;
            traces.push(trace);
            h = out;
        }
        Ok((h, DiscriminatorTrace { traces }))
    }

    /// Gradient of `Σ D(x) · g` with respect to `x`, built from differentiable ops so that a penalty on
    /// it can be back-propagated to the discriminator's weights.
    pub fn input_grad(&self, trace: &DiscriminatorTrace, g: &Tensor) -> Result<Tensor> {
        let layers: Vec<_> = self.stack.layers().map(|(_, layer)| layer).collect();
        let mut g = g.clone();
        for (layer, layer_trace) in layers.iter().zip(&trace.traces).rev() {
            g = layer.input_grad(layer_trace, &g)?;
        }
        Ok(g)
    }

    pub fn trainable(&self) -> Vec<Var> {
        self.stack.trainable()
    }

    pub fn collect_tensors(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.stack.collect_tensors(prefix, out)
    }

    pub fn load_tensors(&self, prefix: &str, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.stack.load_tensors(prefix, tensors)
    }

    /// Copies the block with every tensor converted to `dtype` (f64 for finite-difference checks).
    pub fn to_dtype(&self, dtype: candle_core::DType) -> Result<DiscriminatorBlock> {
        Ok(DiscriminatorBlock { stack: self.stack.to_dtype(dtype)?, shape: self.shape, batch_norm: self.batch_norm })
    }

    pub fn copy_from(&self, other: &DiscriminatorBlock) -> Result<()> {
        self.stack.copy_from(&other.stack)
    }
}
