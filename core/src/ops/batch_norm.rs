//! Batch normalisation in training mode as a few fused passes over the map on the CPU.
//!
//! Written with candle's ops, a training-mode batch norm is two reductions and five full-size
//! element-wise ops, and candle's backward pass adds two or three full-size ops per forward op, each
//! with a zero-filled accumulator. SinGAN normalises after every hidden convolution of both networks,
//! on maps of up to 6 million values, so those passes cost seconds per training iteration. Here, per
//! channel (N·H·W values, read as N contiguous rows of H·W):
//! - [`batch_norm_train`]: statistics (mean, then centred variance, summed in f64) and one output pass;
//!   its gradient is one reduction pass and one output pass;
//! - [`batch_norm_input_grad`], the explicit input gradient that the gradient penalty differentiates:
//!   one reduction pass and one output pass, and the same for its own (second-order) gradient.
//!
//! Notation, per channel over its M = N·H·W values: `μ` the mean, `σ²` the biased variance,
//! `s = 1/√(σ² + ε)`, `x̂ = (x − μ)·s`, output `y = γ·x̂ + β`. The batch statistics are computed once,
//! in the forward pass, and every later pass treats them as functions of `x`: the gradients below
//! include their dependence on `x`.
//!
//! CPU tensors of f32 or f64 only ([`supports`]); other devices use the composed form in
//! `crate::layers`.

use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor, WithDType};

use super::{cpu_values, num_threads, run_tasks, SharedMut};
use crate::error::{Error, Result};

/// Batch statistics of one training-mode forward pass, per channel.
#[derive(Debug, Clone)]
pub struct BatchStats {
    /// Mean over N, H and W.
    pub mean: Vec<f64>,
    /// Biased variance (divided by M), the one that normalises.
    pub var: Vec<f64>,
    /// `1/√(var + ε)`.
    inv_std: Vec<f64>,
    /// Values per channel, N·H·W.
    pub count: usize,
}

impl BatchStats {
    /// Unbiased variance (divided by M − 1), the one PyTorch feeds into the running estimate.
    pub fn unbiased_var(&self) -> Vec<f64> {
        let factor = self.count as f64 / (self.count - 1) as f64;
        self.var.iter().map(|v| v * factor).collect()
    }
}

/// Runs `$body` with `$t` bound to the element type of `$storage` (f32 or f64).
macro_rules! with_float_type {
    ($storage:expr, $what:expr, $t:ident => $body:expr) => {
        match $storage {
            CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            other => candle_core::bail!(
                "pegan's fused batch norm takes f32 or f64, but the {} is {:?}",
                $what,
                other.dtype()
            ),
        }
    };
}

/// Returns `true` if the fused kernels take `x`: a CPU tensor of f32 or f64 with four dimensions.
pub fn supports(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) && x.rank() == 4
}

/// Normalises `x` (N, C, H, W) with its batch statistics and applies `γ`, `β` (C values each).
///
/// Returns the output and the statistics; the output is differentiable with respect to `x`, `γ` and
/// `β`. Needs [`supports`]`(x)` and more than one value per channel.
pub fn batch_norm_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<(Tensor, Arc<BatchStats>)> {
    let x = x.contiguous()?;
    let geometry = Geometry::of(&x)?;
    geometry.check_channel_vector(gamma, "batch norm weight")?;
    geometry.check_channel_vector(beta, "batch norm bias")?;
    if geometry.count() < 2 {
        return Err(Error::invalid(format!(
            "batch norm in training mode needs more than one value per channel, got a {}×{}×{} map",
            geometry.batch,
            x.dims()[2],
            x.dims()[3]
        )));
    }

    let stats = {
        let (storage, layout) = x.storage_and_layout();
        Arc::new(channel_stats_of(cpu_storage(&storage, "batch norm input")?, layout, geometry, eps)?)
    };
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, BatchNormTrain { stats: stats.clone() })?;
    Ok((y, stats))
}

