//! A cluster of real `cairn node` processes on loopback, for the
//! integration tests of the node, the client and the gateway.
//!
//! Dev-only: the node's cluster tests, the client's and cairnctl's tests
//! and the cluster benchmark use it. See [`cairn_binary`] for which
//! `cairn` it runs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_proto::cluster::cluster_client::ClusterClient;
use cairn_proto::cluster::StatusRequest;
use cairn_proto::kv::kv_client::KvClient;
use cairn_proto::kv::{self as pb};
use tonic::transport::Channel;

/// The `cairn` binary the harness runs: `$CAIRN_BIN` when set, else the
/// one cargo built beside the running test or benchmark
/// (`target/<profile>/cairn`). `cargo test --workspace` builds it, since
/// the node crate's integration tests need it; the harness never runs
/// cargo itself.
pub fn cairn_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CAIRN_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/<test> -> target/<profile>/cairn
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary under target/<profile>/deps")
            .join("cairn");
        assert!(
            bin.exists(),
            "{} does not exist: run the tests with `cargo test --workspace` (which builds it), \
             build it with `cargo build -p cairn-node --bin cairn`, or set CAIRN_BIN",
            bin.display()
        );
        bin
    })
    .clone()
}

/// A free TCP port on loopback, for a process to bind later.
///
/// Taken below Linux's ephemeral range (32768-60999): a port the kernel
/// hands out for binding to port 0 can, between this check and the
/// process's bind, become the local port of some other test's outgoing
/// connection ("Address already in use" under load). Each test process
/// starts at its own offset (by pid) in 20000-31999 and walks on.
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = (std::process::id() % 500) * 24;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = u16::try_from(LOW + (start + n) % SPAN).expect("below 32000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on loopback in {LOW}-{}", LOW + SPAN - 1)
}

pub struct NodeProc {
    pub id: u64,
    pub client: String,
    pub peer: String,
    pub metrics: String,
    pub data: PathBuf,
    pub child: Option<Child>,
    pub extra: Vec<String>,
    pub join: Option<String>,
    /// Started with neither --initial-cluster nor --join: waits to be
    /// added by an administrator.
    pub idle: bool,
    /// How the node is tuned and logs.
    pub options: Options,
}

/// How the harness runs its nodes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Short heartbeats and election timeouts (50 ms, 300 ms), so tests
    /// fail over quickly; off: the node's defaults, as a benchmark wants.
    pub fast_elections: bool,
    /// The nodes' `RUST_LOG`.
    pub log_filter: String,
    /// Where the cluster's temporary directory is made (None: the
    /// system's temporary directory).
    pub dir_in: Option<PathBuf>,
    /// Where the nodes' logs go (None: beside their data directories).
    pub log_dir: Option<PathBuf>,
}

impl Options {
    /// What tests use: fast elections, info logs.
    pub fn test() -> Self {
        Options {
            fast_elections: true,
            log_filter: "info,openraft=warn".into(),
            dir_in: None,
            log_dir: None,
        }
    }

    /// What benchmarks use: the node's own timing, warnings only.
    pub fn bench() -> Self {
        Options {
            fast_elections: false,
            log_filter: "warn".into(),
            dir_in: None,
            log_dir: None,
        }
    }
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeProc>,
    pub initial: String,
    pub options: Options,
}

impl NodeProc {
    fn spawn(&mut self, initial: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new(cairn_binary());
        cmd.arg("node")
            .args(["--id", &self.id.to_string()])
            .args(["--data-dir", self.data.to_str().unwrap()])
            .args(["--listen-client", &self.client])
            .args(["--listen-peer", &self.peer])
            .args(["--listen-metrics", &self.metrics])
            .args(&self.extra)
            .env("RUST_LOG", &self.options.log_filter)
            .stdout(Stdio::null())
            .stderr(log);
        if self.options.fast_elections {
            cmd.args(["--heartbeat-ms", "50"])
                .args(["--election-timeout-ms", "300"]);
        }
        if let Some(j) = &self.join {
            cmd.args(["--join", j]);
        } else if self.idle {
            // Neither bootstraps nor joins.
        } else {
            cmd.args(["--initial-cluster", initial]);
        }
        self.child = Some(cmd.spawn().expect("spawn cairn"));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn sigterm_and_wait(&mut self) -> std::process::ExitStatus {
        sigterm_and_wait(self.child.take().unwrap())
    }

    /// Sends SIGTERM and returns at once.
    pub fn sigterm(&self) {
        sigterm(self.pid());
    }

    /// Waits (30 s at most) for the exit status of a process sent a
    /// signal.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        wait_exit(self.child.take().unwrap())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        match &self.options.log_dir {
            Some(d) => d.join(format!("node-{}.log", self.id)),
            None => self.data.with_extension("log"),
        }
    }
}

