//! Watches that survive node failures: the stream reconnects by itself
//! and resumes after the last revision it delivered, so a consumer sees
//! every revision once, in order.

use std::time::Duration;

use bytes::Bytes;
use cairn_proto::kv::kv_client::KvClient;
use cairn_proto::kv::{self as pb, KeyValue};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::client::Client;
use crate::error::{classify, Error, Failure, Result};

/// What to watch.
#[derive(Debug, Clone)]
pub struct Watch {
    key: Bytes,
    prefix: bool,
    start_revision: u64,
    give_up_after: Duration,
}

impl Watch {
    /// One key.
    pub fn key(key: impl AsRef<[u8]>) -> Watch {
        Watch {
            key: Bytes::copy_from_slice(key.as_ref()),
            prefix: false,
            start_revision: 0,
            give_up_after: Duration::from_secs(30),
        }
    }
    /// Every key under a prefix (empty: every key).
    pub fn prefix(prefix: impl AsRef<[u8]>) -> Watch {
        Watch {
            prefix: true,
            ..Watch::key(prefix)
        }
    }
    /// Deliver from this revision on (default: changes after the watch is
    /// set up).
    pub fn from_revision(mut self, rev: u64) -> Watch {
        self.start_revision = rev;
        self
    }
    /// How long the stream keeps trying to reconnect before it ends with
    /// [`Error::Unavailable`] (default 30 s).
    pub fn give_up_after(mut self, d: Duration) -> Watch {
        self.give_up_after = d;
        self
    }
}

/// Whether a key was set or deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Set (created or changed).
    Put,
    /// Deleted.
    Delete,
}

/// One change.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete, the key with mod_revision
    /// the delete's revision and an empty value.
    pub kv: KeyValue,
}

/// The changes one revision made to the watched keys.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchBatch {
    /// The revision.
    pub revision: u64,
    /// The header of the server's message.
    pub header: cairn_proto::kv::ResponseHeader,
    /// Its changes to the watched keys.
    pub events: Vec<Event>,
}

/// The stream a watch returns: batches in revision order, each revision
/// once. Ends after an error that retrying cannot fix (for example
/// [`Error::Compacted`]). Dropping it cancels the watch.
pub struct WatchStream {
    inner: ReceiverStream<Result<WatchBatch>>,
    start: u64,
}

impl WatchStream {
    /// The first revision the stream can deliver (for a watch "from now":
    /// one past the revision the first server was at).
    pub fn start_revision(&self) -> u64 {
        self.start
    }
}

