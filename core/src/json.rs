//! JSON helpers shared by the configuration types.

/// Merges `overlay` into `base`: objects merge key by key, any other value replaces the one in `base`.
///
/// Presets are written as a base config plus overlays, and `--config` files override single fields,
/// so only the keys a file names change.
pub fn merge_json(base: &mut serde_json::Value, overlay: &serde_json::Value) {
    match (base, overlay) {
        (serde_json::Value::Object(base), serde_json::Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(key) {
                    Some(slot) => merge_json(slot, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (slot, value) => *slot = value.clone(),
    }
}
