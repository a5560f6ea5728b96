//! Running a pipeline: decide per stage whether it is up to date (its fingerprint — binary hash,
//! argument vector, dep hashes — matches the lock and its outputs are still the ones it wrote), run the
//! others in dependency order with their output teed into a per-stage log, and record each success in
//! the lock. Also `status`: the same decision without running anything.

use crate::error::{PipelineError, Result};
use crate::graph::Graph;
use crate::lockfile::{LockEntry, LockFile, PidLock, RunState};
use crate::spec::{Pipeline, Stage};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Which stages a run considers and which it reruns regardless of their fingerprint.
#[derive(Default, Debug, Clone)]
pub struct Selection {
    /// Rerun these stages even if up to date.
    pub force: Vec<String>,
    pub force_all: bool,
    /// This stage (rerun) and everything downstream of it.
    pub from: Option<String>,
    /// This stage and everything upstream of it.
    pub until: Option<String>,
    /// Only this stage (its deps must exist).
    pub only: Option<String>,
}

#[derive(Default, Debug, Clone)]
pub struct RunOptions {
    pub selection: Selection,
    /// Say what would run, run nothing.
    pub dry_run: bool,
    /// Do not echo the stages' own output (it still goes to their logs).
    pub quiet: bool,
}

/// Whether a stage needs to run, and why.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    UpToDate,
    Run(Vec<String>),
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub ran: Vec<String>,
    pub up_to_date: Vec<String>,
    pub seconds: f64,
}

/// The fingerprint of a stage as it stands now.
#[derive(Debug, Clone)]
struct Fingerprint {
    binary: PathBuf,
    binary_hash: String,
    deps: BTreeMap<String, String>,
    /// Deps that do not exist (yet).
    missing: Vec<String>,
    value: String,
}

