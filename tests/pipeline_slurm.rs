//! `pipeline run` on a real Slurm (the one-node cluster of tools/slurm-local.sh, which .ci/run starts)
//! and with several local stages at once: the micro flow through Slurm writes the same artifacts, byte for
//! byte, as the local run, and `--jobs 2` the same as `--jobs 1`; a runner killed with SIGKILL while its
//! pretraining job runs re-attaches to that job when started again (no second submission); an up-to-date
//! rerun asks Slurm nothing; a failing job and a job past its time limit are named with their exit status
//! and log; SIGTERM cancels the run's Slurm jobs and stops its local stages; a job left running under other
//! settings is cancelled before its stage starts afresh.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zerolm_testkit::pipeline::{artifacts, assert_same_artifacts, project, ran, set, ALL};
use zerolm_testkit::slurm::{job_state, recorded_job, require, Wrappers};
use zerolm_testkit::{has_checkpoint, kill_when, Run};

const SUITE: &str = "pipeline-slurm";

/// Long enough that the pretraining job is still running when its runner is killed.
const LONGER: [&str; 2] = ["--set", "pretrain.max-steps=2000"];

fn binaries() -> PathBuf {
    zerolm_testkit::binaries(
        env!("CARGO_BIN_EXE_pipeline"),
        &["tokenize", "pretrain", "sft", "ref-logprobs", "dpo"],
    )
}

/// `pipeline ARGS` in `dir`, with `path` as PATH when given.
fn pipeline(dir: &Path, args: &[&str], path: Option<&str>) -> Command {
    binaries();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipeline"));
    cmd.args(args).current_dir(dir);
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    cmd
}

fn run_tiny(dir: &Path, extra: &[&str], path: Option<&str>) -> Run {
    let mut args = vec!["run", "pipes/tiny.yaml", "--quiet"];
    args.extend_from_slice(extra);
    Run::of(&mut pipeline(dir, &args, path))
}

/// Whether two stages overlapped: one started before another's `done`.
fn overlapped(stderr: &str) -> bool {
    let mut running = 0usize;
    for line in stderr.lines().filter(|l| l.starts_with('[')) {
        if line.contains(": running") {
            running += 1;
            if running > 1 {
                return true;
            }
        } else if line.contains(": done") || line.contains(": up to date") {
            running = running.saturating_sub(1);
        }
    }
    false
}

#[test]
fn the_micro_flow_through_slurm_and_two_at_once_equals_one_at_a_time_and_survives_a_runner_kill() {
    require();
    // Locally, one stage at a time and two at once.
    let one = project(SUITE, "one");
    let r = run_tiny(&one, &LONGER, None);
    r.assert_ok();
    assert_eq!(ran(&r), set(&ALL), "{}", r.stderr);
    let two = project(SUITE, "two");
    let r = run_tiny(&two, &[&LONGER[..], &["--jobs", "2"]].concat(), None);
    r.assert_ok();
    assert!(
        overlapped(&r.stderr),
        "no two stages ran at once: {}",
        r.stderr
    );
    assert_same_artifacts(
        &artifacts(&one),
        &artifacts(&two),
        "--jobs 2 against --jobs 1",
    );

    // Through Slurm: the plan shows the sbatch lines with absolute paths and asks Slurm nothing.
    let s = project(SUITE, "slurm");
    let slurm = Wrappers::new(&s.join("slurm-calls"));
    let path = slurm.path();
    let on_slurm = [&LONGER[..], &["--executor", "slurm", "--jobs", "4"]].concat();
    let dry = run_tiny(&s, &[&on_slurm[..], &["--dry-run"]].concat(), Some(&path));
    dry.assert_ok();
    let pipes = s.join("pipes").canonicalize().unwrap();
    assert!(
        dry.stderr.contains(&format!(
            "$ sbatch --parsable --job-name=zerolm.tiny.pretrain --chdir={}",
            pipes.display()
        )),
        "{}",
        dry.stderr
    );
    assert!(dry.stderr.contains("(the job runs: /"), "{}", dry.stderr);
    assert!(
        slurm.calls().is_empty(),
        "a dry run called {:?}",
        slurm.calls()
    );

    // A runner killed (SIGKILL) while its pretraining job runs; the job goes on.
    let run_dir = s.join("runs/pipeline");
    let checkpoints = s.join("runs/pretrain/checkpoints");
    let mut args = vec!["run", "pipes/tiny.yaml", "--quiet"];
    args.extend_from_slice(&on_slurm);
    kill_when(&mut pipeline(&s, &args, Some(&path)), || {
        recorded_job(&run_dir, "pretrain").is_some() && has_checkpoint(&checkpoints)
    });
    let id = recorded_job(&run_dir, "pretrain").unwrap();
    let state = job_state(&id);
    assert!(
        ["RUNNING", "COMPLETING", "COMPLETED"].contains(&state.as_str()),
        "the pretraining job {id} did not outlive its runner: {state}"
    );
    // Started again, the runner follows that job instead of submitting another.
    let r = run_tiny(&s, &on_slurm, Some(&path));
    r.assert_ok();
    assert!(
        r.stderr
            .contains(&format!("re-attaching to Slurm job {id}")),
        "{}",
        r.stderr
    );
    let submitted = |stage: &str| {
        slurm
            .calls()
            .iter()
            .filter(|c| c.starts_with("sbatch") && c.contains(&format!("zerolm.tiny.{stage} ")))
            .count()
    };
    assert_eq!(submitted("pretrain"), 1, "{:?}", slurm.calls());
    assert_eq!(submitted("dpo"), 1, "{:?}", slurm.calls());
    assert_same_artifacts(
        &artifacts(&one),
        &artifacts(&s),
        "through Slurm against local",
    );
    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("lock.json")).unwrap()).unwrap();
    assert_eq!(lock["stages"]["pretrain"]["slurm_job"], id.as_str());

    // Up to date: nothing runs and Slurm is not asked anything.
    let calls = slurm.calls().len();
    let r = run_tiny(&s, &on_slurm, Some(&path));
    r.assert_ok();
    assert!(ran(&r).is_empty(), "{}", r.stderr);
    assert_eq!(slurm.calls().len(), calls, "{:?}", slurm.calls());
    for dir in [one, two, s] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

