//! Prints the stage sizes of a preset on an image and the time of a few training iterations per stage.
//! Usage: cargo run --release -p pegan-core --example stage_timing -- IMAGE VARIANT PRESET [ITERATIONS]

use std::time::Instant;

use candle_core::Device;
use pegan_core::image::load_image;
use pegan_core::singan::{Preset, SinGanConfig, SinGanTrainer, Variant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err("usage: stage_timing IMAGE VARIANT PRESET [ITERATIONS]".into());
    }
    let image = load_image(&args[1])?;
    let config = SinGanConfig::preset(Variant::from_name(&args[2])?, Preset::from_name(&args[3])?)?;
    let iterations: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let mut trainer = SinGanTrainer::new(&image, &config, 0, &Device::Cpu)?;
    let sizes = trainer.model().stage_sizes();
    let mut total = 0.0;
    for (stage, (h, w)) in sizes.iter().enumerate() {
        let start = Instant::now();
        trainer.run_iterations(stage, iterations)?;
        let per_iteration = start.elapsed().as_secs_f64() / iterations as f64;
        total += per_iteration * config.train.iters_per_scale as f64;
        println!("stage {stage}: {w}×{h}, {:.3} s per iteration", per_iteration);
    }
    println!("estimated training time: {:.0} s for {} iterations per stage", total, config.train.iters_per_scale);
    Ok(())
}
