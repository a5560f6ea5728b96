//! `pipeline` as a user runs it, on a micro-sized copy of the shipped flow (tokenizer → tokenize →
//! pretrain → SFT → ref-logprobs → DPO → report): a full run; an immediate rerun runs nothing; a touched
//! input reruns nothing, a changed one exactly the affected stages; `--set` reruns from that stage; a
//! pipeline killed during pretraining resumes to the same final weights as an uninterrupted run; a failing
//! stage stops the run and reports; a held lock refuses a second run; every validation error names the
//! file, line and stage; the committed Makefile.stages is what `pipeline makefile` writes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use zerolm_testkit::pipeline::{project as new_project, ran, set, ALL};
use zerolm_testkit::{has_checkpoint, kill_when, repo, workdir, Run};

fn project(name: &str) -> PathBuf {
    new_project("pipeline", name)
}

/// The stage binaries sit next to `pipeline`; build any that are missing (e.g. under `cargo test -p`).
fn binaries() -> PathBuf {
    zerolm_testkit::binaries(
        env!("CARGO_BIN_EXE_pipeline"),
        &["tokenize", "pretrain", "sft", "ref-logprobs", "dpo", "eval"],
    )
}

fn pipeline_in(cwd: &Path, args: &[&str]) -> Run {
    binaries();
    Run::of(
        Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .args(args)
            .current_dir(cwd),
    )
}

fn run(dir: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["run", "pipes/tiny.yaml", "--quiet"];
    args.extend_from_slice(extra);
    pipeline_in(dir, &args)
}

fn weights(dir: &Path, stage: &str) -> Vec<u8> {
    std::fs::read(dir.join("runs").join(stage).join("model/model.safetensors")).unwrap()
}

