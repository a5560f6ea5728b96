//! The Slurm executor: each stage an `sbatch` job (its script runs the binary by absolute path in the
//! pipeline's directory, through `srun` for several ranks), followed with `squeue` (and `sacct` for jobs
//! Slurm no longer keeps in memory) until it ends. Only COMPLETED is success; every other end is named
//! with its exit status and what to do about it. The runner submits a stage when its inputs are ready
//! (no `--dependency` chains): whether a stage runs at all depends on the hashes of what its upstream
//! wrote, which only the runner knows, and a cancelled run leaves no pending chain behind.

use super::log::{Echo, Follower};
use super::{describe_wait_status, Ended, Launch};
use crate::error::{PipelineError, Result};
use crate::shell::{shell_line, shell_quote};
use crate::spec::Stage;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Fastest and slowest polling of `squeue`: fast after a change, backing off while nothing changes.
const POLL_MIN: Duration = Duration::from_millis(250);
const POLL_MAX: Duration = Duration::from_secs(5);
/// Polls in a row that may fail (Slurm's controller busy or restarting) before the jobs are given up.
const POLL_FAILURES: usize = 12;

/// States in which a job has ended (Slurm's `squeue`/`sacct` names).
const ENDED: &[&str] = &[
    "COMPLETED",
    "FAILED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "CANCELLED",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
    "SPECIAL_EXIT",
];

/// What Slurm says about a job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobInfo {
    /// `RUNNING`, `COMPLETED`, `TIMEOUT`, … (the first word of sacct's `CANCELLED by 0`).
    pub state: String,
    pub reason: String,
    /// Raw wait status (exit code × 256 + signal), when known.
    pub exit: Option<i32>,
    pub submit: Option<i64>,
    pub start: Option<i64>,
    pub end: Option<i64>,
}

impl JobInfo {
    pub fn ended(&self) -> bool {
        ENDED.contains(&self.state.as_str())
    }
}

/// A job being followed.
struct Job {
    id: String,
    stage: String,
    follower: Follower,
    echo: Echo,
    time: Option<String>,
    mem: Option<String>,
}

/// The jobs this run follows.
pub struct Slurm {
    jobs: BTreeMap<usize, Job>,
    interval: Duration,
    next_poll: Instant,
    /// Polls that failed since the last one that worked.
    failures: usize,
}

impl Default for Slurm {
    fn default() -> Self {
        Slurm {
            jobs: BTreeMap::new(),
            interval: POLL_MIN,
            next_poll: Instant::now(),
            failures: 0,
        }
    }
}

/// Fails with a clear message when Slurm's commands are not on PATH.
pub fn check_available() -> Result<()> {
    match Command::new("sbatch").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(PipelineError::Usage(
            "the Slurm executor needs `sbatch`, `squeue` and `scancel` on PATH: run `pipeline run` on a \
             Slurm login node (tools/slurm-local.sh makes a one-node cluster on this machine), or use \
             `--executor local`"
                .into(),
        )),
    }
}

/// The job name: `zerolm.PIPELINE.STAGE`.
pub fn job_name(pipeline: &str, stage: &str) -> String {
    format!("zerolm.{pipeline}.{stage}")
}

/// What a stage's job runs: its binary by absolute path with its arguments, `srun` in front for
/// several ranks.
pub fn job_command(stage: &Stage, binary: &Path) -> String {
    let srun = if stage.ranks > 1 { "srun " } else { "" };
    let binary = shell_quote(&binary.display().to_string());
    format!("{srun}{}", shell_line(&binary, &stage.argv))
}

/// The job script: [`job_command`] after a comment naming the pipeline, the stage and the log.
pub fn script(l: &Launch, pipeline: &str) -> String {
    format!(
        "#!/bin/sh\n# zerolm pipeline `{pipeline}`, stage `{}`, written by `pipeline run`; its output goes to {}\nexec {}\n",
        l.stage.name,
        l.log.display(),
        job_command(l.stage, l.binary)
    )
}

