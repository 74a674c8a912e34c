//! Raft invariants observed while a simulation runs, from every node's own
//! Raft metrics (each change of a node's metrics is one observation):
//!
//! - **Election safety**: at most one node is leader in a term, across the
//!   whole run and every reboot.
//! - **State machine safety**: no two nodes ever apply different entries at
//!   the same log index (an applied entry is identified by its log id: the
//!   term and leader that wrote it, and its index), so an entry once
//!   committed never changes.
//! - **Applied never goes back**: within one boot, a node's last applied
//!   index only grows. (After a crash a node may restart from an older
//!   durable point and re-apply; that is a new boot.)
//!
//! Observations sample the metrics, so a violation between two samples can
//! go unseen; what is seen is never a false alarm.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cairn_node::server::RunningNode;
use openraft::ServerState;
use openraft_rt::WatchReceiver;

/// What the nodes were seen doing.
#[derive(Debug, Default)]
pub struct Invariants {
    /// term → the node seen leading it.
    leaders: BTreeMap<u64, u64>,
    /// log index → (log id as text, the first node seen applying it).
    applied: BTreeMap<u64, (String, u64)>,
    /// How many metric changes were checked.
    pub observations: u64,
    /// Every violation seen, in order.
    pub violations: Vec<String>,
}

impl Invariants {
    /// `node` is leader in `term`.
    pub fn leader(&mut self, term: u64, node: u64) {
        let first = *self.leaders.entry(term).or_insert(node);
        if first != node {
            self.violations.push(format!(
                "two leaders in term {term}: node {first} and node {node}"
            ));
        }
    }

    /// `node` has applied the entry `log_id` at `index`.
    pub fn applied(&mut self, node: u64, index: u64, log_id: String) {
        match self.applied.get(&index) {
            None => {
                self.applied.insert(index, (log_id, node));
            }
            Some((seen, by)) if *seen != log_id => {
                let v = format!(
                    "index {index}: node {by} applied {seen}, node {node} applied {log_id}"
                );
                self.violations.push(v);
            }
            Some(_) => {}
        }
    }

    /// Leaders seen and entries seen applied, for the report.
    pub fn counts(&self) -> (usize, usize) {
        (self.leaders.len(), self.applied.len())
    }
}

/// Checks `node` (this boot of it) on every change of its metrics, until
/// its Raft stops.
pub async fn watch(node: &RunningNode, invariants: Arc<Mutex<Invariants>>) {
    let mut rx = node.core.raft.metrics();
    let mut last_applied = 0u64;
    loop {
        let m = rx.borrow_watched().clone();
        if let Ok(mut inv) = invariants.lock() {
            inv.observations += 1;
            if m.state == ServerState::Leader && m.current_leader == Some(m.id) {
                inv.leader(m.current_term, m.id);
            }
            if let Some(l) = &m.last_applied {
                if l.index < last_applied {
                    inv.violations.push(format!(
                        "node {}: applied index went back from {last_applied} to {}",
                        m.id, l.index
                    ));
                }
                last_applied = l.index;
                inv.applied(m.id, l.index, l.to_string());
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leaders_in_a_term_and_diverging_entries_are_violations() {
        let mut inv = Invariants::default();
        inv.leader(3, 1);
        inv.leader(3, 1);
        inv.leader(4, 2);
        assert!(inv.violations.is_empty());
        inv.leader(3, 2);
        assert_eq!(inv.violations.len(), 1);
        inv.applied(1, 10, "T3-N1-10".into());
        inv.applied(2, 10, "T3-N1-10".into());
        assert_eq!(inv.violations.len(), 1);
        inv.applied(3, 10, "T4-N2-10".into());
        assert_eq!(inv.violations.len(), 2);
        assert_eq!(inv.counts(), (2, 1));
    }
}
