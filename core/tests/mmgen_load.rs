//! Loads the two reference MMGeneration SinGAN checkpoints and checks the inferred configuration,
//! the tensors and the fixed noises, then feeds mismatched, truncated and corrupt files.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use pegan_core::encoding::EncodingConfig;
use pegan_core::singan::config::ModelType;
use pegan_core::singan::mmgen::{load_mmgen_singan, MmgenSinGan};
use pegan_core::singan::Variant;

fn model_dir(model: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/vectors/singan").join(model)
}

fn load(model: &str) -> MmgenSinGan {
    let dir = model_dir(model);
    load_mmgen_singan(&dir.join("checkpoint.pth"), &dir.join("pickle_data.pkl"))
        .unwrap_or_else(|e| panic!("{model}: {e}"))
}

fn error_text(pth: &Path, pkl: &Path) -> String {
    match load_mmgen_singan(pth, pkl) {
        Ok(_) => panic!("loading {} with {} should fail", pth.display(), pkl.display()),
        Err(e) => e.to_string(),
    }
}

/// `(key, shape)` rows of `state_dict_keys.txt`.
fn listed_keys(model: &str) -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(model_dir(model).join("state_dict_keys.txt")).unwrap();
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.split('\t');
            let key = fields.next().unwrap().to_string();
            let shape = fields.next().unwrap().trim_matches(|c| c == '[' || c == ']');
            let shape = shape.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
            (key, shape)
        })
        .collect()
}

fn check_weights_match_listing(model: &str, loaded: &MmgenSinGan) {
    let kept: Vec<_> = listed_keys(model)
        .into_iter()
        .filter(|(key, _)| !key.ends_with("num_batches_tracked") && !key.ends_with("_float_tensor"))
        .collect();
    assert_eq!(loaded.weights.len(), kept.len(), "{model}: weight count");
    for (key, shape) in kept {
        let tensor = loaded.weights.get(&key).unwrap_or_else(|| panic!("{model}: missing {key}"));
        assert_eq!(tensor.dims(), shape.as_slice(), "{model}: shape of {key}");
        assert_eq!(tensor.dtype(), DType::F32, "{model}: dtype of {key}");
    }
}

fn check_fixed_noises_match_npz(model: &str, loaded: &MmgenSinGan) {
    let npz = Tensor::read_npz(model_dir(model).join("fixed_noises.npz")).unwrap();
    assert_eq!(loaded.fixed_noises.len(), npz.len(), "{model}: fixed noise count");
    for (name, expected) in npz {
        let stage: usize = name.trim_start_matches('s').parse().unwrap();
        let actual = &loaded.fixed_noises[stage];
        assert_eq!(actual.dims(), expected.dims(), "{model} {name}: shape");
        let diff = (actual - &expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "{model} {name}: values");
    }
}

#[test]
fn csg_checkpoint_loads() {
    let loaded = load("csg");
    let config = &loaded.config;
    assert_eq!(config.variant, Variant::Csg);
    assert_eq!(config.generator.positional_encoding, Some(EncodingConfig::Csg));
    assert_eq!(config.generator.padding, 1);
    assert!(!config.generator.pad_at_head);
    assert!(!config.generator.interp_pad);
    assert!(!config.train.fixed_noise_with_pad);
    assert_eq!(config.model_type, ModelType::PeSinGan);
    assert_eq!(config.generator.first_stage_in_channels, 2);
    assert_eq!(config.train.first_fixed_noises_ch, 2);
    assert_eq!(config.generator.base_channels, 32);
    assert_eq!(loaded.num_scales, 5);
    assert_eq!(loaded.fixed_noises.len(), 6);
    assert!(!loaded.has_discriminator);
    assert_eq!(loaded.noise_weights, vec![1.0, 0.09, 0.08, 0.07, 0.06, 0.05]);
    check_weights_match_listing("csg", &loaded);
    check_fixed_noises_match_npz("csg", &loaded);
}

