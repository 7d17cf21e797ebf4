//! Options and value parsers shared by several commands.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;

/// Device and CPU thread options of the commands that run a model.
#[derive(Debug, Clone, Args)]
pub struct ComputeArgs {
    /// Device to compute on: cpu, cuda, cuda:N (GPU number N) or metal, or a list such as cuda:0,cpu that
    /// falls back to the CPU when the GPU cannot be opened. CUDA and Metal need a pegan built with
    /// `--features cuda` or `--features metal`.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: String,

    /// Number of CPU threads for the tensor kernels [default: one per core].
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    pub threads: Option<usize>,
}

impl ComputeArgs {
    /// Applies `--threads` and opens `--device`.
    pub fn open(&self) -> Result<Device> {
        if let Some(threads) = self.threads {
            apply_thread_count(threads);
        }
        pegan_core::device::parse_device(&self.device).map_err(anyhow::Error::from)
    }

    /// Formats the options that differ from the defaults for a follow-up command, e.g. ` --device cuda:0 --threads 4`.
    pub fn to_command_line(&self) -> String {
        let mut line = String::new();
        if self.device != "cpu" {
            line.push_str(&format!(" --device {}", shell_quote(&self.device)));
        }
        if let Some(threads) = self.threads {
            line.push_str(&format!(" --threads {threads}"));
        }
        line
    }
}

/// Limits every CPU thread pool that the models use to `threads` threads.
///
/// pegan's convolutions read a process-wide setting. candle's kernels and the gemm matrix products
/// size their rayon pools from `RAYON_NUM_THREADS` and `CANDLE_NUM_THREADS` when the pools start,
/// which happens at the first tensor operation, so this must run before any tensor is created.
fn apply_thread_count(threads: usize) {
    pegan_core::ops::set_num_threads(threads);
    // The binary sets these before the first tensor operation starts any worker thread.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
}

/// Parses a length in pixels: a whole number of at least 1.
pub fn parse_pixels(text: &str) -> Result<usize, String> {
    parse_positive_integer(text, "a whole number of pixels, at least 1, such as 256")
}

/// Largest number of images that one `pegan singan sample` call writes.
pub const MAX_SAMPLE_COUNT: usize = 10_000;

/// Parses a count of images: a whole number from 1 to [`MAX_SAMPLE_COUNT`].
pub fn parse_count(text: &str) -> Result<usize, String> {
    let expected = format!("a whole number of images from 1 to {MAX_SAMPLE_COUNT}");
    let count = parse_positive_integer(text, &expected)?;
    if count > MAX_SAMPLE_COUNT {
        return Err(format!(
            "{count} images is more than one call writes ({MAX_SAMPLE_COUNT}); expected {expected}, and for more \
             images run another call with another --seed and -o folder"
        ));
    }
    Ok(count)
}

/// Parses a thread count: a whole number of at least 1.
pub fn parse_threads(text: &str) -> Result<usize, String> {
    let threads = parse_positive_integer(text, "a whole number of threads from 1 to 1024")?;
    // Each thread is an operating-system thread in candle's pool; far more threads than cores only slow
    // the kernels down, and thousands fail to start.
    if threads > 1024 {
        return Err(format!("{threads} threads is too many; expected a whole number of threads from 1 to 1024"));
    }
    Ok(threads)
}

fn parse_positive_integer(text: &str, expected: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    match trimmed.parse::<usize>() {
        Ok(0) => Err(format!("zero is not allowed; expected {expected}")),
        Ok(value) => Ok(value),
        Err(_) if trimmed.starts_with('-') => Err(format!("negative values are not allowed; expected {expected}")),
        Err(error) if *error.kind() == std::num::IntErrorKind::PosOverflow => {
            Err(format!("the number is too large; expected {expected}"))
        }
        Err(_) => Err(format!("expected {expected}")),
    }
}

/// Parses a scale factor of the trained size: a finite number above 0 (1 keeps the trained size).
pub fn parse_factor(text: &str) -> Result<f64, String> {
    let expected = "a number above 0, such as 0.5 or 2 (1 keeps the trained size)";
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        Ok(_) => Err(format!("the factor must be finite and above 0; expected {expected}")),
        Err(_) => Err(format!("expected {expected}")),
    }
}

/// Fails unless the folder that will contain `path` exists, so that a long run does not fail at its first save.
pub fn check_parent_folder(path: &Path, what: &str) -> Result<()> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => return Ok(()),
    };
    if !folder.is_dir() {
        bail!(
            "the folder {} for the {what} {} does not exist: create it first or choose another path",
            folder.display(),
            path.display()
        );
    }
    Ok(())
}

