//! Checks the SinGAN `.pkl` reader on the two reference files (protocol 4, written by Python with
//! numpy 2), on hand-built protocol 2 data, and on truncated, corrupted and hostile input.

use std::path::PathBuf;

use candle_core::Tensor;
use pegan_core::pickle::read_singan_pickle;
use pegan_core::Error;

const MODELS: [&str; 2] = ["csg", "interp-pad_disc-nobn"];

fn model_dir(model: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/vectors/singan").join(model)
}

fn reference_pickle(model: &str) -> Vec<u8> {
    let path = model_dir(model).join("pickle_data.pkl");
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Deterministic bytes from a 64-bit xorshift generator.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect()
}

fn error_message(bytes: &[u8]) -> String {
    match read_singan_pickle(bytes) {
        Ok(data) => panic!("expected an error, got {data:?}"),
        Err(Error::InvalidModel(message)) => message,
        Err(other) => panic!("expected Error::InvalidModel, got {other:?}"),
    }
}

#[test]
fn reference_files_match_npz_and_info() {
    for model in MODELS {
        let data = read_singan_pickle(&reference_pickle(model)).unwrap_or_else(|e| panic!("{model}: {e}"));

        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(model_dir(model).join("info.json")).unwrap()).unwrap();
        let weights: Vec<f64> = info["noise_weights"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(data.noise_weights, weights, "{model}: noise_weights");
        assert_eq!(data.curr_stage as u64, info["curr_stage"].as_u64().unwrap(), "{model}: curr_stage");

        let npz = Tensor::read_npz(model_dir(model).join("fixed_noises.npz")).unwrap();
        assert_eq!(data.fixed_noises.len(), npz.len(), "{model}: stage count");
        for (name, expected) in npz {
            let stage: usize = name.trim_start_matches('s').parse().unwrap();
            let (shape, values) = &data.fixed_noises[stage];
            assert_eq!(shape.as_slice(), expected.dims(), "{model} {name}: shape");
            let expected = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(values == &expected, "{model} {name}: values differ");
        }
    }
}

#[test]
fn truncated_reference_is_error() {
    let bytes = reference_pickle("csg");
    // Every prefix through the first array header, then a spread over the raw data and the tail.
    let lengths = (0..400).chain((400..bytes.len()).step_by(997)).chain(bytes.len() - 8..bytes.len());
    for length in lengths {
        let result = read_singan_pickle(&bytes[..length]);
        assert!(matches!(result, Err(Error::InvalidModel(_))), "prefix of {length} bytes: {result:?}");
    }
}

#[test]
fn truncation_message_names_opcode() {
    // The reference file starts with a FRAME that covers the whole dict, so its length check fails first.
    let bytes = reference_pickle("csg");
    let message = error_message(&bytes[..300]);
    assert!(message.contains("FRAME at byte 2 needs 72078 bytes"), "{message}");

    let message = error_message(b"\x80\x04B\x10\x00\x00\x00abc");
    assert!(message.contains("BINBYTES at byte 2 needs 16 bytes, but 3 remain"), "{message}");
}

#[test]
fn random_garbage_is_error() {
    for seed in 0..200 {
        let garbage = random_bytes(64 + seed as usize * 13, seed);
        assert!(read_singan_pickle(&garbage).is_err(), "seed {seed}");
    }
    let mut framed = b"\x80\x04".to_vec();
    framed.extend(random_bytes(4096, 99));
    assert!(read_singan_pickle(&framed).is_err(), "random data after PROTO 4");
}

#[test]
fn corrupted_reference_never_panics() {
    // Each try flips one byte. Half of the tries hit the first 256 bytes, which are the opcodes up to
    // the first array's data. The reader may accept a change inside raw float data, but it must never panic.
    let bytes = reference_pickle("interp-pad_disc-nobn");
    let positions = random_bytes(3000, 7);
    let values = random_bytes(3000, 8);
    for (i, (&p, &v)) in positions.iter().zip(&values).enumerate() {
        let position = if i % 2 == 0 { p as usize } else { (p as usize * 283 + i) % bytes.len() };
        let mut corrupted = bytes.clone();
        corrupted[position] ^= v | 1;
        let _ = read_singan_pickle(&corrupted);
    }
}

#[test]
fn empty_input_is_error() {
    let message = error_message(b"");
    assert!(message.contains("truncated"), "{message}");
}

#[test]
fn unsupported_opcode_is_named() {
    // BINPERSID ('Q') is what torch uses for tensor storages; SinGAN data never contains it.
    let message = error_message(b"\x80\x04NQ.");
    assert!(message.contains("0x51"), "{message}");
}

#[test]
fn protocol_five_is_rejected() {
    let message = error_message(b"\x80\x05}.");
    assert!(message.contains("protocol 5"), "{message}");
}

