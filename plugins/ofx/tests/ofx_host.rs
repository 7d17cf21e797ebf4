//! Loads pegan.ofx.bundle in a headless OpenFX host, as a compositor would, and compares what the
//! effects render with the same request through the C API.
//!
//! The host is tests/host/ofx_test_host.cpp on the SDK's HostSupport library, which the crate
//! openfx-sys vendors; tests/host/build.sh builds both once into Cargo's test scratch folder. The
//! bundle is installed by the plug-in's Makefile from this test build's libpegan_ofx.so into a
//! temporary OFX_PLUGIN_PATH. A SinGAN and a StyleGAN2 model are trained with their tiny presets
//! through the C API, and the StyleGAN2 effect also reads the MMGeneration checkpoint of the test
//! vectors.
//!
//! The tests need g++, make, strip, nm, readelf and the expat headers (Debian: g++ make binutils
//! libexpat1-dev). Without them they are skipped with a printed reason, except under CI (the CI
//! variable set to anything but "false" or "0"), where they fail. scripts/test.sh installs them.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::collections::BTreeSet;
use std::ffi::{c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use pegan::*;
use pegan_core::image::{tensor_to_samples, SampleLayout, SampleType};
use pegan_core::singan::SinGanModel;
use pegan_core::stylegan2::model::StyleGan2Model;
use pegan_core::stylegan2::sample::{LatentSpace, SampleOptions, StyleGan2Sampler};

const RETARGET: &str = "org.pegan.SinGanRetarget";
const SAMPLE: &str = "org.pegan.SinGanSample";
const STYLEGAN2: &str = "org.pegan.StyleGan2Sample";
/// The tiny preset shrinks the 248 x 186 balloons to a long side of 24 pixels.
const TRAINED_SIZE: (usize, usize) = (24, 18);
/// Side of the StyleGAN2 tiny preset's images; every chosen scale adds a quarter, 8 pixels.
const STYLEGAN2_SIDE: usize = 32;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn repo_root() -> PathBuf {
    crate_dir().join("../..")
}

fn running_in_ci() -> bool {
    std::env::var("CI").map(|value| !matches!(value.as_str(), "" | "false" | "0")).unwrap_or(false)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|folder| folder.join(program).is_file()))
        .unwrap_or(false)
}

/// Runs `command` and returns its output, or panics naming the program.
fn run(command: &mut Command) -> Output {
    let program = command.get_program().to_string_lossy().into_owned();
    command.output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Panics with the command's output unless it exited with status 0.
fn check_success(output: &Output, step: &str) {
    assert!(
        output.status.success(),
        "{step} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The installed bundle, the built host and a trained model, shared by the tests of this process.
struct Fixture {
    /// The OFX_PLUGIN_PATH folder with pegan.ofx.bundle in it.
    plugin_dir: PathBuf,
    host: PathBuf,
    model: PathBuf,
    /// A pegan StyleGAN2 model file.
    stylegan2_model: PathBuf,
    /// An MMGeneration MS-PIE checkpoint (.pth) of a reduced config f, 32 pixels at chosen scale 0.
    checkpoint: PathBuf,
    /// Scratch folder of this test process, CARGO_TARGET_TMPDIR/ofx-host-test-PID. A static is
    /// never dropped, so the next test process removes it.
    folder: PathBuf,
}

impl Fixture {
    fn binary(&self) -> PathBuf {
        self.plugin_dir.join("pegan.ofx.bundle/Contents/Linux-x86-64/pegan.ofx")
    }

    /// Runs the host with `arguments` under the test OFX_PLUGIN_PATH.
    fn host(&self, arguments: &[&str]) -> HostRun {
        let output = run(Command::new(&self.host)
            .args(arguments)
            .env("OFX_PLUGIN_PATH", &self.plugin_dir)
            .current_dir(&self.folder));
        let run = HostRun {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        assert!(
            output.status.code().is_some(),
            "the host was killed by a signal ({}): the plug-in crashed it\n{}",
            output.status,
            run.transcript()
        );
        run
    }

    fn out(&self, name: &str) -> PathBuf {
        self.folder.join(name)
    }
}

/// The result of one host process.
struct HostRun {
    code: i32,
    stdout: String,
    stderr: String,
}

impl HostRun {
    fn transcript(&self) -> String {
        format!("--- exit code {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }

    fn assert_success(&self) {
        assert_eq!(self.code, 0, "the host run failed\n{}", self.transcript());
    }

    fn lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.stdout.lines().filter(|line| line.starts_with(prefix)).collect()
    }

    /// Returns the value after `key` on every render line.
    fn render_values(&self, key: &str) -> Vec<&str> {
        self.lines_starting("render ")
            .into_iter()
            .map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let index = words.iter().position(|word| *word == key).expect("render line has the key");
                words[index + 1]
            })
            .collect()
    }

    /// Returns the render lines as (status, milliseconds).
    fn renders(&self) -> Vec<(i32, f64)> {
        let statuses = self.render_values("status").into_iter().map(|status| status.parse().unwrap());
        let times = self.render_values("ms").into_iter().map(|ms| ms.parse().unwrap());
        statuses.zip(times).collect()
    }

    /// Returns the number of abort polls after each render, counted from the start of the run.
    fn abort_polls(&self) -> Vec<usize> {
        self.render_values("abort-polls").into_iter().map(|polls| polls.parse().unwrap()).collect()
    }
}

fn missing_tools() -> Vec<String> {
    let mut missing: Vec<String> =
        ["g++", "make", "strip", "nm", "readelf"].into_iter().filter(|tool| !on_path(tool)).map(String::from).collect();
    if !Path::new("/usr/include/expat.h").is_file() {
        missing.push("/usr/include/expat.h".to_string());
    }
    missing
}

/// Returns the `openfx` folder of the SDK that openfx-sys vendors, found through cargo metadata.
fn sdk_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = run(Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform", "x86_64-unknown-linux-gnu"])
        .arg("--manifest-path")
        .arg(crate_dir().join("Cargo.toml")));
    check_success(&output, "cargo metadata");
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let package = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|package| package["name"] == "openfx-sys"))
        .expect("openfx-sys is a dependency");
    let manifest = PathBuf::from(package["manifest_path"].as_str().expect("manifest_path is a string"));
    manifest.parent().expect("a manifest is in a folder").join("openfx")
}

