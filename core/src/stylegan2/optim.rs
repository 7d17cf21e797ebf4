//! Adam with the lazy-regularisation adjustment, and the EMA generator update of MMGeneration's StyleGAN2 configs.
//!
//! candle-nn's `AdamW` keeps its moments private, so a checkpoint could not carry them and a resumed run would
//! restart Adam. This Adam keeps its state by parameter key, so it is saved and restored with the model.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stylegan2::params::ParamStore;

/// Hyper-parameters of one Adam optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// Base learning rate before the lazy-regularisation adjustment (0.002 in the reference).
    pub lr: f64,
    /// Base β₁ and β₂ before the adjustment ((0, 0.99) in the reference).
    pub betas: (f64, f64),
    /// Added to √v̂ (after the square root), 1e-8.
    pub eps: f64,
    /// Regularisation interval `I` of the network this optimiser trains (16 for D, 4 for G); `None` or 0
    /// applies no adjustment.
    pub lazy_interval: Option<u32>,
}

impl AdamConfig {
    /// Learning rate and betas after the adjustment `c = I/(I+1)`: `lr·c`, `β₁^c`, `β₂^c`.
    pub fn effective(&self) -> (f64, f64, f64) {
        let c = match self.lazy_interval {
            Some(i) if i > 0 => i as f64 / (i as f64 + 1.0),
            _ => 1.0,
        };
        (self.lr * c, self.betas.0.powf(c), self.betas.1.powf(c))
    }

    pub fn validate(&self, name: &str) -> Result<()> {
        let (b1, b2) = self.betas;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid(format!("{name} learning rate {} must be a finite value > 0", self.lr)));
        }
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            return Err(Error::invalid(format!("{name} Adam betas ({b1}, {b2}) must each lie in [0, 1)")));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::invalid(format!("{name} Adam epsilon {} must be a finite value > 0", self.eps)));
        }
        Ok(())
    }
}

/// Adam over every parameter of a [`ParamStore`], with weight decay 0.
pub struct Adam {
    config: AdamConfig,
    params: Vec<(String, Var)>,
    first: HashMap<String, Tensor>,
    second: HashMap<String, Tensor>,
    steps: u64,
}

impl Adam {
    pub fn new(store: &ParamStore, config: AdamConfig) -> Result<Self> {
        let params = store.vars();
        let mut first = HashMap::new();
        let mut second = HashMap::new();
        for (key, var) in &params {
            first.insert(key.clone(), var.as_tensor().zeros_like()?);
            second.insert(key.clone(), var.as_tensor().zeros_like()?);
        }
        Ok(Adam { config, params, first, second, steps: 0 })
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Updates every parameter that has a gradient in `grads`. Parameters without one keep their value
    /// and moments, as in PyTorch.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let (lr, beta1, beta2) = self.config.effective();
        let t = self.steps as i32;
        let m_scale = 1.0 / (1.0 - beta1.powi(t));
        let v_scale = 1.0 / (1.0 - beta2.powi(t));

        for (key, var) in &self.params {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let m = ((&self.first[key] * beta1)? + (g * (1.0 - beta1))?)?;
            let v = ((&self.second[key] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((&v * v_scale)?.sqrt()? + self.config.eps)?;
            let update = ((&m * (m_scale * lr))? / denom)?;
            var.set(&(var.as_tensor() - update)?)?;
            self.first.insert(key.clone(), m);
            self.second.insert(key.clone(), v);
        }
        Ok(())
    }

    /// Returns the optimiser state as named tensors (`{prefix}{key}.exp_avg`, `{prefix}{key}.exp_avg_sq`) plus the
    /// step count, for a checkpoint.
    pub fn state(&self, prefix: &str) -> Result<(Vec<(String, Tensor)>, u64)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (key, _) in &self.params {
            out.push((format!("{prefix}{key}.exp_avg"), self.first[key].clone()));
            out.push((format!("{prefix}{key}.exp_avg_sq"), self.second[key].clone()));
        }
        Ok((out, self.steps))
    }

    /// Restores a state written by [`Adam::state`]; every moment must be present with its parameter's shape.
    pub fn restore(&mut self, tensors: &HashMap<String, Tensor>, prefix: &str, steps: u64) -> Result<()> {
        for (key, var) in &self.params {
            for (suffix, target) in [("exp_avg", &mut self.first), ("exp_avg_sq", &mut self.second)] {
                let name = format!("{prefix}{key}.{suffix}");
                let t = tensors.get(&name).ok_or_else(|| {
                    Error::model(format!("missing optimiser tensor '{name}': the checkpoint cannot resume training"))
                })?;
                if t.dims() != var.dims() {
                    return Err(Error::model(format!(
                        "optimiser tensor '{name}' has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                target.insert(key.clone(), t.to_dtype(var.dtype())?.to_device(var.device())?);
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Momentum of the EMA generator per iteration: `0.5^(32 / (10·1000))`, a half-life of 312.5 iterations.
pub const EMA_MOMENTUM: f64 = 0.997_784_387_123_888_8;

/// Moves every parameter of `ema` towards the trained one: `θ_ema ← θ + m·(θ_ema − θ)`.
///
/// Buffers (noise maps) are not parameters and are copied by the caller, as the reference copies them.
pub fn ema_update(ema: &ParamStore, trained: &ParamStore, momentum: f64) -> Result<()> {
    let theirs: HashMap<String, Var> = trained.vars().into_iter().collect();
    for (key, var) in ema.vars() {
        let source = theirs.get(&key).ok_or_else(|| {
            Error::model(format!("EMA parameter '{key}' has no counterpart in the trained generator"))
        })?;
        let theta = source.as_tensor().detach();
        let next = (&theta + ((var.as_tensor() - &theta)? * momentum)?)?;
        var.set(&next)?;
    }
    Ok(())
}