/// Computes the gradient of `Σ batch_norm_train(x) · g` with respect to `x`,
/// `γ·s·(g − mean(g) − x̂·mean(g·x̂))`.
///
/// `stats` are those [`batch_norm_train`] returned for this `x`. Differentiable with respect to `g`, `x`
/// and `γ` (a gradient penalty back-propagates through it).
pub fn batch_norm_input_grad(g: &Tensor, x: &Tensor, gamma: &Tensor, stats: &Arc<BatchStats>) -> Result<Tensor> {
    let x = x.contiguous()?;
    let geometry = Geometry::of(&x)?;
    geometry.check_channel_vector(gamma, "batch norm weight")?;
    if g.dims() != x.dims() || g.dtype() != x.dtype() {
        return Err(Error::invalid(format!(
            "batch norm gradient {:?} ({:?}) does not match its input {:?} ({:?})",
            g.dims(),
            g.dtype(),
            x.dims(),
            x.dtype()
        )));
    }
    if stats.mean.len() != geometry.channels || stats.count != geometry.count() {
        return Err(Error::invalid(format!(
            "batch statistics of {} channels × {} values do not belong to a {:?} input",
            stats.mean.len(),
            stats.count,
            x.dims()
        )));
    }
    Ok(g.contiguous()?.apply_op3(&x, &gamma.contiguous()?, BatchNormInputGrad { stats: stats.clone() })?)
}

/// Layout of a contiguous (N, C, H, W) map: channel `c` of image `n` is the row of `pixels` values at
/// `(n·C + c)·pixels`.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    channels: usize,
    pixels: usize,
}

impl Geometry {
    fn of(x: &Tensor) -> Result<Geometry> {
        if !supports(x) {
            return Err(Error::invalid(format!(
                "the fused batch norm takes 4-dimensional f32 or f64 CPU tensors, got {:?} {:?} on {:?}",
                x.dims(),
                x.dtype(),
                x.device().location()
            )));
        }
        let (batch, channels, h, w) = x.dims4()?;
        Ok(Geometry { batch, channels, pixels: h * w })
    }

    fn from_shape(shape: &Shape) -> candle_core::Result<Geometry> {
        let (batch, channels, h, w) = shape.dims4()?;
        Ok(Geometry { batch, channels, pixels: h * w })
    }

    fn count(&self) -> usize {
        self.batch * self.pixels
    }

    fn len(&self) -> usize {
        self.batch * self.channels * self.pixels
    }

    /// Offsets of channel `c`'s rows, one per image.
    fn rows(&self, c: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.batch).map(move |n| (n * self.channels + c) * self.pixels)
    }

    fn check_channel_vector(&self, t: &Tensor, what: &str) -> Result<()> {
        if t.elem_count() != self.channels || t.rank() != 1 {
            return Err(Error::invalid(format!(
                "{what} has shape {:?}, expected ({},) for a map of {} channels",
                t.dims(),
                self.channels,
                self.channels
            )));
        }
        Ok(())
    }
}

/// Runs `f(c)` for every channel on the CPU pool and returns the results in channel order.
fn per_channel<R: Send + Sync>(channels: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let results: Vec<OnceLock<R>> = (0..channels).map(|_| OnceLock::new()).collect();
    run_tasks(channels, num_threads(), |_, c| {
        let _ = results[c].set(f(c));
    });
    results.into_iter().map(|cell| cell.into_inner().expect("every channel ran")).collect()
}

