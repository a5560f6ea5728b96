//! Pipeline files: the YAML schema, `${…}` interpolation, `--set` overrides, and the resolved stages
//! (program, argument vector, deps and outs as absolute paths) that the rest of the crate works on.
//!
//! ```yaml
//! vars:
//!   out: ../runs
//! run_dir: ${vars.out}/.pipeline        # optional; default .zerolm/<file stem> beside the YAML
//! stages:
//!   tokenizer:
//!     cmd: tokenize train-tokenizer      # the binary, then any sub-command words
//!     args:                              # each key becomes --key value (see `flag_values`)
//!       input: ../data/pretrain.jsonl
//!       out: ${vars.out}/tokenizer
//!   tok-pretrain:
//!     cmd: tokenize pretrain
//!     args:
//!       tokenizer: ${stages.tokenizer.outs[0]}
//! results:                               # optional; printed after a run
//!   tokenizer: ${vars.out}/tokenizer
//! ```
//!
//! Relative paths are relative to the YAML file's directory: stages run with that directory as their
//! working directory, and deps and outs are resolved against it.

use crate::error::{PipelineError, Result};
use crate::resources::{ExecutorKind, RawResources, Resources};
use indexmap::IndexMap;
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// Argument keys whose values are inputs of the stage (added to its deps).
pub const DEP_FLAGS: &[&str] = &[
    "input",
    "eval-input",
    "tokenizer",
    "model",
    "ref-model",
    "ref-cache",
    "eval-ref-cache",
    "answer-check",
    "config",
];
/// `eval --task [KIND:]FILE`: the file is an input of the stage (added to its deps without its kind).
const TASK_FLAG: &str = "task";
/// Argument keys whose values are outputs of the stage (added to its outs).
pub const OUT_FLAGS: &[&str] = &["out"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(default)]
    vars: IndexMap<String, Value>,
    #[serde(default)]
    run_dir: Option<String>,
    #[serde(default)]
    results: IndexMap<String, String>,
    /// Where stages without their own `executor:` run (`local` when absent).
    #[serde(default)]
    executor: Option<String>,
    /// Resources of stages that do not name their own.
    #[serde(default)]
    resources: RawResources,
    stages: IndexMap<String, RawStage>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawStage {
    cmd: Value,
    #[serde(default)]
    args: IndexMap<String, Value>,
    #[serde(default)]
    deps: Vec<String>,
    #[serde(default)]
    outs: Vec<String>,
    #[serde(default)]
    desc: Option<String>,
    /// Ranks to launch the stage on (`mpirun -np N`); 1 when absent.
    #[serde(default)]
    ranks: Option<Value>,
    /// `local` or `slurm`; the pipeline's (or `--executor`'s) when absent.
    #[serde(default)]
    executor: Option<Value>,
    #[serde(default)]
    resources: RawResources,
}

/// A path as the pipeline file wrote it (after interpolation) and resolved against the file's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRef {
    pub written: String,
    pub abs: PathBuf,
}

/// One resolved stage.
#[derive(Clone, Debug)]
pub struct Stage {
    pub name: String,
    /// 1-based line of the stage's key in the pipeline file.
    pub line: usize,
    pub desc: Option<String>,
    /// The binary as written: a name looked up next to `pipeline`, then on PATH, or a path.
    pub program: String,
    /// Sub-command words, then the flags from `args`.
    pub argv: Vec<String>,
    pub deps: Vec<PathRef>,
    pub outs: Vec<PathRef>,
    /// Ranks the stage runs on: more than one launches it through `mpirun -np N` (`srun` under Slurm).
    pub ranks: usize,
    /// Its own `executor:`, if it names one.
    pub executor: Option<ExecutorKind>,
    pub resources: Resources,
}

impl Stage {
    /// Cores each rank uses: `resources.cpus`, else the value of its `--threads`, else 1.
    pub fn cpus_per_rank(&self) -> usize {
        self.resources.cpus.unwrap_or_else(|| {
            self.argv
                .iter()
                .position(|a| a == "--threads")
                .and_then(|k| self.argv.get(k + 1))
                .and_then(|t| t.parse::<usize>().ok())
                .filter(|&n| n >= 1)
                .unwrap_or(1)
        })
    }
}

