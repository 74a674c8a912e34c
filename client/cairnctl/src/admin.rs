//! The cluster commands: status, health, member, transfer-leader,
//! snapshot.

use std::io::Write;

use cairn_client::{Client, StatusResponse};
use serde_json::json;

use crate::output::{size, Format, Table};
use crate::{AlarmCmd, Failed, MemberCmd, Outcome};

/// `cairnctl status`: one row per member.
pub(crate) async fn status(c: &Client, fmt: Format, out: &mut impl Write) -> Outcome {
    let all = c.status_all().await;
    print_status(&all, fmt, out)?;
    if all.iter().all(|m| m.status.is_err()) {
        return Err(Failed("no member answered".into()));
    }
    Ok(())
}

/// `cairnctl health`: exit 1 if any member is unhealthy.
pub(crate) async fn health(c: &Client, fmt: Format, out: &mut impl Write) -> Outcome {
    let members = c.status_all().await;
    let mut bad = 0;
    let mut t = Table::new(&["ENDPOINT", "HEALTHY", "LIVE", "READY", "TOOK", "ERROR"]);
    let mut js = Vec::new();
    for m in &members {
        let h = c.health_of(&m.addr).await;
        let (live, ready, took, err) = match &h {
            Ok(h) => (h.live, h.ready, format!("{:?}", h.took), String::new()),
            Err(e) => (false, false, String::new(), e.to_string()),
        };
        let healthy = live && ready;
        if !healthy {
            bad += 1;
        }
        if fmt == Format::Simple {
            writeln!(
                out,
                "{} is {}{}",
                m.addr,
                if healthy { "healthy" } else { "unhealthy" },
                if err.is_empty() {
                    format!(": took {took}")
                } else {
                    format!(": {err}")
                }
            )?;
        }
        t.row(vec![
            m.addr.clone(),
            healthy.to_string(),
            live.to_string(),
            ready.to_string(),
            took.clone(),
            err.clone(),
        ]);
        js.push(json!({"endpoint": m.addr, "healthy": healthy, "live": live,
                       "ready": ready, "took": took, "error": err}));
    }
    match fmt {
        Format::Table => write!(out, "{}", t.render())?,
        Format::Json => writeln!(out, "{}", serde_json::Value::Array(js))?,
        Format::Simple => {}
    }
    if bad > 0 {
        return Err(Failed(format!(
            "{bad} of {} member(s) unhealthy",
            members.len()
        )));
    }
    Ok(())
}

/// `cairnctl member ...`.
pub(crate) async fn member(c: &Client, m: MemberCmd, fmt: Format, out: &mut impl Write) -> Outcome {
    let r = match m {
        MemberCmd::List => c.members().await?,
        MemberCmd::AddLearner {
            id,
            client_addr,
            peer_addr,
            no_wait,
        } => {
            c.add_learner(id, &client_addr, &peer_addr, !no_wait)
                .await?
        }
        MemberCmd::Promote { ids } => c.promote(&ids).await?,
        MemberCmd::Remove { id } => c.remove_member(id).await?,
        MemberCmd::SetVoters { ids } => c.change_membership(&ids).await?,
    };
    print_members(&r, fmt, out)?;
    Ok(())
}

/// `cairnctl transfer-leader`.
pub(crate) async fn transfer_leader(
    c: &Client,
    to: Option<u64>,
    fmt: Format,
    out: &mut impl Write,
) -> Outcome {
    let leader = c.transfer_leader(to.unwrap_or(0)).await?;
    match fmt {
        Format::Json => writeln!(out, "{}", json!({"leader": leader}))?,
        _ => writeln!(out, "leader is now node {leader}")?,
    }
    Ok(())
}

/// `cairnctl settings`: the settings as the leader applied them, or
/// changed.
pub(crate) async fn settings(
    c: &Client,
    history_revisions: Option<u64>,
    session_ttl_secs: Option<u64>,
    fmt: Format,
    out: &mut impl Write,
) -> Outcome {
    let s = if history_revisions.is_some() || session_ttl_secs.is_some() {
        c.set_settings(
            history_revisions.unwrap_or(0),
            session_ttl_secs.unwrap_or(0),
        )
        .await?
    } else {
        c.status_of_leader().await?.settings.unwrap_or_default()
    };
    match fmt {
        Format::Json => writeln!(
            out,
            "{}",
            json!({
                "history_revisions": s.history_revisions,
                "session_ttl_secs": s.session_ttl_secs,
                "set": s.set,
            })
        )?,
        _ => {
            writeln!(out, "history-revisions {}", s.history_revisions)?;
            writeln!(out, "session-ttl-secs {}", s.session_ttl_secs)?;
        }
    }
    Ok(())
}

