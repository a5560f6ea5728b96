//! Where a stage runs and what it asks for: the `executor:` (local or Slurm) and the `resources:` block
//! (cpus, mem, gpus, time, partition, account, nodes), each given per pipeline (the default) and per stage.
//!
//! ```yaml
//! executor: slurm            # every stage without its own `executor:`; `pipeline run --executor` overrides
//! resources: {time: "2:00:00", partition: cpu}
//! stages:
//!   pretrain:
//!     resources: {cpus: 8, mem: 16G, gpus: 1, time: "12:00:00"}
//!   report:
//!     executor: local
//! ```

use serde::Deserialize;
use serde_yaml::Value;

/// Where a stage's command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorKind {
    /// A child process of `pipeline run`.
    Local,
    /// An `sbatch` job.
    Slurm,
}

impl ExecutorKind {
    pub fn parse(s: &str) -> Result<ExecutorKind, String> {
        match s.trim() {
            "local" => Ok(ExecutorKind::Local),
            "slurm" => Ok(ExecutorKind::Slurm),
            other => Err(format!(
                "executor `{other}` is not known; use `local` or `slurm`"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Local => "local",
            ExecutorKind::Slurm => "slurm",
        }
    }
}

/// `resources:` as written (values may use `${vars.…}`).
#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RawResources {
    cpus: Option<Value>,
    mem: Option<Value>,
    gpus: Option<Value>,
    time: Option<Value>,
    partition: Option<Value>,
    account: Option<Value>,
    nodes: Option<Value>,
    #[serde(rename = "slurm-extra")]
    slurm_extra: Option<Value>,
}

impl RawResources {
    /// Sets one key from `--set STAGE.resources.KEY=VALUE`.
    pub fn set(&mut self, key: &str, value: Value) -> Result<(), String> {
        let slot = match key {
            "cpus" => &mut self.cpus,
            "mem" => &mut self.mem,
            "gpus" => &mut self.gpus,
            "time" => &mut self.time,
            "partition" => &mut self.partition,
            "account" => &mut self.account,
            "nodes" => &mut self.nodes,
            "slurm-extra" => &mut self.slurm_extra,
            _ => return Err(format!("`resources.{key}` is not a resource ({KEYS})")),
        };
        *slot = Some(value);
        Ok(())
    }
}

const KEYS: &str = "cpus, mem, gpus, time, partition, account, nodes, slurm-extra";

/// A stage's resources, resolved and checked. `None` leaves the choice to the executor (Slurm's
/// defaults for its partition).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// Cores per rank; when absent, the stage's `--threads` (else 1).
    pub cpus: Option<usize>,
    /// Memory per node, Slurm's syntax: a number with an optional K/M/G/T suffix.
    pub mem: Option<String>,
    /// GPUs per rank.
    pub gpus: Option<usize>,
    /// Time limit, Slurm's syntax (`90`, `1:30:00`, `2-00:00:00`).
    pub time: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub nodes: Option<usize>,
    /// More `sbatch` options, split on whitespace (`--qos=high --constraint=a100`).
    pub slurm_extra: Vec<String>,
}

