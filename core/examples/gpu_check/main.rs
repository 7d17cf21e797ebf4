//! GPU check: compares a target device (a CUDA GPU) with a reference device (the CPU) on SinGAN and
//! StyleGAN2 work, runs short training runs with the gradient penalties, times the target, and writes
//! `report.json` and `report.md`.
//!
//! ```sh
//! # on a GPU machine, from a build of scripts/build-cuda.sh (scripts/gpu-check.sh runs this)
//! gpu_check --device cuda:0 --reference cpu --out report/
//! # anywhere, CPU against CPU with tiny models, as CI runs it
//! cargo run --release -p pegan-core --example gpu_check -- --device cpu --smoke --out /tmp/gpu-check
//! # only open a device and print the outcome, e.g. to see the error for a missing driver
//! gpu_check --probe-device cuda:0
//! ```
//!
//! The exit status is 0 when every parity check passed, every loss stayed finite and no section
//! failed, 1 otherwise, and 2 for invalid arguments.

mod check;

use std::path::PathBuf;
use std::process::ExitCode;

use check::{run, CheckOptions};

const USAGE: &str = "usage: gpu_check [--device SPEC] [--reference SPEC] [--out DIR] [--image PNG] [--smoke] \
[--no-timings] [--runs N] [--seed N] [--threads N]
       gpu_check --probe-device SPEC

  --device SPEC        device to check, e.g. cuda:0 (default cuda:0)
  --reference SPEC     device to compare against (default cpu)
  --out DIR            folder for report.json and report.md (default gpu-check-report)
  --image PNG          SinGAN training image (default examples/data/balloons.png)
  --smoke              tiny models and sizes, a few seconds on a CPU
  --no-timings         skip the timings
  --runs N             timed runs per timing, after one warm-up run (default 5)
  --seed N             seed of every model and noise map (default 0)
  --threads N          CPU threads of the reference device (default: one per core)
  --probe-device SPEC  open SPEC, print the device or the error, and exit";

struct Arguments {
    device: String,
    reference: String,
    out: PathBuf,
    image: PathBuf,
    smoke: bool,
    timings: bool,
    runs: usize,
    seed: u64,
    threads: Option<usize>,
    probe: Option<String>,
}

fn parse_arguments() -> Result<Arguments, String> {
    let mut arguments = Arguments {
        device: "cuda:0".into(),
        reference: "cpu".into(),
        out: PathBuf::from("gpu-check-report"),
        image: PathBuf::from("examples/data/balloons.png"),
        smoke: false,
        timings: true,
        runs: 5,
        seed: 0,
        threads: None,
        probe: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--device" => arguments.device = value("--device")?,
            "--reference" => arguments.reference = value("--reference")?,
            "--out" => arguments.out = value("--out")?.into(),
            "--image" => arguments.image = value("--image")?.into(),
            "--smoke" => arguments.smoke = true,
            "--no-timings" => arguments.timings = false,
            "--runs" => {
                let text = value("--runs")?;
                arguments.runs = text.parse().map_err(|_| format!("invalid --runs '{text}': give a whole number"))?;
            }
            "--seed" => {
                let text = value("--seed")?;
                arguments.seed = text.parse().map_err(|_| format!("invalid --seed '{text}': give a whole number"))?;
            }
            "--threads" => {
                let text = value("--threads")?;
                let threads = text.parse().map_err(|_| format!("invalid --threads '{text}': give a whole number"))?;
                arguments.threads = Some(threads);
            }
            "--probe-device" => arguments.probe = Some(value("--probe-device")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(arguments)
}

fn main() -> ExitCode {
    let arguments = match parse_arguments() {
        Ok(arguments) => arguments,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("gpu_check: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    if let Some(spec) = &arguments.probe {
        return match pegan_core::device::parse_device(spec) {
            Ok(device) => {
                println!("opened {}", check::device_name(&device));
                ExitCode::SUCCESS
            }
            Err(error) => {
                println!("error: {error}");
                ExitCode::FAILURE
            }
        };
    }

    if let Some(threads) = arguments.threads {
        pegan_core::ops::conv::set_num_threads(threads);
    }
    let open = |spec: &str| pegan_core::device::parse_device(spec).map_err(|error| eprintln!("gpu_check: {error}"));
    let (Ok(target), Ok(reference)) = (open(&arguments.device), open(&arguments.reference)) else {
        return ExitCode::FAILURE;
    };

    // The StyleGAN2 training images go to a temporary folder, so that the report folder holds only the report.
    let work_dir = match tempfile::tempdir() {
        Ok(folder) => folder,
        Err(error) => {
            eprintln!("gpu_check: cannot create a temporary folder: {error}");
            return ExitCode::FAILURE;
        }
    };
    let options = CheckOptions {
        smoke: arguments.smoke,
        timings: arguments.timings,
        timing_runs: arguments.runs,
        image: arguments.image,
        work_dir: work_dir.path().to_path_buf(),
        seed: arguments.seed,
    };
    let report = run(&options, &target, &reference);
    if let Err(error) = report.write(&arguments.out) {
        eprintln!("gpu_check: {error}");
        return ExitCode::FAILURE;
    }
    println!("{}", report.to_markdown());
    println!("wrote {}", arguments.out.join("report.json").display());
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
