//! What the clients of a run do: register operations recorded for the
//! checker, the bulk client's large values and refusals, the watchers,
//! and the administrator's membership changes, snapshots and leader
//! transfers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::{Client, ClientConfig, Consistency, Error, EventKind, Watch};
use rand::{Rng, SeedableRng};

use crate::checker::{Input, Operation, Output, Value};
use crate::net::SimNet;
use crate::options::{Options, GATEWAY_ADDR, NODES};
use crate::watches::{self, END_KEY};

/// What a watcher received.
#[derive(Debug, Default)]
pub(crate) struct WatchLog {
    pub(crate) events: Vec<watches::Event>,
    /// The end marker arrived, or the stream failed (`error`).
    pub(crate) done: bool,
    pub(crate) error: Option<String>,
}

/// Watches every key from revision 1 through `endpoints` until the end
/// marker, recording every event.
pub(crate) async fn watch_loop(
    endpoints: Vec<String>,
    seed: u64,
    log: Arc<Mutex<WatchLog>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = ClientConfig {
        net: Arc::new(SimNet),
        seed: Some(seed),
        timeout: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let c = Client::new_lazy(&endpoints, cfg)?;
    let w = Watch::prefix("")
        .from_revision(1)
        .give_up_after(Duration::from_secs(300));
    let finish = |error: Option<String>| -> Result<(), Box<dyn std::error::Error>> {
        let mut l = log.lock().map_err(|e| e.to_string())?;
        l.done = true;
        l.error = error;
        Ok(())
    };
    // The cluster may not serve yet.
    let mut stream = loop {
        match c.watch(w.clone()).await {
            Ok(s) => break s,
            Err(e) if turmoil::elapsed() > Duration::from_secs(120) => {
                return finish(Some(format!("the watch never started: {e}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    while let Some(batch) = futures::StreamExt::next(&mut stream).await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return finish(Some(format!("the stream failed: {e}"))),
        };
        let mut end = false;
        {
            let mut l = log.lock().map_err(|e| e.to_string())?;
            for e in batch.events.into_iter().filter(|e| checked_key(&e.kv.key)) {
                end |= e.kv.key[..] == *END_KEY;
                l.events.push(watches::Event {
                    revision: batch.revision,
                    put: e.kind == EventKind::Put,
                    key: e.kv.key.to_vec(),
                    value: e.kv.value.to_vec(),
                    create_revision: e.kv.create_revision,
                    mod_revision: e.kv.mod_revision,
                    version: e.kv.version,
                });
            }
        }
        if end {
            return finish(None);
        }
    }
    finish(Some("the stream ended".into()))
}

pub(crate) fn now_nanos() -> u64 {
    u64::try_from(turmoil::elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Keys the watch check covers: the registers and the end marker (the
/// bulk client's `b/` keys are checked only by the replicas' final
/// states being identical).
pub(crate) fn checked_key(key: &[u8]) -> bool {
    !key.starts_with(BULK_PREFIX)
}

/// The bulk client's key space.
pub(crate) const BULK_PREFIX: &[u8] = b"b/";

/// The bulk client: large values (up to the 1 MiB limit) under `b/`, and
/// now and then a prefix delete of them with prev_kv (refused by the
/// leader past 2 MiB of answer) or a transaction of sixteen scans over
/// them, each a page of up to 2 MiB (refused by every replica alike when
/// its answer passes 24 MiB).
/// Each outcome must be a success, such a refusal, or unknown (a fault);
/// their effect is checked by the replicas converging to identical data.
pub(crate) async fn bulk_loop(opts: Options) -> Result<(), String> {
    let cfg = ClientConfig {
        net: Arc::new(SimNet),
        seed: Some(opts.seed ^ 0xb01c),
        timeout: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let endpoints: Vec<String> = (1..=NODES).map(|i| format!("n{i}:7001")).collect();
    let c = Client::new_lazy(&endpoints, cfg).map_err(|e| e.to_string())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0xb01c_0001);
    for n in 0..opts.ops_per_client / 2 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        let what = rng.random_range(0..10);
        let result = match what {
            0..=6 => {
                let size = rng.random_range(1usize..=1 << 20);
                let key = format!("b/{:02}", rng.random_range(0..8));
                c.put(key, vec![b'0' + (n % 10) as u8; size])
                    .await
                    .map(|_| ())
            }
            7 | 8 => c.delete_full("b/", true, true).await.map(|_| ()),
            _ => {
                let scan = cairn_client::Scan::prefix("b/");
                let scans: Vec<_> = (0..16).map(|_| cairn_client::TxnOp::scan(&scan)).collect();
                c.txn().and_then(scans).commit().await.map(|_| ())
            }
        };
        match result {
            Ok(()) => {}
            Err(Error::InvalidArgument(m)) if m.contains("limit") => {
                tracing::info!(what, "bulk op refused: {m}");
            }
            // A retry of a request applied with an answer too large to
            // keep for retries: it says so rather than applying again.
            Err(Error::Server {
                code: tonic::Code::FailedPrecondition,
                message,
            }) if message.contains("already applied") => {}
            Err(e) if unknown(&e) => {}
            Err(e) => return Err(format!("bulk op {what}: {e}")),
        }
    }
    Ok(())
}

pub(crate) fn encode(v: Value) -> String {
    v.to_string()
}

pub(crate) fn decode(b: &[u8]) -> Result<Value, String> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("a read returned {b:?}, which no client wrote"))
}

/// Whether an error leaves the operation's outcome unknown (a client
/// gave up) rather than being a bug.
/// Whether `e` leaves the operation's outcome unknown. A write refused by
/// an alarm is one too: the refusal may answer a retry whose first
/// attempt is still in the log.
pub(crate) fn unknown(e: &Error) -> bool {
    matches!(
        e,
        Error::Unavailable { .. } | Error::DeadlineExceeded { .. } | Error::Alarmed { .. }
    )
}

pub(crate) async fn client_loop(
    id: u64,
    opts: Options,
    history: Arc<Mutex<Vec<Operation>>>,
) -> Result<(), String> {
    let cfg = ClientConfig {
        net: Arc::new(SimNet),
        seed: Some(opts.seed ^ (id << 40)),
        timeout: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let endpoints: Vec<String> = if opts.gateway && id.is_multiple_of(2) {
        vec![GATEWAY_ADDR.into()]
    } else {
        (1..=NODES).map(|i| format!("n{i}:7001")).collect()
    };
    let c = Client::new_lazy(&endpoints, cfg).map_err(|e| e.to_string())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ (id << 24) ^ 0xc11e);
    let mut seq = 0u64;
    for _ in 0..opts.ops_per_client {
        // Think time spreads the operations over the faults.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        let key = rng.random_range(0..opts.keys);
        let k = format!("r/{key}");
        seq += 1;
        let value = (id << 32) | seq;
        let input = match rng.random_range(0..10) {
            0..=2 => Input::Write(Some(value)),
            3 => Input::Write(None),
            4..=6 => Input::Read,
            7 => Input::SerializableRead,
            _ => Input::Cas {
                expect: if rng.random_bool(0.3) {
                    None
                } else {
                    // A value some client may have written.
                    Some((rng.random_range(1..=opts.clients) << 32) | rng.random_range(1..=seq))
                },
                new: Some(value),
            },
        };
        let call = now_nanos();
        let result: Result<Output, Error> = match &input {
            Input::Write(Some(v)) => c.put(&k, encode(*v)).await.map(|_| Output::Done),
            Input::Write(None) => c.delete(&k).await.map(|_| Output::Done),
            Input::Read | Input::SerializableRead => {
                let consistency = if input == Input::Read {
                    Consistency::Linearizable
                } else {
                    Consistency::Serializable
                };
                match c.get_with(&k, consistency).await {
                    Ok(r) => match r.kv {
                        Some(kv) => Ok(Output::Read(Some(decode(&kv.value)?))),
                        None => Ok(Output::Read(None)),
                    },
                    Err(e) => Err(e),
                }
            }
            Input::Cas { expect, new } => {
                let exp = expect.map(encode);
                let new = new.map(encode).unwrap_or_default();
                match c.cas(&k, exp.as_deref().map(str::as_bytes), &new).await {
                    Ok(_) => Ok(Output::Cas(true)),
                    Err(Error::CompareFailed { .. }) => Ok(Output::Cas(false)),
                    Err(e) => Err(e),
                }
            }
        };
        let ret = match result {
            Ok(out) => Some((now_nanos(), out)),
            Err(e) if unknown(&e) => None,
            Err(e) => return Err(format!("client {id}: {input:?} on {k}: {e}")),
        };
        history.lock().map_err(|e| e.to_string())?.push(Operation {
            client: id,
            key,
            call,
            ret,
            input,
        });
    }
    Ok(())
}

/// The members' client addresses as the highest-term leader sees them.
pub(crate) async fn current_members(c: &Client, cfg: &ClientConfig) -> Result<Vec<String>, String> {
    let mut best: Option<(u64, String)> = None;
    for i in 1..=NODES {
        let n = format!("n{i}:7001");
        if let Ok(s) = c.status_of(&n).await {
            if s.role == "leader" && best.as_ref().is_none_or(|(t, _)| s.term > *t) {
                best = Some((s.term, n));
            }
        }
    }
    let (_, leader) = best.ok_or("no leader")?;
    let one = Client::new_lazy([leader.as_str()], cfg.clone()).map_err(|e| e.to_string())?;
    let m = one.members().await.map_err(|e| e.to_string())?;
    Ok(m.members.iter().map(|m| m.client_addr.clone()).collect())
}

/// The administrator: at random times, hands leadership to another voter,
/// makes a node snapshot now (and purge its log), adds a spare host as a
/// learner and promotes it, or removes a voter while more than three
/// remain. Outcomes (errors included: faults are running) go to `log`.
pub(crate) async fn admin_loop(opts: Options, log: Arc<Mutex<Vec<String>>>) -> Result<(), String> {
    let cfg = ClientConfig {
        net: Arc::new(SimNet),
        seed: Some(opts.seed ^ 0xad),
        timeout: Duration::from_secs(20),
        attempt_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let endpoints: Vec<String> = (1..=NODES).map(|i| format!("n{i}:7001")).collect();
    let c = Client::new_lazy(&endpoints, cfg).map_err(|e| e.to_string())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0xad);
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..3000))).await;
        let mut action = rng.random_range(0..5);
        if action == 0 && !opts.transfers {
            action = 1;
        }
        let what = match action {
            4 => disarm_all(&c).await,
            0 => match c.transfer_leader(0).await {
                Ok(to) => format!("transfer leader: now {to}"),
                Err(e) => format!("transfer leader: {e}"),
            },
            1 => {
                let n = rng.random_range(1..=NODES);
                match c.snapshot_on(&format!("n{n}:7001")).await {
                    Ok(i) => format!("snapshot n{n}: at {i}"),
                    Err(e) => format!("snapshot n{n}: {e}"),
                }
            }
            action => {
                let m = match c.members().await {
                    Ok(m) => m,
                    Err(e) => {
                        push(&log, format!("members: {e}"))?;
                        continue;
                    }
                };
                let voters: Vec<u64> = m
                    .members
                    .iter()
                    .filter(|m| !m.is_learner)
                    .map(|m| m.id)
                    .collect();
                let spare: Vec<u64> = (1..=NODES).filter(|i| !voters.contains(i)).collect();
                if action == 2 && !spare.is_empty() {
                    let id = spare[rng.random_range(0..spare.len())];
                    let (ca, pa) = (format!("n{id}:7001"), format!("n{id}:7101"));
                    match c.add_learner(id, &ca, &pa, true).await {
                        Ok(_) => match c.promote(&[id]).await {
                            Ok(_) => format!("add n{id}: voter"),
                            Err(e) => format!("add n{id}: learner; promote: {e}"),
                        },
                        Err(e) => format!("add n{id}: {e}"),
                    }
                } else if voters.len() > 3 {
                    let id = voters[rng.random_range(0..voters.len())];
                    match c.remove_member(id).await {
                        Ok(_) => format!("remove n{id}: done"),
                        Err(e) => format!("remove n{id}: {e}"),
                    }
                } else {
                    continue;
                }
            }
        };
        push(&log, what)?;
    }
    Ok(())
}

/// The operator disarms every alarm (a node whose disk is still full
/// raises NOSPACE again); what it disarmed, for the log.
pub(crate) async fn disarm_all(c: &Client) -> String {
    use cairn_client::proto::cluster::{alarm_request::AlarmAction, AlarmType};
    match c.alarm(AlarmAction::Get, 0, AlarmType::None).await {
        Ok(alarms) if alarms.is_empty() => "alarms: none".into(),
        Ok(alarms) => match c.alarm(AlarmAction::Deactivate, 0, AlarmType::None).await {
            Ok(_) => format!("alarms: disarmed {alarms:?}"),
            Err(e) => format!("alarms: disarm: {e}"),
        },
        Err(e) => format!("alarms: {e}"),
    }
}

pub(crate) fn push(log: &Arc<Mutex<Vec<String>>>, what: String) -> Result<(), String> {
    let t = turmoil::elapsed();
    log.lock()
        .map_err(|e| e.to_string())?
        .push(format!("{t:?} admin {what}"));
    Ok(())
}
