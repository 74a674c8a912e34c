//! Bootstrap: a node with empty data initializes a new cluster or joins
//! a running one; a node with data does nothing (a restart).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;

use super::{errors, NodeCore};
use crate::raft::{Member, NodeId};

/// Initializes a new cluster or joins a running one; does nothing when the
/// node had data when it started (a restart).
///
/// With empty data and --join, the node joins. With empty data and
/// --initial-cluster, it first asks the other founding members whether a
/// cluster already runs: if one does and does not list this node, the node
/// joins it as a learner (a member whose data was lost and which was removed
/// comes back this way, never founding a second cluster); if one lists it as
/// a member, it waits for the leader to replicate to it. Only when every
/// other founding member has answered and none knows a cluster does the
/// lowest id initialize one (so the first start needs every founder up).
///
/// A vote or a log entry received since the start does not end the
/// search: only being listed by the running cluster and having been
/// reached by its leader does (a removed member that lost its data may
/// hear from the leader that is removing it, and must still join).
pub(super) async fn bootstrap(core: Arc<NodeCore>, fresh: bool) {
    let initialized = || async {
        core.scope
            .run(core.raft.is_initialized())
            .await
            .unwrap_or(true)
    };
    if !fresh {
        return;
    }
    let c = &core.config;
    if let Some(join) = c.join.clone() {
        join_cluster(core.clone(), join).await;
        return;
    }
    if c.initial_cluster.is_empty() {
        return;
    }
    let lowest = c.initial_cluster.keys().next() == Some(&c.id);
    tracing::info!(
        lowest,
        "no data yet: asking the other founders whether a cluster runs"
    );
    let started = tokio::time::Instant::now();
    let patience = Duration::from_millis(c.election_timeout_ms.saturating_mul(30));
    let mut warned = false;
    // One channel per other founder for the whole search (None: the
    // address is unusable, which counts as no answer).
    let mut founders: Vec<(String, Option<Channel>)> = c
        .initial_cluster
        .iter()
        .filter(|(id, _)| **id != c.id)
        .map(|(_, m)| {
            let ch = crate::raft::network::lazy_channel(&core.net, &m.client_addr).ok();
            (m.client_addr.clone(), ch)
        })
        .collect();
    loop {
        if core.draining.load(Ordering::Relaxed) {
            return;
        }
        match find_cluster(&core, &mut founders).await {
            Existing {
                via,
                lists_me: false,
            } => {
                tracing::info!(%via, "a cluster already runs without this node: joining it");
                join_cluster(core.clone(), via).await;
                return;
            }
            Existing {
                lists_me: true,
                via,
            } => {
                // A cluster that lists this node but has committed nothing
                // yet is being founded: this node cannot lack anything.
                if !core.voting.ready() && nothing_committed(&founders).await {
                    mark_ready(
                        &core,
                        "the cluster is being founded and has committed nothing",
                    );
                }
                if initialized().await {
                    return;
                }
                if !warned && started.elapsed() > patience {
                    warned = true;
                    tracing::warn!(
                        %via,
                        id = c.id,
                        "this node has no data but the cluster lists it as a member; \
                         waiting for the leader to replicate to it. If its data was lost, \
                         remove it (cairnctl member remove {}) and it rejoins as a learner",
                        c.id
                    );
                }
            }
            NoCluster { all_answered } => {
                // No founder knows a cluster: nothing is committed that
                // this node could lack, so it may vote in the first
                // election (a founder that lost its data finds the running
                // cluster instead, and waits to be caught up).
                if all_answered && !core.voting.ready() {
                    mark_ready(&core, "no founder knows a cluster yet");
                }
                // Never on a timeout: a founder that lost its data and
                // cannot reach the others must not found a second cluster.
                if lowest && all_answered {
                    let members: BTreeMap<NodeId, Member> = c.initial_cluster.clone();
                    match core.scope.run(core.raft.initialize(members)).await {
                        Ok(()) => tracing::info!("initialized a new cluster"),
                        Err(e) => tracing::warn!(error = %e, "initialize"),
                    }
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lets a founder vote (see `identity`); a failure to write the identity
/// leaves it not ready, and the search asks again.
fn mark_ready(core: &NodeCore, why: &str) {
    match core.voting.mark_ready(0) {
        Ok(()) => {
            tracing::info!("{why}: this node may vote");
            core.raft.runtime_config().elect(true);
        }
        Err(e) => tracing::warn!(error = %e, "writing this node's identity"),
    }
}

/// Whether every other founder answers and none holds an entry past the
/// initial membership.
async fn nothing_committed(founders: &[(String, Option<Channel>)]) -> bool {
    use cairn_proto::cluster::{cluster_client::ClusterClient, StatusRequest};
    for (_, ch) in founders {
        let Some(ch) = ch.clone() else {
            return false;
        };
        let mut req = tonic::Request::new(StatusRequest {});
        req.set_timeout(Duration::from_secs(1));
        let answer =
            tokio::time::timeout(Duration::from_secs(2), ClusterClient::new(ch).status(req)).await;
        match answer {
            // A restarted member may not know its commit index yet, but
            // its log holds more than the initial membership (index 0).
            Ok(Ok(s))
                if s.get_ref().last_log_index == 0
                    && s.get_ref().committed == 0
                    && s.get_ref().applied == 0 => {}
            _ => return false,
        }
    }
    true
}

/// What the other founding members said about a running cluster.
enum Found {
    /// `via` (a client address) belongs to a running cluster; `lists_me`
    /// tells whether this node is in its membership.
    Existing { via: String, lists_me: bool },
    /// Nobody knows a cluster; `all_answered` when every other founding
    /// member answered.
    NoCluster { all_answered: bool },
}
use Found::{Existing, NoCluster};

/// Asks every other founding member (client address, channel) for its
/// membership.
async fn find_cluster(core: &NodeCore, founders: &mut [(String, Option<Channel>)]) -> Found {
    use cairn_proto::cluster::{cluster_client::ClusterClient, MembersRequest};
    let mut all_answered = true;
    for (addr, slot) in founders.iter_mut() {
        let Some(ch) = slot.clone() else {
            all_answered = false;
            *slot = crate::raft::network::lazy_channel(&core.net, addr).ok();
            continue;
        };
        let mut req = tonic::Request::new(MembersRequest {});
        req.set_timeout(Duration::from_secs(1));
        let mut client = ClusterClient::new(ch);
        match tokio::time::timeout(Duration::from_secs(2), client.members(req)).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                if !r.members.is_empty() {
                    return Existing {
                        via: addr.clone(),
                        lists_me: r.members.iter().any(|x| x.id == core.config.id),
                    };
                }
            }
            failed => {
                tracing::debug!(%addr, ?failed, "founder did not answer");
                all_answered = false;
                // A fresh channel for the next round.
                *slot = crate::raft::network::lazy_channel(&core.net, addr).ok();
            }
        }
    }
    NoCluster { all_answered }
}

/// Asks the cluster at `endpoint` to add this node as a learner, waits
/// until it has caught up, then asks for promotion. Retries until done.
async fn join_cluster(core: Arc<NodeCore>, endpoint: String) {
    use cairn_proto::cluster::{cluster_client::ClusterClient, AddLearnerRequest, PromoteRequest};
    let me = core.config.advertise.clone();
    let id = core.config.id;
    let mut target = endpoint.clone();
    let mut delay = Duration::from_millis(200);
    let mut added = false;
    loop {
        if core.draining.load(Ordering::Relaxed) {
            return;
        }
        let attempt = async {
            let ch = crate::raft::network::lazy_channel(&core.net, &target)
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut c = ClusterClient::new(ch);
            if !added {
                let mut req = tonic::Request::new(AddLearnerRequest {
                    id,
                    client_addr: me.client_addr.clone(),
                    peer_addr: me.peer_addr.clone(),
                    wait_caught_up: true,
                });
                req.set_timeout(Duration::from_secs(600));
                c.add_learner(req).await?;
                added = true;
            }
            let mut req = tonic::Request::new(PromoteRequest { ids: vec![id] });
            req.set_timeout(Duration::from_secs(30));
            c.promote(req).await?;
            Ok::<(), tonic::Status>(())
        };
        match attempt.await {
            Ok(()) => {
                tracing::info!(id, "joined the cluster as a voter");
                return;
            }
            Err(s) => {
                if let Some(addr) = s
                    .metadata()
                    .get(errors::LEADER_ADDR)
                    .and_then(|v| v.to_str().ok())
                {
                    target = addr.to_string();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                tracing::info!(error = %s.message(), "joining: retrying");
                target = endpoint.clone();
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
