//! Preference data and objectives: DPO pairs shaped for a forward pass, the reference log-prob cache,
//! and the TRL loss family with its metrics.

pub mod cache;
pub mod losses;
pub mod pairs;