/// Trains a tiny CSG model on the balloons through the C API and saves it to `path`.
fn train_model(path: &Path) {
    let image_path = CString::new(repo_root().join("tests/data/singan/balloons.png").to_str().unwrap()).unwrap();
    let config = CString::new(r#"{"variant": "csg", "preset": "tiny"}"#).unwrap();
    let path_c = CString::new(path.to_str().unwrap()).unwrap();
    unsafe {
        let mut context = std::ptr::null_mut();
        assert_eq!(pegan_context_new(std::ptr::null(), &mut context), PeganStatus::Ok, "{}", last_error());
        let mut image = std::mem::zeroed::<PeganImage>();
        assert_eq!(pegan_image_load(image_path.as_ptr(), &mut image), PeganStatus::Ok, "{}", last_error());
        let options = PeganTrainOptions {
            config_json: config.as_ptr(),
            seed: 1,
            progress_callback: None,
            progress_user_data: std::ptr::null_mut(),
        };
        let image_len = image.row_stride * image.height as usize;
        let mut model = std::ptr::null_mut();
        let status = pegan_singan_train(context, &image, image_len, &options, &mut model);
        assert_eq!(status, PeganStatus::Ok, "{}", last_error());
        assert_eq!(pegan_singan_model_save(model, path_c.as_ptr()), PeganStatus::Ok, "{}", last_error());
        pegan_singan_model_free(model);
        pegan_image_free(&mut image);
        pegan_context_free(context);
    }
}

/// Trains two iterations of the tiny StyleGAN2 preset through the C API on four images of the
/// bundled faces and saves the model to `path`.
fn train_stylegan2_model(path: &Path, folder: &Path) {
    let data = folder.join("faces");
    std::fs::create_dir_all(&data).unwrap();
    let faces = repo_root().join("examples/data/twemoji-faces-64/rgb");
    let mut names: Vec<_> = std::fs::read_dir(&faces).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    names.sort();
    for name in names.iter().take(4) {
        std::fs::copy(faces.join(name), data.join(name)).unwrap();
    }

    let config = CString::new(
        r#"{"preset": "tiny", "overrides": {"training": {"batch_size": 2, "multi_input_scales": [0, 2],
            "multi_scale_probability": null}}}"#,
    )
    .unwrap();
    let data_c = CString::new(data.to_str().unwrap()).unwrap();
    let path_c = CString::new(path.to_str().unwrap()).unwrap();
    let options = PeganStyleGan2TrainOptions {
        config_json: config.as_ptr(),
        seed: 2,
        iterations: 2,
        output_path: path_c.as_ptr(),
        checkpoint_every: 0,
        progress_callback: None,
        progress_user_data: std::ptr::null_mut(),
    };
    unsafe {
        let mut context = std::ptr::null_mut();
        assert_eq!(pegan_context_new(std::ptr::null(), &mut context), PeganStatus::Ok, "{}", last_error());
        let mut model = std::ptr::null_mut();
        let status = pegan_stylegan2_train(context, data_c.as_ptr(), &options, &mut model);
        assert_eq!(status, PeganStatus::Ok, "{}", last_error());
        pegan_stylegan2_model_free(model);
        pegan_context_free(context);
    }
    assert!(path.is_file(), "pegan_stylegan2_train did not write {}", path.display());
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(pegan_last_error_message()) }.to_string_lossy().into_owned()
}

/// Creates the scratch folder of this process and removes those of test processes that ended.
fn scratch_folder() -> PathBuf {
    let parent = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix("ofx-host-test-").and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid.filter(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(parent.join(format!("ofx-host-test-{pid}")));
        }
    }
    let folder = parent.join(format!("ofx-host-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).unwrap_or_else(|e| panic!("cannot create {}: {e}", folder.display()));
    folder
}

/// Builds the host, installs the bundle and trains the model once; `None` when a tool is missing
/// outside CI.
fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let missing = missing_tools();
            if !missing.is_empty() {
                let reason = format!(
                    "{} not found: install g++, make, binutils and libexpat1-dev, or run scripts/test.sh, which \
                     installs them",
                    missing.join(", ")
                );
                assert!(!running_in_ci(), "the OpenFX host tests cannot run under CI: {reason}");
                eprintln!("skipping the OpenFX host tests: {reason}");
                return None;
            }

            let host_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ofx-test-host");
            let build =
                run(Command::new("bash").arg(crate_dir().join("tests/host/build.sh")).arg(sdk_dir()).arg(&host_dir));
            check_success(&build, "tests/host/build.sh");

            // Cargo writes the libraries of the crate under test next to the test executables.
            let executable = std::env::current_exe().expect("the test executable has a path");
            let library = executable.parent().expect("the test executable is in a folder").join("libpegan_ofx.so");
            assert!(library.is_file(), "{} is missing: the pegan-ofx cdylib was not built", library.display());

            let folder = scratch_folder();
            let plugin_dir = folder.join("plugins");
            let install = run(Command::new("make")
                .arg("-C")
                .arg(crate_dir())
                .arg("install")
                .arg(format!("PEGAN_OFX_LIB={}", library.display()))
                .arg(format!("BUILD_DIR={}", folder.join("build").display()))
                .arg(format!("PLUGIN_DIR={}", plugin_dir.display())));
            check_success(&install, "make -C plugins/ofx install");

            let model = folder.join("balloons-tiny.pegan");
            train_model(&model);
            let stylegan2_model = folder.join("faces-tiny.pegan");
            train_stylegan2_model(&stylegan2_model, &folder);
            let checkpoint = repo_root().join("tests/data/vectors/stylegan2/mspie_config-f_small/checkpoint.pth");
            Some(Fixture {
                plugin_dir,
                host: host_dir.join("ofx_test_host"),
                model,
                stylegan2_model,
                checkpoint,
                folder,
            })
        })
        .as_ref()
}

/// Generates an image through the C API: `pegan_singan_generate` into a buffer of `channels` and
/// `sample_type`. Returns (width, height, bytes with rows top first).
fn c_api_generate(
    model_path: &Path,
    size: (u32, u32),
    seed: u64,
    start_stage: u32,
    noise_mode: PeganNoiseMode,
    channels: u32,
    sample_type: PeganSampleType,
) -> (usize, usize, Vec<u8>) {
    let path = CString::new(model_path.to_str().unwrap()).unwrap();
    unsafe {
        let mut context = std::ptr::null_mut();
        assert_eq!(pegan_context_new(std::ptr::null(), &mut context), PeganStatus::Ok, "{}", last_error());
        let mut model = std::ptr::null_mut();
        assert_eq!(pegan_singan_model_load(context, path.as_ptr(), &mut model), PeganStatus::Ok, "{}", last_error());
        let (mut width, mut height) = size;
        if width == 0 || height == 0 {
            assert_eq!(pegan_singan_model_trained_size(model, &mut width, &mut height), PeganStatus::Ok);
        }

        let sample_bytes = if sample_type == PEGAN_SAMPLE_TYPE_U8 { 1 } else { 4 };
        let row_stride = width as usize * channels as usize * sample_bytes;
        let mut bytes = vec![0u8; row_stride * height as usize];
        let image =
            PeganImage { width, height, channels, row_stride, sample_type, data: bytes.as_mut_ptr().cast::<c_void>() };
        let options = PeganGenerateOptions { width, height, seed, start_stage, noise_mode, memory_limit_bytes: 0 };
        let status = pegan_singan_generate(model, &options, &image, bytes.len());
        assert_eq!(status, PeganStatus::Ok, "{}", last_error());
        pegan_singan_model_free(model);
        pegan_context_free(context);
        (width as usize, height as usize, bytes)
    }
}

