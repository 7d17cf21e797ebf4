//! Checks the CSG and SPE grids against every grid that MMGeneration v0.7.3 produced
//! (`tests/data/vectors/pe/*.npz`), and the SPE table growth and padding-row rules that those grids
//! do not reach.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use pegan_core::encoding::{CartesianGrid, EncodingConfig, PositionalEncoding, SinusoidalPositionalEmbedding};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/vectors/pe")
}

fn read_members(file: &str) -> Vec<(String, Tensor)> {
    let path = vectors_dir().join(file);
    Tensor::read_npz(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn flat(tensor: &Tensor) -> Vec<f32> {
    tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Parses `h{H}` or `w{W}` or `b{B}` style tokens of a member name.
fn token_value(tokens: &[&str], prefix: char) -> Option<usize> {
    tokens.iter().find_map(|t| t.strip_prefix(prefix).and_then(|v| v.parse().ok()))
}

#[test]
fn csg_matches_reference_bit_exact() {
    let members = read_members("csg_grids.npz");
    assert_eq!(members.len(), 10, "csg_grids.npz member count");
    for (name, expected) in members {
        let tokens: Vec<&str> = name.split('_').collect();
        let height = token_value(&tokens, 'h').unwrap_or_else(|| panic!("{name}: no height"));
        let width = token_value(&tokens, 'w').unwrap_or_else(|| panic!("{name}: no width"));
        let batch = token_value(&tokens, 'b').unwrap_or(1);

        let grid = PositionalEncoding::new(&EncodingConfig::Csg).grid(batch, height, width, &Device::Cpu).unwrap();
        assert_eq!(grid.dims(), expected.dims(), "{name}: shape");
        let (actual, expected) = (flat(&grid), flat(&expected));
        let bits_equal = actual.iter().zip(&expected).all(|(a, e)| a.to_bits() == e.to_bits());
        assert!(bits_equal, "{name}: not bit-exact, max diff {}", max_abs_diff(&actual, &expected));
    }
}

#[test]
fn csg_size_one_axis_is_minus_one() {
    let values = CartesianGrid::new().grid_values(1, 1).unwrap();
    assert_eq!(values, vec![-1.0, -1.0]);
}

/// Settings of an SPE grid member of `spe_grids.npz`, parsed from its name.
struct SpeCase {
    embedding_dim: usize,
    init_size: usize,
    div_half_dim: bool,
    module_shift: Option<i64>,
    call_shift: Option<i64>,
    batch: usize,
    height: usize,
    width: usize,
}

/// Parses `singan_d{D}_div{0|1}_cs{None|N}_h{H}_w{W}`, `mspie_d256_div{0|1}_cs100_h{N}_w{N}` and
/// `callshift_d8_cs2_b2_h5_w6`.
fn parse_spe_case(name: &str) -> SpeCase {
    let tokens: Vec<&str> = name.split('_').collect();
    let family = tokens[0];
    let embedding_dim = token_value(&tokens, 'd').unwrap_or_else(|| panic!("{name}: no dim"));
    let div_half_dim = tokens.contains(&"div1");
    let shift_token = tokens.iter().find_map(|t| t.strip_prefix("cs")).unwrap_or_else(|| panic!("{name}: no shift"));
    let shift = match shift_token {
        "None" => None,
        number => Some(number.parse::<i64>().unwrap_or_else(|e| panic!("{name}: shift: {e}"))),
    };
    let (init_size, module_shift, call_shift) = match family {
        "singan" => (512, shift, None),
        "mspie" => (256, shift, None),
        // The reference module keeps its defaults (init_size 1024, no shift); the shift comes with the call.
        "callshift" => (1024, None, shift),
        other => panic!("{name}: unknown member family {other}"),
    };
    SpeCase {
        embedding_dim,
        init_size,
        div_half_dim,
        module_shift,
        call_shift,
        batch: token_value(&tokens, 'b').unwrap_or(1),
        height: token_value(&tokens, 'h').unwrap_or_else(|| panic!("{name}: no height")),
        width: token_value(&tokens, 'w').unwrap_or_else(|| panic!("{name}: no width")),
    }
}

#[test]
fn spe_matches_reference_grids() {
    let members = read_members("spe_grids.npz");
    assert_eq!(members.len(), 31, "spe_grids.npz member count");
    for (name, expected) in members {
        let case = parse_spe_case(&name);
        let spe = SinusoidalPositionalEmbedding::new(
            case.embedding_dim,
            0,
            case.init_size,
            case.div_half_dim,
            case.module_shift,
        );
        let grid =
            spe.grid_with_center_shift(case.batch, case.height, case.width, case.call_shift, &Device::Cpu).unwrap();
        assert_eq!(grid.dims(), expected.dims(), "{name}: shape");
        let diff = max_abs_diff(&flat(&grid), &flat(&expected));
        assert!(diff <= 1e-6, "{name}: max diff {diff}");
    }
}

#[test]
fn spe_config_grid_matches_module() {
    let config = EncodingConfig::Spe {
        embedding_dim: 4,
        padding_idx: 0,
        init_size: 512,
        div_half_dim: false,
        center_shift: Some(200),
    };
    let encoding = PositionalEncoding::new(&config);
    assert_eq!(encoding.channels(), 8);
    let grid = encoding.grid(1, 25, 33, &Device::Cpu).unwrap();
    let expected = read_members("spe_grids.npz")
        .into_iter()
        .find(|(name, _)| name == "singan_d4_div0_cs200_h25_w33")
        .expect("member singan_d4_div0_cs200_h25_w33")
        .1;
    let diff = max_abs_diff(&flat(&grid), &flat(&expected));
    assert!(diff <= 1e-6, "max diff {diff}");
}

/// Embedding row `e(p)` of the table, in float32 as the reference computes it.
fn embedding_row(position: usize, embedding_dim: usize, div_half_dim: bool) -> Vec<f32> {
    if position == 0 {
        return vec![0.0; embedding_dim];
    }
    let half = embedding_dim / 2;
    let divisor = if div_half_dim { half } else { half - 1 };
    let step = -(10000f64.ln() / divisor as f64) as f32;
    let frequencies: Vec<f32> = (0..half).map(|k| (k as f32 * step).exp()).collect();
    let p = position as f32;
    let mut row: Vec<f32> = frequencies.iter().map(|f| (p * f).sin()).collect();
    row.extend(frequencies.iter().map(|f| (p * f).cos()));
    row
}

/// Column `j` of the x channels of a `(2d, h, w)` grid.
fn x_embedding(values: &[f32], dim: usize, height: usize, width: usize, column: usize) -> Vec<f32> {
    (0..dim).map(|c| values[c * height * width + column]).collect()
}

#[test]
fn spe_first_row_matches_spec_example() {
    let spe = SinusoidalPositionalEmbedding::new(4, 0, 512, false, Some(200));
    let values = spe.grid_values(1, 1, None).unwrap();
    let expected = [0.841471, 1.0e-4, 0.540302, 1.0];
    for (actual, expected) in values[..4].iter().zip(expected) {
        assert!((actual - expected).abs() < 1e-6, "x embedding {actual} vs {expected}");
    }
    assert_eq!(values[..4], values[4..], "x and y embeddings of a 1 × 1 grid");
}

#[test]
fn spe_wide_grid_grows_table() {
    let spe = SinusoidalPositionalEmbedding::new(4, 0, 512, false, None);
    assert_eq!(spe.table_rows(), 512);

    let (height, width) = (2, 600);
    let values = spe.grid_values(height, width, None).unwrap();
    assert_eq!(spe.table_rows(), 601, "rows after a 600-wide axis: padding_idx + 1 + 600");
    for column in [0, 511, 599] {
        let actual = x_embedding(&values, 4, height, width, column);
        let expected = embedding_row(column + 1, 4, false);
        assert!(max_abs_diff(&actual, &expected) <= 1e-6, "column {column}: {actual:?} vs {expected:?}");
    }

    spe.grid_values(3, 10, None).unwrap();
    assert_eq!(spe.table_rows(), 601, "the table never shrinks");
}

#[test]
fn spe_growth_drops_div_half_dim() {
    let spe = SinusoidalPositionalEmbedding::new(4, 0, 512, true, None);
    let before = spe.grid_values(2, 3, None).unwrap();
    let expected_div1 = embedding_row(2, 4, true);
    assert!(max_abs_diff(&x_embedding(&before, 4, 2, 3, 1), &expected_div1) <= 1e-6);

    spe.grid_values(1, 700, None).unwrap();
    let after = spe.grid_values(2, 3, None).unwrap();
    let expected_div0 = embedding_row(2, 4, false);
    assert!(
        max_abs_diff(&x_embedding(&after, 4, 2, 3, 1), &expected_div0) <= 1e-6,
        "after growth the table divides by d/2 − 1"
    );
}

#[test]
fn spe_wide_shifted_axis_zeroes_column() {
    // center_shift 200, w = 403 (odd): c = 202, r_j = j − 1, so column j0 = c − 201 = 1 hits padding 0.
    let spe = SinusoidalPositionalEmbedding::new(4, 0, 512, false, Some(200));
    let (height, width) = (1, 403);
    let values = spe.grid_values(height, width, None).unwrap();
    let zero = x_embedding(&values, 4, height, width, 1);
    assert_eq!(zero, vec![0.0; 4], "column 1 is the padding row");
    let before = x_embedding(&values, 4, height, width, 0);
    assert!(max_abs_diff(&before, &embedding_row(1, 4, false)) <= 1e-6, "column 0 keeps position 1");
    let after = x_embedding(&values, 4, height, width, 2);
    assert!(max_abs_diff(&after, &embedding_row(2, 4, false)) <= 1e-6, "column 2 moves down to position 2");
}

#[test]
fn spe_call_shift_none_keeps_module_shift() {
    // Module shift 3 zeroes column 13 of a 33-wide axis; a call without a shift must keep it.
    let spe = SinusoidalPositionalEmbedding::new(4, 0, 512, false, Some(3));
    let values = spe.grid_values(1, 33, None).unwrap();
    assert_eq!(x_embedding(&values, 4, 1, 33, 13), vec![0.0; 4]);

    let overridden = spe.grid_values(1, 33, Some(200)).unwrap();
    assert!(max_abs_diff(&x_embedding(&overridden, 4, 1, 33, 13), &embedding_row(14, 4, false)) <= 1e-6);
}

#[test]
fn spe_grid_is_thread_safe() {
    let spe = SinusoidalPositionalEmbedding::new(4, 0, 512, false, Some(200));
    let reference = spe.grid_values(25, 33, None).unwrap();
    let shared = &spe;
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            (0..4).map(|t| scope.spawn(move || shared.grid_values(25 + 600 * (t % 2), 33, None).unwrap())).collect();
        for handle in handles {
            handle.join().unwrap();
        }
    });
    assert_eq!(spe.table_rows(), 626, "longest axis 625, plus the padding row");
    assert_eq!(spe.grid_values(25, 33, None).unwrap(), reference);
}

#[test]
fn invalid_spe_settings_are_errors() {
    let odd = SinusoidalPositionalEmbedding::new(5, 0, 512, false, None);
    assert!(odd.grid(1, 2, 2, &Device::Cpu).is_err(), "odd embedding_dim");
    let tiny = SinusoidalPositionalEmbedding::new(2, 0, 512, true, None);
    assert!(tiny.validate().is_err(), "embedding_dim 2");
    let no_padding_row = SinusoidalPositionalEmbedding::new(4, 8, 8, false, None);
    assert!(no_padding_row.validate().is_err(), "padding_idx = init_size");
}

#[test]
fn empty_grids_are_errors() {
    let csg = PositionalEncoding::new(&EncodingConfig::Csg);
    assert!(csg.grid(0, 2, 2, &Device::Cpu).is_err(), "batch 0");
    assert!(csg.grid(1, 0, 2, &Device::Cpu).is_err(), "height 0");
    assert!(csg.grid(1, 2, 0, &Device::Cpu).is_err(), "width 0");
    assert!(csg.grid(usize::MAX, 2, 2, &Device::Cpu).is_err(), "overflowing batch");
}
