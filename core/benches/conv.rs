//! Times `pegan_core::ops::conv2d` and its backward pass against candle's built-in `Tensor::conv2d`
//! on the convolution shapes of SinGAN and StyleGAN2, on the CPU in f32.
//!
//! Run with `cargo bench -p pegan-core --bench conv -- [--threads N] [--runs N] [--only NAME]
//! [--pegan-only] [--per-op | --per-op-only] [--malloc-default]`. `--only` keeps the workloads whose name
//! contains NAME, `--pegan-only` skips candle's convolution, and `--per-op` adds a table of each layer's
//! conv2d, input gradient and weight gradient timed on their own (`--per-op-only` prints only that table).
//! Like the `pegan` binary, the bench keeps freed memory in the heap (`pegan_core::alloc`);
//! `--malloc-default` leaves glibc's defaults.
//!
//! The whole-workload figures are the median wall time of `--runs` repetitions after one warm-up run,
//! the per-layer figures the fastest of them. GFLOP/s counts 2·N·Cout·Cin·k²·Ho·Wo per convolution
//! for the forward pass and three times that for forward plus backward (input and weight gradients).

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use pegan_core::ops;

/// One benchmark: a stack of 3x3 convolutions applied one after another.
struct Workload {
    name: &'static str,
    batch: usize,
    height: usize,
    width: usize,
    /// Channel counts along the stack: layer i maps channels[i] to channels[i + 1].
    channels: &'static [usize],
    padding: usize,
    /// Stride-2 transposed convolutions (padding 0, kernel layout (in, out, 3, 3)) instead of stride-1 ones.
    transposed: bool,
}

const WORKLOADS: &[Workload] = &[
    // SinGAN generator block at 32 channels: head 3->32, three body layers, tail 32->3, valid
    // convolutions on an input padded by 5 pixels per side so the output is 250x188.
    Workload {
        name: "singan_block_32ch_250x188",
        batch: 1,
        height: 260,
        width: 198,
        channels: &[3, 32, 32, 32, 32, 3],
        padding: 0,
        transposed: false,
    },
    // The same block at 128 channels: the finest stage of the balloons pyramid (248x186 output), where a
    // SinGAN training run spends most of its time.
    Workload {
        name: "singan_block_128ch_248x186",
        batch: 1,
        height: 258,
        width: 196,
        channels: &[3, 128, 128, 128, 128, 3],
        padding: 0,
        transposed: false,
    },
    Workload {
        name: "conv3x3_64to64_256sq_b1",
        batch: 1,
        height: 256,
        width: 256,
        channels: &[64, 64],
        padding: 1,
        transposed: false,
    },
    Workload {
        name: "conv3x3_512to512_16sq_b4",
        batch: 4,
        height: 16,
        width: 16,
        channels: &[512, 512],
        padding: 1,
        transposed: false,
    },
    // The upsampling convolution of the baseline StyleGAN2 generator (configs a and b): 16² → 33².
    Workload {
        name: "convT3x3s2_512to512_16sq_b1",
        batch: 1,
        height: 16,
        width: 16,
        channels: &[512, 512],
        padding: 0,
        transposed: true,
    },
];

/// Convolution implementation that a run times.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Implementation {
    /// `Tensor::conv2d` and candle's own backward (conv_transpose2d for the input gradient).
    Candle,
    /// `pegan_core::ops::conv2d` and its backward.
    Pegan,
}

impl Implementation {
    fn label(self) -> &'static str {
        match self {
            Implementation::Candle => "candle",
            Implementation::Pegan => "pegan",
        }
    }
}

struct Inputs {
    x: Var,
    weights: Vec<Var>,
}