/// Changes to the options of `pegan_stylegan2_sample_options_init` for one StyleGAN2 image.
#[derive(Debug, Clone)]
struct StyleGan2Options {
    /// (width, height), or (0, 0) for the trained size.
    size: (u32, u32),
    seed: u64,
    truncation: f64,
    noise_mode: PeganStyleGan2NoiseMode,
    /// The latent z, or `None` to draw it from the seed.
    latent: Option<Vec<f32>>,
}

impl Default for StyleGan2Options {
    fn default() -> Self {
        StyleGan2Options {
            size: (0, 0),
            seed: 0,
            truncation: 1.0,
            noise_mode: PEGAN_STYLEGAN2_NOISE_MODE_RANDOM,
            latent: None,
        }
    }
}

/// Generates an image through the C API: `pegan_stylegan2_generate` into a buffer of `channels` and
/// `sample_type`. Returns (width, height, bytes with rows top first).
fn c_api_stylegan2(
    model_path: &Path,
    request: &StyleGan2Options,
    channels: u32,
    sample_type: PeganSampleType,
) -> (usize, usize, Vec<u8>) {
    let path = CString::new(model_path.to_str().unwrap()).unwrap();
    unsafe {
        let mut context = std::ptr::null_mut();
        assert_eq!(pegan_context_new(std::ptr::null(), &mut context), PeganStatus::Ok, "{}", last_error());
        let mut model = std::ptr::null_mut();
        let status = pegan_stylegan2_model_load(context, path.as_ptr(), std::ptr::null(), &mut model);
        assert_eq!(status, PeganStatus::Ok, "{}", last_error());
        let mut info = std::mem::zeroed::<PeganStyleGan2Info>();
        assert_eq!(pegan_stylegan2_model_info(model, &mut info), PeganStatus::Ok, "{}", last_error());
        let (width, height) = if request.size == (0, 0) { (info.width, info.height) } else { request.size };

        let mut options = std::mem::MaybeUninit::<PeganStyleGan2SampleOptions>::uninit();
        pegan_stylegan2_sample_options_init(options.as_mut_ptr());
        let mut options = options.assume_init();
        options.width = width;
        options.height = height;
        options.seed = request.seed;
        options.truncation = request.truncation;
        options.noise_mode = request.noise_mode;
        if let Some(latent) = &request.latent {
            options.latent = latent.as_ptr();
            options.latent_len = latent.len();
        }

        let sample_bytes = if sample_type == PEGAN_SAMPLE_TYPE_U8 { 1 } else { 4 };
        let row_stride = width as usize * channels as usize * sample_bytes;
        let mut bytes = vec![0u8; row_stride * height as usize];
        let image =
            PeganImage { width, height, channels, row_stride, sample_type, data: bytes.as_mut_ptr().cast::<c_void>() };
        let status = pegan_stylegan2_generate(model, &options, &image, bytes.len());
        assert_eq!(status, PeganStatus::Ok, "{}", last_error());
        pegan_stylegan2_model_free(model);
        pegan_context_free(context);
        (width as usize, height as usize, bytes)
    }
}

/// Returns the latent z at `t` between the latents of seeds `from` and `to`, from pegan-core's
/// `StyleGan2Sampler::interpolated_z`, the interpolation of `pegan stylegan2 interpolate`.
fn interpolated_latent(model_path: &Path, from: u64, to: u64, t: f64) -> Vec<f32> {
    let model = StyleGan2Model::load(model_path, &candle_core::Device::Cpu).unwrap();
    let sampler = StyleGan2Sampler::new(&model, SampleOptions::default()).unwrap();
    sampler.interpolated_z(from, to, t).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// An image the host wrote: the render window, rows top first.
struct Rendered {
    width: usize,
    height: usize,
    channels: usize,
    sample_bytes: usize,
    bytes: Vec<u8>,
}

impl Rendered {
    fn read(path: &Path) -> Rendered {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let newline = data.iter().position(|&b| b == b'\n').expect("the file starts with a header line");
        let header: Vec<usize> = std::str::from_utf8(&data[..newline])
            .unwrap()
            .split_whitespace()
            .map(|word| word.parse().unwrap())
            .collect();
        let rendered = Rendered {
            width: header[0],
            height: header[1],
            channels: header[2],
            sample_bytes: header[3],
            bytes: data[newline + 1..].to_vec(),
        };
        assert_eq!(rendered.bytes.len(), rendered.width * rendered.height * rendered.channels * rendered.sample_bytes);
        rendered
    }

    /// Returns every sample as a float: bytes as 0-255, floats as stored.
    fn samples(&self) -> Vec<f32> {
        samples_of(&self.bytes, self.sample_bytes)
    }
}

fn samples_of(bytes: &[u8], sample_bytes: usize) -> Vec<f32> {
    match sample_bytes {
        1 => bytes.iter().map(|&b| f32::from(b)).collect(),
        _ => bytes.chunks_exact(4).map(|s| f32::from_ne_bytes([s[0], s[1], s[2], s[3]])).collect(),
    }
}

/// Averages 2 x 2 blocks of a float RGB image (rows top first), anchored at the bottom-left corner
/// as OpenFX pixel coordinates are, and returns `channels` floats per pixel with opaque alpha.
fn half_scale_reference(width: usize, height: usize, rgb: &[f32], channels: usize) -> (usize, usize, Vec<f32>) {
    let (half_width, half_height) = (width.div_ceil(2), height.div_ceil(2));
    let mut out = Vec::new();
    for row_out in 0..half_height {
        let py = half_height - 1 - row_out;
        for px in 0..half_width {
            let mut sum = [0f32; 3];
            let mut count = 0.0;
            for y in [2 * py, 2 * py + 1].into_iter().filter(|&y| y < height) {
                let row = height - 1 - y;
                for x in [2 * px, 2 * px + 1].into_iter().filter(|&x| x < width) {
                    for c in 0..3 {
                        sum[c] += rgb[(row * width + x) * 3 + c];
                    }
                    count += 1.0;
                }
            }
            let pixel = [sum[0] / count, sum[1] / count, sum[2] / count, 1.0];
            out.extend_from_slice(&pixel[..channels]);
        }
    }
    (half_width, half_height, out)
}

/// Asserts that every sample is within `tolerance`, naming the first one that is not.
fn assert_close(actual: &[f32], expected: &[f32], tolerance: f32, label: &str) {
    assert_eq!(actual.len(), expected.len(), "{label}: sample counts differ");
    let worst = actual
        .iter()
        .zip(expected)
        .enumerate()
        .map(|(index, (a, e))| (index, (a - e).abs()))
        .fold((0, 0f32), |worst, current| if current.1 > worst.1 { current } else { worst });
    assert!(worst.1 <= tolerance, "{label}: sample {} differs by {} (tolerance {tolerance})", worst.0, worst.1);
}

fn model_param(fixture: &Fixture) -> String {
    format!("modelFile={}", fixture.model.display())
}

#[test]
fn bundle_installs_with_the_ofx_layout() {
    let Some(fixture) = fixture() else { return };
    let bundle = fixture.plugin_dir.join("pegan.ofx.bundle");
    let plist = std::fs::read_to_string(bundle.join("Contents/Info.plist")).expect("the bundle has an Info.plist");
    assert!(plist.contains("<string>pegan.ofx</string>"), "Info.plist does not name pegan.ofx:\n{plist}");

    let mut files = BTreeSet::new();
    let mut folders = vec![bundle.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                files.insert(path.strip_prefix(&bundle).unwrap().display().to_string());
            }
        }
    }
    let expected: BTreeSet<String> =
        ["Contents/Info.plist", "Contents/Linux-x86-64/pegan.ofx"].into_iter().map(String::from).collect();
    assert_eq!(files, expected, "the bundle contains other files than the binary and Info.plist");
}