/// A loaded, interpolated pipeline (not yet checked as a graph: see `graph::Graph::build`).
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// The file as the user named it (for messages).
    pub file: PathBuf,
    /// The file's directory, absolute: the stages' working directory.
    pub dir: PathBuf,
    /// The file's stem (`full` for `full.yaml`).
    pub name: String,
    /// Where the lock, the logs and the run state live.
    pub run_dir: PathBuf,
    pub stages: Vec<Stage>,
    /// Labelled paths printed after a run (`results:`).
    pub results: Vec<(String, PathBuf)>,
    /// The pipeline's `executor:`, if it names one.
    pub executor: Option<ExecutorKind>,
}

impl Pipeline {
    /// Reads `file` and applies `sets` (`STAGE.KEY=VALUE` sets an argument, `vars.NAME=VALUE` a variable).
    pub fn load(file: &Path, sets: &[String]) -> Result<Pipeline> {
        let text = std::fs::read_to_string(file).map_err(|e| PipelineError::read(file, e))?;
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = dir
            .canonicalize()
            .map_err(|e| PipelineError::read(dir, e))?;
        Pipeline::parse(&text, file, &dir, sets)
    }

    /// Parses pipeline `text` as if read from `file` in directory `dir` (absolute).
    pub fn parse(text: &str, file: &Path, dir: &Path, sets: &[String]) -> Result<Pipeline> {
        let src = Source::new(text, file);
        let mut raw = src.read(text)?;
        src.check_stage_names(&raw)?;
        apply_sets(&mut raw, sets)?;
        let vars = src.resolve_vars(&raw)?;
        // Outs first (they may use vars only), so that stages can refer to each other's outs.
        let outs = src.written_outs(&raw, &vars)?;
        let ctx = Context {
            vars: &vars,
            outs: Some(&outs),
        };
        let stages = src.resolve_stages(&raw, &ctx, dir)?;
        let name = pipeline_name(file);
        let run_dir = src.run_dir(raw.run_dir.as_deref(), &ctx, dir, &name)?;
        let results = src.results(&raw.results, &ctx, dir)?;
        let executor = raw
            .executor
            .as_deref()
            .map(ExecutorKind::parse)
            .transpose()
            .map_err(|e| src.invalid(format!("executor: {e}")))?;
        Ok(Pipeline {
            executor,
            file: file.to_path_buf(),
            dir: dir.to_path_buf(),
            name,
            run_dir,
            stages,
            results,
        })
    }

    pub fn stage(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// The index of stage `name`, or a usage error listing the stages.
    pub fn stage_index(&self, name: &str, flag: &str) -> Result<usize> {
        self.stage(name).ok_or_else(|| {
            PipelineError::Usage(format!(
                "{flag} {name}: {} has no stage `{name}` (stages: {})",
                self.file.display(),
                self.stage_names().join(", ")
            ))
        })
    }

    pub fn stage_names(&self) -> Vec<&str> {
        self.stages.iter().map(|s| s.name.as_str()).collect()
    }

    /// `file:line: stage `name`` for messages.
    pub fn at(&self, i: usize) -> String {
        format!(
            "{}:{}: stage `{}`",
            self.file.display(),
            self.stages[i].line,
            self.stages[i].name
        )
    }
}

/// The pipeline file being parsed, as its messages name it: the file as shown and each stage's line.
struct Source {
    shown: String,
    lines: HashMap<String, usize>,
}

impl Source {
    fn new(text: &str, file: &Path) -> Source {
        Source {
            shown: file.display().to_string(),
            lines: stage_lines(text),
        }
    }

    fn line_of(&self, name: &str) -> usize {
        self.lines.get(name).copied().unwrap_or(1)
    }

    /// `file:line: stage `name`` for messages.
    fn at(&self, name: &str) -> String {
        format!("{}:{}: stage `{name}`", self.shown, self.line_of(name))
    }