/// Fills `K` maps of `geometry`'s shape: `fill(c, offset, outputs)` writes every value of channel `c`'s
/// row at `offset` of every output, for every image.
///
/// The outputs start uninitialised rather than zeroed: a zero fill is one more pass over each map.
fn fill_maps<T: WithDType, const K: usize>(
    geometry: Geometry,
    fill: impl Fn(usize, usize, [&mut [MaybeUninit<T>]; K]) + Sync,
) -> [Vec<T>; K] {
    let len = geometry.len();
    let mut outputs: [Vec<MaybeUninit<T>>; K] = std::array::from_fn(|_| {
        let mut output = Vec::with_capacity(len);
        output.resize_with(len, MaybeUninit::uninit);
        output
    });
    let pointers: [SharedMut<MaybeUninit<T>>; K] = std::array::from_fn(|k| SharedMut(outputs[k].as_mut_ptr()));
    run_tasks(geometry.channels, num_threads(), |_, c| {
        for offset in geometry.rows(c) {
            // SAFETY: channel c's rows are written by this task only, and lie inside each output.
            let rows = pointers
                .map(|pointer| unsafe { std::slice::from_raw_parts_mut(pointer.ptr().add(offset), geometry.pixels) });
            fill(c, offset, rows);
        }
    });
    outputs.map(|output| {
        let mut output = std::mem::ManuallyDrop::new(output);
        let (pointer, len, capacity) = (output.as_mut_ptr(), output.len(), output.capacity());
        // SAFETY: the tasks wrote every row of every channel and image, so all `len` values are
        // initialised, and MaybeUninit<T> has T's layout.
        unsafe { Vec::from_raw_parts(pointer.cast::<T>(), len, capacity) }
    })
}

/// Interleaved partial sums per reduction: independent additions let the compiler vectorise the loop.
const SUM_LANES: usize = 8;

/// Returns the `K` sums over channel `c` (every image's row) of `term` applied to the `N` maps' values
/// at each position, accumulated in f64.
#[inline(always)]
fn channel_sums<T: WithDType, const N: usize, const K: usize>(
    geometry: Geometry,
    c: usize,
    maps: [&[T]; N],
    term: impl Fn([f64; N]) -> [f64; K],
) -> [f64; K] {
    let mut partial = [[0.0f64; SUM_LANES]; K];
    let mut sums = [0.0f64; K];
    for offset in geometry.rows(c) {
        let rows = maps.map(|map| &map[offset..offset + geometry.pixels]);
        let full = geometry.pixels - geometry.pixels % SUM_LANES;
        for start in (0..full).step_by(SUM_LANES) {
            let chunks = rows.map(|row| &row[start..start + SUM_LANES]);
            for lane in 0..SUM_LANES {
                let terms = term(std::array::from_fn(|m| chunks[m][lane].to_f64()));
                for (partial, value) in partial.iter_mut().zip(terms) {
                    partial[lane] += value;
                }
            }
        }
        for position in full..geometry.pixels {
            let terms = term(std::array::from_fn(|m| rows[m][position].to_f64()));
            for (sum, value) in sums.iter_mut().zip(terms) {
                *sum += value;
            }
        }
    }
    for (sum, partial) in sums.iter_mut().zip(partial) {
        *sum += partial.iter().sum::<f64>();
    }
    sums
}

/// Per-channel mean and biased variance of `x`, each summed in f64 over the channel's rows.
fn channel_stats<T: WithDType>(geometry: Geometry, x: &[T], eps: f64) -> BatchStats {
    let count = geometry.count() as f64;
    let moments = per_channel(geometry.channels, |c| {
        let [sum] = channel_sums(geometry, c, [x], |[xv]| [xv]);
        let mean = sum / count;
        // Centred second pass: exact where E[x²] − μ² would cancel.
        let [squares] = channel_sums(geometry, c, [x], |[xv]| [(xv - mean) * (xv - mean)]);
        (mean, squares / count)
    });
    let (mean, var): (Vec<f64>, Vec<f64>) = moments.into_iter().unzip();
    let inv_std = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    BatchStats { mean, var, inv_std, count: geometry.count() }
}

/// Runs [`channel_stats`] on a map in CPU storage, f32 or f64.
fn channel_stats_of(
    storage: &CpuStorage,
    layout: &Layout,
    geometry: Geometry,
    eps: f64,
) -> candle_core::Result<BatchStats> {
    with_float_type!(storage, "batch norm input", T => {
        Ok(channel_stats(geometry, cpu_values::<T>(storage, layout, "batch norm input")?, eps))
    })
}