#[test]
fn binary_exports_only_the_ofx_entry_points() {
    let Some(fixture) = fixture() else { return };
    let binary = fixture.binary();

    let nm = run(Command::new("nm").args(["-D", "--defined-only"]).arg(&binary));
    check_success(&nm, "nm -D");
    let symbols: BTreeSet<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().last().map(String::from))
        .collect();
    let expected: BTreeSet<String> = ["OfxGetNumberOfPlugins", "OfxGetPlugin"].into_iter().map(String::from).collect();
    assert_eq!(symbols, expected, "nm -D --defined-only lists other symbols");

    // The Rust runtime is linked in; only the C library and its companions are needed.
    let readelf = run(Command::new("readelf").arg("-d").arg(&binary));
    check_success(&readelf, "readelf -d");
    let needed: Vec<String> = String::from_utf8_lossy(&readelf.stdout)
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .map(|line| line.rsplit('[').next().unwrap().trim_end_matches(']').to_string())
        .collect();
    let allowed = ["libc.so.6", "libm.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2", "libpthread.so.0", "libdl.so.2"];
    for library in &needed {
        assert!(allowed.contains(&library.as_str()), "the binary needs {library}; it may need only {allowed:?}");
    }

    let check = fixture.host(&["check-binary", binary.to_str().unwrap()]);
    check.assert_success();
    assert!(check.stdout.contains("dlopen ok, plugins 3"), "{}", check.transcript());
    for (index, id) in [RETARGET, SAMPLE, STYLEGAN2].into_iter().enumerate() {
        let entry = format!("entry {index} {id} api OfxImageEffectPluginAPI 1");
        assert!(check.stdout.contains(&entry), "'{entry}' is missing\n{}", check.stdout);
    }
    assert!(check.stdout.contains("out of range entry is NULL"), "{}", check.stdout);
}

/// Returns the lines that `list` prints for plug-in `id`, up to the next plug-in.
fn plugin_listing<'a>(text: &'a str, id: &str) -> Vec<&'a str> {
    let header = format!("plugin {id} version");
    text.lines()
        .skip_while(|line| !line.starts_with(&header))
        .enumerate()
        .take_while(|(index, line)| *index == 0 || !line.starts_with("plugin "))
        .map(|(_, line)| line)
        .collect()
}

#[test]
fn host_finds_and_describes_every_effect() {
    let Some(fixture) = fixture() else { return };
    let list = fixture.host(&["list"]);
    list.assert_success();
    let text = &list.stdout;

    for id in [RETARGET, SAMPLE, STYLEGAN2] {
        assert!(text.contains(&format!("plugin {id} version 0.1")), "{id} is missing\n{text}");
    }
    let file = format!("  file {}", fixture.binary().display());
    assert_eq!(text.lines().filter(|line| *line == file).count(), 3, "every effect comes from the bundle\n{text}");
    for expected in [
        "  contexts OfxImageEffectContextFilter,OfxImageEffectContextGeneral",
        "  contexts OfxImageEffectContextGenerator,OfxImageEffectContextGeneral",
        "  depths OfxBitDepthByte,OfxBitDepthFloat",
        "  thread-safety OfxImageEffectRenderFullySafe host-frame-threading 0",
        "  multi-resolution 1 tiles 1",
        "    clip Source mandatory components OfxImageComponentRGBA,OfxImageComponentRGB,OfxImageComponentAlpha",
        "    clip Source optional components OfxImageComponentRGBA,OfxImageComponentRGB,OfxImageComponentAlpha",
        "    clip Output mandatory components OfxImageComponentRGBA,OfxImageComponentRGB",
        "    param modelFile OfxParamTypeString animates 0",
        "    param seed OfxParamTypeInteger animates 1",
        "    param startStage OfxParamTypeInteger animates 0",
        "    param noiseMode OfxParamTypeChoice animates 0",
    ] {
        assert!(text.lines().any(|line| line == expected), "'{expected}' is missing\n{text}");
    }
    assert!(text.trim_end().ends_with("unloaded"), "the host did not unload the bundle\n{text}");

    // StyleGAN2 Sample has its own parameters in both contexts, and no SinGAN factors or start stage.
    let listing = plugin_listing(text, STYLEGAN2);
    assert!(listing.contains(&"  label StyleGAN2 Sample"), "{listing:#?}");
    assert!(
        listing.contains(&"  contexts OfxImageEffectContextGenerator,OfxImageEffectContextGeneral"),
        "{listing:#?}"
    );
    let params: Vec<&str> = listing.iter().filter(|line| line.starts_with("    param ")).copied().collect();
    let expected = [
        "    param modelFile OfxParamTypeString animates 0",
        "    param sizeMode OfxParamTypeChoice animates 0",
        "    param width OfxParamTypeInteger animates 0",
        "    param height OfxParamTypeInteger animates 0",
        "    param seed OfxParamTypeInteger animates 1",
        "    param noiseMode OfxParamTypeChoice animates 0",
        "    param truncation OfxParamTypeDouble animates 1",
        "    param interpolationSeed OfxParamTypeInteger animates 1",
        "    param interpolation OfxParamTypeDouble animates 1",
    ];
    assert_eq!(params.len(), 2 * expected.len(), "the parameters in two contexts\n{listing:#?}");
    for (context, context_params) in params.chunks(expected.len()).enumerate() {
        assert_eq!(context_params, expected, "parameters of context {context}");
    }
    assert!(
        listing.contains(&"    clip Output mandatory components OfxImageComponentRGBA,OfxImageComponentRGB"),
        "{listing:#?}"
    );
    assert!(!listing.iter().any(|line| line.contains("clip Source")), "a generator has no Source\n{listing:#?}");
}

