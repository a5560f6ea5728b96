//! How a binary was launched. This build has no communication engine, so a process that a launcher
//! started as one of several ranks (`mpirun -np 2`, `srun -n 2`, torchrun-style variables) refuses to run:
//! each rank would train alone and all would write the same output.

use crate::exit::UsageError;

/// The variables launchers set to the number of ranks, and who sets them.
const WORLD_SIZES: &[(&str, &str)] = &[
    ("OMPI_COMM_WORLD_SIZE", "Open MPI's mpirun"),
    ("PMI_SIZE", "an MPI launcher (PMI)"),
    ("PMIX_SIZE", "an MPI launcher (PMIx)"),
    ("SLURM_STEP_NUM_TASKS", "Slurm's srun"),
    ("WORLD_SIZE", "a torchrun-style launcher"),
];

/// Refuses to run as one of several ranks; `env` looks a variable up (the process environment in
/// [`crate::main`]).
pub fn single_process(env: impl Fn(&str) -> Option<String>) -> Result<(), UsageError> {
    for (var, who) in WORLD_SIZES {
        let ranks = env(var).and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(n) = ranks.filter(|&n| n > 1) {
            return Err(UsageError(format!(
                "this process is one of {n} ranks ({var}={n}, set by {who}), but this build of zerolm has no \
                 multi-process support: every rank would train alone and all would write the same output. \
                 Run one process, without the launcher (use --threads for more cores)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launcher_with_several_ranks_is_refused_one_rank_is_not() {
        let with = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(var, _)| *var == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(single_process(with(&[])).is_ok());
        assert!(single_process(with(&[("OMPI_COMM_WORLD_SIZE", "1")])).is_ok());
        assert!(single_process(with(&[("SLURM_NTASKS", "4")])).is_ok());
        let e = single_process(with(&[("OMPI_COMM_WORLD_SIZE", "2")])).unwrap_err();
        assert!(
            e.0.contains("one of 2 ranks") && e.0.contains("mpirun"),
            "{e}"
        );
        let e = single_process(with(&[("SLURM_STEP_NUM_TASKS", "3")])).unwrap_err();
        assert!(e.0.contains("srun"), "{e}");
        let e = single_process(with(&[("WORLD_SIZE", "8")])).unwrap_err();
        assert!(e.0.contains("torchrun"), "{e}");
    }
}
