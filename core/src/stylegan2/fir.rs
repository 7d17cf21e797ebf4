//! FIR resampling: mmcv's `upfirdn2d` with a separable kernel, for the ToRGB skip upsampler and the blurs.
//!
//! Per spatial axis: insert `up − 1` zeros after every sample, pad `pad.0` zeros before and `pad.1` after,
//! then convolve (a true convolution, kernel flipped) in valid mode with the 1-D taps. The 2-D kernel is the
//! outer product of the taps with themselves, so StyleGAN2's `K = [1,3,3,1]ᵀ[1,3,3,1] / 64` is the taps
//! `[1,3,3,1] / 8` on each axis, and the upsampling kernel `4·K` is `[1,3,3,1] / 4` on each axis.
//!
//! Everything is built from padding, slicing and scaling, so candle differentiates it to any order, and
//! [`Fir::input_grad`] gives the adjoint explicitly for the hand-written backward passes.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// StyleGAN2's blur taps `[1, 3, 3, 1]`, unnormalised.
const BINOMIAL_4: [f64; 4] = [1.0, 3.0, 3.0, 1.0];

/// A separable `upfirdn2d` with down-sampling factor 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Fir {
    /// 1-D taps applied along each axis (before flipping).
    taps: Vec<f64>,
    /// Zero-insertion factor, 1 or 2.
    up: usize,
    /// Zeros added before and after the (zero-inserted) signal on each axis.
    pad: (usize, usize),
}

impl Fir {
    /// Builds the blur of the discriminator: kernel `K` (sum 1), no upsampling, padding `pad` on each axis.
    pub fn blur(pad: (usize, usize)) -> Self {
        Fir { taps: BINOMIAL_4.iter().map(|t| t / 8.0).collect(), up: 1, pad }
    }

    /// Builds the blur after the baseline generator's transposed convolution: kernel `4·K`, padding (1, 1).
    pub fn upsampling_blur() -> Self {
        Fir { taps: BINOMIAL_4.iter().map(|t| t / 4.0).collect(), up: 1, pad: (1, 1) }
    }

    /// Builds the ToRGB skip upsampler: zero insertion ×2, kernel `4·K`, padding (2, 1). Output side `2n`.
    pub fn skip_upsample() -> Self {
        Fir { taps: BINOMIAL_4.iter().map(|t| t / 4.0).collect(), up: 2, pad: (2, 1) }
    }

    /// A custom filter; `up` must be 1 or 2 and the taps non-empty.
    pub fn new(taps: Vec<f64>, up: usize, pad: (usize, usize)) -> Result<Self> {
        if taps.is_empty() || !(1..=2).contains(&up) {
            return Err(Error::invalid(format!(
                "FIR filter needs at least one tap and an upsampling factor of 1 or 2, got {} taps and factor {up}",
                taps.len()
            )));
        }
        Ok(Fir { taps, up, pad })
    }

    /// Output length along an axis of input length `n`.
    pub fn output_len(&self, n: usize) -> Result<usize> {
        let padded = n * self.up + self.pad.0 + self.pad.1;
        padded.checked_sub(self.taps.len() - 1).filter(|&m| m > 0).ok_or_else(|| {
            Error::invalid(format!(
                "FIR filter with {} taps and padding {:?} needs an input side of at least {}, got {n}",
                self.taps.len(),
                self.pad,
                (self.taps.len() - self.pad.0 - self.pad.1).max(1)
            ))
        })
    }

    /// Filters the two spatial axes of an (N, C, H, W) tensor.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.output_len(h)?;
        self.output_len(w)?;
        let y = self.forward_axis(x, 2)?;
        self.forward_axis(&y, 3)
    }

    /// Computes the adjoint `∂(Σ forward(x) · g)/∂x` for an input of spatial size `input_hw`. Linear in `g`.
    pub fn input_grad(&self, g: &Tensor, input_hw: (usize, usize)) -> Result<Tensor> {
        let (_, _, gh, gw) = g.dims4()?;
        if gh != self.output_len(input_hw.0)? || gw != self.output_len(input_hw.1)? {
            return Err(Error::invalid(format!(
                "FIR gradient of spatial size {gh}×{gw} does not match an input of {}×{}",
                input_hw.0, input_hw.1
            )));
        }
        let gx = self.adjoint_axis(g, 2, input_hw.0)?;
        self.adjoint_axis(&gx, 3, input_hw.1)
    }

    fn forward_axis(&self, x: &Tensor, axis: usize) -> Result<Tensor> {
        let n = x.dim(axis)?;
        let z = if self.up == 2 { insert_zeros(x, axis)? } else { x.clone() };
        let padded = z.pad_with_zeros(axis, self.pad.0, self.pad.1)?;
        let out_len = self.output_len(n)?;

        // True convolution: output j = Σ_t taps[T−1−t] · padded[j + t].
        let t_len = self.taps.len();
        let mut sum: Option<Tensor> = None;
        for t in 0..t_len {
            let term = (padded.narrow(axis, t, out_len)? * self.taps[t_len - 1 - t])?;
            sum = Some(match sum {
                Some(s) => (s + term)?,
                None => term,
            });
        }
        Ok(sum.expect("at least one tap"))
    }

    fn adjoint_axis(&self, g: &Tensor, axis: usize, n: usize) -> Result<Tensor> {
        // Adjoint of the valid convolution: a full correlation with the unflipped taps,
        // padded[i] gets Σ_s taps[s] · g[i + s − (T − 1)].
        let t_len = self.taps.len();
        let g_padded = g.pad_with_zeros(axis, t_len - 1, t_len - 1)?;
        let full_len = g.dim(axis)? + t_len - 1;
        let mut sum: Option<Tensor> = None;
        for (s, tap) in self.taps.iter().enumerate() {
            let term = (g_padded.narrow(axis, s, full_len)? * *tap)?;
            sum = Some(match sum {
                Some(acc) => (acc + term)?,
                None => term,
            });
        }
        let full = sum.expect("at least one tap");

        // Adjoint of the padding: drop it. Adjoint of the zero insertion: keep every `up`-th sample.
        let inner = full.narrow(axis, self.pad.0, n * self.up)?;
        if self.up == 1 {
            return Ok(inner);
        }
        take_even(&inner, axis)
    }
}

/// Doubles an axis by interleaving zeros: out[2i] = x[i], out[2i + 1] = 0.
fn insert_zeros(x: &Tensor, axis: usize) -> Result<Tensor> {
    let mut doubled = x.dims().to_vec();
    doubled[axis] *= 2;
    let stacked = Tensor::stack(&[x, &x.zeros_like()?], axis + 1)?;
    Ok(stacked.reshape(doubled)?)
}

/// Halves an axis of even length by keeping the even samples.
fn take_even(x: &Tensor, axis: usize) -> Result<Tensor> {
    let mut split = x.dims().to_vec();
    let len = split[axis];
    split[axis] = len / 2;
    split.insert(axis + 1, 2);
    Ok(x.reshape(split)?.narrow(axis + 1, 0, 1)?.squeeze(axis + 1)?.contiguous()?)
}
