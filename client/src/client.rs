//! The connection pool, the leader cache and the retry loop every call
//! goes through.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tonic::transport::Channel;

use cairn_proto::kv::batch_reply::Reply;
use cairn_proto::kv::kv_client::KvClient;
use cairn_rpc::status::{status_from_pb, CALL_BYTES};
use tonic::Status;

use crate::balance::{pick, Endpoint};
use crate::batch::{Batcher, KvRequest, MAX_REPLY_MESSAGE};
use crate::error::{classify, Error, Failure, Result};

/// How a [`Client`] connects, times out and retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The deadline of every call, retries included.
    pub timeout: Duration,
    /// The longest one attempt may take; an attempt also gets at most
    /// half of what is left of the deadline (but at least 250 ms), so
    /// that a silent node (a partition) leaves time to try another.
    pub attempt_timeout: Duration,
    /// The deadline for opening a TCP connection.
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive ping interval; a connection whose ping is not
    /// answered within `keepalive_timeout` is dropped.
    pub keepalive_interval: Duration,
    /// See `keepalive_interval`.
    pub keepalive_timeout: Duration,
    /// The first retry backoff; it doubles per attempt up to `max_backoff`,
    /// with full jitter.
    pub initial_backoff: Duration,
    /// The cap on the retry backoff.
    pub max_backoff: Duration,
    /// Seeds the backoff jitter (deterministic simulation); from the OS
    /// when `None`.
    pub seed: Option<u64>,
    /// Add the members' client addresses (learned from the cluster) to the
    /// endpoints. Off by default: behind a gateway or a NAT the members'
    /// own addresses may not be reachable from the client.
    pub discover_members: bool,
    /// With discovery: how often to refresh the members and check every
    /// endpoint's readiness (an unready one is ejected, a ready one comes
    /// back). None: no background refresh.
    pub refresh_interval: Option<Duration>,
    /// How connections are made: TCP, or the simulator's network.
    pub net: Arc<dyn cairn_rpc::net::Net>,
    /// Send Put, Get, Delete, Scan and Txn calls over one `KV.Batch`
    /// stream per endpoint (on by default); off: one unary call each.
    pub batch: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(3),
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            seed: None,
            discover_members: false,
            refresh_interval: None,
            net: cairn_rpc::net::tcp(),
            batch: true,
        }
    }
}

/// An endpoint's channel and batch stream.
pub(crate) struct Conn {
    pub(crate) ch: Channel,
    pub(crate) batcher: Option<Arc<Batcher>>,
}

/// Where a call must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The leader: writes, linearizable reads, membership changes.
    Leader,
    /// Any endpoint: serializable reads, watches, status.
    Any,
}

/// A cairn client: cheap to clone, safe to share between tasks.
///
/// Every call has a deadline ([`ClientConfig::timeout`]). Leader-only calls
/// go to the cached leader; a node that is not the leader answers with the
/// leader's address and the call follows it in one hop. Failures that a
/// retry can fix (an unreachable node, a leader change) are retried with
/// capped exponential backoff and jitter inside the deadline. Every write
/// carries a request id (client id, sequence number), so the cluster
/// applies a retried write once.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    /// The endpoints given to connect, as `host:port`: the fallback when
    /// the discovered members cannot be reached.
    seeds: Vec<String>,
    /// The endpoints in rotation.
    endpoints: Mutex<Vec<Arc<Endpoint>>>,
    /// Ordered: dropping the client closes its connections in this
    /// order, and in the simulation that order must not depend on a
    /// hasher's random seed (each close puts a GOAWAY on the wire).
    /// Each endpoint's channel and, once a KV call used it, its batch
    /// stream.
    pub(crate) channels: Mutex<BTreeMap<String, Conn>>,
    leader: Mutex<Option<String>>,
    pub(crate) session: Mutex<crate::session::SessionState>,
    /// Held while a session is being opened.
    pub(crate) opening: tokio::sync::Mutex<()>,
    pub(crate) rng: Mutex<rand::rngs::StdRng>,
}