/// Finds a stage's binary: a path (relative to the pipeline file), `pipeline` itself, a binary next
/// to the running `pipeline`, or one on PATH.
pub fn locate(program: &str, p: &Pipeline) -> Result<PathBuf> {
    let me = std::env::current_exe().ok();
    if program.contains('/') {
        let path = p.dir.join(program);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(PipelineError::Invalid(format!(
                "binary `{program}` not found at {}",
                path.display()
            )))
        };
    }
    if let Some(me) = &me {
        if program == "pipeline" {
            return Ok(me.clone());
        }
        if let Some(dir) = me.parent() {
            let next = dir.join(program);
            if next.is_file() {
                return Ok(next);
            }
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let cand = dir.join(program);
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    Err(PipelineError::Invalid(format!(
        "binary `{program}` is neither next to {} nor on PATH; build it (`cargo build --release`) or name its path",
        me.map(|m| m.display().to_string()).unwrap_or_else(|| "pipeline".into())
    )))
}

/// [`locate`] for a stage, the error naming the stage and its line.
fn locate_stage(stage: &Stage, p: &Pipeline) -> Result<PathBuf> {
    locate(&stage.program, p).map_err(|e| {
        PipelineError::Invalid(format!(
            "{}:{}: stage `{}`: {e}",
            p.file.display(),
            stage.line,
            stage.name
        ))
    })
}

fn fingerprint(stage: &Stage, p: &Pipeline, state: &mut RunState) -> Result<Fingerprint> {
    let binary = locate_stage(stage, p)?;
    let binary_hash = state
        .hashes
        .hash(&binary)?
        .ok_or_else(|| PipelineError::read(&binary, std::io::ErrorKind::NotFound.into()))?;
    let mut deps = BTreeMap::new();
    let mut missing = Vec::new();
    for d in &stage.deps {
        match state.hashes.hash(&d.abs)? {
            Some(h) => {
                deps.insert(d.written.clone(), h);
            }
            None => missing.push(d.written.clone()),
        }
    }
    let mut h = blake3::Hasher::new();
    h.update(stage.program.as_bytes());
    h.update(b"\0");
    h.update(binary_hash.as_bytes());
    for a in &stage.argv {
        h.update(b"\0a");
        h.update(a.as_bytes());
    }
    if stage.ranks > 1 {
        // Another rank count changes the result (by float rounding), so it is part of the identity.
        h.update(format!("\0ranks={}", stage.ranks).as_bytes());
    }
    for (d, dh) in &deps {
        h.update(b"\0d");
        h.update(d.as_bytes());
        h.update(b"=");
        h.update(dh.as_bytes());
    }
    Ok(Fingerprint {
        binary,
        binary_hash,
        deps,
        missing,
        value: h.finalize().to_hex().to_string(),
    })
}

/// Flag groups (`--lr 0.001`) of an argument vector, for describing what changed.
fn groups(argv: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in argv {
        match out.last_mut() {
            Some(last) if !a.starts_with("--") => {
                last.push(' ');
                last.push_str(a);
            }
            _ => out.push(a.clone()),
        }
    }
    out
}

fn verdict(
    stage: &Stage,
    fp: &Fingerprint,
    entry: Option<&LockEntry>,
    state: &mut RunState,
) -> Result<Verdict> {
    let Some(e) = entry else {
        let why = match state.started.get(&stage.name) {
            Some(f) if *f == fp.value => "it was interrupted; it resumes from its partial outputs",
            Some(_) => "it was interrupted under other settings; it starts over",
            None => "it has not run yet",
        };
        return Ok(Verdict::Run(vec![why.into()]));
    };
    let mut why = Vec::new();
    if e.binary_hash != fp.binary_hash {
        why.push(format!(
            "the binary `{}` changed ({})",
            stage.program,
            fp.binary.display()
        ));
    }
    if e.argv != stage.argv {
        let (old, new) = (groups(&e.argv), groups(&stage.argv));
        let gone: Vec<&String> = old.iter().filter(|g| !new.contains(g)).collect();
        let added: Vec<&String> = new.iter().filter(|g| !old.contains(g)).collect();
        let mut s = "arguments changed:".to_string();
        for g in gone {
            s.push_str(&format!(" -`{g}`"));
        }
        for g in added {
            s.push_str(&format!(" +`{g}`"));
        }
        if s.ends_with(':') {
            s.push_str(" order");
        }
        why.push(s);
    }
    for (d, h) in &fp.deps {
        match e.deps.get(d) {
            None => why.push(format!("new dep `{d}`")),
            Some(old) if old != h => why.push(format!("dep `{d}` changed")),
            _ => {}
        }
    }
    for d in e.deps.keys() {
        if !fp.deps.contains_key(d) && !fp.missing.contains(d) {
            why.push(format!("dep `{d}` was removed"));
        }
    }
    for d in &fp.missing {
        why.push(format!("dep `{d}` does not exist"));
    }
    for o in &stage.outs {
        match (state.hashes.hash(&o.abs)?, e.outs.get(&o.written)) {
            (None, _) => why.push(format!("output `{}` is missing", o.written)),
            (Some(now), Some(then)) if now != *then => why.push(format!(
                "output `{}` was modified after the stage wrote it",
                o.written
            )),
            (Some(_), None) => why.push(format!("output `{}` is new", o.written)),
            _ => {}
        }
    }
    Ok(if why.is_empty() {
        Verdict::UpToDate
    } else {
        Verdict::Run(why)
    })
}

/// [`verdict`], or "forced" for a `forced` stage (whose verdict is still worked out: that refreshes the
/// hash memo the same way).
fn judge(
    stage: &Stage,
    fp: &Fingerprint,
    entry: Option<&LockEntry>,
    state: &mut RunState,
    forced: bool,
) -> Result<Verdict> {
    let v = verdict(stage, fp, entry, state)?;
    Ok(if forced {
        Verdict::Run(vec!["forced".into()])
    } else {
        v
    })
}

/// The selected stages (in run order) and the forced ones.
fn select(p: &Pipeline, g: &Graph, sel: &Selection) -> Result<(Vec<usize>, BTreeSet<usize>)> {
    let all: BTreeSet<usize> = (0..p.stages.len()).collect();
    let mut chosen = all.clone();
    let mut forced = BTreeSet::new();
    if let Some(only) = &sel.only {
        if sel.from.is_some() || sel.until.is_some() {
            return Err(PipelineError::Usage(
                "--only cannot be combined with --from or --until".into(),
            ));
        }
        chosen = BTreeSet::from([p.stage_index(only, "--only")?]);
    }
    if let Some(from) = &sel.from {
        let i = p.stage_index(from, "--from")?;
        chosen = &chosen & &g.descendants(i);
        forced.insert(i);
    }
    if let Some(until) = &sel.until {
        let i = p.stage_index(until, "--until")?;
        chosen = &chosen & &g.ancestors(i);
    }
    for f in &sel.force {
        let i = p.stage_index(f, "--force")?;
        if !chosen.contains(&i) {
            return Err(PipelineError::Usage(format!(
                "--force {f}: stage `{f}` is not among the selected stages"
            )));
        }
        forced.insert(i);
    }
    if sel.force_all {
        forced = chosen.clone();
    }
    let order = g
        .order
        .iter()
        .copied()
        .filter(|i| chosen.contains(i))
        .collect();
    Ok((order, forced))
}

/// One line of `status`.
#[derive(Debug, Clone)]
pub struct StageStatus {
    pub name: String,
    pub verdict: Verdict,
}

/// What `run` would do, stage by stage, without running anything. A stage downstream of one that will
/// run is reported as such (it reruns if that stage's outputs change).
pub fn status(p: &Pipeline, sel: &Selection) -> Result<Vec<StageStatus>> {
    let g = Graph::build(p)?;
    let (order, forced) = select(p, &g, sel)?;
    status_of(p, &g, order, &forced)
}

fn status_of(
    p: &Pipeline,
    g: &Graph,
    order: Vec<usize>,
    forced: &BTreeSet<usize>,
) -> Result<Vec<StageStatus>> {
    let lock = LockFile::load(&p.run_dir, &p.name)?;
    let mut state = RunState::load(&p.run_dir);
    let mut will_run = BTreeSet::new();
    let mut out = Vec::new();
    for i in order {
        let st = &p.stages[i];
        let fp = fingerprint(st, p, &mut state)?;
        let mut v = judge(
            st,
            &fp,
            lock.stages.get(&st.name),
            &mut state,
            forced.contains(&i),
        )?;
        let ups: Vec<&str> = g.upstream[i]
            .iter()
            .filter(|u| will_run.contains(*u))
            .map(|&u| p.stages[u].name.as_str())
            .collect();
        if !ups.is_empty() {
            let note = format!(
                "upstream {} will run (if its outputs change, this stage reruns)",
                ups.iter()
                    .map(|u| format!("`{u}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            v = match v {
                Verdict::UpToDate => Verdict::Run(vec![note]),
                Verdict::Run(mut why) => {
                    // Missing deps are explained by the upstream stage that makes them.
                    why.retain(|w| !w.ends_with("does not exist"));
                    if why.is_empty() {
                        why.push(note);
                    }
                    Verdict::Run(why)
                }
            };
        }
        if matches!(v, Verdict::Run(_)) {
            will_run.insert(i);
        }
        out.push(StageStatus {
            name: st.name.clone(),
            verdict: v,
        });
    }
    Ok(out)
}

/// Shell-style rendering of a command line (for logs and messages).
pub fn shell_line(program: &str, argv: &[String]) -> String {
    std::iter::once(program.to_string())
        .chain(argv.iter().map(|a| shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

fn relative(path: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    match path.strip_prefix(&cwd) {
        Ok(r) if !r.as_os_str().is_empty() => r.display().to_string(),
        _ => path.display().to_string(),
    }
}

/// Runs the pipeline.
pub fn run(p: &Pipeline, opts: &RunOptions) -> Result<RunSummary> {
    let t0 = Instant::now();
    let g = Graph::build(p)?;
    let (order, forced) = select(p, &g, &opts.selection)?;
    // Every binary must be there before anything starts.
    for &i in &order {
        locate_stage(&p.stages[i], p)?;
    }
    if opts.dry_run {
        print_dry_run(p, &g, order, &forced)?;
        return Ok(RunSummary::default());
    }
    let _pid = PidLock::acquire(&p.run_dir)?;
    let mut run = Run::start(p, &g, opts.quiet)?;
    let total = order.len();
    eprintln!(
        "pipeline: {} — {total} stage(s); run dir {}",
        p.file.display(),
        relative(&p.run_dir)
    );
    for (k, &i) in order.iter().enumerate() {
        let tag = format!("[{}/{total}] {}", k + 1, p.stages[i].name);
        run.stage(i, &tag, forced.contains(&i))?;
    }
    run.finish(t0)
}

/// `run --dry-run`: each selected stage's verdict and, for the ones that would run, the command.
fn print_dry_run(
    p: &Pipeline,
    g: &Graph,
    order: Vec<usize>,
    forced: &BTreeSet<usize>,
) -> Result<()> {
    for s in status_of(p, g, order, forced)? {
        let i = p.stage(&s.name).expect("known stage");
        match s.verdict {
            Verdict::UpToDate => eprintln!("  {:<16} up to date", s.name),
            Verdict::Run(why) => {
                eprintln!("  {:<16} would run: {}", s.name, why.join("; "));
                eprintln!(
                    "  {:<16}   $ {}{}",
                    "",
                    launcher(&p.stages[i]),
                    shell_line(&p.stages[i].program, &p.stages[i].argv)
                );
            }
        }
    }
    Ok(())
}

/// A run in progress (its pid lock held): the lock and state it updates after each stage.
struct Run<'a> {
    p: &'a Pipeline,
    g: &'a Graph,
    quiet: bool,
    lock: LockFile,
    state: RunState,
    summary: RunSummary,
}

impl<'a> Run<'a> {
    fn start(p: &'a Pipeline, g: &'a Graph, quiet: bool) -> Result<Run<'a>> {
        let mut lock = LockFile::load(&p.run_dir, &p.name)?;
        lock.dir = p.dir.display().to_string();
        lock.order = g.order.iter().map(|&i| p.stages[i].name.clone()).collect();
        Ok(Run {
            p,
            g,
            quiet,
            lock,
            state: RunState::load(&p.run_dir),
            summary: RunSummary::default(),
        })
    }

    /// Stage `i`: skipped when up to date (and not `forced`), else run and recorded in the lock.
    fn stage(&mut self, i: usize, tag: &str, forced: bool) -> Result<()> {
        let (p, st) = (self.p, &self.p.stages[i]);
        let fp = fingerprint(st, p, &mut self.state)?;
        if let Some(d) = fp.missing.first() {
            return Err(missing_dep(p, self.g, i, d));
        }
        let entry = self.lock.stages.get(&st.name);
        let why = match judge(st, &fp, entry, &mut self.state, forced)? {
            Verdict::UpToDate => {
                eprintln!("{tag}: up to date");
                self.summary.up_to_date.push(st.name.clone());
                return Ok(());
            }
            Verdict::Run(why) => why,
        };
        eprintln!("{tag}: running — {}", why.join("; "));
        self.prepare(st, &fp)?;
        let started = Instant::now();
        execute(p, st, &fp.binary, self.quiet)?;
        let wall_s = started.elapsed().as_secs_f64();
        let outs = self.output_hashes(i)?;
        self.record(st, &fp, outs, wall_s)?;
        eprintln!("{tag}: done in {wall_s:.1}s");
        self.summary.ran.push(st.name.clone());
        Ok(())
    }

    /// Before a stage runs: clears what another command wrote, forgets its lock entry, marks it started
    /// under `fp`, and makes its outputs' parent directories.
    fn prepare(&mut self, st: &Stage, fp: &Fingerprint) -> Result<()> {
        let run_dir = &self.p.run_dir;
        // Outputs that another command wrote are removed first: the finished ones of an earlier
        // successful run, or the partial ones of a run started with another fingerprint. Partial
        // outputs of this very command stay, so a training stage resumes from its checkpoint.
        let resume = !self.lock.stages.contains_key(&st.name)
            && self.state.started.get(&st.name) == Some(&fp.value);
        if !resume {
            for o in &st.outs {
                remove_output(&o.abs, &o.written)?;
            }
        }
        if self.lock.stages.remove(&st.name).is_some() {
            self.lock.save(run_dir)?;
        }
        self.state.started.insert(st.name.clone(), fp.value.clone());
        self.state.save(run_dir)?;
        for o in &st.outs {
            if let Some(parent) = o.abs.parent() {
                std::fs::create_dir_all(parent).map_err(|e| PipelineError::write(parent, e))?;
            }
        }
        Ok(())
    }

    /// The hashes of stage `i`'s outputs after it ran; each must exist.
    fn output_hashes(&mut self, i: usize) -> Result<BTreeMap<String, String>> {
        let mut outs = BTreeMap::new();
        for o in &self.p.stages[i].outs {
            let h = self.state.hashes.hash(&o.abs)?.ok_or_else(|| {
                PipelineError::StageFailed(format!(
                    "{}: the stage exited 0 but did not write its output `{}`; fix `outs:` or the command",
                    self.p.at(i),
                    o.written
                ))
            })?;
            outs.insert(o.written.clone(), h);
        }
        Ok(outs)
    }

    /// Records a finished stage in the lock and clears its started mark.
    fn record(
        &mut self,
        st: &Stage,
        fp: &Fingerprint,
        outs: BTreeMap<String, String>,
        wall_s: f64,
    ) -> Result<()> {
        let run_dir = &self.p.run_dir;
        self.lock
            .stages
            .insert(st.name.clone(), lock_entry(st, fp, outs, wall_s));
        self.lock.save(run_dir)?;
        self.state.started.remove(&st.name);
        self.state.save(run_dir)
    }

    /// Saves the state and prints the summary and the pipeline's results.
    fn finish(mut self, t0: Instant) -> Result<RunSummary> {
        self.state.save(&self.p.run_dir)?;
        let mut summary = self.summary;
        summary.seconds = t0.elapsed().as_secs_f64();
        eprintln!(
            "pipeline: {} ran, {} up to date, in {:.2}s",
            summary.ran.len(),
            summary.up_to_date.len(),
            summary.seconds
        );
        for (label, path) in &self.p.results {
            eprintln!("  {label}: {}", relative(path));
        }
        Ok(summary)
    }
}

/// The error for stage `i`'s dep `d` that does not exist, naming the stages that make it.
fn missing_dep(p: &Pipeline, g: &Graph, i: usize, d: &str) -> PipelineError {
    let producer = g.upstream[i]
        .iter()
        .map(|&u| format!("`{}`", p.stages[u].name))
        .collect::<Vec<_>>();
    let hint = if producer.is_empty() {
        String::new()
    } else {
        format!(
            "; it comes from stage {}, which this run did not include",
            producer.join("/")
        )
    };
    PipelineError::StageFailed(format!("{}: dep `{d}` does not exist{hint}", p.at(i)))
}

fn lock_entry(
    st: &Stage,
    fp: &Fingerprint,
    outs: BTreeMap<String, String>,
    wall_s: f64,
) -> LockEntry {
    LockEntry {
        program: st.program.clone(),
        binary: fp.binary.display().to_string(),
        binary_hash: fp.binary_hash.clone(),
        argv: st.argv.clone(),
        deps: fp.deps.clone(),
        outs,
        fingerprint: fp.value.clone(),
        wall_s,
        finished_unix: unix_now(),
    }
}

/// Seconds since 1970 (0 if the clock is before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn remove_output(abs: &Path, written: &str) -> Result<()> {
    let meta = match std::fs::symlink_metadata(abs) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    eprintln!("    removing the earlier output `{written}`");
    let res = if meta.is_dir() {
        std::fs::remove_dir_all(abs)
    } else {
        std::fs::remove_file(abs)
    };
    res.map_err(|e| PipelineError::write(abs, e))
}

/// Runs one stage with the pipeline's directory as working directory; its stdout and stderr go to
/// `RUN_DIR/logs/STAGE.log` (appended, one header per attempt) and, unless `quiet`, to our stderr.
fn execute(p: &Pipeline, st: &Stage, binary: &Path, quiet: bool) -> Result<()> {
    let (log, log_path) = open_log(p, st, binary)?;
    eprintln!(
        "    $ {}{}",
        launcher(st),
        shell_line(&st.program, &st.argv)
    );
    let mut child = spawn(p, st, binary)?;
    let tee = Tee::start(&mut child, log, quiet);
    let status = child
        .wait()
        .map_err(|e| PipelineError::Internal(format!("waiting for {}: {e}", st.name)))?;
    let tail = tee.finish();
    if status.success() {
        return Ok(());
    }
    Err(stage_failed(p, st, status, &tail, &log_path))
}

/// The stage's log, opened for appending, with this attempt's header written.
fn open_log(p: &Pipeline, st: &Stage, binary: &Path) -> Result<(std::fs::File, PathBuf)> {
    let log_path = p.run_dir.join("logs").join(format!("{}.log", st.name));
    std::fs::create_dir_all(log_path.parent().expect("has a parent"))
        .map_err(|e| PipelineError::write(&log_path, e))?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| PipelineError::write(&log_path, e))?;
    let line = launcher(st) + &shell_line(&binary.display().to_string(), &st.argv);
    writeln!(
        log,
        "=== {} (unix time) · in {}\n$ {line}",
        unix_now(),
        p.dir.display()
    )
    .map_err(|e| PipelineError::write(&log_path, e))?;
    Ok((log, log_path))
}

/// `mpirun -np N ` for a stage on several ranks, else nothing.
fn launcher(st: &Stage) -> String {
    match st.ranks {
        1 => String::new(),
        n => format!("mpirun -np {n} "),
    }
}

fn spawn(p: &Pipeline, st: &Stage, binary: &Path) -> Result<Child> {
    let mut cmd = match st.ranks {
        1 => Command::new(binary),
        n => {
            let mut c = Command::new("mpirun");
            c.args(["-np", &n.to_string()]).arg(binary);
            c
        }
    };
    cmd.args(&st.argv)
        .current_dir(&p.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    cmd.spawn().map_err(|e| {
        let what = match st.ranks {
            1 => binary.display().to_string(),
            n => format!(
                "mpirun for its {n} ranks (install Open MPI: tools/install-mpi.sh, and build the stages with \
                 --features zerolm-train/mpi)"
            ),
        };
        PipelineError::StageFailed(format!(
            "{}: cannot start {what}: {e}",
            p.at(p.stage(&st.name).expect("known"))
        ))
    })
}

/// The threads copying a child's stdout and stderr into its log (and our stderr), keeping the last lines.
struct Tee {
    pumps: Vec<std::thread::JoinHandle<()>>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Tee {
    fn start(child: &mut Child, log: std::fs::File, quiet: bool) -> Tee {
        let log = Arc::new(Mutex::new(log));
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let pumps = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|stream| {
            let (log, tail) = (log.clone(), tail.clone());
            std::thread::spawn(move || pump(stream, &log, &tail, quiet))
        })
        .collect();
        Tee { pumps, tail }
    }

    /// Waits for the streams to end; the last lines of output.
    fn finish(self) -> Vec<String> {
        for t in self.pumps {
            let _ = t.join();
        }
        let tail = self.tail.lock().expect("tail");
        tail.iter().cloned().collect()
    }
}

/// The error for a stage that exited with `status`: how, and the last lines of its log.
fn stage_failed(
    p: &Pipeline,
    st: &Stage,
    status: ExitStatus,
    tail: &[String],
    log_path: &Path,
) -> PipelineError {
    let how = match status.code() {
        Some(c) => format!("exit code {c}"),
        None => {
            use std::os::unix::process::ExitStatusExt;
            format!("killed by signal {}", status.signal().unwrap_or(0))
        }
    };
    PipelineError::StageFailed(format!(
        "{} failed ({how}); downstream stages were not run. Last lines of its log ({}):\n{}",
        p.at(p.stage(&st.name).expect("known")),
        relative(log_path),
        tail.iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    ))
}

const TAIL_LINES: usize = 20;

fn pump(
    stream: Box<dyn Read + Send>,
    log: &Mutex<std::fs::File>,
    tail: &Mutex<VecDeque<String>>,
    quiet: bool,
) {
    let reader = BufReader::new(stream);
    for chunk in reader.split(b'\n') {
        let Ok(bytes) = chunk else { break };
        let text = String::from_utf8_lossy(&bytes);
        // A progress bar redraws with \r: keep the last state of the line.
        let line = text.rsplit('\r').next().unwrap_or("").to_string();
        if let Ok(mut f) = log.lock() {
            let _ = writeln!(f, "{line}");
        }
        if !quiet {
            eprintln!("    │ {line}");
        }
        let mut t = tail.lock().expect("tail");
        t.push_back(line);
        if t.len() > TAIL_LINES {
            t.pop_front();
        }
    }
}

/// On Linux the stage is killed when the pipeline dies (even by SIGKILL), so a killed pipeline never
/// leaves a stage writing its outputs behind a later run's back.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_flags_pick_the_stages() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in"), "x").unwrap();
        let text = "stages:
  a: {cmd: x, args: {input: in, out: a}}
  b: {cmd: x, args: {input: a, out: b}}
  c: {cmd: x, args: {input: b, out: c}}
  d: {cmd: x, args: {input: in, out: d}}
";
        let p = Pipeline::parse(text, Path::new("s.yaml"), dir.path(), &[]).unwrap();
        let g = Graph::build(&p).unwrap();
        let pick = |sel: Selection| {
            let (order, forced) = select(&p, &g, &sel).unwrap();
            let names = |v: Vec<usize>| -> Vec<String> {
                v.into_iter().map(|i| p.stages[i].name.clone()).collect()
            };
            (names(order), names(forced.into_iter().collect()))
        };
        let from = |s: &str| Selection {
            from: Some(s.into()),
            ..Selection::default()
        };
        assert_eq!(
            pick(from("b")),
            (vec!["b".into(), "c".into()], vec!["b".into()])
        );
        let until = Selection {
            until: Some("b".into()),
            force_all: true,
            ..Selection::default()
        };
        assert_eq!(
            pick(until),
            (vec!["a".into(), "b".into()], vec!["a".into(), "b".into()])
        );
        let only = Selection {
            only: Some("d".into()),
            ..Selection::default()
        };
        assert_eq!(pick(only).0, vec!["d".to_string()]);
        let bad = Selection {
            only: Some("d".into()),
            force: vec!["a".into()],
            ..Selection::default()
        };
        let e = select(&p, &g, &bad).unwrap_err().to_string();
        assert!(
            e.contains("--force a: stage `a` is not among the selected"),
            "{e}"
        );
        let e = select(&p, &g, &from("zz")).unwrap_err().to_string();
        assert!(e.contains("no stage `zz` (stages: a, b, c, d)"), "{e}");
    }

    #[test]
    fn argument_groups_and_quoting() {
        let argv: Vec<String> = ["sub", "--lr", "0.1", "--strict", "--input", "a b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            groups(&argv),
            ["sub", "--lr 0.1", "--strict", "--input a b"]
        );
        assert_eq!(
            shell_line("x", &argv),
            "x sub --lr 0.1 --strict --input 'a b'"
        );
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
