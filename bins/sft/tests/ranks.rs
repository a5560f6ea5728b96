//! `sft` on two ranks (`mpirun -np 2`, the `mpi` build) gives the curve, eval and weights of one rank
//! with grad-accum 2, and writes once.

use std::path::Path;

use zerolm_data::formats::Kind;
use zerolm_testkit::ranks::{
    mpi_binaries, one_job, run_ranks, worst_metric_difference, worst_weight_difference,
};
use zerolm_testkit::{micro_model, repo, strings, token_file, workdir};

fn args(model: &Path, train: &Path, eval: &Path, out: &Path) -> Vec<String> {
    let mut a = strings(&[
        "--threads",
        "1",
        "--batch-size",
        "4",
        "--lr",
        "0.003",
        "--max-steps",
        "20",
        "--no-progress",
        "--set",
        "eval_every=10",
        "--set",
        "eval_batches=3",
        "--set",
        "log_every=1",
    ]);
    for (flag, p) in [
        ("--model", model),
        ("--input", train),
        ("--eval-input", eval),
        ("--out", out),
    ] {
        a.extend([flag.to_string(), p.display().to_string()]);
    }
    a
}

#[test]
fn two_ranks_fine_tune_like_one_rank_with_grad_accum_two() {
    let _job = one_job();
    let dir = workdir("sft-ranks", "equal");
    let enc = |input: &str| {
        let out = dir.join(input.replace(".jsonl", ".parquet"));
        token_file(Kind::Sft, &[repo().join("data").join(input)], &out)
    };
    let (train, eval) = (enc("sft.jsonl"), enc("sft_eval.jsonl"));
    let model = micro_model(&dir.join("start"), 1);
    let (two, one) = (dir.join("two"), dir.join("one"));
    let r = run_ranks(2, "sft", &args(&model, &train, &eval, &two));
    r.assert_ok();
    let mut accum = args(&model, &train, &eval, &one);
    accum.extend(strings(&["--grad-accum", "2"]));
    zerolm_testkit::run(mpi_binaries().join("sft").to_str().unwrap(), &accum).assert_ok();
    for key in ["loss", "grad_norm", "tokens", "eval_loss"] {
        let d = worst_metric_difference(&two, &one, key);
        eprintln!("sft, 2 ranks vs grad_accum 2: worst relative {key} difference {d:e}");
        assert!(d <= 1e-6, "{key} differs by {d:e}");
    }
    let w = worst_weight_difference(&two, &one);
    eprintln!("sft, 2 ranks vs grad_accum 2: worst relative weight difference {w:e}");
    assert!(w <= 1e-6, "weights differ by {w:e}");
    assert_eq!(
        zerolm_testkit::train_steps(&two.join("metrics.jsonl")),
        (1..=20).collect::<Vec<u64>>()
    );
    let summaries = r.stderr.matches("held-out answers").count();
    assert_eq!(summaries, 1, "one summary, from rank 0: {}", r.stderr);
}