impl Resources {
    /// Resolves `stage` over the pipeline's `defaults`; `interp` expands `${…}` in a value.
    pub fn resolve(
        stage: &RawResources,
        defaults: &RawResources,
        interp: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Resources, String> {
        let pick =
            |s: &Option<Value>, d: &Option<Value>, key: &str| -> Result<Option<String>, String> {
                let Some(v) = s.as_ref().or(d.as_ref()) else {
                    return Ok(None);
                };
                let text =
                    scalar(v).ok_or_else(|| format!("resources.{key}: expected a single value"))?;
                interp(&text)
                    .map(Some)
                    .map_err(|e| format!("resources.{key}: {e}"))
            };
        let count = |key: &str, v: Option<String>| -> Result<Option<usize>, String> {
            v.map(|t| {
                t.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| {
                        format!("resources.{key}: expected a whole number ≥ 1, got `{t}`")
                    })
            })
            .transpose()
        };
        let (s, d) = (stage, defaults);
        let mem = pick(&s.mem, &d.mem, "mem")?;
        if let Some(m) = &mem {
            check_mem(m)?;
        }
        let time = pick(&s.time, &d.time, "time")?;
        if let Some(t) = &time {
            check_time(t)?;
        }
        Ok(Resources {
            cpus: count("cpus", pick(&s.cpus, &d.cpus, "cpus")?)?,
            mem,
            gpus: count("gpus", pick(&s.gpus, &d.gpus, "gpus")?)?,
            time,
            partition: pick(&s.partition, &d.partition, "partition")?,
            account: pick(&s.account, &d.account, "account")?,
            nodes: count("nodes", pick(&s.nodes, &d.nodes, "nodes")?)?,
            slurm_extra: pick(&s.slurm_extra, &d.slurm_extra, "slurm-extra")?
                .map(|x| x.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
        })
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Slurm's memory syntax: digits, then at most one of K, M, G, T.
fn check_mem(m: &str) -> Result<(), String> {
    let digits = m.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    let suffix = m.len() - digits.len();
    if digits.is_empty() || suffix > 1 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "resources.mem: `{m}` is not a memory size; write e.g. `4000` (MB), `16G` or `512M`"
        ));
    }
    Ok(())
}

/// Slurm's time syntax: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`.
fn check_time(t: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "resources.time: `{t}` is not a Slurm time limit; write minutes (`90`), `H:MM:SS` (`1:30:00`) or \
             `D-HH:MM:SS` (`2-00:00:00`)"
        )
    };
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, t),
    };
    let fields: Vec<&str> = rest.split(':').collect();
    let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let ok = days.is_none_or(numeric)
        && fields.iter().all(|f| numeric(f))
        && fields.len() <= 3
        && !(days.is_some() && fields.is_empty());
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawResources {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn id(s: &str) -> Result<String, String> {
        Ok(s.replace("${vars.t}", "1:00:00"))
    }

    #[test]
    fn stage_values_override_the_pipeline_defaults_and_are_checked() {
        let defaults = raw("{time: '${vars.t}', partition: cpu, cpus: 4}");
        let r = Resources::resolve(&raw("{cpus: 2, mem: 16G, gpus: 1}"), &defaults, &id).unwrap();
        assert_eq!(r.cpus, Some(2));
        assert_eq!(r.mem.as_deref(), Some("16G"));
        assert_eq!(r.time.as_deref(), Some("1:00:00"));
        assert_eq!(r.partition.as_deref(), Some("cpu"));
        assert_eq!(r.gpus, Some(1));
        let bad =
            |yaml: &str| Resources::resolve(&raw(yaml), &RawResources::default(), &id).unwrap_err();
        assert!(bad("{cpus: 0}").contains("resources.cpus: expected a whole number ≥ 1"));
        assert!(bad("{mem: 4GB}").contains("not a memory size"));
        assert!(bad("{time: 1h}").contains("not a Slurm time limit"));
        assert!(bad("{time: '1:2:3:4'}").contains("not a Slurm time limit"));
        for ok in ["90", "1:30", "1:30:00", "2-00:00:00", "2-12"] {
            Resources::resolve(
                &raw(&format!("{{time: '{ok}'}}")),
                &RawResources::default(),
                &id,
            )
            .unwrap();
        }
        let e = serde_yaml::from_str::<RawResources>("{cores: 2}")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown field `cores`"), "{e}");
    }

    #[test]
    fn executors_are_named() {
        assert_eq!(ExecutorKind::parse("slurm"), Ok(ExecutorKind::Slurm));
        assert!(ExecutorKind::parse("pbs")
            .unwrap_err()
            .contains("`local` or `slurm`"));
    }
}
