//! A short, bounded run of every fuzz target on stable: the corpus in
//! `fuzz/corpus/<target>/`, then `FUZZ_CASES` (default 3,000) inputs per
//! target made by mutating it (bit flips, byte writes, cuts, splices,
//! random runs) from a fixed seed. A panic names the target and writes
//! the input to `target/fuzz-failures/`, ready to become a corpus file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use cairn_fuzz_targets::TARGETS;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let Ok(dir) = std::fs::read_dir(corpus_dir(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// A seeded generator, so a run is reproducible.
struct Rng(StdRng);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.random()
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.0.random_range(0..n)
        }
    }
}

fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut d = base.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = rng.next() as u8;
            }
            2 => d.truncate(rng.below(d.len() + 1)),
            3 if !other.is_empty() => {
                let at = rng.below(d.len() + 1);
                let from = rng.below(other.len());
                let n = rng.below(other.len() - from + 1);
                d.splice(at..at, other[from..from + n].iter().copied());
            }
            4 => {
                let at = rng.below(d.len() + 1);
                let run: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
                d.splice(at..at, run);
            }
            _ => {
                // An interesting value over 8 bytes (lengths, counts).
                if d.len() >= 8 {
                    let i = rng.below(d.len() - 7);
                    let v = [0u64, 1, u64::MAX, u32::MAX as u64, 1 << 31][rng.below(5)];
                    d[i..i + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    d
}

fn run_one(name: &str, run: fn(&[u8]), input: &[u8]) {
    if std::panic::catch_unwind(|| run(input)).is_err() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}-{:016x}", xxh(input)));
        std::fs::write(&path, input).unwrap();
        panic!(
            "fuzz target {name} panicked; the input is in {}",
            path.display()
        );
    }
}

fn xxh(d: &[u8]) -> u64 {
    d.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    let cases: usize = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    for t in TARGETS {
        let mut inputs = corpus(t.name);
        for input in &inputs {
            run_one(t.name, t.run, input);
        }
        if inputs.is_empty() {
            inputs.push(Vec::new());
        }
        let mut rng = Rng(StdRng::seed_from_u64(xxh(t.name.as_bytes())));
        for _ in 0..cases {
            let base = &inputs[rng.below(inputs.len())];
            let other = &inputs[rng.below(inputs.len())];
            let input = mutate(&mut rng, base, other);
            run_one(t.name, t.run, &input);
        }
    }
}

/// Every target has a corpus to start from.
#[test]
fn every_target_has_a_corpus() {
    for t in TARGETS {
        assert!(
            !corpus(t.name).is_empty(),
            "no corpus in {}",
            corpus_dir(t.name).display()
        );
    }
}
