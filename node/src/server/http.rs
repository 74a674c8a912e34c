//! The HTTP side of a node: Prometheus metrics on /metrics, /healthz
//! (the process answers) and /readyz (a leader is known and this node has
//! applied what it knows to be committed); and the gRPC health statuses.

use openraft_rt::WatchReceiver;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use openraft::ServerState;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::NodeCore;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Records a gRPC request's duration by method and status code.
pub fn observe<T>(
    method: &'static str,
    started: tokio::time::Instant,
    r: &Result<T, tonic::Status>,
) {
    observe_as("cairn_grpc_request_duration_seconds", method, started, r);
}

/// [`observe`] into the histogram `name`.
pub fn observe_as<T>(
    name: &'static str,
    method: &'static str,
    started: tokio::time::Instant,
    r: &Result<T, tonic::Status>,
) {
    let code = match r {
        Ok(_) => "OK",
        Err(s) => cairn_rpc::status::code_label(s.code()),
    };
    let elapsed = started.elapsed();
    // The recorder's lookup builds the labelled key (an allocation and a
    // hash) on every call; once the recorder is installed, each thread
    // keeps the handles it used. Keys are the labels' static addresses: a
    // label spelled at two places takes two entries for one histogram.
    if !matches!(PROMETHEUS.get(), Some(Some(_))) {
        metrics::histogram!(name, "method" => method, "code" => code).record(elapsed);
        return;
    }
    thread_local! {
        static HISTOGRAMS: std::cell::RefCell<std::collections::HashMap<(usize, usize, usize), metrics::Histogram>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    let key = (
        name.as_ptr() as usize,
        method.as_ptr() as usize,
        code.as_ptr() as usize,
    );
    HISTOGRAMS.with_borrow_mut(|m| {
        m.entry(key)
            .or_insert_with(|| metrics::histogram!(name, "method" => method, "code" => code))
            .record(elapsed);
    });
}

/// Installs the process-wide Prometheus recorder (once).
pub fn prometheus() -> Option<PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .clone()
}

/// Whether a process is ready for traffic (a node, or the gateway).
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// A node's readiness: [`NodeCore::ready`].
pub fn node_readiness(core: &Arc<NodeCore>) -> Readiness {
    let core = core.clone();
    Arc::new(move || core.ready())
}

/// Serves /metrics, /healthz and /readyz until `stop`.
pub async fn serve(ready: Readiness, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let handle = prometheus();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let h = handle.clone();
                async move { h.map(|h| h.render()).unwrap_or_default() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        );
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "metrics server stopped");
    }
}

/// Keeps the gRPC health statuses current: "" and "liveness" serve while
/// the process runs; "readiness" follows `ready`.
pub async fn report_health(
    ready: Readiness,
    reporter: HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("liveness", ServingStatus::Serving)
        .await;
    loop {
        let status = if ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status("readiness", status).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status("readiness", ServingStatus::NotServing)
        .await;
}

/// Mirrors openraft's and the engine's state into gauges and counters.
///
/// openraft sends its full metrics after every batch of Raft work (each
/// append, commit and apply), so a task waiting on them would wake
/// thousands of times a second under load. This one wakes when the role,
/// term or leader changes (the server metrics, so no leader change is
/// missed) and once a second for the indexes and the engine's stats.
pub async fn export_raft_metrics(core: Arc<NodeCore>, mut stop: watch::Receiver<bool>) {
    let mut server = core.raft.server_metrics();
    let mut last_leader = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        {
            // Role, leader and term from the server metrics that woke
            // this task (the full metrics are sent after them).
            let s = server.borrow_watched();
            if s.current_leader.is_some() && s.current_leader != last_leader {
                if last_leader.is_some() {
                    metrics::counter!("cairn_leader_changes_seen_total").increment(1);
                }
                last_leader = s.current_leader;
            }
            metrics::gauge!("cairn_has_leader").set(if s.current_leader.is_some() {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("cairn_is_leader").set(if s.state == ServerState::Leader {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("cairn_raft_term").set(s.vote.leader_id.term as f64);
        }
        {
            let m = core.raft.metrics();
            let m = m.borrow_watched();
            metrics::gauge!("cairn_raft_committed_index")
                .set(m.local_committed.as_ref().map_or(0, |l| l.index) as f64);
            metrics::gauge!("cairn_raft_applied_index")
                .set(m.last_applied.as_ref().map_or(0, |l| l.index) as f64);
            metrics::gauge!("cairn_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
        }
        tokio::select! {
            r = server.changed() => if r.is_err() { break },
            _ = tick.tick() => {
                let st = core.sm.db().stats();
                metrics::gauge!("cairn_lsm_memtable_bytes").set((st.memtable_bytes + st.immutable_memtable_bytes) as f64);
                for (l, (files, bytes)) in st.level_files.iter().zip(st.level_bytes.iter()).enumerate() {
                    let level = l.to_string();
                    metrics::gauge!("cairn_lsm_level_files", "level" => level.clone()).set(*files as f64);
                    metrics::gauge!("cairn_lsm_level_bytes", "level" => level).set(*bytes as f64);
                }
                metrics::gauge!("cairn_lsm_compaction_bytes_read").set(st.compaction_bytes_read as f64);
                metrics::gauge!("cairn_lsm_compaction_bytes_written").set(st.compaction_bytes_written as f64);
                metrics::gauge!("cairn_lsm_write_stalls").set(st.write_stalls as f64);
                metrics::gauge!("cairn_lsm_cache_hits").set(st.cache_hits as f64);
                metrics::gauge!("cairn_lsm_cache_misses").set(st.cache_misses as f64);
                metrics::gauge!("cairn_raft_log_bytes").set(core.log.live_bytes() as f64);
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}