/// `sbatch`'s arguments for the stage, `script` last.
pub fn sbatch_args(l: &Launch, pipeline: &str, script: &Path) -> Vec<String> {
    let (st, r) = (l.stage, &l.stage.resources);
    let mut a = vec![
        "--parsable".to_string(),
        format!("--job-name={}", job_name(pipeline, &st.name)),
        format!("--chdir={}", l.dir.display()),
        format!("--output={}", l.log.display()),
        "--open-mode=append".to_string(),
        format!("--ntasks={}", st.ranks),
        format!("--cpus-per-task={}", st.cpus_per_rank()),
    ];
    let mut opt = |flag: &str, v: Option<String>| {
        if let Some(v) = v {
            a.push(format!("--{flag}={v}"));
        }
    };
    opt("nodes", r.nodes.map(|n| n.to_string()));
    opt("mem", r.mem.clone());
    opt("gpus-per-task", r.gpus.map(|n| n.to_string()));
    opt("time", r.time.clone());
    opt("partition", r.partition.clone());
    opt("account", r.account.clone());
    a.extend(r.slurm_extra.iter().cloned());
    a.push(script.display().to_string());
    a
}

/// `sbatch …` as a shell would show it (for `--dry-run` and the log).
pub fn sbatch_line(l: &Launch, pipeline: &str, script: &Path) -> String {
    shell_line("sbatch", &sbatch_args(l, pipeline, script))
}

/// Where the runner writes stage `stage`'s job script.
pub fn script_path(run_dir: &Path, stage: &str) -> PathBuf {
    run_dir.join("slurm").join(format!("{stage}.sh"))
}

fn slurm_command(program: &str, args: &[String]) -> Result<Output> {
    Command::new(program).args(args).output().map_err(|e| {
        PipelineError::StageFailed(format!(
            "cannot run `{program}` ({e}); is Slurm installed and on PATH?"
        ))
    })
}

impl Slurm {
    pub fn running(&self) -> usize {
        self.jobs.len()
    }

