//! Data-parallel tests: the binaries built with the `mpi` feature (in `target/mpi`, so the default build
//! is not redone) and runs of them under Open MPI's own `mpirun`. Nothing here is optional: without Open
//! MPI the tests fail and say what to install.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::{repo, Run};

/// The `mpi` build's binary directory, built (or brought up to date) once per test process.
pub fn mpi_binaries() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = repo().join("target/mpi");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(repo())
                .env("CARGO_TARGET_DIR", &target)
                .args([
                    "build",
                    "--release",
                    "--features",
                    "zerolm-train/mpi",
                    "--bins",
                ])
                .status()
                .expect("cargo runs");
            assert!(
                status.success(),
                "building the mpi binaries failed; they need Open MPI and clang: apt-get install \
                 libopenmpi-dev openmpi-bin clang"
            );
            target.join("release")
        })
        .clone()
}

/// One MPI job at a time in a test process (two jobs of two busy ranks on two cores would crawl).
pub fn one_job() -> MutexGuard<'static, ()> {
    static JOB: Mutex<()> = Mutex::new(());
    JOB.lock().unwrap_or_else(|e| e.into_inner())
}

/// `mpirun` with what a test needs: allowed as root (CI runs as root), ranks on loopback.
pub fn mpirun() -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "--mca", "btl_tcp_if_include", "lo"]);
    cmd
}

/// `mpirun -np ranks <mpi build of bin> args` to the end.
pub fn run_ranks(ranks: usize, bin: &str, args: &[String]) -> Run {
    let exe = mpi_binaries().join(bin);
    Run::of(
        mpirun()
            .args(["-np", &ranks.to_string()])
            .arg(&exe)
            .args(args),
    )
}

/// The largest difference between two runs' values of `key` over the metrics rows that have it,
/// relative to the larger magnitude (the runs must log the same rows).
pub fn worst_metric_difference(a: &Path, b: &Path, key: &str) -> f64 {
    let values = |m: &Path| -> Vec<f64> {
        let rows = zerolm_io::read_rows(&m.join("metrics.jsonl"));
        (rows.iter().filter_map(|r| r.get(key)))
            .map(|v| v.as_f64().unwrap_or_else(|| panic!("{key} is {v}")))
            .collect()
    };
    let (x, y) = (values(a), values(b));
    assert!(!x.is_empty(), "no {key} logged");
    assert_eq!(
        x.len(),
        y.len(),
        "the runs logged {key} a different number of times"
    );
    x.iter()
        .zip(&y)
        .map(|(p, q)| relative(*p, *q))
        .fold(0.0, f64::max)
}

/// The largest difference between two model directories' weights, relative to each tensor's largest
/// magnitude.
pub fn worst_weight_difference(a: &Path, b: &Path) -> f64 {
    let load = |d: &Path| {
        zerolm_model::io::load_safetensors(
            &d.join("model/model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
        .0
    };
    let (x, y) = (load(a), load(b));
    assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
    let mut worst = 0f64;
    for (name, t) in &x {
        let p = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let q = y[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = p.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12) as f64;
        for (u, v) in p.iter().zip(&q) {
            worst = worst.max((*u as f64 - *v as f64).abs() / scale);
        }
    }
    worst
}

fn relative(p: f64, q: f64) -> f64 {
    if p == q {
        0.0
    } else {
        (p - q).abs() / p.abs().max(q.abs())
    }
}