/// Sends SIGTERM to `c` and waits (30 s at most) for its exit status.
pub fn sigterm_and_wait(c: Child) -> std::process::ExitStatus {
    sigterm(c.id());
    wait_exit(c)
}

/// Sends SIGTERM to process `pid`.
pub fn sigterm(pid: u32) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}

/// Waits (30 s at most) for `c` to exit.
pub fn wait_exit(mut c: Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `cairn gateway` process in front of a [`TestCluster`].
pub struct GatewayProc {
    pub addr: String,
    pub metrics: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl GatewayProc {
    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = std::net::TcpStream::connect(&self.metrics).is_ok()
                && http_get(&self.metrics, "/readyz").0.contains("200");
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn sigterm_and_wait(&mut self) -> std::process::ExitStatus {
        sigterm_and_wait(self.child.take().unwrap())
    }

    /// One metric's samples summed, from the gateway's /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        metric(&self.metrics, name)
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("==== gateway log (tail) ====");
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            n.kill9();
        }
        if std::thread::panicking() {
            for n in self.nodes.values() {
                eprintln!("==== node {} log (tail) ====", n.id);
                let log = n.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl TestCluster {
    /// Starts `n` nodes with ids 1..=n and extra flags for every node,
    /// tuned for tests ([`Options::test`]).
    pub async fn start(n: u64, extra: &[&str]) -> TestCluster {
        Self::start_with(n, extra, Options::test()).await
    }

    /// [`TestCluster::start`] with the given options.
    pub async fn start_with(n: u64, extra: &[&str], options: Options) -> TestCluster {
        let dir = match &options.dir_in {
            Some(d) => tempfile::tempdir_in(d).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            nodes.insert(id, Self::new_node(dir.path(), id, extra, None, &options));
        }
        let initial = nodes
            .values()
            .map(|n| format!("{}={}/{}", n.id, n.client, n.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = TestCluster {
            dir,
            nodes,
            initial,
            options,
        };
        let initial = c.initial.clone();
        for n in c.nodes.values_mut() {
            n.spawn(&initial);
        }
        c.wait_leader(Duration::from_secs(30)).await;
        // The first leader's settings entry: once applied everywhere, no
        // entry is written that a test did not ask for.
        wait_settings(&c, |_| true).await;
        c
    }

    fn new_node(
        dir: &Path,
        id: u64,
        extra: &[&str],
        join: Option<String>,
        options: &Options,
    ) -> NodeProc {
        NodeProc {
            id,
            client: format!("127.0.0.1:{}", free_port()),
            peer: format!("127.0.0.1:{}", free_port()),
            metrics: format!("127.0.0.1:{}", free_port()),
            data: dir.join(format!("node-{id}")),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            join,
            idle: false,
            options: options.clone(),
        }
    }

    /// Starts a new node that joins through `via`'s client address.
    pub fn add_joining_node(&mut self, id: u64, via: u64, extra: &[&str]) {
        let join = self.nodes[&via].client.clone();
        let mut n = Self::new_node(self.dir.path(), id, extra, Some(join), &self.options);
        n.spawn(&self.initial);
        self.nodes.insert(id, n);
    }

    /// Starts a new node that waits to be added (`cairnctl member
    /// add-learner`).
    pub fn add_idle_node(&mut self, id: u64, extra: &[&str]) {
        let mut n = Self::new_node(self.dir.path(), id, extra, None, &self.options);
        n.idle = true;
        n.spawn(&self.initial);
        self.nodes.insert(id, n);
    }

    pub fn restart(&mut self, id: u64) {
        let initial = self.initial.clone();
        let n = self.nodes.get_mut(&id).unwrap();
        assert!(n.child.is_none(), "node {id} is running");
        n.spawn(&initial);
    }

    pub fn addr(&self, id: u64) -> String {
        self.nodes[&id].client.clone()
    }

    /// Starts a `cairn gateway` seeded with every node, with extra flags.
    pub fn start_gateway(&self, extra: &[&str]) -> GatewayProc {
        let addr = format!("127.0.0.1:{}", free_port());
        let metrics = format!("127.0.0.1:{}", free_port());
        let log = self.dir.path().join(format!("gateway-{}.log", free_port()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(cairn_binary())
            .arg("gateway")
            .args(["--listen", &addr])
            .args(["--listen-metrics", &metrics])
            .args(["--seeds", &self.endpoints().join(",")])
            .args(["--refresh-ms", "200"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn cairn gateway");
        GatewayProc {
            addr,
            metrics,
            child: Some(child),
            log,
        }
    }

    /// Every node's client address, in id order.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.client.clone()).collect()
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Waits until every running node reports the same leader; returns it.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for id in self.running() {
                match status(&self.addr(id)).await {
                    Ok(s) => leaders.push(s.leader),
                    Err(_) => leaders.push(0),
                }
            }
            if let Some(&l) = leaders.first() {
                if l != 0 && leaders.iter().all(|&x| x == l) && self.running().contains(&l) {
                    return l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {timeout:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = status(&self.addr(id)).await {
                if s.applied >= index {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not apply {index} in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub async fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

pub async fn kv(addr: &str) -> KvClient<Channel> {
    KvClient::new(channel(addr).await)
}

pub async fn cluster(addr: &str) -> ClusterClient<Channel> {
    ClusterClient::new(channel(addr).await)
}

pub async fn status(addr: &str) -> Result<cairn_proto::cluster::StatusResponse, tonic::Status> {
    let mut c = cluster(addr).await;
    let mut req = tonic::Request::new(StatusRequest {});
    req.set_timeout(Duration::from_secs(2));
    c.status(req).await.map(|r| r.into_inner())
}

/// The leader's client address named by a NotLeader error.
pub fn leader_hint(s: &tonic::Status) -> Option<String> {
    s.metadata()
        .get(cairn_proto::LEADER_ADDR)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Runs `op` against `addr`, following leader hints and retrying
/// UNAVAILABLE until `timeout`.
pub async fn with_leader<T, F, Fut>(
    addr: &str,
    timeout: Duration,
    mut op: F,
) -> Result<T, tonic::Status>
where
    F: FnMut(KvClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + timeout;
    let mut target = addr.to_string();
    loop {
        match op(kv(&target).await).await {
            Ok(v) => return Ok(v),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                if let Some(h) = leader_hint(&s) {
                    target = h;
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(s) => return Err(s),
        }
    }
}

/// Waits until every running node of `c` has applied cluster settings
/// (set by an entry) that `want`.
pub async fn wait_settings(
    c: &TestCluster,
    want: impl Fn(&cairn_proto::cluster::Settings) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut all = true;
        for id in c.running() {
            let s = status(&c.addr(id)).await.ok().and_then(|s| s.settings);
            all &= s.is_some_and(|s| s.set && want(&s));
        }
        if all {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every node applied the settings wanted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a request-id session through the leader (following hints from
/// `addr`); its client id.
pub async fn open_session(addr: &str) -> u64 {
    with_leader(addr, Duration::from_secs(15), |mut k| async move {
        k.open_session(pb::OpenSessionRequest {}).await
    })
    .await
    .unwrap()
    .into_inner()
    .client_id
}

/// Puts `req` through the leader (following hints from `addr`) within
/// `timeout`; the revision it got.
pub async fn put_on_leader(addr: &str, req: pb::PutRequest, timeout: Duration) -> u64 {
    with_leader(addr, timeout, |mut k| {
        let req = req.clone();
        async move { k.put(req).await }
    })
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision
}

pub fn put_req(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

pub fn get_req(key: &str, serializable: bool) -> pb::GetRequest {
    pb::GetRequest {
        key: key.as_bytes().to_vec().into(),
        consistency: if serializable {
            pb::ReadConsistency::Serializable as i32
        } else {
            pb::ReadConsistency::Linearizable as i32
        },
    }
}

/// A linearizable get of `key` (None when absent).
pub async fn get_kv(k: &mut KvClient<Channel>, key: &str) -> Option<pb::KeyValue> {
    k.get(get_req(key, false)).await.unwrap().into_inner().kv
}

/// Every pair on node `addr`, read serializably (its own state).
pub async fn dump(addr: &str) -> Vec<(Vec<u8>, Vec<u8>, u64, u64, u64)> {
    let mut out = Vec::new();
    let mut c = kv(addr).await;
    let mut cont = Vec::new();
    loop {
        let r = c
            .scan(pb::ScanRequest {
                consistency: pb::ReadConsistency::Serializable as i32,
                continuation: cont.clone().into(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for kv in r.kvs {
            out.push((
                kv.key.to_vec(),
                kv.value.to_vec(),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            ));
        }
        if !r.more {
            return out;
        }
        cont = r.continuation.to_vec();
    }
}

/// GETs `path` from a node's HTTP endpoint: (status line, body).
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Sums one metric's samples from a node's /metrics.
pub fn metric(metrics_addr: &str, name: &str) -> f64 {
    metric_where(metrics_addr, name, &[])
}

/// Sums the samples of `name` whose labels contain every one of `labels`
/// (each like `method="Put"`).
pub fn metric_where(metrics_addr: &str, name: &str, labels: &[&str]) -> f64 {
    let (_, body) = http_get(metrics_addr, "/metrics");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