/// Sums of `g` and `g·x̂` over each channel.
fn grad_sums<T: WithDType>(geometry: Geometry, stats: &BatchStats, g: &[T], x: &[T]) -> Vec<(f64, f64)> {
    per_channel(geometry.channels, |c| {
        let (mean, inv_std) = (stats.mean[c], stats.inv_std[c]);
        let [sum_g, sum_gx] = channel_sums(geometry, c, [g, x], |[gv, xv]| [gv, gv * (xv - mean) * inv_std]);
        (sum_g, sum_gx)
    })
}

/// Computes `γ·s·(g − Σg/M − x̂·Σ(g·x̂)/M)` per channel from the sums of [`grad_sums`], written as
/// `a·g + b·x + k` so that the pass is one multiply-add chain per value.
fn input_grad_map<T: WithDType>(
    geometry: Geometry,
    stats: &BatchStats,
    gamma: &[T],
    sums: &[(f64, f64)],
    g: &[T],
    x: &[T],
) -> Vec<T> {
    let count = geometry.count() as f64;
    let coefficients: Vec<[T; 3]> = (0..geometry.channels)
        .map(|c| {
            let (mean, s, gamma) = (stats.mean[c], stats.inv_std[c], gamma[c].to_f64());
            let (sum_g, sum_gx) = sums[c];
            let a = gamma * s;
            let b = -gamma * s * s * sum_gx / count;
            let k = -a * sum_g / count - b * mean;
            [T::from_f64(a), T::from_f64(b), T::from_f64(k)]
        })
        .collect();
    let [dx] = fill_maps(geometry, |c, offset, [out]| {
        let [a, b, k] = coefficients[c];
        let (g, x) = (&g[offset..offset + geometry.pixels], &x[offset..offset + geometry.pixels]);
        for ((out, &gv), &xv) in out.iter_mut().zip(g).zip(x) {
            out.write(a * gv + b * xv + k);
        }
    });
    dx
}

/// Returns the CPU storage inside `storage`, or an error naming `what`.
fn cpu_storage<'a>(storage: &'a Storage, what: &str) -> candle_core::Result<&'a CpuStorage> {
    match storage {
        Storage::Cpu(cpu) => Ok(cpu),
        _ => candle_core::bail!("pegan's fused batch norm runs on the CPU, but the {what} is not on the CPU"),
    }
}

/// Training-mode batch norm of (x, γ, β) with statistics computed beforehand from `x`.
struct BatchNormTrain {
    stats: Arc<BatchStats>,
}

impl BatchNormTrain {
    fn forward<T: WithDType>(&self, geometry: Geometry, x: &[T], gamma: &[T], beta: &[T]) -> Vec<T> {
        // y = γ·(x − μ)·s + β = scale·x + shift.
        let coefficients: Vec<[T; 2]> = (0..geometry.channels)
            .map(|c| {
                let scale = gamma[c].to_f64() * self.stats.inv_std[c];
                let shift = beta[c].to_f64() - self.stats.mean[c] * scale;
                [T::from_f64(scale), T::from_f64(shift)]
            })
            .collect();
        let [y] = fill_maps(geometry, |c, offset, [out]| {
            let [scale, shift] = coefficients[c];
            for (out, &xv) in out.iter_mut().zip(&x[offset..offset + geometry.pixels]) {
                out.write(scale * xv + shift);
            }
        });
        y
    }

