//! End-to-end tests of `pegan stylegan2`: training the tiny preset, sampling, interpolation, conversion of
//! an MMGeneration checkpoint and rejection of bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

mod common;

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

fn faces() -> PathBuf {
    repo_file("examples/data/twemoji-faces-64")
}

fn reference_checkpoint() -> PathBuf {
    repo_file("tests/data/vectors/stylegan2/mspie_config-f_small/checkpoint.pth")
}

fn text(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn pegan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pegan")).args(args).output().expect("the pegan binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn pegan_ok(args: &[&str]) -> Output {
    let output = pegan(args);
    assert!(output.status.success(), "pegan {args:?} failed with {}: {}", output.status, stderr(&output));
    output
}

/// Fails unless `pegan args` exits with status 1 and one `error:` line that contains every `needle`.
fn pegan_fails(args: &[&str], needles: &[&str]) {
    let output = pegan(args);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "pegan {args:?}: {message}");
    assert!(message.starts_with("error: "), "{message}");
    for needle in needles {
        assert!(message.contains(needle), "pegan {args:?}: '{needle}' missing from: {message}");
    }
}

fn png_size(path: &Path) -> (u32, u32) {
    image::image_dimensions(path).unwrap_or_else(|e| panic!("{} is not a readable PNG: {e}", path.display()))
}

#[test]
fn train_writes_model_log_and_grids() {
    let dir = TempDir::new().unwrap();
    let model = dir.path().join("faces.pegan");
    let log = dir.path().join("loss.jsonl");
    let data = faces();
    let args = [
        "stylegan2",
        "train",
        text(&data),
        "--preset",
        "tiny",
        "--iters",
        "4",
        "--sample-every",
        "2",
        "--loss-log",
        text(&log),
        "--threads",
        "1",
        "-o",
        text(&model),
    ];
    pegan_ok(&args);

    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[3]["iteration"], 4);
    assert!(lines[0]["r1"].is_number(), "R1 runs at the first iteration: {}", lines[0]);
    let grid = dir.path().join("faces-samples/iter_0000004.png");
    assert_eq!(png_size(&grid), (128, 128), "a 4 × 4 grid of 32 px samples");

    // Resuming continues the iteration count and appends to the log.
    let log_path = text(&log);
    let model_path = text(&model);
    let resume = [
        "stylegan2",
        "train",
        text(&data),
        "--iters",
        "6",
        "--sample-every",
        "2",
        "--loss-log",
        log_path,
        "--threads",
        "1",
        "-o",
        model_path,
        "--resume",
    ];
    pegan_ok(&resume);
    let count = std::fs::read_to_string(&log).unwrap().lines().count();
    assert_eq!(count, 6);

    // Asking for no more iterations than done is an error that names how to continue.
    pegan_fails(&resume, &["already trained 6 iterations", "--iters"]);

    // A resumed model keeps its stored preset.
    let mut with_preset = resume.to_vec();
    with_preset[4] = "8";
    with_preset.extend(["--preset", "tiny"]);
    pegan_fails(&with_preset, &["--preset cannot change a model being resumed"]);

    // Without --resume an existing model is never replaced.
    pegan_fails(&args, &["already exists", "--resume"]);

    // Resuming on the same folder prints no warning, and resuming on another folder warns and continues.
    let same = stderr(&pegan_ok(&resume_with_iters(&resume, "7")));
    assert!(!same.contains("warning"), "{same}");
    let other_folder = dir.path().join("other-faces");
    std::fs::create_dir(&other_folder).unwrap();
    let mut images: Vec<PathBuf> = std::fs::read_dir(data.join("rgb")).unwrap().map(|e| e.unwrap().path()).collect();
    images.sort();
    for image in &images[..5] {
        std::fs::copy(image, other_folder.join(image.file_name().unwrap())).unwrap();
    }
    let mut on_other = resume_with_iters(&resume, "8");
    on_other[2] = text(&other_folder);
    let other = stderr(&pegan_ok(&on_other));
    assert!(other.contains("warning"), "{other}");
    assert!(other.contains("(5 images)"), "{other}");
}

#[test]
fn samples_inside_data_are_rejected() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut images: Vec<PathBuf> = std::fs::read_dir(faces().join("rgb")).unwrap().map(|e| e.unwrap().path()).collect();
    images.sort();
    for image in &images[..4] {
        std::fs::copy(image, data.join(image.file_name().unwrap())).unwrap();
    }
    let model = data.join("model.pegan");
    let args = ["stylegan2", "train", text(&data), "--preset", "tiny", "--iters", "1", "-o", text(&model)];
    pegan_fails(&args, &["inside the training folder", "--samples-dir"]);
    assert!(!data.join("model-samples").exists());

    // Without grids, a model file inside the folder is fine: it is not an image.
    let mut no_grids = args.to_vec();
    no_grids.extend(["--sample-every", "0", "--threads", "1"]);
    pegan_ok(&no_grids);
}

