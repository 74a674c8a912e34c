//! The gateway: a stateless gRPC (L7) proxy in front of a cairn cluster,
//! run as `cairn gateway`. It serves the same `cairn.kv.v1.KV` API as a
//! node (plus read-only Cluster Status/Members, health and reflection) and
//! routes with the client library: writes, transactions and linearizable
//! reads to the leader; serializable reads and watches to healthy
//! replicas by power of two choices; retries inside the caller's deadline
//! with the request id kept. Identical watches from "now" share one
//! upstream stream. In-flight requests are bounded per connection and in
//! total; past a bound the answer is RESOURCE_EXHAUSTED at once.

mod cache;
mod kv;
mod relay;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{Client, ClientConfig};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{watch as twatch, OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::server::http;

/// `cairn gateway` options: flags, or `CAIRN_GATEWAY_*` environment
/// variables.
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Client address to serve on.
    #[arg(long, env = "CAIRN_GATEWAY_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: String,
    /// Address for /metrics, /healthz and /readyz (off when empty).
    #[arg(long, env = "CAIRN_GATEWAY_LISTEN_METRICS", default_value = "")]
    pub listen_metrics: String,
    /// Nodes to learn the cluster from, comma-separated host:port.
    #[arg(
        long,
        env = "CAIRN_GATEWAY_SEEDS",
        value_delimiter = ',',
        required = true
    )]
    pub seeds: Vec<String>,
    /// Deadline for a request whose caller sent none (and the cap on any).
    #[arg(long, env = "CAIRN_GATEWAY_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// How often the members and the backends' health are refreshed.
    #[arg(long, env = "CAIRN_GATEWAY_REFRESH_MS", default_value_t = 1000)]
    pub refresh_ms: u64,
    /// In-flight requests in total; past it RESOURCE_EXHAUSTED.
    #[arg(long, env = "CAIRN_GATEWAY_MAX_INFLIGHT", default_value_t = 4096)]
    pub max_inflight: usize,
    /// In-flight requests per client connection; past it RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "CAIRN_GATEWAY_MAX_INFLIGHT_PER_CONN",
        default_value_t = 512
    )]
    pub max_inflight_per_conn: usize,
    /// Open watch streams in total.
    #[arg(long, env = "CAIRN_GATEWAY_MAX_WATCHERS", default_value_t = 65536)]
    pub max_watchers: usize,
    /// Open Batch streams in total (each may hold one message being
    /// read); past it RESOURCE_EXHAUSTED.
    #[arg(long, env = "CAIRN_GATEWAY_MAX_BATCH_STREAMS", default_value_t = 4096)]
    pub max_batch_streams: usize,
    /// Largest request message in bytes.
    #[arg(long, env = "CAIRN_GATEWAY_MAX_REQUEST_BYTES", default_value_t = 3 << 20)]
    pub max_request_bytes: usize,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, env = "CAIRN_GATEWAY_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// Threads of the gateway's runtime (0: one per core). One thread
    /// costs the least CPU per request (no wake-ups across threads) and
    /// serves on one core; add threads, or gateways, past that.
    #[arg(long, env = "CAIRN_GATEWAY_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Memory for the read cache, in MiB (0: off). Serializable Gets are
    /// answered from it; a watch of every key keeps it current.
    #[arg(long, env = "CAIRN_GATEWAY_CACHE_MB", default_value_t = 64)]
    pub cache_mb: usize,
}

impl GatewayArgs {
    /// The options with every default `cairn gateway` has, serving on
    /// `listen` (metrics on `listen_metrics`) in front of `seeds`.
    pub fn with_defaults(listen: &str, listen_metrics: &str, seeds: &[String]) -> GatewayArgs {
        use clap::{Args, FromArgMatches};
        let cmd = GatewayArgs::augment_args(clap::Command::new("gateway").no_binary_name(true));
        let argv = [
            format!("--listen={listen}"),
            format!("--listen-metrics={listen_metrics}"),
            format!("--seeds={}", seeds.join(",")),
        ];
        let m = cmd.get_matches_from(argv);
        // The arguments above are the command's own flags: parsing them
        // cannot fail.
        #[allow(clippy::expect_used)]
        GatewayArgs::from_arg_matches(&m).expect("gateway defaults parse")
    }
}

