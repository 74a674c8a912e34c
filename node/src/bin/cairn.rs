//! `cairn`: run a node (`cairn node`), a gateway (`cairn gateway`), or a
//! local 3-node cluster with a gateway for development (`cairn dev`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cairn_node::gateway::{GatewayArgs, RunningGateway};
use cairn_node::server::config::{NodeArgs, NodeConfig};
use cairn_node::server::RunningNode;
use clap::{Parser, Subcommand};

/// mimalloc: the node allocates many small, short-lived buffers per
/// request; glibc's malloc cost ~14% of the CPU of a put in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cairn", version, about = "cairn: a replicated key-value store")]
struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, env = "CAIRN_LOG_FORMAT", default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of a cluster.
    Node(Box<NodeArgs>),
    /// Run a gateway: one client address in front of a cluster.
    Gateway(Box<GatewayArgs>),
    /// Run a 3-node cluster and a gateway on localhost, data under
    /// ./cairn-data.
    Dev {
        /// Where the nodes keep their data.
        #[arg(long, default_value = "cairn-data")]
        data_dir: PathBuf,
        /// First client port; nodes use this port and the next two.
        #[arg(long, default_value_t = 7001)]
        client_port: u16,
        /// First peer port.
        #[arg(long, default_value_t = 7101)]
        peer_port: u16,
        /// First metrics port.
        #[arg(long, default_value_t = 9101)]
        metrics_port: u16,
        /// The gateway's client port (its metrics port is metrics-port - 1).
        #[arg(long, default_value_t = 7000)]
        gateway_port: u16,
    },
    /// If the node at --addr leads, hand leadership to another voter and
    /// wait until it has (a Kubernetes preStop hook). A follower is left
    /// alone; exit 0 unless the leader could not step down in time.
    StepDown {
        /// The node's client address.
        #[arg(long, env = "CAIRN_PROBE_ADDR", default_value = "127.0.0.1:7000")]
        addr: String,
        /// How long to keep trying, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Make a copy of one member's data directory (a backup) a cluster of
    /// one voter, offline, before starting it: the other members then
    /// start empty and join it. Only for a copy whose old cluster no
    /// longer runs.
    Restore {
        /// The copy's data directory (the node must not be running).
        #[arg(long, env = "CAIRN_DATA_DIR")]
        data_dir: PathBuf,
        /// The id of the member the copy was taken from.
        #[arg(long, env = "CAIRN_ID")]
        id: u64,
    },
    /// Check one server's gRPC health service (for container health
    /// checks): exit 0 when it reports SERVING, 1 otherwise.
    Probe {
        /// The node's or gateway's client address.
        #[arg(long, env = "CAIRN_PROBE_ADDR", default_value = "127.0.0.1:7000")]
        addr: String,
        /// The health service to ask: readiness, liveness, or "" (overall).
        #[arg(long, default_value = "readiness")]
        service: String,
        /// How long to wait for the answer, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

/// A channel to exactly `addr` (no redirects), every call bounded.
async fn channel_to(addr: &str, timeout: Duration) -> Result<tonic::transport::Channel, String> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad --addr {addr:?}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| format!("{addr}: cannot connect: {e}"))
}

/// One grpc.health.v1 Check against `addr`.
async fn probe(addr: &str, service: &str, timeout: Duration) -> Result<(), String> {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    let channel = channel_to(addr, timeout).await?;
    let res = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| format!("{addr}: {}: {}", s.code(), s.message()))?;
    let status = res.into_inner().status();
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(format!("{addr}: {service:?} is {}", status.as_str_name()))
    }
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run_node(config: NodeConfig) -> Result<(), String> {
    let node = RunningNode::start(config)
        .await
        .map_err(|e| e.to_string())?;
    let failed = tokio::select! {
        () = wait_for_signal() => None,
        why = node.failed() => Some(why),
    };
    if let Some(why) = failed {
        // Exit at once, non-zero: the supervisor restarts the node, which
        // recovers from what is durable.
        tracing::error!(reason = %why, "Raft stopped on a storage error: exiting");
        return Err(format!("Raft stopped: {why}"));
    }
    tracing::info!("signal received: shutting down");
    node.shutdown().await;
    Ok(())
}

async fn run_gateway(args: GatewayArgs) -> Result<(), String> {
    let g = RunningGateway::start(args)
        .await
        .map_err(|e| e.to_string())?;
    wait_for_signal().await;
    tracing::info!("signal received: draining");
    g.shutdown().await;
    Ok(())
}

