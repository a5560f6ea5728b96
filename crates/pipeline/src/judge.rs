//! Deciding, stage by stage, whether a stage is up to date: its fingerprint (binary hash, argument
//! vector, rank count, dep hashes) against the lock, and its outputs against the hashes it wrote. Also
//! which stages a run selects (`--from`, `--until`, `--only`, `--force`) and `status`.

use crate::error::{PipelineError, Result};
use crate::graph::Graph;
use crate::lockfile::{LockEntry, LockFile, RunState};
use crate::spec::{Pipeline, Stage};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

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

/// Whether a stage needs to run, and why.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    UpToDate,
    Run(Vec<String>),
}

/// The fingerprint of a stage as it stands now.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    pub binary: PathBuf,
    pub binary_hash: String,
    pub deps: BTreeMap<String, String>,
    /// Deps that do not exist (yet).
    pub missing: Vec<String>,
    pub value: String,
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
pub fn locate_stage(stage: &Stage, p: &Pipeline) -> Result<PathBuf> {
    locate(&stage.program, p).map_err(|e| {
        PipelineError::Invalid(format!(
            "{}:{}: stage `{}`: {e}",
            p.file.display(),
            stage.line,
            stage.name
        ))
    })
}

pub fn fingerprint(stage: &Stage, p: &Pipeline, state: &mut RunState) -> Result<Fingerprint> {
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
pub fn judge(
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
pub fn select(p: &Pipeline, g: &Graph, sel: &Selection) -> Result<(Vec<usize>, BTreeSet<usize>)> {
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

pub fn status_of(
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
        if let (Verdict::Run(why), Some(job)) = (&mut v, state.jobs.get(&st.name)) {
            why.push(format!(
                "Slurm job {} was submitted for it by an earlier run; the next run follows that job if it \
                 still runs",
                job.id
            ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
    fn argument_groups() {
        let argv: Vec<String> = ["sub", "--lr", "0.1", "--strict", "--input", "a b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            groups(&argv),
            ["sub", "--lr 0.1", "--strict", "--input a b"]
        );
    }
}
