//! The leader's part in client sessions and the replicated settings
//! (`kv::sessions`): the state machine has no clock, so the leader
//! proposes the expiry of sessions idle for the session TTL by its own
//! clock, and gives a new cluster its first settings from its flags.
//!
//! Every node samples its applied index once a second; a session whose
//! last write is at or below the index applied a TTL ago has been idle
//! at least that long. A new leader (or a restarted node) has no samples
//! older than its start, so it expires nothing for a TTL: expiry only
//! ever comes late, never early.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use openraft_rt::WatchReceiver;
use tokio::sync::watch;
use tokio::time::Instant;

use super::NodeCore;
use crate::kv::command::Op;
use crate::kv::{Command, Settings};

/// How often the applied index is sampled and expiry considered.
const TICK: Duration = Duration::from_secs(1);

/// How often a leader looks while the cluster has no settings yet.
const UNSET_TICK: Duration = Duration::from_millis(100);

/// Samples of `(when, applied index)`, oldest first.
#[derive(Default)]
struct Samples(VecDeque<(Instant, u64)>);

impl Samples {
    /// Keeps at most one sample per `every` among the newest two (samples
    /// come faster than the tick while the settings are unset).
    fn thin(&mut self, every: Duration) {
        let n = self.0.len();
        if n >= 2 && self.0[n - 1].0.duration_since(self.0[n - 2].0) < every {
            self.0.remove(n - 2);
        }
    }

    /// Adds a sample and returns the expiry bound for `ttl`: one past the
    /// newest index applied at least `ttl` ago (sessions whose last
    /// write is below it have been idle that long), if any.
    fn idle_before(&mut self, now: Instant, applied: u64, ttl: Duration) -> Option<u64> {
        self.0.push_back((now, applied));
        let cutoff = now.checked_sub(ttl)?;
        // Keep the newest sample at or before the cutoff, drop older ones.
        while self.0.len() > 1 && self.0[1].0 <= cutoff {
            self.0.pop_front();
        }
        match self.0.front() {
            Some(&(at, index)) if at <= cutoff => Some(index + 1),
            _ => None,
        }
    }
}

/// Runs until `stop`: on the leader, proposes the first settings (when
/// the cluster has none) and the expiry of idle sessions.
pub async fn keep(core: Arc<NodeCore>, mut stop: watch::Receiver<bool>) {
    let mut samples = Samples::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut soon = tokio::time::interval(UNSET_TICK);
    soon.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Until the settings are set, look more often: a new cluster's
        // first writes should see its settings.
        let unset = !core.sm.sessions().settings_set;
        tokio::select! {
            _ = tick.tick() => {}
            _ = soon.tick(), if unset => {}
            _ = stop.changed() => return,
        }
        let view = core.sm.sessions();
        let ttl = Duration::from_secs(view.settings.session_ttl_secs);
        let idle_before = samples.idle_before(Instant::now(), core.sm.applied(), ttl);
        samples.thin(TICK / 2);
        if core.raft.metrics().borrow_watched().state != ServerState::Leader {
            continue;
        }
        if !view.settings_set {
            let settings = Settings {
                history_revisions: core.config.history_revisions,
                session_ttl_secs: core.config.session_ttl_secs,
            };
            propose(
                &core,
                Op::Settings {
                    settings,
                    if_unset: true,
                },
            )
            .await;
        }
        if let (Some(oldest), Some(bound)) = (view.oldest_last_index, idle_before) {
            if oldest < bound {
                propose(&core, Op::ExpireSessions { idle_before: bound }).await;
            }
        }
    }
}

async fn propose(core: &NodeCore, op: Op) {
    let what = format!("{op:?}");
    let r = core
        .scope
        .run(core.raft.client_write(Command::new(op)))
        .await;
    if let Err(e) = r {
        tracing::debug!(error = %e, op = %what, "session housekeeping not proposed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_the_index_applied_a_ttl_ago() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let ttl = Duration::from_secs(10);
        let mut samples = Samples::default();
        assert_eq!(samples.idle_before(s(0), 5, ttl), None);
        assert_eq!(samples.idle_before(s(5), 50, ttl), None);
        assert_eq!(samples.idle_before(s(10), 100, ttl), Some(6));
        assert_eq!(samples.idle_before(s(14), 140, ttl), Some(6));
        assert_eq!(samples.idle_before(s(15), 150, ttl), Some(51));
        assert_eq!(samples.idle_before(s(30), 160, ttl), Some(151));
        assert!(samples.0.len() <= 3);
    }
}