fn make_inputs(workload: &Workload) -> candle_core::Result<Inputs> {
    let device = Device::Cpu;
    let x = Var::randn(0f32, 1f32, (workload.batch, workload.channels[0], workload.height, workload.width), &device)?;
    let weights = workload
        .channels
        .windows(2)
        .map(|pair| {
            let scale = 1.0 / ((pair[0] * 9) as f32).sqrt();
            let dims = if workload.transposed { (pair[0], pair[1], 3, 3) } else { (pair[1], pair[0], 3, 3) };
            Var::randn(0f32, scale, dims, &device)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Inputs { x, weights })
}

fn forward(inputs: &Inputs, workload: &Workload, implementation: Implementation) -> pegan_core::Result<Tensor> {
    let mut h = inputs.x.as_tensor().clone();
    for w in &inputs.weights {
        h = match (implementation, workload.transposed) {
            (Implementation::Candle, false) => h.conv2d(w, workload.padding, 1, 1, 1)?,
            (Implementation::Pegan, false) => ops::conv2d(&h, w, workload.padding)?,
            (Implementation::Candle, true) => h.conv_transpose2d(w, 0, 0, 2, 1)?,
            (Implementation::Pegan, true) => ops::conv_transpose2d_stride2(&h, w)?,
        };
    }
    Ok(h)
}

/// The loss `sum(y · r)` for a constant `r`, whose gradient with respect to y is r.
///
/// Written as one op because candle's `mul` backward also computes the gradient of its constant operand
/// (a full-size product, a zero-filled accumulator and an addition). PyTorch skips that gradient for a
/// tensor that does not require gradients, so with this op both sides do the same work outside the
/// convolutions.
struct WeightedSum {
    r: Tensor,
    /// The values of `r`, read once.
    values: Vec<f32>,
}

impl WeightedSum {
    fn new(r: &Tensor) -> candle_core::Result<Arc<Box<dyn candle_core::CustomOp1 + Send + Sync>>> {
        let values = r.flatten_all()?.to_vec1::<f32>()?;
        Ok(Arc::new(Box::new(WeightedSum { r: r.clone(), values })))
    }
}

impl candle_core::CustomOp1 for WeightedSum {
    fn name(&self) -> &'static str {
        "bench-weighted-sum"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (Some((start, end)), candle_core::CpuStorage::F32(y)) = (layout.contiguous_offsets(), storage) else {
            candle_core::bail!("invalid weighted-sum input: expected a contiguous f32 tensor");
        };
        // 16 partial sums in f32 per block of 1024 values, then their sum in f64. The blocks are spread
        // over candle's CPU pool, as PyTorch's product and sum use all threads.
        let (y, r) = (&y[start..end], &self.values[..]);
        let sum = std::sync::Mutex::new(0.0f64);
        candle_core::utils::barrier_pool().execute_chunked(y.len().div_ceil(1024), |blocks| {
            let mut partial = 0.0f64;
            for block in blocks {
                let range = block * 1024..y.len().min((block + 1) * 1024);
                let mut lanes = [0.0f32; 16];
                for (y_lanes, r_lanes) in y[range.clone()].chunks(16).zip(r[range].chunks(16)) {
                    for (lane, (&y, &r)) in y_lanes.iter().zip(r_lanes).enumerate() {
                        lanes[lane] += y * r;
                    }
                }
                partial += lanes.iter().map(|&value| f64::from(value)).sum::<f64>();
            }
            *sum.lock().unwrap() += partial;
        });
        let sum = sum.into_inner().unwrap();
        Ok((candle_core::CpuStorage::F32(vec![sum as f32]), candle_core::Shape::from(())))
    }

    fn bwd(&self, _y: &Tensor, _loss: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // The loss is a scalar, so its gradient scales r. A broadcast product runs on all of candle's
        // threads, where `affine` runs on one.
        Ok(Some(self.r.broadcast_mul(grad)?))
    }
}