#[test]
fn full_run_caching_set_kill_resume_and_failure() {
    // 1. A full run runs every stage and writes the report.
    let a = project("a");
    let r = run(&a, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ran(&r), set(&ALL), "{}", r.stderr);
    let report = std::fs::read_to_string(a.join("runs/report/index.html")).unwrap();
    assert!(
        report.contains("<svg") && report.contains("pretrain — loss"),
        "report lacks plots"
    );
    let summary = std::fs::read_to_string(a.join("runs/report/summary.md")).unwrap();
    assert!(
        summary.contains("held-out answer accuracy (SFT's questions), after pretrain → after SFT"),
        "{summary}"
    );
    assert!(summary.contains("| dpo |"), "{summary}");
    assert!(r.stderr.contains("final model: "), "{}", r.stderr);

    // 2. An immediate rerun runs nothing, from any working directory.
    let r = run(&a, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(ran(&r).is_empty(), "{}", r.stderr);
    assert!(r.stderr.contains("0 ran, 10 up to date"), "{}", r.stderr);
    let r = pipeline_in(&a.join("pipes"), &["status", "tiny.yaml"]);
    assert!(
        r.stdout.contains("10 of 10 stage(s) up to date"),
        "{}",
        r.stdout
    );

    // 3. A kill -9 of the pipeline during pretraining (which takes the stage down with it), then the
    //    same command: it takes over the stale lock, resumes pretraining from its checkpoint and ends
    //    with the uninterrupted run's weights, bit for bit.
    let b = project("b");
    let r = run(&b, &["--until", "tok-pretrain-eval"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let ckpts = b.join("runs/pretrain/checkpoints");
    kill_when(
        Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .args(["run", "pipes/tiny.yaml", "--quiet"])
            .current_dir(&b),
        || has_checkpoint(&ckpts),
    );
    assert!(
        !b.join("runs/pretrain/model").exists(),
        "pretraining finished before the kill; the test would prove nothing"
    );
    // The stage died with the pipeline: nothing writes behind the rerun's back.
    std::thread::sleep(Duration::from_millis(200));
    let before = std::fs::read_dir(&ckpts).unwrap().count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read_dir(&ckpts).unwrap().count(), before);
    let r = run(&b, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("taking over the stale lock"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("pretrain: running — it was interrupted; it resumes"),
        "{}",
        r.stderr
    );
    assert_eq!(
        ran(&r),
        set(&["pretrain", "sft", "ref", "dpo", "report"]),
        "{}",
        r.stderr
    );
    assert!(weights(&a, "pretrain") == weights(&b, "pretrain"));
    assert!(
        weights(&a, "dpo") == weights(&b, "dpo"),
        "final weights differ from the uninterrupted run's"
    );

    // 4. Touching an input (same content) reruns nothing; changing it reruns exactly what depends on it.
    let sft_data = a.join("data/sft.jsonl");
    let text = std::fs::read_to_string(&sft_data).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&sft_data, &text).unwrap();
    let r = run(&a, &[]);
    assert!(ran(&r).is_empty(), "{}", r.stderr);
    let fewer: Vec<&str> = text.lines().skip(1).collect();
    std::fs::write(&sft_data, fewer.join("\n") + "\n").unwrap();
    let r = pipeline_in(&a, &["status", "pipes/tiny.yaml"]);
    assert!(
        r.stdout.contains("dep `../data/sft.jsonl` changed"),
        "{}",
        r.stdout
    );
    let r = run(&a, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        ran(&r),
        set(&["tok-sft", "sft", "ref", "dpo", "report"]),
        "{}",
        r.stderr
    );

    // 5. --set changes a stage's arguments: it and everything downstream rerun; upstream does not.
    let r = run(&a, &["--set", "sft.lr=2e-3"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        ran(&r),
        set(&["sft", "ref", "dpo", "report"]),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("+`--lr 0.002`"), "{}", r.stderr);

    // 6. A failing stage: the run stops there, says which stage, its exit code and its log's tail;
    //    downstream stages do not run and the failure is not recorded as done.
    let r = run(&a, &["--set", "sft.max-steps=lots"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("stage `sft` failed (exit code 1)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("invalid value 'lots'"), "{}", r.stderr);
    assert!(r.stderr.contains("logs/sft.log"), "{}", r.stderr);
    assert_eq!(ran(&r), set(&["sft"]), "{}", r.stderr);
    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("runs/pipeline/lock.json")).unwrap())
            .unwrap();
    assert!(lock["stages"].get("sft").is_none());
    assert!(lock["stages"].get("pretrain").is_some());
    let log = std::fs::read_to_string(a.join("runs/pipeline/logs/sft.log")).unwrap();
    assert!(log.contains("invalid value 'lots'"));

    // 7. A live holder of the lock refuses a second run.
    let mut holder = Command::new("sleep").arg("30").spawn().unwrap();
    std::fs::write(
        a.join("runs/pipeline/pid.lock"),
        format!("{} 0\n", holder.id()),
    )
    .unwrap();
    let r = run(&a, &[]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("another `pipeline run` (pid {})", holder.id())),
        "{}",
        r.stderr
    );

    // 8. --only / --dry-run.
    let r = run(&a, &["--dry-run"]);
    assert!(
        r.stderr.contains("sft              would run"),
        "{}",
        r.stderr
    );
    assert!(ran(&r).is_empty());
    let r = run(&a, &["--only", "report"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("stage `report`: dep `../runs/sft` does not exist"),
        "{}",
        r.stderr
    );

    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

fn invalid(name: &str, yaml: &str) -> String {
    let dir = project(name);
    std::fs::write(dir.join("pipes/bad.yaml"), yaml).unwrap();
    let r = pipeline_in(&dir, &["run", "pipes/bad.yaml"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        !dir.join("pipes/.zerolm").exists(),
        "an invalid pipeline started"
    );
    let _ = std::fs::remove_dir_all(&dir);
    r.stderr
}

#[test]
fn validation_errors_name_the_file_line_and_stage() {
    let e = invalid(
        "unknown",
        "stages:\n  a:\n    cmd: tokenize\n    argz: {}\n",
    );
    assert!(
        e.contains("pipes/bad.yaml:4:") && e.contains("unknown field `argz`"),
        "{e}"
    );
    let e = invalid(
        "cycle",
        "stages:\n  a:\n    cmd: tokenize\n    args: {input: b.txt, out: a.txt}\n  b:\n    cmd: tokenize\n    args: {input: a.txt, out: b.txt}\n",
    );
    assert!(
        e.contains("pipes/bad.yaml:2: stage `a`: dependency cycle: a ← b ← a"),
        "{e}"
    );
    let e = invalid(
        "missing",
        "stages:\n  a:\n    cmd: tokenize\n    args: {input: ../data/none.jsonl}\n",
    );
    assert!(
        e.contains("pipes/bad.yaml:2: stage `a`: dep `../data/none.jsonl`")
            && e.contains("does not exist and no stage produces it"),
        "{e}"
    );
    let e = invalid(
        "twice",
        "stages:\n  a:\n    cmd: tokenize\n    args: {out: x}\n  b:\n    cmd: tokenize\n    args: {out: x}\n",
    );
    assert!(
        e.contains("pipes/bad.yaml:5: stage `b`: output `x` is also written by stage `a`"),
        "{e}"
    );
    let e = invalid("binary", "stages:\n  a:\n    cmd: no-such-binary-zerolm\n");
    assert!(
        e.contains(
            "pipes/bad.yaml:2: stage `a`: binary `no-such-binary-zerolm` is neither next to"
        ),
        "{e}"
    );
    let dir = project("setx");
    let r = pipeline_in(&dir, &["run", "pipes/tiny.yaml", "--set", "nope.lr=1"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("--set nope.lr=1: no stage `nope`"),
        "{}",
        r.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shipped_pipelines_validate_and_the_makefile_is_generated_from_full_yaml() {
    let r = pipeline_in(
        &repo(),
        &[
            "makefile",
            "pipelines/full.yaml",
            "--bin",
            "$(CURDIR)/target/release",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let committed = std::fs::read_to_string(repo().join("Makefile.stages")).unwrap();
    assert!(
        r.stdout == committed,
        "Makefile.stages is out of date: regenerate it with `target/release/pipeline makefile pipelines/full.yaml > Makefile.stages`"
    );
    assert!(committed.contains("\tcd pipelines && $(BIN)/sft --model ../runs/pretrain/model"));
    let r = pipeline_in(&repo(), &["dag", "pipelines/full.yaml", "--format", "dot"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("\"ref-train\" -> \"dpo\""),
        "{}",
        r.stdout
    );
    // minimind.yaml points at user-supplied MiniMind files: point its vars at the shipped ones.
    let r = pipeline_in(
        &repo(),
        &[
            "dag",
            "pipelines/minimind.yaml",
            "--set",
            "vars.pretrain_data=../data/pretrain.jsonl",
            "--set",
            "vars.sft_data=../data/sft.jsonl",
            "--set",
            "vars.dpo_data=../data/dpo.jsonl",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("--preset minimind2"), "{}", r.stdout);
    let r = pipeline_in(&repo(), &["dag", "pipelines/minimind.yaml"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("does not exist and no stage produces it"),
        "{}",
        r.stderr
    );
}

/// Two `eval` stages of the committed micro model and a report: the report shows each task's metrics in
/// a column per stage; a changed task file reruns the stages that read it, and a results file another
/// program wrote is refused by the report.
#[test]
fn eval_stages_feed_the_report_and_rerun_when_a_task_file_changes() {
    let dir = workdir("pipeline", "evals");
    let model = zerolm_testkit::fixtures().join("trl/model");
    let data = repo().join("data");
    for f in ["facts_mc_en.jsonl", "pretrain_eval.jsonl"] {
        std::fs::copy(data.join(f), dir.join(f)).unwrap();
    }
    let yaml = format!(
        "vars: {{model: {m}}}
stages:
  eval-a:
    cmd: eval
    args: {{model: '${{vars.model}}', task: [mc:facts_mc_en.jsonl, pretrain_eval.jsonl], out: runs/a.json, limit: 20, quiet: true}}
  eval-b:
    cmd: eval
    args: {{model: '${{vars.model}}', task: [pretrain_eval.jsonl], out: runs/b.json, limit: 20, quiet: true}}
  report:
    cmd: pipeline report runs/pipeline
    args: {{out: runs/report}}
    deps: ['${{stages.eval-a.outs[0]}}', '${{stages.eval-b.outs[0]}}']
run_dir: runs/pipeline
",
        m = model.display()
    );
    std::fs::write(dir.join("p.yaml"), yaml).unwrap();
    let r = pipeline_in(&dir, &["run", "p.yaml", "--quiet"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let summary = std::fs::read_to_string(dir.join("runs/report/summary.md")).unwrap();
    assert!(
        summary.contains("| task · metric | eval-a | eval-b |"),
        "{summary}"
    );
    assert!(summary.contains("| facts_mc_en · acc | 0."), "{summary}");
    assert!(
        summary.contains("| pretrain_eval · bits_per_byte | "),
        "{summary}"
    );

    let facts = dir.join("facts_mc_en.jsonl");
    let text = std::fs::read_to_string(&facts).unwrap();
    std::fs::write(
        &facts,
        text.lines().skip(1).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    let r = pipeline_in(&dir, &["run", "p.yaml", "--quiet"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ran(&r), set(&["eval-a", "report"]), "{}", r.stderr);

    std::fs::write(dir.join("runs/b.json"), "{\"stage\": \"dpo\"}").unwrap();
    let r = pipeline_in(&dir, &["report", "runs/pipeline", "--out", "runs/r2"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("b.json: not an `eval` results file"),
        "{}",
        r.stderr
    );
}

const NAPS: &str = "stages:
  a: {cmd: /bin/sleep 1, resources: {cpus: CPUS}}
  b: {cmd: /bin/sleep 1, resources: {cpus: CPUS}}
";

/// Whether the two naps of [`NAPS`] ran at once: the second started before the first was done.
fn naps_overlapped(stderr: &str) -> bool {
    let starts: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with('[') && (l.contains(": running") || l.contains(": done")))
        .collect();
    starts.len() == 4 && starts[1].contains(": running")
}

#[test]
fn jobs_run_side_by_side_within_the_core_budget() {
    let dir = workdir("pipeline", "naps");
    for (cpus, overlap) in [("1", true), ("2", false)] {
        std::fs::write(dir.join("naps.yaml"), NAPS.replace("CPUS", cpus)).unwrap();
        let r = pipeline_in(
            &dir,
            &[
                "run",
                "naps.yaml",
                "--jobs",
                "2",
                "--cores",
                "2",
                "--force-all",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(
            naps_overlapped(&r.stderr),
            overlap,
            "cpus {cpus}: {}",
            r.stderr
        );
    }
    pipeline_in(&dir, &["run", "naps.yaml", "--jobs", "0"])
        .assert_user_error("--jobs and --cores take a whole number ≥ 1");
    let _ = std::fs::remove_dir_all(&dir);
}