/// `http://host:port` → `host:port`; refuses what is not an address.
fn normalize(endpoint: &str) -> Result<String> {
    let e = endpoint.trim();
    let e = e.strip_prefix("http://").unwrap_or(e).trim_end_matches('/');
    if e.starts_with("https://") {
        return Err(Error::Config(format!(
            "endpoint {endpoint:?}: TLS is not supported; use host:port"
        )));
    }
    match e.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(e.to_string()),
        _ => Err(Error::Config(format!(
            "endpoint {endpoint:?} is not host:port"
        ))),
    }
}

impl Client {
    /// Connects to a cluster through `endpoints` (nodes or gateways,
    /// `host:port`), with the default configuration. Fails with
    /// [`Error::Unavailable`] when no endpoint answers.
    pub async fn connect<S: AsRef<str>>(endpoints: impl IntoIterator<Item = S>) -> Result<Client> {
        Self::connect_with(endpoints, ClientConfig::default()).await
    }

    /// [`Client::connect`] with a configuration. Asks the cluster for its
    /// members, which checks that an endpoint answers and learns the
    /// leader.
    pub async fn connect_with<S: AsRef<str>>(
        endpoints: impl IntoIterator<Item = S>,
        config: ClientConfig,
    ) -> Result<Client> {
        let client = Self::new_lazy(endpoints, config)?;
        let members = client.members().await?;
        client.learn(&members);
        client.start_refresh();
        Ok(client)
    }