const FAILING: &str = r#"executor: slurm
stages:
  bad:
    cmd: tokenize pretrain
    args: {max-len: lots}
  slow:
    cmd: sleep 600
    resources: {time: 1}
  after:
    cmd: /bin/sleep 1
    deps: [../x]
"#;

#[test]
fn a_failing_job_and_one_past_its_time_limit_are_named_with_their_log() {
    require();
    let dir = zerolm_testkit::workdir(SUITE, "failing");
    std::fs::write(dir.join("x"), "x").unwrap();
    std::fs::create_dir_all(dir.join("pipes")).unwrap();
    std::fs::write(dir.join("pipes/fail.yaml"), FAILING).unwrap();
    let r = Run::of(&mut pipeline(
        &dir,
        &["run", "pipes/fail.yaml", "--quiet", "--jobs", "2"],
        None,
    ));
    assert_eq!(r.code, 1, "{}", r.stderr);
    for needle in [
        "stage `bad` failed (Slurm job",
        "ended FAILED (exit code 1)",
        "invalid value 'lots'",
        "logs/bad.log",
        "no new stage starts; waiting for the running one(s) to finish: `slow`",
        "ended TIMEOUT (killed by signal 15): it ran past its time limit (`time: 1`); raise `resources.time` of stage `slow`",
        "DUE TO TIME LIMIT",
    ] {
        assert!(r.stderr.contains(needle), "`{needle}` missing: {}", r.stderr);
    }
    assert!(!r.stderr.contains("after: running"), "{}", r.stderr);
    let lock =
        std::fs::read_to_string(dir.join("pipes/.zerolm/fail/lock.json")).unwrap_or_default();
    assert!(
        !lock.contains("\"bad\"") && !lock.contains("\"slow\""),
        "{lock}"
    );

    // Without Slurm's commands the executor says what it needs.
    let r = Run::of(&mut pipeline(
        &dir,
        &["run", "pipes/fail.yaml", "--only", "after"],
        Some("/nonexistent"),
    ));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("the Slurm executor needs `sbatch`"),
        "{}",
        r.stderr
    );
    let _ = std::fs::remove_dir_all(dir);
}

const NAPS: &str = r#"stages:
  nap:
    cmd: sleep 600
    executor: slurm
  nap-here:
    cmd: sleep 600
    executor: local
"#;

#[test]
fn sigterm_cancels_the_runs_jobs_and_stops_its_local_stages() {
    require();
    let dir = zerolm_testkit::workdir(SUITE, "sigterm");
    std::fs::write(dir.join("naps.yaml"), NAPS).unwrap();
    let child = pipeline(&dir, &["run", "naps.yaml", "--jobs", "2"], None)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run_dir = dir.join(".zerolm/naps");
    let started = Instant::now();
    let id = loop {
        if let Some(id) = recorded_job(&run_dir, "nap") {
            if job_state(&id) == "RUNNING" {
                break id;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the nap job never ran"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "interrupted by SIGTERM: cancelled Slurm job {id} (stage `nap`); stopped stage `nap-here`"
        )),
        "{stderr}"
    );
    assert_eq!(job_state(&id), "CANCELLED");
    assert_eq!(recorded_job(&run_dir, "nap"), None);
    let _ = std::fs::remove_dir_all(dir);
}

const NAP: &str = r#"vars:
  seconds: 600
executor: slurm
stages:
  nap:
    cmd: sleep ${vars.seconds}
"#;

#[test]
fn a_job_left_running_under_other_settings_is_cancelled_before_the_stage_starts_afresh() {
    require();
    let dir = zerolm_testkit::workdir(SUITE, "changed");
    std::fs::write(dir.join("nap.yaml"), NAP).unwrap();
    let run_dir = dir.join(".zerolm/nap");
    kill_when(&mut pipeline(&dir, &["run", "nap.yaml"], None), || {
        std::thread::sleep(Duration::from_millis(50));
        recorded_job(&run_dir, "nap").is_some_and(|id| job_state(&id) == "RUNNING")
    });
    let old = recorded_job(&run_dir, "nap").unwrap();
    assert_eq!(job_state(&old), "RUNNING", "the job died with its runner");
    let r = Run::of(&mut pipeline(
        &dir,
        &["run", "nap.yaml", "--set", "vars.seconds=1"],
        None,
    ));
    r.assert_ok();
    assert!(
        r.stderr.contains(&format!(
            "cancelling Slurm job {old}: an earlier run submitted it under other settings"
        )),
        "{}",
        r.stderr
    );
    assert_eq!(job_state(&old), "CANCELLED");
    assert!(r.stderr.contains("nap: done"), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(dir);
}
