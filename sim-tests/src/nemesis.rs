//! The nemesis: one fault at a time (a crash, a partition, a one-way cut,
//! held or slow links, a failing or full disk, a wiped disk, a flipped
//! bit in synced data), chosen by the run's seed and healed before the
//! next; and the operator, who replaces a node whose storage cannot be
//! trusted.

use std::sync::Arc;
use std::time::Duration;

use cairn_io::{Faults, MemFs};
use rand::Rng;

use crate::options::{Options, GATEWAY};

/// One fault at a time.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// Hosts crashed (their unsynced data lost).
    Crash(Vec<String>),
    /// Every link between the two sides cut both ways (one host alone, or
    /// a random minority/majority split).
    Split(Vec<String>, Vec<String>),
    /// A host's outgoing links cut: it hears the others, they do not hear
    /// it.
    Mute(String),
    /// A host's links held: messages wait and arrive late, at the heal.
    Hold(String),
    /// A host's links slow and jittery: each message's latency is drawn
    /// up to this many milliseconds (instead of the usual 100), around
    /// and past the election timeout.
    Slow(String, u64),
    /// A node's disk fails: every fsync fails (`None`; the node must
    /// stop, and the heal gives the disk back and restarts it from what
    /// it had synced), or it is full after this many more bytes (the node
    /// gives up its reserve, goes on and raises NOSPACE; the heal restarts
    /// it on the disk still full: the follow-up `FullDisk`).
    Disk(String, Option<u64>),
    /// A node restarted on a disk that is still full; the heal frees
    /// space (the operator disarms the alarm later).
    FullDisk(String),
    /// A voter loses its disk (restarted at once on an empty one), and,
    /// when a leader is named, that leader is cut off from everyone at the
    /// same time: the wiped node must not help elect a leader that lacks
    /// what it had acknowledged.
    Wipe(String, Option<String>),
    /// A voter is cut off from every host (it falls behind) while the
    /// others go on; at the heal it is reconnected and, at that moment,
    /// a second voter loses its disk and the leader is cut off: the
    /// follow-up `Wipe(wiped, Some(leader))`. The lagging voter must not
    /// win an election with the wiped one's vote, or what only the leader
    /// and the wiped voter held is lost.
    LagThenWipe {
        lagging: String,
        wiped: String,
        leader: String,
    },
    /// A bit flips in synced data of a node (its Raft log, a table or a
    /// manifest, by the number), and the node restarts and reads it; when
    /// a leader is named, it is cut off at the same time (as for `Wipe`).
    Flip(String, u8, Option<String>),
    /// The operator replaces a node that refused to start or stopped on
    /// corruption: its disk is wiped and it starts empty.
    Replace(String),
}

/// What a bit flip may hit: its name, whether a path of a node's data is
/// one, and whether the flip aims at the last bytes of the last such file
/// (the newest record, which a careless reader takes for a torn write).
type FlipTarget = (&'static str, fn(&str) -> bool, Option<u64>);
pub(crate) const FLIP_TARGETS: [FlipTarget; 4] = [
    ("Raft log", is_raft_log, None),
    ("Raft log's last record", is_raft_log, Some(64)),
    (
        "tables",
        |p| p.contains("/sm/") && p.ends_with(".sst"),
        None,
    ),
    (
        "manifest",
        |p| p.contains("/sm/") && p.contains("MANIFEST-"),
        None,
    ),
];

fn is_raft_log(p: &str) -> bool {
    p.contains("/raft/") && p.ends_with(".log")
}

/// The most a message takes on a healthy link (turmoil's default).
pub(crate) const NORMAL_LATENCY: Duration = Duration::from_millis(100);

/// The disk of host `n{i}`.
pub(crate) fn disk_of<'a>(disks: &'a [Arc<MemFs>], host: &str) -> Option<&'a Arc<MemFs>> {
    let i: usize = host.strip_prefix('n')?.parse().ok()?;
    disks.get(i.checked_sub(1)?)
}

