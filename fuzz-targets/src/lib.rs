//! cairn's fuzz targets: every decoder of what a disk or a peer or client
//! hands a node, fed arbitrary bytes. Each must return (an error is fine)
//! and never panic, loop or allocate without bound.
//!
//! Coverage-guided runs use libFuzzer through `cargo fuzz` (the crate in
//! `fuzz/`, on a nightly toolchain: `cargo +nightly fuzz run frame`); the
//! corpus lives in `fuzz/corpus/<target>/`. `cargo test` replays the corpus
//! and a bounded number of mutations of it on stable (`tests/corpus.rs`),
//! and every crash found becomes a file of the corpus.

/// A fuzz target: a name (its corpus directory) and its entry point.
pub struct Target {
    /// The name, as `cargo fuzz run <name>` takes it.
    pub name: &'static str,
    /// Feeds one input to the decoder.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame",
        run: frame,
    },
    Target {
        name: "lsm_table",
        run: cairn_lsm::fuzz_entry::table,
    },
    Target {
        name: "lsm_manifest",
        run: cairn_lsm::fuzz_entry::manifest,
    },
    Target {
        name: "lsm_wal",
        run: cairn_lsm::fuzz_entry::wal,
    },
    Target {
        name: "raft_log",
        run: cairn_node::fuzz_entry::raft_log,
    },
    Target {
        name: "raft_messages",
        run: cairn_node::fuzz_entry::raft_messages,
    },
    Target {
        name: "client_requests",
        run: cairn_node::fuzz_entry::client_requests,
    },
    Target {
        name: "kv_state",
        run: cairn_node::fuzz_entry::kv_state,
    },
    Target {
        name: "snapshot_stream",
        run: cairn_node::fuzz_entry::snapshot_stream,
    },
    Target {
        name: "small_files",
        run: cairn_node::fuzz_entry::small_files,
    },
];

/// The record framing of every log and manifest, in both sync modes.
pub fn frame(data: &[u8]) {
    use cairn_io::frame::{decode_all, Syncs};
    for syncs in [Syncs::EachRecord, Syncs::Marked] {
        let mut copy = data.to_vec();
        let _ = decode_all(&mut copy, syncs);
    }
}

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
