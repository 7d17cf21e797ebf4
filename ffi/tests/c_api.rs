//! Builds C and C++ programs against the installed header and library and runs them: the header
//! alone in four language standards, tests/c/test_capi.c under valgrind and statically linked,
//! tests/c/test_stylegan2.c under valgrind, and the examples in examples/c through their Makefile.
//!
//! The library is installed by scripts/install-capi.sh from this test build's own libpegan.so and
//! libpegan.a, into a temporary prefix, and every program finds it through pkg-config. The tests
//! need gcc, g++, make, pkg-config and valgrind on the PATH.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tempfile::TempDir;

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("ffi/ has a parent folder")
}

fn training_image() -> PathBuf {
    repo_root().join("tests/data/singan/balloons.png")
}

/// Returns the path of the reduced MMGeneration MS-PIE config-f checkpoint of the test vectors,
/// which generates 32 x 32 pixels at its trained size.
fn stylegan2_checkpoint() -> PathBuf {
    repo_root().join("tests/data/vectors/stylegan2/mspie_config-f_small/checkpoint.pth")
}

/// Runs `command` and returns its output, or panics with a message naming the missing tool.
fn run(command: &mut Command) -> Output {
    let program = command.get_program().to_string_lossy().into_owned();
    command.output().unwrap_or_else(|e| {
        panic!("cannot run {program}: {e}; install it (Debian: apt-get install gcc g++ make pkg-config valgrind)")
    })
}

/// Panics with the command's output unless it exited with status 0.
fn check_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A prefix with pegan installed by scripts/install-capi.sh.
struct Installation {
    prefix: PathBuf,
    /// Scratch space of the tests, removed when the test process ends.
    _folder: TempDir,
}

impl Installation {
    fn pkg_config_path(&self) -> PathBuf {
        self.prefix.join("lib/pkgconfig")
    }

    fn lib_dir(&self) -> PathBuf {
        self.prefix.join("lib")
    }

    /// Runs pkg-config for pegan with `arguments` and splits its output into flags.
    fn pkg_config(&self, arguments: &[&str]) -> Vec<String> {
        let output =
            run(Command::new("pkg-config").args(arguments).arg("pegan").env("PKG_CONFIG_PATH", self.pkg_config_path()));
        check_success(&output, "pkg-config");
        String::from_utf8_lossy(&output.stdout).split_whitespace().map(str::to_string).collect()
    }

    /// Returns a compiler command with pegan's include flags.
    fn compiler(&self, compiler: &str) -> Command {
        let mut command = Command::new(compiler);
        command.args(self.pkg_config(&["--cflags"]));
        command
    }
}

/// Installs this test build's libraries once per test process.
fn installation() -> &'static Installation {
    static INSTALLATION: OnceLock<Installation> = OnceLock::new();
    INSTALLATION.get_or_init(|| {
        // Cargo writes the libraries of the crate under test next to the test executables.
        let executable = std::env::current_exe().expect("the test executable has a path");
        let lib_dir = executable.parent().expect("the test executable is in a folder");
        let folder = tempfile::tempdir().expect("a temporary folder can be created");
        let prefix = folder.path().join("prefix");

        let output = run(Command::new("bash")
            .arg(repo_root().join("scripts/install-capi.sh"))
            .arg("--lib-dir")
            .arg(lib_dir)
            .arg(&prefix));
        check_success(&output, "scripts/install-capi.sh");
        Installation { prefix, _folder: folder }
    })
}

/// Compiles the C test program `source` (relative to the repository root) with `link_flags` into
/// `output`.
fn build_test_program(installation: &Installation, source: &str, output: &Path, link_flags: &[String]) {
    let mut command = installation.compiler("gcc");
    command
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g", "-pthread", "-o"])
        .arg(output)
        .arg(repo_root().join(source))
        .args(link_flags)
        .arg("-lm");
    check_success(&run(&mut command), &format!("compiling {source}"));
}

/// Builds the C test program `source` against the shared library, runs it under valgrind with
/// `arguments` followed by a scratch folder, and checks that every check passed with no valgrind
/// error and no definite leak.
fn run_under_valgrind(source: &str, arguments: &[PathBuf]) {
    let installation = installation();
    let folder = tempfile::tempdir().unwrap();
    let program = folder.path().join("test_program");
    let mut link_flags = vec![format!("-Wl,-rpath,{}", installation.lib_dir().display())];
    link_flags.extend(installation.pkg_config(&["--libs"]));
    build_test_program(installation, source, &program, &link_flags);

    let scratch = folder.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    // Only definite leaks count as errors: the candle CPU thread pool and the threads' local
    // buffers are still reachable or "possibly lost" at exit, which is no leak per call.
    let output = run(Command::new("valgrind")
        .args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--show-leak-kinds=definite",
            "--errors-for-leak-kinds=definite",
        ])
        .arg(&program)
        .args(arguments)
        .arg(&scratch));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    let summary = lines_with(
        &stderr,
        &["ERROR SUMMARY", "definitely lost", "indirectly lost", "possibly lost", "still reachable"],
    );
    println!("{}\n{}", stdout.trim_end(), summary.join("\n"));
    check_success(&output, &format!("{source} under valgrind"));
    assert!(stdout.contains(" passed, 0 failed"), "{source} reported failures:\n{stdout}\n{stderr}");
    assert!(stderr.contains("ERROR SUMMARY: 0 errors"), "valgrind found errors:\n{stderr}");
    assert!(
        stderr.contains("definitely lost: 0 bytes") || stderr.contains("All heap blocks were freed"),
        "valgrind found definite leaks:\n{stderr}"
    );
}