/// How long no request may have arrived before a draining gateway
/// closes its connections.
const DRAIN_QUIET: Duration = Duration::from_millis(500);

/// What every handler shares.
pub struct Gateway {
    args: GatewayArgs,
    client: Client,
    inflight: Arc<Semaphore>,
    /// Places for open Batch streams.
    batch_streams: Arc<Semaphore>,
    per_conn: Mutex<HashMap<SocketAddr, usize>>,
    draining: AtomicBool,
    /// When the last request arrived (admitted or refused), in
    /// milliseconds since `epoch`: the drain waits for a quiet spell.
    last_arrival_ms: std::sync::atomic::AtomicU64,
    epoch: tokio::time::Instant,
    watchers: std::sync::atomic::AtomicUsize,
    hub: watch::Hub,
    /// Becomes true when the drain starts: open watches end.
    drain: twatch::Receiver<bool>,
    /// `cairn_gateway_inflight`, looked up once: the recorder's lookup
    /// costs a hash and an allocation per request.
    inflight_gauge: metrics::Gauge,
    /// `cairn_gateway_relayed_calls_total`: calls relayed message by
    /// message (the rest go through the unary handlers).
    relayed: metrics::Counter,
    /// The read cache, unless it is off.
    cache: Option<Arc<cache::ReadCache>>,
}

/// RESOURCE_EXHAUSTED for a request past `bound`, counted in
/// `cairn_gateway_rejected_total{bound}`.
fn exhausted(bound: &'static str, msg: String) -> Status {
    metrics::counter!("cairn_gateway_rejected_total", "bound" => bound).increment(1);
    Status::resource_exhausted(msg)
}

/// Holds a request's place under the in-flight bounds.
pub struct Admitted<'a> {
    g: &'a Gateway,
    conn: Option<SocketAddr>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.g.release_conn(self.conn, 1);
        self.g.inflight_gauge.decrement(1.0);
    }
}