    /// A client that connects on its first call (no round trip here).
    pub fn new_lazy<S: AsRef<str>>(
        endpoints: impl IntoIterator<Item = S>,
        config: ClientConfig,
    ) -> Result<Client> {
        let mut eps = Vec::new();
        for e in endpoints {
            let e = normalize(e.as_ref())?;
            if !eps.contains(&e) {
                eps.push(e);
            }
        }
        if eps.is_empty() {
            return Err(Error::Config("no endpoints given".into()));
        }
        let rng = match config.seed {
            Some(s) => rand::rngs::StdRng::seed_from_u64(s),
            None => rand::rngs::StdRng::from_os_rng(),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                endpoints: Mutex::new(eps.iter().cloned().map(Endpoint::new).collect()),
                seeds: eps,
                channels: Mutex::new(BTreeMap::new()),
                leader: Mutex::new(None),
                session: crate::session::SessionState::new(),
                opening: tokio::sync::Mutex::new(()),
                rng: Mutex::new(rng),
            }),
        })
    }

    /// With discovery and a refresh interval configured: starts the
    /// background refresh of the members and of the endpoints' health
    /// (at once, then every interval, until the client is dropped).
    /// [`Client::connect_with`] calls it.
    pub fn start_refresh(&self) {
        if let (true, Some(every)) = (
            self.inner.config.discover_members,
            self.inner.config.refresh_interval,
        ) {
            tokio::spawn(refresh(Arc::downgrade(&self.inner), every));
        }
    }

    /// The endpoints in rotation.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .endpoints
            .lock()
            .iter()
            .map(|e| e.addr.clone())
            .collect()
    }

    /// Whether some endpoint is in rotation (not ejected).
    pub fn has_healthy_endpoint(&self) -> bool {
        self.endpoints_in_rotation() > 0
    }

    /// How many endpoints are in rotation (not ejected).
    pub fn endpoints_in_rotation(&self) -> usize {
        let now = Instant::now();
        self.inner
            .endpoints
            .lock()
            .iter()
            .filter(|e| !e.is_ejected(now))
            .count()
    }

    /// Requests in flight per endpoint.
    pub fn outstanding(&self) -> Vec<(String, u64)> {
        self.inner
            .endpoints
            .lock()
            .iter()
            .map(|e| (e.addr.clone(), e.outstanding()))
            .collect()
    }

    /// The leader's address as last learned, if any.
    pub fn cached_leader(&self) -> Option<String> {
        self.inner.leader.lock().clone()
    }

    /// Drops the cached leader; the next leader-only call finds it again.
    pub fn forget_leader(&self) {
        *self.inner.leader.lock() = None;
    }

    /// The client id of this client's session (opened by its first write;
    /// a new one replaces it when the cluster lost it).
    pub fn client_id(&self) -> Option<u64> {
        self.inner.session.lock().client_id()
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Records what a Members answer says: the leader's address (when it
    /// is one of the endpoints, or discovery is on) and, with discovery,
    /// every member's address.
    pub(crate) fn learn(&self, m: &cairn_proto::cluster::MembersResponse) {
        let discover = self.inner.config.discover_members;
        if discover && !m.members.is_empty() {
            let mut eps = self.inner.endpoints.lock();
            let addrs: Vec<String> = m
                .members
                .iter()
                .filter_map(|x| normalize(&x.client_addr).ok())
                .collect();
            if !addrs.is_empty() {
                let next: Vec<Arc<Endpoint>> = addrs
                    .into_iter()
                    .map(|a| match eps.iter().find(|e| e.addr == a) {
                        Some(e) => e.clone(),
                        None => {
                            tracing::info!(backend = %a, "member discovered");
                            Endpoint::new(a)
                        }
                    })
                    .collect();
                for gone in eps
                    .iter()
                    .filter(|e| !next.iter().any(|n| n.addr == e.addr))
                {
                    tracing::info!(backend = %gone.addr, "member gone");
                    self.inner.channels.lock().remove(&gone.addr);
                }
                *eps = next;
            }
        }
        let leader = m
            .members
            .iter()
            .find(|x| x.id == m.leader && m.leader != 0)
            .and_then(|x| normalize(&x.client_addr).ok());
        if let Some(l) = leader {
            let known = self.inner.endpoints.lock().iter().any(|e| e.addr == l);
            if discover || known {
                self.set_leader(Some(l));
            }
        }
    }

    pub(crate) fn set_leader(&self, addr: Option<String>) {
        let mut l = self.inner.leader.lock();
        if *l != addr {
            if addr.is_some() {
                metrics::counter!("cairn_client_leader_changes_seen_total").increment(1);
            }
            *l = addr;
        }
    }

    pub(crate) fn endpoint(&self, addr: &str) -> Option<Arc<Endpoint>> {
        self.inner
            .endpoints
            .lock()
            .iter()
            .find(|e| e.addr == addr)
            .cloned()
    }

    /// Forgets the cached leader if it is `addr` (which just failed).
    pub(crate) fn forget_leader_if(&self, addr: &str) {
        let mut l = self.inner.leader.lock();
        if l.as_deref() == Some(addr) {
            *l = None;
        }
    }

    /// The channel to `addr`, created on first use (lazily connected, with
    /// HTTP/2 keep-alive).
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel> {
        if let Some(c) = self.inner.channels.lock().get(addr) {
            return Ok(c.ch.clone());
        }
        let cfg = &self.inner.config;
        let ch = cairn_rpc::net::channel(&cfg.net, addr, cfg.connect_timeout, |e| {
            e.http2_keep_alive_interval(cfg.keepalive_interval)
                .keep_alive_timeout(cfg.keepalive_timeout)
                .keep_alive_while_idle(true)
        })
        .map_err(|e| Error::Config(format!("endpoint {addr:?}: {e}")))?;
        Ok(self
            .inner
            .channels
            .lock()
            .entry(addr.to_string())
            .or_insert(Conn { ch, batcher: None })
            .ch
            .clone())
    }

    /// An endpoint for a call any node can serve: power of two choices
    /// among those in rotation; a seed when there is none.
    pub(crate) fn rotate(&self) -> String {
        let eps = self.inner.endpoints.lock();
        match pick(&eps, &mut *self.inner.rng.lock()) {
            Some(e) => e.addr.clone(),
            None => {
                let i = self
                    .inner
                    .rng
                    .lock()
                    .random_range(0..self.inner.seeds.len());
                self.inner.seeds[i].clone()
            }
        }
    }

    fn target(&self, route: Route) -> String {
        if route == Route::Leader {
            if let Some(l) = self.inner.leader.lock().clone() {
                return l;
            }
        }
        self.rotate()
    }

    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let cfg = &self.inner.config;
        let cap = cfg
            .initial_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(cfg.max_backoff);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX).max(1);
        Duration::from_nanos(self.inner.rng.lock().random_range(nanos / 2..=nanos))
    }

    /// Runs `op` (one attempt on a channel, with a per-attempt timeout)
    /// until it succeeds, fails for good, or the deadline passes.
    pub(crate) async fn call<T, F, Fut>(&self, route: Route, op: F) -> Result<T>
    where
        F: FnMut(Upstream, Duration) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.call_within(route, self.inner.config.timeout, op).await
    }

    /// [`Client::call`] with the caller's own deadline.
    pub(crate) async fn call_within<T, F, Fut>(
        &self,
        route: Route,
        timeout: Duration,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut(Upstream, Duration) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + timeout;
        let mut target = self.target(route);
        let mut attempts = 0u32;
        let mut redirects = 0u32;
        let mut last;
        loop {
            attempts += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let channel = self.channel(&target)?;
            let ep = self.endpoint(&target);
            let guard = ep.as_ref().map(|e| e.start());
            // At most half of what is left (but not under a floor): one
            // backend that went silent (a cut link drops packets, the
            // connection hangs) must not take the caller's whole deadline,
            // so a retry elsewhere has the other half (behind a gateway,
            // the caller's own attempt deadline is all the gateway has).
            let per_attempt = self.attempt_timeout(left);
            let upstream = Upstream {
                ch: channel,
                addr: target.clone(),
                client: self.clone(),
            };
            let result = op(upstream, per_attempt).await;
            drop(guard);
            match (&result, &ep) {
                (Ok(_), Some(e)) => e.ok_counter().increment(1),
                (Ok(_), None) => crate::balance::requests_counter(&target, "OK").increment(1),
                (Err(s), _) => crate::balance::requests_counter(
                    &target,
                    cairn_rpc::status::code_label(s.code()),
                )
                .increment(1),
            }
            let failure = match result {
                Ok(v) => {
                    if let Some(e) = &ep {
                        e.succeeded();
                    }
                    if route == Route::Leader
                        && self.inner.leader.lock().as_deref() != Some(&target)
                    {
                        self.set_leader(Some(target));
                    }
                    return Ok(v);
                }
                Err(s) => classify(&s),
            };
            if !matches!(failure, Failure::Fatal(_)) {
                metrics::counter!("cairn_client_retries_total").increment(1);
            }
            match failure {
                Failure::Fatal(e) => return Err(e),
                Failure::Redirect(leader) => {
                    last = format!("{target} is not the leader; it named {leader}");
                    self.set_leader(Some(leader.clone()));
                    redirects += 1;
                    // One hop, at once; a hint that goes in circles (an
                    // election in progress) falls back to backing off.
                    if leader != target && redirects <= 3 {
                        target = leader;
                        continue;
                    }
                    target = leader;
                }
                Failure::Retry(msg) => {
                    last = format!("{target}: {msg}");
                    if let Some(e) = &ep {
                        e.failed();
                    }
                    if route == Route::Leader {
                        self.forget_leader_if(&target);
                    }
                    target = self.rotate();
                    redirects = 0;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(if last.contains("DeadlineExceeded") {
                    Error::DeadlineExceeded {
                        after: timeout,
                        last,
                    }
                } else {
                    Error::Unavailable { attempts, last }
                });
            }
            tokio::time::sleep(self.backoff(attempts).min(left)).await;
            if Instant::now() >= deadline {
                return Err(Error::Unavailable { attempts, last });
            }
        }
    }
}