async fn run_dev(
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    gateway_port: u16,
) -> Result<(), String> {
    let ids = [1u64, 2, 3];
    let port = |base: u16, i: usize| format!("127.0.0.1:{}", base as usize + i);
    let initial: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{id}={}/{}", port(client_port, i), port(peer_port, i)))
        .collect();
    let initial = initial.join(",");
    let mut nodes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let args = NodeArgs {
            id: Some(*id),
            data_dir: Some(data_dir.join(format!("node-{id}"))),
            listen_client: Some(port(client_port, i)),
            listen_peer: Some(port(peer_port, i)),
            listen_metrics: Some(port(metrics_port, i)),
            initial_cluster: Some(initial.clone()),
            ..NodeArgs::default()
        };
        let config = args.resolve().map_err(|e| e.to_string())?;
        nodes.push(
            RunningNode::start(config)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let endpoints: Vec<String> = nodes.iter().map(|n| n.client_addr.to_string()).collect();
    let gateway = RunningGateway::start(GatewayArgs::with_defaults(
        &format!("127.0.0.1:{gateway_port}"),
        &format!("127.0.0.1:{}", metrics_port.saturating_sub(1)),
        &endpoints,
    ))
    .await
    .map_err(|e| format!("gateway: {e}"))?;
    println!(
        "cairn dev: a 3-node cluster and a gateway are running (data in {})",
        data_dir.display()
    );
    for n in &nodes {
        println!(
            "  node {}  client {}  peer {}  metrics http://{}/metrics",
            n.core.config.id,
            n.client_addr,
            n.peer_addr,
            n.metrics_addr.map(|a| a.to_string()).unwrap_or_default()
        );
    }
    println!(
        "  gateway client {}  metrics http://{}/metrics",
        gateway.addr,
        gateway
            .metrics_addr
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    println!("use the gateway: {}", gateway.addr);
    println!("nodes: {}", endpoints.join(","));
    println!("try: cairnctl --endpoints {} put hello world", gateway.addr);
    println!("Ctrl-C stops the cluster; running `cairn dev` again reuses its data.");
    wait_for_signal().await;
    println!("stopping...");
    gateway.shutdown().await;
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

/// `cairn restore`: see [`cairn_node::server::restore`].
async fn restore(data_dir: &std::path::Path, id: u64) -> Result<(), String> {
    let r = cairn_node::server::restore::restore(data_dir, id)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "cairn: {} now holds a cluster of one voter, node {id} ({} / {}), with the \
         copy's data up to index {} (the copy's voters were {:?}). Start node {id} \
         from it, then the other members with empty data directories: they join \
         as learners and are promoted once caught up.",
        data_dir.display(),
        r.member.client_addr,
        r.member.peer_addr,
        r.last.index,
        r.voters_before,
    );
    Ok(())
}

/// Moves leadership off the node at `addr` if it leads.
async fn step_down(addr: &str, timeout: Duration) -> Result<(), String> {
    use cairn_proto::cluster::{
        cluster_client::ClusterClient, StatusRequest, TransferLeaderRequest,
    };
    let deadline = Instant::now() + timeout;
    let call = Duration::from_secs(2).min(timeout);
    let mut c = ClusterClient::new(channel_to(addr, call).await?);
    let mut asked = false;
    loop {
        let s = c
            .status(StatusRequest {})
            .await
            .map_err(|s| format!("{addr}: status: {}", s.message()))?
            .into_inner();
        if s.role != "leader" {
            if asked {
                eprintln!(
                    "cairn: node {} stepped down; the leader is {}",
                    s.id, s.leader
                );
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("node {} still leads after {timeout:?}", s.id));
        }
        if let Err(e) = c.transfer_leader(TransferLeaderRequest { to: 0 }).await {
            eprintln!("cairn: transfer leader: {}", e.message());
        }
        asked = true;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A tokio runtime of `threads` threads (0: one per core), for a gateway
/// (`--threads`) or a node (0). One thread is a current-thread runtime,
/// whose wake-ups are queue pushes instead of futex calls and context
/// switches between workers.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if threads > 1 {
        b.worker_threads(threads);
    }
    b.enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Probe { .. } | Command::StepDown { .. }
    ) {
        init_logs(&cli.log_format);
    }
    let threads = match &cli.command {
        Command::Gateway(args) => args.threads,
        _ => 0,
    };
    let rt = match runtime(threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        cairn_node::server::http::prometheus();
        match cli.command {
            Command::Node(args) => {
                let config = args.resolve().map_err(|e| e.to_string())?;
                run_node(config).await
            }
            Command::Gateway(args) => run_gateway(*args).await,
            Command::Dev {
                data_dir,
                client_port,
                peer_port,
                metrics_port,
                gateway_port,
            } => run_dev(data_dir, client_port, peer_port, metrics_port, gateway_port).await,
            Command::Probe {
                addr,
                service,
                timeout_ms,
            } => probe(&addr, &service, Duration::from_millis(timeout_ms)).await,
            Command::StepDown { addr, timeout_ms } => {
                step_down(&addr, Duration::from_millis(timeout_ms)).await
            }
            Command::Restore { data_dir, id } => restore(&data_dir, id).await,
        }
    });
    // Background work that does not end by itself (a node that stopped on
    // a storage error leaves its tasks behind) must not hold the exit.
    rt.shutdown_timeout(Duration::from_secs(2));
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn: {e}");
            ExitCode::from(1)
        }
    }
}
