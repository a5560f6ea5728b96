//! Ctrl-C (SIGINT) and SIGTERM during a run are noted rather than fatal, so that the runner can cancel
//! what it started (Slurm jobs, local stages) and leave its books true before it exits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Signals(Arc<AtomicUsize>);

impl Signals {
    /// Catches SIGINT and SIGTERM from now on.
    pub fn install() -> std::io::Result<Signals> {
        let got = Arc::new(AtomicUsize::new(0));
        for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register_usize(s, got.clone(), s as usize)?;
        }
        Ok(Signals(got))
    }

    /// The signal received, if any, by name.
    pub fn received(&self) -> Option<&'static str> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            s if s == signal_hook::consts::SIGINT as usize => Some("SIGINT (Ctrl-C)"),
            _ => Some("SIGTERM"),
        }
    }
}