    /// `file: what`, for a part of the file that is not a stage.
    fn invalid(&self, what: impl std::fmt::Display) -> PipelineError {
        PipelineError::Invalid(format!("{}: {what}", self.shown))
    }

    /// `file:line: stage `name`: what`.
    fn stage_invalid(&self, name: &str, what: impl std::fmt::Display) -> PipelineError {
        PipelineError::Invalid(format!("{}: {what}", self.at(name)))
    }

    /// The YAML as written, with at least one stage.
    fn read(&self, text: &str) -> Result<RawPipeline> {
        let raw: RawPipeline = serde_yaml::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(":{}", l.line()))
                .unwrap_or_default();
            PipelineError::Invalid(format!("{}{at}: {e}", self.shown))
        })?;
        if raw.stages.is_empty() {
            return Err(self.invalid("`stages:` is empty; a pipeline needs at least one stage"));
        }
        Ok(raw)
    }

    fn check_stage_names(&self, raw: &RawPipeline) -> Result<()> {
        for name in raw.stages.keys() {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(self.stage_invalid(
                    name,
                    "stage names may use letters, digits, `-` and `_` only",
                ));
            }
        }
        Ok(())
    }

    /// The variables, in order; each may use the ones before it.
    fn resolve_vars(&self, raw: &RawPipeline) -> Result<IndexMap<String, String>> {
        let mut vars: IndexMap<String, String> = IndexMap::new();
        for (name, value) in &raw.vars {
            let s = scalar(value).ok_or_else(|| {
                self.invalid(format!(
                    "vars.{name}: a variable must be a string, number or boolean"
                ))
            })?;
            let ctx = Context {
                vars: &vars,
                outs: None,
            };
            let s = interpolate(&s, &ctx).map_err(|e| self.invalid(format!("vars.{name}: {e}")))?;
            vars.insert(name.clone(), s);
        }
        Ok(vars)
    }

    /// Each stage's outs as written (`outs:` then the out flags of `args`), interpolated with vars only.
    fn written_outs(
        &self,
        raw: &RawPipeline,
        vars: &IndexMap<String, String>,
    ) -> Result<HashMap<String, Vec<String>>> {
        let vars_only = Context { vars, outs: None };
        let mut outs_written = HashMap::new();
        for (name, st) in &raw.stages {
            outs_written.insert(name.clone(), self.stage_outs(name, st, &vars_only)?);
        }
        Ok(outs_written)
    }

    fn stage_outs(&self, name: &str, st: &RawStage, ctx: &Context) -> Result<Vec<String>> {
        let mut outs = interpolate_all(&st.outs, ctx)
            .map_err(|e| self.stage_invalid(name, format!("outs: {e}")))?;
        for key in OUT_FLAGS {
            if let Some(v) = st.args.get(*key) {
                for s in flag_strings(v) {
                    outs.push(
                        interpolate(&s, ctx)
                            .map_err(|e| self.stage_invalid(name, format!("args.{key}: {e}")))?,
                    );
                }
            }
        }
        Ok(outs)
    }

    /// The stages in file order, with `ctx` holding every stage's outs.
    fn resolve_stages(&self, raw: &RawPipeline, ctx: &Context, dir: &Path) -> Result<Vec<Stage>> {
        let outs = ctx.outs.expect("the stages' outs are known");
        raw.stages
            .iter()
            .map(|(name, st)| {
                let mut stage = self.resolve_stage(name, st, outs[name].clone(), ctx, dir)?;
                stage.resources =
                    Resources::resolve(&st.resources, &raw.resources, &|t| interpolate(t, ctx))
                        .map_err(|e| self.stage_invalid(name, e))?;
                Ok(stage)
            })
            .collect()
    }

    fn resolve_stage(
        &self,
        name: &str,
        st: &RawStage,
        outs: Vec<String>,
        ctx: &Context,
        dir: &Path,
    ) -> Result<Stage> {
        let here = self.at(name);
        let (program, mut argv) = command(&here, &st.cmd, ctx)?;
        let mut deps = interpolate_all(&st.deps, ctx)
            .map_err(|e| PipelineError::Invalid(format!("{here}: deps: {e}")))?;
        push_args(&here, &st.args, ctx, &mut argv, &mut deps)?;
        let ranks = ranks(&here, st.ranks.as_ref(), ctx)?;
        let executor = st
            .executor
            .as_ref()
            .map(|v| {
                scalar(v)
                    .ok_or_else(|| "expected `local` or `slurm`".to_string())
                    .and_then(|t| interpolate(&t, ctx))
                    .and_then(|t| ExecutorKind::parse(&t))
            })
            .transpose()
            .map_err(|e| PipelineError::Invalid(format!("{here}: executor: {e}")))?;
        Ok(Stage {
            executor,
            resources: Resources::default(),
            name: name.to_string(),
            line: self.line_of(name),
            desc: st.desc.clone(),
            program,
            argv,
            deps: resolve_paths(dir, deps),
            outs: resolve_paths(dir, outs),
            ranks,
        })
    }

    /// `run_dir:` resolved, or `.zerolm/<name>` beside the file.
    fn run_dir(
        &self,
        written: Option<&str>,
        ctx: &Context,
        dir: &Path,
        name: &str,
    ) -> Result<PathBuf> {
        Ok(match written {
            Some(r) => normalize(
                &dir.join(interpolate(r, ctx).map_err(|e| self.invalid(format!("run_dir: {e}")))?),
            ),
            None => dir.join(".zerolm").join(name),
        })
    }

    /// `results:`, each path resolved.
    fn results(
        &self,
        written: &IndexMap<String, String>,
        ctx: &Context,
        dir: &Path,
    ) -> Result<Vec<(String, PathBuf)>> {
        let mut results = Vec::new();
        for (label, path) in written {
            let p = interpolate(path, ctx)
                .map_err(|e| self.invalid(format!("results.{label}: {e}")))?;
            results.push((label.clone(), normalize(&dir.join(p))));
        }
        Ok(results)
    }
}

