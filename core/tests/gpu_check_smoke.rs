//! Runs the GPU check program's smoke mode with the CPU as target and reference, so that CI exercises
//! every section of `core/examples/gpu_check` that a GPU machine runs (scripts/gpu-check.sh).

#[allow(dead_code)]
#[path = "../examples/gpu_check/check.rs"]
mod check;

use std::path::Path;

use candle_core::Device;

#[test]
fn smoke_check_passes_on_cpu() {
    let folder = tempfile::tempdir().unwrap();
    let options = check::CheckOptions {
        smoke: true,
        timings: true,
        timing_runs: 1,
        image: Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/balloons.png"),
        work_dir: folder.path().to_path_buf(),
        seed: 0,
    };
    let report = check::run(&options, &Device::Cpu, &Device::Cpu);

    assert!(report.failures.is_empty(), "failed sections: {:?}", report.failures);
    let failed: Vec<_> = report.parity.iter().filter(|p| !p.passed).collect();
    assert!(failed.is_empty(), "parity outside tolerance: {failed:?}");
    assert!(report.training.iter().all(|t| t.all_finite), "{:?}", report.training);
    assert!(report.passed);

    let names: Vec<&str> = report.parity.iter().map(|p| p.name.as_str()).collect();
    for expected in ["singan csg retarget 2x width", "singan csg discriminator gradients", "stylegan2 tiny R1 penalty"]
    {
        assert!(names.iter().any(|n| n.starts_with(expected)), "no '{expected}' in {names:?}");
    }
    let timings: Vec<&str> = report.timings.iter().map(|t| t.name.as_str()).collect();
    for expected in ["singan_generate_1x", "singan_generate_4x", "singan_train_iteration_finest"] {
        assert!(timings.contains(&expected), "no timing '{expected}' in {timings:?}");
    }
    assert_eq!(timings.iter().filter(|t| t.starts_with("stylegan2_forward_")).count(), 4, "{timings:?}");

    report.write(folder.path()).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["passed"], serde_json::Value::Bool(true));
    let markdown = std::fs::read_to_string(folder.path().join("report.md")).unwrap();
    assert!(markdown.contains("Result: **passed**"), "{markdown}");
}