#[test]
fn retarget_renders_like_the_c_api() {
    let Some(fixture) = fixture() else { return };
    let (width, height, seed, start_stage) = (40u32, 30u32, 5u64, 1u32);
    let run = fixture.host(&[
        "run",
        "--plugin",
        RETARGET,
        "--context",
        "Filter",
        "--source",
        "64x48",
        "--param",
        &model_param(fixture),
        "--param",
        "sizeMode=2",
        "--param",
        &format!("width={width}"),
        "--param",
        &format!("height={height}"),
        "--param",
        &format!("seed={seed}"),
        "--param",
        &format!("startStage={start_stage}"),
        "--render",
        &format!("scale=1,depth=float,components=RGBA,rows=pos,out={}", fixture.out("r-float.raw").display()),
        "--render",
        &format!("scale=1,depth=byte,components=RGB,rows=neg,out={}", fixture.out("r-byte.raw").display()),
        "--render",
        &format!("scale=0.5,depth=float,components=RGBA,rows=neg,out={}", fixture.out("r-half.raw").display()),
        "--render",
        &format!("scale=0.5,depth=byte,components=RGB,rows=pos,out={}", fixture.out("r-half-byte.raw").display()),
        "--render",
        &format!("scale=1,depth=float,components=RGB,window=5:7:25:20,out={}", fixture.out("r-tile.raw").display()),
    ]);
    run.assert_success();
    println!("retarget render times (ms): {:?}", run.renders());
    assert_eq!(run.renders().len(), 5);
    assert_eq!(run.lines_starting("rod ").first(), Some(&"rod 0 0 40 30"), "{}", run.stdout);
    assert!(run.stdout.contains("roi Source 0 0 0 0"), "the effect requests no Source pixels\n{}", run.stdout);
    assert!(run.stdout.contains("clip-preferences premultiplication OfxImageOpaque frame-varying 0"), "{}", run.stdout);
    for line in run.lines_starting("written ") {
        assert!(line.ends_with("outside 0 source-fetches 0"), "a render wrote outside its window: {line}");
    }
    let row_bytes: Vec<&str> =
        run.lines_starting("render ").iter().map(|l| l.split(" row-bytes ").nth(1).unwrap()).collect();
    assert!(row_bytes[1].starts_with("-120 "), "the second render has negative row bytes: {row_bytes:?}");

    let c_api = |channels, sample_type| {
        c_api_generate(
            &fixture.model,
            (width, height),
            seed,
            start_stage,
            PEGAN_NOISE_MODE_RANDOM,
            channels,
            sample_type,
        )
    };
    let float_rgba = Rendered::read(&fixture.out("r-float.raw"));
    assert_eq!((float_rgba.width, float_rgba.height), (40, 30));
    assert!(float_rgba.bytes == c_api(4, PEGAN_SAMPLE_TYPE_F32).2, "float RGBA at scale 1 differs from the C API");
    let byte_rgb = Rendered::read(&fixture.out("r-byte.raw"));
    assert!(byte_rgb.bytes == c_api(3, PEGAN_SAMPLE_TYPE_U8).2, "8-bit RGB at scale 1 differs from the C API");

    // A proxy render is the full render averaged over 2 x 2 blocks. The plug-in sums in another
    // order, so floats may differ in the last bits and bytes by one rounding step.
    let (full_width, full_height, rgb_bytes) = c_api(3, PEGAN_SAMPLE_TYPE_F32);
    let rgb = samples_of(&rgb_bytes, 4);
    let half = Rendered::read(&fixture.out("r-half.raw"));
    let (half_width, half_height, expected) = half_scale_reference(full_width, full_height, &rgb, 4);
    assert_eq!((half.width, half.height), (half_width, half_height));
    assert_close(&half.samples(), &expected, 1e-6, "float RGBA at scale 0.5");
    let half_byte = Rendered::read(&fixture.out("r-half-byte.raw"));
    let (_, _, expected) = half_scale_reference(full_width, full_height, &rgb, 3);
    let expected: Vec<f32> = expected.iter().map(|v| (v * 255.0).round()).collect();
    assert_close(&half_byte.samples(), &expected, 1.0, "8-bit RGB at scale 0.5");

    // The window x 5..25, y 7..20 counts rows from the bottom: rows 30 - 20 = 10 to 22 from the top.
    let tile = Rendered::read(&fixture.out("r-tile.raw"));
    assert_eq!((tile.width, tile.height), (20, 13));
    let mut expected = Vec::new();
    for row in 10..23 {
        expected.extend_from_slice(&rgb[(row * 40 + 5) * 3..(row * 40 + 25) * 3]);
    }
    assert_close(&tile.samples(), &expected, 0.0, "a tile at scale 1");
}

#[test]
fn sample_renders_like_the_c_api() {
    let Some(fixture) = fixture() else { return };
    let run = fixture.host(&[
        "run",
        "--plugin",
        SAMPLE,
        "--context",
        "Generator",
        "--param",
        &model_param(fixture),
        "--param",
        "seed=11",
        "--render",
        &format!("scale=1,depth=byte,components=RGBA,rows=neg,out={}", fixture.out("s-byte.raw").display()),
        "--render",
        &format!("scale=0.5,depth=float,components=RGB,rows=pos,out={}", fixture.out("s-half.raw").display()),
    ]);
    run.assert_success();
    println!("sample render times (ms): {:?}", run.renders());
    let (trained_width, trained_height) = TRAINED_SIZE;
    assert_eq!(
        run.lines_starting("rod ").first().copied(),
        Some(format!("rod 0 0 {trained_width} {trained_height}").as_str())
    );

    let byte = Rendered::read(&fixture.out("s-byte.raw"));
    let (_, _, expected) =
        c_api_generate(&fixture.model, (0, 0), 11, 0, PEGAN_NOISE_MODE_RANDOM, 4, PEGAN_SAMPLE_TYPE_U8);
    assert!(byte.bytes == expected, "8-bit RGBA at scale 1 differs from the C API");

    let (width, height, rgb) =
        c_api_generate(&fixture.model, (0, 0), 11, 0, PEGAN_NOISE_MODE_RANDOM, 3, PEGAN_SAMPLE_TYPE_F32);
    let (_, _, expected) = half_scale_reference(width, height, &samples_of(&rgb, 4), 3);
    assert_close(&Rendered::read(&fixture.out("s-half.raw")).samples(), &expected, 1e-6, "float RGB at scale 0.5");

    // Factors of the trained size, and the stored reconstruction noise.
    let run = fixture.host(&[
        "run",
        "--plugin",
        SAMPLE,
        "--context",
        "Generator",
        "--param",
        &model_param(fixture),
        "--param",
        "widthFactor=2",
        "--param",
        "heightFactor=1.5",
        "--render",
        &format!("out={}", fixture.out("s-factors.raw").display()),
    ]);
    run.assert_success();
    assert_eq!(run.lines_starting("rod ").first(), Some(&"rod 0 0 48 27"), "{}", run.stdout);
    let (_, _, expected) =
        c_api_generate(&fixture.model, (48, 27), 0, 0, PEGAN_NOISE_MODE_RANDOM, 4, PEGAN_SAMPLE_TYPE_F32);
    assert!(Rendered::read(&fixture.out("s-factors.raw")).bytes == expected, "factors 2 x 1.5 differ from the C API");

    let run = fixture.host(&[
        "run",
        "--plugin",
        SAMPLE,
        "--context",
        "Generator",
        "--param",
        &model_param(fixture),
        "--param",
        "noiseMode=1",
        "--render",
        &format!("out={}", fixture.out("s-reconstruction.raw").display()),
    ]);
    run.assert_success();
    let (_, _, expected) =
        c_api_generate(&fixture.model, (0, 0), 0, 0, PEGAN_NOISE_MODE_RECONSTRUCTION, 4, PEGAN_SAMPLE_TYPE_F32);
    assert!(Rendered::read(&fixture.out("s-reconstruction.raw")).bytes == expected, "the reconstruction differs");
}

