//! Helpers shared by the CLI tests: peak memory of one pegan process and its logged memory estimate.

use std::path::Path;
use std::process::Command;

/// Runs `pegan args` and returns its stderr and its peak resident size in MiB, read with `wait4`.
pub fn pegan_peak_memory(args: &[&str], stderr_path: &Path) -> (String, u64) {
    let child = Command::new(env!("CARGO_BIN_EXE_pegan"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(stderr_path).unwrap())
        .spawn()
        .expect("the pegan binary runs");
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills; the pid is our own child, not yet reaped.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    let stderr = std::fs::read_to_string(stderr_path).unwrap();
    assert!(libc::WIFEXITED(status), "pegan {args:?} did not exit normally: {stderr}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "pegan {args:?} failed: {stderr}");
    // ru_maxrss is in KiB on Linux.
    (stderr, usage.ru_maxrss as u64 >> 10)
}

/// Returns the `needed_mib` value of the "training memory estimate" line that `-v` logs.
pub fn logged_estimate_mib(stderr: &str) -> u64 {
    stderr
        .split("needed_mib=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no training memory estimate in the log: {stderr}"))
}