/// The shortest per-attempt timeout while the deadline allows it.
pub(crate) const MIN_ATTEMPT: Duration = Duration::from_millis(250);

impl Client {
    /// One attempt's share of a deadline of `left`: at most
    /// `attempt_timeout` and half of `left` (but not under a floor), so a
    /// silent backend leaves time for a retry elsewhere.
    pub(crate) fn attempt_timeout(&self, left: Duration) -> Duration {
        self.inner
            .config
            .attempt_timeout
            .min((left / 2).max(MIN_ATTEMPT))
            .min(left)
    }
}

/// Refreshes the members and checks every endpoint's readiness, every
/// `every`, until the client is dropped.
async fn refresh(inner: std::sync::Weak<Inner>, every: Duration) {
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(every).await;
        }
        first = false;
        let Some(inner) = inner.upgrade() else { return };
        let client = Client { inner };
        match client.members().await {
            Ok(m) => client.learn(&m),
            Err(e) => tracing::warn!(error = %e, "refreshing the members failed"),
        }
        let eps: Vec<Arc<Endpoint>> = client.inner.endpoints.lock().clone();
        for e in eps {
            let ready = match client.health_of(&e.addr).await {
                Ok(h) => h.live && h.ready,
                Err(_) => false,
            };
            if ready {
                e.healthy();
            } else if !e.is_ejected(Instant::now()) {
                e.eject();
            }
        }
        metrics::gauge!("cairn_client_endpoints_in_rotation")
            .set(client.endpoints_in_rotation() as f64);
    }
}