impl futures::Stream for WatchStream {
    type Item = Result<WatchBatch>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl Client {
    /// Watches a key or a prefix. The first server confirms the watch
    /// before this returns, so every change after it is delivered.
    pub async fn watch(&self, w: Watch) -> Result<WatchStream> {
        let (tx, rx) = mpsc::channel(256);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let client = self.clone();
        tokio::spawn(async move { client.run_watch(w, tx, Some(ready_tx)).await });
        match ready_rx.await {
            Ok(Ok(start)) => Ok(WatchStream {
                inner: ReceiverStream::new(rx),
                start,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Unavailable {
                attempts: 0,
                last: "the watch task ended".into(),
            }),
        }
    }

    async fn run_watch(
        self,
        w: Watch,
        tx: mpsc::Sender<Result<WatchBatch>>,
        mut ready: Option<tokio::sync::oneshot::Sender<Result<u64>>>,
    ) {
        // The next revision to deliver; 0 until the first server says
        // where "now" is.
        let mut next = w.start_revision;
        let mut attempts = 0u32;
        let mut failing_since: Option<Instant> = None;
        loop {
            let target = self.rotate();
            let result = self
                .watch_once(&target, &w, &mut next, &tx, &mut ready)
                .await;
            let failure = match result {
                // The consumer went away.
                Ok(false) => return,
                // The server ended the stream (a drain): reconnect.
                Ok(true) => {
                    failing_since = None;
                    attempts = 0;
                    format!("{target} ended the stream")
                }
                Err(e) => match e {
                    WatchFailure::Status(s) => match classify(&s) {
                        Failure::Fatal(e) => {
                            finish(&tx, &mut ready, e).await;
                            return;
                        }
                        Failure::Redirect(_) | Failure::Retry(_) => format!("{target}: {s}"),
                    },
                    WatchFailure::Progressed(s) => {
                        failing_since = None;
                        attempts = 0;
                        format!("{target}: {s}")
                    }
                },
            };
            let last = failure;
            attempts += 1;
            let since = *failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= w.give_up_after {
                let e = Error::Unavailable { attempts, last };
                finish(&tx, &mut ready, e).await;
                return;
            }
            tracing::debug!(%last, next, "watch reconnecting");
            tokio::time::sleep(self.backoff(attempts)).await;
            if tx.is_closed() {
                return;
            }
        }
    }

    /// One stream from one server. `Ok(true)`: the server ended it;
    /// `Ok(false)`: the consumer is gone.
    async fn watch_once(
        &self,
        target: &str,
        w: &Watch,
        next: &mut u64,
        tx: &mpsc::Sender<Result<WatchBatch>>,
        ready: &mut Option<tokio::sync::oneshot::Sender<Result<u64>>>,
    ) -> Result<bool, WatchFailure> {
        let ch = self
            .channel(target)
            .map_err(|e| WatchFailure::Status(tonic::Status::unavailable(e.to_string())))?;
        let req = pb::WatchRequest {
            key: w.key.clone(),
            prefix: w.prefix,
            start_revision: *next,
        };
        // The stream has no deadline; the call to set it up has one.
        let setup = self.config().attempt_timeout;
        let mut stream = tokio::time::timeout(setup, KvClient::new(ch).watch(req))
            .await
            .map_err(|_| WatchFailure::Status(tonic::Status::deadline_exceeded("watch setup")))?
            .map_err(WatchFailure::Status)?
            .into_inner();
        let first = tokio::time::timeout(setup, stream.next())
            .await
            .map_err(|_| {
                WatchFailure::Status(tonic::Status::deadline_exceeded("watch confirmation"))
            })?;
        match first {
            Some(Ok(m)) => {
                if *next == 0 {
                    *next = m.header.map_or(0, |h| h.revision) + 1;
                }
            }
            Some(Err(s)) => return Err(WatchFailure::Status(s)),
            None => {
                return Err(WatchFailure::Status(tonic::Status::unavailable(
                    "stream ended",
                )))
            }
        }
        if let Some(r) = ready.take() {
            let _ = r.send(Ok(*next));
        }
        let mut progressed = false;
        loop {
            match stream.next().await {
                None => return Ok(true),
                Some(Err(s)) => {
                    return Err(if progressed {
                        WatchFailure::Progressed(s)
                    } else {
                        WatchFailure::Status(s)
                    })
                }
                Some(Ok(m)) => {
                    let Some(batch) = to_batch(m) else { continue };
                    // A resumed stream starts at `next`; anything older
                    // was delivered already.
                    if batch.revision < *next {
                        continue;
                    }
                    *next = batch.revision + 1;
                    progressed = true;
                    if tx.send(Ok(batch)).await.is_err() {
                        return Ok(false);
                    }
                }
            }
        }
    }
}

enum WatchFailure {
    /// Failed before delivering anything.
    Status(tonic::Status),
    /// Failed after delivering events: the reconnect budget restarts.
    Progressed(tonic::Status),
}

async fn finish(
    tx: &mpsc::Sender<Result<WatchBatch>>,
    ready: &mut Option<tokio::sync::oneshot::Sender<Result<u64>>>,
    e: Error,
) {
    match ready.take() {
        Some(r) => {
            let _ = r.send(Err(e));
        }
        None => {
            let _ = tx.send(Err(e)).await;
        }
    }
}

fn to_batch(m: pb::WatchResponse) -> Option<WatchBatch> {
    let header = m.header.unwrap_or_default();
    let revision = m
        .events
        .iter()
        .filter_map(|e| e.kv.as_ref())
        .map(|kv| kv.mod_revision)
        .max()?;
    let events = m
        .events
        .into_iter()
        .map(|e| Event {
            kind: if e.r#type == pb::event::EventType::Delete as i32 {
                EventKind::Delete
            } else {
                EventKind::Put
            },
            kv: e.kv.unwrap_or_default(),
        })
        .collect();
    Some(WatchBatch {
        revision,
        header,
        events,
    })
}