    /// Returns (∂x, ∂γ, ∂β) of `Σ y · dy`: ∂γ = Σ dy·x̂ and ∂β = Σ dy per channel, ∂x from
    /// [`input_grad_map`].
    fn backward<T: WithDType>(&self, geometry: Geometry, x: &[T], gamma: &[T], dy: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let sums = grad_sums(geometry, &self.stats, dy, x);
        let dx = input_grad_map(geometry, &self.stats, gamma, &sums, dy, x);
        let dgamma = sums.iter().map(|&(_, sum_gx)| T::from_f64(sum_gx)).collect();
        let dbeta = sums.iter().map(|&(sum_g, _)| T::from_f64(sum_g)).collect();
        (dx, dgamma, dbeta)
    }
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "pegan-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        gamma_storage: &CpuStorage,
        gamma_layout: &Layout,
        beta_storage: &CpuStorage,
        beta_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let geometry = Geometry::from_shape(x_layout.shape())?;
        let y = with_float_type!(x_storage, "batch norm input", T => T::to_cpu_storage_owned(self.forward(
            geometry,
            cpu_values::<T>(x_storage, x_layout, "batch norm input")?,
            cpu_values::<T>(gamma_storage, gamma_layout, "batch norm weight")?,
            cpu_values::<T>(beta_storage, beta_layout, "batch norm bias")?,
        )));
        Ok((y, x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let geometry = Geometry::from_shape(x.shape())?;
        let (x_storage, x_layout) = x.storage_and_layout();
        let (gamma_storage, gamma_layout) = gamma.storage_and_layout();
        let (dy_storage, dy_layout) = dy.storage_and_layout();
        let x_storage = cpu_storage(&x_storage, "batch norm input")?;
        let gamma_storage = cpu_storage(&gamma_storage, "batch norm weight")?;
        let dy_storage = cpu_storage(&dy_storage, "batch norm output gradient")?;
        let device = x.device();
        with_float_type!(x_storage, "batch norm input", T => {
            let (dx, dgamma, dbeta) = self.backward(
                geometry,
                cpu_values::<T>(x_storage, x_layout, "batch norm input")?,
                cpu_values::<T>(gamma_storage, gamma_layout, "batch norm weight")?,
                cpu_values::<T>(dy_storage, dy_layout, "batch norm output gradient")?,
            );
            Ok((
                Some(Tensor::from_vec(dx, x.shape(), device)?),
                Some(Tensor::from_vec(dgamma, gamma.shape(), device)?),
                Some(Tensor::from_vec(dbeta, beta.shape(), device)?),
            ))
        })
    }
}

/// The input gradient `γ·s·(g − mean(g) − x̂·mean(g·x̂))` of (g, x, γ), with `x`'s statistics.
struct BatchNormInputGrad {
    stats: Arc<BatchStats>,
}

impl BatchNormInputGrad {
    /// Returns (∂g, ∂x, ∂γ) of `Σ dx · u`, where `dx` is this op's output.
    ///
    /// With h = γ·g, a = mean(h), b = mean(h·x̂), ū = mean(u), c = mean(u·x̂), e = mean(u·h) − a·ū:
    /// - ∂g = γ·s·(u − ū − x̂·c) (the operator is symmetric in g and u);
    /// - ∂x = s²·(−x̂·(e − 3·b·c) − c·(h − a) − b·(u − ū)), from differentiating s, μ and x̂;
    /// - ∂γ = s·(Σ u·g − ū·Σ g − c·Σ g·x̂).
    ///
    /// These were checked against PyTorch's double backward, and the tests check them against finite
    /// differences.
    fn backward<T: WithDType>(
        &self,
        geometry: Geometry,
        g: &[T],
        x: &[T],
        gamma: &[T],
        u: &[T],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let stats = &self.stats;
        let count = geometry.count() as f64;

        // Per channel: Σg, Σg·x̂, Σu, Σu·x̂, Σu·g.
        let sums = per_channel(geometry.channels, |c| {
            let (mean, inv_std) = (stats.mean[c], stats.inv_std[c]);
            channel_sums(geometry, c, [g, x, u], |[gv, xv, uv]| {
                let normalized = (xv - mean) * inv_std;
                [gv, gv * normalized, uv, uv * normalized, uv * gv]
            })
        });

        // Both maps as multiply-add chains with per-channel coefficients: ∂g from (u, x, 1), ∂x from (x, g, u, 1).
        let mut dgamma = Vec::with_capacity(geometry.channels);
        let coefficients: Vec<[T; 7]> = (0..geometry.channels)
            .map(|c| {
                let (mean, s, gamma) = (stats.mean[c], stats.inv_std[c], gamma[c].to_f64());
                let [sum_g, sum_gx, sum_u, sum_ux, sum_ug] = sums[c];
                let a = gamma * sum_g / count;
                let b = gamma * sum_gx / count;
                let u_mean = sum_u / count;
                let ux_mean = sum_ux / count;
                let e = gamma * sum_ug / count - a * u_mean;
                dgamma.push(T::from_f64(s * (sum_ug - u_mean * sum_g - ux_mean * sum_gx)));

                // ∂g = γ·s·u − γ·s²·c·(x − μ) − γ·s·ū.
                let (gu, gx) = (gamma * s, -gamma * s * s * ux_mean);
                let gk = -gamma * s * u_mean - gx * mean;
                // ∂x = −s³·(e − 3bc)·(x − μ) − s²·c·γ·g − s²·b·u + s²·(c·a + b·ū).
                let xx = -s * s * s * (e - 3.0 * b * ux_mean);
                let (xg, xu) = (-s * s * ux_mean * gamma, -s * s * b);
                let xk = -xx * mean + s * s * (ux_mean * a + b * u_mean);
                [gu, gx, gk, xx, xg, xu, xk].map(T::from_f64)
            })
            .collect();

        let [dg, dx] = fill_maps(geometry, |c, offset, [dg, dx]| {
            let [gu, gx, gk, xx, xg, xu, xk] = coefficients[c];
            let rows = g[offset..offset + geometry.pixels]
                .iter()
                .zip(&x[offset..offset + geometry.pixels])
                .zip(&u[offset..offset + geometry.pixels]);
            for ((dg, dx), ((&gv, &xv), &uv)) in dg.iter_mut().zip(dx.iter_mut()).zip(rows) {
                dg.write(gu * uv + gx * xv + gk);
                dx.write(xx * xv + xg * gv + xu * uv + xk);
            }
        });
        (dg, dx, dgamma)
    }
}

impl CustomOp3 for BatchNormInputGrad {
    fn name(&self) -> &'static str {
        "pegan-batch-norm-input-grad"
    }