/// Where one attempt of a call goes: the endpoint's channel, and its
/// batch stream for KV calls.
#[derive(Clone)]
pub(crate) struct Upstream {
    /// The gRPC channel to the endpoint.
    pub(crate) ch: Channel,
    pub(crate) addr: String,
    pub(crate) client: Client,
}

impl Upstream {
    /// One attempt of a KV call, with the attempt's timeout: over the
    /// endpoint's batch stream, or unary when batching is off or the
    /// request is large.
    pub(crate) async fn kv<R: KvRequest>(self, req: R, t: Duration) -> Result<R::Response, Status> {
        if !self.client.inner.config.batch || req.encoded_len() > CALL_BYTES {
            let unary = KvClient::new(self.ch).max_decoding_message_size(MAX_REPLY_MESSAGE);
            return R::unary(unary, request(req, t)).await;
        }
        let batcher = self.client.batcher(&self.addr, &self.ch);
        match batcher.call(req.into_call(), t).await? {
            Reply::Error(e) => Err(status_from_pb(e)),
            other => R::from_reply(other)
                .ok_or_else(|| Status::internal("the server answered a call with another kind")),
        }
    }
}

impl Client {
    /// The batch stream to `addr`, opened on first use and again after it
    /// ended.
    pub(crate) fn batcher(&self, addr: &str, ch: &Channel) -> Arc<Batcher> {
        let mut map = self.inner.channels.lock();
        if let Some(b) = map.get(addr).and_then(|c| c.batcher.as_ref()) {
            if !b.is_closed() {
                return b.clone();
            }
        }
        // First use, or the stream ended: only here is the key built.
        let conn = map.entry(addr.to_string()).or_insert_with(|| Conn {
            ch: ch.clone(),
            batcher: None,
        });
        let b = Batcher::open(conn.ch.clone(), self.inner.config.connect_timeout * 2);
        conn.batcher = Some(b.clone());
        b
    }
}

/// A request with a per-attempt timeout.
pub(crate) fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized_and_checked() {
        assert_eq!(
            normalize("http://127.0.0.1:7001/").unwrap(),
            "127.0.0.1:7001"
        );
        assert_eq!(
            normalize(" node-0.cairn:7001 ").unwrap(),
            "node-0.cairn:7001"
        );
        assert!(normalize("127.0.0.1").is_err());
        assert!(normalize("127.0.0.1:notaport").is_err());
        assert!(normalize("https://a:1").is_err());
        assert!(Client::new_lazy(Vec::<String>::new(), ClientConfig::default()).is_err());
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let c = Client::new_lazy(
            ["127.0.0.1:1"],
            ClientConfig {
                seed: Some(7),
                ..ClientConfig::default()
            },
        )
        .unwrap();
        let cfg = ClientConfig::default();
        for attempt in 0..40 {
            let b = c.backoff(attempt);
            assert!(b <= cfg.max_backoff, "{b:?}");
            assert!(b >= cfg.initial_backoff / 2, "{b:?}");
        }
    }
}
