//! Cluster administration: status, health, membership, leadership,
//! snapshots.

use std::time::Duration;

use cairn_proto::cluster::cluster_client::ClusterClient;
use cairn_proto::cluster::{self as pb, MembersResponse, StatusResponse};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::client::{request, Client, Route};
use crate::error::{classify, from_status, Error, Failure, Result};

/// One node's health as its gRPC health service reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The process answers (`liveness`).
    pub live: bool,
    /// It knows a leader and has applied what is committed (`readiness`).
    pub ready: bool,
    /// The round trip of the readiness check.
    pub took: Duration,
}

/// A node's status, or why it could not be had.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    /// The member's id (0 when only the endpoint is known).
    pub id: u64,
    /// Where it was asked.
    pub addr: String,
    /// Its answer.
    pub status: Result<StatusResponse>,
}

fn cluster(ch: Channel) -> ClusterClient<Channel> {
    ClusterClient::new(ch)
}

impl Client {
    /// The voters and learners, and the leader, as the answering node
    /// knows them.
    pub async fn members(&self) -> Result<MembersResponse> {
        self.call(Route::Any, |up, t| async move {
            Ok(cluster(up.ch)
                .members(request(pb::MembersRequest {}, t))
                .await?
                .into_inner())
        })
        .await
    }

    /// The leader's status (any node's when no leader is known).
    pub async fn status_of_leader(&self) -> Result<StatusResponse> {
        self.leader_status_within(self.config().timeout).await
    }

    /// [`Client::status_of_leader`] within `timeout`.
    pub(crate) async fn leader_status_within(&self, timeout: Duration) -> Result<StatusResponse> {
        self.call_within(Route::Leader, timeout, |up, t| async move {
            Ok(cluster(up.ch)
                .status(request(pb::StatusRequest {}, t))
                .await?
                .into_inner())
        })
        .await
    }

