//! The deterministic weight fill behind the StyleGAN2 anchors computed with MMGeneration: FNV-1a over the key,
//! a golden-ratio counter and the SplitMix64 finaliser give a unit-variance uniform value per element.

/// FNV-1a 64-bit hash of the key's UTF-8 bytes.
pub fn seed(key: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for byte in key.bytes() {
        h ^= byte as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Value `i` (row-major flat index) of the stream for `key`: `√3 · (2u − 1)`, u uniform in [0, 1).
pub fn value(key: &str, i: u64) -> f64 {
    let mut z = seed(key).wrapping_add((i + 1).wrapping_mul(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^= z >> 31;
    let u = (z >> 11) as f64 * 2f64.powi(-53);
    3f64.sqrt() * (2.0 * u - 1.0)
}

/// `count` values of the stream for `key`, each computed in f64 and cast to f32 once.
pub fn values(key: &str, count: usize) -> Vec<f32> {
    (0..count as u64).map(|i| value(key, i) as f32).collect()
}

/// Returns the anchor values of a state-dict key without its `generator.` / `discriminator.` prefix.
pub fn parameter_values(key: &str, count: usize) -> Vec<f32> {
    let scaled = |factor: f64, offset: f64| -> Vec<f32> {
        (0..count as u64).map(|i| (offset + factor * value(key, i)) as f32).collect()
    };
    if key.starts_with("style_mapping") && key.ends_with("weight_orig") {
        scaled(100.0, 0.0)
    } else if key.ends_with("style_modulation.bias") {
        scaled(0.1, 1.0)
    } else if key.ends_with("noise_injector.weight") || key.ends_with("bias") {
        scaled(0.1, 0.0)
    } else {
        scaled(1.0, 0.0)
    }
}
