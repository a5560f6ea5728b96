//! The device the stages run on, chosen once per process with `--device` (like `--threads`): `cpu`
//! (default), or `cuda` / `cuda:N` in a build with the `cuda` feature (`cargo build --release --features
//! zerolm-train/cuda`), where candle's CUDA backend runs the composed ops (`zerolm_model::ops`).
//!
//! Initial weights are always drawn on the CPU and then moved, so a seed gives the same start on any
//! device.

use std::sync::OnceLock;

use candle_core::Device;

use crate::ModelError;

static DEVICE: OnceLock<Device> = OnceLock::new();

/// Parses `spec` (`cpu`, `cuda`, `cuda:N`) into a device, or a user error saying what is possible.
pub fn parse(spec: &str) -> Result<Device, ModelError> {
    let s = spec.trim().to_ascii_lowercase();
    let ordinal = match s.as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
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
