//! The gateway's gRPC services: the KV API proxied through the client
//! library, read-only Cluster calls, health and reflection.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::Client;
use cairn_proto::cluster::cluster_server::{Cluster, ClusterServer};
use cairn_proto::cluster::{self as cpb};
use cairn_proto::kv::kv_server::{Kv, KvServer};
use cairn_proto::kv::{self as pb};
use futures::Stream;
use tokio::sync::watch as twatch;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::Gateway;
use crate::server::http::observe_as;

pub(super) const METRIC: &str = "cairn_gateway_request_duration_seconds";

/// The request id header: the caller's, or one the gateway makes, logged
/// with the request and returned with the response.
const REQUEST_ID: &str = "x-request-id";

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A request's id: the caller's, or a number of the gateway's (written
/// out only when it is logged or returned).
enum RequestId {
    Caller(String),
    Ours(u64),
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestId::Caller(id) => f.write_str(id),
            RequestId::Ours(n) => write!(f, "gw-{n}"),
        }
    }
}

fn request_id<T>(req: &Request<T>) -> RequestId {
    match req.metadata().get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
        Some(v) if !v.is_empty() && v.len() <= 128 => RequestId::Caller(v.to_string()),
        _ => RequestId::Ours(NEXT_ID.fetch_add(1, Ordering::Relaxed)),
    }
}

/// The KV and Cluster services of the gateway.
#[derive(Clone)]
pub struct Proxy(pub Arc<Gateway>);

impl Proxy {
    /// Admits, applies the deadline, forwards, maps the error, records.
    async fn forward<Req, Resp, F, Fut>(
        &self,
        method: &'static str,
        req: Request<Req>,
        f: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Client, Req, Duration) -> Fut,
        Fut: Future<Output = cairn_client::Result<Resp>>,
    {
        let started = tokio::time::Instant::now();
        let g = &self.0;
        let id = request_id(&req);
        // A batch call's answer has no metadata to return the id in.
        let in_batch = req
            .extensions()
            .get::<crate::server::batch::InBatch>()
            .is_some();
        let span = tracing::debug_span!("request", %id, method);
        let r = async {
            // A call that came alone was admitted on arrival; one that
            // came in a batch message the relay did not take is here.
            let _admitted = match req.extensions().get::<AdmittedOnArrival>() {
                Some(_) => None,
                None => Some(g.admit(req.remote_addr())?),
            };
            let timeout = g.deadline(&req);
            f(g.client.clone(), req.into_inner(), timeout)
                .await
                .map(|v| {
                    let mut resp = Response::new(v);
                    if !in_batch {
                        if let Ok(v) = id.to_string().parse() {
                            resp.metadata_mut().insert(REQUEST_ID, v);
                        }
                    }
                    resp
                })
                .map_err(|e| {
                    tracing::info!(%id, method, error = %e, "request failed");
                    Status::from(e)
                })
        }
        .instrument(span)
        .await;
        observe_as(METRIC, method, started, &r);
        r
    }
}

type WatchStream = std::pin::Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for Proxy {
    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        self.forward(
            "Put",
            req,
            |c, r, t| async move { c.forward_put(r, t).await },
        )
        .await
    }

    async fn open_session(
        &self,
        req: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        self.forward("OpenSession", req, |c, _, t| async move {
            c.forward_open_session(t).await
        })
        .await
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let cache = self.0.cache.clone();
        self.forward("Get", req, |c, r, t| async move {
            let Some(cache) = cache else {
                return c.forward_get(r, t).await;
            };
            if let Some(hit) = cache.answer(&r) {
                return Ok(hit);
            }
            let resp = c.forward_get(r, t).await?;
            cache.fill(&resp);
            Ok(resp)
        })
        .await
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.forward("Delete", req, |c, r, t| async move {
            c.forward_delete(r, t).await
        })
        .await
    }

    async fn scan(
        &self,
        req: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        self.forward(
            "Scan",
            req,
            |c, r, t| async move { c.forward_scan(r, t).await },
        )
        .await
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        self.forward(
            "Txn",
            req,
            |c, r, t| async move { c.forward_txn(r, t).await },
        )
        .await
    }

    type BatchStream = crate::server::batch::BatchStream;

    async fn batch(
        &self,
        req: Request<tonic::Streaming<pb::BatchRequest>>,
    ) -> Result<Response<Self::BatchStream>, Status> {
        self.0.refuse_if_draining()?;
        let place = self.0.open_batch_stream()?;
        Ok(Response::new(super::relay::serve(self.clone(), req, place)))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let started = tokio::time::Instant::now();
        let r = self.open_watch(req.into_inner()).await;
        observe_as(METRIC, "Watch", started, &r);
        r.map(Response::new)
    }
}

