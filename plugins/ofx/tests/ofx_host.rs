//! Loads pegan.ofx.bundle in a headless OpenFX host, as a compositor would, and compares what both
//! effects render with the same request through the C API.
//!
//! The host is tests/host/ofx_test_host.cpp on the SDK's HostSupport library, which the crate
//! openfx-sys vendors; tests/host/build.sh builds both once into Cargo's test scratch folder. The
//! bundle is installed by the plug-in's Makefile from this test build's libpegan_ofx.so into a
//! temporary OFX_PLUGIN_PATH, and a model is trained with the tiny preset through the C API.
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

const RETARGET: &str = "org.pegan.SinGanRetarget";
const SAMPLE: &str = "org.pegan.SinGanSample";
/// The tiny preset shrinks the 248 x 186 balloons to a long side of 24 pixels.
const TRAINED_SIZE: (usize, usize) = (24, 18);

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

    /// Returns the render lines as (status, milliseconds).
    fn renders(&self) -> Vec<(i32, f64)> {
        self.lines_starting("render ")
            .into_iter()
            .map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let value = |key: &str| {
                    let index = words.iter().position(|word| *word == key).expect("render line has the key");
                    words[index + 1]
                };
                (value("status").parse().unwrap(), value("ms").parse().unwrap())
            })
            .collect()
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
            Some(Fixture { plugin_dir, host: host_dir.join("ofx_test_host"), model, folder })
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
    assert!(check.stdout.contains("dlopen ok, plugins 2"), "{}", check.transcript());
    assert!(check.stdout.contains(&format!("entry 0 {RETARGET} api OfxImageEffectPluginAPI 1")), "{}", check.stdout);
    assert!(check.stdout.contains(&format!("entry 1 {SAMPLE} api OfxImageEffectPluginAPI 1")), "{}", check.stdout);
    assert!(check.stdout.contains("out of range entry is NULL"), "{}", check.stdout);
}

#[test]
fn host_finds_and_describes_both_effects() {
    let Some(fixture) = fixture() else { return };
    let list = fixture.host(&["list"]);
    list.assert_success();
    let text = &list.stdout;

    for id in [RETARGET, SAMPLE] {
        assert!(text.contains(&format!("plugin {id} version 0.1")), "{id} is missing\n{text}");
    }
    let file = format!("  file {}", fixture.binary().display());
    assert_eq!(text.lines().filter(|line| *line == file).count(), 2, "both effects come from the bundle\n{text}");
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

#[test]
fn animated_seed_changes_per_frame() {
    let Some(fixture) = fixture() else { return };
    let run = fixture.host(&[
        "run",
        "--plugin",
        SAMPLE,
        "--context",
        "Generator",
        "--param",
        &model_param(fixture),
        "--key",
        "seed=0:3,10:7",
        "--render",
        &format!("time=4,out={}", fixture.out("key-4.raw").display()),
        "--render",
        &format!("time=12,out={}", fixture.out("key-12.raw").display()),
    ]);
    run.assert_success();
    assert!(run.stdout.contains("frame-varying 1"), "an animated seed makes the output vary\n{}", run.stdout);
    for (file, seed) in [("key-4.raw", 3), ("key-12.raw", 7)] {
        let (_, _, expected) =
            c_api_generate(&fixture.model, (0, 0), seed, 0, PEGAN_NOISE_MODE_RANDOM, 4, PEGAN_SAMPLE_TYPE_F32);
        assert!(Rendered::read(&fixture.out(file)).bytes == expected, "{file} is not the image of seed {seed}");
    }
}

#[test]
fn general_context_renders_both_effects() {
    let Some(fixture) = fixture() else { return };
    for id in [RETARGET, SAMPLE] {
        let run = fixture.host(&[
            "run",
            "--plugin",
            id,
            "--context",
            "General",
            "--param",
            &model_param(fixture),
            "--render",
            "scale=0.5,depth=byte",
        ]);
        run.assert_success();
        assert!(run.stdout.contains("created "), "{}", run.transcript());
        assert_eq!(
            run.lines_starting("written inside 108 outside 0").len(),
            1,
            "12 x 9 pixels at scale 0.5\n{}",
            run.stdout
        );
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
    let cases: [(Vec<String>, String); 5] = [
        (
            vec![format!("modelFile={}", missing.display())],
            format!("Model file '{}' cannot be read", missing.display()),
        ),
        (vec![format!("modelFile={}", not_a_model.display())], "not a valid pegan model file".to_string()),
        (vec![model_param(fixture), "startStage=99".into()], "Start stage 99 does not exist".to_string()),
        (
            vec![model_param(fixture), "sizeMode=2".into(), "width=70000".into()],
            "Width 70000 is out of range".to_string(),
        ),
        (vec!["modelFile=".into()], "No model file is set".to_string()),
    ];
    for (params, expected) in cases {
        let mut arguments = vec!["run", "--plugin", RETARGET, "--context", "Filter", "--source", "32x32"];
        for param in &params {
            arguments.extend(["--param", param.as_str()]);
        }
        arguments.extend(["--render", "scale=1", "--render", "scale=0.5"]);
        let run = fixture.host(&arguments);
        assert_eq!(run.code, 2, "{params:?} must fail\n{}", run.transcript());
        let messages = run.lines_starting("persistent message OfxMessageError: ");
        assert_eq!(messages.len(), 2, "each failed render posts its message\n{}", run.stdout);
        assert!(messages[0].contains(&expected), "'{expected}' is not in '{}'", messages[0]);
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
fn abort_leaves_the_output_unwritten() {
    let Some(fixture) = fixture() else { return };
    // The first poll is before generation, the second after it.
    for abort_after in ["0", "1"] {
        let run = fixture.host(&[
            "run",
            "--plugin",
            SAMPLE,
            "--context",
            "Generator",
            "--param",
            &model_param(fixture),
            "--abort-after",
            abort_after,
            "--render",
            "scale=1",
        ]);
        run.assert_success();
        assert_eq!(run.renders().len(), 1);
        assert!(run.stdout.contains("written inside 0 outside 0"), "abort after {abort_after} polls\n{}", run.stdout);
    }
}