/// Fails when `path` is an existing folder, because the command writes the file `path` itself.
pub fn check_not_folder(path: &Path, role: &str) -> Result<()> {
    if path.is_dir() {
        bail!(
            "{} is a folder, but the {role} is a file: give a file path such as {}",
            path.display(),
            path.join(example_file_name(role)).display()
        );
    }
    Ok(())
}

/// Fails when `path` exists and is not a folder, because the command writes several files into it.
pub fn check_not_file(path: &Path, role: &str) -> Result<()> {
    if path.exists() && !path.is_dir() {
        bail!(
            "{} is an existing file, but the {role} is a folder (created if missing): give a folder path, \
             or write one image to a file with `pegan singan retarget -o FILE.png`",
            path.display()
        );
    }
    Ok(())
}

fn example_file_name(role: &str) -> &'static str {
    match role {
        "loss log" => "losses.jsonl",
        "output image" => "out.png",
        _ => "model.safetensors",
    }
}

/// Fails when the output `path` names the same file as one of `inputs`, each given with its role,
/// so that writing the output cannot overwrite an input. Paths are compared after resolving `.`, `..`
/// and symbolic links, and on Unix also by device and inode, which catches hard links.
pub fn check_not_input(path: &Path, role: &str, inputs: &[(&Path, &str)]) -> Result<()> {
    for &(input, input_role) in inputs {
        if is_same_file(path, input) {
            bail!(
                "the {role} {} is the same file as the {input_role} {}, so writing it would overwrite that input: \
                 choose another output path",
                path.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// True when `output` and `input` resolve to one file. An output that does not exist yet is resolved
/// through its parent folder.
fn is_same_file(output: &Path, input: &Path) -> bool {
    let (Some(output_path), Ok(input_path)) = (resolve_destination(output), input.canonicalize()) else {
        return false;
    };
    if output_path == input_path {
        return true;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(output), std::fs::metadata(input)) {
            return a.dev() == b.dev() && a.ino() == b.ino();
        }
    }
    false
}

/// Resolves `path` to an absolute path without symbolic links, also when its last component does not exist.
fn resolve_destination(path: &Path) -> Option<PathBuf> {
    if let Ok(resolved) = path.canonicalize() {
        return Some(resolved);
    }
    let name = path.file_name()?;
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    Some(folder.canonicalize().ok()?.join(name))
}

/// Fails with a hint unless the model file at `path` exists.
fn check_model_exists(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!(
            "model file {} not found: check the path, or create a model with `pegan singan train` or `pegan convert`",
            path.display()
        );
    }
    Ok(())
}

/// Loads a native model file onto `device`.
pub fn load_model(path: &Path, device: &Device) -> Result<pegan_core::singan::SinGanModel> {
    check_model_exists(path)?;
    pegan_core::singan::SinGanModel::load(path, device).map_err(|error| {
        let hint = if has_extension(path, "pth") {
            "; an MMGeneration checkpoint needs its .pkl file: inspect it with `pegan inspect CHECKPOINT.pth --mmgen-pkl FILE.pkl` \
             or convert it with `pegan convert CHECKPOINT.pth --pkl FILE.pkl -o MODEL`"
        } else {
            ""
        };
        anyhow::anyhow!("{error}{hint}")
    })
}

/// True when `path` ends in `.extension`, ignoring case.
pub fn has_extension(path: &Path, extension: &str) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case(extension))
}

/// Appends `suffix` to the file name of `path`: `model.safetensors` becomes `model.safetensors.losses.jsonl`.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Quotes `text` for a POSIX shell when it contains anything but plain path characters.
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | ':' | '+' | ',' | '='));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Quotes a path for a POSIX shell.
pub fn quote_path(path: &Path) -> String {
    shell_quote(&path.to_string_lossy())
}

/// Loads an image file as a (1, 3, H, W) BGR tensor in [-1, 1] on `device`.
pub fn load_image_tensor(path: &Path, device: &Device) -> Result<candle_core::Tensor> {
    let image = pegan_core::image::load_image(path)?;
    let tensor = pegan_core::image::bgr_u8_to_tensor(&image.bgr, image.height, image.width, device)
        .with_context(|| format!("cannot convert {} to a tensor", path.display()))?;
    Ok(tensor)
}
