//! Every cairnctl subcommand against a real 3-node cluster on loopback:
//! output in table, json and simple modes, and exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use assert_cmd::Command;
use cairn_testing::TestCluster;
use serde_json::Value;

struct Ctl {
    endpoints: String,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Out {
        self.run_stdin(args, "")
    }

    fn run_stdin(&self, args: &[&str], stdin: &str) -> Out {
        let o = Command::cargo_bin("cairnctl")
            .unwrap()
            .args(["--endpoints", &self.endpoints])
            .args(args)
            .write_stdin(stdin.to_string())
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap();
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Runs a command that must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(
            o.code, 0,
            "cairnctl {args:?} failed: {}{}",
            o.stdout, o.stderr
        );
        o.stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-o", "json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }
}

/// Retries `f` (10 s at most) until it gives a value.
fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "never happened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_commands() {
    let c = TestCluster::start(3, &[]).await;
    let ctl = Ctl {
        endpoints: c.endpoints().join(","),
    };

    // put / get in every format.
    let t = ctl.ok(&["put", "first", "x"]);
    assert!(
        t.contains("| REVISION | PREVIOUS VALUE |") && t.lines().count() == 5,
        "{t}"
    );
    assert_eq!(
        ctl.ok(&["-o", "simple", "put", "greeting", "hello"]),
        "OK\n"
    );
    let j = ctl.json(&["put", "greeting", "hi", "--prev-kv"]);
    assert_eq!(j["prev_kv"]["value"], "hello");
    let rev = j["revision"].as_u64().unwrap();
    assert!(rev > 0);
    assert_eq!(
        ctl.ok(&["-o", "simple", "get", "greeting"]),
        "greeting\nhi\n"
    );
    let j = ctl.json(&["get", "greeting"]);
    assert_eq!(j["kv"]["value"], "hi");
    assert_eq!(j["kv"]["mod_revision"].as_u64(), Some(rev));
    assert_eq!(j["kv"]["version"].as_u64(), Some(2));
    let t = ctl.ok(&["get", "greeting", "--rev-info"]);
    assert!(
        t.contains("| KEY") && t.contains("MOD REV") && t.contains("| greeting | hi"),
        "{t}"
    );
    // A serializable read may be served by a replica that is behind; it
    // catches up.
    let want = format!("mod_revision={rev} version=2");
    let s = eventually(|| {
        let s = ctl.ok(&[
            "-o",
            "simple",
            "get",
            "greeting",
            "--serializable",
            "--rev-info",
        ]);
        s.contains(&want).then_some(s)
    });
    assert!(s.contains("greeting\nhi\n"), "{s}");
    // A missing key prints nothing and succeeds.
    assert_eq!(ctl.ok(&["-o", "simple", "get", "nope"]), "");
    assert_eq!(ctl.json(&["get", "nope"])["kv"], Value::Null);
    // The value from stdin.
    let o = ctl.run_stdin(&["put", "fromstdin"], "piped value");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        ctl.json(&["get", "fromstdin"])["kv"]["value"],
        "piped value"
    );

    // scan: prefix, range, limit, keys-only.
    for i in 0..5 {
        ctl.ok(&["put", &format!("s/{i}"), &format!("v{i}")]);
    }
    assert_eq!(
        ctl.ok(&["-o", "simple", "scan", "--prefix", "s/", "--keys-only"]),
        "s/0\ns/1\ns/2\ns/3\ns/4\n"
    );
    assert_eq!(
        ctl.ok(&["-o", "simple", "scan", "--from", "s/1", "--to", "s/3"]),
        "s/1\nv1\ns/2\nv2\n"
    );
    let lines = ctl.ok(&["-o", "json", "scan", "--prefix", "s/", "--limit", "2"]);
    let kvs: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(kvs.len(), 2);
    assert_eq!(kvs[1]["key"], "s/1");
    let t = eventually(|| {
        let t = ctl.ok(&["scan", "--prefix", "s/", "--serializable"]);
        (t.lines().filter(|l| l.starts_with("| s/")).count() == 5).then_some(t)
    });
    assert_eq!(
        t.lines().filter(|l| l.starts_with("| s/")).count(),
        5,
        "{t}"
    );

    // txn from flags and from stdin.
    let j = ctl.json(&[
        "txn",
        "-c",
        r#"value("greeting") = "hi""#,
        "--then",
        "put greeting hey",
        "--then",
        "get s/0",
        "--else",
        "get greeting",
    ]);
    assert_eq!(j["succeeded"], true);
    assert_eq!(j["responses"][1]["get"]["value"], "v0");
    let o = ctl.run_stdin(
        &["-o", "simple", "txn"],
        "value(\"greeting\") = \"hi\"\n\nput greeting never\n\nget greeting\n",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "FAILURE\n\ngreeting\nhey\n");
    let t = ctl.ok(&[
        "txn",
        "-c",
        "version(\"greeting\") > 100",
        "--else",
        "get greeting",
    ]);
    assert_eq!(t, "FAILURE\n\ngreeting\nhey\n");
    let o = ctl.run_stdin(&["txn"], "value(k) ~ 1\n");
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("bad compare"), "{}", o.stderr);

    // cas: success, then a failed compare (exit 1, current value named).
    assert_eq!(
        ctl.ok(&["-o", "simple", "cas", "greeting", "--expect", "hey", "--set", "yo"]),
        "OK\n"
    );
    let o = ctl.run(&["cas", "greeting", "--expect", "hey", "--set", "no"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("compare failed") && o.stderr.contains("yo"),
        "{}",
        o.stderr
    );
    assert_eq!(
        ctl.ok(&[
            "-o",
            "simple",
            "cas",
            "fresh",
            "--expect-absent",
            "--set",
            "1"
        ]),
        "OK\n"
    );
    assert_eq!(
        ctl.run(&["cas", "fresh", "--expect-absent", "--set", "2"])
            .code,
        1
    );

    let t = ctl.ok(&["cas", "fresh", "--expect", "1", "--set", "3"]);
    assert!(t.contains("| REVISION") && t.lines().count() == 5, "{t}");
    let j = ctl.json(&["cas", "fresh", "--expect", "3", "--set", "1"]);
    assert!(j["revision"].as_u64().unwrap() > 0, "{j}");

    // del: a key, then a prefix.
    let t = ctl.ok(&["del", "nothing-here"]);
    assert!(t.contains("| DELETED") && t.contains("| 0 "), "{t}");
    assert_eq!(ctl.ok(&["-o", "simple", "del", "fresh"]), "1\n");
    let j = ctl.json(&["del", "--prefix", "s/", "--prev-kv"]);
    assert_eq!(j["deleted"].as_u64(), Some(5));
    assert_eq!(j["prev_kvs"].as_array().unwrap().len(), 5);
    assert_eq!(ctl.ok(&["-o", "simple", "scan", "--prefix", "s/"]), "");

    // watch: history from a revision, and --count ends it.
    let from = ctl.json(&["put", "w/a", "1"])["revision"].as_u64().unwrap();
    ctl.ok(&["put", "w/b", "2"]);
    ctl.ok(&["del", "w/a"]);
    let out = ctl.ok(&[
        "-o",
        "simple",
        "watch",
        "--prefix",
        "w/",
        "--rev",
        &from.to_string(),
        "--count",
        "3",
    ]);
    assert_eq!(out, "PUT\nw/a\n1\nPUT\nw/b\n2\nDELETE\nw/a\n");
    let out = ctl.ok(&[
        "-o",
        "json",
        "watch",
        "w/b",
        "--rev",
        &from.to_string(),
        "--count",
        "1",
    ]);
    let e: Value = serde_json::from_str(out.trim()).unwrap();
    let t = ctl.ok(&["watch", "w/b", "--rev", &from.to_string(), "--count", "1"]);
    assert!(t.starts_with("PUT") && t.contains("w/b 2"), "{t}");
    assert_eq!(
        (e["type"].as_str(), e["kv"]["value"].as_str()),
        (Some("PUT"), Some("2"))
    );
    // A live watch sees a write made after it started.
    let endpoints = ctl.endpoints.clone();
    let watcher = std::thread::spawn(move || {
        Ctl { endpoints }.ok(&["-o", "simple", "watch", "live", "--count", "1"])
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ctl.ok(&["put", "live", "now"]);
    assert_eq!(watcher.join().unwrap(), "PUT\nlive\nnow\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_commands() {
    let mut c = TestCluster::start(3, &[]).await;
    let ctl = Ctl {
        endpoints: c.endpoints().join(","),
    };
    let leader = c.wait_leader(Duration::from_secs(10)).await;

    // status: one row per member, the leader agreed on.
    let t = ctl.ok(&["status"]);
    assert!(
        t.contains("| ID") && t.contains("ROLE") && t.contains("DISK"),
        "{t}"
    );
    assert_eq!(t.matches("| leader").count(), 1, "{t}");
    assert_eq!(t.matches("| follower").count(), 2, "{t}");
    let j = ctl.json(&["status"]);
    let rows = j.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["leader"].as_u64() == Some(leader)));

    // health: every member live, and ready once it has applied what is
    // committed (readiness is refreshed periodically).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let t = loop {
        let o = ctl.run(&["-o", "simple", "health"]);
        if o.code == 0 {
            break o.stdout;
        }
        assert_eq!(o.code, 1, "{}", o.stderr);
        assert!(o.stderr.contains("unhealthy"), "{}", o.stderr);
        assert!(
            std::time::Instant::now() < deadline,
            "never healthy: {}",
            o.stdout
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(t.matches("is healthy").count(), 3, "{t}");
    let t = ctl.ok(&["health"]);
    assert!(
        t.contains("| ENDPOINT") && t.matches("| true    | true | true ").count() == 3,
        "{t}"
    );
    let j = ctl.json(&["health"]);
    assert!(j.as_array().unwrap().iter().all(|h| h["ready"] == true));

    // member list / add-learner / promote / remove.
    let j = ctl.json(&["member", "list"]);
    assert_eq!(j["members"].as_array().unwrap().len(), 3);
    assert_eq!(j["leader"].as_u64(), Some(leader));
    c.add_idle_node(4, &[]);
    let (client4, peer4) = (c.nodes[&4].client.clone(), c.nodes[&4].peer.clone());
    let j = ctl.json(&["member", "add-learner", "4", &client4, &peer4]);
    let m4 = j["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == 4)
        .cloned();
    assert_eq!(m4.unwrap()["is_learner"], true);
    let t = ctl.ok(&["member", "promote", "4"]);
    assert!(
        t.contains("| 4 ") && !t.contains("| true       | false"),
        "{t}"
    );
    let j = ctl.json(&["member", "list"]);
    assert!(j["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["is_learner"] == false));
    // set-voters leaves out node 4, which leaves the cluster.
    let j = ctl.json(&["member", "set-voters", "1,2,3"]);
    let ids: Vec<u64> = j["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3]);
    c.add_idle_node(5, &[]);
    let (client5, peer5) = (c.nodes[&5].client.clone(), c.nodes[&5].peer.clone());
    let s = ctl.ok(&[
        "-o",
        "simple",
        "member",
        "add-learner",
        "5",
        &client5,
        &peer5,
        "--no-wait",
    ]);
    assert!(
        s.contains(&format!("5, {client5}, {peer5}, learner")),
        "{s}"
    );
    let s = ctl.ok(&["-o", "simple", "member", "remove", "5"]);
    assert_eq!(s.lines().count(), 3, "{s}");
    let o = ctl.run(&["member", "remove", "9"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("not a member"), "{}", o.stderr);

    // transfer-leader to a named voter, then to any.
    let to = (1..=3).find(|&i| i != leader).unwrap();
    let j = ctl.json(&["transfer-leader", &to.to_string()]);
    assert_eq!(j["leader"].as_u64(), Some(to));
    let s = ctl.ok(&["transfer-leader"]);
    assert!(s.starts_with("leader is now node "), "{s}");

    let s = ctl.ok(&["transfer-leader", &leader.to_string()]);
    assert_eq!(s, format!("leader is now node {leader}\n"));

    // snapshot on every member.
    ctl.ok(&["put", "before-snapshot", "x"]);
    let t = ctl.ok(&["snapshot"]);
    assert!(
        t.contains("| SNAPSHOT INDEX") && t.lines().count() == 7,
        "{t}"
    );
    let j = ctl.json(&["snapshot"]);
    let rows = j.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter().all(|r| r["index"].as_u64().unwrap_or(0) > 0),
        "{j}"
    );

    // bench: a short run prints the JSON line docs/benchmarks.md documents.
    let j = ctl.json(&[
        "bench",
        "put",
        "--clients",
        "4",
        "--ops",
        "200",
        "--key-space",
        "50",
    ]);
    for k in [
        "workload",
        "clients",
        "conns",
        "ops",
        "secs",
        "ops_per_sec",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
        "errors",
    ] {
        assert!(j.get(k).is_some(), "{k} missing: {j}");
    }
    assert_eq!(j["ops"].as_u64(), Some(200));
    assert_eq!(j["errors"].as_u64(), Some(0));
    assert!(
        j.get("start_late_p50_us").is_none(),
        "no rate, no lateness: {j}"
    );
    let t = ctl.ok(&[
        "bench",
        "get",
        "--serializable",
        "--clients",
        "2",
        "--ops",
        "100",
    ]);
    assert!(t.contains("get-serializable") && t.contains("OPS/S"), "{t}");
    let j = ctl.json(&[
        "bench",
        "txn-cas",
        "--clients",
        "2",
        "--ops",
        "50",
        "--target-leader",
    ]);
    assert_eq!(j["ops"].as_u64(), Some(50));
    let j = ctl.json(&[
        "bench",
        "mixed",
        "--clients",
        "2",
        "--duration",
        "1s",
        "--rate",
        "100",
        "--read-fraction",
        "0.5",
    ]);
    assert!(j["ops"].as_u64().unwrap() <= 110, "{j}");
    // At a rate, how late operations started is reported (it is part of
    // their latencies): never more than the latencies themselves.
    let late = j["start_late_p50_us"].as_u64().expect("start_late_p50_us");
    assert!(late <= j["p50_us"].as_u64().unwrap(), "{j}");
    assert!(j["start_late_p99_us"].as_u64().is_some(), "{j}");
    // Several connections, a preloaded key space, everything to the leader.
    let j = ctl.json(&[
        "bench",
        "get",
        "--clients",
        "4",
        "--conns",
        "2",
        "--ops",
        "100",
        "--key-space",
        "20",
        "--value-size",
        "16",
        "--preload",
        "--target-leader",
    ]);
    assert_eq!(
        (j["ops"].as_u64(), j["errors"].as_u64()),
        (Some(100), Some(0)),
        "{j}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_exit_codes() {
    let c = TestCluster::start(1, &["--max-value-bytes", "1024"]).await;
    let ctl = Ctl {
        endpoints: c.endpoints().join(","),
    };
    // Usage errors: exit 2 with clap's message.
    let o = ctl.run(&["put", "k", "v", "--frobnicate"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("--frobnicate"), "{}", o.stderr);
    let o = ctl.run(&["get"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("<KEY>"), "{}", o.stderr);
    assert_eq!(ctl.run(&["del"]).code, 2);
    assert_eq!(ctl.run(&["--timeout", "soon", "get", "k"]).code, 2);
    assert_eq!(ctl.run(&["frobnicate"]).code, 2);
    // An oversized value: the limit named, exit 1, nothing written.
    let big = "x".repeat(2000);
    let o = ctl.run(&["put", "big", &big]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("invalid argument") && o.stderr.contains("1024"),
        "{}",
        o.stderr
    );
    assert_eq!(ctl.ok(&["-o", "simple", "get", "big"]), "");
    // An unreachable endpoint: exit 1 within the timeout, a clear message.
    let port = cairn_testing::free_port();
    let o = Command::cargo_bin("cairnctl")
        .unwrap()
        .args([
            "--endpoints",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "1s",
            "get",
            "k",
        ])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unavailable") && err.contains(&port.to_string()),
        "{err}"
    );
    // A malformed endpoint.
    let o = ctl.run(&["--endpoints", "nonsense", "get", "k"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("not host:port"), "{}", o.stderr);
    // Completions.
    let s = ctl.ok(&["completion", "bash"]);
    assert!(s.contains("cairnctl"), "{s}");
}

/// `cairnctl alarm list|disarm`: a cluster whose nodes are past a tiny
/// quota raises NOSPACE; a put exits 1 naming it; disarming lists what it
/// disarmed, and the nodes raise it again while they are past the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_commands() {
    let c = TestCluster::start(3, &["--quota-bytes", "1"]).await;
    let ctl = Ctl {
        endpoints: c.endpoints().join(","),
    };
    c.wait_leader(Duration::from_secs(10)).await;
    let listed = eventually(|| {
        let out = ctl.ok(&["alarm", "list"]);
        (out.lines().count() == 3).then_some(out)
    });
    for id in 1..=3 {
        assert!(
            listed.contains(&format!("memberID:{id} alarm:NOSPACE")),
            "{listed}"
        );
    }
    let j = ctl.json(&["alarm", "list"]);
    assert_eq!(j["alarms"].as_array().unwrap().len(), 3, "{j}");
    let put = ctl.run(&["put", "k", "v"]);
    assert_eq!(put.code, 1, "{}{}", put.stdout, put.stderr);
    assert!(put.stderr.contains("NOSPACE"), "{}", put.stderr);
    let disarmed = ctl.ok(&["alarm", "disarm"]);
    assert_eq!(disarmed.lines().count(), 3, "{disarmed}");
    eventually(|| (ctl.ok(&["alarm", "list"]).lines().count() == 3).then_some(()));

    // check hash: the replicas agree (alarms do not stop the check).
    let t = ctl.ok(&["check", "hash"]);
    assert!(
        t.contains("| HASH") && t.matches("| ok").count() == 3,
        "{t}"
    );
    let j = ctl.json(&["check", "hash"]);
    let rows = j.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{j}");
    assert!(
        rows.iter()
            .all(|r| r["hash"] == rows[0]["hash"] && r["corrupt"] == false),
        "{j}"
    );
}
