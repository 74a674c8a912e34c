//! cairn-sim-tests: the deterministic simulation of cairn (turmoil), its
//! history recorder and the checker.
//!
//! Built so far: [`checker`], the linearizability checker for per-key
//! register histories (with unknown outcomes) and the check of
//! serializable reads. The turmoil harness, the nemeses and the workloads
//! come next (see the simulation issue).

pub mod checker;
pub mod net;
