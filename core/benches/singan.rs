//! SinGAN timings on the CPU: one training iteration (3 discriminator steps with the gradient
//! penalty, 3 generator steps) at the finest stage of the balloons pyramid, and full-pyramid
//! generation at 1× and 2× width, and the peak resident memory after training. Run with
//! `cargo bench -p pegan-core --bench singan`.
//!
//! The weights are untrained: timings do not depend on their values.

use std::time::Instant;

use candle_core::Device;
use pegan_core::image::load_image;
use pegan_core::singan::{OutputSize, Preset, SampleOptions, SinGanConfig, SinGanTrainer, Variant};

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// Returns the process's peak resident memory (`VmHWM` of `/proc/self/status`) in MiB, on Linux.
fn peak_resident_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn main() {
    // As the `pegan` binary does, unless PEGAN_BENCH_MALLOC_DEFAULT is set (see pegan_core::alloc).
    if std::env::var_os("PEGAN_BENCH_MALLOC_DEFAULT").is_none() {
        pegan_core::alloc::retain_freed_memory();
    }
    let threads: usize = std::env::var("PEGAN_BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    pegan_core::ops::conv::set_num_threads(threads);
    let variant = std::env::var("PEGAN_BENCH_VARIANT").unwrap_or_else(|_| "baseline".into());
    let variant = Variant::from_name(&variant).expect("PEGAN_BENCH_VARIANT names a variant");
    let image_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/data/balloons.png");
    let image = load_image(image_path).expect("balloons.png loads");
    let config = SinGanConfig::preset(variant, Preset::Paper).unwrap();

    let mut trainer = SinGanTrainer::new(&image, &config, 0, &Device::Cpu).unwrap();
    let finest = trainer.model().num_stages() - 1;
    let (h, w) = trainer.model().stage_sizes()[finest];
    println!("variant {}, finest stage {finest}: {w}×{h}, {threads} threads", variant.name());

    // (a) Training iterations at the finest stage; the first one warms up allocations.
    trainer.run_iterations(finest, 1).unwrap();
    let mut times = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        trainer.run_iterations(finest, 1).unwrap();
        times.push(start.elapsed().as_secs_f64());
    }
    println!("training iteration (3 D + 3 G steps, gradient penalty): median {:.3} s", median(times));
    match peak_resident_mib() {
        Some(mib) => println!("peak resident memory after training: {mib} MiB"),
        None => println!("peak resident memory after training: not available (no /proc/self/status)"),
    }

    // (b) Generation through the whole pyramid.
    let mut model = trainer.into_model();
    model.metadata.finished_stages = model.num_stages();
    for factor in [1.0, 2.0] {
        let options =
            SampleOptions { size: OutputSize::Factors { width: factor, height: 1.0 }, ..SampleOptions::default() };
        model.sample(&options, 0).unwrap();
        let mut times = Vec::new();
        for index in 0..5 {
            let start = Instant::now();
            model.sample(&options, index).unwrap();
            times.push(start.elapsed().as_secs_f64());
        }
        println!("generation at {factor}× width: median {:.3} s", median(times));
    }
}
