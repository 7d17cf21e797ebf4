//! Runs the GIMP plug-in tests, plugins/gimp/tests/run-tests.sh, against this test build's
//! libpegan.a: the script builds the plug-in, installs it into a throw-away GIMP profile and calls
//! its procedures through Script-Fu in headless GIMP 2.10.
//!
//! Without gimp-console-2.10 or gimptool-2.0 the test is skipped with a printed reason, except
//! under CI (the CI variable set to anything but "false" or "0"), where it fails.
//! scripts/test.sh installs both (Debian packages gimp and libgimp2.0-dev) when they are missing.

use std::env;
use std::path::Path;
use std::process::Command;

const REQUIRED_TOOLS: [&str; 2] = ["gimp-console-2.10", "gimptool-2.0"];

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("ffi/ has a parent folder")
}

fn on_path(program: &str) -> bool {
    env::var_os("PATH")
        .map(|path| env::split_paths(&path).any(|folder| folder.join(program).is_file()))
        .unwrap_or(false)
}

fn running_in_ci() -> bool {
    env::var("CI").map(|value| !matches!(value.as_str(), "" | "false" | "0")).unwrap_or(false)
}

#[test]
fn gimp_plugin_headless() {
    let missing: Vec<&str> = REQUIRED_TOOLS.into_iter().filter(|tool| !on_path(tool)).collect();
    if !missing.is_empty() {
        let reason = format!(
            "{} not found on PATH: install the Debian packages gimp and libgimp2.0-dev, or run scripts/test.sh, \
             which installs them",
            missing.join(" and ")
        );
        assert!(!running_in_ci(), "the GIMP plug-in tests cannot run under CI: {reason}");
        eprintln!("skipping the GIMP plug-in tests: {reason}");
        return;
    }

    // Cargo writes the libraries of the crate under test next to the test executables.
    let executable = env::current_exe().expect("the test executable has a path");
    let lib_dir = executable.parent().expect("the test executable is in a folder");
    assert!(
        lib_dir.join("libpegan.a").is_file(),
        "{} has no libpegan.a: the pegan-ffi staticlib was not built",
        lib_dir.display()
    );

    let script = repo_root().join("plugins/gimp/tests/run-tests.sh");
    let output = Command::new("bash")
        .arg(&script)
        .env("PEGAN_LIB_DIR", lib_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", script.display()));

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed with {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        script.display(),
        output.status
    );
    assert!(
        stdout.contains("all GIMP plug-in checks passed"),
        "{} exited 0 without its final line\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        script.display()
    );
}
