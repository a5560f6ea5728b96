//! One `main` for every binary, and the exit-code policy: 0 ok; 1 for what the user can fix (a bad
//! input file, flag, setting or checkpoint, a usage error); 2 for internal failures.

use std::io::Write;
use std::process::ExitCode;

use zerolm_train::collective;

/// A user error a binary finds itself (a flag combination the library cannot see).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs a binary: keeps freed memory (see [`crate::alloc`]), refuses to be one of several ranks (see
/// [`crate::launch`]), parses the command line (a usage error exits with 1, `--help`/`--version` with 0),
/// calls `run`, and prints a failure as `error: …`.
pub fn main<P: clap::Parser>(run: impl FnOnce(P) -> anyhow::Result<()>) -> ExitCode {
    crate::alloc::keep_freed_memory();
    if let Err(e) = crate::launch::single_process(|var| std::env::var(var).ok()) {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    let cli = P::try_parse().unwrap_or_else(|e| {
        let code = if e.use_stderr() { 1 } else { 0 };
        let _ = e.print();
        std::process::exit(code)
    });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::from(if is_user_error(&e) { 1 } else { 2 })
        }
    }
}

/// [`main`] for a training stage, which may run as one of several ranks (see [`crate::launch::join_ranks`]):
/// ranks other than 0 print only their errors (prefixed with the rank); a failing rank ends every rank
/// (`MPI_Abort`), so none waits forever for it.
pub fn main_ranks<P: clap::Parser>(run: impl FnOnce(P) -> anyhow::Result<()>) -> ExitCode {
    crate::alloc::keep_freed_memory();
    if let Err(e) = crate::launch::join_ranks(|var| std::env::var(var).ok()) {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    let world = collective::world();
    let mut errors: Box<dyn Write> = Box::new(std::io::stderr());
    if world.rank() > 0 {
        match crate::quiet::silence() {
            Ok(f) => errors = Box::new(f),
            Err(e) => eprintln!(
                "warning: rank {} could not quiet its output: {e}",
                world.rank()
            ),
        }
    }
    let cli = P::try_parse().unwrap_or_else(|e| {
        let code = if e.use_stderr() { 1 } else { 0 };
        let _ = e.print();
        if code == 0 {
            world.finish();
        }
        std::process::exit(code)
    });
    match run(cli) {
        Ok(()) => {
            world.finish();
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = if is_user_error(&e) { 1 } else { 2 };
            let rank = match world.size() {
                1 => String::new(),
                n => format!(" (rank {} of {n})", world.rank()),
            };
            let _ = writeln!(errors, "error{rank}: {}", message(&e));
            let _ = errors.flush();
            if world.size() > 1 {
                world.abort(code as i32);
            }
            ExitCode::from(code)
        }
    }
}

/// The error and its causes, each cause added only when the message does not already say it (library
/// errors that wrap another repeat its text).
pub fn message(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

/// Whether the first error in the chain that knows says the user can fix it; an error no library
/// classifies is internal.
pub fn is_user_error(e: &anyhow::Error) -> bool {
    e.chain().find_map(classify).unwrap_or(false)
}

fn classify(e: &(dyn std::error::Error + 'static)) -> Option<bool> {
    if e.is::<UsageError>() || e.is::<clap::Error>() {
        return Some(true);
    }
    if let Some(e) = e.downcast_ref::<zerolm_train::TrainError>() {
        return Some(e.is_user_error());
    }
    if let Some(e) = e.downcast_ref::<zerolm_model::ModelError>() {
        return Some(e.is_user_error());
    }
    if let Some(e) = e.downcast_ref::<zerolm_data::DataError>() {
        return Some(e.is_user_error());
    }
    if let Some(e) = e.downcast_ref::<zerolm_io::IoError>() {
        return Some(e.is_user_error());
    }
    if let Some(e) = e.downcast_ref::<zerolm_eval::EvalError>() {
        return Some(e.is_user_error());
    }
    if let Some(e) = e.downcast_ref::<zerolm_export::ExportError>() {
        return Some(e.is_user_error());
    }
    if let Some(e) = e.downcast_ref::<zerolm_pipeline::PipelineError>() {
        return Some(e.is_user_error());
    }
    e.downcast_ref::<zerolm_datagen::GenError>()
        .map(|e| e.is_user_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_errors_exit_1_and_the_rest_2() {
        let user = anyhow::Error::new(UsageError("give --prompt".into()));
        assert!(is_user_error(&user));
        let config = anyhow::Error::new(zerolm_train::TrainError::Config("lr".into()));
        assert!(is_user_error(&config.context("while starting")));
        let bug = anyhow::Error::new(zerolm_train::TrainError::Internal("oops".into()));
        assert!(!is_user_error(&bug));
        assert!(!is_user_error(&anyhow::anyhow!("unclassified")));
    }

    #[test]
    fn messages_name_each_cause_once() {
        let data = zerolm_data::DataError::Usage("no such file x.jsonl".into());
        let wrapped = anyhow::Error::new(zerolm_train::TrainError::Data(data));
        assert_eq!(message(&wrapped), "no such file x.jsonl");
        let ctx = anyhow::anyhow!("disk on fire").context("the train measurement failed");
        assert_eq!(message(&ctx), "the train measurement failed: disk on fire");
    }
}
