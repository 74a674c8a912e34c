//! The liveness phase's checks: with every fault healed the members must
//! converge to the same applied index and identical data, and the
//! watchers must reach the end marker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::{Client, ClientConfig, Consistency, Watch};

use crate::net::SimNet;
use crate::options::NODES;
use crate::watches::{State, END_KEY};
use crate::workload::{current_members, WatchLog};

/// Waits (60 simulated seconds at most) until every member has applied the
/// same index with a leader known, then reads every pair from each member
/// serializably; they must be equal, and the index unchanged after the
/// reads. Returns the common applied index and the state there.
pub(crate) async fn converge(seed: u64) -> Result<(u64, State), Box<dyn std::error::Error>> {
    let cfg = ClientConfig {
        net: Arc::new(SimNet),
        seed: Some(seed ^ 0x11fe),
        ..ClientConfig::default()
    };
    let all: Vec<String> = (1..=NODES).map(|i| format!("n{i}:7001")).collect();
    let c = Client::new_lazy(&all, cfg.clone())?;
    // A write through the leader makes every replica's applied index move
    // past whatever the faults left behind.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        match c.put("liveness", "ok").await {
            Ok(_) => break,
            // Space was freed when the faults healed: the operator
            // disarms the NOSPACE alarms the full disks raised.
            Err(cairn_client::Error::Alarmed { .. }) => {
                let what = crate::workload::disarm_all(&c).await;
                tracing::info!("liveness: {what}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(_) => {}
        }
        if tokio::time::Instant::now() > deadline {
            return Err("no write succeeded in the liveness phase".into());
        }
    }
    loop {
        let nodes = current_members(&c, &cfg).await.unwrap_or_else(|e| {
            last = e;
            Vec::new()
        });
        let applied = caught_up(&c, &nodes, &mut last).await;
        if let Some(index) = applied {
            let mut dumps: Vec<State> = Vec::new();
            for n in &nodes {
                dumps.push(dump(n, &cfg).await?);
            }
            if let Some(i) = dumps.iter().position(|d| *d != dumps[0]) {
                last = format!(
                    "members {nodes:?} differ at applied {index}: {} and {}: {}",
                    nodes[0],
                    nodes[i],
                    first_difference(&dumps[0], &dumps[i])
                );
            } else if caught_up(&c, &nodes, &mut last).await == Some(index) {
                // Their watch histories must agree too.
                let mut histories = Vec::new();
                for n in &nodes {
                    histories.push((n, history_of(n, &cfg, index).await?));
                }
                if let Some((n, h)) = histories.iter().find(|(_, h)| *h != histories[0].1) {
                    let (n0, h0) = &histories[0];
                    let at = h0.iter().zip(h.iter()).position(|(x, y)| x != y);
                    return Err(format!(
                        "the watch histories of {n0} and {n} differ: at event {at:?}: {:?} and {:?}",
                        at.and_then(|i| h0.get(i)),
                        at.and_then(|i| h.get(i))
                    )
                    .into());
                }
                return Ok((index, dumps.swap_remove(0)));
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("replicas did not converge in 60 s: {last}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The index every one of `nodes` has applied, if they agree and each
/// knows a leader; otherwise why not, in `why`.
pub(crate) async fn caught_up(c: &Client, nodes: &[String], why: &mut String) -> Option<u64> {
    let mut applied = Vec::new();
    for n in nodes {
        match c.status_of(n).await {
            Ok(s) if s.leader != 0 && s.applied == s.committed => applied.push(s.applied),
            Ok(s) => {
                *why = format!(
                    "{n}: leader {} applied {} committed {}",
                    s.leader, s.applied, s.committed
                );
            }
            Err(e) => *why = format!("{n}: {e}"),
        }
    }
    (!nodes.is_empty() && applied.len() == nodes.len() && applied.iter().all(|a| *a == applied[0]))
        .then(|| applied[0])
}

/// Every pair `node` holds, read serializably.
pub(crate) async fn dump(
    node: &str,
    cfg: &ClientConfig,
) -> Result<State, Box<dyn std::error::Error>> {
    let one = Client::new_lazy([node], cfg.clone())?;
    let mut d = State::new();
    let mut scan =
        Box::pin(one.scan(cairn_client::Scan::all().consistency(Consistency::Serializable)));
    while let Some(kv) = futures::StreamExt::next(&mut scan).await {
        let kv = kv?;
        d.insert(
            kv.key.to_vec(),
            (
                kv.value.to_vec(),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            ),
        );
    }
    Ok(d)
}

/// `node`'s watch history of every key from revision 1 up to `applied`:
/// (revision, key, value, version) per event.
pub(crate) async fn history_of(
    node: &str,
    cfg: &ClientConfig,
    applied: u64,
) -> Result<Vec<(u64, Vec<u8>, Vec<u8>, u64)>, Box<dyn std::error::Error>> {
    let one = Client::new_lazy([node], cfg.clone())?;
    let mut stream = one.watch(Watch::prefix("").from_revision(1)).await?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(
            Duration::from_secs(2),
            futures::StreamExt::next(&mut stream),
        )
        .await;
        match next {
            Ok(Some(batch)) => {
                let batch = batch?;
                if batch.revision > applied {
                    break;
                }
                for e in batch.events {
                    out.push((
                        batch.revision,
                        e.kv.key.to_vec(),
                        e.kv.value.to_vec(),
                        e.kv.version,
                    ));
                }
            }
            // Caught up: nothing more below `applied`.
            Ok(None) | Err(_) => break,
        }
    }
    Ok(out)
}

/// After the liveness phase: writes the end marker and waits (60
/// simulated seconds at most) for every watcher to reach it.
pub(crate) async fn end_watches(
    seed: u64,
    watchers: &[Arc<Mutex<WatchLog>>],
) -> Result<(), String> {
    let cfg = ClientConfig {
        net: Arc::new(SimNet),
        seed: Some(seed ^ 0xe9d),
        ..ClientConfig::default()
    };
    let all: Vec<String> = (1..=NODES).map(|i| format!("n{i}:7001")).collect();
    let c = Client::new_lazy(&all, cfg).map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Err(e) = c.put(END_KEY, "end").await {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("the end marker could not be written: {e}"));
        }
    }
    loop {
        let mut pending = Vec::new();
        for (i, w) in watchers.iter().enumerate() {
            let w = w.lock().map_err(|e| e.to_string())?;
            if !w.done {
                let last = w.events.last().map_or(0, |e| e.revision);
                pending.push(format!("w{} (last revision {last})", i + 1));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "watchers {} did not reach the end marker in 60 s",
                pending.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first key at which two states differ, with both sides.
fn first_difference(a: &State, b: &State) -> String {
    let keys: std::collections::BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x != y {
            let show = |v: Option<&(Vec<u8>, u64, u64, u64)>| {
                v.map_or("absent".to_string(), |(val, c, m, ver)| {
                    format!("{} bytes, create {c} mod {m} version {ver}", val.len())
                })
            };
            return format!(
                "key {:?}: {} | {}",
                String::from_utf8_lossy(k),
                show(x),
                show(y)
            );
        }
    }
    "no difference".into()
}