    /// Writes the job script and submits it; the job id.
    pub fn submit(&mut self, l: &Launch, pipeline: &str, run_dir: &Path) -> Result<String> {
        let path = script_path(run_dir, &l.stage.name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| PipelineError::write(dir, e))?;
        }
        zerolm_io::write_atomically(&path, script(l, pipeline).as_bytes())?;
        let out = slurm_command("sbatch", &sbatch_args(l, pipeline, &path))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let id = stdout.trim().split(';').next().unwrap_or("").to_string();
        if !out.status.success() || id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(PipelineError::StageFailed(format!(
                "stage `{}`: sbatch refused the job: {}",
                l.stage.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        self.follow(l, id.clone(), Follower::from_end(&l.log));
        Ok(id)
    }

    /// Follows job `id`, submitted for this stage by an earlier runner.
    pub fn attach(&mut self, l: &Launch, id: &str) {
        self.follow(l, id.to_string(), Follower::from_last_header(&l.log));
    }

    fn follow(&mut self, l: &Launch, id: String, follower: Follower) {
        self.jobs.insert(
            l.index,
            Job {
                id,
                stage: l.stage.name.clone(),
                follower,
                echo: l.echo.clone(),
                time: l.stage.resources.time.clone(),
                mem: l.stage.resources.mem.clone(),
            },
        );
        self.interval = POLL_MIN;
        self.next_poll = Instant::now() + POLL_MIN;
    }

    /// How long until the next poll is due (`None` with no job to follow).
    pub fn due_in(&self) -> Option<Duration> {
        (!self.jobs.is_empty()).then(|| self.next_poll.saturating_duration_since(Instant::now()))
    }

    /// When due: echoes new log lines and reports the jobs that ended. A failing `squeue` is retried at
    /// the slowest pace; after [`POLL_FAILURES`] in a row its error is returned.
    pub fn poll(&mut self) -> Result<Vec<Ended>> {
        if self.due_in().is_none_or(|d| !d.is_zero()) {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = self.jobs.values().map(|j| j.id.clone()).collect();
        let infos = match query(&ids) {
            Ok(infos) => infos,
            Err(e) => {
                self.failures += 1;
                self.next_poll = Instant::now() + POLL_MAX;
                if self.failures >= POLL_FAILURES {
                    return Err(e);
                }
                eprintln!(
                    "pipeline: {e} (try {} of {POLL_FAILURES}; trying again)",
                    self.failures
                );
                return Ok(Vec::new());
            }
        };
        self.failures = 0;
        let mut ended = Vec::new();
        for (&index, job) in self.jobs.iter_mut() {
            let info = infos.get(&job.id);
            let over = info.is_none_or(|i| i.ended());
            job.follower.read(&job.echo, over);
            if over {
                ended.push(end_of(index, job, info));
            }
        }
        for e in &ended {
            self.jobs.remove(&e.index);
        }
        self.interval = if ended.is_empty() {
            (self.interval * 2).min(POLL_MAX)
        } else {
            POLL_MIN
        };
        self.next_poll = Instant::now() + self.interval;
        Ok(ended)
    }

    /// Stops following every job (they keep running); `(stage index, job id)` of each.
    pub fn forget_all(&mut self) -> Vec<(usize, String)> {
        std::mem::take(&mut self.jobs)
            .into_iter()
            .map(|(i, j)| (i, j.id))
            .collect()
    }

    /// Cancels every job followed and waits until Slurm says they ended; `(stage index, job id)` of each.
    pub fn cancel_all(&mut self) -> Vec<(usize, String)> {
        let jobs: Vec<(usize, String)> =
            self.jobs.iter().map(|(&i, j)| (i, j.id.clone())).collect();
        let ids: Vec<String> = jobs.iter().map(|(_, id)| id.clone()).collect();
        if !ids.is_empty() {
            if let Err(e) = cancel_and_wait(&ids) {
                eprintln!("pipeline: {e}");
            }
        }
        self.jobs.clear();
        jobs
    }
}

/// Cancels jobs `ids` and waits (up to a minute) until Slurm says they have ended, so that none writes
/// outputs after this.
pub fn cancel_and_wait(ids: &[String]) -> Result<()> {
    cancel(ids)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let infos = query(ids)?;
        if ids.iter().all(|id| infos.get(id).is_none_or(|i| i.ended())) {
            return Ok(());
        }
        std::thread::sleep(POLL_MIN);
    }
    Err(PipelineError::StageFailed(format!(
        "Slurm job(s) {} were cancelled but have not ended after a minute; check `squeue -j {}`",
        ids.join(", "),
        ids.join(",")
    )))
}

/// How a job's stage ended.
fn end_of(index: usize, job: &Job, info: Option<&JobInfo>) -> Ended {
    let timing = info.map(timing).unwrap_or_default();
    let failure = match info {
        Some(i) if i.state == "COMPLETED" => None,
        Some(i) => Some(format!(
            "Slurm job {} ended {}{}{}",
            job.id,
            i.state,
            i.exit
                .map(|s| format!(" ({})", describe_wait_status(s)))
                .unwrap_or_default(),
            advice(i, job)
        )),
        None => Some(format!(
            "Slurm job {} is no longer known to Slurm (neither squeue nor sacct lists it), so how it ended \
             is unknown; run again (the stage resumes from what it wrote)",
            job.id
        )),
    };
    Ended {
        index,
        failure,
        tail: job.follower.tail(),
        note: Some(format!("Slurm job {}{timing}", job.id)),
        slurm_job: Some(job.id.clone()),
    }
}

/// `, 1 s in the queue, ran 12 s` from Slurm's times.
fn timing(i: &JobInfo) -> String {
    match (i.submit, i.start, i.end) {
        (Some(s), Some(b), Some(e)) => format!(", {} s in the queue, ran {} s", b - s, e - b),
        _ => String::new(),
    }
}

/// What a job's end means for the user.
fn advice(i: &JobInfo, job: &Job) -> String {
    let limit = |what: &str, v: &Option<String>| match v {
        Some(v) => format!("`{what}: {v}`"),
        None => "the partition's default".to_string(),
    };
    match i.state.as_str() {
        "TIMEOUT" => format!(
            ": it ran past its time limit ({}); raise `resources.time` of stage `{}` (a training stage \
             resumes from its last checkpoint)",
            limit("time", &job.time),
            job.stage
        ),
        "OUT_OF_MEMORY" => format!(
            ": it used more memory than it asked for ({}); raise `resources.mem` of stage `{}`",
            limit("mem", &job.mem),
            job.stage
        ),
        "CANCELLED" => ": it was cancelled outside this run (scancel or an administrator)".into(),
        "NODE_FAIL" | "BOOT_FAIL" => {
            ": its node failed; run the pipeline again (the stage resumes from what it wrote)".into()
        }
        "PREEMPTED" => ": a job of higher priority took its place; run the pipeline again".into(),
        _ if !i.reason.is_empty() && i.reason != "None" => format!(" (Slurm's reason: {})", i.reason),
        _ => String::new(),
    }
}

/// Cancels jobs `ids`.
pub fn cancel(ids: &[String]) -> Result<()> {
    let out = slurm_command("scancel", ids)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PipelineError::StageFailed(format!(
            "scancel {} failed: {}",
            ids.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// What Slurm says about jobs `ids`: `squeue` for the jobs it still holds, `sacct` for the others; a job
/// neither knows is absent.
pub fn query(ids: &[String]) -> Result<BTreeMap<String, JobInfo>> {
    let fields = "JobID:|,State:|,Reason:|,exit_code:|,SubmitTime:|,StartTime:|,EndTime:|";
    let args: Vec<String> = ["-h", "-t", "all", "-j", &ids.join(","), "-O", fields]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = slurm_command("squeue", &args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !stderr.contains("Invalid job id") {
        return Err(PipelineError::StageFailed(format!(
            "squeue failed: {}",
            stderr.trim()
        )));
    }
    let mut infos = parse_squeue(&String::from_utf8_lossy(&out.stdout));
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !infos.contains_key(*id))
        .cloned()
        .collect();
    if !missing.is_empty() {
        infos.extend(sacct(&missing));
    }
    Ok(infos)
}

/// Jobs from `sacct` (empty when accounting is off).
fn sacct(ids: &[String]) -> BTreeMap<String, JobInfo> {
    let args: Vec<String> = [
        "-n",
        "-P",
        "-X",
        "-j",
        &ids.join(","),
        "-o",
        "JobID,State,ExitCode,Submit,Start,End",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match slurm_command("sacct", &args) {
        Ok(out) if out.status.success() => parse_sacct(&String::from_utf8_lossy(&out.stdout)),
        _ => BTreeMap::new(),
    }
}

/// `squeue -O JobID:|,State:|,Reason:|,exit_code:|,SubmitTime:|,StartTime:|,EndTime:|` lines.
pub fn parse_squeue(text: &str) -> BTreeMap<String, JobInfo> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('|').map(str::trim).collect();
            (f.len() >= 7 && !f[0].is_empty()).then(|| {
                (
                    f[0].to_string(),
                    JobInfo {
                        state: f[1].to_string(),
                        reason: f[2].to_string(),
                        exit: f[3].parse().ok(),
                        submit: timestamp(f[4]),
                        start: timestamp(f[5]),
                        end: timestamp(f[6]),
                    },
                )
            })
        })
        .collect()
}

/// `sacct -P -o JobID,State,ExitCode,Submit,Start,End` lines (ExitCode `code:signal`).
pub fn parse_sacct(text: &str) -> BTreeMap<String, JobInfo> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('|').map(str::trim).collect();
            (f.len() >= 6 && !f[0].is_empty()).then(|| {
                let exit = f[2]
                    .split_once(':')
                    .and_then(|(c, s)| Some(c.parse::<i32>().ok()? * 256 + s.parse::<i32>().ok()?));
                (
                    f[0].to_string(),
                    JobInfo {
                        state: f[1].split_whitespace().next().unwrap_or("").to_string(),
                        reason: String::new(),
                        exit,
                        submit: timestamp(f[3]),
                        start: timestamp(f[4]),
                        end: timestamp(f[5]),
                    },
                )
            })
        })
        .collect()
}

