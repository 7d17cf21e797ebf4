//! StyleGAN2 timing on the CPU: the config-f (channel multiplier 2, MS-PIE) generator forward pass at
//! 256×256, batch 1: mapping and synthesis with noise maps made beforehand, no gradients. Run with
//! `cargo bench -p pegan-core --bench stylegan2`; `bench/run_stylegan2.sh` runs it beside PyTorch.
//!
//! The weights are seeded, not trained: timings do not depend on their values. Threads come from
//! `PEGAN_BENCH_THREADS` (default 2), runs from `PEGAN_BENCH_RUNS` (default 5, after one warm-up run).

use std::time::Instant;

use candle_core::{Device, Tensor};
use pegan_core::rng::SeededRng;
use pegan_core::stylegan2::generator::Noise;
use pegan_core::stylegan2::head::ChosenScale;
use pegan_core::stylegan2::mapping::broadcast_style;
use pegan_core::stylegan2::model::StyleGan2Model;
use pegan_core::stylegan2::preset::StyleGan2Config;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn main() -> pegan_core::Result<()> {
    // As the `pegan` binary does, unless PEGAN_BENCH_MALLOC_DEFAULT is set (see pegan_core::alloc).
    if std::env::var_os("PEGAN_BENCH_MALLOC_DEFAULT").is_none() {
        pegan_core::alloc::retain_freed_memory();
    }
    let threads = env_count("PEGAN_BENCH_THREADS", 2);
    let runs = env_count("PEGAN_BENCH_RUNS", 5).max(1);
    pegan_core::ops::set_num_threads(threads);

    let device = Device::Cpu;
    let config = StyleGan2Config::preset("config-f")?;
    let model = StyleGan2Model::new(&config, 0, &device)?;
    let generator = &model.generator;
    let scale = ChosenScale::default();
    let (height, width) = generator.output_size(scale)?;
    let noises = generator
        .noise_shapes(scale)?
        .iter()
        .map(|&(h, w)| Tensor::randn(0f32, 1.0, (1, 1, h, w), &device))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let z = SeededRng::new(0).normal(&[1, generator.style_channels()], 0.0, 1.0, &device)?;
    let forward = || -> pegan_core::Result<Tensor> {
        let w = generator.map(&z)?;
        let latent = broadcast_style(&w, generator.num_latents())?;
        generator.synthesize(&latent, scale, Noise::Explicit(&noises))
    };

    forward()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        forward()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "config-f generator forward, {width}x{height}, batch 1, {threads} threads: median {:.1} ms, fastest {:.1} ms",
        times[runs / 2],
        times[0]
    );
    Ok(())
}