impl Proxy {
    async fn open_watch(&self, r: pb::WatchRequest) -> Result<WatchStream, Status> {
        let g = self.0.clone();
        g.refuse_if_draining()?;
        if !r.prefix && r.key.is_empty() {
            return Err(Status::invalid_argument(
                "key must not be empty (use prefix=true with an empty key to watch everything)",
            ));
        }
        let n = g.watchers.fetch_add(1, Ordering::Relaxed);
        let slot = WatcherSlot(g.clone());
        if n >= g.args.max_watchers {
            return Err(super::exhausted(
                "watchers",
                format!("the gateway has {n} watches open (limit max-watchers)"),
            ));
        }
        let source = g.hub.open(r).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut drain = g.drain.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = source.pump(&tx) => {}
                // The caller went away.
                _ = tx.closed() => {}
                _ = async { drain.wait_for(|s| *s).await.map(|_| ()) } => {
                    let _ = tx.send(Err(Status::unavailable("the gateway is shutting down; resume elsewhere"))).await;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Counts an open watch until dropped.
struct WatcherSlot(Arc<Gateway>);

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

fn read_only() -> Status {
    Status::permission_denied(
        "the gateway serves Status and Members only; send membership and leadership changes to a node",
    )
}

#[tonic::async_trait]
impl Cluster for Proxy {
    async fn status(
        &self,
        req: Request<cpb::StatusRequest>,
    ) -> Result<Response<cpb::StatusResponse>, Status> {
        self.forward(
            "Status",
            req,
            |c, _, t| async move { c.forward_status(t).await },
        )
        .await
    }

    async fn members(
        &self,
        req: Request<cpb::MembersRequest>,
    ) -> Result<Response<cpb::MembersResponse>, Status> {
        self.forward("Members", req, |c, _, _| async move { c.members().await })
            .await
    }

    async fn add_learner(
        &self,
        _: Request<cpb::AddLearnerRequest>,
    ) -> Result<Response<cpb::MembersResponse>, Status> {
        Err(read_only())
    }

    async fn promote(
        &self,
        _: Request<cpb::PromoteRequest>,
    ) -> Result<Response<cpb::MembersResponse>, Status> {
        Err(read_only())
    }

    async fn remove(
        &self,
        _: Request<cpb::RemoveRequest>,
    ) -> Result<Response<cpb::MembersResponse>, Status> {
        Err(read_only())
    }

    async fn change_membership(
        &self,
        _: Request<cpb::ChangeMembershipRequest>,
    ) -> Result<Response<cpb::MembersResponse>, Status> {
        Err(read_only())
    }

    async fn transfer_leader(
        &self,
        _: Request<cpb::TransferLeaderRequest>,
    ) -> Result<Response<cpb::TransferLeaderResponse>, Status> {
        Err(read_only())
    }

    async fn snapshot(
        &self,
        _: Request<cpb::SnapshotRequest>,
    ) -> Result<Response<cpb::SnapshotResponse>, Status> {
        Err(read_only())
    }

    async fn set_settings(
        &self,
        _: Request<cpb::SetSettingsRequest>,
    ) -> Result<Response<cpb::Settings>, Status> {
        Err(read_only())
    }

    async fn hash_kv(
        &self,
        _: Request<cpb::HashKvRequest>,
    ) -> Result<Response<cpb::HashKvResponse>, Status> {
        Err(read_only())
    }

    async fn check_hash(
        &self,
        _: Request<cpb::CheckHashRequest>,
    ) -> Result<Response<cpb::CheckHashResponse>, Status> {
        Err(read_only())
    }

    /// Lists alarms; raising or disarming one is an administrator's call
    /// to a node.
    async fn alarm(
        &self,
        req: Request<cpb::AlarmRequest>,
    ) -> Result<Response<cpb::AlarmResponse>, Status> {
        use cpb::alarm_request::AlarmAction;
        if req.get_ref().action() != AlarmAction::Get {
            return Err(read_only());
        }
        self.forward("Alarm", req, |c, r, _| async move {
            let alarms = c.alarm(AlarmAction::Get, r.member_id, r.alarm()).await?;
            Ok(cpb::AlarmResponse { alarms })
        })
        .await
    }
}

/// Marks a call admitted by [`AdmitOnArrival`].
#[derive(Clone, Copy)]
struct AdmittedOnArrival;

/// Admission on arrival: a unary KV call is admitted (or refused) from
/// its headers, before its message is read, and holds its place until
/// its handler is done. So a refused call's message is never held in
/// memory (it is read and dropped piece by piece, see
/// [`cairn_rpc::serve::discard`]) and a
/// flood of large requests cannot grow the gateway past what it admits.
/// Streams pass through: a Batch stream (their number bounded) reads one
/// message at a time and admits its calls per message; watches are
/// shared.
#[derive(Clone)]
struct AdmitOnArrival<S> {
    g: Arc<Gateway>,
    inner: S,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for AdmitOnArrival<S> {
    const NAME: &'static str = S::NAME;
}

/// The unary method of service `service` that `path` names, as a metric
/// label.
fn unary_kv_method(service: &str, path: &str) -> Option<&'static str> {
    let method = path
        .strip_prefix('/')?
        .strip_prefix(service)?
        .strip_prefix('/')?;
    ["Put", "Get", "Delete", "Scan", "Txn"]
        .into_iter()
        .find(|m| *m == method)
}

type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl<S> tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>>
    for AdmitOnArrival<S>
where
    S: tonic::server::NamedService
        + tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = HttpResponse,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<HttpResponse, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        use futures::FutureExt;
        // The clone that was made ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(method) = unary_kv_method(S::NAME, req.uri().path()) else {
            return inner.call(req).boxed();
        };
        let conn = req
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(tonic::transport::server::TcpConnectInfo::remote_addr);
        let g = self.g.clone();
        async move {
            let started = tokio::time::Instant::now();
            let _admitted = match g.admit(conn) {
                Ok(a) => a,
                Err(s) => {
                    observe_as(METRIC, method, started, &Err::<(), _>(s.clone()));
                    tokio::spawn(cairn_rpc::serve::discard(
                        req.into_body(),
                        g.args.max_request_bytes,
                    ));
                    return Ok(s.into_http());
                }
            };
            req.extensions_mut().insert(AdmittedOnArrival);
            inner.call(req).await
        }
        .boxed()
    }
}

/// Serves the gateway's gRPC services until `stop`.
pub async fn serve(
    g: Arc<Gateway>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    incoming: crate::server::Incoming,
    mut stop: twatch::Receiver<bool>,
) {
    let max = g.args.max_request_bytes;
    let proxy = Proxy(g.clone());
    let kv = AdmitOnArrival {
        g,
        inner: KvServer::new(proxy.clone()).max_decoding_message_size(max),
    };
    let mut routes = tonic::service::Routes::new(health)
        .add_service(kv)
        .add_service(ClusterServer::new(proxy).max_decoding_message_size(max));
    if let Some(r) = crate::server::reflection() {
        routes = routes.add_service(r);
    }
    cairn_rpc::serve::serve(
        routes,
        incoming,
        // The gateway admits calls itself (see `AdmitOnArrival`).
        cairn_rpc::serve::Options::keep_alive(crate::server::CLIENT_KEEPALIVE),
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    )
    .await;
}
