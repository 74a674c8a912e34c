//! The client's side of request-id sessions (see `RequestId` in
//! `kv.proto`): opening a session (the cluster picks the client id),
//! numbering writes, and the floor (every sequence number below it is
//! settled).
//!
//! A session is opened before the first write and again when the cluster
//! has lost it (it expired while the client was idle). A write refused
//! for an unknown session on its only attempt was not applied: it is
//! sent again in a new session. A retry refused so fails with
//! [`Error::SessionLost`]: whether an earlier attempt was applied is
//! unknown, and it is never applied twice.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use cairn_proto::kv as pb;
use cairn_proto::kv::kv_client::KvClient;

use crate::batch::KvRequest;
use crate::client::{request, Client, Inner, Route};
use crate::error::{Error, Result};

/// The session in use and its writes not settled.
#[derive(Default)]
pub(crate) struct SessionState {
    /// The session's client id; none before the first write, or after
    /// the cluster lost it.
    client_id: Option<u64>,
    next_seq: u64,
    /// Sequence numbers of `client_id` whose calls have not ended.
    in_flight: BTreeSet<u64>,
}

impl SessionState {
    pub(crate) fn new() -> Mutex<Self> {
        Mutex::new(SessionState::default())
    }

    pub(crate) fn client_id(&self) -> Option<u64> {
        self.client_id
    }

    /// A new write of the open session, if one is open.
    fn allocate(&mut self) -> Option<(u64, u64)> {
        let client_id = self.client_id?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.insert(seq);
        Some((client_id, seq))
    }
}

/// One logical write's request id; its attempts stamp it. Dropping it
/// settles the write.
pub(crate) struct WriteId {
    inner: Arc<Inner>,
    client_id: u64,
    seq: u64,
    attempts: u32,
}

impl WriteId {
    /// The request id for the next attempt.
    pub(crate) fn stamp(&mut self) -> pb::RequestId {
        self.attempts += 1;
        let s = self.inner.session.lock();
        // The floor: the oldest write of this session still in flight.
        // (When the client moved on to a new session, 0: a floor never
        // goes down.)
        let floor = match s.client_id == Some(self.client_id) {
            true => s.in_flight.first().copied().unwrap_or(self.seq),
            false => 0,
        };
        pb::RequestId {
            client_id: self.client_id,
            seq: self.seq,
            floor,
        }
    }
}

impl std::fmt::Debug for WriteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteId({}, {})", self.client_id, self.seq)
    }
}

impl Drop for WriteId {
    fn drop(&mut self) {
        let mut s = self.inner.session.lock();
        if s.client_id == Some(self.client_id) {
            s.in_flight.remove(&self.seq);
        }
    }
}

impl Client {
    /// A new request id for one logical write, in the open session.
    #[cfg(feature = "proxy")]
    pub(crate) fn try_write_id(&self) -> Option<WriteId> {
        let (client_id, seq) = self.inner.session.lock().allocate()?;
        Some(WriteId {
            inner: self.inner.clone(),
            client_id,
            seq,
            attempts: 0,
        })
    }

    /// A new request id for one logical write, opening a session first
    /// when none is open.
    pub(crate) async fn write_id(&self) -> Result<WriteId> {
        loop {
            if let Some((client_id, seq)) = self.inner.session.lock().allocate() {
                return Ok(WriteId {
                    inner: self.inner.clone(),
                    client_id,
                    seq,
                    attempts: 0,
                });
            }
            self.ensure_session().await?;
        }
    }

    /// Opens a session unless one is open (one open at a time; the
    /// others wait for it).
    async fn ensure_session(&self) -> Result<()> {
        let _opening = self.inner.opening.lock().await;
        if self.inner.session.lock().client_id.is_some() {
            return Ok(());
        }
        let r = self.open_session_within(self.inner.config.timeout).await?;
        *self.inner.session.lock() = SessionState {
            client_id: Some(r.client_id),
            next_seq: 1,
            in_flight: BTreeSet::new(),
        };
        Ok(())
    }