#[test]
fn train_checks_sizes_and_memory_before_writing() {
    let dir = TempDir::new().unwrap();
    let model = dir.path().join("m.pegan");
    let data = faces();

    // A baseline discriminator scores only in_size × in_size: scale 2 (48 px) is refused before iteration 1.
    let baseline = dir.path().join("baseline.json");
    std::fs::write(&baseline, r#"{"discriminator": {"kind": "baseline"}}"#).unwrap();
    let args = ["stylegan2", "train", text(&data), "--preset", "tiny", "--config", text(&baseline), "-o", text(&model)];
    pegan_fails(&args, &["training scale 2 makes 48×48 px images", "set discriminator.in_size to 48"]);

    // The tiny preset needs several hundred MiB; a 100 MiB limit refuses it with both figures.
    let args = ["stylegan2", "train", text(&data), "--preset", "tiny", "--memory-limit", "100", "-o", text(&model)];
    pegan_fails(
        &args,
        &["64×64 px with batch size 4 needs about", "the limit of 100 MiB", "lower training.batch_size"],
    );

    // The environment variable sets the same limit for every host.
    let args = ["stylegan2", "train", text(&data), "--preset", "tiny", "-o", text(&model)];
    let output =
        Command::new(env!("CARGO_BIN_EXE_pegan")).args(args).env("PEGAN_MEMORY_LIMIT_MIB", "100").output().unwrap();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(message.contains("more than the limit of 100 MiB"), "{message}");

    assert!(!model.exists(), "a refused run wrote the model");
    assert!(!dir.path().join("m-samples").exists(), "a refused run created the samples folder");
}

#[test]
fn training_memory_estimate_covers_the_measured_peak() {
    let dir = TempDir::new().unwrap();
    let data = faces();
    // Chosen scale 4 alone is the tiny preset's largest side (64 px); iteration 1 runs R1 and path length.
    let config = dir.path().join("c.json");
    let training = r#"{"training": {"multi_input_scales": [4], "multi_scale_probability": null}}"#;
    std::fs::write(&config, training).unwrap();
    let model = dir.path().join("m.pegan");
    let args = [
        "stylegan2",
        "train",
        text(&data),
        "--preset",
        "tiny",
        "--config",
        text(&config),
        "-o",
        text(&model),
        "--iters",
        "2",
        "--sample-every",
        "0",
        "--threads",
        "2",
        "-v",
    ];
    let (stderr, peak_mib) = common::pegan_peak_memory(&args, &dir.path().join("stderr.txt"));
    let estimate_mib = common::logged_estimate_mib(&stderr);

    // The estimate must cover the peak, and not so loosely that it refuses runs that would fit.
    assert!(estimate_mib >= peak_mib, "estimate {estimate_mib} MiB is below the measured peak {peak_mib} MiB");
    assert!(estimate_mib <= 2 * peak_mib, "estimate {estimate_mib} MiB is over twice the measured peak {peak_mib} MiB");
}

#[test]
fn grid_memory_flat_across_seeds() {
    let dir = TempDir::new().unwrap();
    let model = dir.path().join("m.pegan");
    let data = faces();
    pegan_ok(&[
        "stylegan2",
        "train",
        text(&data),
        "--preset",
        "tiny",
        "--iters",
        "1",
        "--sample-every",
        "0",
        "-o",
        text(&model),
    ]);

    // 352×352 px images: each one's feature maps take about 150 MiB, the image itself 1.5 MiB.
    let grid = |seeds: &str, name: &str| {
        let out = dir.path().join(format!("{name}.png"));
        let args = ["stylegan2", "sample", text(&model), "--scale", "40", "--seeds", seeds, "--grid", "-o", text(&out)];
        common::pegan_peak_memory(&args, &dir.path().join(format!("{name}.txt"))).1
    };
    let one = grid("0", "one");
    let eight = grid("0-7", "eight");
    assert!(eight < one + 64, "a grid of 8 seeds peaked at {eight} MiB, one seed at {one} MiB");
}

/// Returns the resume command with another --iters value.
fn resume_with_iters<'a>(resume: &[&'a str], iters: &'a str) -> Vec<&'a str> {
    let mut args = resume.to_vec();
    args[4] = iters;
    args
}

#[test]
fn sample_sizes_grids_and_mixing() {
    let dir = TempDir::new().unwrap();
    let checkpoint = reference_checkpoint();
    let ckpt = text(&checkpoint);

    let grid = dir.path().join("grid.png");
    pegan_ok(&["stylegan2", "sample", ckpt, "--seeds", "0-5", "--grid", "-o", text(&grid)]);
    assert_eq!(png_size(&grid), (96, 64), "3 columns × 2 rows of 32 px");

    let wide = dir.path().join("wide.png");
    pegan_ok(&[
        "stylegan2",
        "sample",
        ckpt,
        "--seeds",
        "3",
        "--size",
        "64x48",
        "--truncation",
        "0.7",
        "-o",
        text(&wide),
    ]);
    assert_eq!(png_size(&wide), (64, 48));

    let mixed = dir.path().join("mixed.png");
    pegan_ok(&["stylegan2", "sample", ckpt, "--seeds", "3", "--mix-seed", "9", "--mix-at", "4", "-o", text(&mixed)]);
    assert_ne!(std::fs::read(&mixed).unwrap(), std::fs::read(dir.path().join("grid.png")).unwrap());

    let folder = dir.path().join("each");
    pegan_ok(&["stylegan2", "sample", ckpt, "--seeds", "1,4,7-8", "--scale", "2", "-o", text(&folder)]);
    for seed in [1, 4, 7, 8] {
        assert_eq!(png_size(&folder.join(format!("seed{seed:05}.png"))), (48, 48));
    }
}