#[test]
fn interp_pad_nobn_checkpoint_loads() {
    let loaded = load("interp-pad_disc-nobn");
    let config = &loaded.config;
    assert_eq!(config.variant, Variant::InterpPadNobn);
    assert_eq!(config.generator.positional_encoding, None);
    assert_eq!(config.generator.padding, 0);
    assert!(config.generator.pad_at_head);
    assert!(config.generator.interp_pad);
    assert!(config.generator.noise_with_pad);
    assert!(config.train.fixed_noise_with_pad);
    assert_eq!(config.model_type, ModelType::PeSinGan);
    assert_eq!(config.generator.first_stage_in_channels, 3);
    assert_eq!(config.train.first_fixed_noises_ch, 1);
    assert!(loaded.has_discriminator);
    assert!(!config.discriminator.batch_norm);
    assert_eq!(config.discriminator.base_channels, 32);
    assert_eq!(loaded.num_scales, 5);
    assert_eq!(loaded.fixed_noises[0].dims(), &[1, 1, 35, 43]);
    check_weights_match_listing("interp-pad_disc-nobn", &loaded);
    check_fixed_noises_match_npz("interp-pad_disc-nobn", &loaded);
}

#[test]
fn truncated_pth_is_error() {
    let source = std::fs::read(model_dir("csg").join("checkpoint.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pkl = model_dir("csg").join("pickle_data.pkl");
    for length in [0, 100, source.len() / 2, source.len() - 30] {
        let pth = dir.path().join(format!("truncated_{length}.pth"));
        std::fs::write(&pth, &source[..length]).unwrap();
        let message = error_text(&pth, &pkl);
        assert!(message.contains("truncated"), "{length} bytes: {message}");
    }
}

#[test]
fn corrupt_pth_data_is_error() {
    // Flipping bytes in the middle of the file changes stored tensor data, which the zip CRC catches.
    let mut bytes = std::fs::read(model_dir("csg").join("checkpoint.pth")).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 16] {
        *byte ^= 0x5a;
    }
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("corrupt.pth");
    std::fs::write(&pth, &bytes).unwrap();
    let message = error_text(&pth, &model_dir("csg").join("pickle_data.pkl"));
    assert!(message.contains("corrupt") || message.contains("checksum") || message.contains("CRC"), "{message}");
}

#[test]
fn garbage_pkl_is_error() {
    let dir = tempfile::tempdir().unwrap();
    let pkl = dir.path().join("garbage.pkl");
    std::fs::write(&pkl, b"this is not a pickle file at all").unwrap();
    let message = error_text(&model_dir("csg").join("checkpoint.pth"), &pkl);
    assert!(message.contains("garbage.pkl"), "{message}");
}

#[test]
fn missing_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let pkl = model_dir("csg").join("pickle_data.pkl");
    let message = error_text(&dir.path().join("absent.pth"), &pkl);
    assert!(message.contains("absent.pth"), "{message}");
    let message = error_text(&model_dir("csg").join("checkpoint.pth"), &dir.path().join("absent.pkl"));
    assert!(message.contains("absent.pkl"), "{message}");
}

#[test]
fn csg_weights_with_padded_noises_are_rejected() {
    // The interp-pad .pkl stores noises 10 pixels larger than the pyramid; a CSG generator never does.
    let message = error_text(
        &model_dir("csg").join("checkpoint.pth"),
        &model_dir("interp-pad_disc-nobn").join("pickle_data.pkl"),
    );
    assert!(message.contains("10 pixels larger"), "{message}");
}

#[test]
fn interp_weights_with_csg_noises_are_rejected() {
    // A 2-channel stage-0 noise needs a 2-channel encoding, which the interp-pad generator lacks.
    let message = error_text(
        &model_dir("interp-pad_disc-nobn").join("checkpoint.pth"),
        &model_dir("csg").join("pickle_data.pkl"),
    );
    assert!(message.contains("first_fixed_noises_ch"), "{message}");
}

