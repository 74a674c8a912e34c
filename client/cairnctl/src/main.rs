//! `cairnctl`: the command-line client and admin tool of cairn.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 usage error.

mod bench;
mod output;
mod txn;

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use cairn_client::proto::kv::response_op::Response as OpResponse;
use cairn_client::{
    Client, ClientConfig, Consistency, EventKind, KeyValue, Scan, StatusResponse, Watch,
};
use clap::{Args, CommandFactory, Parser, Subcommand};
use futures::StreamExt;
use output::{kv_json, kv_table, size, text, Format, Table};
use serde_json::json;

/// cairn's command-line client: data, cluster administration, benchmarks.
#[derive(Parser, Debug)]
#[command(name = "cairnctl", version, about, propagate_version = true)]
struct Cli {
    /// Nodes or gateways to talk to, comma-separated host:port.
    #[arg(
        long,
        env = "CAIRN_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
        global = true
    )]
    endpoints: Vec<String>,
    /// Deadline of each command's calls, retries included (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_duration, global = true)]
    timeout: Duration,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table, global = true)]
    output: Format,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Sets a key (the value from stdin when not given).
    Put {
        key: String,
        value: Option<String>,
        /// Print the previous value.
        #[arg(long)]
        prev_kv: bool,
    },
    /// Reads a key (nothing is printed when it does not exist).
    Get {
        key: String,
        /// Read from the answering node's own state (possibly stale).
        #[arg(long)]
        serializable: bool,
        /// Print create/mod revision and version.
        #[arg(long)]
        rev_info: bool,
    },
    /// Deletes a key, or every key under a prefix.
    Del {
        #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
        key: Option<String>,
        /// Delete every key that starts with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Print the deleted pairs.
        #[arg(long)]
        prev_kv: bool,
    },
    /// Lists keys in order: every key, a prefix, or a range.
    Scan {
        /// Keys that start with this.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        prefix: Option<String>,
        /// First key of the range (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// End of the range (exclusive).
        #[arg(long)]
        to: Option<String>,
        /// Most pairs to print.
        #[arg(long)]
        limit: Option<u64>,
        /// Keys only.
        #[arg(long)]
        keys_only: bool,
        /// Read from the answering node's own state (possibly stale).
        #[arg(long)]
        serializable: bool,
        /// Print create/mod revision and version.
        #[arg(long)]
        rev_info: bool,
    },
    /// Runs a transaction: compares, then success or failure operations.
    /// Without flags, reads etcdctl's format from stdin: compares, a blank
    /// line, success ops, a blank line, failure ops.
    Txn(TxnArgs),
    /// Compare-and-swap: sets KEY to --set if it holds --expect (or does
    /// not exist, with --expect-absent). Exit code 1 when the compare fails.
    Cas {
        key: String,
        /// The value the key must hold.
        #[arg(long, required_unless_present = "expect_absent")]
        expect: Option<String>,
        /// The key must not exist.
        #[arg(long, conflicts_with = "expect")]
        expect_absent: bool,
        /// The new value.
        #[arg(long)]
        set: String,
    },
    /// Streams changes to a key or a prefix until interrupted.
    Watch {
        #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
        key: Option<String>,
        /// Watch every key that starts with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Start from this revision (default: from now).
        #[arg(long)]
        rev: Option<u64>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// One row per member: role, term, log positions, storage.
    Status,
    /// Liveness and readiness of every member (exit 1 if any is unhealthy).
    Health,
    /// Membership: list, add-learner, promote, remove, set-voters.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Hands leadership to TO (any up-to-date voter when omitted).
    TransferLeader { to: Option<u64> },
    /// Builds a snapshot on every member now (the log behind it can then
    /// be purged).
    Snapshot,
    /// Load generator: put, get, mixed, txn-cas.
    Bench(bench::BenchArgs),
    /// Prints a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
struct TxnArgs {
    /// A compare, e.g. 'value("k") = "v"' or 'mod("k") < 42' (repeatable).
    #[arg(long = "compare", short = 'c')]
    compares: Vec<String>,
    /// An operation run when every compare holds, e.g. 'put k v' (repeatable).
    #[arg(long = "then")]
    success: Vec<String>,
    /// An operation run otherwise, e.g. 'get k' (repeatable).
    #[arg(long = "else")]
    failure: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum MemberCmd {
    /// Lists voters and learners.
    List,
    /// Adds a learner and waits until it has caught up.
    AddLearner {
        id: u64,
        /// Its client address (host:port).
        client_addr: String,
        /// Its peer address (host:port).
        peer_addr: String,
        /// Return without waiting for it to catch up.
        #[arg(long)]
        no_wait: bool,
    },
    /// Makes learners voters.
    Promote {
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Removes a voter or a learner.
    Remove { id: u64 },
    /// Sets the voters to exactly these members (joint consensus).
    SetVoters {
        #[arg(required = true, value_delimiter = ',')]
        ids: Vec<u64>,
    },
}

/// Parses `5s`, `250ms`, `2m`, or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 5s, 250ms, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m)")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("{s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A failed command: the message for stderr.
struct Failed(String);

impl From<cairn_client::Error> for Failed {
    fn from(e: cairn_client::Error) -> Self {
        Failed(e.to_string())
    }
}

impl From<std::io::Error> for Failed {
    fn from(e: std::io::Error) -> Self {
        Failed(e.to_string())
    }
}

type Outcome = Result<(), Failed>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Completion { shell } = cli.cmd {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "cairnctl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(msg)) => {
            eprintln!("Error: {msg}");
            ExitCode::from(1)
        }
    }
}

fn config(cli: &Cli) -> ClientConfig {
    ClientConfig {
        timeout: cli.timeout,
        attempt_timeout: cli.timeout.min(Duration::from_secs(2)),
        ..ClientConfig::default()
    }
}

async fn run(cli: Cli) -> Outcome {
    let fmt = cli.output;
    let cfg = config(&cli);
    if let Cmd::Bench(args) = &cli.cmd {
        return bench::run(&cli.endpoints, cfg, args, fmt)
            .await
            .map_err(Failed);
    }
    let c = Client::connect_with(&cli.endpoints, cfg).await?;
    let mut out = std::io::stdout().lock();
    match cli.cmd {
        Cmd::Put {
            key,
            value,
            prev_kv,
        } => {
            let value = match value {
                Some(v) => v.into_bytes(),
                None => {
                    let mut v = Vec::new();
                    std::io::stdin().read_to_end(&mut v)?;
                    v
                }
            };
            let r = c.put_full(&key, &value, prev_kv).await?;
            match fmt {
                Format::Json => writeln!(
                    out,
                    "{}",
                    json!({"revision": r.revision, "prev_kv": r.prev.as_ref().map(kv_json)})
                )?,
                Format::Simple => {
                    writeln!(out, "OK")?;
                    if let Some(p) = &r.prev {
                        writeln!(out, "{}\n{}", text(&p.key), text(&p.value))?;
                    }
                }
                Format::Table => {
                    let mut t = Table::new(&["REVISION", "PREVIOUS VALUE"]);
                    t.row(vec![
                        r.revision.to_string(),
                        r.prev.as_ref().map_or(String::new(), |p| text(&p.value)),
                    ]);
                    write!(out, "{}", t.render())?;
                }
            }
        }
        Cmd::Get {
            key,
            serializable,
            rev_info,
        } => {
            let consistency = if serializable {
                Consistency::Serializable
            } else {
                Consistency::Linearizable
            };
            let r = c.get_with(&key, consistency).await?;
            match fmt {
                Format::Json => writeln!(
                    out,
                    "{}",
                    json!({"revision": r.header.revision, "kv": r.kv.as_ref().map(kv_json)})
                )?,
                Format::Simple => {
                    if let Some(kv) = &r.kv {
                        writeln!(out, "{}\n{}", text(&kv.key), text(&kv.value))?;
                        if rev_info {
                            writeln!(
                                out,
                                "create_revision={} mod_revision={} version={}",
                                kv.create_revision, kv.mod_revision, kv.version
                            )?;
                        }
                    }
                }
                Format::Table => {
                    if let Some(kv) = &r.kv {
                        write!(
                            out,
                            "{}",
                            kv_table(std::slice::from_ref(kv), false, rev_info).render()
                        )?;
                    }
                }
            }
        }
        Cmd::Del {
            key,
            prefix,
            prev_kv,
        } => {
            let (k, is_prefix) = match (key, prefix) {
                (_, Some(p)) => (p, true),
                (Some(k), None) => (k, false),
                (None, None) => return Err(Failed("a key or --prefix is required".into())),
            };
            let r = c.delete_full(&k, is_prefix, prev_kv).await?;
            match fmt {
                Format::Json => writeln!(
                    out,
                    "{}",
                    json!({"revision": r.revision, "deleted": r.deleted,
                           "prev_kvs": r.prev.iter().map(kv_json).collect::<Vec<_>>()})
                )?,
                Format::Simple => {
                    writeln!(out, "{}", r.deleted)?;
                    for p in &r.prev {
                        writeln!(out, "{}\n{}", text(&p.key), text(&p.value))?;
                    }
                }
                Format::Table => {
                    let mut t = Table::new(&["DELETED", "REVISION"]);
                    t.row(vec![r.deleted.to_string(), r.revision.to_string()]);
                    write!(out, "{}", t.render())?;
                    if !r.prev.is_empty() {
                        write!(out, "{}", kv_table(&r.prev, false, false).render())?;
                    }
                }
            }
        }
        Cmd::Scan {
            prefix,
            from,
            to,
            limit,
            keys_only,
            serializable,
            rev_info,
        } => {
            let mut scan = match (prefix, from, to) {
                (Some(p), _, _) => Scan::prefix(p),
                (None, None, None) => Scan::all(),
                (None, f, t) => Scan::range(f.unwrap_or_default(), t.unwrap_or_default()),
            };
            if let Some(l) = limit {
                scan = scan.limit(l);
            }
            if keys_only {
                scan = scan.keys_only();
            }
            if serializable {
                scan = scan.consistency(Consistency::Serializable);
            }
            let mut stream = Box::pin(c.scan(scan));
            let mut kvs: Vec<KeyValue> = Vec::new();
            while let Some(kv) = stream.next().await {
                let kv = kv?;
                // Plain and JSON lines stream; a table needs every row.
                match fmt {
                    Format::Simple => {
                        writeln!(out, "{}", text(&kv.key))?;
                        if !keys_only {
                            writeln!(out, "{}", text(&kv.value))?;
                        }
                    }
                    Format::Json => writeln!(out, "{}", kv_json(&kv))?,
                    Format::Table => kvs.push(kv),
                }
            }
            if fmt == Format::Table {
                write!(out, "{}", kv_table(&kvs, keys_only, rev_info).render())?;
            }
        }
        Cmd::Txn(args) => run_txn(&c, args, fmt, &mut out).await?,
        Cmd::Cas {
            key,
            expect,
            expect_absent: _,
            set,
        } => {
            let rev = c
                .cas(&key, expect.as_deref().map(str::as_bytes), &set)
                .await?;
            match fmt {
                Format::Json => writeln!(out, "{}", json!({"revision": rev}))?,
                Format::Simple => writeln!(out, "OK")?,
                Format::Table => {
                    let mut t = Table::new(&["REVISION"]);
                    t.row(vec![rev.to_string()]);
                    write!(out, "{}", t.render())?;
                }
            }
        }
        Cmd::Watch {
            key,
            prefix,
            rev,
            count,
        } => {
            let mut w = match (key, prefix) {
                (_, Some(p)) => Watch::prefix(p),
                (Some(k), None) => Watch::key(k),
                (None, None) => return Err(Failed("a key or --prefix is required".into())),
            };
            if let Some(r) = rev {
                w = w.from_revision(r);
            }
            let mut stream = c.watch(w).await?;
            let mut seen = 0u64;
            drop(out);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                let mut out = std::io::stdout().lock();
                for e in &batch.events {
                    let kind = match e.kind {
                        EventKind::Put => "PUT",
                        EventKind::Delete => "DELETE",
                    };
                    match fmt {
                        Format::Json => writeln!(
                            out,
                            "{}",
                            json!({"type": kind, "revision": batch.revision, "kv": kv_json(&e.kv)})
                        )?,
                        Format::Simple => {
                            writeln!(out, "{kind}\n{}", text(&e.kv.key))?;
                            if e.kind == EventKind::Put {
                                writeln!(out, "{}", text(&e.kv.value))?;
                            }
                        }
                        Format::Table => writeln!(
                            out,
                            "{:<6} rev={:<8} {} {}",
                            kind,
                            batch.revision,
                            text(&e.kv.key),
                            text(&e.kv.value)
                        )?,
                    }
                    seen += 1;
                }
                out.flush()?;
                if count.is_some_and(|n| seen >= n) {
                    return Ok(());
                }
            }
            return Err(Failed("the watch ended".into()));
        }
        Cmd::Status => {
            let all = c.status_all().await;
            print_status(&all, fmt, &mut out)?;
            if all.iter().all(|m| m.status.is_err()) {
                return Err(Failed("no member answered".into()));
            }
        }
        Cmd::Health => {
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
        }
        Cmd::Member(m) => {
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
            print_members(&r, fmt, &mut out)?;
        }
        Cmd::TransferLeader { to } => {
            let leader = c.transfer_leader(to.unwrap_or(0)).await?;
            match fmt {
                Format::Json => writeln!(out, "{}", json!({"leader": leader}))?,
                _ => writeln!(out, "leader is now node {leader}")?,
            }
        }
        Cmd::Snapshot => {
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
        }
        Cmd::Bench(_) | Cmd::Completion { .. } => unreachable!("handled above"),
    }
    Ok(())
}