/// Checks that [`WeightedSum`] back-propagates the same first-layer weight gradient as `(y * r).sum_all()`.
fn check_weighted_sum(
    inputs: &Inputs,
    workload: &Workload,
    r: &Tensor,
    loss: &Arc<Box<dyn candle_core::CustomOp1 + Send + Sync>>,
) -> pegan_core::Result<()> {
    let y = forward(inputs, workload, Implementation::Pegan)?;
    let reference = (&y * r)?.sum_all()?.backward()?;
    let fused = y.apply_op1_arc(loss.clone())?.backward()?;
    let w = &inputs.weights[0];
    let (expected, actual) = (reference.get(w).expect("weight gradient"), fused.get(w).expect("weight gradient"));
    let error = (expected - actual)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = expected.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(error <= 1e-4 * scale, "the weighted sum's gradient differs from (y * r).sum(): {error} against {scale}");
    Ok(())
}

/// Runs the forward pass and back-propagates `sum(y * r)` to the input and every weight.
fn forward_backward(
    inputs: &Inputs,
    workload: &Workload,
    implementation: Implementation,
    loss: &Arc<Box<dyn candle_core::CustomOp1 + Send + Sync>>,
) -> pegan_core::Result<()> {
    let y = forward(inputs, workload, implementation)?;
    let grads = y.apply_op1_arc(loss.clone())?.backward()?;
    for w in &inputs.weights {
        assert!(grads.get(w).is_some(), "missing weight gradient");
    }
    Ok(())
}

/// Counts the multiply-adds of the forward pass, twice; a transposed convolution counts its input pixels.
fn forward_flops(workload: &Workload) -> f64 {
    let mut flops = 0.0;
    let (mut h, mut w) = (workload.height, workload.width);
    for pair in workload.channels.windows(2) {
        if workload.transposed {
            flops += 2.0 * (workload.batch * pair[0] * pair[1] * 9 * h * w) as f64;
            (h, w) = (2 * h + 1, 2 * w + 1);
            continue;
        }
        h = h + 2 * workload.padding - 2;
        w = w + 2 * workload.padding - 2;
        flops += 2.0 * (workload.batch * pair[0] * pair[1] * 9 * h * w) as f64;
    }
    flops
}

fn median_ms(runs: usize, body: impl FnMut()) -> f64 {
    sorted_ms(runs, body)[runs / 2]
}

/// Times `runs` repetitions of `body` after one warm-up run and returns the times in ms, sorted.
fn sorted_ms(runs: usize, mut body: impl FnMut()) -> Vec<f64> {
    body();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            body();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times
}

struct Options {
    threads: usize,
    runs: usize,
    only: Option<String>,
    /// Also time each layer's forward, input gradient and weight gradient on their own.
    per_op: bool,
    /// Skip the whole-workload timings (and with them candle's built-in convolution).
    per_op_only: bool,
    /// Time only pegan's convolution in the whole-workload timings, not candle's.
    pegan_only: bool,
    /// Leave glibc's allocator settings at their defaults instead of keeping freed memory in the heap.
    malloc_default: bool,
}

fn parse_options() -> Options {
    let mut options = Options {
        threads: 0,
        runs: 5,
        only: None,
        per_op: false,
        per_op_only: false,
        pegan_only: false,
        malloc_default: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--threads" => options.threads = value("--threads").parse().expect("--threads takes a count"),
            "--runs" => options.runs = value("--runs").parse().expect("--runs takes a count"),
            "--only" => options.only = Some(value("--only")),
            "--per-op" => options.per_op = true,
            "--per-op-only" => options.per_op_only = true,
            "--pegan-only" => options.pegan_only = true,
            "--malloc-default" => options.malloc_default = true,
            // `cargo bench` passes --bench; other libtest flags do not apply here.
            _ => {}
        }
    }
    options
}

