//! The StyleGAN2 / MS-PIE discriminator and the R1 penalty against MMGeneration v0.7.3.
//!
//! Reference vectors come from the reduced config-f model in
//! `tests/data/vectors/stylegan2/mspie_config-f_small` (channel table 4:64, 8:48, 16:32, 32:24, in_size 32).
//! The deterministic-weight anchors use the fill of `common::fill` (FNV-1a seed per key, SplitMix64 stream,
//! unit-variance uniform values), and the MS-PIE ones were confirmed against MMGeneration v0.7.3. The explicit
//! backward passes are checked against candle's autograd and central finite differences in f64 on small
//! deterministic models.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use pegan_core::stylegan2::config::ChannelTable;
use pegan_core::stylegan2::discriminator::{
    blur_kernel, AdaptiveAvgPool2d, ConvDownLayer, Discriminator, DiscriminatorConfig, DiscriminatorKind,
    MinibatchStddev,
};
use pegan_core::stylegan2::fir::Fir;
use pegan_core::stylegan2::params::ParamStore;
use pegan_core::stylegan2::r1::{r1_penalty, R1_LOSS_WEIGHT};

const VECTORS: &str = "stylegan2/mspie_config-f_small";

/// Relative tolerance for discriminator scores and R1 losses: the float32 reference differs from a float64
/// recomputation by at most 1.6e-7 relative.
const SCORE_RTOL: f64 = 1e-4;

/// R1 gradient tolerance as a fraction of the largest gradient over all discriminator parameters. The
/// reference's own float32 rounding reaches about 6e-6 of that maximum on the bias gradients, which flow
/// only through the minibatch-stddev statistic.
const R1_GRAD_TOLERANCE: f64 = 6e-6;

/// Absolute tolerance of the deterministic-weight anchors (they are printed with 5 decimals).
const ANCHOR_ATOL: f64 = 1e-4;

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

fn reduced_channels(widths: &[(usize, usize)]) -> ChannelTable {
    ChannelTable { multiplier: 1, overrides: widths.iter().copied().collect::<BTreeMap<_, _>>() }
}

/// Returns the configuration of the reduced MS-PIE discriminator of the reference vectors.
fn reference_config() -> DiscriminatorConfig {
    DiscriminatorConfig {
        kind: DiscriminatorKind::MsPie,
        in_size: 32,
        channels: reduced_channels(&[(4, 64), (8, 48), (16, 32), (32, 24)]),
        mbstd_group_size: 4,
        mbstd_channel_groups: 1,
    }
}

/// Reads every tensor of the reference checkpoint's state dict, once per test process.
fn checkpoint() -> &'static HashMap<String, Tensor> {
    static TENSORS: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    TENSORS.get_or_init(|| {
        let path = common::vectors(VECTORS).join("checkpoint.pth");
        candle_core::pickle::read_all_with_key(&path, Some("state_dict"))
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
            .into_iter()
            .collect()
    })
}

/// Builds the reference discriminator with the checkpoint's `discriminator.*` weights.
fn reference_discriminator() -> (ParamStore, Discriminator) {
    let store = ParamStore::new(&Device::Cpu);
    let discriminator = Discriminator::new(reference_config(), &store.root()).unwrap();
    store.load(checkpoint(), "discriminator.", Discriminator::is_buffer_key).unwrap();
    discriminator.check_buffers(checkpoint(), "discriminator.").unwrap();
    (store, discriminator)
}

fn vector(name: &str) -> Tensor {
    common::read_npy(&common::vectors(VECTORS).join(name))
}

