//! Watches through the gateway. A watch "from now" joins the one upstream
//! stream for its key or prefix (watch coalescing): the upstream is a
//! client-library watch, which moves to another replica by itself when
//! its node fails and resumes after the last revision, so every subscriber
//! sees every revision once, in order. A watch from a given revision gets
//! its own upstream.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use cairn_client::{Client, EventKind, Watch, WatchBatch, WatchStream};
use cairn_proto::kv::{self as pb};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

/// What an upstream broadcasts: a revision's message, or why it ended.
type Item = Result<Arc<pb::WatchResponse>, (tonic::Code, String)>;

/// Revisions a subscriber may fall behind before it is cut off (it then
/// resumes from its last revision, as any client does after an error).
const LAG: usize = 4096;

/// One upstream watch shared by subscribers.
pub struct Upstream {
    tx: broadcast::Sender<Item>,
    /// The last revision broadcast (or, before any, the one before the
    /// first the upstream can deliver).
    last: Mutex<u64>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
        metrics::gauge!("cairn_gateway_upstream_watches").decrement(1.0);
    }
}

/// The shared upstream watches, by (key, prefix).
pub struct Hub {
    client: Client,
    upstreams: tokio::sync::Mutex<HashMap<(Bytes, bool), Weak<Upstream>>>,
}

/// Where one subscriber's messages come from.
pub enum Source {
    /// A shared upstream, joined after revision `after`.
    Shared {
        up: Arc<Upstream>,
        rx: broadcast::Receiver<Item>,
        after: u64,
    },
    /// An upstream of its own.
    Direct(WatchStream),
}

fn to_pb(b: WatchBatch) -> pb::WatchResponse {
    pb::WatchResponse {
        header: Some(b.header),
        events: b
            .events
            .into_iter()
            .map(|e| pb::Event {
                r#type: match e.kind {
                    EventKind::Put => pb::event::EventType::Put as i32,
                    EventKind::Delete => pb::event::EventType::Delete as i32,
                },
                kv: Some(e.kv),
            })
            .collect(),
    }
}

fn confirmation(revision: u64) -> pb::WatchResponse {
    pb::WatchResponse {
        header: Some(pb::ResponseHeader {
            revision,
            ..Default::default()
        }),
        events: Vec::new(),
    }
}

impl Hub {
    pub fn new(client: Client) -> Hub {
        Hub {
            client,
            upstreams: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    fn watch_of(r: &pb::WatchRequest) -> Watch {
        let w = if r.prefix {
            Watch::prefix(&r.key)
        } else {
            Watch::key(&r.key)
        };
        w.from_revision(r.start_revision)
    }

    /// Opens a subscriber: joins the shared upstream for a watch from now,
    /// or opens its own for a watch from a revision.
    pub async fn open(&self, r: pb::WatchRequest) -> Result<Source, Status> {
        if r.start_revision != 0 {
            let s = self.client.watch(Self::watch_of(&r)).await?;
            return Ok(Source::Direct(s));
        }
        let key = (r.key.clone(), r.prefix);
        let mut map = self.upstreams.lock().await;
        if let Some(up) = map.get(&key).and_then(Weak::upgrade) {
            // Under `last`'s lock: every revision after `after` is
            // broadcast after this subscription.
            let last = up.last.lock();
            let rx = up.tx.subscribe();
            let after = *last;
            drop(last);
            metrics::counter!("cairn_gateway_coalesced_watchers_total").increment(1);
            return Ok(Source::Shared { up, rx, after });
        }
        map.retain(|_, w| w.strong_count() > 0);
        let mut stream = self.client.watch(Self::watch_of(&r)).await?;
        let (tx, rx) = broadcast::channel(LAG);
        let after = stream.start_revision().saturating_sub(1);
        let up = Arc::new(Upstream {
            tx,
            last: Mutex::new(after),
            task: Mutex::new(None),
        });
        metrics::gauge!("cairn_gateway_upstream_watches").increment(1.0);
        let weak = Arc::downgrade(&up);
        let task = tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let Some(up) = weak.upgrade() else { return };
                let mut last = up.last.lock();
                match item {
                    Ok(batch) => {
                        *last = batch.revision;
                        let _ = up.tx.send(Ok(Arc::new(to_pb(batch))));
                    }
                    Err(e) => {
                        let s = Status::from(e);
                        let _ = up.tx.send(Err((s.code(), s.message().to_string())));
                        return;
                    }
                }
            }
            if let Some(up) = weak.upgrade() {
                let _ = up.tx.send(Err((
                    tonic::Code::Unavailable,
                    "the upstream watch ended".into(),
                )));
            }
        });
        *up.task.lock() = Some(task);
        map.insert(key, Arc::downgrade(&up));
        Ok(Source::Shared { up, rx, after })
    }
}

impl Source {
    /// Sends the confirmation and then every message to `tx` until the
    /// subscriber goes away or the upstream fails.
    pub async fn pump(self, tx: &mpsc::Sender<Result<pb::WatchResponse, Status>>) {
        metrics::gauge!("cairn_gateway_watchers").increment(1.0);
        match self {
            Source::Direct(mut s) => {
                if tx
                    .send(Ok(confirmation(s.start_revision().saturating_sub(1))))
                    .await
                    .is_ok()
                {
                    while let Some(item) = s.next().await {
                        let msg = item.map(to_pb).map_err(Status::from);
                        let end = msg.is_err();
                        if tx.send(msg).await.is_err() || end {
                            break;
                        }
                    }
                }
            }
            Source::Shared { up, mut rx, after } => {
                let mut last = after;
                if tx.send(Ok(confirmation(after))).await.is_ok() {
                    loop {
                        let msg = match rx.recv().await {
                            Ok(Ok(m)) => {
                                last = m.header.as_ref().map_or(last, |h| h.revision);
                                Ok((*m).clone())
                            }
                            Ok(Err((code, message))) => Err(Status::new(code, message)),
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                Err(Status::unavailable(format!(
                                    "this watch fell {n} revisions behind; resume from revision {}",
                                    last + 1
                                )))
                            }
                            Err(broadcast::error::RecvError::Closed) => {
                                Err(Status::unavailable("the upstream watch ended"))
                            }
                        };
                        let end = msg.is_err();
                        if tx.send(msg).await.is_err() || end {
                            break;
                        }
                    }
                }
                drop(up);
            }
        }
        metrics::gauge!("cairn_gateway_watchers").decrement(1.0);
    }
}