/// `cairnctl alarm list|disarm`: one line per alarm, as etcdctl prints
/// them (`memberID:2 alarm:NOSPACE`).
pub(crate) async fn alarm(c: &Client, cmd: AlarmCmd, fmt: Format, out: &mut impl Write) -> Outcome {
    use cairn_client::proto::cluster::{alarm_request::AlarmAction, AlarmType};
    let action = match cmd {
        AlarmCmd::List => AlarmAction::Get,
        AlarmCmd::Disarm => AlarmAction::Deactivate,
    };
    let alarms = c.alarm(action, 0, AlarmType::None).await?;
    let name = |a: &cairn_client::proto::cluster::AlarmMember| a.alarm().as_str_name().to_string();
    match fmt {
        Format::Json => {
            let js: Vec<_> = alarms
                .iter()
                .map(|a| json!({"member_id": a.member_id, "alarm": name(a)}))
                .collect();
            writeln!(out, "{}", json!({"alarms": js}))?;
        }
        _ => {
            for a in &alarms {
                writeln!(out, "memberID:{} alarm:{}", a.member_id, name(a))?;
            }
        }
    }
    Ok(())
}

/// `cairnctl check hash`: one row per member; exit 1 when one differs.
pub(crate) async fn check_hash(c: &Client, fmt: Format, out: &mut impl Write) -> Outcome {
    let r = c.check_hash().await?;
    let mut t = Table::new(&["ID", "REVISION", "HASH", "KEYS", "STATUS"]);
    let mut js = Vec::new();
    for m in &r.members {
        let status = if !m.error.is_empty() {
            format!("no hash: {}", m.error)
        } else if m.corrupt {
            "MISMATCH (CORRUPT alarm raised)".to_string()
        } else {
            "ok".to_string()
        };
        let hash = format!("{:016x}", m.hash);
        if fmt == Format::Simple {
            writeln!(
                out,
                "{}, {}, {hash}, {}, {status}",
                m.member_id, r.revision, m.keys
            )?;
        }
        js.push(
            json!({"id": m.member_id, "revision": r.revision, "hash": hash,
                       "keys": m.keys, "error": m.error, "corrupt": m.corrupt}),
        );
        t.row(vec![
            m.member_id.to_string(),
            r.revision.to_string(),
            hash,
            m.keys.to_string(),
            status,
        ]);
    }
    match fmt {
        Format::Table => write!(out, "{}", t.render())?,
        Format::Json => writeln!(out, "{}", json!(js))?,
        Format::Simple => {}
    }
    let corrupt = r.members.iter().filter(|m| m.corrupt).count();
    if corrupt > 0 {
        return Err(Failed(format!(
            "{corrupt} member(s) differ from the majority at revision {}: CORRUPT raised",
            r.revision
        )));
    }
    Ok(())
}

/// `cairnctl snapshot`: on every member.
pub(crate) async fn snapshot(c: &Client, fmt: Format, out: &mut impl Write) -> Outcome {
    let members = c.members().await?;
    let mut t = Table::new(&["ID", "ENDPOINT", "SNAPSHOT INDEX", "ERROR"]);
    let mut js = Vec::new();
    let mut failed = 0;
    for m in &members.members {
        let r = c.snapshot_on(&m.client_addr).await;
        let (idx, err) = match &r {
            Ok(i) => (i.to_string(), String::new()),
            Err(e) => {
                failed += 1;
                (String::new(), e.to_string())
            }
        };
        if fmt == Format::Simple {
            writeln!(out, "{} {}", m.id, if err.is_empty() { &idx } else { &err })?;
        }
        js.push(json!({"id": m.id, "endpoint": m.client_addr,
                       "index": r.as_ref().ok(), "error": err}));
        t.row(vec![m.id.to_string(), m.client_addr.clone(), idx, err]);
    }
    match fmt {
        Format::Table => write!(out, "{}", t.render())?,
        Format::Json => writeln!(out, "{}", serde_json::Value::Array(js))?,
        Format::Simple => {}
    }
    if failed > 0 {
        return Err(Failed(format!("{failed} member(s) did not snapshot")));
    }
    Ok(())
}