#[test]
fn sample_rejects_bad_requests() {
    let dir = TempDir::new().unwrap();
    let checkpoint = reference_checkpoint();
    let ckpt = text(&checkpoint);
    let out = dir.path().join("x.png");
    let out = text(&out);

    pegan_fails(&["stylegan2", "sample", ckpt, "--size", "50", "-o", out], &["50", "48"]);
    pegan_fails(&["stylegan2", "sample", ckpt, "--seeds", "9-3", "-o", out], &["9-3", "3-9"]);
    pegan_fails(&["stylegan2", "sample", ckpt, "--seeds", "x", "-o", out], &["'x'"]);
    pegan_fails(&["stylegan2", "sample", ckpt, "--seeds", "0-", "-o", out], &["'0-'", "lacks a seed", "A-B"]);
    let folder = dir.path().join("seeds");
    pegan_fails(
        &["stylegan2", "sample", ckpt, "--seeds", "2,1-3", "-o", text(&folder)],
        &["seed 2 appears more than once"],
    );
    assert!(!folder.exists(), "a refused call created the output folder");
    pegan_fails(&["stylegan2", "sample", ckpt, "--truncation", "1.5", "-o", out], &["1.5"]);
    pegan_fails(
        &["stylegan2", "sample", ckpt, "--seeds", "1", "--mix-seed", "2", "--mix-at", "8", "-o", out],
        &["1..=7"],
    );
    pegan_fails(&["stylegan2", "sample", ckpt, "--size", "48", "--noise", "fixed", "-o", out], &["fixed noise"]);
    pegan_fails(&["stylegan2", "sample", ckpt, "--seeds", "0-3", "-o", out], &["--grid"]);
    pegan_fails(&["stylegan2", "sample", ckpt, "-o", ckpt], &["input"]);
    pegan_fails(
        &["stylegan2", "sample", ckpt, "--size", "544", "--seeds", "0-4095", "--grid", "-o", out],
        &["4096 images", "too large"],
    );

    let output = pegan(&["stylegan2", "sample", ckpt, "--threads", "5000", "-o", out]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("5000 threads is too many"), "{}", stderr(&output));

    let singan_like = dir.path().join("not-a-model.pegan");
    std::fs::write(&singan_like, b"not a model").unwrap();
    pegan_fails(&["stylegan2", "sample", text(&singan_like), "-o", out], &["not-a-model.pegan"]);
}

#[test]
fn interpolate_and_convert() {
    let dir = TempDir::new().unwrap();
    let checkpoint = reference_checkpoint();

    let frames = dir.path().join("frames");
    pegan_ok(&["stylegan2", "interpolate", text(&checkpoint), "--seeds", "0,5,9", "--steps", "3", "-o", text(&frames)]);
    let count = std::fs::read_dir(&frames).unwrap().count();
    assert_eq!(count, 7, "two segments of 3 steps plus the last seed");

    let converted = dir.path().join("config-f-small.pegan");
    pegan_ok(&["stylegan2", "convert", text(&checkpoint), "-o", text(&converted)]);
    let a = dir.path().join("a.png");
    let b = dir.path().join("b.png");
    pegan_ok(&["stylegan2", "sample", text(&checkpoint), "--seeds", "4", "-o", text(&a)]);
    pegan_ok(&["stylegan2", "sample", text(&converted), "--seeds", "4", "-o", text(&b)]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "converted model samples differently");

    // A pegan file needs no conversion, and the message states that instead of blaming the zip format.
    let again = dir.path().join("again.pegan");
    pegan_fails(&["stylegan2", "convert", text(&converted), "-o", text(&again)], &["needs no conversion"]);
}

#[test]
fn inspect_and_top_level_convert() {
    let dir = TempDir::new().unwrap();
    let checkpoint = reference_checkpoint();
    let output = pegan_ok(&["inspect", text(&checkpoint)]);
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(report.contains("\"kind\": \"stylegan2\""), "{report}");
    assert!(report.contains("SPE (dim 32) head"), "{report}");
    assert!(report.contains("training sides: 32, 48, 64 px"), "{report}");

    let converted = dir.path().join("converted.pegan");
    pegan_ok(&["convert", text(&checkpoint), "-o", text(&converted)]);
    let output = pegan_ok(&["inspect", "--json", text(&converted)]);
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(metadata["source"], "mmgeneration");
}