/// The pipeline's name: the file's stem (`full` for `full.yaml`).
fn pipeline_name(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline".into())
}

/// The stage's binary and its sub-command words from `cmd`; `here` names the stage in messages.
fn command(here: &str, cmd: &Value, ctx: &Context) -> Result<(String, Vec<String>)> {
    let words = cmd_words(cmd).ok_or_else(|| {
        PipelineError::Invalid(format!(
            "{here}: `cmd` must be a string (`tokenize pretrain`) or a list of words"
        ))
    })?;
    let mut argv = interpolate_all(&words, ctx)
        .map_err(|e| PipelineError::Invalid(format!("{here}: cmd: {e}")))?;
    if argv.is_empty() {
        return Err(PipelineError::Invalid(format!(
            "{here}: `cmd` is empty; name the stage's binary"
        )));
    }
    let program = argv.remove(0);
    Ok((program, argv))
}

/// Appends the flags of `args` to `argv`, and the values of dep flags (`DEP_FLAGS`) to `deps`.
fn push_args(
    here: &str,
    args: &IndexMap<String, Value>,
    ctx: &Context,
    argv: &mut Vec<String>,
    deps: &mut Vec<String>,
) -> Result<()> {
    for (key, value) in args {
        if key.is_empty() || key.starts_with('-') || key.contains(char::is_whitespace) {
            return Err(PipelineError::Invalid(format!(
                "{here}: args: `{key}` is not a flag name (write `lr: 3e-3` for --lr 3e-3)"
            )));
        }
        let invalid = |e: String| PipelineError::Invalid(format!("{here}: args.{key}: {e}"));
        for v in flag_values(value).map_err(invalid)? {
            argv.push(format!("--{key}"));
            if let Some(v) = v {
                let v = interpolate(&v, ctx).map_err(invalid)?;
                if DEP_FLAGS.contains(&key.as_str()) {
                    deps.push(v.clone());
                } else if key == TASK_FLAG {
                    deps.push(task_file(&v).to_string());
                }
                argv.push(v);
            }
        }
    }
    Ok(())
}

