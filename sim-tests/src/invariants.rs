//! Raft invariants observed while a simulation runs, from every node's own
//! Raft metrics (each change of a node's metrics is one observation):
//!
//! - **Election safety**: openraft's leader ids are (term, node): its
//!   "advanced" mode lets several candidates win the same term, each a
//!   distinct leader whose entries carry its node id, and a vote for a
//!   leader id is granted once. So the check is per leader id: each one is
//!   held by one boot of one node, never resumed after a restart (a
//!   restarted leader whose unsynced tail was lost could write different
//!   entries under log ids its followers already hold).
//! - **State machine safety**: no two nodes ever apply different entries at
//!   the same log index (an applied entry is identified by its log id: the
//!   term and leader that wrote it, and its index), so an entry once
//!   committed never changes.
//! - **Applied never goes back**: within one boot, a node's last applied
//!   index only grows. (After a crash a node may restart from an older
//!   durable point and re-apply; that is a new boot.)
//! - **Synced entries survive**: a node that restarts (without having
//!   lost its disk) holds every entry it had both fsynced and applied in
//!   an earlier boot: a crash, a torn write or a flipped bit never makes
//!   it drop an entry it acknowledged.
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
    /// (term, node) → the boot seen leading it.
    leaders: BTreeMap<(u64, u64), u64>,
    /// Boots started (each gets the next number).
    boots: u64,
    /// log index → (log id as text, the first node seen applying it).
    applied: BTreeMap<u64, (String, u64)>,
    /// node → (the voters it knows, allowed to vote) as its latest boot
    /// was last seen; a node that is down or refused to start is not ready.
    pub voting: BTreeMap<u64, (Vec<u64>, bool)>,
    /// node → the highest index it was seen holding durably (fsynced
    /// and applied), across boots until its disk is lost.
    durable: BTreeMap<u64, u64>,
    /// node → what its metrics said last (for a failed run's report).
    pub last_seen: BTreeMap<u64, String>,
    /// How many metric changes were checked.
    pub observations: u64,
    /// Every violation seen, in order.
    pub violations: Vec<String>,
}

impl Invariants {
    /// A new boot of some node: its number.
    pub fn boot(&mut self) -> u64 {
        self.boots += 1;
        self.boots
    }

    /// `node`, in its boot `boot`, leads in `term`.
    pub fn leader(&mut self, term: u64, node: u64, boot: u64) {
        let first = *self.leaders.entry((term, node)).or_insert(boot);
        if first != boot {
            self.violation(format!(
                "node {node} led term {term} in two boots (a restarted leader resumed its term)"
            ));
        }
    }

