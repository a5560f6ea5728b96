//! A pipeline stage with `ranks: 2` runs through `mpirun -np 2` (the `mpi` build of `pipeline` and the
//! stages) and gives the weights of one rank with grad-accum 2; the rank count is part of the stage's
//! identity, so changing it reruns the stage. Under the Slurm executor the stage is one job of two tasks
//! whose binary `srun` starts, with the same weights.

use std::process::Command;

use zerolm_data::formats::Kind;
use zerolm_testkit::ranks::{mpi_binaries, mpirun, one_job, worst_weight_difference};
use zerolm_testkit::{fixtures, repo, token_file, workdir, Run};

const PIPELINE: &str = r#"stages:
  pretrain:
    cmd: pretrain
    ranks: 2
    args:
      preset: micro
      tokenizer: TOK
      input: train.parquet
      out: runs/pretrain
      max-steps: 12
      batch-size: 4
      max-len: 32
      lr: 3e-3
      threads: 1
      no-progress: true
      grad-accum: ACCUM
"#;

#[test]
fn a_stage_with_ranks_runs_through_mpirun_like_one_rank_with_grad_accum() {
    let _job = one_job();
    let dir = workdir("pipeline-ranks", "two");
    token_file(
        Kind::Pretrain,
        &[repo().join("data/pretrain.jsonl")],
        &dir.join("train.parquet"),
    );
    let tok = fixtures().join("tokenizer").display().to_string();
    let yaml = PIPELINE.replace("TOK", &tok);
    std::fs::write(dir.join("two.yaml"), yaml.replace("ACCUM", "1")).unwrap();
    std::fs::write(
        dir.join("one.yaml"),
        yaml.replace("ranks: 2", "ranks: 1")
            .replace("ACCUM", "2")
            .replace("runs/", "one/"),
    )
    .unwrap();
    let pipeline = |args: &[&str]| {
        // mpirun's own settings for tests (root, loopback) reach the stage's mpirun through the environment
        let env = mpirun();
        let mut cmd = Command::new(mpi_binaries().join("pipeline"));
        cmd.current_dir(&dir).args(args);
        for (k, v) in env.get_envs() {
            cmd.env(k, v.unwrap());
        }
        Run::of(&mut cmd)
    };
    let dry = pipeline(&["run", "two.yaml", "--dry-run"]);
    dry.assert_ok();
    assert!(
        dry.stderr.contains("$ mpirun -np 2 pretrain"),
        "{}",
        dry.stderr
    );
    let two = pipeline(&["run", "two.yaml"]);
    two.assert_ok();
    assert!(
        two.stderr.contains("$ mpirun -np 2 pretrain"),
        "{}",
        two.stderr
    );
    pipeline(&["run", "one.yaml"]).assert_ok();
    let w = worst_weight_difference(&dir.join("runs/pretrain"), &dir.join("one/pretrain"));
    assert_eq!(
        w, 0.0,
        "2 ranks through the pipeline = 1 rank with grad_accum 2"
    );
    let again = pipeline(&["run", "two.yaml"]);
    again.assert_ok();
    assert!(
        !again.stderr.contains("$ mpirun"),
        "up to date: {}",
        again.stderr
    );
    // Through Slurm: one job of 2 tasks, the binary started by srun; the same weights.
    zerolm_testkit::slurm::require();
    let on_slurm = [
        "run",
        "two.yaml",
        "--executor",
        "slurm",
        "--force",
        "pretrain",
    ];
    let dry = pipeline(&[&on_slurm[..], &["--dry-run"]].concat());
    dry.assert_ok();
    for needle in ["--ntasks=2 --cpus-per-task=1", "(the job runs: srun /"] {
        assert!(dry.stderr.contains(needle), "{needle}: {}", dry.stderr);
    }
    pipeline(&on_slurm).assert_ok();
    let w = worst_weight_difference(&dir.join("runs/pretrain"), &dir.join("one/pretrain"));
    assert_eq!(w, 0.0, "2 ranks under srun = 1 rank with grad_accum 2");
    let rescaled = pipeline(&[
        "run",
        "two.yaml",
        "--set",
        "pretrain.ranks=1",
        "--set",
        "pretrain.grad-accum=2",
    ]);
    rescaled.assert_ok();
    assert!(
        rescaled.stderr.contains("$ pretrain"),
        "another rank count reruns: {}",
        rescaled.stderr
    );
}