/// The file of an `eval` task (`mc:data/x.jsonl` → `data/x.jsonl`).
fn task_file(task: &str) -> &str {
    ["mc:", "ppl:", "answer:"]
        .iter()
        .find_map(|k| task.strip_prefix(k))
        .unwrap_or(task)
}

/// Paths as written, resolved against `dir`, without duplicates (first kept).
fn resolve_paths(dir: &Path, written: Vec<String>) -> Vec<PathRef> {
    let mut v: Vec<PathRef> = Vec::new();
    for w in written {
        let abs = normalize(&dir.join(&w));
        if !v.iter().any(|p| p.abs == abs) {
            v.push(PathRef { written: w, abs });
        }
    }
    v
}

/// A stage's `ranks:` (interpolated), a whole number ≥ 1; 1 when absent.
fn ranks(here: &str, written: Option<&Value>, ctx: &Context) -> Result<usize> {
    let Some(v) = written else {
        return Ok(1);
    };
    let text = scalar(v)
        .map(|s| interpolate(&s, ctx))
        .transpose()
        .map_err(|e| PipelineError::Invalid(format!("{here}: ranks: {e}")))?;
    text.as_deref()
        .and_then(|t| t.trim().parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .ok_or_else(|| {
            PipelineError::Invalid(format!(
                "{here}: ranks: expected a whole number ≥ 1 (the MPI ranks to launch the stage on), got {}",
                text.unwrap_or_else(|| format!("{v:?}"))
            ))
        })
}

/// Applies `--set` overrides to the raw file.
fn apply_sets(raw: &mut RawPipeline, sets: &[String]) -> Result<()> {
    for set in sets {
        let bad = |why: &str| PipelineError::Usage(format!("--set {set}: {why}"));
        let (key, value) = set
            .split_once('=')
            .ok_or_else(|| bad("expected STAGE.KEY=VALUE or vars.NAME=VALUE"))?;
        let (scope, key) = key
            .split_once('.')
            .ok_or_else(|| bad("expected STAGE.KEY=VALUE or vars.NAME=VALUE"))?;
        if key.is_empty() {
            return Err(bad("the key after the `.` is empty"));
        }
        let value: Value =
            serde_yaml::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        if scope == "vars" {
            if !raw.vars.contains_key(key) {
                let known: Vec<&str> = raw.vars.keys().map(String::as_str).collect();
                return Err(bad(&format!(
                    "no variable `{key}` (vars: {})",
                    known.join(", ")
                )));
            }
            raw.vars.insert(key.to_string(), value);
        } else {
            let known: Vec<String> = raw.stages.keys().cloned().collect();
            let stage = raw.stages.get_mut(scope).ok_or_else(|| {
                bad(&format!(
                    "no stage `{scope}` (stages: {})",
                    known.join(", ")
                ))
            })?;
            if key == "ranks" {
                stage.ranks = Some(value);
            } else if key == "executor" {
                stage.executor = Some(value);
            } else if let Some(res) = key.strip_prefix("resources.") {
                stage.resources.set(res, value).map_err(|e| bad(&e))?;
            } else {
                stage.args.insert(key.to_string(), value);
            }
        }
    }
    Ok(())
}

/// The string form of a scalar YAML value.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// What `--key` receives for an `args` value: a scalar gives `--key value`; `true` gives a bare `--key`;
/// `false` and `null` give nothing; a list repeats the flag per item; a map gives `--key k=v` per entry
/// (for `set:`).
fn flag_values(v: &Value) -> std::result::Result<Vec<Option<String>>, String> {
    Ok(match v {
        Value::Null | Value::Bool(false) => vec![],
        Value::Bool(true) => vec![None],
        Value::String(_) | Value::Number(_) => vec![scalar(v)],
        Value::Sequence(items) => {
            let mut out = Vec::new();
            for item in items {
                out.push(Some(scalar(item).ok_or_else(|| {
                    "list items must be strings or numbers".to_string()
                })?));
            }
            out
        }
        Value::Mapping(m) => {
            let mut out = Vec::new();
            for (k, val) in m {
                let (k, val) = scalar(k)
                    .zip(scalar(val))
                    .ok_or_else(|| "map entries must be `key: scalar`".to_string())?;
                out.push(Some(format!("{k}={val}")));
            }
            out
        }
        Value::Tagged(_) => return Err("tagged values are not supported".into()),
    })
}

/// The string values of an `args` entry (for deps and outs).
fn flag_strings(v: &Value) -> Vec<String> {
    flag_values(v)
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

fn cmd_words(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(s.split_whitespace().map(str::to_string).collect()),
        Value::Sequence(items) => items.iter().map(scalar).collect(),
        _ => None,
    }
}

struct Context<'a> {
    vars: &'a IndexMap<String, String>,
    outs: Option<&'a HashMap<String, Vec<String>>>,
}