/// One StyleGAN2 Sample request: the host's parameters and the same request to the C API.
struct StyleGan2Case {
    label: &'static str,
    model: PathBuf,
    params: Vec<String>,
    c_api: StyleGan2Options,
}

#[test]
fn stylegan2_renders_like_the_c_api() {
    let Some(fixture) = fixture() else { return };
    let strings = |params: &[&str]| params.iter().map(|param| param.to_string()).collect::<Vec<_>>();
    let cases = [
        StyleGan2Case {
            label: "trained size, seed 7",
            model: fixture.stylegan2_model.clone(),
            params: strings(&["seed=7"]),
            c_api: StyleGan2Options { seed: 7, ..StyleGan2Options::default() },
        },
        StyleGan2Case {
            label: "48 x 40 pixels, truncation 0.5, zero noise",
            model: fixture.stylegan2_model.clone(),
            params: strings(&["sizeMode=1", "width=48", "height=40", "seed=3", "truncation=0.5", "noiseMode=2"]),
            c_api: StyleGan2Options {
                size: (48, 40),
                seed: 3,
                truncation: 0.5,
                noise_mode: PEGAN_STYLEGAN2_NOISE_MODE_ZERO,
                ..StyleGan2Options::default()
            },
        },
        StyleGan2Case {
            label: "fixed noise",
            model: fixture.stylegan2_model.clone(),
            params: strings(&["seed=2", "noiseMode=1"]),
            c_api: StyleGan2Options {
                seed: 2,
                noise_mode: PEGAN_STYLEGAN2_NOISE_MODE_FIXED,
                ..StyleGan2Options::default()
            },
        },
        StyleGan2Case {
            label: "MMGeneration checkpoint at 40 x 32 pixels, truncation 0.7",
            model: fixture.checkpoint.clone(),
            params: strings(&["sizeMode=1", "width=40", "height=32", "seed=1", "truncation=0.7"]),
            c_api: StyleGan2Options { size: (40, 32), seed: 1, truncation: 0.7, ..StyleGan2Options::default() },
        },
    ];

    for (index, case) in cases.iter().enumerate() {
        let file = |name: &str| fixture.out(&format!("sg2-{index}-{name}.raw"));
        let model_param = format!("modelFile={}", case.model.display());
        let mut arguments = vec!["run", "--plugin", STYLEGAN2, "--context", "Generator", "--param", &model_param];
        for param in &case.params {
            arguments.extend(["--param", param.as_str()]);
        }
        let renders = [
            format!("scale=1,depth=float,components=RGBA,rows=pos,out={}", file("float").display()),
            format!("scale=1,depth=byte,components=RGB,rows=neg,out={}", file("byte").display()),
            format!("scale=0.5,depth=float,components=RGBA,rows=neg,out={}", file("half").display()),
            format!("scale=0.5,depth=byte,components=RGB,rows=pos,out={}", file("half-byte").display()),
            format!("scale=1,depth=float,components=RGB,window=3:5:20:17,out={}", file("tile").display()),
        ];
        for render in &renders {
            arguments.extend(["--render", render.as_str()]);
        }
        let run = fixture.host(&arguments);
        run.assert_success();
        println!("StyleGAN2 {} render times (ms): {:?}", case.label, run.renders());
        assert_eq!(run.renders().len(), renders.len(), "{}", case.label);
        for line in run.lines_starting("written ") {
            assert!(
                line.ends_with("outside 0 source-fetches 0"),
                "{}: a render wrote outside its window: {line}",
                case.label
            );
        }

        let (width, height, float_rgba) = c_api_stylegan2(&case.model, &case.c_api, 4, PEGAN_SAMPLE_TYPE_F32);
        let rod = format!("rod 0 0 {width} {height}");
        assert_eq!(run.lines_starting("rod ").first().copied(), Some(rod.as_str()), "{}", case.label);
        let rendered = Rendered::read(&file("float"));
        assert_eq!((rendered.width, rendered.height), (width, height), "{}", case.label);
        assert!(rendered.bytes == float_rgba, "{}: float RGBA at scale 1 differs from the C API", case.label);
        let (_, _, byte_rgb) = c_api_stylegan2(&case.model, &case.c_api, 3, PEGAN_SAMPLE_TYPE_U8);
        assert!(Rendered::read(&file("byte")).bytes == byte_rgb, "{}: 8-bit RGB at scale 1 differs", case.label);

        // Proxy renders average 2 x 2 blocks of the full image, within float rounding.
        let (_, _, rgb_bytes) = c_api_stylegan2(&case.model, &case.c_api, 3, PEGAN_SAMPLE_TYPE_F32);
        let rgb = samples_of(&rgb_bytes, 4);
        let (half_width, half_height, expected) = half_scale_reference(width, height, &rgb, 4);
        let half = Rendered::read(&file("half"));
        assert_eq!((half.width, half.height), (half_width, half_height), "{}", case.label);
        assert_close(&half.samples(), &expected, 1e-6, &format!("{}: float RGBA at scale 0.5", case.label));
        let (_, _, expected) = half_scale_reference(width, height, &rgb, 3);
        let expected: Vec<f32> = expected.iter().map(|v| (v * 255.0).round()).collect();
        let label = format!("{}: 8-bit RGB at scale 0.5", case.label);
        assert_close(&Rendered::read(&file("half-byte")).samples(), &expected, 1.0, &label);

        // The window x 3..20, y 5..17 counts rows from the bottom: rows height - 17 to height - 6 from the top.
        let tile = Rendered::read(&file("tile"));
        assert_eq!((tile.width, tile.height), (17, 12), "{}", case.label);
        let mut expected = Vec::new();
        for row in height - 17..height - 5 {
            expected.extend_from_slice(&rgb[(row * width + 3) * 3..(row * width + 20) * 3]);
        }
        assert_close(&tile.samples(), &expected, 0.0, &format!("{}: a tile at scale 1", case.label));
    }
}