/// Writes a protocol 4 `.pkl` with the given noise shapes (zero values), as `PickleDataHook` does,
/// but without memoisation, so each array carries its own dtype.
fn write_pickle(path: &Path, shapes: &[[u8; 4]]) {
    fn text(bytes: &mut Vec<u8>, value: &str) {
        bytes.push(0x8c);
        bytes.push(value.len() as u8);
        bytes.extend_from_slice(value.as_bytes());
    }
    let mut bytes = b"\x80\x04}(".to_vec();
    text(&mut bytes, "noise_weights");
    bytes.extend(b"](");
    for _ in shapes {
        bytes.push(b'G');
        bytes.extend(0.5f64.to_be_bytes());
    }
    bytes.push(b'e');
    text(&mut bytes, "fixed_noises");
    bytes.extend(b"](");
    for shape in shapes {
        text(&mut bytes, "numpy.core.multiarray");
        text(&mut bytes, "_reconstruct");
        bytes.push(0x93);
        text(&mut bytes, "numpy");
        text(&mut bytes, "ndarray");
        bytes.push(0x93);
        bytes.extend(b"K\x00\x85C\x01b\x87R(K\x01(");
        for size in shape {
            bytes.extend([b'K', *size]);
        }
        bytes.push(b't');
        text(&mut bytes, "numpy");
        text(&mut bytes, "dtype");
        bytes.push(0x93);
        text(&mut bytes, "f4");
        bytes.extend(b"\x89\x88\x87R(K\x03");
        text(&mut bytes, "<");
        bytes.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89");
        let count: usize = shape.iter().map(|&s| s as usize).product();
        bytes.push(b'B');
        bytes.extend(((count * 4) as u32).to_le_bytes());
        bytes.extend(std::iter::repeat(0u8).take(count * 4));
        bytes.extend(b"tb");
    }
    bytes.push(b'e');
    text(&mut bytes, "curr_stage");
    bytes.extend([b'K', shapes.len() as u8 - 1]);
    bytes.extend(b"u.");
    std::fs::write(path, bytes).unwrap();
}

/// Fixed-noise shapes of the CSG reference, `(1, C, H, W)` per stage.
const CSG_SHAPES: [[u8; 4]; 6] =
    [[1, 2, 25, 33], [1, 1, 31, 41], [1, 1, 37, 50], [1, 1, 46, 61], [1, 1, 56, 74], [1, 1, 68, 91]];

#[test]
fn written_pickle_matches_reference_layout() {
    let dir = tempfile::tempdir().unwrap();
    let pkl = dir.path().join("six_stages.pkl");
    write_pickle(&pkl, &CSG_SHAPES);
    let loaded = load_mmgen_singan(&model_dir("csg").join("checkpoint.pth"), &pkl).unwrap();
    assert_eq!(loaded.num_scales, 5);
}

#[test]
fn fewer_stages_than_blocks_is_error() {
    let dir = tempfile::tempdir().unwrap();
    let pkl = dir.path().join("five_stages.pkl");
    write_pickle(&pkl, &CSG_SHAPES[..5]);
    let message = error_text(&model_dir("csg").join("checkpoint.pth"), &pkl);
    assert!(message.contains("unexpected key 'generator.blocks.5."), "{message}");
    assert!(message.contains("5 stages"), "{message}");
}

#[test]
fn more_stages_than_blocks_is_error() {
    let dir = tempfile::tempdir().unwrap();
    let pkl = dir.path().join("seven_stages.pkl");
    let mut shapes = CSG_SHAPES.to_vec();
    shapes.push([1, 1, 83, 111]);
    write_pickle(&pkl, &shapes);
    let message = error_text(&model_dir("csg").join("checkpoint.pth"), &pkl);
    assert!(message.contains("missing key 'generator.blocks.6.head.conv.weight'"), "{message}");
    assert!(message.contains("[64, 3, 3, 3]"), "{message}");
}

#[test]
fn inconsistent_stage_counts_are_error() {
    let dir = tempfile::tempdir().unwrap();
    let pkl = dir.path().join("bad_stage.pkl");
    write_pickle(&pkl, &CSG_SHAPES);
    // Replace curr_stage 5 (the byte after 'K' before the final SETITEMS and STOP) with 3.
    let mut bytes = std::fs::read(&pkl).unwrap();
    let stage_byte = bytes.len() - 3;
    assert_eq!(bytes[stage_byte], 5);
    bytes[stage_byte] = 3;
    std::fs::write(&pkl, bytes).unwrap();
    let message = error_text(&model_dir("csg").join("checkpoint.pth"), &pkl);
    assert!(message.contains("curr_stage 3"), "{message}");
}
