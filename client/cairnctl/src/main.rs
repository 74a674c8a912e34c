//! `cairnctl`: the command-line client and admin tool of cairn.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 usage error.

mod admin;
mod bench;
mod data;
mod output;
mod txn;

use std::process::ExitCode;
use std::time::Duration;

use cairn_client::{Client, ClientConfig};
use clap::{Args, CommandFactory, Parser, Subcommand};
use output::Format;

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
    Scan(ScanArgs),
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
    /// Consistency checks: `check hash` compares every member's hash of
    /// the whole state at one entry (exit 1 on a mismatch, which raises
    /// CORRUPT for the members that differ).
    #[command(subcommand)]
    Check(CheckCmd),
    /// Alarms (NOSPACE, CORRUPT): list, or disarm every raised one.
    #[command(subcommand)]
    Alarm(AlarmCmd),
    /// Shows the cluster-wide settings, or changes those given.
    Settings {
        /// Revisions of watch history kept.
        #[arg(long)]
        history_revisions: Option<u64>,
        /// Seconds a client's request-id session lives without a write.
        #[arg(long)]
        session_ttl_secs: Option<u64>,
    },
    /// Load generator: put, get, mixed, txn-cas.
    Bench(bench::BenchArgs),
    /// Prints a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `cairnctl scan`'s arguments.
#[derive(Args, Debug)]
struct ScanArgs {
    /// Keys that start with this.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub(crate) prefix: Option<String>,
    /// First key of the range (inclusive).
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// End of the range (exclusive).
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// Most pairs to print.
    #[arg(long)]
    pub(crate) limit: Option<u64>,
    /// Keys only.
    #[arg(long)]
    pub(crate) keys_only: bool,
    /// Read from the answering node's own state (possibly stale).
    #[arg(long)]
    pub(crate) serializable: bool,
    /// Print create/mod revision and version.
    #[arg(long)]
    pub(crate) rev_info: bool,
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

#[derive(Subcommand, Debug, Clone, Copy)]
enum CheckCmd {
    /// Every member's hash of the replicated state at one new entry.
    Hash,
}

#[derive(Subcommand, Debug, Clone, Copy)]
enum AlarmCmd {
    /// Lists the raised alarms (nothing when none is).
    List,
    /// Disarms every raised alarm (one still true is raised again by its
    /// member within a second).
    Disarm,
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
    let out = &mut std::io::stdout().lock();
    match cli.cmd {
        Cmd::Put {
            key,
            value,
            prev_kv,
        } => data::put(&c, key, value, prev_kv, fmt, out).await,
        Cmd::Get {
            key,
            serializable,
            rev_info,
        } => data::get(&c, key, serializable, rev_info, fmt, out).await,
        Cmd::Del {
            key,
            prefix,
            prev_kv,
        } => data::del(&c, key, prefix, prev_kv, fmt, out).await,
        Cmd::Scan(args) => data::scan(&c, args, fmt, out).await,
        Cmd::Txn(args) => data::txn(&c, args, fmt, out).await,
        Cmd::Cas {
            key,
            expect,
            expect_absent: _,
            set,
        } => data::cas(&c, key, expect, set, fmt, out).await,
        Cmd::Watch {
            key,
            prefix,
            rev,
            count,
        } => data::watch(&c, key, prefix, rev, count, fmt).await,
        Cmd::Status => admin::status(&c, fmt, out).await,
        Cmd::Health => admin::health(&c, fmt, out).await,
        Cmd::Member(m) => admin::member(&c, m, fmt, out).await,
        Cmd::TransferLeader { to } => admin::transfer_leader(&c, to, fmt, out).await,
        Cmd::Snapshot => admin::snapshot(&c, fmt, out).await,
        Cmd::Alarm(a) => admin::alarm(&c, a, fmt, out).await,
        Cmd::Check(CheckCmd::Hash) => admin::check_hash(&c, fmt, out).await,
        Cmd::Settings {
            history_revisions,
            session_ttl_secs,
        } => admin::settings(&c, history_revisions, session_ttl_secs, fmt, out).await,
        Cmd::Bench(_) | Cmd::Completion { .. } => unreachable!("handled above"),
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
