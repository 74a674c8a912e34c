//! `cairn.cluster.v1.Cluster`: status and membership.

use openraft_rt::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use cairn_proto::cluster as pb;
use openraft::{ChangeMembers, ServerState};
use tonic::{Request, Response, Status};

use super::errors;
use super::http::observe;
use super::NodeCore;
use crate::kv::alarms::{Alarm, AlarmKind};
use crate::kv::command::{Op, OpResult};
use crate::kv::{check_settings, Command, Settings};
use crate::raft::Member;

/// The Cluster service.
pub struct ClusterService {
    core: Arc<NodeCore>,
    /// Serializes membership changes made through this node.
    membership: tokio::sync::Mutex<()>,
}

impl ClusterService {
    /// A service over `core`.
    pub fn new(core: Arc<NodeCore>) -> Self {
        ClusterService {
            core,
            membership: tokio::sync::Mutex::new(()),
        }
    }

    /// Admits one membership change at a time, and only on a leader that is
    /// a voter of its own effective membership. A leader that has just
    /// removed itself keeps leading until it steps down; the pinned openraft
    /// must not append a membership entry from it (its debug assertion
    /// "Only leader is allowed to call update_effective_membership" fires;
    /// found by the simulation). The check runs inside Raft, not on
    /// possibly stale metrics.
    async fn membership_leader(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, Status> {
        let guard = self.membership.lock().await;
        self.leader_only()?;
        let me = self.core.config.id;
        let voter_leader = self
            .core
            .scope
            .run(self.core.raft.with_raft_state(move |st| {
                st.server_state == ServerState::Leader
                    && st
                        .membership_state
                        .effective()
                        .membership()
                        .voter_ids()
                        .any(|v| v == me)
            }))
            .await;
        match voter_leader {
            Ok(true) => Ok(guard),
            Ok(false) => Err(Status::unavailable(
                "this leader was removed from the cluster and is stepping down; retry",
            )),
            Err(e) => Err(Status::unavailable(format!("raft: {e}"))),
        }
    }

    fn members(&self) -> pb::MembersResponse {
        let m = self.core.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        pb::MembersResponse {
            members: membership
                .nodes()
                .map(|(id, n)| pb::Member {
                    id: *id,
                    client_addr: n.client_addr.clone(),
                    peer_addr: n.peer_addr.clone(),
                    is_learner: !voters.contains(id),
                })
                .collect(),
            leader: m.current_leader.unwrap_or(0),
        }
    }

    fn leader_only(&self) -> Result<(), Status> {
        self.core.check_accepting()?;
        if self.core.raft.metrics().borrow_watched().state == ServerState::Leader {
            return Ok(());
        }
        match self.core.leader() {
            Some((id, addr)) => Err(errors::not_leader(&openraft::error::ForwardToLeader::new(
                id,
                Member {
                    client_addr: addr,
                    peer_addr: String::new(),
                },
            ))),
            None => Err(Status::unavailable(
                "not the leader, and no leader is known yet; retry",
            )),
        }
    }

    /// Refuses to make voters of learners the leader has not nearly
    /// caught up to its commit index (as etcd refuses to promote a learner
    /// out of sync): such a voter has no data, does not vote until it has
    /// it (`identity`), and would hold the cluster's quorum back. Checked
    /// on the leader only; elsewhere the change itself answers.
    async fn caught_up(&self, voters: &BTreeSet<u64>) -> Result<(), Status> {
        // The metrics trail the replication a little: give them 2 s.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.lagging_learner(voters) {
                None => return Ok(()),
                Some(why) if Instant::now() >= deadline => {
                    return Err(Status::failed_precondition(why))
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Why one of `voters` may not become a voter yet, if one may not.
    fn lagging_learner(&self, voters: &BTreeSet<u64>) -> Option<String> {
        let m = self.core.raft.metrics().borrow_watched().clone();
        let (ServerState::Leader, Some(replication)) = (m.state, m.replication.as_ref()) else {
            return None;
        };
        let committed = m.local_committed.as_ref().map_or(0, |l| l.index);
        let current: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        for id in voters.iter().filter(|id| !current.contains(id)) {
            let matched = replication
                .get(id)
                .and_then(|l| l.as_ref())
                .map(|l| l.index);
            // etcd's rule: within 10% of the commit index (entries
            // committed while the call travels do not refuse it).
            if matched.is_none_or(|i| i < committed - committed / 10) {
                return Some(format!(
                    "learner {id} has not caught up: it holds entries up to {}, the leader \
                     has committed {committed} (it must hold 90%); promote it once it has \
                     (AddLearner with wait_caught_up waits for that)",
                    matched.map_or("none".to_string(), |i| i.to_string())
                ));
            }
        }
        None
    }

    async fn change(
        &self,
        change: ChangeMembers<u64, Member>,
    ) -> Result<pb::MembersResponse, Status> {
        let _one_at_a_time = self.membership_leader().await?;
        self.core
            .scope
            .run(self.core.raft.change_membership(change, false))
            .await
            .map_err(errors::write_error)?;
        Ok(self.members())
    }
}

fn role(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.core.raft.metrics().borrow_watched().clone();
        let db = self.core.sm.db();
        let st = db.stats();
        let (_, last, purged) = self.core.log.bounds();
        let log_bytes = self.core.log.live_bytes();
        let leader = m.current_leader.unwrap_or(0);
        let leader_addr = self.core.leader().map(|(_, a)| a).unwrap_or_default();
        let sessions = self.core.sm.sessions();
        Ok(Response::new(pb::StatusResponse {
            cluster_id: self.core.sm.cluster_id(),
            id: self.core.config.id,
            client_addr: self.core.config.advertise.client_addr.clone(),
            peer_addr: self.core.config.advertise.peer_addr.clone(),
            role: role(m.state).into(),
            term: m.current_term,
            last_log_index: last.map_or(0, |l| l.index),
            committed: m.local_committed.as_ref().map_or(0, |l| l.index),
            applied: m.last_applied.as_ref().map_or(0, |l| l.index),
            leader,
            leader_addr,
            storage: Some(pb::StorageStats {
                memtable_bytes: st.memtable_bytes + st.immutable_memtable_bytes,
                levels: (0..st.level_files.len())
                    .map(|l| pb::LevelStats {
                        level: l as u32,
                        files: st.level_files[l] as u64,
                        bytes: st.level_bytes[l],
                    })
                    .collect(),
                compaction_bytes_in: st.compaction_bytes_read,
                compaction_bytes_out: st.compaction_bytes_written,
                stalls: st.write_stalls,
                cache_hits: st.cache_hits,
                cache_misses: st.cache_misses,
                disk_bytes: st.total_table_bytes() + log_bytes,
                raft_log_bytes: log_bytes,
            }),
            version: super::VERSION.into(),
            snapshot_index: m.snapshot.as_ref().map_or(0, |l| l.index),
            purged_index: purged.map_or(0, |l| l.index),
            settings: Some(settings_pb(&sessions.settings, sessions.settings_set)),
            sessions: sessions.count as u64,
            catching_up: !self.core.voting.ready(),
        }))
    }

    async fn members(
        &self,
        _req: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        Ok(Response::new(self.members()))
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let r = req.into_inner();
            if r.id == 0 || r.client_addr.is_empty() || r.peer_addr.is_empty() {
                return Err(Status::invalid_argument(
                    "a learner needs a non-zero id, a client address and a peer address",
                ));
            }
            let _one_at_a_time = self.membership_leader().await?;
            let member = Member {
                client_addr: r.client_addr,
                peer_addr: r.peer_addr,
            };
            self.core
                .scope
                .run(self.core.raft.add_learner(r.id, member, r.wait_caught_up))
                .await
                .map_err(errors::write_error)?;
            Ok(Response::new(self.members()))
        }
        .await;
        observe("AddLearner", started, &r);
        r
    }

    async fn promote(
        &self,
        req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let ids: BTreeSet<u64> = req.into_inner().ids.into_iter().collect();
        if ids.is_empty() {
            return Err(Status::invalid_argument("no ids to promote"));
        }
        self.caught_up(&ids).await?;
        Ok(Response::new(
            self.change(ChangeMembers::AddVoterIds(ids)).await?,
        ))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let id = req.into_inner().id;
        let m = self.members();
        let Some(member) = m.members.iter().find(|x| x.id == id) else {
            return Err(Status::not_found(format!("node {id} is not a member")));
        };
        if !member.is_learner {
            self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
                .await?;
        }
        Ok(Response::new(
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                .await?,
        ))
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let voters: BTreeSet<u64> = req.into_inner().voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument("the voter set must not be empty"));
        }
        self.caught_up(&voters).await?;
        Ok(Response::new(
            self.change(ChangeMembers::ReplaceAllVoters(voters)).await?,
        ))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let to = req.into_inner().to;
        self.leader_only()?;
        if to == 0 {
            if !super::transfer_leadership_away(&self.core, Duration::from_secs(10)).await {
                return Err(Status::unavailable("leadership did not move in time"));
            }
        } else {
            let voters: BTreeMap<u64, ()> = self.core.raft.voter_ids().map(|v| (v, ())).collect();
            if !voters.contains_key(&to) {
                return Err(Status::invalid_argument(format!(
                    "node {to} is not a voter"
                )));
            }
            self.core
                .scope
                .run(self.core.raft.trigger().transfer_leader(to))
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let done = self
                .core
                .wait_metrics(Duration::from_secs(10), |m| m.current_leader == Some(to))
                .await;
            if !done {
                return Err(Status::unavailable(format!(
                    "node {to} did not take over in time"
                )));
            }
        }
        Ok(Response::new(pb::TransferLeaderResponse {
            leader: self
                .core
                .raft
                .metrics()
                .borrow_watched()
                .current_leader
                .unwrap_or(0),
        }))
    }

    async fn set_settings(
        &self,
        req: Request<pb::SetSettingsRequest>,
    ) -> Result<Response<pb::Settings>, Status> {
        let req = req.into_inner();
        self.leader_only()?;
        let current = self.core.sm.sessions().settings;
        let pick = |asked: u64, now: u64| if asked == 0 { now } else { asked };
        let settings = Settings {
            history_revisions: pick(req.history_revisions, current.history_revisions),
            session_ttl_secs: pick(req.session_ttl_secs, current.session_ttl_secs),
        };
        check_settings(&settings).map_err(Status::invalid_argument)?;
        let op = Op::Settings {
            settings,
            if_unset: false,
        };
        let r = self
            .core
            .scope
            .run(self.core.raft.client_write(Command::new(op)))
            .await
            .map_err(errors::write_error)?;
        if let OpResult::Refused { limit, detail } = r.data.result {
            return Err(Status::invalid_argument(format!(
                "{detail} (limit {limit})"
            )));
        }
        Ok(Response::new(settings_pb(&settings, true)))
    }

    async fn alarm(
        &self,
        req: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let req = req.into_inner();
        let action = AlarmAction::try_from(req.action).map_err(|_| {
            Status::invalid_argument(format!("unknown alarm action {}", req.action))
        })?;
        let kind = pb::AlarmType::try_from(req.alarm)
            .map_err(|_| Status::invalid_argument(format!("unknown alarm type {}", req.alarm)))?;
        let raised = self.core.sm.alarms();
        let matching: Vec<Alarm> = raised
            .iter()
            .filter(|a| req.member_id == 0 || a.member == req.member_id)
            .filter(|a| kind == pb::AlarmType::None || alarm_type(a.kind) == kind)
            .copied()
            .collect();
        let changed = match action {
            AlarmAction::Get => matching,
            AlarmAction::Activate => {
                let kind = alarm_kind(kind).ok_or_else(|| {
                    Status::invalid_argument("ACTIVATE needs an alarm type (NOSPACE or CORRUPT)")
                })?;
                if req.member_id == 0 {
                    return Err(Status::invalid_argument("ACTIVATE needs a member id"));
                }
                self.leader_only()?;
                let alarm = Alarm {
                    member: req.member_id,
                    kind,
                };
                raise(&self.core, alarm).await?;
                vec![alarm]
            }
            AlarmAction::Deactivate => {
                self.leader_only()?;
                for a in &matching {
                    let op = Op::Alarm {
                        active: false,
                        alarm: *a,
                    };
                    self.core
                        .scope
                        .run(self.core.raft.client_write(Command::new(op)))
                        .await
                        .map_err(errors::write_error)?;
                    tracing::warn!(alarm = %a, "alarm disarmed");
                }
                matching
            }
        };
        Ok(Response::new(pb::AlarmResponse {
            alarms: changed
                .iter()
                .map(|a| pb::AlarmMember {
                    member_id: a.member,
                    alarm: alarm_type(a.kind) as i32,
                })
                .collect(),
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let revision = req.into_inner().revision;
        let h = self
            .core
            .sm
            .hash_at(revision, Duration::from_secs(120))
            .await
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::HashKvResponse {
            member_id: self.core.config.id,
            revision,
            hash: h.hash,
            keys: h.keys,
            bytes: h.bytes,
        }))
    }

    async fn check_hash(
        &self,
        _req: Request<pb::CheckHashRequest>,
    ) -> Result<Response<pb::CheckHashResponse>, Status> {
        self.leader_only()?;
        super::corruption::check(&self.core)
            .await
            .map(Response::new)
    }

    async fn snapshot(
        &self,
        _req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        self.core.check_accepting()?;
        let applied = self.core.sm.applied();
        let snapshot_index = |m: &openraft::RaftMetrics<crate::raft::TypeConfig>| {
            m.snapshot.as_ref().map_or(0, |l| l.index)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        // openraft drops a trigger while a build runs, and that build may
        // cover less than `applied`: ask again until one covers it.
        loop {
            self.core
                .scope
                .run(self.core.raft.trigger().snapshot())
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            if self
                .core
                .wait_metrics(Duration::from_secs(1), |m| snapshot_index(m) >= applied)
                .await
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::deadline_exceeded("snapshot did not finish in 60 s"));
            }
        }
        let done = snapshot_index(&self.core.raft.metrics().borrow_watched());
        Ok(Response::new(pb::SnapshotResponse { index: done }))
    }
}