impl Gateway {
    /// Ready: not draining, a backend in rotation and a leader known.
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
            && self.client.has_healthy_endpoint()
            && self.client.cached_leader().is_some()
    }

    /// Notes a request's arrival and refuses it with UNAVAILABLE once
    /// the drain has begun.
    fn refuse_if_draining(&self) -> Result<(), Status> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_arrival_ms.store(now, Ordering::Relaxed);
        if self.draining.load(Ordering::Relaxed) {
            return Err(Status::unavailable(
                "the gateway is shutting down; retry elsewhere",
            ));
        }
        Ok(())
    }

    /// How long ago the last request arrived.
    fn since_last_arrival(&self) -> Duration {
        let last = Duration::from_millis(self.last_arrival_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Admits a request that came on connection `conn` under the
    /// bounds, or refuses it at once.
    fn admit(&self, conn: Option<SocketAddr>) -> Result<Admitted<'_>, Status> {
        self.refuse_if_draining()?;
        let permit = self.inflight.clone().try_acquire_owned().map_err(|_| {
            exhausted(
                "total",
                format!(
                    "the gateway has {} requests in flight (limit max-inflight)",
                    self.args.max_inflight
                ),
            )
        })?;
        if !self.take_conn(conn, 1) {
            return Err(exhausted(
                "connection",
                format!(
                    "this connection has {} requests in flight (limit max-inflight-per-conn)",
                    self.args.max_inflight_per_conn
                ),
            ));
        }
        self.inflight_gauge.increment(1.0);
        Ok(Admitted {
            g: self,
            conn,
            _permit: permit,
        })
    }

    /// A place for a Batch stream while it is open, or RESOURCE_EXHAUSTED
    /// at once: a stream reads a message before it admits its calls, so
    /// streams are counted, to bound what they can hold.
    fn open_batch_stream(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.batch_streams.clone().try_acquire_owned().map_err(|_| {
            exhausted(
                "batch_streams",
                format!(
                    "the gateway has {} Batch streams open (limit max-batch-streams)",
                    self.args.max_batch_streams
                ),
            )
        })
    }

    /// Takes `n` places under the in-flight bounds for calls relayed from
    /// connection `conn`, all or none; see [`Gateway::release`].
    fn admit_relayed(&self, conn: Option<SocketAddr>, n: usize) -> bool {
        let Ok(permits) = u32::try_from(n) else {
            return false;
        };
        let Ok(p) = self.inflight.try_acquire_many(permits) else {
            return false;
        };
        if !self.take_conn(conn, n) {
            return false;
        }
        p.forget();
        self.inflight_gauge.increment(n as f64);
        true
    }

    /// Counts `n` more requests in flight on connection `conn`, unless
    /// that would pass the per-connection bound.
    fn take_conn(&self, conn: Option<SocketAddr>, n: usize) -> bool {
        let Some(c) = conn else {
            return true;
        };
        let mut m = self.per_conn.lock();
        let k = m.entry(c).or_insert(0);
        if *k + n > self.args.max_inflight_per_conn {
            if *k == 0 {
                m.remove(&c);
            }
            return false;
        }
        *k += n;
        true
    }

    /// Counts `n` requests of connection `conn` as finished.
    fn release_conn(&self, conn: Option<SocketAddr>, n: usize) {
        let Some(c) = conn else {
            return;
        };
        let mut m = self.per_conn.lock();
        if let Some(k) = m.get_mut(&c) {
            *k = k.saturating_sub(n);
            if *k == 0 {
                m.remove(&c);
            }
        }
    }

    /// Gives back `n` places taken by [`Gateway::admit_relayed`].
    fn release(&self, conn: Option<SocketAddr>, n: usize) {
        if n == 0 {
            return;
        }
        self.release_conn(conn, n);
        self.inflight.add_permits(n);
        self.inflight_gauge.decrement(n as f64);
    }

    /// The request's deadline: its `grpc-timeout` (a batch call's own),
    /// capped by ours.
    fn deadline<T>(&self, req: &tonic::Request<T>) -> Duration {
        let asked = match req.extensions().get::<crate::server::batch::InBatch>() {
            Some(b) => b.timeout,
            None => req
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(cairn_rpc::serve::grpc_timeout),
        };
        self.capped(asked)
    }

    /// The deadline a caller `asked` for (none: ours), capped by ours.
    fn capped(&self, asked: Option<Duration>) -> Duration {
        let cap = Duration::from_millis(self.args.request_timeout_ms);
        asked.map_or(cap, |d| d.min(cap))
    }
}

