//! The device the stages run on, chosen once per process with `--device` (like `--threads`): `cpu`
//! (default), or `cuda` / `cuda:N` in a build with the `cuda` feature (`cargo build --release --features
//! zerolm-train/cuda`), where candle's CUDA backend runs the composed ops (`zerolm_model::ops`).
//!
//! Initial weights are always drawn on the CPU and then moved, so a seed gives the same start on any
//! device. Under a launcher, `cuda` alone means the rank's own GPU: its local rank on its machine.

use std::sync::OnceLock;

use candle_core::Device;

use crate::ModelError;

static DEVICE: OnceLock<Device> = OnceLock::new();

/// The rank's number on its machine as launchers set it (Open MPI, MPICH, Slurm, torchrun), else 0.
fn local_rank(env: impl Fn(&str) -> Option<String>) -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
        "LOCAL_RANK",
    ]
    .iter()
    .find_map(|v| env(v).and_then(|x| x.trim().parse().ok()))
    .unwrap_or(0)
}

/// Parses `spec` (`cpu`, `cuda`, `cuda:N`) into a device, or a user error saying what is possible.
pub fn parse(spec: &str) -> Result<Device, ModelError> {
    let s = spec.trim().to_ascii_lowercase();
    let ordinal = match s.as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => local_rank(|v| std::env::var(v).ok()),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => {
                return Err(ModelError::Device(format!(
                    "--device {spec}: expected cpu, cuda or cuda:N"
                )))
            }
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(ModelError::Device(format!(
            "--device {spec}: this build has no CUDA support; rebuild with \
             `cargo build --release --features zerolm-train/cuda` on a machine with the CUDA toolkit"
        )));
    }
    let dev = Device::new_cuda(ordinal).map_err(|e| {
        // The message alone: candle appends a backtrace when RUST_BACKTRACE is set.
        let e = match e {
            candle_core::Error::WithBacktrace { inner, .. } => *inner,
            e => e,
        };
        ModelError::Device(format!(
            "--device {spec}: cannot open GPU {ordinal}: {e}; check that `nvidia-smi` lists it and \
             that the CUDA libraries (libcudart, libcublas, libcurand, libnvrtc) are on LD_LIBRARY_PATH"
        ))
    })?;
    eprintln!("device: cuda:{ordinal}");
    Ok(dev)
}

/// Sets the process's device from `--device` (once; later calls must agree). `None` keeps the CPU.
pub fn select(spec: Option<&str>) -> Result<Device, ModelError> {
    let dev = match spec {
        None => Device::Cpu,
        Some(s) => parse(s)?,
    };
    let set = DEVICE.get_or_init(|| dev.clone());
    if !set.same_device(&dev) {
        return Err(ModelError::Device(format!(
            "--device {}: this process already runs on {set:?}",
            spec.unwrap_or("cpu")
        )));
    }
    Ok(dev)
}

/// The device chosen with [`select`]; the CPU when none was.
pub fn current() -> Device {
    DEVICE.get().cloned().unwrap_or(Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_alone_is_the_ranks_local_gpu() {
        assert_eq!(local_rank(|_| None), 0);
        let ompi = |v: &str| (v == "OMPI_COMM_WORLD_LOCAL_RANK").then(|| "3".to_string());
        assert_eq!(local_rank(ompi), 3);
        let slurm = |v: &str| (v == "SLURM_LOCALID").then(|| "1".to_string());
        assert_eq!(local_rank(slurm), 1);
    }

    #[test]
    fn cpu_parses_and_bad_or_unavailable_devices_are_user_errors() {
        assert!(parse("cpu").unwrap().is_cpu());
        assert!(parse(" CPU ").unwrap().is_cpu());
        let e = parse("tpu").unwrap_err().to_string();
        assert!(e.contains("expected cpu, cuda or cuda:N"), "{e}");
        let e = parse("cuda:x").unwrap_err().to_string();
        assert!(e.contains("expected cpu, cuda or cuda:N"), "{e}");
        if !cfg!(feature = "cuda") {
            let e = parse("cuda:0").unwrap_err();
            assert!(e.is_user_error());
            assert!(
                e.to_string().contains("--features zerolm-train/cuda"),
                "{e}"
            );
        }
        assert!(current().is_cpu());
    }
}