    /// Opens this client's session in the background (trying for up to a
    /// minute), so its first writes need not wait for it.
    #[cfg(feature = "proxy")]
    pub fn open_session_soon(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            for _ in 0..60 {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let client = Client { inner };
                // Learn the leader first, so the open goes straight to it.
                if client.cached_leader().is_none() {
                    if let Ok(m) = client.members().await {
                        client.learn(&m);
                    }
                }
                if client.cached_leader().is_some() && client.ensure_session().await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Opens a session on the leader; returns its answer.
    pub(crate) async fn open_session_within(
        &self,
        timeout: Duration,
    ) -> Result<pb::OpenSessionResponse> {
        self.call_within(Route::Leader, timeout, |up, t| async move {
            let mut kv = KvClient::new(up.ch);
            Ok(kv
                .open_session(request(pb::OpenSessionRequest {}, t))
                .await?
                .into_inner())
        })
        .await
    }

    /// Forgets the session `w` was of, if it is still the one in use:
    /// the cluster no longer holds it.
    pub(crate) fn lost_session(&self, w: &WriteId) {
        let mut s = self.inner.session.lock();
        if s.client_id == Some(w.client_id) {
            tracing::info!(
                client_id = w.client_id,
                "client session lost; opening a new one"
            );
            *s = SessionState::default();
        }
    }

    /// Sends a write to the leader within `timeout`, under a request id of
    /// this client's (set into the request by `id_of`).
    pub(crate) async fn write_call<R: KvRequest>(
        &self,
        req: R,
        timeout: Duration,
        id_of: fn(&mut R) -> &mut Option<pb::RequestId>,
    ) -> Result<R::Response> {
        self.with_write_id(|mut id| {
            let req = req.clone();
            async move {
                let r = self
                    .call_within(Route::Leader, timeout, |up, t| {
                        let mut q = req.clone();
                        *id_of(&mut q) = Some(id.stamp());
                        up.kv(q, t)
                    })
                    .await;
                (r, id)
            }
        })
        .await
    }

    /// Runs a write: `attempt` sends it with the request id it is given.
    /// Refused for an unknown session on its only attempt (so not
    /// applied), it is sent again in a new session; a retry refused so is
    /// [`Error::SessionLost`].
    pub(crate) async fn with_write_id<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut(WriteId) -> Fut,
        Fut: std::future::Future<Output = (Result<T>, WriteId)>,
    {
        let mut sessions = 0;
        loop {
            let (result, id) = attempt(self.write_id().await?).await;
            match result {
                Err(Error::SessionUnknown(m)) => {
                    self.lost_session(&id);
                    sessions += 1;
                    if id.attempts > 1 || sessions == 3 {
                        return Err(Error::SessionLost {
                            client_id: id.client_id,
                            seq: id.seq,
                            reason: m,
                        });
                    }
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientConfig;

    fn client_with_session(id: u64) -> Client {
        let c = Client::new_lazy(["127.0.0.1:1"], ClientConfig::default()).unwrap();
        *c.inner.session.lock() = SessionState {
            client_id: Some(id),
            next_seq: 1,
            in_flight: BTreeSet::new(),
        };
        c
    }

    #[tokio::test]
    async fn the_floor_is_the_oldest_write_not_settled() {
        let c = client_with_session(7);
        let mut a = c.write_id().await.unwrap();
        let mut b = c.write_id().await.unwrap();
        let ra = a.stamp();
        assert_eq!((ra.client_id, ra.seq, ra.floor), (7, 1, 1));
        assert_eq!((b.stamp().seq, b.stamp().floor), (2, 1));
        drop(a);
        assert_eq!(b.stamp().floor, 2);
        drop(b);
        assert_eq!(c.write_id().await.unwrap().stamp().floor, 3);
    }

    #[tokio::test]
    async fn a_lost_session_is_forgotten_once() {
        let c = client_with_session(7);
        let mut a = c.write_id().await.unwrap();
        c.lost_session(&a);
        assert_eq!(c.inner.session.lock().client_id(), None);
        // The old session's write keeps its id, without a floor.
        let ra = a.stamp();
        assert_eq!((ra.client_id, ra.floor), (7, 0));
        *c.inner.session.lock() = SessionState {
            client_id: Some(9),
            next_seq: 1,
            in_flight: BTreeSet::new(),
        };
        // A late loss of the old session leaves the new one alone.
        c.lost_session(&a);
        assert_eq!(c.inner.session.lock().client_id(), Some(9));
    }
}
