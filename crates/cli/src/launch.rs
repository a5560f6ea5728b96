//! How a binary was launched. A process that a launcher started as one of several ranks (`mpirun -np 2`,
//! `srun -n 2`, torchrun-style variables) either joins the run's MPI world — the training stages in a
//! build with the `mpi` feature — or refuses to run: alone, each rank would train by itself and all
//! would write the same output.

use crate::exit::UsageError;

/// The variables launchers set to the number of ranks, who sets them, and whether MPI can join them.
const WORLD_SIZES: &[(&str, &str, bool)] = &[
    ("OMPI_COMM_WORLD_SIZE", "Open MPI's mpirun", true),
    ("PMI_SIZE", "an MPI launcher (PMI)", true),
    ("PMIX_SIZE", "an MPI launcher (PMIx)", true),
    ("SLURM_STEP_NUM_TASKS", "Slurm's srun", true),
    ("WORLD_SIZE", "a torchrun-style launcher", false),
];

/// The rank count a launcher set, if more than one.
pub struct Launched {
    pub ranks: usize,
    pub var: &'static str,
    pub who: &'static str,
    /// Whether MPI can start from this launcher's environment.
    pub mpi: bool,
}

impl Launched {
    /// Which launcher set the rank count (`env` looks a variable up); the first that says more than one.
    pub fn find(env: impl Fn(&str) -> Option<String>) -> Option<Launched> {
        WORLD_SIZES.iter().find_map(|&(var, who, mpi)| {
            let ranks = env(var).and_then(|v| v.trim().parse::<usize>().ok())?;
            (ranks > 1).then_some(Launched {
                ranks,
                var,
                who,
                mpi,
            })
        })
    }

    fn describe(&self) -> String {
        format!(
            "this process is one of {} ranks ({}={}, set by {})",
            self.ranks, self.var, self.ranks, self.who
        )
    }
}

/// For a binary that always runs as one process: refuses to be one of several ranks.
pub fn single_process(env: impl Fn(&str) -> Option<String>) -> Result<(), UsageError> {
    match Launched::find(env) {
        None => Ok(()),
        Some(l) if zerolm_train::collective::MULTI_RANK_BUILD => Err(UsageError(format!(
            "{}, but this command runs as one process (only pretrain, sft, dpo and ref-logprobs run on \
             several ranks); start it without the launcher",
            l.describe()
        ))),
        Some(l) => Err(UsageError(format!(
            "{}, but this build of zerolm has no multi-process support: every rank would train alone and all \
             would write the same output. Rebuild with `cargo build --release --features zerolm-train/mpi` \
             (needs libopenmpi-dev, openmpi-bin and clang) to train on several ranks, or run one process \
             without the launcher (use --threads for more cores)",
            l.describe()
        ))),
    }
}

/// For a training stage: joins the launcher's MPI world when it started several ranks (a build with the
/// `mpi` feature), refusing launchers MPI cannot join and builds without MPI.
pub fn join_ranks(env: impl Fn(&str) -> Option<String>) -> Result<(), UsageError> {
    let Some(l) = Launched::find(env) else {
        return Ok(());
    };
    if !zerolm_train::collective::MULTI_RANK_BUILD {
        return single_process(|var| (var == l.var).then(|| l.ranks.to_string()));
    }
    if !l.mpi {
        return Err(UsageError(format!(
            "{}, but zerolm's ranks talk through MPI: start them with `mpirun -np {}` (or `srun --mpi=pmix` \
             under Slurm)",
            l.describe(),
            l.ranks
        )));
    }
    zerolm_train::collective::start_engine(l.ranks, l.who).map_err(|e| UsageError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k: &str| {
            pairs
                .iter()
                .find(|(var, _)| *var == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn a_launcher_with_several_ranks_is_refused_one_rank_is_not() {
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

    #[test]
    fn stages_refuse_launchers_mpi_cannot_join() {
        assert!(join_ranks(with(&[])).is_ok());
        let e = join_ranks(with(&[("WORLD_SIZE", "2")])).unwrap_err();
        if zerolm_train::collective::MULTI_RANK_BUILD {
            assert!(e.0.contains("mpirun -np 2"), "{e}");
        } else {
            assert!(e.0.contains("features zerolm-train/mpi"), "{e}");
        }
    }
}