impl Fault {
    pub(crate) fn describe(&self) -> String {
        match self {
            Fault::Crash(h) => format!("crash {}", h.join(",")),
            Fault::Split(a, b) => format!("split {} | {}", a.join(","), b.join(",")),
            Fault::Mute(h) => format!("mute {h} (one-way)"),
            Fault::Hold(h) => format!("hold {h}"),
            Fault::Slow(h, ms) => format!("slow {h} (latency up to {ms} ms)"),
            Fault::Disk(h, None) => format!("disk {h}: fsync fails"),
            Fault::Disk(h, Some(n)) => format!("disk {h}: full after {n} bytes"),
            Fault::FullDisk(h) => format!("disk {h}: restarted still full"),
            Fault::Wipe(h, None) => format!("wipe {h}"),
            Fault::Wipe(h, Some(l)) => format!("wipe {h}, isolate leader {l}"),
            Fault::LagThenWipe {
                lagging,
                wiped,
                leader,
            } => format!("lag {lagging}, then wipe {wiped} and isolate leader {leader}"),
            Fault::Flip(h, what, leader) => format!(
                "flip a bit in {h}'s {}{}",
                FLIP_TARGETS[*what as usize].0,
                leader
                    .as_ref()
                    .map_or(String::new(), |l| format!(", isolate leader {l}"))
            ),
            Fault::Replace(h) => format!("replace {h} (wiped, started empty)"),
        }
    }

    /// Starts the fault. Crashed hosts' disks lose their unsynced data
    /// after the hosts are gone (whatever the dying hosts' destructors
    /// wrote is lost too, as in a power cut), torn as `seed` says.
    pub(crate) fn apply(
        &self,
        sim: &mut turmoil::Sim<'_>,
        all: &[String],
        disks: &[Arc<MemFs>],
        seed: u64,
    ) -> String {
        let mut what = self.describe();
        match self {
            Fault::Crash(hosts) => {
                for h in hosts {
                    sim.crash(h.as_str());
                }
                for d in hosts.iter().filter_map(|h| disk_of(disks, h)) {
                    d.crash(true, seed);
                }
            }
            Fault::Split(a, b) => {
                for x in a {
                    for y in b {
                        sim.partition(x.as_str(), y.as_str());
                    }
                }
            }
            Fault::Mute(h) => {
                for o in all.iter().filter(|o| *o != h) {
                    sim.partition_oneway(h.as_str(), o.as_str());
                }
            }
            Fault::Hold(h) => {
                for o in all.iter().filter(|o| *o != h) {
                    sim.hold(h.as_str(), o.as_str());
                }
            }
            Fault::Slow(h, ms) => {
                for o in all.iter().filter(|o| *o != h) {
                    sim.set_link_max_message_latency(
                        h.as_str(),
                        o.as_str(),
                        Duration::from_millis(*ms),
                    );
                }
            }
            Fault::Disk(h, full) => {
                if let Some(d) = disk_of(disks, h) {
                    d.set_faults(Faults {
                        space_left: *full,
                        fail_sync: full.is_none(),
                    });
                }
            }
            Fault::Wipe(h, leader) => {
                isolate(sim, all, leader.as_ref());
                lose_disk(sim, disks, h);
            }
            Fault::FullDisk(h) => power_cycle(sim, disks, h, seed, false),
            Fault::LagThenWipe { lagging, .. } => isolate(sim, all, Some(lagging)),
            Fault::Flip(h, target, leader) => {
                isolate(sim, all, leader.as_ref());
                sim.crash(h.as_str());
                if let Some(d) = disk_of(disks, h) {
                    d.crash(true, seed);
                    let prefix = format!("/data/{h}/");
                    let (_, pick, window) = FLIP_TARGETS[*target as usize];
                    let pick = |p: &std::path::Path| {
                        p.to_str()
                            .is_some_and(|p| p.starts_with(&prefix) && pick(p))
                    };
                    let flipped = match window {
                        Some(w) => d.flip_bit_near_end(seed, w, pick),
                        None => d.flip_bit(seed, pick),
                    };
                    match flipped {
                        Some((path, offset)) => {
                            what = format!("{what}: {} at offset {offset}", path.display());
                        }
                        None => what = format!("{what}: none there"),
                    }
                }
                sim.bounce(h.as_str());
            }
            Fault::Replace(h) => lose_disk(sim, disks, h),
        }
        what
    }