/// A running gateway.
pub struct RunningGateway {
    /// The client address it serves on.
    pub addr: SocketAddr,
    /// The metrics address, if any.
    pub metrics_addr: Option<SocketAddr>,
    gateway: Arc<Gateway>,
    stop_tx: twatch::Sender<bool>,
    drain_tx: twatch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    others: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningGateway {
    /// Binds the listeners and starts serving; backends are learned in the
    /// background, so the gateway starts even before the cluster answers.
    pub async fn start(args: GatewayArgs) -> std::io::Result<RunningGateway> {
        Self::start_in(args, cairn_rpc::net::tcp(), None).await
    }

    /// [`RunningGateway::start`] over a given network (the simulation's),
    /// its balancing seeded by `seed` (random when None). The metrics
    /// listener, if any, is always TCP.
    pub async fn start_in(
        args: GatewayArgs,
        net: Arc<dyn cairn_rpc::net::Net>,
        seed: Option<u64>,
    ) -> std::io::Result<RunningGateway> {
        let cfg = ClientConfig {
            net: net.clone(),
            seed,
            timeout: Duration::from_millis(args.request_timeout_ms),
            discover_members: true,
            refresh_interval: Some(Duration::from_millis(args.refresh_ms.max(50))),
            ..ClientConfig::default()
        };
        let client = Client::new_lazy(&args.seeds, cfg)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        client.start_refresh();
        // Writes are relayed under the gateway's session once it is open.
        client.open_session_soon();
        let listener = net.bind(&args.listen).await?;
        let addr = listener.local_addr()?;
        let metrics_listener = if args.listen_metrics.is_empty() {
            None
        } else {
            Some(TcpListener::bind(&args.listen_metrics).await?)
        };
        let metrics_addr = metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        if metrics_listener.is_some() {
            // Before the gateway takes its metric handles.
            http::prometheus();
        }
        let (stop_tx, stop_rx) = twatch::channel(false);
        let (drain_tx, drain_rx) = twatch::channel(false);
        let gateway = Arc::new(Gateway {
            inflight_gauge: metrics::gauge!("cairn_gateway_inflight"),
            relayed: metrics::counter!("cairn_gateway_relayed_calls_total"),
            inflight: Arc::new(Semaphore::new(args.max_inflight.max(1))),
            batch_streams: Arc::new(Semaphore::new(args.max_batch_streams.max(1))),
            hub: watch::Hub::new(client.clone()),
            cache: (args.cache_mb > 0)
                .then(|| Arc::new(cache::ReadCache::new(args.cache_mb.saturating_mul(1 << 20)))),
            client,
            per_conn: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            last_arrival_ms: std::sync::atomic::AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
            watchers: std::sync::atomic::AtomicUsize::new(0),
            drain: drain_rx,
            args,
        });
        let ready: http::Readiness = {
            let g = gateway.clone();
            Arc::new(move || g.ready())
        };
        let mut others = Vec::new();
        if let Some(c) = gateway.cache.clone() {
            let client = gateway.client.clone();
            others.push(tokio::spawn(async move { c.follow(client).await }));
        }
        if let Some(l) = metrics_listener {
            others.push(tokio::spawn(http::serve(ready.clone(), l, stop_rx.clone())));
        }
        let (reporter, health) = tonic_health::server::health_reporter();
        others.push(tokio::spawn(http::report_health(
            ready,
            reporter,
            stop_rx.clone(),
        )));
        let server = tokio::spawn(kv::serve(
            gateway.clone(),
            health,
            crate::server::incoming(listener),
            stop_rx,
        ));
        tracing::info!(%addr, seeds = ?gateway.args.seeds, "gateway started");
        Ok(RunningGateway {
            addr,
            metrics_addr,
            gateway,
            stop_tx,
            drain_tx,
            server,
            others,
        })
    }

    /// The gateway's shared state.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Drains and stops: readiness goes false, new requests are refused
    /// with UNAVAILABLE, watches end (their clients resume elsewhere),
    /// in-flight requests finish, and clients still sending have had a
    /// quiet spell to hear the refusal (closing the connection under a
    /// request that is on the wire would fail it with a transport error
    /// instead of a retryable status); all within the drain timeout.
    /// Then the servers stop.
    pub async fn shutdown(self) {
        let g = &self.gateway;
        g.draining.store(true, Ordering::Relaxed);
        let _ = self.drain_tx.send(true);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(g.args.drain_timeout_ms);
        let all = g.args.max_inflight.max(1);
        while (g.inflight.available_permits() < all || g.since_last_arrival() < DRAIN_QUIET)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = all - g.inflight.available_permits();
        if left > 0 {
            tracing::warn!(left, "drain timeout: requests still in flight");
        }
        let _ = self.stop_tx.send(true);
        let mut server = self.server;
        if tokio::time::timeout(Duration::from_secs(2), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
        for t in self.others {
            t.abort();
        }
        tracing::info!("gateway stopped");
    }
}
