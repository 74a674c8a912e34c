//! The data commands: put, get, del, scan, txn, cas, watch.

use std::io::{Read, Write};

use cairn_client::proto::kv::response_op::Response as OpResponse;
use cairn_client::{Client, Consistency, EventKind, KeyValue, Scan, Watch};
use futures::StreamExt;
use serde_json::json;

use crate::output::{kv_json, kv_table, text, Format, Table};
use crate::{txn as script, Failed, Outcome, ScanArgs, TxnArgs};

/// `cairnctl put`.
pub(crate) async fn put(
    c: &Client,
    key: String,
    value: Option<String>,
    prev_kv: bool,
    fmt: Format,
    out: &mut impl Write,
) -> Outcome {
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
    Ok(())
}

/// `cairnctl get`.
pub(crate) async fn get(
    c: &Client,
    key: String,
    serializable: bool,
    rev_info: bool,
    fmt: Format,
    out: &mut impl Write,
) -> Outcome {
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
    Ok(())
}

/// `cairnctl del`.
pub(crate) async fn del(
    c: &Client,
    key: Option<String>,
    prefix: Option<String>,
    prev_kv: bool,
    fmt: Format,
    out: &mut impl Write,
) -> Outcome {
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
    Ok(())
}

/// `cairnctl scan`.
pub(crate) async fn scan(c: &Client, args: ScanArgs, fmt: Format, out: &mut impl Write) -> Outcome {
    let ScanArgs {
        prefix,
        from,
        to,
        limit,
        keys_only,
        serializable,
        rev_info,
    } = args;
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
    Ok(())
}

/// `cairnctl cas`.
pub(crate) async fn cas(
    c: &Client,
    key: String,
    expect: Option<String>,
    set: String,
    fmt: Format,
    out: &mut impl Write,
) -> Outcome {
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
    Ok(())
}

/// `cairnctl watch`: streams to stdout, flushed after every batch.
pub(crate) async fn watch(
    c: &Client,
    key: Option<String>,
    prefix: Option<String>,
    rev: Option<u64>,
    count: Option<u64>,
    fmt: Format,
) -> Outcome {
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
    Err(Failed("the watch ended".into()))
}

/// `cairnctl txn`: from flags, or etcdctl's format on stdin.
pub(crate) async fn txn(c: &Client, args: TxnArgs, fmt: Format, out: &mut impl Write) -> Outcome {
    let (compares, success, failure) =
        if args.compares.is_empty() && args.success.is_empty() && args.failure.is_empty() {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            script::parse_script(&s).map_err(Failed)?
        } else {
            let parse_ops = |v: &[String]| {
                v.iter()
                    .map(|l| script::op(l))
                    .collect::<Result<Vec<_>, _>>()
            };
            (
                args.compares
                    .iter()
                    .map(|l| script::compare(l))
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