async fn run_txn(c: &Client, args: TxnArgs, fmt: Format, out: &mut impl Write) -> Outcome {
    let (compares, success, failure) =
        if args.compares.is_empty() && args.success.is_empty() && args.failure.is_empty() {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            txn::parse_script(&s).map_err(Failed)?
        } else {
            let parse_ops =
                |v: &[String]| v.iter().map(|l| txn::op(l)).collect::<Result<Vec<_>, _>>();
            (
                args.compares
                    .iter()
                    .map(|l| txn::compare(l))
                    .collect::<Result<_, _>>()
                    .map_err(Failed)?,
                parse_ops(&args.success).map_err(Failed)?,
                parse_ops(&args.failure).map_err(Failed)?,
            )
        };
    let r = c
        .txn()
        .when(compares)
        .and_then(success)
        .or_else(failure)
        .commit()
        .await?;
    let verdict = if r.succeeded { "SUCCESS" } else { "FAILURE" };
    match fmt {
        Format::Json => {
            let responses: Vec<_> = r
                .responses
                .iter()
                .map(|op| match &op.response {
                    Some(OpResponse::Put(_)) => json!({"put": "OK"}),
                    Some(OpResponse::Get(g)) => json!({"get": g.kv.as_ref().map(kv_json)}),
                    Some(OpResponse::Delete(d)) => json!({"delete": d.deleted}),
                    Some(OpResponse::Scan(s)) => {
                        json!({"scan": s.kvs.iter().map(kv_json).collect::<Vec<_>>()})
                    }
                    None => json!(null),
                })
                .collect();
            writeln!(
                out,
                "{}",
                json!({"succeeded": r.succeeded, "revision": r.revision, "responses": responses})
            )?;
        }
        _ => {
            writeln!(out, "{verdict}")?;
            for op in &r.responses {
                match &op.response {
                    Some(OpResponse::Put(_)) => writeln!(out, "\nOK")?,
                    Some(OpResponse::Get(g)) => {
                        writeln!(out)?;
                        if let Some(kv) = &g.kv {
                            writeln!(out, "{}\n{}", text(&kv.key), text(&kv.value))?;
                        }
                    }
                    Some(OpResponse::Delete(d)) => writeln!(out, "\n{}", d.deleted)?,
                    Some(OpResponse::Scan(s)) => {
                        writeln!(out)?;
                        for kv in &s.kvs {
                            writeln!(out, "{}\n{}", text(&kv.key), text(&kv.value))?;
                        }
                    }
                    None => {}
                }
            }
        }
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
                    "error": null,
                }));
                t.row(vec![
                    m.id.to_string(),
                    m.addr.clone(),
                    role.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
