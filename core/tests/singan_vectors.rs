//! SinGAN parity with MMGeneration v0.7.3: generator outputs of the CSG and interpolation-padding
//! models, and the gradient penalty of the no-norm discriminator.

mod common;

use candle_core::{Device, Tensor};
use common::{max_abs, max_abs_diff, read_npy, read_npz, vectors};
use pegan_core::layers::NormMode;
use pegan_core::singan::generator::StageStart;
use pegan_core::singan::penalty::gradient_penalty;
use pegan_core::singan::SinGanModel;

const IMAGE_TOLERANCE: f64 = 1e-4;

fn load(folder: &str) -> SinGanModel {
    let dir = vectors(folder);
    SinGanModel::load_mmgen(&dir.join("checkpoint.pth"), &dir.join("pickle_data.pkl"), &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load {folder}: {e}"))
}

/// Stage noises `s0..s5` of an npz, in order.
fn stage_noises(path: &std::path::Path) -> Vec<Tensor> {
    let members = read_npz(path);
    (0..members.len()).map(|s| members[&format!("s{s}")].clone()).collect()
}

/// Replays noises in reconstruction mode, as the reference vectors were produced.
fn replay(model: &SinGanModel, noises: &[Tensor], mode: NormMode) -> Vec<Tensor> {
    let pad = model.config().noise_padding();
    let sizes: Vec<(usize, usize)> = noises.iter().map(|n| (n.dims()[2] - 2 * pad, n.dims()[3] - 2 * pad)).collect();
    let start = StageStart { stage: 0, previous: None };
    model
        .generator
        .forward(noises, &model.metadata.noise_weights, &sizes, &start, sizes.len() - 1, mode, None)
        .unwrap()
}

fn check_random_sample(folder: &str) {
    let model = load(folder);
    let dir = vectors(folder);
    let outputs = replay(&model, &stage_noises(&dir.join("rand_noises.npz")), NormMode::Eval);

    let stage_refs = read_npz(&dir.join("rand_prev_res.npz"));
    for stage in 0..outputs.len() - 1 {
        let diff = max_abs_diff(&outputs[stage], &stage_refs[&format!("s{stage}")]);
        assert!(diff < IMAGE_TOLERANCE, "{folder}: stage {stage} differs by {diff}");
    }
    let diff = max_abs_diff(outputs.last().unwrap(), &read_npy(&dir.join("rand_out.npy")));
    assert!(diff < IMAGE_TOLERANCE, "{folder}: final output differs by {diff}");
}

fn check_train_mode(folder: &str) {
    let model = load(folder);
    let dir = vectors(folder);
    let outputs = replay(&model, &stage_noises(&dir.join("rand_noises.npz")), NormMode::Train);
    let diff = max_abs_diff(outputs.last().unwrap(), &read_npy(&dir.join("rand_out_trainmode.npy")));
    assert!(diff < IMAGE_TOLERANCE, "{folder}: train-mode output differs by {diff}");
}

fn check_reconstruction(folder: &str) {
    let model = load(folder);
    let dir = vectors(folder);
    let outputs = replay(&model, &model.fixed_noises, NormMode::Eval);
    let diff = max_abs_diff(outputs.last().unwrap(), &read_npy(&dir.join("recon_out.npy")));
    assert!(diff < IMAGE_TOLERANCE, "{folder}: reconstruction differs by {diff}");
}

fn check_retarget(folder: &str) {
    let model = load(folder);
    let dir = vectors(folder);
    let outputs = replay(&model, &stage_noises(&dir.join("retarget_w1.5_noises.npz")), NormMode::Eval);
    let reference = read_npy(&dir.join("retarget_w1.5_out.npy"));
    assert_eq!(outputs.last().unwrap().dims(), &[1, 3, 68, 137]);
    let diff = max_abs_diff(outputs.last().unwrap(), &reference);
    assert!(diff < IMAGE_TOLERANCE, "{folder}: width-1.5 output differs by {diff}");
}

#[test]
fn csg_random_sample_matches() {
    check_random_sample("singan/csg");
}

#[test]
fn csg_train_mode_matches() {
    check_train_mode("singan/csg");
}

#[test]
fn csg_reconstruction_matches() {
    check_reconstruction("singan/csg");
}

#[test]
fn csg_retarget_matches() {
    check_retarget("singan/csg");
}

#[test]
fn interp_pad_random_sample_matches() {
    check_random_sample("singan/interp-pad_disc-nobn");
}

#[test]
fn interp_pad_train_mode_matches() {
    check_train_mode("singan/interp-pad_disc-nobn");
}

#[test]
fn interp_pad_reconstruction_matches() {
    check_reconstruction("singan/interp-pad_disc-nobn");
}

#[test]
fn interp_pad_retarget_matches() {
    check_retarget("singan/interp-pad_disc-nobn");
}

#[test]
fn gradient_penalty_matches_reference() {
    let folder = "singan/interp-pad_disc-nobn";
    let model = load(folder);
    let dir = vectors(folder);
    let critic = &model.discriminator.as_ref().expect("this checkpoint has a discriminator")[5];

    let real = read_npy(&dir.join("gp_real.npy"));
    let fake = read_npy(&dir.join("gp_fake.npy"));
    let alpha = read_npy(&dir.join("gp_alpha.npy"));

    let scores = critic.forward(&real, NormMode::Train).unwrap();
    let score_diff = max_abs_diff(&scores, &read_npy(&dir.join("disc_out_real_trainmode.npy")));
    assert!(score_diff <= 1e-4 * max_abs(&scores).max(1.0), "discriminator scores differ by {score_diff}");

    let penalty = gradient_penalty(critic, &real, &fake, &alpha).unwrap();
    let value = penalty.to_scalar::<f32>().unwrap() as f64;
    assert!((value - 0.9984277933835983).abs() < 1e-4 * 0.9984, "unweighted penalty {value}");

    let weighted = (penalty * 0.1).unwrap();
    let grads = weighted.backward().unwrap();
    let reference = read_npz(&dir.join("gp_grads_block5.npz"));
    let mut named = Vec::new();
    critic.collect_tensors("", &mut named);
    let scale = reference.values().map(max_abs).fold(0.0, f64::max);
    assert!(scale > 0.0);
    let vars = critic.trainable();
    let mut compared = 0;
    for var in &vars {
        let (name, _) = named
            .iter()
            .find(|(_, t)| t.id() == var.as_tensor().id())
            .expect("every trainable tensor is collected");
        let key = name.trim_start_matches('.');
        let expected = &reference[key];
        let actual = grads.get(var.as_tensor()).cloned().unwrap_or_else(|| expected.zeros_like().unwrap());
        let diff = max_abs_diff(&actual, expected);
        assert!(diff <= 1e-4 * scale, "gradient of {key} differs by {diff} (scale {scale})");
        compared += 1;
    }
    assert_eq!(compared, reference.len(), "every reference gradient is compared");
}