fn settings_pb(s: &Settings, set: bool) -> pb::Settings {
    pb::Settings {
        history_revisions: s.history_revisions,
        session_ttl_secs: s.session_ttl_secs,
        set,
    }
}

/// Raises `alarm` through the leader this node is (replicated like a
/// write; raising a raised alarm changes nothing).
pub async fn raise(core: &NodeCore, alarm: Alarm) -> Result<(), Status> {
    let op = Op::Alarm {
        active: true,
        alarm,
    };
    core.scope
        .run(core.raft.client_write(Command::new(op)))
        .await
        .map_err(errors::write_error)?;
    tracing::warn!(%alarm, "alarm raised");
    Ok(())
}

/// The protocol's name of an alarm kind.
pub fn alarm_type(kind: AlarmKind) -> pb::AlarmType {
    match kind {
        AlarmKind::NoSpace => pb::AlarmType::Nospace,
        AlarmKind::Corrupt => pb::AlarmType::Corrupt,
    }
}

/// The alarm kind a protocol alarm type names (None for NONE).
fn alarm_kind(t: pb::AlarmType) -> Option<AlarmKind> {
    match t {
        pb::AlarmType::None => None,
        pb::AlarmType::Nospace => Some(AlarmKind::NoSpace),
        pb::AlarmType::Corrupt => Some(AlarmKind::Corrupt),
    }
}