/// Returns the lines of `text` that contain any of `needles`.
fn lines_with<'a>(text: &'a str, needles: &[&str]) -> Vec<&'a str> {
    text.lines().filter(|line| needles.iter().any(|needle| line.contains(needle))).collect()
}

#[test]
fn header_compiles_as_c_and_cxx() {
    let installation = installation();
    let folder = tempfile::tempdir().unwrap();
    let source = repo_root().join("tests/c/header_check.c");
    let rpath = format!("-Wl,-rpath,{}", installation.lib_dir().display());

    for (compiler, language, standard) in
        [("gcc", "c", "c99"), ("gcc", "c", "c11"), ("g++", "c++", "c++11"), ("g++", "c++", "c++17")]
    {
        let program = folder.path().join(format!("header_check_{standard}"));
        let mut command = installation.compiler(compiler);
        command
            .arg(format!("-std={standard}"))
            .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-x", language])
            .arg(&source)
            .args(["-x", "none", "-o"])
            .arg(&program)
            .arg(&rpath)
            .args(installation.pkg_config(&["--libs"]));
        check_success(&run(&mut command), &format!("compiling tests/c/header_check.c as {standard}"));
        check_success(&run(&mut Command::new(&program)), &format!("header_check built as {standard}"));
    }
}

#[test]
fn c_tests_pass_under_valgrind() {
    run_under_valgrind("tests/c/test_capi.c", &[training_image()]);
}

#[test]
fn stylegan2_c_tests_pass_under_valgrind() {
    run_under_valgrind("tests/c/test_stylegan2.c", &[stylegan2_checkpoint()]);
}

#[test]
fn c_tests_pass_with_static_library() {
    let installation = installation();
    let folder = tempfile::tempdir().unwrap();
    let program = folder.path().join("test_capi_static");

    // `pkg-config --static --libs` names -lpegan, which the linker resolves to the shared library
    // when both are installed. So the archive is linked by its path, with the private system libraries.
    let mut link_flags = vec![installation.lib_dir().join("libpegan.a").display().to_string()];
    link_flags
        .extend(installation.pkg_config(&["--static", "--libs-only-l"]).into_iter().filter(|flag| flag != "-lpegan"));
    build_test_program(installation, "tests/c/test_capi.c", &program, &link_flags);

    let scratch = folder.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let output = run(Command::new(&program).arg(training_image()).arg(&scratch));
    check_success(&output, "test_capi linked statically");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");

    // The program must not depend on libpegan.so.
    let ldd = run(Command::new("ldd").arg(&program));
    let dependencies = String::from_utf8_lossy(&ldd.stdout);
    assert!(!dependencies.contains("libpegan"), "the static build still loads libpegan:\n{dependencies}");
}

#[test]
fn examples_build_and_run() {
    let installation = installation();
    let folder = tempfile::tempdir().unwrap();
    let build_dir = folder.path().join("build");

    let output = run(Command::new("make")
        .arg("-C")
        .arg(repo_root().join("examples/c"))
        .arg(format!("BUILD_DIR={}", build_dir.display()))
        .arg("CFLAGS=-O2 -Wall -Wextra -Werror -pedantic")
        .env("PKG_CONFIG_PATH", installation.pkg_config_path()));
    check_success(&output, "make -C examples/c");

    let model = folder.path().join("balloons.pegan");
    let output =
        run(Command::new(build_dir.join("train")).arg(training_image()).arg(&model).args(["csg", "tiny", "7"]));
    check_success(&output, "examples/c/train");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("stage 1/"), "no progress output:\n{stdout}");
    assert!(stdout.contains("finished after"), "no stage-finished output:\n{stdout}");
    assert!(model.is_file(), "train wrote no model file");

    let image = folder.path().join("wide.png");
    let output = run(Command::new(build_dir.join("retarget")).arg(&model).args(["50", "20"]).arg(&image).arg("3"));
    check_success(&output, "examples/c/retarget");
    let written = pegan_core::image::load_image(&image).expect("retarget writes a readable PNG");
    assert_eq!((written.width, written.height), (50, 20));

    let output = run(Command::new(build_dir.join("retarget"))
        .arg(folder.path().join("missing.pegan"))
        .args(["50", "20"])
        .arg(&image));
    assert!(!output.status.success(), "retarget succeeded on a missing model");
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.pegan"));

    let image = folder.path().join("stylegan2.png");
    let output = run(Command::new(build_dir.join("stylegan2_sample"))
        .arg(stylegan2_checkpoint())
        .arg(&image)
        .args(["48", "40", "3", "0.7"]));
    check_success(&output, "examples/c/stylegan2_sample");
    let written = pegan_core::image::load_image(&image).expect("stylegan2_sample writes a readable PNG");
    assert_eq!((written.width, written.height), (48, 40));

    let output = run(Command::new(build_dir.join("stylegan2_sample"))
        .arg(stylegan2_checkpoint())
        .arg(&image)
        .args(["50", "40"]));
    assert!(!output.status.success(), "stylegan2_sample succeeded at an invalid width");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("width 50"), "the error does not name width 50:\n{stderr}");
    assert!(stderr.contains("48"), "the error does not name the valid width 48:\n{stderr}");
}