    /// Records a violation once.
    fn violation(&mut self, v: String) {
        if !self.violations.contains(&v) {
            self.violations.push(v);
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
                self.violation(v);
            }
            Some(_) => {}
        }
    }

    /// Whether every voter other than `node` was last seen up and allowed
    /// to vote (so `node` may lose its disk without the cluster losing a
    /// committed entry).
    pub fn others_ready(&self, node: u64) -> bool {
        // A node that lost its data does not know it is a voter: the
        // voters are those any node knows of.
        let voters: std::collections::BTreeSet<u64> = self
            .voting
            .values()
            .flat_map(|(v, _)| v.iter().copied())
            .collect();
        voters
            .iter()
            .all(|id| *id == node || self.voting.get(id).is_some_and(|(_, ready)| *ready))
    }

    /// Notes that `node` lost its disk: it may restart with nothing.
    pub fn lost_disk(&mut self, node: u64) {
        self.durable.remove(&node);
        self.down(node);
    }

    /// A new boot of `node` starts with its log ending at `last_log`:
    /// it must hold what it held durably before.
    pub fn restarted(&mut self, node: u64, last_log: Option<u64>) {
        if let Some(&held) = self.durable.get(&node) {
            if last_log.is_none_or(|l| l < held) {
                self.violation(format!(
                    "node {node} restarted with its log ending at {last_log:?}, without entry \
                     {held} that it had synced and applied"
                ));
            }
        }
    }

    /// `node` holds entries up to `index` durably.
    pub fn holds(&mut self, node: u64, index: u64) {
        let held = self.durable.entry(node).or_default();
        *held = (*held).max(index);
    }

    /// Notes that `node` is down (crashed, stopped or refusing to start).
    pub fn down(&mut self, node: u64) {
        if let Some(v) = self.voting.get_mut(&node) {
            v.1 = false;
        }
    }

    /// The node seen leading the newest term, if any (it may have lost
    /// its leadership since, unseen).
    pub fn latest_leader(&self) -> Option<u64> {
        self.leaders.keys().next_back().map(|&(_, node)| node)
    }

    /// The voters `node` was last seen knowing.
    pub fn voters_seen_by(&self, node: u64) -> Vec<u64> {
        self.voting
            .get(&node)
            .map_or_else(Vec::new, |(v, _)| v.clone())
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
    let Ok(boot) = invariants.lock().map(|mut i| i.boot()) else {
        return;
    };
    let mut first = true;
    loop {
        let m = rx.borrow_watched().clone();
        if let Ok(mut inv) = invariants.lock() {
            inv.observations += 1;
            if std::mem::take(&mut first) {
                inv.restarted(m.id, m.last_log_index);
            }
            let matched: Vec<String> = m
                .replication
                .iter()
                .flat_map(|r| r.iter())
                .map(|(id, l)| format!("{id}:{}", l.as_ref().map_or(0, |l| l.index)))
                .collect();
            inv.last_seen.insert(
                m.id,
                format!(
                    "{:?} term {} leader {:?} log {:?} applied {:?} matched [{}]",
                    m.state,
                    m.current_term,
                    m.current_leader,
                    m.last_log_index,
                    m.last_applied.as_ref().map(|l| l.index),
                    matched.join(" ")
                ),
            );
            let durable = node.core.log.durable_next().checked_sub(1);
            if let (Some(d), Some(a)) = (durable, &m.last_applied) {
                inv.holds(m.id, d.min(a.index));
            }
            let voters = m.membership_config.membership().voter_ids().collect();
            inv.voting.insert(m.id, (voters, node.core.voting.ready()));
            if m.state == ServerState::Leader && m.current_leader == Some(m.id) {
                inv.leader(m.current_term, m.id, boot);
            }
            if let Some(l) = &m.last_applied {
                if l.index < last_applied {
                    inv.violation(format!(
                        "node {}: applied index went back from {last_applied} to {}",
                        m.id, l.index
                    ));
                }
                last_applied = l.index;
                inv.applied(m.id, l.index, l.to_string());
            }
        }
        if rx.changed().await.is_err() {
            if let Ok(mut inv) = invariants.lock() {
                inv.down(node.core.config.id);
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_leader_id_and_diverging_entries_are_violations() {
        let mut inv = Invariants::default();
        let (a, b) = (inv.boot(), inv.boot());
        inv.leader(3, 1, a);
        inv.leader(3, 1, a);
        inv.leader(4, 2, b);
        // Another node winning the same term is openraft's advanced mode.
        inv.leader(3, 2, b);
        assert!(inv.violations.is_empty());
        // Node 1 again in term 3, after a restart.
        let c = inv.boot();
        inv.leader(3, 1, c);
        inv.leader(3, 1, c);
        assert_eq!(inv.violations.len(), 1);
        inv.applied(1, 10, "T3-N1-10".into());
        inv.applied(2, 10, "T3-N1-10".into());
        assert_eq!(inv.violations.len(), 1);
        inv.applied(3, 10, "T4-N2-10".into());
        assert_eq!(inv.violations.len(), 2);
        assert_eq!(inv.counts(), (3, 1));
    }
}
