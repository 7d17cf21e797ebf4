//! Allocator settings for applications that train or generate on the CPU.
//!
//! Every tensor operation allocates its result, and training frees and reallocates the same large
//! buffers (activations and gradients of a few MiB to over 100 MiB) many times per iteration. glibc
//! hands such buffers back to the kernel on `free` (they are `mmap`ed, or trimmed off the top of the
//! heap), so the next allocation faults every page in again. On the 2-core machines this project
//! measured with perf, that took about a fifth of a convolution layer's forward and backward time, and
//! about 15% of a StyleGAN2 config-f forward pass at 256², whose largest activations exceed 32 MiB.
//! Keeping freed memory in the heap avoids it at the price of a resident set that stays at its peak.
//!
//! This is a process-wide choice, so the library never makes it by itself: the `pegan` binary and the
//! benchmarks call [`retain_freed_memory`] at start-up, and host programs decide for themselves.

/// Largest allocation glibc serves from the heap once the mmap threshold is fixed: 32 MiB, the limit
/// that `mallopt` accepts on 64-bit targets.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: libc::c_int = 32 << 20;

/// Asks the C allocator to keep freed memory for reuse instead of returning it to the kernel, and
/// returns whether the setting took effect.
///
/// On glibc this serves every allocation from the heap instead of fresh `mmap`ed memory (glibc still maps
/// memory when the heap cannot grow) and never trims the heap. Other C libraries are left as they are,
/// and the function returns `false`. Call it once, before the first tensor is created. Later calls do
/// no harm.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters, and every value is in the documented range.
        // The threshold keeps blocks up to 32 MiB in the heap should a C library ignore M_MMAP_MAX.
        let mmap = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
        let trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) };
        // No mmap for larger blocks either: glibc unmaps those on free, whatever the threshold.
        let mmap_max = unsafe { libc::mallopt(libc::M_MMAP_MAX, 0) };
        mmap == 1 && trim == 1 && mmap_max == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Memory, in bytes, that this process can still allocate without swapping: the kernel's `MemAvailable`,
/// lowered to the cgroup's remaining allowance when a container sets one (`memory.max − memory.current` in
/// cgroup v2, `memory.limit_in_bytes − memory.usage_in_bytes` in v1). `None` where `/proc/meminfo` cannot
/// be read (other systems than Linux).
pub fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let mut available = available_kib.saturating_mul(1024);

    let read = |name: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{name}")).ok();
    // cgroup v2, then v1. "max" (v2 without a limit) does not parse, which leaves the kernel's figure; v1
    // without a limit reports a huge number, which the minimum ignores.
    for (limit, usage) in
        [("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")]
    {
        if let (Some(limit), Some(usage)) = (read(limit), read(usage)) {
            if let (Ok(limit), Ok(usage)) = (limit.trim().parse::<u64>(), usage.trim().parse::<u64>()) {
                available = available.min(limit.saturating_sub(usage));
            }
        }
    }
    Some(available)
}

/// Environment variable that sets the memory limit of training runs, in MiB (0 for no check), for every
/// host: the CLI, the C API and the plug-ins. The CLI's `--memory-limit` takes precedence.
pub const MEMORY_LIMIT_ENV: &str = "PEGAN_MEMORY_LIMIT_MIB";

/// A memory limit for a training run, with where it came from, so that a refusal can name which applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLimit {
    /// The figure [`available_memory_bytes`] read when the run was prepared.
    Available(u64),
    /// A limit the caller set, in bytes.
    Set(u64),
}

impl MemoryLimit {
    /// Returns the default limit of a training run. The environment variable [`MEMORY_LIMIT_ENV`], when set,
    /// gives it in MiB (0 for no check). Otherwise it is the memory available now on the CPU, and `None` on
    /// other devices (candle reports no free memory for them) or where the figure cannot be read.
    pub fn default_for(device: &candle_core::Device) -> crate::Result<Option<MemoryLimit>> {
        if let Some(limit) = Self::from_env_value(std::env::var(MEMORY_LIMIT_ENV).ok().as_deref())? {
            return Ok(limit);
        }
        Ok(if device.is_cpu() { available_memory_bytes().map(MemoryLimit::Available) } else { None })
    }

    /// Parses a value of [`MEMORY_LIMIT_ENV`]: `None` when unset or empty, `Some(None)` for 0 (no check),
    /// `Some(Some(limit))` for a number of MiB.
    pub fn from_env_value(value: Option<&str>) -> crate::Result<Option<Option<MemoryLimit>>> {
        let Some(text) = value.map(str::trim).filter(|text| !text.is_empty()) else {
            return Ok(None);
        };
        let mib: u64 = text.parse().map_err(|_| {
            crate::Error::invalid(format!(
                "{MEMORY_LIMIT_ENV}='{text}' is not a whole number of MiB: set it to the limit in MiB, 0 for no \
                 check, or unset it to use the memory available"
            ))
        })?;
        Ok(Some((mib > 0).then(|| MemoryLimit::Set(mib.saturating_mul(1 << 20)))))
    }

    pub fn bytes(self) -> u64 {
        match self {
            MemoryLimit::Available(bytes) | MemoryLimit::Set(bytes) => bytes,
        }
    }

    /// Describes the limit for a message: "the 23092 MiB of memory available" or "the limit of 100 MiB".
    pub fn describe(self) -> String {
        match self {
            MemoryLimit::Available(bytes) => format!("the {} MiB of memory available", bytes >> 20),
            MemoryLimit::Set(bytes) => format!("the limit of {} MiB", bytes >> 20),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        assert!(retain_freed_memory());
    }

    #[test]
    fn memory_limit_env_values() {
        assert_eq!(MemoryLimit::from_env_value(None).unwrap(), None);
        assert_eq!(MemoryLimit::from_env_value(Some(" ")).unwrap(), None);
        assert_eq!(MemoryLimit::from_env_value(Some("0")).unwrap(), Some(None));
        assert_eq!(MemoryLimit::from_env_value(Some("100")).unwrap(), Some(Some(MemoryLimit::Set(100 << 20))));

        let message = MemoryLimit::from_env_value(Some("6GB")).unwrap_err().to_string();
        assert!(message.contains("PEGAN_MEMORY_LIMIT_MIB='6GB'"), "{message}");
        assert!(message.contains("whole number of MiB"), "{message}");
    }

    #[test]
    fn available_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let bytes = available_memory_bytes().expect("/proc/meminfo has MemAvailable");
            assert!(bytes > 1 << 20, "{bytes} bytes available");
        }
    }
}