/// Seconds since 1970 of Slurm's `2026-11-30T21:03:01` (its clock's zone; only differences are used).
pub fn timestamp(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    Some(days_from_civil(d[0], d[1], d[2]) * 86_400 + t[0] * 3600 + t[1] * 60 + t[2])
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian calendar).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;

    fn stage(ranks: usize) -> Stage {
        Stage {
            name: "pretrain".into(),
            line: 3,
            desc: None,
            program: "pretrain".into(),
            argv: vec!["--threads".into(), "4".into(), "--out".into(), "a b".into()],
            deps: vec![],
            outs: vec![],
            ranks,
            executor: None,
            resources: Resources {
                mem: Some("8G".into()),
                time: Some("1:00:00".into()),
                partition: Some("gpu".into()),
                gpus: Some(1),
                slurm_extra: vec!["--qos=high".into()],
                ..Resources::default()
            },
        }
    }

    #[test]
    fn the_job_carries_the_stage_resources_and_absolute_paths() {
        let st = stage(2);
        let l = Launch {
            index: 0,
            stage: &st,
            binary: Path::new("/opt/zerolm/pretrain"),
            dir: Path::new("/proj/pipelines"),
            log: PathBuf::from("/proj/runs/pipeline/logs/pretrain.log"),
            echo: Echo::new("pretrain", true, false),
        };
        let line = sbatch_line(
            &l,
            "full",
            Path::new("/proj/runs/pipeline/slurm/pretrain.sh"),
        );
        assert_eq!(
            line,
            "sbatch --parsable --job-name=zerolm.full.pretrain --chdir=/proj/pipelines \
             --output=/proj/runs/pipeline/logs/pretrain.log --open-mode=append --ntasks=2 --cpus-per-task=4 \
             --mem=8G --gpus-per-task=1 --time=1:00:00 --partition=gpu --qos=high \
             /proj/runs/pipeline/slurm/pretrain.sh"
        );
        let s = script(&l, "full");
        assert!(s.starts_with("#!/bin/sh\n"), "{s}");
        assert!(
            s.ends_with("exec srun /opt/zerolm/pretrain --threads 4 --out 'a b'\n"),
            "{s}"
        );
    }

    #[test]
    fn squeue_and_sacct_lines_are_read() {
        let q = parse_squeue(
            "8|FAILED|NonZeroExitCode|768|2026-11-30T21:03:01|2026-11-30T21:03:02|2026-11-30T21:03:05|\n\
             9|RUNNING|None|0|2026-11-30T21:03:01|2026-11-30T21:03:02|2026-11-30T22:03:02|\n",
        );
        assert_eq!(q["8"].state, "FAILED");
        assert_eq!(describe_wait_status(q["8"].exit.unwrap()), "exit code 3");
        assert_eq!(timing(&q["8"]), ", 1 s in the queue, ran 3 s");
        assert!(q["8"].ended() && !q["9"].ended());
        let a = parse_sacct(
            "7|CANCELLED by 0|0:15|2026-11-30T21:01:00|2026-11-30T21:01:01|2026-11-30T21:02:28\n",
        );
        assert_eq!(a["7"].state, "CANCELLED");
        assert_eq!(
            describe_wait_status(a["7"].exit.unwrap()),
            "killed by signal 15"
        );
        assert_eq!(timestamp("1970-01-02T00:00:01"), Some(86_401));
        assert_eq!(timestamp("2000-03-01T00:00:00"), Some(951_868_800));
        assert_eq!(timestamp("Unknown"), None);
    }
}
