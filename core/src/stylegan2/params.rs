//! Named parameters of the StyleGAN2 networks, keyed exactly as MMGeneration's state dict.
//!
//! Modules ask a [`ParamPath`] for their tensors while they are built, so every parameter is created once
//! under its checkpoint key (`convs.3.conv.weight_orig`, `style_mapping.1.bias`, …) together with the rule
//! that initialises it for training. Loading a checkpoint, saving the native format, the optimiser, the EMA
//! update and finite-difference tests all walk the same sorted map, so no module keeps its own key list.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{Error, Result};
use crate::rng::SeededRng;

/// Initial value rule of a parameter for training, as MMGeneration's StyleGAN2 modules initialise them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Independent N(0, std²) values.
    Normal { std: f32 },
    /// Every value equal to the constant (0 for biases and noise strengths, 1 for style-modulation biases).
    Constant(f32),
}

#[derive(Debug, Clone)]
struct Entry {
    var: Var,
    init: Init,
}

/// A sorted, shared map from checkpoint key to trainable tensor.
///
/// Cloning the store shares the tensors; [`ParamStore::deep_copy`] makes an independent copy (the EMA
/// generator starts as one).
#[derive(Debug, Clone)]
pub struct ParamStore {
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
    device: Device,
    dtype: DType,
}

impl ParamStore {
    /// Creates an empty store whose parameters live on `device` in float32.
    pub fn new(device: &Device) -> Self {
        ParamStore { entries: Arc::new(Mutex::new(BTreeMap::new())), device: device.clone(), dtype: DType::F32 }
    }

    /// Returns the root path, with no prefix.
    pub fn root(&self) -> ParamPath {
        ParamPath { store: self.clone(), prefix: String::new() }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Float32 for models; float64 copies made by [`ParamStore::deep_copy_as`] serve finite-difference checks.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while the lock was held cannot leave an entry half-written (inserts are single calls),
        // so a poisoned lock is still consistent.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns every parameter as (key, var), sorted by key.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.lock().iter().map(|(k, e)| (k.clone(), e.var.clone())).collect()
    }

    /// Returns every parameter as (key, tensor), sorted by key. The tensors share storage with the vars.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.lock().iter().map(|(k, e)| (k.clone(), e.var.as_tensor().clone())).collect()
    }

    /// Returns the parameter stored under `key`, if any.
    pub fn get(&self, key: &str) -> Option<Var> {
        self.lock().get(key).map(|e| e.var.clone())
    }

    /// Counts the scalar parameters, buffers excluded.
    pub fn num_elements(&self) -> usize {
        self.lock().values().map(|e| e.var.elem_count()).sum()
    }

    /// Draws every parameter from its initialisation rule, in key order, from one seeded stream.
    pub fn initialise(&self, rng: &mut SeededRng) -> Result<()> {
        for entry in self.lock().values() {
            let dims = entry.var.dims().to_vec();
            let value = match entry.init {
                Init::Normal { std } => rng.normal(&dims, 0.0, std, &self.device)?.to_dtype(self.dtype)?,
                Init::Constant(c) => (Tensor::ones(dims.as_slice(), self.dtype, &self.device)? * c as f64)?,
            };
            entry.var.set(&value)?;
        }
        Ok(())
    }

    /// Overwrites every parameter from `tensors`, whose keys are the store's keys with `prefix` in front
    /// (for example `"generator_ema."`).
    ///
    /// Every parameter must be present with its shape, and `tensors` must hold no other key starting with
    /// `prefix` except those `is_buffer` accepts (kernels, noise maps and other non-trainable state, which
    /// the caller checks). The error names the first missing, unexpected or mis-shaped key.
    pub fn load(
        &self,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        is_buffer: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let entries = self.lock();

        let mut unexpected: Vec<&String> = tensors
            .keys()
            .filter(|k| k.starts_with(prefix))
            .filter(|k| {
                let key = &k[prefix.len()..];
                !entries.contains_key(key) && !is_buffer(key)
            })
            .collect();
        unexpected.sort();
        if let Some(key) = unexpected.first() {
            return Err(Error::model(format!(
                "unexpected tensor '{key}' of shape {:?}: the checkpoint does not match this model configuration",
                tensors[*key].dims()
            )));
        }

        for (key, entry) in entries.iter() {
            let full = format!("{prefix}{key}");
            let source = tensors
                .get(&full)
                .ok_or_else(|| Error::model(format!("missing tensor '{full}' of shape {:?}", entry.var.dims())))?;
            if source.dims() != entry.var.dims() {
                return Err(Error::model(format!(
                    "tensor '{full}' has shape {:?}, expected {:?}",
                    source.dims(),
                    entry.var.dims()
                )));
            }
            entry.var.set(&source.to_dtype(self.dtype)?.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// Copies the values of `other`, which must have the same keys and shapes.
    pub fn copy_from(&self, other: &ParamStore) -> Result<()> {
        let theirs: HashMap<String, Tensor> = other.tensors().into_iter().collect();
        self.load(&theirs, "", |_| false)
    }

    /// Makes an independent copy: same keys, shapes and values, separate storage.
    pub fn deep_copy(&self) -> Result<ParamStore> {
        self.deep_copy_as(self.dtype)
    }

    /// Makes an independent copy converted to `dtype`. Modules built on the copy compute in that dtype.
    pub fn deep_copy_as(&self, dtype: DType) -> Result<ParamStore> {
        let copy = ParamStore { entries: Arc::new(Mutex::new(BTreeMap::new())), device: self.device.clone(), dtype };
        {
            let mut target = copy.lock();
            for (key, entry) in self.lock().iter() {
                let var = Var::from_tensor(&entry.var.as_tensor().to_dtype(dtype)?.copy()?)?;
                target.insert(key.clone(), Entry { var, init: entry.init });
            }
        }
        Ok(copy)
    }
}

/// A position in a [`ParamStore`]: the key prefix of the module being built.
#[derive(Debug, Clone)]
pub struct ParamPath {
    store: ParamStore,
    prefix: String,
}

impl ParamPath {
    /// Returns the path one level down, `"{prefix}.{name}"`.
    pub fn pp(&self, name: impl std::fmt::Display) -> ParamPath {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        ParamPath { store: self.store.clone(), prefix }
    }

    /// Returns the full key of `name` under this path.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn device(&self) -> &Device {
        &self.store.device
    }

    pub fn dtype(&self) -> DType {
        self.store.dtype
    }

    /// Creates the parameter `name` (zero-filled until [`ParamStore::initialise`] or a load) or returns the
    /// existing one, which must have the same shape.
    pub fn param(&self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let key = self.key(name);
        let mut entries = self.store.lock();
        if let Some(entry) = entries.get(&key) {
            if entry.var.dims() != shape {
                return Err(Error::model(format!(
                    "parameter '{key}' was declared twice, with shapes {:?} and {shape:?}",
                    entry.var.dims()
                )));
            }
            return Ok(entry.var.clone());
        }
        let var = Var::zeros(shape, self.store.dtype, &self.store.device)?;
        entries.insert(key, Entry { var: var.clone(), init });
        Ok(var)
    }
}
