//! End-to-end tests of the `pegan` binary: training on the tiny preset, sampling, retargeting,
//! inspection, resumption, MMGeneration import and rejection of bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

mod common;

/// Iterations per stage of the tiny preset (core/presets/singan/tiny.json).
const TINY_ITERS: usize = 4;

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

fn balloons() -> PathBuf {
    repo_file("tests/data/singan/balloons.png")
}

fn text(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Runs `pegan` with `args` and returns its output.
fn pegan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pegan")).args(args).output().expect("the pegan binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `pegan` and panics with its stderr unless it exits with status 0.
fn pegan_ok(args: &[&str]) -> Output {
    let output = pegan(args);
    assert!(output.status.success(), "pegan {args:?} failed with {}: {}", output.status, stderr(&output));
    output
}

/// A model trained once with the tiny preset, shared by the tests that only read it.
struct TrainedModel {
    folder: TempDir,
    model: PathBuf,
    train_output: Output,
}

fn trained_model() -> &'static TrainedModel {
    static MODEL: OnceLock<TrainedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let folder = TempDir::new().unwrap();
        let model = folder.path().join("balloons.safetensors");
        let train_output = pegan_ok(&[
            "singan",
            "train",
            text(&balloons()),
            "--variant",
            "csg",
            "--preset",
            "tiny",
            "--seed",
            "7",
            "-o",
            text(&model),
        ]);
        TrainedModel { folder, model, train_output }
    })
}

/// Copies the shared model into `folder`, so a test can change or extend it.
fn copy_trained_model(folder: &Path) -> PathBuf {
    let copy = folder.join("copy.safetensors");
    std::fs::copy(&trained_model().model, &copy).unwrap();
    copy
}

/// Metadata of a model, read through `pegan inspect --json`.
fn metadata(model: &Path) -> Value {
    let output = pegan_ok(&["inspect", text(model), "--json"]);
    serde_json::from_slice(&output.stdout).expect("inspect --json prints JSON")
}

/// (height, width) of the finest stage of a model.
fn trained_size(model: &Path) -> (u32, u32) {
    let sizes = metadata(model)["stage_sizes"].as_array().unwrap().clone();
    let last = sizes.last().unwrap();
    (last[0].as_u64().unwrap() as u32, last[1].as_u64().unwrap() as u32)
}

/// (width, height) of a PNG file.
fn png_size(path: &Path) -> (u32, u32) {
    image::image_dimensions(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn read_loss_log(path: &Path) -> Vec<Value> {
    let lines: Vec<Value> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("invalid JSON line {line:?}: {e}")))
        .collect();

    // Training adds one report per finished stage, a repeat of its last iteration with
    // `stage_finished` set; only the per-iteration reports are returned.
    let (finished, iterations): (Vec<Value>, Vec<Value>) =
        lines.into_iter().partition(|report| report["stage_finished"] == Value::Bool(true));
    for report in &finished {
        let last = iterations
            .iter()
            .rev()
            .find(|r| r["stage"] == report["stage"])
            .unwrap_or_else(|| panic!("stage-finished report {report} follows no iteration of its stage"));
        assert_eq!(last["iteration"], report["iteration"], "stage-finished report {report}");
    }
    iterations
}

/// Rewrites the pegan metadata of a native model file so that only `finished` stages count as trained.
fn mark_stages_unfinished(model: &Path, finished: usize) {
    rewrite_metadata(model, |metadata| metadata["finished_stages"] = Value::from(finished));
}

/// Rewrites the pegan metadata of a native model file with `change`, keeping its tensors.
fn rewrite_metadata(model: &Path, change: impl FnOnce(&mut Value)) {
    let bytes = std::fs::read(model).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let pegan_entry = &mut header["__metadata__"]["pegan"];
    let mut metadata: Value = serde_json::from_str(pegan_entry.as_str().unwrap()).unwrap();
    change(&mut metadata);
    *pegan_entry = Value::from(metadata.to_string());

    // safetensors pads its header with spaces to a multiple of 8 bytes.
    let mut new_header = serde_json::to_vec(&header).unwrap();
    while new_header.len() % 8 != 0 {
        new_header.push(b' ');
    }
    let mut rewritten = (new_header.len() as u64).to_le_bytes().to_vec();
    rewritten.extend_from_slice(&new_header);
    rewritten.extend_from_slice(&bytes[8 + header_len..]);
    std::fs::write(model, rewritten).unwrap();
}

