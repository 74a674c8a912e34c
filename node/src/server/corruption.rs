//! Corruption checks across replicas (etcd's HashKV check): the leader
//! appends a hash-check entry, every member hashes its whole state as of
//! that entry (`kv::hash`), and the leader compares. Replicas that
//! applied the same entries hold the same bytes, so a member whose hash
//! differs from the majority's holds damaged or diverged data: it gets
//! a CORRUPT alarm, which refuses every write until an operator replaces
//! it and disarms the alarm. Run on demand (`cairnctl check hash`) and by
//! the leader every `--corruption-check-secs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::cluster::{self as pb, cluster_client::ClusterClient};
use openraft::ServerState;
use openraft_rt::WatchReceiver;
use tokio::sync::watch;

use super::NodeCore;
use crate::kv::alarms::{Alarm, AlarmKind};
use crate::kv::command::Op;
use crate::kv::Command;

/// How long a member may take to apply and hash the entry.
const HASH_WAIT: Duration = Duration::from_secs(120);

/// Runs a check from this node, which must lead: returns every member's
/// hash at the new entry, with the corrupt ones marked (and alarmed).
pub async fn check(core: &NodeCore) -> Result<pb::CheckHashResponse, tonic::Status> {
    let r = core
        .scope
        .run(core.raft.client_write(Command::new(Op::HashCheck)))
        .await
        .map_err(super::errors::write_error)?;
    let revision = r.log_id.index;
    let members: Vec<(u64, String)> = {
        let m = core.raft.metrics().borrow_watched().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.client_addr.clone()))
            .collect()
    };
    let asks = members
        .iter()
        .map(|(id, addr)| member_hash(core, *id, addr, revision));
    let mut answers = futures::future::join_all(asks).await;
    let corrupt = judge(&answers, core.config.id);
    for a in answers
        .iter_mut()
        .filter(|a| corrupt.contains(&a.member_id))
    {
        a.corrupt = true;
        let alarm = Alarm {
            member: a.member_id,
            kind: AlarmKind::Corrupt,
        };
        tracing::error!(
            member = a.member_id,
            hash = a.hash,
            revision,
            "a member's state differs from the majority's: raising CORRUPT"
        );
        super::cluster::raise(core, alarm).await?;
    }
    Ok(pb::CheckHashResponse {
        revision,
        members: answers,
    })
}

/// One member's hash at `revision` (this node's own without a call).
async fn member_hash(core: &NodeCore, id: u64, addr: &str, revision: u64) -> pb::MemberHash {
    let got = if id == core.config.id {
        core.sm
            .hash_at(revision, HASH_WAIT)
            .await
            .map(|h| (h.hash, h.keys))
    } else {
        ask(core, addr, revision).await
    };
    match got {
        Ok((hash, keys)) => pb::MemberHash {
            member_id: id,
            hash,
            keys,
            error: String::new(),
            corrupt: false,
        },
        Err(error) => pb::MemberHash {
            member_id: id,
            error,
            ..Default::default()
        },
    }
}

async fn ask(core: &NodeCore, addr: &str, revision: u64) -> Result<(u64, u64), String> {
    let ch = crate::raft::network::lazy_channel(&core.net, addr).map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(pb::HashKvRequest { revision });
    req.set_timeout(HASH_WAIT);
    let r = ClusterClient::new(ch)
        .hash_kv(req)
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    Ok((r.hash, r.keys))
}

/// The members judged corrupt: with a hash held by a strict majority of
/// all members, those holding another; without one, those that differ
/// from the leader. Members that gave no hash are not judged.
fn judge(answers: &[pb::MemberHash], leader: u64) -> Vec<u64> {
    let hashed: Vec<&pb::MemberHash> = answers.iter().filter(|a| a.error.is_empty()).collect();
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for a in &hashed {
        *counts.entry(a.hash).or_default() += 1;
    }
    let majority = counts
        .iter()
        .find(|(_, n)| **n * 2 > answers.len())
        .map(|(h, _)| *h);
    let truth = majority.or_else(|| {
        hashed
            .iter()
            .find(|a| a.member_id == leader)
            .map(|a| a.hash)
    });
    match truth {
        Some(t) => hashed
            .iter()
            .filter(|a| a.hash != t)
            .map(|a| a.member_id)
            .collect(),
        None => Vec::new(),
    }
}

/// Runs until `stop`: on the leader, a check every `--corruption-check-secs`
/// (0: never).
pub async fn watch(core: Arc<NodeCore>, mut stop: watch::Receiver<bool>) {
    let every = core.config.corruption_check_secs;
    if every == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if core.raft.metrics().borrow_watched().state != ServerState::Leader {
            continue;
        }
        match check(&core).await {
            Ok(r) => {
                let corrupt: Vec<u64> = r
                    .members
                    .iter()
                    .filter(|m| m.corrupt)
                    .map(|m| m.member_id)
                    .collect();
                tracing::info!(revision = r.revision, ?corrupt, "corruption check done");
            }
            Err(e) => tracing::info!(error = %e.message(), "corruption check not run"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(member_id: u64, hash: u64) -> pb::MemberHash {
        pb::MemberHash {
            member_id,
            hash,
            ..Default::default()
        }
    }

    #[test]
    fn the_minority_is_corrupt_and_without_a_majority_those_unlike_the_leader() {
        assert!(judge(&[h(1, 7), h(2, 7), h(3, 7)], 1).is_empty());
        assert_eq!(judge(&[h(1, 7), h(2, 7), h(3, 9)], 1), vec![3]);
        // The leader can be the odd one out.
        assert_eq!(judge(&[h(1, 9), h(2, 7), h(3, 7)], 1), vec![1]);
        let silent = pb::MemberHash {
            member_id: 3,
            error: "unreachable".into(),
            ..Default::default()
        };
        assert_eq!(judge(&[h(1, 7), h(2, 9), silent.clone()], 1), vec![2]);
        assert!(judge(&[h(1, 7), silent], 1).is_empty());
    }
}