#[test]
fn foreign_global_is_rejected() {
    let message = error_message(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.");
    assert!(message.contains("os.system"), "{message}");
}

#[test]
fn deep_nesting_does_not_overflow() {
    // A million nested 1-tuples: a recursive reader or a recursive drop would overflow the stack.
    let mut bytes = b"\x80\x04)".to_vec();
    bytes.extend(std::iter::repeat(0x85u8).take(1_000_000));
    bytes.push(b'.');
    let message = error_message(&bytes);
    assert!(message.contains("not a dict"), "{message}");
}

#[test]
fn huge_length_prefix_is_error() {
    // BINBYTES8 claiming 2^62 bytes must fail on the length check, not on an allocation.
    let mut bytes = b"\x80\x04\x8e".to_vec();
    bytes.extend((1u64 << 62).to_le_bytes());
    let message = error_message(&bytes);
    assert!(message.contains("truncated"), "{message}");
}

/// Writes pickle opcodes the way Python's `pickle` module does for protocol 2: `bytes` become
/// `_codecs.encode(latin-1 text, 'latin1')`, every object is memoised with `BINPUT`, and a global or
/// dtype seen before is fetched again with `BINGET`.
struct ProtocolTwoWriter {
    bytes: Vec<u8>,
    next_memo: u8,
    /// Memo index of each global or dtype already written, by name.
    memo: std::collections::HashMap<String, u8>,
}

impl ProtocolTwoWriter {
    fn new() -> Self {
        ProtocolTwoWriter { bytes: b"\x80\x02".to_vec(), next_memo: 0, memo: Default::default() }
    }

    fn op(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// `BINPUT` of the top of the stack; returns the memo index.
    fn put(&mut self) -> u8 {
        let index = self.next_memo;
        self.op(&[b'q', index]);
        self.next_memo += 1;
        index
    }

    fn unicode(&mut self, text: &str) -> &mut Self {
        self.op(b"X");
        self.op(&(text.len() as u32).to_le_bytes());
        self.op(text.as_bytes());
        self.put();
        self
    }

    fn int(&mut self, value: i32) -> &mut Self {
        match u8::try_from(value) {
            Ok(small) => self.op(&[b'K', small]),
            Err(_) => {
                self.op(b"J");
                self.op(&value.to_le_bytes())
            }
        }
    }

    fn float(&mut self, value: f64) -> &mut Self {
        self.op(b"G");
        self.op(&value.to_be_bytes())
    }

    /// Pushes a global: `GLOBAL` and `BINPUT` the first time, `BINGET` afterwards.
    fn global(&mut self, module: &str, name: &str) {
        let key = format!("{module}.{name}");
        if let Some(&index) = self.memo.get(&key) {
            self.op(&[b'h', index]);
            return;
        }
        self.op(format!("c{module}\n{name}\n").as_bytes());
        let index = self.put();
        self.memo.insert(key, index);
    }

    /// `bytes` as protocol 2 writes them: `_codecs.encode(latin-1 text, 'latin1')`.
    fn latin1_bytes(&mut self, data: &[u8]) {
        self.global("_codecs", "encode");
        let text: String = data.iter().map(|&b| b as char).collect();
        self.unicode(&text).unicode("latin1").op(b"\x86");
        self.put();
        self.op(b"R");
        self.put();
    }

    /// Pushes `dtype(descr, False, True)` built with state `(3, byte_order, None, None, None, -1, -1, 0)`.
    /// The memo stores the dtype before its `BUILD`, so a later `BINGET` returns the built object only
    /// if the reader shares memoised values as Python does.
    fn dtype(&mut self, descr: &str, byte_order: &str) {
        let key = format!("dtype {descr} {byte_order}");
        if let Some(&index) = self.memo.get(&key) {
            self.op(&[b'h', index]);
            return;
        }
        self.global("numpy", "dtype");
        self.unicode(descr).op(b"\x89\x88\x87");
        self.put();
        self.op(b"R");
        let index = self.put();
        self.memo.insert(key, index);
        self.op(b"(").int(3).unicode(byte_order).op(b"NNN").int(-1).int(-1).int(0).op(b"t");
        self.put();
        self.op(b"b");
    }

    /// Writes a numpy array: `_reconstruct(ndarray, (0,), b'b')`, then `BUILD` with `(1, shape, dtype, fortran, data)`.
    fn array(&mut self, descr: &str, byte_order: &str, shape: &[i32], fortran: bool, data: &[u8]) {
        self.global("numpy.core.multiarray", "_reconstruct");
        self.global("numpy", "ndarray");
        self.int(0).op(b"\x85");
        self.put();
        self.latin1_bytes(b"b");
        self.op(b"\x87");
        self.put();
        self.op(b"R");
        self.put();

        self.op(b"(").int(1).op(b"(");
        for &size in shape {
            self.int(size);
        }
        self.op(b"t");
        self.put();
        self.dtype(descr, byte_order);
        self.op(if fortran { b"\x88" } else { b"\x89" });
        self.latin1_bytes(data);
        self.op(b"t");
        self.put();
        self.op(b"b");
    }
}

/// One array of a hand-built file: dtype, byte order, shape, Fortran flag and raw data.
struct ArraySpec {
    descr: &'static str,
    byte_order: &'static str,
    shape: Vec<i32>,
    fortran: bool,
    data: Vec<u8>,
}

fn little_endian_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Builds `{'noise_weights': [1, 0.25], 'fixed_noises': [arrays…], 'curr_stage': 1}` in protocol 2.
/// The first noise weight is the int 1, as MMGeneration's training writes it.
fn protocol_two_file(arrays: &[ArraySpec]) -> Vec<u8> {
    let mut w = ProtocolTwoWriter::new();
    w.op(b"}");
    w.put();
    w.op(b"(");
    w.unicode("noise_weights").op(b"]");
    w.put();
    w.op(b"(").int(1).float(0.25).op(b"e");
    w.unicode("fixed_noises").op(b"]");
    w.put();
    w.op(b"(");
    for array in arrays {
        w.array(array.descr, array.byte_order, &array.shape, array.fortran, &array.data);
    }
    w.op(b"e");
    w.unicode("curr_stage").int(1).op(b"u");
    w.op(b".");
    w.bytes
}

fn default_arrays() -> Vec<ArraySpec> {
    let first: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
    vec![
        ArraySpec {
            descr: "f4",
            byte_order: "<",
            shape: vec![1, 2, 2, 3],
            fortran: false,
            data: little_endian_f32(&first),
        },
        ArraySpec { descr: "f4", byte_order: "<", shape: vec![1, 1, 1, 2], fortran: false, data: vec![0; 8] },
    ]
}

#[test]
fn protocol_two_file_is_read() {
    let data = read_singan_pickle(&protocol_two_file(&default_arrays())).unwrap();
    assert_eq!(data.noise_weights, vec![1.0, 0.25]);
    assert_eq!(data.curr_stage, 1);
    assert_eq!(data.fixed_noises.len(), 2);
    assert_eq!(data.fixed_noises[0].0, vec![1, 2, 2, 3]);
    assert_eq!(data.fixed_noises[0].1, (0..12).map(|i| i as f32 * 0.5 - 1.0).collect::<Vec<_>>());
    assert_eq!(data.fixed_noises[1].0, vec![1, 1, 1, 2]);
    assert_eq!(data.fixed_noises[1].1, vec![0.0, 0.0]);
}

#[test]
fn fortran_order_is_converted() {
    // C-order (2, 3) values 0..6 stored column by column: 0, 3, 1, 4, 2, 5.
    let column_major = little_endian_f32(&[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    let mut arrays = default_arrays();
    arrays[1] = ArraySpec { descr: "f4", byte_order: "<", shape: vec![1, 1, 2, 3], fortran: true, data: column_major };
    let data = read_singan_pickle(&protocol_two_file(&arrays)).unwrap();
    assert_eq!(data.fixed_noises[1].1, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
}

#[test]
fn big_endian_is_converted() {
    let big_endian: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_be_bytes()).collect();
    let mut arrays = default_arrays();
    arrays[1] = ArraySpec { descr: "f4", byte_order: ">", shape: vec![1, 1, 1, 2], fortran: false, data: big_endian };
    let data = read_singan_pickle(&protocol_two_file(&arrays)).unwrap();
    assert_eq!(data.fixed_noises[1].1, vec![1.5, -2.0]);
}

#[test]
fn float64_array_is_error() {
    let mut arrays = default_arrays();
    arrays[1] = ArraySpec { descr: "f8", byte_order: "<", shape: vec![1, 1, 1, 1], fortran: false, data: vec![0; 8] };
    let message = error_message(&protocol_two_file(&arrays));
    assert!(message.contains("'f8'"), "{message}");
}

#[test]
fn shape_data_mismatch_is_error() {
    let mut arrays = default_arrays();
    arrays[1].data.truncate(4);
    let message = error_message(&protocol_two_file(&arrays));
    assert!(message.contains("data bytes"), "{message}");
}

#[test]
fn missing_key_is_error() {
    let bytes = b"\x80\x04}(\x8c\x0dnoise_weights]\x8c\x0cfixed_noises]u.";
    let message = error_message(bytes);
    assert!(message.contains("curr_stage"), "{message}");
}