    /// Ends the fault: restarts crashed hosts, reconnects cut links,
    /// releases held messages, gives a failed disk back (its node
    /// restarted from what it had synced). A fault in two steps returns
    /// its second, applied (or `None` when `may_lose_disk` forbids it).
    pub(crate) fn heal(
        &self,
        sim: &mut turmoil::Sim<'_>,
        all: &[String],
        disks: &[Arc<MemFs>],
        seed: u64,
        may_lose_disk: &dyn Fn(&str) -> bool,
    ) -> Option<Fault> {
        match self {
            Fault::LagThenWipe {
                lagging,
                wiped,
                leader,
            } => {
                reconnect(sim, all, lagging);
                if !may_lose_disk(wiped) {
                    return None;
                }
                let next = Fault::Wipe(wiped.clone(), Some(leader.clone()));
                next.apply(sim, all, disks, seed);
                return Some(next);
            }
            Fault::Crash(hosts) => {
                for h in hosts {
                    sim.bounce(h.as_str());
                }
            }
            Fault::Split(a, b) => {
                for x in a {
                    for y in b {
                        sim.repair(x.as_str(), y.as_str());
                    }
                }
            }
            Fault::Mute(h) => {
                for o in all.iter().filter(|o| *o != h) {
                    sim.repair_oneway(h.as_str(), o.as_str());
                }
            }
            Fault::Hold(h) => {
                for o in all.iter().filter(|o| *o != h) {
                    sim.release(h.as_str(), o.as_str());
                }
            }
            Fault::Slow(h, _) => {
                for o in all.iter().filter(|o| *o != h) {
                    sim.set_link_max_message_latency(h.as_str(), o.as_str(), NORMAL_LATENCY);
                }
            }
            Fault::Disk(h, Some(_)) => {
                let next = Fault::FullDisk(h.clone());
                next.apply(sim, all, disks, seed);
                return Some(next);
            }
            // The disk is given back (a full one stays full until then),
            // and the node restarted from what it synced (in case a full
            // disk used up its reserve too).
            Fault::Disk(h, None) | Fault::FullDisk(h) => power_cycle(sim, disks, h, seed, true),
            Fault::Wipe(_, Some(l)) | Fault::Flip(_, _, Some(l)) => reconnect(sim, all, l),
            Fault::Wipe(_, None) | Fault::Flip(_, _, None) | Fault::Replace(_) => {}
        }
        None
    }
}

/// Cuts `leader`, if named, off from every other host.
fn isolate(sim: &mut turmoil::Sim<'_>, all: &[String], leader: Option<&String>) {
    if let Some(l) = leader {
        for o in all.iter().filter(|o| *o != l) {
            sim.partition(l.as_str(), o.as_str());
        }
    }
}

/// Host `h` loses power (its disk keeps what it synced, torn as `seed`
/// says) and starts again; with `heal_disk`, its disk's faults are
/// cleared first.
fn power_cycle(
    sim: &mut turmoil::Sim<'_>,
    disks: &[Arc<MemFs>],
    h: &str,
    seed: u64,
    heal_disk: bool,
) {
    sim.crash(h);
    if let Some(d) = disk_of(disks, h) {
        if heal_disk {
            d.set_faults(Faults::default());
        }
        d.crash(true, seed);
    }
    sim.bounce(h);
}

/// Repairs every link of `h` that `isolate` cut.
fn reconnect(sim: &mut turmoil::Sim<'_>, all: &[String], h: &str) {
    for o in all.iter().filter(|o| *o != h) {
        sim.repair(h, o.as_str());
    }
}

/// Host `h` loses power and its disk, and starts again on an empty one.
fn lose_disk(sim: &mut turmoil::Sim<'_>, disks: &[Arc<MemFs>], h: &str) {
    sim.crash(h);
    if let Some(d) = disk_of(disks, h) {
        d.wipe();
    }
    sim.bounce(h);
}