#[test]
fn train_tiny_writes_model_and_loss_log() {
    let trained = trained_model();
    assert!(trained.model.is_file());

    let metadata = metadata(&trained.model);
    let num_stages = metadata["stage_sizes"].as_array().unwrap().len();
    assert!(num_stages >= 2, "tiny preset gave {num_stages} stages");
    assert_eq!(metadata["finished_stages"].as_u64().unwrap() as usize, num_stages);
    assert_eq!(metadata["seed"], 7);
    assert_eq!(metadata["config"]["variant"], "csg");

    let log_path = trained.folder.path().join("balloons.safetensors.losses.jsonl");
    let reports = read_loss_log(&log_path);
    assert_eq!(reports.len(), num_stages * TINY_ITERS);
    for (index, report) in reports.iter().enumerate() {
        assert_eq!(report["stage"].as_u64().unwrap() as usize, index / TINY_ITERS);
        assert_eq!(report["iteration"].as_u64().unwrap() as usize, index % TINY_ITERS + 1);
        for loss in ["loss_d", "gradient_penalty", "loss_g_adv", "loss_recon"] {
            assert!(report[loss].as_f64().is_some_and(f64::is_finite), "{loss} in {report}");
        }
    }

    let messages = stderr(&trained.train_output);
    assert!(messages.contains(&format!("stage {} of 0–{}", num_stages - 1, num_stages - 1)), "{messages}");
}

#[test]
fn train_writes_loss_log_to_given_path() {
    let folder = TempDir::new().unwrap();
    let model = folder.path().join("m.safetensors");
    let log = folder.path().join("history.jsonl");
    pegan_ok(&[
        "singan",
        "train",
        text(&balloons()),
        "--variant",
        "interp-pad",
        "--preset",
        "tiny",
        "--threads",
        "1",
        "--loss-log",
        text(&log),
        "-o",
        text(&model),
    ]);

    let reports = read_loss_log(&log);
    let num_stages = metadata(&model)["stage_sizes"].as_array().unwrap().len();
    assert_eq!(reports.len(), num_stages * TINY_ITERS);
    assert!(!folder.path().join("m.safetensors.losses.jsonl").exists());
}