    fn cpu_fwd(
        &self,
        g_storage: &CpuStorage,
        g_layout: &Layout,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        gamma_storage: &CpuStorage,
        gamma_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let geometry = Geometry::from_shape(x_layout.shape())?;
        let dx = with_float_type!(x_storage, "batch norm input", T => {
            let g = cpu_values::<T>(g_storage, g_layout, "batch norm output gradient")?;
            let x = cpu_values::<T>(x_storage, x_layout, "batch norm input")?;
            let gamma = cpu_values::<T>(gamma_storage, gamma_layout, "batch norm weight")?;
            let sums = grad_sums(geometry, &self.stats, g, x);
            T::to_cpu_storage_owned(input_grad_map(geometry, &self.stats, gamma, &sums, g, x))
        });
        Ok((dx, x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        _dx: &Tensor,
        u: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let u = u.contiguous()?;
        let geometry = Geometry::from_shape(x.shape())?;
        let (g_storage, g_layout) = g.storage_and_layout();
        let (x_storage, x_layout) = x.storage_and_layout();
        let (gamma_storage, gamma_layout) = gamma.storage_and_layout();
        let (u_storage, u_layout) = u.storage_and_layout();
        let g_storage = cpu_storage(&g_storage, "batch norm output gradient")?;
        let x_storage = cpu_storage(&x_storage, "batch norm input")?;
        let gamma_storage = cpu_storage(&gamma_storage, "batch norm weight")?;
        let u_storage = cpu_storage(&u_storage, "gradient of the batch norm input gradient")?;
        let device = x.device();
        with_float_type!(x_storage, "batch norm input", T => {
            let (dg, dx, dgamma) = self.backward(
                geometry,
                cpu_values::<T>(g_storage, g_layout, "batch norm output gradient")?,
                cpu_values::<T>(x_storage, x_layout, "batch norm input")?,
                cpu_values::<T>(gamma_storage, gamma_layout, "batch norm weight")?,
                cpu_values::<T>(u_storage, u_layout, "gradient of the batch norm input gradient")?,
            );
            Ok((
                Some(Tensor::from_vec(dg, g.shape(), device)?),
                Some(Tensor::from_vec(dx, x.shape(), device)?),
                Some(Tensor::from_vec(dgamma, gamma.shape(), device)?),
            ))
        })
    }
}