fn info() -> serde_json::Value {
    let path = common::vectors(VECTORS).join("info.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Fills every parameter of `store` with the deterministic values of `common::fill` (biases 0.1·v, the
/// other parameters v).
fn fill_deterministic(store: &ParamStore) {
    for (key, var) in store.vars() {
        let values = common::fill::parameter_values(&key, var.elem_count());
        let tensor = Tensor::from_vec(values, var.dims(), &Device::Cpu).unwrap().to_dtype(store.dtype()).unwrap();
        var.set(&tensor).unwrap();
    }
}

/// Builds the fill values `v(key, ·)` over `shape`, in `dtype`.
fn deterministic_input(key: &str, shape: &[usize], dtype: DType) -> Tensor {
    let count = shape.iter().product();
    Tensor::from_vec(common::fill::values(key, count), shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn to_vec_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// Builds a small discriminator in f64 with deterministic weights, for finite-difference checks.
fn tiny_discriminator(kind: DiscriminatorKind) -> (ParamStore, Discriminator) {
    let config = DiscriminatorConfig {
        kind,
        in_size: 16,
        channels: reduced_channels(&[(4, 6), (8, 5), (16, 4)]),
        mbstd_group_size: 4,
        mbstd_channel_groups: 1,
    };
    let store32 = ParamStore::new(&Device::Cpu);
    Discriminator::new(config.clone(), &store32.root()).unwrap();
    fill_deterministic(&store32);
    let store = store32.deep_copy_as(DType::F64).unwrap();
    let discriminator = Discriminator::new(config, &store.root()).unwrap();
    (store, discriminator)
}

fn set_element(var: &Var, index: usize, value: f64) {
    let mut values = to_vec_f64(var.as_tensor());
    values[index] = value;
    var.set(&Tensor::from_vec(values, var.dims(), &Device::Cpu).unwrap()).unwrap();
}

/// Computes the central difference of `f` with respect to element `index` of `var`.
fn central_difference(var: &Var, index: usize, eps: f64, f: &dyn Fn() -> f64) -> f64 {
    let original = to_vec_f64(var.as_tensor())[index];
    set_element(var, index, original + eps);
    let plus = f();
    set_element(var, index, original - eps);
    let minus = f();
    set_element(var, index, original);
    (plus - minus) / (2.0 * eps)
}

fn assert_scores_close(actual: &Tensor, expected: &Tensor, label: &str) {
    assert_eq!(actual.dims(), expected.dims(), "{label}: shape");
    for (i, (a, e)) in to_vec_f64(actual).iter().zip(to_vec_f64(expected)).enumerate() {
        assert!((a - e).abs() <= SCORE_RTOL * e.abs(), "{label}[{i}]: got {a}, expected {e}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reference checkpoint and vectors
// ---------------------------------------------------------------------------------------------------------

#[test]
fn checkpoint_loads_all_parameters() {
    let (store, discriminator) = reference_discriminator();
    let expected: Vec<String> = checkpoint()
        .keys()
        .filter_map(|k| k.strip_prefix("discriminator."))
        .filter(|k| !Discriminator::is_buffer_key(k))
        .map(str::to_string)
        .collect();
    assert_eq!(store.vars().len(), 23);
    assert_eq!(expected.len(), 23);
    for key in &expected {
        assert!(store.get(key).is_some(), "parameter {key} was not created");
    }
    assert_eq!(discriminator.kernel_keys().len(), 6);
}

#[test]
fn checkpoint_blur_kernels_equal_k() {
    let (_, discriminator) = reference_discriminator();

    // K = [1,3,3,1]ᵀ[1,3,3,1]/64, written out.
    let k = [1.0, 3.0, 3.0, 1.0];
    let expected: Vec<f64> = k.iter().flat_map(|a| k.iter().map(move |b| a * b / 64.0)).collect();
    assert_eq!(to_vec_f64(&blur_kernel(&Device::Cpu).unwrap()), expected);

    for key in discriminator.kernel_keys() {
        let stored = &checkpoint()[&format!("discriminator.{key}")];
        assert_eq!(stored.dims(), [4, 4], "{key}");
        assert_eq!(to_vec_f64(stored), expected, "{key}");
    }
}

#[test]
fn check_buffers_rejects_wrong_kernel() {
    let (_, discriminator) = reference_discriminator();

    let mut tensors = checkpoint().clone();
    let key = "discriminator.convs.2.skip.0.kernel";
    tensors.insert(key.to_string(), (&tensors[key] * 4.0).unwrap());
    let message = discriminator.check_buffers(&tensors, "discriminator.").unwrap_err().to_string();
    assert!(message.contains(key), "{message}");

    let mut tensors = checkpoint().clone();
    tensors.remove(key);
    let message = discriminator.check_buffers(&tensors, "discriminator.").unwrap_err().to_string();
    assert!(message.contains("missing"), "{message}");
    assert!(message.contains(key), "{message}");
}

#[test]
fn load_rejects_larger_model() {
    // A model with in_size 64 has one more ResBlock, whose weights the checkpoint lacks.
    let mut config = reference_config();
    config.in_size = 64;
    config.channels.overrides.insert(64, 16);
    let store = ParamStore::new(&Device::Cpu);
    Discriminator::new(config, &store.root()).unwrap();
    let message = store.load(checkpoint(), "discriminator.", Discriminator::is_buffer_key).unwrap_err().to_string();
    assert!(message.contains("discriminator."), "{message}");
}

#[test]
fn scores_match_reference() {
    let (_, discriminator) = reference_discriminator();
    for side in [32, 48, 64] {
        let x = vector(&format!("disc_in_{side}.npy"));
        let scores = discriminator.forward(&x).unwrap();
        let expected = vector(&format!("disc_out_{side}.npy"));
        println!("side {side}: max |D − ref| = {:e}", common::max_abs_diff(&scores, &expected));
        assert_scores_close(&scores, &expected, &format!("disc_out_{side}"));
    }
}

#[test]
fn scores_of_generated_batch_match_reference() {
    let (_, discriminator) = reference_discriminator();
    let scores = discriminator.forward(&vector("out_ema_cs0.npy")).unwrap();
    assert_scores_close(&scores, &vector("disc_out_on_out_ema_cs0.npy"), "disc_out_on_out_ema_cs0");
}

#[test]
fn r1_loss_matches_reference() {
    let (_, discriminator) = reference_discriminator();
    let info = info();
    assert_eq!(info["r1"]["module"]["loss_weight"].as_f64().unwrap(), R1_LOSS_WEIGHT);

    for side in [32, 48] {
        let results = &info["r1"]["results"][side.to_string()];
        let x = vector(&format!("r1_in_{side}.npy"));
        let penalty = r1_penalty(&discriminator, &x).unwrap().to_scalar::<f32>().unwrap() as f64;
        let weighted = penalty * R1_LOSS_WEIGHT;

        let expected = results["loss_unweighted"].as_f64().unwrap();
        let expected_weighted = results["loss_weighted"].as_f64().unwrap();
        println!("side {side}: R1 {penalty:e} (ref {expected:e}), relative error {:e}", (penalty / expected - 1.0));
        assert!((penalty - expected).abs() <= SCORE_RTOL * expected, "side {side}: R1 {penalty}, expected {expected}");
        assert!(
            (weighted - expected_weighted).abs() <= SCORE_RTOL * expected_weighted,
            "side {side}: weighted R1 {weighted}, expected {expected_weighted}"
        );
    }
}

/// Returns the largest difference between the weighted R1 gradients of `store`'s parameters and the
/// reference, as a fraction of the largest reference gradient over all parameters.
fn r1_gradient_error(store: &ParamStore, discriminator: &Discriminator) -> f64 {
    let reference = common::read_npz(&common::vectors(VECTORS).join("r1_grads_32.npz"));
    assert_eq!(reference.len(), 23);
    assert_eq!(store.vars().len(), 23);

    let x = vector("r1_in_32.npy").to_dtype(store.dtype()).unwrap();
    let penalty = r1_penalty(discriminator, &x).unwrap();
    let grads = (penalty * R1_LOSS_WEIGHT).unwrap().backward().unwrap();

    let largest = reference.values().map(common::max_abs).fold(0.0, f64::max);
    let mut worst = (0.0, String::new());
    for (key, expected) in &reference {
        let var = store.get(key).unwrap_or_else(|| panic!("no parameter {key}"));
        let actual = match grads.get(var.as_tensor()) {
            Some(g) => g.clone(),
            None => var.as_tensor().zeros_like().unwrap(),
        };
        let difference = common::max_abs_diff(&actual, expected);
        println!("{key}: max |ref| {:.3e}, max |g − ref| {difference:.3e}", common::max_abs(expected));
        if difference > worst.0 {
            worst = (difference, key.clone());
        }
    }
    println!("{:?}: largest gradient {largest:e}; worst {:e} in {}", store.dtype(), worst.0 / largest, worst.1);

    // The last bias does not enter ∂D/∂x, so the reference stored zeros for it.
    assert_eq!(common::max_abs(&reference["final_linear.1.bias"]), 0.0);
    worst.0 / largest
}

/// In f64 the remaining difference is the reference's own float32 rounding, which stays below
/// [`R1_GRAD_TOLERANCE`] of the largest gradient.
#[test]
fn r1_gradients_match_reference_in_f64() {
    let (store32, _) = reference_discriminator();
    let store = store32.deep_copy_as(DType::F64).unwrap();
    let discriminator = Discriminator::new(reference_config(), &store.root()).unwrap();
    let error = r1_gradient_error(&store, &discriminator);
    assert!(error <= R1_GRAD_TOLERANCE, "max |g − ref| is {error:e} of the largest gradient");
}

/// In float32 our own rounding adds to the reference's, so the bound is 1e-5 of the largest gradient.
#[test]
fn r1_gradients_match_reference_in_f32() {
    let (store, discriminator) = reference_discriminator();
    let error = r1_gradient_error(&store, &discriminator);
    assert!(error <= 1e-5, "max |g − ref| is {error:e} of the largest gradient");
}

#[test]
fn r1_first_conv_gradient_matches_reference() {
    let (store, discriminator) = reference_discriminator();
    let info = info();
    let key = "convs.1.conv1.0.conv.weight_orig";
    let var = store.get(key).unwrap();

    for side in [32, 48] {
        let penalty = r1_penalty(&discriminator, &vector(&format!("r1_in_{side}.npy"))).unwrap();
        let grads = (penalty * R1_LOSS_WEIGHT).unwrap().backward().unwrap();
        let actual = grads.get(var.as_tensor()).expect("the first ResBlock conv must get an R1 gradient");
        let expected = vector(&format!("r1_grad_{key}_{side}.npy"));

        // Weight gradients match to 5e-6 of their own maximum, and 1e-5 leaves room for float32 summation order.
        let difference = common::max_abs_diff(actual, &expected);
        let scale = common::max_abs(&expected);
        println!("side {side}: max |g − ref| {difference:e} = {:e} of max |ref|", difference / scale);
        assert!(difference <= 1e-5 * scale, "side {side}: max |g − ref| = {difference:e}, max |ref| = {scale:e}");

        let l2 = actual.to_dtype(DType::F64).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let expected_l2 = info["r1"]["results"][side.to_string()]["chosen_grad_l2"].as_f64().unwrap();
        assert!((l2.sqrt() - expected_l2).abs() <= SCORE_RTOL * expected_l2, "side {side}: L2 {}", l2.sqrt());
    }
}

// ---------------------------------------------------------------------------------------------------------
// Anchors with deterministic weights (width 512, in_size 32)
// ---------------------------------------------------------------------------------------------------------

fn anchor_scores(kind: DiscriminatorKind, side: usize) -> Vec<f64> {
    let config = DiscriminatorConfig {
        kind,
        in_size: 32,
        channels: ChannelTable::with_multiplier(2),
        mbstd_group_size: 4,
        mbstd_channel_groups: 1,
    };
    let store = ParamStore::new(&Device::Cpu);
    let discriminator = Discriminator::new(config, &store.root()).unwrap();
    fill_deterministic(&store);
    let x = deterministic_input(&format!("x{side}"), &[3, 3, side, side], DType::F32);
    to_vec_f64(&discriminator.forward(&x).unwrap())
}

fn assert_anchor(actual: &[f64], expected: &[f64], label: &str) {
    assert_eq!(actual.len(), expected.len(), "{label}");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= ANCHOR_ATOL, "{label}[{i}]: got {a}, expected {e}");
    }
}

#[test]
fn anchor_mspie_discriminator_at_32() {
    assert_anchor(&anchor_scores(DiscriminatorKind::MsPie, 32), &[0.42827, 0.39695, 0.42753], "MS-PIE D, 32 px");
}

#[test]
fn anchor_mspie_discriminator_at_48() {
    assert_anchor(&anchor_scores(DiscriminatorKind::MsPie, 48), &[0.56652, 0.58800, 0.59339], "MS-PIE D, 48 px");
}

#[test]
fn anchor_baseline_discriminator_at_32() {
    assert_anchor(&anchor_scores(DiscriminatorKind::Baseline, 32), &[0.25182, 0.26454, 0.23875], "baseline D");
}

// ---------------------------------------------------------------------------------------------------------
// Blocks against direct formulas
// ---------------------------------------------------------------------------------------------------------

/// A downsampling layer must equal the blur followed by candle's own stride-2 convolution, for even and
/// odd sides, and its input gradient must equal candle's autograd.
#[test]
fn downsampling_conv_matches_strided_conv() {
    for (kernel, pad, activate) in [(3, (2, 2), true), (1, (1, 1), false)] {
        let store = ParamStore::new(&Device::Cpu).deep_copy_as(DType::F64).unwrap();
        let layer = ConvDownLayer::new(&store.root(), 3, 5, kernel, true, activate).unwrap();
        fill_deterministic(&store);
        let weight =
            (store.get("1.conv.weight_orig").unwrap().as_tensor() / ((3 * kernel * kernel) as f64).sqrt()).unwrap();

        for (h, w) in [(8, 8), (7, 10), (2, 3)] {
            let x = deterministic_input(&format!("down{h}x{w}"), &[2, 3, h, w], DType::F64);
            let blurred = Fir::blur(pad).forward(&x).unwrap();
            let mut expected = blurred.conv2d(&weight, 0, 2, 1, 1).unwrap();
            if activate {
                let bias = store.get("2.bias").unwrap().as_tensor().reshape((1, 5, 1, 1)).unwrap();
                let pre = expected.broadcast_add(&bias).unwrap();
                expected = (pre.maximum(&(&pre * 0.2).unwrap()).unwrap() * std::f64::consts::SQRT_2).unwrap();
            }

            let input = Var::from_tensor(&x).unwrap();
            let (actual, trace) = layer.forward_traced(input.as_tensor()).unwrap();
            let difference = common::max_abs_diff(&actual, &expected);
            assert!(difference < 1e-12, "k {kernel}, {h}×{w}: forward differs by {difference:e}");

            let g = deterministic_input("down_g", actual.dims(), DType::F64);
            let explicit = layer.input_grad(&trace, &g).unwrap();
            let autograd = (actual * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let autograd = autograd.get(input.as_tensor()).unwrap();
            let difference = common::max_abs_diff(&explicit, autograd);
            assert!(difference < 1e-12, "k {kernel}, {h}×{w}: input gradient differs by {difference:e}");
        }
    }
}

/// Adaptive pooling must average the cells PyTorch's formula names, also when they overlap.
#[test]
fn adaptive_pool_matches_cell_formula() {
    let pool = AdaptiveAvgPool2d::new((2, 2)).unwrap();
    for (h, w) in [(1, 1), (3, 5), (4, 4), (6, 7)] {
        let x = deterministic_input(&format!("pool{h}x{w}"), &[2, 3, h, w], DType::F64);
        let values = to_vec_f64(&x);
        let actual = to_vec_f64(&pool.forward(&x).unwrap());

        let cell = |i: usize, len: usize| (i * len / 2, ((i + 1) * len).div_ceil(2));
        for plane in 0..6 {
            for i in 0..2 {
                for j in 0..2 {
                    let (r0, r1) = cell(i, h);
                    let (c0, c1) = cell(j, w);
                    let mut sum = 0.0;
                    for r in r0..r1 {
                        for c in c0..c1 {
                            sum += values[plane * h * w + r * w + c];
                        }
                    }
                    let expected = sum / ((r1 - r0) * (c1 - c0)) as f64;
                    let got = actual[plane * 4 + i * 2 + j];
                    assert!(
                        (got - expected).abs() < 1e-12,
                        "{h}×{w}, plane {plane}, cell ({i}, {j}): {got} vs {expected}"
                    );
                }
            }
        }

        let input = Var::from_tensor(&x).unwrap();
        let y = pool.forward(input.as_tensor()).unwrap();
        let g = deterministic_input("pool_g", y.dims(), DType::F64);
        let autograd = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let difference =
            common::max_abs_diff(&pool.input_grad(&g, (h, w)).unwrap(), autograd.get(input.as_tensor()).unwrap());
        assert!(difference < 1e-12, "{h}×{w}: input gradient differs by {difference:e}");
    }
}

/// With 8 samples and group size 4, sample n belongs to group n mod 2 (strided grouping). With two channel
/// groups, each half of the channels gets its own statistic, appended in channel-group order.
#[test]
fn minibatch_stddev_groups_strided() {
    let (n, c, h, w) = (8, 4, 2, 3);
    let x = deterministic_input("mbstd", &[n, c, h, w], DType::F64);
    let values = to_vec_f64(&x);

    for channel_groups in [1, 2] {
        let mbstd = MinibatchStddev::new(4, channel_groups).unwrap();
        let out = mbstd.forward(&x).unwrap();
        assert_eq!(out.dims(), [n, c + channel_groups, h, w]);

        // sigma[m][k]: mean over the channels of channel group k and all positions of the stddev over the 4
        // samples m, m + 2, m + 4, m + 6.
        let group_features = c / channel_groups * h * w;
        let mut sigma = vec![vec![0.0; channel_groups]; 2];
        for (m, sigma_m) in sigma.iter_mut().enumerate() {
            for (k, sigma_mk) in sigma_m.iter_mut().enumerate() {
                for feature in k * group_features..(k + 1) * group_features {
                    let members: Vec<f64> = (0..4).map(|g| values[(g * 2 + m) * c * h * w + feature]).collect();
                    let mean = members.iter().sum::<f64>() / 4.0;
                    let variance = members.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 4.0;
                    *sigma_mk += (variance + 1e-8).sqrt() / group_features as f64;
                }
            }
        }

        let out_values = to_vec_f64(&out);
        for sample in 0..n {
            for k in 0..channel_groups {
                for position in 0..h * w {
                    let got = out_values[(sample * (c + channel_groups) + c + k) * h * w + position];
                    let expected = sigma[sample % 2][k];
                    assert!((got - expected).abs() < 1e-12, "sample {sample}, channel group {k}: {got} vs {expected}");
                }
            }
        }
        let passed_through = out.narrow(1, 0, c).unwrap();
        assert_eq!(to_vec_f64(&passed_through), values, "the input channels pass through unchanged");

        // The explicit input gradient against candle's autograd.
        let input = Var::from_tensor(&x).unwrap();
        let (y, trace) = mbstd.forward_traced(input.as_tensor()).unwrap();
        let g = deterministic_input("mbstd_g", y.dims(), DType::F64);
        let autograd = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let explicit = mbstd.input_grad(&trace, &g).unwrap();
        let difference = common::max_abs_diff(&explicit, autograd.get(input.as_tensor()).unwrap());
        assert!(difference < 1e-12, "channel groups {channel_groups}: input gradient differs by {difference:e}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Explicit backward passes against autograd and finite differences
// ---------------------------------------------------------------------------------------------------------

fn check_input_grad(kind: DiscriminatorKind, shape: &[usize]) {
    let (_, discriminator) = tiny_discriminator(kind);
    let x = Var::from_tensor(&deterministic_input("fd_x", shape, DType::F64)).unwrap();
    let g = deterministic_input("fd_g", &[shape[0], 1], DType::F64);

    let (scores, trace) = discriminator.forward_traced(x.as_tensor()).unwrap();
    let explicit = discriminator.input_grad(&trace, &g).unwrap();

    // candle's first-order autograd over the whole tensor.
    let autograd = (scores * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let autograd = autograd.get(x.as_tensor()).unwrap();
    let scale = common::max_abs(autograd);
    let difference = common::max_abs_diff(&explicit, autograd);
    assert!(difference <= 1e-12 * scale.max(1.0), "{kind:?} {shape:?}: explicit vs autograd {difference:e}");

    // Central differences on a spread of elements, independent of candle's backward rules.
    let objective = || -> f64 {
        let scores = discriminator.forward(x.as_tensor()).unwrap();
        (scores * &g).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    let explicit = to_vec_f64(&explicit);
    for k in 0..24 {
        let index = (k * 7919 + 13) % explicit.len();
        let numeric = central_difference(&x, index, 1e-6, &objective);
        assert!(
            (numeric - explicit[index]).abs() <= 1e-6 * scale.max(1e-3),
            "{kind:?} {shape:?}, element {index}: finite difference {numeric}, explicit {}",
            explicit[index]
        );
    }
}

#[test]
fn input_grad_mspie_two_groups() {
    // 12×20 ends at 3×5 before pooling, so the pooled cells overlap. The 8 samples form 2 strided groups.
    check_input_grad(DiscriminatorKind::MsPie, &[8, 3, 12, 20]);
}

#[test]
fn input_grad_mspie_small_batch() {
    check_input_grad(DiscriminatorKind::MsPie, &[3, 3, 16, 16]);
}

#[test]
fn input_grad_baseline_discriminator() {
    check_input_grad(DiscriminatorKind::Baseline, &[2, 3, 16, 16]);
}

/// The R1 penalty's parameter gradients, which pass through the explicit backward pass, against central
/// differences of the penalty itself.
#[test]
fn r1_parameter_gradients_match_finite_differences() {
    let (store, discriminator) = tiny_discriminator(DiscriminatorKind::MsPie);
    let x = deterministic_input("r1_x", &[3, 3, 16, 16], DType::F64);
    let penalty = || r1_penalty(&discriminator, &x).unwrap().to_scalar::<f64>().unwrap();
    let grads = r1_penalty(&discriminator, &x).unwrap().backward().unwrap();
    let largest =
        store.vars().iter().filter_map(|(_, var)| grads.get(var.as_tensor()).map(common::max_abs)).fold(0.0, f64::max);

    // Weights on every path, and the biases in front of the minibatch-stddev layer, whose gradient flows
    // only through the stddev statistic.
    let keys = [
        "convs.0.0.conv.weight_orig",
        "convs.0.1.bias",
        "convs.1.conv1.0.conv.weight_orig",
        "convs.1.conv1.1.bias",
        "convs.1.conv2.1.conv.weight_orig",
        "convs.1.skip.1.conv.weight_orig",
        "convs.2.conv2.2.bias",
        "final_conv.0.conv.weight_orig",
        "final_linear.0.linear.weight_orig",
        "final_linear.1.linear.weight_orig",
    ];
    for key in keys {
        let var = store.get(key).unwrap();
        let analytic = to_vec_f64(grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{key} got no gradient")));
        for k in 0..4 {
            let index = (k * 104729 + 7) % analytic.len();
            let numeric = central_difference(&var, index, 1e-6, &penalty);
            assert!(
                (numeric - analytic[index]).abs() <= 1e-6 * largest,
                "{key}[{index}]: finite difference {numeric}, autograd {}",
                analytic[index]
            );
        }
    }
}

/// The bias facts of the reference: zero R1 gradient behind the stddev layer, none for the last bias, and
/// small but non-zero gradients for the biases in front of it.
#[test]
fn r1_bias_gradients_follow_stddev_path() {
    let (store, discriminator) = tiny_discriminator(DiscriminatorKind::MsPie);
    let x = deterministic_input("r1_x", &[3, 3, 16, 16], DType::F64);
    let grads = r1_penalty(&discriminator, &x).unwrap().backward().unwrap();
    let gradient_max = |key: &str| grads.get(store.get(key).unwrap().as_tensor()).map(common::max_abs);

    for key in ["final_conv.1.bias", "final_linear.0.bias"] {
        assert_eq!(gradient_max(key).unwrap_or(0.0), 0.0, "{key}");
    }
    assert_eq!(gradient_max("final_linear.1.bias"), None, "the last bias does not enter ∂D/∂x");
    for key in ["convs.0.1.bias", "convs.1.conv1.1.bias", "convs.1.conv2.2.bias", "convs.2.conv2.2.bias"] {
        assert!(gradient_max(key).unwrap_or(0.0) > 0.0, "{key} must get a gradient through the stddev layer");
    }

    // With a single sample the stddev statistic is constant (√1e-8), so those bias gradients vanish.
    let single = x.narrow(0, 0, 1).unwrap();
    let grads = r1_penalty(&discriminator, &single).unwrap().backward().unwrap();
    let max = grads.get(store.get("convs.1.conv1.1.bias").unwrap().as_tensor()).map(common::max_abs);
    assert_eq!(max.unwrap_or(0.0), 0.0);
}

// ---------------------------------------------------------------------------------------------------------
// Invalid configurations and inputs
// ---------------------------------------------------------------------------------------------------------

#[test]
fn forward_rejects_batch_of_six() {
    let (_, discriminator) = reference_discriminator();
    let x = Tensor::zeros((6, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let message = discriminator.forward(&x).unwrap_err().to_string();
    assert!(message.contains("batch of 6"), "{message}");
    assert!(message.contains("multiple of 4"), "{message}");
}

#[test]
fn forward_accepts_groupable_batches() {
    let (_, discriminator) = tiny_discriminator(DiscriminatorKind::MsPie);
    for n in [1, 2, 3, 4, 8, 12] {
        let x = Tensor::zeros((n, 3, 16, 16), DType::F64, &Device::Cpu).unwrap();
        assert_eq!(discriminator.forward(&x).unwrap().dims(), [n, 1], "batch {n}");
    }
}

#[test]
fn forward_rejects_indivisible_sides() {
    let (_, discriminator) = reference_discriminator();
    for (h, w) in [(33, 32), (32, 36), (4, 4)] {
        let x = Tensor::zeros((2, 3, h, w), DType::F32, &Device::Cpu).unwrap();
        let message = discriminator.forward(&x).unwrap_err().to_string();
        assert!(message.contains(&format!("{h}×{w}")), "{message}");
        assert!(message.contains("multiples of 8"), "{message}");
    }
}

#[test]
fn forward_accepts_non_square_multiples() {
    let (_, discriminator) = reference_discriminator();
    for (h, w) in [(8, 8), (40, 24)] {
        let x = Tensor::zeros((2, 3, h, w), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(discriminator.forward(&x).unwrap().dims(), [2, 1], "{h}×{w}");
    }
}

#[test]
fn baseline_rejects_other_sizes() {
    let (_, discriminator) = tiny_discriminator(DiscriminatorKind::Baseline);
    let x = Tensor::zeros((2, 3, 32, 32), DType::F64, &Device::Cpu).unwrap();
    let message = discriminator.forward(&x).unwrap_err().to_string();
    assert!(message.contains("only 16×16"), "{message}");
    assert!(message.contains("32×32"), "{message}");
}

#[test]
fn forward_rejects_bad_tensors() {
    let (_, discriminator) = reference_discriminator();
    let cases = [
        (Tensor::zeros((2, 4, 32, 32), DType::F32, &Device::Cpu).unwrap(), "4 channels"),
        (Tensor::zeros((3, 32, 32), DType::F32, &Device::Cpu).unwrap(), "(N, 3, H, W)"),
        (Tensor::zeros((2, 3, 32, 32), DType::F64, &Device::Cpu).unwrap(), "dtype"),
    ];
    for (x, expected) in cases {
        let message = discriminator.forward(&x).unwrap_err().to_string();
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn input_grad_rejects_wrong_gradient_shape() {
    let (_, discriminator) = reference_discriminator();
    let x = vector("disc_in_32.npy");
    let (_, trace) = discriminator.forward_traced(&x).unwrap();
    let g = Tensor::ones((3, 1), DType::F32, &Device::Cpu).unwrap();
    let message = discriminator.input_grad(&trace, &g).unwrap_err().to_string();
    assert!(message.contains("[2, 1]"), "{message}");
}

#[test]
fn config_validation_rejects_bad_values() {
    let cases: Vec<(DiscriminatorConfig, &str)> = vec![
        (DiscriminatorConfig { in_size: 48, ..DiscriminatorConfig::default() }, "in_size 48"),
        (DiscriminatorConfig { in_size: 2048, ..DiscriminatorConfig::default() }, "in_size 2048"),
        (DiscriminatorConfig { mbstd_group_size: 0, ..DiscriminatorConfig::default() }, "group size 0"),
        (DiscriminatorConfig { mbstd_channel_groups: 3, ..DiscriminatorConfig::default() }, "channel groups 3"),
        (
            DiscriminatorConfig { channels: ChannelTable::with_multiplier(0), ..DiscriminatorConfig::default() },
            "multiplier 0",
        ),
        // 512 · 2^55 overflows 64 bits, so the check must not multiply.
        (
            DiscriminatorConfig { channels: ChannelTable::with_multiplier(1 << 55), ..DiscriminatorConfig::default() },
            "multiplier 36028797018963968",
        ),
    ];
    for (config, expected) in cases {
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains(expected), "{message}");
        let store = ParamStore::new(&Device::Cpu);
        assert!(Discriminator::new(config, &store.root()).is_err());
    }
    assert!(DiscriminatorConfig::default().validate().is_ok());
}

#[test]
fn config_round_trips_through_json() {
    let config = reference_config();
    let json = serde_json::to_string(&config).unwrap();
    assert!(json.contains("\"kind\":\"mspie\""), "{json}");
    let parsed: DiscriminatorConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, config);
}

#[test]
fn parameter_counts_match_reference() {
    // Trainable parameters of MMGeneration's discriminators at in_size 256: MS-PIE c2 25,718,401, MS-PIE c1
    // 20,855,361, baseline c2 28,864,129. Building allocates zero-filled parameters only.
    for (kind, multiplier, expected) in [
        (DiscriminatorKind::MsPie, 2, 25_718_401),
        (DiscriminatorKind::MsPie, 1, 20_855_361),
        (DiscriminatorKind::Baseline, 2, 28_864_129),
    ] {
        let config = DiscriminatorConfig {
            kind,
            channels: ChannelTable::with_multiplier(multiplier),
            ..DiscriminatorConfig::default()
        };
        let store = ParamStore::new(&Device::Cpu);
        Discriminator::new(config, &store.root()).unwrap();
        assert_eq!(store.num_elements(), expected, "{kind:?} c{multiplier}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Timing: `cargo test -p pegan-core --test stylegan2_discriminator timing -- --ignored --nocapture`
// ---------------------------------------------------------------------------------------------------------

fn time_model(name: &str, store: &ParamStore, discriminator: &Discriminator, side: usize) {
    let x = deterministic_input("timing", &[4, 3, side, side], store.dtype());
    discriminator.forward(&x).unwrap();

    let repeats = 3;
    let start = Instant::now();
    for _ in 0..repeats {
        discriminator.forward(&x).unwrap();
    }
    let forward = start.elapsed().as_secs_f64() / repeats as f64;

    let start = Instant::now();
    for _ in 0..repeats {
        r1_penalty(discriminator, &x).unwrap().backward().unwrap();
    }
    let r1 = start.elapsed().as_secs_f64() / repeats as f64;
    println!("{name}, {side} px, batch 4: forward {:.1} ms, R1 with backward {:.1} ms", forward * 1e3, r1 * 1e3);
}

#[test]
#[ignore = "timing only"]
fn timing_forward_and_r1() {
    let (store, discriminator) = reference_discriminator();
    time_model("reduced test model (widths 24–64)", &store, &discriminator, 64);

    for (in_size, name) in [(64, "c2, in_size 64 (width 512)"), (256, "c2, in_size 256")] {
        let config = DiscriminatorConfig { in_size, ..DiscriminatorConfig::default() };
        let store = ParamStore::new(&Device::Cpu);
        let discriminator = Discriminator::new(config, &store.root()).unwrap();
        fill_deterministic(&store);
        time_model(name, &store, &discriminator, 64);
    }
}