#[test]
fn stylegan2_interpolation_matches_the_c_api() {
    let Some(fixture) = fixture() else { return };
    let model = &fixture.stylegan2_model;
    let model_param = format!("modelFile={}", model.display());
    // Linear keys from 0 at time 0 to 1 at time 8: times 2 and 8 give 0.25 and 1.
    let run = fixture.host(&[
        "run",
        "--plugin",
        STYLEGAN2,
        "--context",
        "Generator",
        "--param",
        &model_param,
        "--param",
        "seed=4",
        "--param",
        "interpolationSeed=9",
        "--key",
        "interpolation=0:0,8:1",
        "--render",
        &format!("time=0,out={}", fixture.out("interpolation-0.raw").display()),
        "--render",
        &format!("time=2,out={}", fixture.out("interpolation-2.raw").display()),
        "--render",
        &format!("time=8,out={}", fixture.out("interpolation-8.raw").display()),
    ]);
    run.assert_success();
    assert!(run.stdout.contains("frame-varying 1"), "an animated interpolation makes the output vary\n{}", run.stdout);

    let seed_4 = StyleGan2Options { seed: 4, ..StyleGan2Options::default() };
    let (_, _, expected) = c_api_stylegan2(model, &seed_4, 4, PEGAN_SAMPLE_TYPE_F32);
    assert!(Rendered::read(&fixture.out("interpolation-0.raw")).bytes == expected, "interpolation 0 is not seed 4");

    // Other amounts equal the C API given the interpolated latent and seed 4 for the noise maps.
    for (file, amount) in [("interpolation-2.raw", 0.25), ("interpolation-8.raw", 1.0)] {
        let latent = interpolated_latent(model, 4, 9, amount);
        let request = StyleGan2Options { latent: Some(latent), ..seed_4.clone() };
        let (_, _, expected) = c_api_stylegan2(model, &request, 4, PEGAN_SAMPLE_TYPE_F32);
        assert!(Rendered::read(&fixture.out(file)).bytes == expected, "{file} is not the latent at {amount}");
    }

    // At amount 1 the latent is seed 9's, but the noise maps stay those of seed 4.
    let seed_9 = StyleGan2Options { seed: 9, ..StyleGan2Options::default() };
    let (_, _, seed_9_image) = c_api_stylegan2(model, &seed_9, 4, PEGAN_SAMPLE_TYPE_F32);
    assert!(Rendered::read(&fixture.out("interpolation-8.raw")).bytes != seed_9_image, "the noise of seed 9 was used");

    // The frame at 0.25 is frame 1 of `pegan stylegan2 interpolate --seeds 4,9 --steps 4`.
    let core_model = StyleGan2Model::load(model, &candle_core::Device::Cpu).unwrap();
    let sampler = StyleGan2Sampler::new(&core_model, SampleOptions::default()).unwrap();
    let mut frame_1 = None;
    sampler
        .interpolate(&[4, 9], 4, LatentSpace::Z, &mut |index, image| {
            if index == 1 {
                frame_1 = Some(image.clone());
            }
            Ok(())
        })
        .unwrap();
    let side = STYLEGAN2_SIDE;
    let layout =
        SampleLayout { width: side, height: side, channels: 4, row_stride: side * 16, sample_type: SampleType::F32 };
    let mut expected = vec![0u8; side * side * 16];
    tensor_to_samples(&frame_1.expect("the walk has a frame 1"), &layout, &mut expected).unwrap();
    assert!(Rendered::read(&fixture.out("interpolation-2.raw")).bytes == expected, "frame 1 of the walk differs");
}

#[test]
fn animated_seed_changes_per_frame() {
    let Some(fixture) = fixture() else { return };
    for id in [SAMPLE, STYLEGAN2] {
        let model = if id == STYLEGAN2 { &fixture.stylegan2_model } else { &fixture.model };
        let model_param = format!("modelFile={}", model.display());
        let run = fixture.host(&[
            "run",
            "--plugin",
            id,
            "--context",
            "Generator",
            "--param",
            &model_param,
            "--key",
            "seed=0:3,10:7",
            "--render",
            &format!("time=4,out={}", fixture.out("key-4.raw").display()),
            "--render",
            &format!("time=12,out={}", fixture.out("key-12.raw").display()),
        ]);
        run.assert_success();
        assert!(run.stdout.contains("frame-varying 1"), "{id}: an animated seed makes the output vary\n{}", run.stdout);
        for (file, seed) in [("key-4.raw", 3), ("key-12.raw", 7)] {
            let (_, _, expected) = if id == STYLEGAN2 {
                let request = StyleGan2Options { seed, ..StyleGan2Options::default() };
                c_api_stylegan2(model, &request, 4, PEGAN_SAMPLE_TYPE_F32)
            } else {
                c_api_generate(model, (0, 0), seed, 0, PEGAN_NOISE_MODE_RANDOM, 4, PEGAN_SAMPLE_TYPE_F32)
            };
            assert!(
                Rendered::read(&fixture.out(file)).bytes == expected,
                "{id}: {file} is not the image of seed {seed}"
            );
        }
    }
}

#[test]
fn general_context_renders_every_effect() {
    let Some(fixture) = fixture() else { return };
    // 12 x 9 SinGAN pixels and 16 x 16 StyleGAN2 pixels at scale 0.5.
    let cases =
        [(RETARGET, &fixture.model, 108), (SAMPLE, &fixture.model, 108), (STYLEGAN2, &fixture.stylegan2_model, 256)];
    for (id, model, pixels) in cases {
        let model_param = format!("modelFile={}", model.display());
        let run = fixture.host(&[
            "run",
            "--plugin",
            id,
            "--context",
            "General",
            "--param",
            &model_param,
            "--render",
            "scale=0.5,depth=byte",
        ]);
        run.assert_success();
        assert!(run.stdout.contains("created "), "{}", run.transcript());
        let written = format!("written inside {pixels} outside 0");
        assert_eq!(run.lines_starting(&written).len(), 1, "{id}: '{written}' is missing\n{}", run.stdout);
    }
}

#[test]
fn source_factors_follow_the_source_clip() {
    let Some(fixture) = fixture() else { return };
    let run = fixture.host(&[
        "run",
        "--plugin",
        RETARGET,
        "--context",
        "Filter",
        "--source",
        "64x50",
        "--param",
        &model_param(fixture),
        "--param",
        "sizeMode=1",
        "--param",
        "widthFactor=0.5",
        "--param",
        "heightFactor=0.75",
        "--render",
        "scale=1",
    ]);
    run.assert_success();
    // 50 x 0.75 = 37.5 rounds half up to 38.
    assert_eq!(run.lines_starting("rod ").first(), Some(&"rod 0 0 32 38"), "{}", run.stdout);

    let run = fixture.host(&[
        "run",
        "--plugin",
        RETARGET,
        "--context",
        "General",
        "--param",
        &model_param(fixture),
        "--param",
        "sizeMode=1",
        "--render",
        "scale=1",
    ]);
    assert_eq!(run.code, 2, "{}", run.transcript());
    assert!(run.stdout.contains("the Source clip is not connected: connect it"), "{}", run.stdout);
}