/// Replaces `${vars.NAME}` and `${stages.NAME.outs[N]}`; `$${` is a literal `${`.
fn interpolate(s: &str, ctx: &Context) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("`{s}`: `${{` without a closing `}}`"))?;
            out.push_str(&lookup(tail[..end].trim(), ctx)?);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// [`interpolate`] for each item, stopping at the first error.
fn interpolate_all(items: &[String], ctx: &Context) -> std::result::Result<Vec<String>, String> {
    items.iter().map(|s| interpolate(s, ctx)).collect()
}

fn lookup(expr: &str, ctx: &Context) -> std::result::Result<String, String> {
    if let Some(name) = expr.strip_prefix("vars.") {
        return ctx.vars.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = ctx.vars.keys().map(String::as_str).collect();
            format!(
                "`${{{expr}}}`: no variable `{name}` defined above it (vars: {})",
                known.join(", ")
            )
        });
    }
    if let Some(rest) = expr.strip_prefix("stages.") {
        let outs = ctx
            .outs
            .ok_or_else(|| format!("`${{{expr}}}`: only vars may be used here"))?;
        let parsed = rest.split_once(".outs[").and_then(|(stage, idx)| {
            idx.strip_suffix(']')
                .and_then(|i| i.parse::<usize>().ok())
                .map(|i| (stage, i))
        });
        let (stage, i) = parsed.ok_or_else(|| {
            format!("`${{{expr}}}`: write `${{stages.NAME.outs[N]}}`, N counting from 0")
        })?;
        let list = outs
            .get(stage)
            .ok_or_else(|| format!("`${{{expr}}}`: no stage `{stage}`"))?;
        return list.get(i).cloned().ok_or_else(|| {
            format!(
                "`${{{expr}}}`: stage `{stage}` has {} out(s), so outs[{i}] does not exist",
                list.len()
            )
        });
    }
    Err(format!(
        "`${{{expr}}}`: unknown reference; use `${{vars.NAME}}` or `${{stages.NAME.outs[N]}}`"
    ))
}

/// The 1-based line of each stage key under `stages:`.
fn stage_lines(text: &str) -> HashMap<String, usize> {
    let mut lines = HashMap::new();
    let mut in_stages = false;
    let mut indent: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let depth = line.len() - trimmed.len();
        if depth == 0 {
            in_stages = trimmed.starts_with("stages:");
            indent = None;
            continue;
        }
        if !in_stages {
            continue;
        }
        let depth_here = *indent.get_or_insert(depth);
        if depth == depth_here {
            if let Some((key, _)) = trimmed.split_once(':') {
                let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
                lines.entry(key.to_string()).or_insert(i + 1);
            }
        }
    }
    lines
}

/// `a/./b/../c` → `a/c`, without touching the file system (outputs may not exist yet).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, sets: &[&str]) -> Result<Pipeline> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Pipeline::parse(text, Path::new("p/x.yaml"), Path::new("/w/p"), &sets)
    }

    const TWO: &str = "\
vars:
  out: ../runs
  n: 3
stages:
  a:
    cmd: tokenize train-tokenizer
    args:
      input: ../data/a.jsonl
      out: ${vars.out}/tok
      vocab-size: 400
      strict: true
      skip-bad: false
  b:
    cmd: [pretrain]
    args:
      tokenizer: ${stages.a.outs[0]}
      input: [x.parquet, y.parquet]
      set: {train.lr: 0.001}
      epochs: ${vars.n}
    outs: [extra]
