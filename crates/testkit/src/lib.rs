//! Support for the command-line tests of zerolm's binaries (`bins/*/tests`, `tests/`): run a binary
//! as a user would, check its exit code and message, make fresh work directories, and build the inputs
//! tests start from — token files made with the fixture tokenizer and untrained model directories.

mod inputs;
pub mod pipeline;
pub mod ranks;
pub mod slurm;
pub mod trl;

pub use inputs::{
    fixture_tokenizer, micro_model, token_file, token_file_with, untrained_model,
    untrained_model_of,
};

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A finished command: its exit code (-1 when killed by a signal) and what it printed.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Runs `cmd` to the end.
    pub fn of(cmd: &mut Command) -> Run {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The run succeeded.
    pub fn assert_ok(&self) -> &Run {
        assert_eq!(self.code, 0, "{}", self.stderr);
        self
    }

    /// The run failed as a user error (exit code 1) with `needle` in its message.
    pub fn assert_user_error(&self, needle: &str) {
        assert_eq!(self.code, 1, "{}", self.stderr);
        assert!(
            self.stderr.contains(needle),
            "expected `{needle}` in: {}",
            self.stderr
        );
    }
}

/// Runs the binary `exe` (a test's `env!("CARGO_BIN_EXE_<name>")`) with `args`.
pub fn run<S: AsRef<OsStr>>(exe: &str, args: &[S]) -> Run {
    Run::of(Command::new(exe).args(args))
}

/// The repository's root directory.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `tests/fixtures/` (the committed tokenizer and reference outputs).
pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// A fresh, empty directory for one test, unique to this process.
pub fn workdir(suite: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zerolm-{suite}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Owned strings of `list`, for building argument vectors.
pub fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Starts `cmd` (stderr discarded), waits until `ready()` holds — at most two minutes — and kills it with
/// SIGKILL, as a crash or an impatient user would.
pub fn kill_when(cmd: &mut Command, ready: impl Fn() -> bool) {
    let mut child = cmd.stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "what the kill waits for never happened"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Whether a training run's `checkpoints/` directory holds a complete checkpoint.
pub fn has_checkpoint(checkpoints: &Path) -> bool {
    let complete = |e: std::fs::DirEntry| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with("step-")
            && !name.ends_with(".tmp")
            && e.path().join("trainer_state.json").is_file()
    };
    std::fs::read_dir(checkpoints).is_ok_and(|d| d.flatten().any(complete))
}

/// The steps of a run's training rows in its `metrics.jsonl` (the rows with a `loss`), in order.
pub fn train_steps(metrics: &Path) -> Vec<u64> {
    let rows = zerolm_io::read_rows(metrics);
    let train = rows.iter().filter(|row| row.contains_key("loss"));
    train.filter_map(|row| row["step"].as_u64()).collect()
}

/// The directory of the binary `exe` (a test's `env!("CARGO_BIN_EXE_<name>")`), after building any of
/// the workspace binaries `needed` that are not there yet (under `cargo test -p` only the package's own
/// binary is built).
pub fn binaries(exe: &str, needed: &[&str]) -> PathBuf {
    let dir = Path::new(exe).parent().unwrap().to_path_buf();
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if !missing.is_empty() {
        let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(repo()).args([
            "build",
            "--profile",
            if profile == "debug" { "dev" } else { &profile },
        ]);
        for b in &missing {
            cmd.args(["--bin", b]);
        }
        assert!(cmd.status().unwrap().success(), "building {missing:?}");
    }
    dir
}