/// A partition-type fault chosen by `rng`.
fn network_fault(rng: &mut impl Rng, all: &[String], leader: Option<&String>) -> Fault {
    let any = all[rng.random_range(0..all.len())].clone();
    // Half the single-host faults aim at the leader when one is known:
    // an isolated, muted or slowed leader is what tests elections most.
    let host = match (rng.random_bool(0.5), leader) {
        (true, Some(l)) => l.clone(),
        _ => any,
    };
    match rng.random_range(0..5) {
        0 => {
            let rest = all.iter().filter(|o| **o != host).cloned().collect();
            Fault::Split(vec![host], rest)
        }
        1 => {
            // A random minority (one or two hosts) against the rest.
            let mut hosts = all.to_vec();
            let mut minority = Vec::new();
            for _ in 0..rng.random_range(1..=2) {
                minority.push(hosts.remove(rng.random_range(0..hosts.len())));
            }
            Fault::Split(minority, hosts)
        }
        2 => Fault::Mute(host),
        3 => Fault::Hold(host),
        _ => Fault::Slow(host, rng.random_range(300..1500)),
    }
}

/// The next fault, chosen by `rng` among the kinds `opts` allows, given
/// the leader and the voters it was last seen with. A disk is wiped only
/// when `may_lose_disk` says the others can do without it.
pub(crate) fn next_fault(
    rng: &mut impl Rng,
    opts: &Options,
    nodes: &[String],
    leader: Option<&String>,
    voters: &[String],
    may_lose_disk: &dyn Fn(&str) -> bool,
) -> Option<Fault> {
    let mut kinds = Vec::new();
    if opts.crashes {
        kinds.extend([0, 0, 0]);
    }
    if opts.partitions {
        kinds.extend([1, 1, 1]);
    }
    if opts.disk_faults {
        kinds.push(2);
    }
    if opts.wipes {
        kinds.push(3);
    }
    if opts.bit_flips {
        kinds.push(4);
    }
    let kind = *kinds.get(rng.random_range(0..kinds.len().max(1)))?;
    let node = nodes[rng.random_range(0..nodes.len())].clone();
    Some(match kind {
        0 => {
            let hosts = if rng.random_bool(0.15) {
                // A power loss: every node at once.
                nodes.to_vec()
            } else if opts.gateway && rng.random_bool(0.1) {
                vec![GATEWAY.to_string()]
            } else {
                vec![node]
            };
            Fault::Crash(hosts)
        }
        1 => network_fault(rng, nodes, leader),
        2 => Fault::Disk(
            node,
            rng.random_bool(0.5).then(|| rng.random_range(0..256 << 10)),
        ),
        3 if rng.random_bool(0.5) => lag_then_wipe(rng, voters, leader?)?,
        3 => {
            let (target, isolate) = follower_and_leader(rng, nodes, leader, node);
            if !may_lose_disk(&target) {
                return None;
            }
            Fault::Wipe(target, isolate)
        }
        _ => {
            // A flipped bit may cost the node its data (the operator
            // replaces it): only while the others can do without it.
            let (target, isolate) = follower_and_leader(rng, nodes, leader, node);
            if !may_lose_disk(&target) {
                return None;
            }
            Fault::Flip(
                target,
                rng.random_range(0..FLIP_TARGETS.len() as u8),
                isolate,
            )
        }
    })
}

/// Two followers among `voters`: one to lag, one to wipe.
fn lag_then_wipe(rng: &mut impl Rng, voters: &[String], leader: &String) -> Option<Fault> {
    let mut followers: Vec<&String> = voters.iter().filter(|v| *v != leader).collect();
    if followers.len() < 2 {
        return None;
    }
    let lagging = followers
        .remove(rng.random_range(0..followers.len()))
        .clone();
    let wiped = followers[rng.random_range(0..followers.len())].clone();
    Some(Fault::LagThenWipe {
        lagging,
        wiped,
        leader: leader.clone(),
    })
}

/// A follower most often (the leader's own loss is a plain election),
/// and, half the time, the leader to cut off with it.
fn follower_and_leader(
    rng: &mut impl Rng,
    nodes: &[String],
    leader: Option<&String>,
    any: String,
) -> (String, Option<String>) {
    let target = match leader {
        Some(l) if rng.random_bool(0.8) => {
            let others: Vec<&String> = nodes.iter().filter(|n| *n != l).collect();
            others[rng.random_range(0..others.len())].clone()
        }
        _ => any,
    };
    let isolate = leader.filter(|l| **l != target && rng.random_bool(0.5));
    (target, isolate.cloned())
}