";

    #[test]
    fn eval_task_files_are_deps_without_their_kind() {
        let text = "stages:\n  e:\n    cmd: eval\n    args:\n      task: [mc:../d/a.jsonl, ../d/b.jsonl]\n      out: r.json\n";
        let p = parse(text, &[]).unwrap();
        let e = &p.stages[0];
        assert_eq!(
            e.argv,
            [
                "--task",
                "mc:../d/a.jsonl",
                "--task",
                "../d/b.jsonl",
                "--out",
                "r.json"
            ]
        );
        let deps: Vec<_> = e.deps.iter().map(|d| d.abs.clone()).collect();
        assert_eq!(
            deps,
            [PathBuf::from("/w/d/a.jsonl"), PathBuf::from("/w/d/b.jsonl")]
        );
    }

    #[test]
    fn args_become_flags_and_paths_resolve_against_the_file() {
        let p = parse(TWO, &[]).unwrap();
        let a = &p.stages[0];
        assert_eq!(a.line, 5);
        assert_eq!(a.program, "tokenize");
        assert_eq!(
            a.argv,
            [
                "train-tokenizer",
                "--input",
                "../data/a.jsonl",
                "--out",
                "../runs/tok",
                "--vocab-size",
                "400",
                "--strict"
            ]
        );
        assert_eq!(a.deps[0].abs, PathBuf::from("/w/data/a.jsonl"));
        assert_eq!(a.outs[0].abs, PathBuf::from("/w/runs/tok"));
        let b = &p.stages[1];
        assert_eq!(b.line, 13);
        assert_eq!(
            b.argv,
            [
                "--tokenizer",
                "../runs/tok",
                "--input",
                "x.parquet",
                "--input",
                "y.parquet",
                "--set",
                "train.lr=0.001",
                "--epochs",
                "3"
            ]
        );
        let deps: Vec<&str> = b.deps.iter().map(|d| d.written.as_str()).collect();
        assert_eq!(deps, ["../runs/tok", "x.parquet", "y.parquet"]);
        assert_eq!(b.outs[0].abs, PathBuf::from("/w/p/extra"));
        assert_eq!(p.run_dir, PathBuf::from("/w/p/.zerolm/x"));
    }

    #[test]
    fn set_overrides_an_argument_or_a_variable() {
        let p = parse(TWO, &["a.vocab-size=500", "vars.out=/tmp/o", "b.lr=3e-3"]).unwrap();
        assert!(p.stages[0]
            .argv
            .windows(2)
            .any(|w| w == ["--vocab-size", "500"]));
        assert_eq!(p.stages[0].outs[0].abs, PathBuf::from("/tmp/o/tok"));
        assert!(p.stages[1].argv.windows(2).any(|w| w == ["--lr", "0.003"]));
        let e = parse(TWO, &["c.lr=1"]).unwrap_err().to_string();
        assert!(
            e.contains("no stage `c`") && e.contains("stages: a, b"),
            "{e}"
        );
        let e = parse(TWO, &["vars.nope=1"]).unwrap_err().to_string();
        assert!(e.contains("no variable `nope`"), "{e}");
        let e = parse(TWO, &["lr=1"]).unwrap_err().to_string();
        assert!(e.contains("STAGE.KEY=VALUE"), "{e}");
    }

    #[test]
    fn ranks_come_from_the_stage_a_variable_or_set_and_must_be_whole() {
        let p = parse(TWO, &[]).unwrap();
        assert_eq!((p.stages[0].ranks, p.stages[1].ranks), (1, 1));
        let p = parse(TWO, &["b.ranks=2"]).unwrap();
        assert_eq!(p.stages[1].ranks, 2);
        assert!(!p.stages[1].argv.iter().any(|a| a == "--ranks"));
        let text = TWO.replace(
            "    outs: [extra]",
            "    outs: [extra]\n    ranks: ${vars.n}",
        );
        assert_eq!(parse(&text, &[]).unwrap().stages[1].ranks, 3);
        for bad in ["0", "two", "1.5"] {
            let e = parse(TWO, &[&format!("b.ranks={bad}")])
                .unwrap_err()
                .to_string();
            assert!(e.contains("ranks: expected a whole number ≥ 1"), "{e}");
        }
    }

    #[test]
    fn executors_and_resources_come_from_the_pipeline_the_stage_or_set() {
        let text = TWO.replacen(
            "stages:",
            "executor: slurm\nresources: {time: 60, cpus: 2}\nstages:",
            1,
        );
        let p = parse(&text, &["b.executor=local", "b.resources.mem=8G"]).unwrap();
        assert_eq!(p.executor, Some(ExecutorKind::Slurm));
        assert_eq!(p.stages[0].executor, None);
        assert_eq!(p.stages[1].executor, Some(ExecutorKind::Local));
        assert_eq!(p.stages[1].resources.mem.as_deref(), Some("8G"));
        assert_eq!(p.stages[1].resources.time.as_deref(), Some("60"));
        assert_eq!(p.stages[0].cpus_per_rank(), 2);
        assert_eq!(parse(TWO, &[]).unwrap().stages[0].cpus_per_rank(), 1);
        let threads = parse(TWO, &["a.threads=4"]).unwrap();
        assert_eq!(threads.stages[0].cpus_per_rank(), 4);
        let e = parse(TWO, &["b.executor=pbs"]).unwrap_err().to_string();
        assert!(
            e.contains("p/x.yaml:")
                && e.contains("stage `b`: executor: executor `pbs` is not known"),
            "{e}"
        );
        let e = parse(TWO, &["b.resources.time=1h"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("stage `b`: resources.time: `1h` is not a Slurm time limit"),
            "{e}"
        );
        let e = parse(TWO, &["b.resources.cores=2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`resources.cores` is not a resource"), "{e}");
        let e = parse(&TWO.replacen("stages:", "executor: pbs\nstages:", 1), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("p/x.yaml: executor: executor `pbs`"), "{e}");
    }

    #[test]
    fn unknown_keys_name_the_file_and_line() {
        let text = "stages:\n  a:\n    cmd: x\n    argz: {}\n";
        let e = parse(text, &[]).unwrap_err().to_string();
        assert!(e.starts_with("p/x.yaml:4:"), "{e}");
        assert!(e.contains("unknown field `argz`"), "{e}");
        let e = parse("stagez: {}\n", &[]).unwrap_err().to_string();
        assert!(
            e.contains("p/x.yaml:1") && e.contains("unknown field `stagez`"),
            "{e}"
        );
    }

    #[test]
    fn bad_references_are_named() {
        let text = "stages:\n  a:\n    cmd: x\n    args:\n      out: o\n  b:\n    cmd: y\n    args:\n      input: ${stages.a.outs[1]}\n";
        let e = parse(text, &[]).unwrap_err().to_string();
        assert!(e.contains("p/x.yaml:6: stage `b`"), "{e}");
        assert!(e.contains("has 1 out(s)"), "{e}");
        let text = "stages:\n  a:\n    cmd: x ${vars.nope}\n";
        let e = parse(text, &[]).unwrap_err().to_string();
        assert!(e.contains("no variable `nope`"), "{e}");
        let text = "stages:\n  a:\n    cmd: x ${oops\n";
        let e = parse(text, &[]).unwrap_err().to_string();
        assert!(e.contains("without a closing"), "{e}");
        let text = "stages:\n  a:\n    cmd: x\n    outs: ['${stages.b.outs[0]}']\n";
        let e = parse(text, &[]).unwrap_err().to_string();
        assert!(e.contains("only vars"), "{e}");
        let text = "stages:\n  a b:\n    cmd: x\n";
        let e = parse(text, &[]).unwrap_err().to_string();
        assert!(e.contains("stage names"), "{e}");
    }

    #[test]
    fn dollar_escapes_and_normalisation() {
        let text = "stages:\n  a:\n    cmd: echo $${HOME} $5\n";
        let p = parse(text, &[]).unwrap();
        assert_eq!(p.stages[0].argv, ["${HOME}", "$5"]);
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("../x")), PathBuf::from("../x"));
    }
}