fn print_status(
    all: &[cairn_client::MemberStatus],
    fmt: Format,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let cols = [
        "ID",
        "ENDPOINT",
        "ROLE",
        "TERM",
        "LAST INDEX",
        "COMMITTED",
        "APPLIED",
        "LEADER",
        "DISK",
        "RAFT LOG",
        "VERSION",
        "ERRORS",
    ];
    let mut t = Table::new(&cols);
    let mut js = Vec::new();
    for m in all {
        match &m.status {
            Ok(s) => {
                let StatusResponse {
                    role,
                    term,
                    last_log_index,
                    committed,
                    applied,
                    leader,
                    version,
                    storage,
                    ..
                } = s;
                let (db, log) = storage
                    .as_ref()
                    .map_or((0, 0), |st| (st.disk_bytes, st.raft_log_bytes));
                // A node that started without its data does not vote yet.
                let role = if s.catching_up {
                    format!("{role} (catching up)")
                } else {
                    role.clone()
                };
                if fmt == Format::Simple {
                    writeln!(
                        out,
                        "{}, {}, {role}, {term}, {last_log_index}, {committed}, {applied}, {leader}, {}, {}, {version}",
                        m.id, m.addr, size(db), size(log)
                    )?;
                }
                js.push(json!({
                    "id": m.id, "endpoint": m.addr, "role": role, "term": term,
                    "last_log_index": last_log_index, "committed": committed,
                    "applied": applied, "leader": leader, "db_bytes": db,
                    "raft_log_bytes": log, "version": version,
                    "snapshot_index": s.snapshot_index, "purged_index": s.purged_index,
                    "catching_up": s.catching_up, "error": null,
                }));
                t.row(vec![
                    m.id.to_string(),
                    m.addr.clone(),
                    role,
                    term.to_string(),
                    last_log_index.to_string(),
                    committed.to_string(),
                    applied.to_string(),
                    leader.to_string(),
                    size(db),
                    size(log),
                    version.clone(),
                    String::new(),
                ]);
            }
            Err(e) => {
                if fmt == Format::Simple {
                    writeln!(out, "{}, {}, error: {e}", m.id, m.addr)?;
                }
                js.push(json!({"id": m.id, "endpoint": m.addr, "error": e.to_string()}));
                let mut row = vec![m.id.to_string(), m.addr.clone()];
                row.extend(std::iter::repeat_n(String::new(), cols.len() - 3));
                row.push(e.to_string());
                t.row(row);
            }
        }
    }
    match fmt {
        Format::Table => write!(out, "{}", t.render()),
        Format::Json => writeln!(out, "{}", serde_json::Value::Array(js)),
        Format::Simple => Ok(()),
    }
}

fn print_members(
    r: &cairn_client::MembersResponse,
    fmt: Format,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mut t = Table::new(&["ID", "CLIENT ADDR", "PEER ADDR", "IS LEARNER", "IS LEADER"]);
    let mut js = Vec::new();
    for m in &r.members {
        let leader = m.id == r.leader;
        if fmt == Format::Simple {
            writeln!(
                out,
                "{}, {}, {}, {}, {}",
                m.id,
                m.client_addr,
                m.peer_addr,
                if m.is_learner { "learner" } else { "voter" },
                if leader { "leader" } else { "" }
            )?;
        }
        js.push(
            json!({"id": m.id, "client_addr": m.client_addr, "peer_addr": m.peer_addr,
                       "is_learner": m.is_learner, "is_leader": leader}),
        );
        t.row(vec![
            m.id.to_string(),
            m.client_addr.clone(),
            m.peer_addr.clone(),
            m.is_learner.to_string(),
            leader.to_string(),
        ]);
    }
    match fmt {
        Format::Table => write!(out, "{}", t.render()),
        Format::Json => writeln!(out, "{}", json!({"leader": r.leader, "members": js})),
        Format::Simple => Ok(()),
    }
}
