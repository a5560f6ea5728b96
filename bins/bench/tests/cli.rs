//! `bench` as a user runs it, on the `micro` preset so it takes seconds: without PyTorch it measures
//! zerolm in f32 and bf16, marks the PyTorch configurations as not run and reports model FLOPs per
//! second and MFU; a bad kernel choice, a device the build lacks and a bad peak are refused.

use zerolm_testkit::{run, Run};

const SMALL: &[&str] = &[
    "--preset",
    "micro",
    "--vocab-size",
    "64",
    "--batch-size",
    "2",
    "--seq-len",
    "8",
    "--steps",
    "1",
    "--warmup",
    "0",
];

fn bench(extra: &[&str]) -> Run {
    let args: Vec<&str> = SMALL.iter().chain(extra).copied().collect();
    run(env!("CARGO_BIN_EXE_bench"), &args)
}

#[test]
fn rounds_measure_both_precisions_and_print_every_configuration() {
    let r = bench(&["--rounds", "1", "--python", "none", "--peak-tflops", "0.5"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for row in [
        "| zerolm f32 |",
        "| zerolm bf16 |",
        "| PyTorch eager f32 | - | - |",
        "| PyTorch compile bf16 autocast | - | - |",
        "peak: 0.5000 TFLOP/s (--peak-tflops)",
        "| PyTorch eager f32 | - | - | - | - |",
    ] {
        assert!(r.stdout.contains(row), "no `{row}` in:\n{}", r.stdout);
    }
    assert!(r.stderr.contains("PyTorch side skipped"), "{}", r.stderr);
    // zerolm's rows of the utilisation table: four numbers, the last two percentages.
    let utilisation: Vec<&str> = (r.stdout.lines())
        .skip_while(|l| !l.starts_with("| configuration | train TFLOP/s"))
        .filter(|l| l.starts_with("| zerolm"))
        .collect();
    assert_eq!(utilisation.len(), 2, "{}", r.stdout);
    for row in utilisation {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        for cell in &cells[1..] {
            let number = cell.trim_end_matches('%').parse::<f64>();
            assert!(number.is_ok_and(|x| x > 0.0), "{row}");
        }
        assert!(cells[3].ends_with('%') && cells[4].ends_with('%'), "{row}");
    }
}

#[test]
fn a_device_this_build_lacks_and_a_bad_peak_are_refused() {
    bench(&["--rounds", "1", "--python", "none", "--device", "cuda"])
        .assert_user_error("--device cuda: this build has no CUDA support");
    bench(&["--worker", "train", "--device", "cuda:1"])
        .assert_user_error("--device cuda:1: this build has no CUDA support");
    bench(&["--rounds", "1", "--python", "none", "--device", "tpu"])
        .assert_user_error("--device tpu: expected cpu, cuda or cuda:N");
    bench(&["--rounds", "1", "--python", "none", "--peak-tflops", "0"])
        .assert_user_error("--peak-tflops 0: expected a positive number");
}

#[test]
fn the_portable_kernel_runs_and_an_unknown_kernel_is_refused() {
    let portable = Run::of(
        std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
            .args(SMALL)
            .args(["--worker", "train", "--precision", "bf16"])
            .env("ZEROLM_BF16_KERNEL", "portable"),
    );
    assert_eq!(portable.code, 0, "{}", portable.stderr);
    assert!(portable.stdout.contains("step_s"), "{}", portable.stdout);
    let bad = Run::of(
        std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
            .args(SMALL)
            .args(["--worker", "train", "--precision", "bf16"])
            .env("ZEROLM_BF16_KERNEL", "amx"),
    );
    bad.assert_user_error("ZEROLM_BF16_KERNEL=amx");
}
