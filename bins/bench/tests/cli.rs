//! `bench` as a user runs it, on the `micro` preset so it takes seconds: without PyTorch it measures
//! zerolm in f32 and bf16 and marks the PyTorch configurations as not run; a bad kernel choice is refused.

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
    let r = bench(&["--rounds", "1", "--python", "none"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for row in [
        "| zerolm f32 |",
        "| zerolm bf16 |",
        "| PyTorch eager f32 | - | - |",
        "| PyTorch compile bf16 autocast | - | - |",
    ] {
        assert!(r.stdout.contains(row), "no `{row}` in:\n{}", r.stdout);
    }
    assert!(r.stderr.contains("PyTorch side skipped"), "{}", r.stderr);
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