fn main() -> pegan_core::Result<()> {
    // As the `pegan` binary does; `--malloc-default` measures glibc's default behaviour instead.
    let options = parse_options();
    if !options.malloc_default {
        pegan_core::alloc::retain_freed_memory();
    }
    ops::set_num_threads(options.threads);
    println!(
        "threads: {} (candle matmul uses {}), runs: {}, median ms",
        ops::num_threads(),
        candle_core::utils::get_num_threads(),
        options.runs
    );
    println!("| workload | pass | candle ms | pegan ms | speedup | candle GFLOP/s | pegan GFLOP/s |");
    println!("|---|---|---|---|---|---|---|");
    for workload in WORKLOADS {
        if options.only.as_deref().is_some_and(|only| !workload.name.contains(only)) {
            continue;
        }
        let inputs = make_inputs(workload)?;
        // The per-layer table times stride-1 convolutions only.
        if options.per_op_only && workload.transposed {
            continue;
        }
        if options.per_op_only {
            print_per_op(&inputs, workload, options.runs)?;
            continue;
        }
        let flops = forward_flops(workload);
        let y_dims = forward(&inputs, workload, Implementation::Pegan)?.dims().to_vec();
        let r = Tensor::randn(0f32, 1f32, y_dims, &Device::Cpu)?.to_dtype(DType::F32)?;
        let loss = WeightedSum::new(&r)?;
        check_weighted_sum(&inputs, workload, &r, &loss)?;

        let row = |pass: &str, pass_flops: f64, timings: [f64; 2]| {
            let [candle, pegan] = timings;
            println!(
                "| {} | {pass} | {candle:.1} | {pegan:.1} | {:.2}x | {:.0} | {:.0} |",
                workload.name,
                candle / pegan,
                pass_flops / candle / 1e6,
                pass_flops / pegan / 1e6
            );
        };

        let time = |implementation: Implementation, body: &dyn Fn(Implementation)| {
            if options.pegan_only && implementation == Implementation::Candle {
                return f64::NAN;
            }
            median_ms(options.runs, || body(implementation))
        };
        let forward_ms = [Implementation::Candle, Implementation::Pegan].map(|implementation| {
            time(implementation, &|implementation| {
                if let Err(error) = forward(&inputs, workload, implementation) {
                    panic!("{} forward failed: {error}", implementation.label());
                }
            })
        });
        row("forward", flops, forward_ms);

        let backward_ms = [Implementation::Candle, Implementation::Pegan].map(|implementation| {
            time(implementation, &|implementation| {
                if let Err(error) = forward_backward(&inputs, workload, implementation, &loss) {
                    panic!("{} forward and backward failed: {error}", implementation.label());
                }
            })
        });
        row("forward+backward", 3.0 * flops, backward_ms);

        if options.per_op && !workload.transposed {
            print_per_op(&inputs, workload, options.runs)?;
        }
    }
    Ok(())
}

/// Times `conv2d`, `conv2d_input_grad` and `conv2d_weight_grad` of every layer of `workload` on their own,
/// reporting the fastest run, which is the least disturbed by other processes.
fn print_per_op(inputs: &Inputs, workload: &Workload, runs: usize) -> pegan_core::Result<()> {
    let mut x = inputs.x.as_tensor().detach();
    for (layer, w) in inputs.weights.iter().enumerate() {
        let w = w.as_tensor().detach();
        let y = ops::conv2d(&x, &w, workload.padding)?;
        let (c_out, c_in, k, _) = w.dims4()?;
        let (n, _, h_out, w_out) = y.dims4()?;
        let flops = 2.0 * (n * c_out * c_in * k * k * h_out * w_out) as f64;
        let timings = [
            ("conv2d", sorted_ms(runs, || drop(ops::conv2d(&x, &w, workload.padding).unwrap()))[0]),
            ("input_grad", sorted_ms(runs, || drop(ops::conv2d_input_grad(&y, &w, workload.padding).unwrap()))[0]),
            ("weight_grad", sorted_ms(runs, || drop(ops::conv2d_weight_grad(&x, &y, workload.padding).unwrap()))[0]),
        ];
        for (op, ms) in timings {
            println!(
                "|   layer {layer} {c_in}->{c_out} {h_out}x{w_out} | {op} | | {ms:.2} | | | {:.0} |",
                flops / ms / 1e6
            );
        }
        x = y;
    }
    Ok(())
}
