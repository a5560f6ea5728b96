//! `ref-logprobs` and `dpo` on two ranks (`mpirun -np 2`, the `mpi` build): the reference cache is the
//! same file as one rank's, and DPO gives the curve, metrics and weights of one rank with grad-accum 2.

use zerolm_data::formats::Kind;
use zerolm_testkit::ranks::{
    mpi_binaries, one_job, run_ranks, worst_metric_difference, worst_weight_difference,
};
use zerolm_testkit::{micro_model, repo, strings, token_file, workdir};

#[test]
fn two_ranks_cache_and_train_like_one_rank() {
    let _job = one_job();
    let dir = workdir("dpo-ranks", "equal");
    let path = |name: &str| dir.join(name).display().to_string();
    let train = token_file(
        Kind::Dpo,
        &[repo().join("data/dpo.jsonl")],
        &dir.join("dpo.parquet"),
    );
    let model = micro_model(&dir.join("start"), 1);
    let cache_args = |out: &str| {
        let mut a = strings(&[
            "--threads",
            "1",
            "--max-len",
            "256",
            "--batch-size",
            "16",
            "--no-progress",
        ]);
        a.extend(["--model".into(), model.display().to_string()]);
        a.extend([
            "--input".into(),
            train.display().to_string(),
            "--out".into(),
            path(out),
        ]);
        a
    };
    // the same command line (it is recorded in the cache) on 1 rank, then on 2
    let one = mpi_binaries().join("ref-logprobs");
    zerolm_testkit::run(one.to_str().unwrap(), &cache_args("ref.parquet")).assert_ok();
    std::fs::rename(dir.join("ref.parquet"), dir.join("ref1.parquet")).unwrap();
    run_ranks(2, "ref-logprobs", &cache_args("ref.parquet")).assert_ok();
    let (a, b) = (
        std::fs::read(dir.join("ref1.parquet")).unwrap(),
        std::fs::read(dir.join("ref.parquet")).unwrap(),
    );
    assert!(a == b, "the 2-rank cache is not the 1-rank cache's bytes");
    assert!(!dir.join("ref.parquet.parts").exists());

    let dpo_args = |out: &str| {
        let mut a = strings(&[
            "--threads",
            "1",
            "--batch-size",
            "4",
            "--max-len",
            "256",
            "--lr",
            "0.001",
            "--max-steps",
            "20",
            "--no-progress",
            "--set",
            "log_every=1",
        ]);
        for (flag, p) in [
            ("--model", model.display().to_string()),
            ("--input", train.display().to_string()),
            ("--ref-cache", path("ref1.parquet")),
            ("--out", path(out)),
        ] {
            a.extend([flag.to_string(), p]);
        }
        a
    };
    run_ranks(2, "dpo", &dpo_args("two")).assert_ok();
    let mut accum = dpo_args("one");
    accum.extend(strings(&["--grad-accum", "2"]));
    zerolm_testkit::run(mpi_binaries().join("dpo").to_str().unwrap(), &accum).assert_ok();
    let (two, one) = (dir.join("two"), dir.join("one"));
    for key in [
        "loss",
        "grad_norm",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "tokens",
    ] {
        let d = worst_metric_difference(&two, &one, key);
        eprintln!("dpo, 2 ranks vs grad_accum 2: worst relative {key} difference {d:e}");
        assert!(d <= 1e-6, "{key} differs by {d:e}");
    }
    let w = worst_weight_difference(&two, &one);
    eprintln!("dpo, 2 ranks vs grad_accum 2: worst relative weight difference {w:e}");
    assert!(w <= 1e-6, "weights differ by {w:e}");
}
