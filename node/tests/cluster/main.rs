//! The node's integration tests, one binary: each module is one
//! behaviour. Most run real `cairn` processes on loopback through
//! `cairn-testing`; `raft_storage` and `disk_failure` drive the Raft
//! storage and a whole node in-process on a simulated disk.

mod alarms;
mod bad_input;
mod batch;
mod bounded_apply;
mod catch_up;
mod cluster_basics;
mod cluster_restart;
mod corruption_checks;
mod disk_failure;
mod gateway;
mod leader_crash;
mod learner_snapshot;
mod limit_edges;
mod node_identity;
mod node_limits;
mod raft_storage;
mod read_rounds;
mod request_id;
mod sigterm_leader;
mod txn_and_watch;