    /// The status of the node at `addr` (one attempt within the deadline,
    /// no failover: the caller asked for that node).
    pub async fn status_of(&self, addr: &str) -> Result<StatusResponse> {
        let ch = self.channel(addr)?;
        let t = self.config().timeout;
        match cluster(ch).status(request(pb::StatusRequest {}, t)).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(match classify(&s) {
                Failure::Fatal(e) => e,
                Failure::Redirect(m) | Failure::Retry(m) => Error::Unavailable {
                    attempts: 1,
                    last: format!("{addr}: {m}"),
                },
            }),
        }
    }

    /// Every member's status, asked in parallel: one entry per member
    /// (per endpoint when the members cannot be learned), sorted by id.
    pub async fn status_all(&self) -> Vec<MemberStatus> {
        let targets: Vec<(u64, String)> = match self.members().await {
            Ok(m) => {
                self.learn(&m);
                m.members
                    .into_iter()
                    .map(|m| (m.id, m.client_addr))
                    .collect()
            }
            Err(_) => self.endpoints().into_iter().map(|e| (0, e)).collect(),
        };
        let mut out = futures::future::join_all(targets.into_iter().map(|(id, addr)| async move {
            let status = self.status_of(&addr).await;
            MemberStatus { id, addr, status }
        }))
        .await;
        for m in &mut out {
            if m.id == 0 {
                if let Ok(s) = &m.status {
                    m.id = s.id;
                }
            }
        }
        out.sort_by_key(|m| m.id);
        out
    }

    /// The health of the node at `addr`.
    pub async fn health_of(&self, addr: &str) -> Result<Health> {
        let ch = self.channel(addr)?;
        let t = self.config().timeout;
        let check = |service: &'static str| {
            let ch = ch.clone();
            async move {
                let r = HealthClient::new(ch)
                    .check(request(
                        HealthCheckRequest {
                            service: service.to_string(),
                        },
                        t,
                    ))
                    .await;
                match r {
                    Ok(r) => Ok(r.into_inner().status == ServingStatus::Serving as i32),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
                    Err(s) => Err(Error::Unavailable {
                        attempts: 1,
                        last: format!("{addr}: {}", s.message()),
                    }),
                }
            }
        };
        let live = check("liveness").await?;
        let started = std::time::Instant::now();
        let ready = check("readiness").await?;
        Ok(Health {
            live,
            ready,
            took: started.elapsed(),
        })
    }

    /// Adds a learner; with `wait_caught_up`, returns once it has the log.
    pub async fn add_learner(
        &self,
        id: u64,
        client_addr: &str,
        peer_addr: &str,
        wait_caught_up: bool,
    ) -> Result<MembersResponse> {
        let req = pb::AddLearnerRequest {
            id,
            client_addr: client_addr.to_string(),
            peer_addr: peer_addr.to_string(),
            wait_caught_up,
        };
        self.call(Route::Leader, |up, t| {
            let req = req.clone();
            async move {
                Ok(cluster(up.ch)
                    .add_learner(request(req, t))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// Makes learners voters.
    pub async fn promote(&self, ids: &[u64]) -> Result<MembersResponse> {
        let req = pb::PromoteRequest { ids: ids.to_vec() };
        self.call(Route::Leader, |up, t| {
            let req = req.clone();
            async move { Ok(cluster(up.ch).promote(request(req, t)).await?.into_inner()) }
        })
        .await
    }

    /// Removes a voter or a learner.
    pub async fn remove_member(&self, id: u64) -> Result<MembersResponse> {
        self.call(Route::Leader, |up, t| async move {
            Ok(cluster(up.ch)
                .remove(request(pb::RemoveRequest { id }, t))
                .await?
                .into_inner())
        })
        .await
    }

    /// Sets the voters to exactly `voters` (joint consensus).
    pub async fn change_membership(&self, voters: &[u64]) -> Result<MembersResponse> {
        let req = pb::ChangeMembershipRequest {
            voters: voters.to_vec(),
        };
        self.call(Route::Leader, |up, t| {
            let req = req.clone();
            async move {
                Ok(cluster(up.ch)
                    .change_membership(request(req, t))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// Hands leadership to `to` (any up-to-date voter when 0); returns the
    /// new leader's id.
    pub async fn transfer_leader(&self, to: u64) -> Result<u64> {
        let r = self
            .call(Route::Leader, |up, t| async move {
                Ok(cluster(up.ch)
                    .transfer_leader(request(pb::TransferLeaderRequest { to }, t))
                    .await?
                    .into_inner())
            })
            .await?;
        // The cached leader is stale now.
        self.forget_leader();
        Ok(r.leader)
    }

    /// Changes the cluster-wide settings (0: keep); returns them as set.
    pub async fn set_settings(
        &self,
        history_revisions: u64,
        session_ttl_secs: u64,
    ) -> Result<pb::Settings> {
        let req = pb::SetSettingsRequest {
            history_revisions,
            session_ttl_secs,
        };
        self.call(Route::Leader, |up, t| async move {
            Ok(cluster(up.ch)
                .set_settings(request(req, t))
                .await?
                .into_inner())
        })
        .await
    }

    /// Lists (GET), raises (ACTIVATE) or disarms (DEACTIVATE) alarms; GET
    /// is answered by the leader's applied state, the others are leader
    /// only. Member 0 and `AlarmType::None` match every member and kind
    /// (GET, DEACTIVATE).
    pub async fn alarm(
        &self,
        action: pb::alarm_request::AlarmAction,
        member_id: u64,
        alarm: pb::AlarmType,
    ) -> Result<Vec<pb::AlarmMember>> {
        let req = pb::AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        };
        self.call(Route::Leader, |up, t| async move {
            Ok(cluster(up.ch)
                .alarm(request(req, t))
                .await?
                .into_inner()
                .alarms)
        })
        .await
    }

    /// Asks the leader to compare every member's hash of the whole state
    /// at one new entry (members that differ from the majority get a
    /// CORRUPT alarm). Hashing a large state takes a while: the call's
    /// deadline is at least 130 s.
    pub async fn check_hash(&self) -> Result<pb::CheckHashResponse> {
        let t = self.config().timeout.max(Duration::from_secs(130));
        self.call(Route::Leader, |up, _| async move {
            Ok(cluster(up.ch)
                .check_hash(request(pb::CheckHashRequest {}, t))
                .await?
                .into_inner())
        })
        .await
    }

    /// Builds a snapshot on the node at `addr` now; returns the last log
    /// index it covers.
    pub async fn snapshot_on(&self, addr: &str) -> Result<u64> {
        let ch = self.channel(addr)?;
        // Building a snapshot of a large store takes longer than a call.
        let t = self.config().timeout.max(Duration::from_secs(60));
        cluster(ch)
            .snapshot(request(pb::SnapshotRequest {}, t))
            .await
            .map(|r| r.into_inner().index)
            .map_err(|s| from_status(&s))
    }
}