#[test]
fn errors_reach_the_message_suite() {
    let Some(fixture) = fixture() else { return };
    let not_a_model = fixture.out("not-a-model.pegan");
    std::fs::write(&not_a_model, b"this is not a model").unwrap();
    let missing = fixture.out("missing.pegan");
    let file = |path: &Path| format!("modelFile={}", path.display());
    let stylegan2_param = file(&fixture.stylegan2_model);
    let cases: Vec<(&str, Vec<String>, String)> = vec![
        (RETARGET, vec![file(&missing)], format!("Model file '{}' cannot be read", missing.display())),
        (RETARGET, vec![file(&not_a_model)], "not a valid pegan model file".to_string()),
        (RETARGET, vec![model_param(fixture), "startStage=99".into()], "Start stage 99 does not exist".to_string()),
        (
            RETARGET,
            vec![model_param(fixture), "sizeMode=2".into(), "width=70000".into()],
            "Width 70000 is out of range".to_string(),
        ),
        (RETARGET, vec!["modelFile=".into()], "No model file is set".to_string()),
        (
            SAMPLE,
            vec![stylegan2_param.clone()],
            "is a StyleGAN2 model: use it with the StyleGAN2 Sample effect".to_string(),
        ),
        (STYLEGAN2, vec![file(&missing)], format!("Model file '{}' cannot be read", missing.display())),
        (STYLEGAN2, vec![file(&not_a_model)], "not a valid pegan model file".to_string()),
        (STYLEGAN2, vec!["modelFile=".into()], "No model file is set: choose a pegan StyleGAN2 model".to_string()),
        (
            STYLEGAN2,
            vec![model_param(fixture)],
            "is a SinGAN model: use it with the SinGAN Sample or SinGAN Retarget effect".to_string(),
        ),
        (
            STYLEGAN2,
            vec![stylegan2_param.clone(), "sizeMode=1".into(), "width=50".into(), "height=32".into()],
            "The output size 50 x 32 pixels is not a size of this model, because width 50 px is not an output size of \
             this model: sizes are 32 + k·8 px (k = 0, 1, 2, …), e.g. 48 or 56"
                .to_string(),
        ),
        (
            STYLEGAN2,
            vec![stylegan2_param.clone(), "sizeMode=1".into(), "width=40".into(), "height=600".into()],
            "The output size 40 x 600 pixels is above this model's largest size 544 x 544".to_string(),
        ),
        (
            STYLEGAN2,
            vec![
                stylegan2_param.clone(),
                "sizeMode=1".into(),
                "width=40".into(),
                "height=40".into(),
                "noiseMode=1".into(),
            ],
            "fixed noise exists only at the trained scale".to_string(),
        ),
        (
            STYLEGAN2,
            vec![stylegan2_param.clone(), "truncation=-0.5".into()],
            "Truncation -0.5 is invalid: choose a value of at least 0".to_string(),
        ),
    ];
    for (id, params, expected) in cases {
        let mut arguments = match id {
            RETARGET => vec!["run", "--plugin", id, "--context", "Filter", "--source", "32x32"],
            _ => vec!["run", "--plugin", id, "--context", "Generator"],
        };
        for param in &params {
            arguments.extend(["--param", param.as_str()]);
        }
        arguments.extend(["--render", "scale=1", "--render", "scale=0.5"]);
        let run = fixture.host(&arguments);
        assert_eq!(run.code, 2, "{id} {params:?} must fail\n{}", run.transcript());
        let messages = run.lines_starting("persistent message OfxMessageError: ");
        assert_eq!(messages.len(), 2, "each failed render posts its message\n{}", run.stdout);
        assert!(messages[0].contains(&expected), "{id}: '{expected}' is not in '{}'", messages[0]);
        assert!(run.stdout.trim_end().ends_with("unloaded"), "the host did not finish\n{}", run.transcript());
    }

    // Version 1 messages are dialogs, so one failure repeated is shown once.
    let run = fixture.host(&[
        "run",
        "--v1-messages",
        "--plugin",
        SAMPLE,
        "--context",
        "Generator",
        "--param",
        &format!("modelFile={}", missing.display()),
        "--render",
        "scale=1",
        "--render",
        "scale=1",
    ]);
    assert_eq!(run.code, 2, "{}", run.transcript());
    assert_eq!(run.lines_starting("message OfxMessageError: ").len(), 1, "{}", run.stdout);
    assert!(run.lines_starting("persistent ").is_empty(), "{}", run.stdout);

    // Reconstruction exists only at the trained size.
    let run = fixture.host(&[
        "run",
        "--plugin",
        SAMPLE,
        "--context",
        "Generator",
        "--param",
        &model_param(fixture),
        "--param",
        "noiseMode=1",
        "--param",
        "widthFactor=2",
        "--render",
        "scale=1",
    ]);
    assert_eq!(run.code, 2, "{}", run.transcript());
    assert!(run.stdout.contains("Reconstruction works only at the trained size 24 x 18"), "{}", run.stdout);
}

#[test]
fn abort_stops_generation_and_writing() {
    let Some(fixture) = fixture() else { return };
    let stages = SinGanModel::load(&fixture.model, &candle_core::Device::Cpu).unwrap().num_stages();
    assert!(stages >= 3, "the tiny SinGAN has {stages} stages");

    // The effects poll the abort before generating, before every SinGAN stage, after generating and
    // every 16 rows while writing. So 18 SinGAN rows and 32 StyleGAN2 rows both take polls at rows 0
    // and 16. An abort ends the render at the poll that reports it.
    let singan_polls = 1 + stages + 1 + 2;
    let stylegan2_polls = 1 + 1 + 2;
    let cases = [
        (SAMPLE, &fixture.model, None, singan_polls),
        (SAMPLE, &fixture.model, Some(0), 1),
        (SAMPLE, &fixture.model, Some(1), 2),
        (SAMPLE, &fixture.model, Some(2), 3),
        (SAMPLE, &fixture.model, Some(stages + 1), stages + 2),
        (STYLEGAN2, &fixture.stylegan2_model, None, stylegan2_polls),
        (STYLEGAN2, &fixture.stylegan2_model, Some(0), 1),
        (STYLEGAN2, &fixture.stylegan2_model, Some(1), 2),
    ];
    for (id, model, abort_after, polls) in cases {
        let model_param = format!("modelFile={}", model.display());
        let mut arguments = vec!["run", "--plugin", id, "--context", "Generator", "--param", &model_param];
        let abort_after_text = abort_after.map(|calls: usize| calls.to_string());
        if let Some(calls) = &abort_after_text {
            arguments.extend(["--abort-after", calls.as_str()]);
        }
        arguments.extend(["--render", "scale=1"]);
        let run = fixture.host(&arguments);
        run.assert_success();
        let label = format!("{id}, abort after {abort_after:?} polls");
        assert_eq!(run.abort_polls(), vec![polls], "{label}\n{}", run.stdout);
        let written = run.lines_starting("written inside ");
        assert_eq!(written.len(), 1, "{label}\n{}", run.stdout);
        if abort_after.is_some() {
            assert!(written[0].starts_with("written inside 0 outside 0"), "{label}\n{}", run.stdout);
        } else {
            assert!(!written[0].starts_with("written inside 0 "), "{label}\n{}", run.stdout);
        }
    }
}
