//! cairn-sim-tests: the deterministic simulation of cairn (turmoil), its
//! history recorder and the checker.
//!
//! [`checker`], the linearizability checker for per-key register
//! histories (with unknown outcomes) and the check of serializable reads;
//! [`net`], the simulated network under the real client, node and gateway
//! code; [`harness`], a run of five node hosts (three founders, two
//! spares), a gateway, clients and watchers under a nemesis (`nemesis`)
//! that isolates, splits, mutes (one-way), delays and crashes nodes and
//! fails their disks,
//! and an administrator that transfers leadership, triggers snapshots and
//! grows and shrinks the cluster between 3 and 5 voters, its history
//! checked; [`invariants`], Raft's safety properties checked while it
//! runs; [`watches`], watch streams checked against the history and the
//! final state. Inside the harness: `options` (what a run includes),
//! `workload` (the clients, watchers and administrator), `nemesis` (the
//! faults), `converge` (the liveness phase's checks). Each module's
//! docs state its guarantees precisely.
//!
//! Run seeds with `cargo test -p cairn-sim-tests` (`SIM_SEEDS=N` for more,
//! `SIM_SEED=S` for one), or sweep many in parallel processes with
//! `cargo run --release -p cairn-sim-tests --bin sweep -- --seeds N`.

pub mod checker;
mod converge;
pub mod harness;
pub mod invariants;
mod nemesis;
pub mod net;
mod options;
pub mod watches;
mod workload;
