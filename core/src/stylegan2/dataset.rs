//! Training images for StyleGAN2: a folder of PNG or JPEG files, shuffled, flipped and decoded on a
//! background thread.
//!
//! The reference pipeline loads BGR `uint8`, flips horizontally with probability 0.5, and normalises with
//! `(v − 127.5) / 127.5`. Its images all have the dataset's side already; here every image is brought to a
//! square of side `side` once, when it is decoded: a centre crop to a square if it is not one, then the same
//! corner-aligned bilinear resize the training step uses. The trainer then resizes each batch to the side of
//! the iteration's scale, as the reference does.
//!
//! The order is a function of (seed, iteration) only: batch `t` takes positions `t·N … t·N + N − 1` of the
//! concatenated per-epoch permutations, and its flips come from a stream seeded by (seed, t). A run resumed at
//! iteration `t` therefore sees the same batches as an uninterrupted one.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::image::load_image;
use crate::resample::{resize, ResizeKernel};
use crate::rng::SeededRng;

/// File extensions read from the folder, compared without case (the reference also reads `.jpeg`, `.JPEG`).
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Batches decoded ahead of the training thread.
const PREFETCH_BATCHES: usize = 4;

/// The image files of a training folder.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    files: Vec<PathBuf>,
}

impl ImageFolder {
    /// Lists the PNG and JPEG files under `root` (recursively), sorted by path so the order is the same on
    /// every machine.
    pub fn open(root: &Path) -> Result<Self> {
        let mut files = Vec::new();
        collect_images(root, &mut files)?;
        files.sort();

        // Images are decoded only when their batch comes up, so a damaged file would stop a long run late.
        // Reading every header now reports it before training starts.
        for file in &files {
            image::image_dimensions(file)
                .map_err(|e| Error::read(file, format!("not a readable image ({e}): remove or replace the file")))?;
        }
        if files.is_empty() {
            return Err(Error::read(
                root,
                "no .png, .jpg or .jpeg files found: point the trainer at a folder of training images",
            ));
        }
        Ok(ImageFolder { root: root.to_path_buf(), files })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Decodes one image as a `(3, side, side)` BGR tensor in `[-1, 1]`, optionally mirrored.
    pub fn load(&self, index: usize, side: usize, flip: bool) -> Result<Tensor> {
        let path = &self.files[index];
        let image = load_image(path)?;
        let (h, w) = (image.height, image.width);

        // Transparent pixels carry arbitrary colours, so composite onto white before anything else.
        let plane = h * w;
        let mut values = vec![0f32; 3 * plane];
        for (i, pixel) in image.bgr.chunks_exact(3).enumerate() {
            let alpha = image.alpha.as_ref().map_or(1.0, |a| f32::from(a[i]) / 255.0);
            let x = if flip { w - 1 - i % w } else { i % w };
            let target = (i / w) * w + x;
            for c in 0..3 {
                let v = f32::from(pixel[c]) * alpha + 255.0 * (1.0 - alpha);
                values[c * plane + target] = (v - 127.5) / 127.5;
            }
        }
        let t = Tensor::from_vec(values, (1, 3, h, w), &Device::Cpu)?;

        // Centre crop to a square, then resize to the dataset side.
        let s = h.min(w);
        let t = t.narrow(2, (h - s) / 2, s)?.narrow(3, (w - s) / 2, s)?;
        let t = if s == side { t } else { resize(&t, side, side, ResizeKernel::Bilinear { align_corners: true })? };
        Ok(t.squeeze(0)?.contiguous()?)
    }

    /// Lists the images that batch `iteration` uses, and whether each is mirrored.
    pub fn batch_plan(&self, seed: u64, iteration: u64, batch_size: usize) -> Vec<(usize, bool)> {
        let n = self.files.len() as u64;
        let mut flips = SeededRng::new(seed ^ 0x5eed_f11b ^ iteration.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut cached_epoch = u64::MAX;
        let mut permutation: Vec<usize> = Vec::new();
        (0..batch_size as u64)
            .map(|i| {
                let position = iteration * batch_size as u64 + i;
                let epoch = position / n;
                if epoch != cached_epoch {
                    permutation = (0..self.files.len()).collect();
                    let mut rng =
                        ChaCha8Rng::seed_from_u64(seed.wrapping_add(epoch.wrapping_mul(0x2545_F491_4F6C_DD1D)));
                    permutation.shuffle(&mut rng);
                    cached_epoch = epoch;
                }
                let index = permutation[(position % n) as usize];
                (index, flips.next_f64() < 0.5)
            })
            .collect()
    }
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::read(dir, "folder not found"),
        _ => Error::read(dir, e),
    })?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::read(dir, e))?;
        let path = entry.path();
        // Linked folders are not followed, so a link loop cannot list the same images many times.
        let is_link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
        if path.is_dir() && !is_link {
            collect_images(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Decodes batches on a background thread, in iteration order, a few batches ahead of the trainer.
pub struct BatchLoader {
    receiver: Option<Receiver<Result<Tensor>>>,
    thread: Option<JoinHandle<()>>,
    next_iteration: u64,
}

impl BatchLoader {
    /// Starts decoding batches `first_iteration, first_iteration + 1, …` of `batch_size` images of side `side`.
    pub fn spawn(folder: ImageFolder, side: usize, batch_size: usize, seed: u64, first_iteration: u64) -> Result<Self> {
        if batch_size == 0 || side == 0 {
            return Err(Error::invalid(format!(
                "batch size {batch_size} and image side {side} must both be at least 1"
            )));
        }
        let (sender, receiver) = sync_channel(PREFETCH_BATCHES);
        let thread = std::thread::Builder::new()
            .name("pegan-data".into())
            .spawn(move || {
                for iteration in first_iteration.. {
                    let batch = folder
                        .batch_plan(seed, iteration, batch_size)
                        .into_iter()
                        .map(|(index, flip)| folder.load(index, side, flip))
                        .collect::<Result<Vec<_>>>()
                        .and_then(|images| Ok(Tensor::stack(&images, 0)?));
                    let failed = batch.is_err();
                    // The trainer dropped the receiver: stop quietly.
                    if sender.send(batch).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| Error::invalid(format!("cannot start the data-loading thread: {e}")))?;
        Ok(BatchLoader { receiver: Some(receiver), thread: Some(thread), next_iteration: first_iteration })
    }

    /// Returns the batch of the next iteration, `(N, 3, side, side)` on the CPU.
    pub fn next_batch(&mut self) -> Result<Tensor> {
        let receiver = self.receiver.as_ref().expect("receiver lives until drop");
        let batch =
            receiver.recv().map_err(|_| Error::invalid("the data-loading thread stopped after an earlier error"))??;
        self.next_iteration += 1;
        Ok(batch)
    }

    /// The iteration whose batch [`BatchLoader::next_batch`] returns next.
    pub fn next_iteration(&self) -> u64 {
        self.next_iteration
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Dropping the receiver makes the thread's next send fail, so it ends after at most one batch.
        self.receiver.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