#[test]
fn train_applies_config_overrides() {
    let folder = TempDir::new().unwrap();
    let config = folder.path().join("override.json");
    std::fs::write(&config, r#"{"train": {"iters_per_scale": 2, "lr_milestones": [1]}}"#).unwrap();
    let model = folder.path().join("m.safetensors");
    pegan_ok(&[
        "singan",
        "train",
        text(&balloons()),
        "--variant",
        "baseline",
        "--preset",
        "tiny",
        "--config",
        text(&config),
        "-o",
        text(&model),
    ]);

    let metadata = metadata(&model);
    assert_eq!(metadata["config"]["train"]["iters_per_scale"], 2);
    assert_eq!(metadata["config"]["variant"], "baseline");
    let num_stages = metadata["stage_sizes"].as_array().unwrap().len();
    let reports = read_loss_log(&folder.path().join("m.safetensors.losses.jsonl"));
    assert_eq!(reports.len(), num_stages * 2);
}

#[test]
fn train_accepts_complete_config_without_variant() {
    let folder = TempDir::new().unwrap();
    let stored = metadata(&trained_model().model)["config"].clone();
    let config = folder.path().join("full.json");
    std::fs::write(&config, stored.to_string()).unwrap();
    let model = folder.path().join("m.safetensors");
    pegan_ok(&["singan", "train", text(&balloons()), "--config", text(&config), "-o", text(&model)]);

    assert_eq!(metadata(&model)["config"], stored);
}

#[test]
fn sample_writes_count_images_at_trained_size() {
    let model = &trained_model().model;
    let folder = TempDir::new().unwrap();
    let out = folder.path().join("samples");
    let output = pegan_ok(&["singan", "sample", text(model), "-n", "2", "-o", text(&out)]);

    let (height, width) = trained_size(model);
    for name in ["sample_000.png", "sample_001.png"] {
        assert_eq!(png_size(&out.join(name)), (width, height), "{name}");
        assert!(stdout(&output).contains(name));
    }
    assert!(!out.join("sample_002.png").exists());
    let first = std::fs::read(out.join("sample_000.png")).unwrap();
    let second = std::fs::read(out.join("sample_001.png")).unwrap();
    assert_ne!(first, second, "two samples of one call are identical");
}

#[test]
fn sample_same_seed_same_pixels() {
    let model = &trained_model().model;
    let folder = TempDir::new().unwrap();
    let run = |seed: &str, name: &str| {
        let out = folder.path().join(name);
        pegan_ok(&["singan", "sample", text(model), "--seed", seed, "-o", text(&out)]);
        std::fs::read(out.join("sample_000.png")).unwrap()
    };

    let first = run("3", "a");
    let again = run("3", "b");
    let other = run("4", "c");
    assert_eq!(first, again);
    assert_ne!(first, other);
}

#[test]
fn sample_sizes_in_pixels_and_factors() {
    let model = &trained_model().model;
    let (height, width) = trained_size(model);
    let folder = TempDir::new().unwrap();

    let pixels = folder.path().join("pixels");
    pegan_ok(&["singan", "sample", text(model), "--width", "29", "--height", "13", "-o", text(&pixels)]);
    assert_eq!(png_size(&pixels.join("sample_000.png")), (29, 13));

    let factors = folder.path().join("factors");
    pegan_ok(&["singan", "sample", text(model), "--scale-w", "1.5", "--scale-h", "0.5", "-o", text(&factors)]);
    let expected = ((width as f64 * 1.5).round() as u32, (height as f64 * 0.5).round() as u32);
    assert_eq!(png_size(&factors.join("sample_000.png")), expected);
}

#[test]
fn sample_recon_and_injection() {
    let model = &trained_model().model;
    let (height, width) = trained_size(model);
    let folder = TempDir::new().unwrap();

    let recon = folder.path().join("recon");
    pegan_ok(&["singan", "sample", text(model), "--recon", "-o", text(&recon)]);
    assert_eq!(png_size(&recon.join("sample_000.png")), (width, height));
    let recon_again = folder.path().join("recon_again");
    pegan_ok(&["singan", "sample", text(model), "--recon", "--seed", "9", "-o", text(&recon_again)]);
    assert_eq!(
        std::fs::read(recon.join("sample_000.png")).unwrap(),
        std::fs::read(recon_again.join("sample_000.png")).unwrap(),
        "reconstruction depends on the seed"
    );

    let injected = folder.path().join("injected");
    pegan_ok(&[
        "singan",
        "sample",
        text(model),
        "--start-stage",
        "1",
        "--start-image",
        text(&balloons()),
        "-o",
        text(&injected),
    ]);
    assert_eq!(png_size(&injected.join("sample_000.png")), (width, height));
}

#[test]
fn retarget_writes_exact_sizes() {
    let model = &trained_model().model;
    let (height, width) = trained_size(model);
    let folder = TempDir::new().unwrap();
    let cases = [
        (37, 11, "0"),
        (31, 17, "0"),
        (17, 31, "2"),
        (width - 1, height - 1, "0"),
        (width / 2, height / 2, "2"),
        (width * 3, height * 3, "0"),
        (height, width, "2"),
        (1, 1, "0"),
    ];

    for (index, (w, h, start_stage)) in cases.into_iter().enumerate() {
        let out = folder.path().join(format!("retarget_{index}.png"));
        let output = pegan_ok(&[
            "singan",
            "retarget",
            text(model),
            "--width",
            &w.to_string(),
            "--height",
            &h.to_string(),
            "--start-stage",
            start_stage,
            "-o",
            text(&out),
        ]);
        assert_eq!(png_size(&out), (w, h), "retarget to {w}×{h} from stage {start_stage}");
        assert!(stdout(&output).contains("retarget_"));
    }
}

#[test]
fn inspect_prints_metadata_and_summary() {
    let model = &trained_model().model;
    let output = pegan_ok(&["inspect", text(model)]);
    let printed = stdout(&output);

    // The JSON object comes first and ends at the first line that is a lone closing brace.
    let json_end = printed.find("\n}\n").expect("pretty JSON object") + 2;
    let parsed: Value = serde_json::from_str(&printed[..json_end]).unwrap();
    assert_eq!(parsed["kind"], "singan");
    assert_eq!(parsed["source"], "pegan");
    assert_eq!(parsed["format_version"], 1);

    let summary = &printed[json_end..];
    assert!(summary.contains("variant csg"), "{summary}");
    assert!(summary.contains("finished stages: all"), "{summary}");
    assert!(summary.contains("noise amplitude"), "{summary}");
}

#[test]
fn resume_finishes_partial_model() {
    let folder = TempDir::new().unwrap();
    let model = copy_trained_model(folder.path());
    let num_stages = metadata(&model)["stage_sizes"].as_array().unwrap().len();
    mark_stages_unfinished(&model, 2);

    let summary = stdout(&pegan_ok(&["inspect", text(&model)]));
    assert!(summary.contains(&format!("finished stages: 2 of {num_stages}")), "{summary}");

    let sample = pegan(&["singan", "sample", text(&model), "-o", text(&folder.path().join("s"))]);
    assert_eq!(sample.status.code(), Some(1));
    assert!(stderr(&sample).contains("stages 0 to 1"), "{}", stderr(&sample));
    assert!(stderr(&sample).contains("--resume"), "{}", stderr(&sample));
    assert!(!folder.path().join("s").exists(), "a rejected sample call created its output folder");

    let restart =
        pegan(&["singan", "train", text(&balloons()), "--variant", "csg", "--preset", "tiny", "-o", text(&model)]);
    assert_eq!(restart.status.code(), Some(1));
    assert!(stderr(&restart).contains("add --resume"), "{}", stderr(&restart));

    let output = pegan_ok(&["singan", "train", text(&balloons()), "--resume", "-o", text(&model)]);
    assert!(stderr(&output).contains("resuming at stage 2"), "{}", stderr(&output));
    let resumed = metadata(&model);
    assert_eq!(resumed["finished_stages"].as_u64().unwrap() as usize, num_stages);
    assert_eq!(resumed["seed"], 7);

    let reports = read_loss_log(&folder.path().join("copy.safetensors.losses.jsonl"));
    assert_eq!(reports.len(), (num_stages - 2) * TINY_ITERS);
    assert_eq!(reports[0]["stage"], 2);

    pegan_ok(&["singan", "sample", text(&model), "-o", text(&folder.path().join("s"))]);
}

#[test]
fn resume_on_different_image_fails() {
    let folder = TempDir::new().unwrap();
    let model = copy_trained_model(folder.path());
    mark_stages_unfinished(&model, 1);
    let birds = repo_file("tests/data/singan/birds.png");

    let output = pegan(&["singan", "train", text(&birds), "--resume", "-o", text(&model)]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("same image"), "{}", stderr(&output));
}

#[cfg(unix)]
#[test]
fn interrupt_keeps_finished_stages() {
    let folder = TempDir::new().unwrap();
    let config = folder.path().join("long.json");
    std::fs::write(&config, r#"{"train": {"iters_per_scale": 100, "lr_milestones": [80]}}"#).unwrap();
    let model = folder.path().join("m.safetensors");
    let log = folder.path().join("m.safetensors.losses.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pegan"))
        .args(["singan", "train", text(&balloons()), "--variant", "csg", "--preset", "tiny"])
        .args(["--config", text(&config), "-o", text(&model)])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Wait until stage 1 has started, which means stage 0 is saved.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let started_stage_1 = std::fs::read_to_string(&log).is_ok_and(|text| text.contains(r#""stage":1"#));
        if started_stage_1 {
            break;
        }
        assert!(Instant::now() < deadline, "stage 1 did not start within 300 s");
        assert!(child.try_wait().unwrap().is_none(), "training ended before it was interrupted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());

    let output = child.wait_with_output().unwrap();
    let messages = stderr(&output);
    assert_eq!(output.status.code(), Some(130), "{messages}");
    assert!(messages.contains("interrupted: stages 0–"), "{messages}");
    assert!(messages.contains("--resume"), "{messages}");

    let metadata = metadata(&model);
    let finished = metadata["finished_stages"].as_u64().unwrap() as usize;
    let num_stages = metadata["stage_sizes"].as_array().unwrap().len();
    assert!((1..num_stages).contains(&finished), "{finished} of {num_stages} stages finished");
}

#[test]
fn convert_and_inspect_mmgen_checkpoint() {
    let reference = repo_file("tests/data/vectors/singan/csg");
    let checkpoint = reference.join("checkpoint.pth");
    let pkl = reference.join("pickle_data.pkl");
    let folder = TempDir::new().unwrap();
    let model = folder.path().join("csg.safetensors");

    pegan_ok(&["convert", text(&checkpoint), "--pkl", text(&pkl), "-o", text(&model)]);
    let converted = metadata(&model);
    assert_eq!(converted["source"], "mmgeneration");
    assert_eq!(converted["config"]["variant"], "csg");

    let direct = pegan_ok(&["inspect", text(&checkpoint), "--mmgen-pkl", text(&pkl), "--json"]);
    let direct: Value = serde_json::from_slice(&direct.stdout).unwrap();
    assert_eq!(direct, converted);

    let out = folder.path().join("recon");
    pegan_ok(&["singan", "sample", text(&model), "--recon", "-o", text(&out)]);
    let (height, width) = trained_size(&model);
    assert_eq!(png_size(&out.join("sample_000.png")), (width, height));
}

#[test]
fn help_states_units() {
    let sample = stdout(&pegan_ok(&["singan", "sample", "--help"]));
    assert!(sample.contains("Output width in pixels"), "{sample}");
    assert!(sample.contains("multiple of the trained width"), "{sample}");
    assert!(sample.contains("Number of images"), "{sample}");

    let train = stdout(&pegan_ok(&["singan", "train", "--help"]));
    for option in ["--variant", "--preset", "--config", "--seed", "--device", "--threads", "--loss-log", "--resume"] {
        assert!(train.contains(option), "train --help lacks {option}");
    }

    let retarget = stdout(&pegan_ok(&["singan", "retarget", "--help"]));
    assert!(retarget.contains("Output height in pixels"), "{retarget}");
}

/// A command that must fail, its exit status and a text that its error message must contain.
struct BadInput {
    args: Vec<String>,
    status: i32,
    names: &'static str,
}

fn bad(args: &[&str], status: i32, names: &'static str) -> BadInput {
    BadInput { args: args.iter().map(|a| a.to_string()).collect(), status, names }
}

#[test]
fn bad_input_fails_with_message_naming_value() {
    let trained = &trained_model().model;
    let folder = TempDir::new().unwrap();
    let path = |name: &str| folder.path().join(name).to_string_lossy().into_owned();

    std::fs::write(path("empty.png"), b"").unwrap();
    std::fs::write(path("garbage.safetensors"), b"this is not a model").unwrap();
    let bytes = std::fs::read(trained).unwrap();
    std::fs::write(path("truncated.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(path("not-json.json"), "{ iters_per_scale = 3 }").unwrap();
    std::fs::write(path("unknown-field.json"), r#"{"train": {"iters": 3}}"#).unwrap();
    std::fs::write(path("negative-lr.json"), r#"{"train": {"lr_g": -0.0005}}"#).unwrap();
    std::fs::write(path("other-variant.json"), r#"{"variant": "baseline"}"#).unwrap();

    let model = text(trained).to_string();
    let image = text(&balloons()).to_string();
    let out_png = path("out.png");
    let out_model = path("new.safetensors");
    let mut cases = vec![
        bad(&["singan", "train", &path("missing.png"), "--variant", "csg", "-o", &out_model], 1, "missing.png"),
        bad(&["singan", "train", &path("empty.png"), "--variant", "csg", "-o", &out_model], 1, "empty.png"),
        bad(&["singan", "train", &image, "--variant", "spe16", "-o", &out_model], 2, "'spe16'"),
        bad(&["singan", "train", &image, "--variant", "csg", "--preset", "huge", "-o", &out_model], 2, "'huge'"),
        bad(&["singan", "train", &image, "-o", &out_model], 2, "--variant"),
        bad(&["singan", "train", &image, "--resume", "--variant", "csg", "-o", &out_model], 2, "--resume"),
        bad(&["singan", "train", &image, "--resume", "-o", &out_model], 1, "new.safetensors"),
        bad(
            &["singan", "train", &image, "--variant", "csg", "--config", &path("not-json.json"), "-o", &out_model],
            1,
            "not-json.json",
        ),
        bad(
            &["singan", "train", &image, "--variant", "csg", "--config", &path("unknown-field.json"), "-o", &out_model],
            1,
            "`iters`",
        ),
        bad(&["singan", "train", &image, "--variant", "csg", "-o", &path("no-folder/m.safetensors")], 1, "no-folder"),
        bad(&["singan", "retarget", &model, "--width", "abc", "--height", "5", "-o", &out_png], 2, "'abc'"),
        bad(&["singan", "retarget", &model, "--width", "0", "--height", "5", "-o", &out_png], 2, "'0'"),
        bad(&["singan", "retarget", &model, "--width", "-5", "--height", "5", "-o", &out_png], 2, "'-5'"),
        bad(&["singan", "retarget", &model, "--width", "5", "--height", "2.5", "-o", &out_png], 2, "'2.5'"),
        bad(&["singan", "retarget", &model, "--width", "100000", "--height", "5", "-o", &out_png], 1, "100000"),
        bad(&["singan", "retarget", &model, "--width", "60000", "--height", "60000", "-o", &out_png], 1, "60000×60000"),
        bad(&["singan", "retarget", &model, "--width", "5", "--height", "5", "-o", &path("out.jpg")], 1, "out.jpg"),
        bad(
            &["singan", "retarget", &model, "--width", "5", "--height", "5", "--start-stage", "99", "-o", &out_png],
            1,
            "99",
        ),
        bad(
            &["singan", "retarget", &path("missing.safetensors"), "--width", "5", "--height", "5", "-o", &out_png],
            1,
            "missing.safetensors",
        ),
        bad(&["singan", "sample", &path("truncated.safetensors"), "-o", &path("s")], 1, "truncated.safetensors"),
        bad(&["singan", "sample", &path("garbage.safetensors"), "-o", &path("s")], 1, "garbage.safetensors"),
        bad(&["singan", "sample", &model, "--width", "40", "-o", &path("s")], 2, "--height"),
        bad(&["singan", "sample", &model, "--scale-h", "2", "-o", &path("s")], 2, "--scale-w"),
        bad(
            &[
                "singan",
                "sample",
                &model,
                "--width",
                "40",
                "--height",
                "4",
                "--scale-w",
                "2",
                "--scale-h",
                "2",
                "-o",
                &path("s"),
            ],
            2,
            "--width",
        ),
        bad(&["singan", "sample", &model, "--scale-w", "-1", "--scale-h", "2", "-o", &path("s")], 2, "'-1'"),
        bad(&["singan", "sample", &model, "-n", "0", "-o", &path("s")], 2, "'0'"),
        bad(&["singan", "sample", &model, "-n", "-3", "-o", &path("s")], 2, "negative values are not allowed"),
        bad(&["singan", "sample", &model, "-n", "10001", "-o", &path("s")], 2, "10000"),
        bad(&["singan", "sample", &model, "-n", "99999999999999999999999", "-o", &path("s")], 2, "too large"),
        bad(&["singan", "sample", &model, "-o", &model], 1, "is an existing file"),
        bad(&["singan", "retarget", &model, "--width", "5", "--height", "5", "-o", &path("")], 1, "is a folder"),
        bad(&["singan", "train", &image, "--variant", "csg", "-o", &path("")], 1, "is a folder"),
        bad(
            &["singan", "train", &image, "--variant", "csg", "--config", &path("negative-lr.json"), "-o", &out_model],
            1,
            "train.lr_g",
        ),
        bad(
            &["singan", "train", &image, "--variant", "csg", "--config", &path("other-variant.json"), "-o", &out_model],
            1,
            "--variant is csg",
        ),
        bad(&["metrics", "swd", &path("missing"), &path("missing"), "--json"], 1, "missing"),
        bad(&["metrics", "swd", &path(""), &path(""), "--resize", "12"], 2, "WIDTHxHEIGHT"),
        bad(&["metrics", "swd", &path(""), &path(""), "--max-images", "0"], 2, "'0'"),
        bad(
            &[
                "singan",
                "sample",
                &model,
                "--start-image",
                &path("missing.png"),
                "--start-stage",
                "1",
                "-o",
                &path("s"),
            ],
            1,
            "missing.png",
        ),
        bad(&["singan", "sample", &model, "--device", "gpu", "-o", &path("s")], 1, "'gpu'"),
        bad(&["inspect", &path("garbage.safetensors")], 1, "garbage.safetensors"),
        bad(&["inspect", &path("missing.pth"), "--mmgen-pkl", &path("missing.pkl")], 1, "missing.pth"),
    ];
    if cfg!(not(feature = "cuda")) {
        cases.push(bad(&["singan", "sample", &model, "--device", "cuda:0", "-o", &path("s")], 1, "--features cuda"));
    }

    for case in &cases {
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let output = pegan(&args);
        let messages = stderr(&output);
        let first_line = messages.lines().next().unwrap_or("");

        assert_eq!(output.status.code(), Some(case.status), "pegan {args:?}: {messages}");
        assert!(first_line.starts_with("error: "), "pegan {args:?}: {messages}");
        // Our own errors are one line; clap's usage errors list the arguments involved below the first line.
        if case.status == 1 {
            assert_eq!(messages.lines().count(), 1, "pegan {args:?} printed more than one line: {messages}");
        }
        assert!(messages.contains(case.names), "pegan {args:?} does not name {:?}: {messages}", case.names);
    }
    assert!(!Path::new(&path("s")).exists(), "a failed sample call created its output folder");
}

#[test]
fn tampered_metadata_fails_cleanly() {
    let folder = TempDir::new().unwrap();
    let model = copy_trained_model(folder.path());
    rewrite_metadata(&model, |metadata| {
        metadata["stage_sizes"][0] = serde_json::json!([1u64 << 20, 1u64 << 20]);
        metadata["config"]["generator"]["num_layers"] = Value::from(1u64 << 40);
    });

    // Before the metadata was checked against the tensors, these calls aborted with status 134.
    let out = folder.path().join("s");
    for args in [vec!["inspect", text(&model)], vec!["singan", "sample", text(&model), "-o", text(&out)]] {
        let output = pegan(&args);
        let messages = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "pegan {args:?}: {messages}");
        assert!(messages.contains("copy.safetensors"), "{messages}");
        assert!(messages.contains("num_layers"), "{messages}");
    }
}

#[test]
fn outputs_that_name_inputs_are_rejected() {
    let folder = TempDir::new().unwrap();
    let image = folder.path().join("image.png");
    std::fs::copy(balloons(), &image).unwrap();
    let config = folder.path().join("config.json");
    std::fs::write(&config, r#"{"train": {"iters_per_scale": 1}}"#).unwrap();
    let model = copy_trained_model(folder.path());
    let original_model = std::fs::read(&model).unwrap();
    let reference = repo_file("tests/data/vectors/singan/csg");
    let checkpoint = folder.path().join("checkpoint.pth");
    std::fs::copy(reference.join("checkpoint.pth"), &checkpoint).unwrap();
    let pkl = reference.join("pickle_data.pkl");
    let samples = folder.path().join("samples");
    std::fs::create_dir_all(&samples).unwrap();
    let earlier_sample = samples.join("sample_001.png");
    std::fs::copy(balloons(), &earlier_sample).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&image, folder.path().join("link.png")).unwrap();

    let train = |extra: &[&str]| {
        let mut args = vec!["singan", "train", text(&image), "--variant", "csg", "--preset", "tiny"];
        args.extend_from_slice(extra);
        pegan(&args)
    };
    let dotted = folder.path().join(".").join("image.png");
    let link = folder.path().join("link.png");
    let mut cases = vec![
        (train(&["-o", text(&image)]), "the model file", "training image"),
        (train(&["-o", text(&dotted)]), "the model file", "training image"),
        (train(&["--config", text(&config), "-o", text(&config)]), "the model file", "config file"),
        (
            train(&["--loss-log", text(&image), "-o", text(&folder.path().join("m.safetensors"))]),
            "the loss log",
            "training image",
        ),
        (
            train(&["--config", text(&config), "--loss-log", text(&config), "-o", text(&folder.path().join("m"))]),
            "the loss log",
            "config file",
        ),
        (
            pegan(&["singan", "train", text(&image), "--resume", "--loss-log", text(&model), "-o", text(&model)]),
            "the loss log",
            "model file",
        ),
        (
            pegan(&["convert", text(&checkpoint), "--pkl", text(&pkl), "-o", text(&checkpoint)]),
            "the model file",
            "checkpoint",
        ),
        (
            pegan(&[
                "singan",
                "sample",
                text(&model),
                "-n",
                "3",
                "--start-stage",
                "1",
                "--start-image",
                text(&earlier_sample),
                "-o",
                text(&samples),
            ]),
            "the sample",
            "--start-image",
        ),
    ];
    if cfg!(unix) {
        cases.push((train(&["-o", text(&link)]), "the model file", "training image"));
    }

    for (output, what, input) in &cases {
        let messages = stderr(output);
        assert_eq!(output.status.code(), Some(1), "{messages}");
        assert!(messages.contains(what), "{messages}");
        assert!(messages.contains(input), "{messages}");
        assert!(messages.contains("same file"), "{messages}");
    }
    assert_eq!(std::fs::read(&image).unwrap(), std::fs::read(balloons()).unwrap(), "the image was overwritten");
    assert_eq!(std::fs::read(&model).unwrap(), original_model, "the model was overwritten");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), r#"{"train": {"iters_per_scale": 1}}"#);
    assert_eq!(
        std::fs::read(&checkpoint).unwrap(),
        std::fs::read(reference.join("checkpoint.pth")).unwrap(),
        "the checkpoint was overwritten"
    );
    assert_eq!(std::fs::read(&earlier_sample).unwrap(), std::fs::read(balloons()).unwrap());
}

#[test]
fn resume_on_edited_image_of_same_size_fails() {
    let folder = TempDir::new().unwrap();
    let model = copy_trained_model(folder.path());
    mark_stages_unfinished(&model, 1);
    let mut edited = image::open(balloons()).unwrap().to_rgb8();
    let pixel = edited.get_pixel_mut(3, 4);
    pixel.0[0] = pixel.0[0].wrapping_add(1);
    let edited_path = folder.path().join("edited.png");
    edited.save(&edited_path).unwrap();

    let output = pegan(&["singan", "train", text(&edited_path), "--resume", "-o", text(&model)]);
    let messages = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{messages}");
    assert!(messages.contains("differ"), "{messages}");
    assert!(messages.contains("same image"), "{messages}");
    assert_eq!(metadata(&model)["finished_stages"], 1);
}

#[test]
fn config_variant_matching_flag_is_accepted() {
    let folder = TempDir::new().unwrap();
    let config = folder.path().join("config.json");
    std::fs::write(&config, r#"{"variant": "csg", "train": {"iters_per_scale": 1, "lr_milestones": []}}"#).unwrap();
    let model = folder.path().join("m.safetensors");
    pegan_ok(&[
        "singan",
        "train",
        text(&balloons()),
        "--variant",
        "csg",
        "--preset",
        "tiny",
        "--config",
        text(&config),
        "-o",
        text(&model),
    ]);
    let metadata = metadata(&model);
    assert_eq!(metadata["config"]["variant"], "csg");
    assert!(metadata["training_image_hash"].as_str().is_some_and(|h| h.starts_with("fnv1a64:")), "{metadata}");
}

#[test]
fn resumed_loss_log_has_each_iteration_once() {
    let trained = trained_model();
    let folder = TempDir::new().unwrap();
    let model = copy_trained_model(folder.path());
    let num_stages = metadata(&model)["stage_sizes"].as_array().unwrap().len();
    mark_stages_unfinished(&model, 1);

    // The log of a run interrupted in stage 1: stage 0 complete, two iterations of stage 1, and a
    // line cut short by the interruption.
    let full_log = std::fs::read_to_string(trained.folder.path().join("balloons.safetensors.losses.jsonl")).unwrap();
    let stage_0: Vec<&str> = full_log.lines().filter(|line| line.contains(r#""stage":0,"#)).collect();
    let stage_1: Vec<&str> = full_log.lines().filter(|line| line.contains(r#""stage":1,"#)).take(2).collect();
    let log = folder.path().join("copy.safetensors.losses.jsonl");
    let interrupted = format!("{}\n{}\n{{\"stage\":1,\"iter", stage_0.join("\n"), stage_1.join("\n"));
    std::fs::write(&log, interrupted).unwrap();

    pegan_ok(&["singan", "train", text(&balloons()), "--resume", "-o", text(&model)]);

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..stage_0.len()], stage_0[..], "the records of the saved stage changed");
    let reports = read_loss_log(&log);
    assert_eq!(reports.len(), num_stages * TINY_ITERS, "{text}");
    let mut seen = std::collections::HashSet::new();
    for report in &reports {
        let key = (report["stage"].as_u64().unwrap(), report["iteration"].as_u64().unwrap());
        assert!(seen.insert(key), "iteration {key:?} is logged twice: {text}");
    }
    let finished = lines.iter().filter(|line| line.contains(r#""stage_finished":true"#)).count();
    assert_eq!(finished, num_stages, "{text}");
}

#[test]
fn failed_run_leaves_no_empty_loss_log() {
    let folder = TempDir::new().unwrap();
    // A penalty weight this large makes the first discriminator loss infinite, so training stops with an
    // error at iteration 1, before anything is logged or saved.
    let config = folder.path().join("diverge.json");
    std::fs::write(&config, r#"{"train": {"gp_weight": 1e300}}"#).unwrap();
    let model = folder.path().join("m.safetensors");
    let output = pegan(&[
        "singan",
        "train",
        text(&balloons()),
        "--variant",
        "csg",
        "--preset",
        "tiny",
        "--config",
        text(&config),
        "-o",
        text(&model),
    ]);
    let messages = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{messages}");
    assert!(messages.contains("diverged"), "{messages}");
    assert!(!model.exists());
    assert!(!folder.path().join("m.safetensors.losses.jsonl").exists(), "an empty loss log was left behind");
}

#[test]
fn help_describes_loss_log_records() {
    let train = stdout(&pegan_ok(&["singan", "train", "--help"]));
    assert!(train.contains(r#""stage_finished": false"#), "{train}");
    assert!(train.contains(r#""stage_finished": true"#), "{train}");
    assert!(train.contains("resumed run"), "{train}");
}

#[cfg(unix)]
#[test]
fn closed_pipes_do_not_panic() {
    use std::process::Stdio;

    let folder = TempDir::new().unwrap();
    let missing = folder.path().join("missing.safetensors");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = Command::new(env!("CARGO_BIN_EXE_pegan"))
        .args(["singan", "sample", text(&missing), "-o", text(&folder.path().join("s"))])
        .stdout(Stdio::null())
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1), "an error written to a closed stderr");

    // --recon with -n 2 logs a warning, which goes to the closed stderr too.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = Command::new(env!("CARGO_BIN_EXE_pegan"))
        .args(["singan", "sample", text(&trained_model().model), "--recon", "-n", "2"])
        .args(["-o", text(&folder.path().join("recon"))])
        .stdout(Stdio::null())
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0), "a warning written to a closed stderr");

    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = Command::new(env!("CARGO_BIN_EXE_pegan"))
        .args(["inspect", text(&trained_model().model)])
        .stdout(writer)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0), "metadata written to a closed stdout");
}

#[test]
fn metrics_swd_compares_sample_folders() {
    let model = &trained_model().model;
    let (height, width) = trained_size(model);
    let folder = TempDir::new().unwrap();
    let sample = |name: &str, extra: &[&str]| {
        let out = folder.path().join(name);
        let mut args = vec!["singan", "sample", text(model), "-n", "3", "-o", text(&out)];
        args.extend_from_slice(extra);
        pegan_ok(&args);
        out
    };
    let first = sample("first", &["--seed", "1"]);
    let second = sample("second", &["--seed", "2"]);
    let wide = sample("wide", &["--scale-w", "2", "--scale-h", "1"]);

    let json = |args: &[&str]| -> Value {
        let mut full = vec!["metrics", "swd"];
        full.extend_from_slice(args);
        full.push("--json");
        serde_json::from_slice(&pegan_ok(&full).stdout).expect("metrics swd --json prints JSON")
    };
    let report = json(&[text(&first), text(&second)]);
    assert_eq!(report["real_images"], 3);
    assert_eq!(report["per_level"][0]["width"].as_u64(), Some(u64::from(width)));
    let average = report["average"].as_f64().expect("the average is a number");
    assert!(average.is_finite(), "{report}");
    assert!(average > 0.0, "{report}");
    assert_eq!(json(&[text(&first), text(&first)])["average"], 0.0);
    assert_eq!(json(&[text(&first), text(&second), "--max-images", "2"])["fake_images"], 2);

    let table = stdout(&pegan_ok(&["metrics", "swd", text(&first), text(&second)]));
    assert!(table.contains("SWD"), "{table}");
    assert!(table.contains("mean"), "{table}");

    let mismatch = pegan(&["metrics", "swd", text(&first), text(&wide)]);
    assert_eq!(mismatch.status.code(), Some(1));
    assert!(stderr(&mismatch).contains("--resize"), "{}", stderr(&mismatch));
    let size = format!("{width}x{height}");
    let resized = json(&[text(&first), text(&wide), "--resize", &size]);
    assert_eq!(resized["fake_images"], 3);
    assert_eq!(resized["per_level"][0]["height"].as_u64(), Some(u64::from(height)));
}

#[test]
fn train_memory_limit_and_estimate() {
    let dir = TempDir::new().unwrap();
    let model = dir.path().join("m.safetensors");
    let config = dir.path().join("one-iteration.json");
    std::fs::write(&config, r#"{"train": {"iters_per_scale": 1}}"#).unwrap();
    let train = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["singan", "train", text(&balloons()), "--variant", "csg", "--config", text(&config)]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(["-o", text(&model), "--threads", "2"].iter().map(|a| a.to_string()));
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };

    let rejected = pegan(&train(&["--memory-limit", "50"]).iter().map(String::as_str).collect::<Vec<_>>());
    let message = stderr(&rejected);
    assert_eq!(rejected.status.code(), Some(1), "{message}");
    for needle in ["training up to 128×96 px needs about", "more than the limit of 50 MiB", "data.max_size"] {
        assert!(message.contains(needle), "'{needle}' missing from: {message}");
    }
    assert!(!model.exists(), "a refused run wrote the model");
    assert!(!with_suffix_path(&model, ".losses.jsonl").exists(), "a refused run wrote the loss log");

    // The estimate covers the measured peak, and not so loosely that it refuses runs that would fit.
    let args = train(&["-v"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (log, peak_mib) = common::pegan_peak_memory(&args, &dir.path().join("stderr.txt"));
    let estimate_mib = common::logged_estimate_mib(&log);
    assert!(estimate_mib >= peak_mib, "estimate {estimate_mib} MiB is below the measured peak {peak_mib} MiB");
    assert!(estimate_mib <= 2 * peak_mib, "estimate {estimate_mib} MiB is over twice the measured peak {peak_mib} MiB");
}

/// Returns `path` with `suffix` appended to its file name.
fn with_suffix_path(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
