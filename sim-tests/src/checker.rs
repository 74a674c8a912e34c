//! The history checker: linearizability of per-key registers, and the
//! weaker guarantee of serializable reads.
//!
//! # What is checked, precisely
//!
//! A history is a set of operations, each with the client that issued it,
//! the key, the time it was invoked, the time its response arrived (none
//! when the outcome is unknown: a timeout, a lost connection), what it
//! asked and what it got. Keys are independent registers (a key holds a
//! value or is absent), so the history is checked one key at a time
//! (linearizability is compositional, P-compositionality for registers).
//!
//! **Linearizable operations** (writes, deletes, compare-and-swaps and
//! linearizable reads): the history of a key is linearizable when there is
//! one order of its operations that (1) respects real time: if A's response
//! arrived before B was invoked, A comes first; (2) is legal for a
//! register: every read returns the value of the last write before it
//! (absent before any), every successful CAS found its expected value and
//! every failed one did not; and (3) contains every operation with a known
//! outcome, and any subset of those with an unknown outcome (a timed-out
//! write may or may not have happened; if it happened, it happened after
//! its invocation). A read with an unknown outcome constrains nothing and
//! is left out. The search is Wing & Gong's with the memoisation of Lowe
//! (as in porcupine): depth-first over the operations that may go next,
//! caching (set linearized, register state) pairs already explored.
//!
//! **Serializable reads** are allowed to be stale but never to invent or
//! show uncommitted data: every value a serializable read returns must be
//! the value of some write of that key invoked before the read's response
//! arrived (a write invoked later cannot have been committed when the read
//! was answered). Absence is always allowed.

use std::collections::{BTreeMap, HashSet};

/// A register's value: writes in a checked history write unique values.
pub type Value = u64;

/// What an operation asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Put (`Some`) or delete (`None`).
    Write(Option<Value>),
    /// A linearizable read.
    Read,
    /// A serializable read (checked by the weaker rule).
    SerializableRead,
    /// Compare-and-swap: if the key holds `expect` (None: absent), set it
    /// to `new` (None: delete).
    Cas {
        /// The value the key must hold.
        expect: Option<Value>,
        /// The value to set.
        new: Option<Value>,
    },
}

/// What an operation got back (for an operation whose response arrived).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A write or delete was acknowledged.
    Done,
    /// A read returned this (None: absent).
    Read(Option<Value>),
    /// A compare-and-swap succeeded or not.
    Cas(bool),
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued it.
    pub client: u64,
    /// The key (register).
    pub key: u64,
    /// When it was invoked.
    pub call: u64,
    /// When its response arrived and what it said; None when unknown.
    pub ret: Option<(u64, Output)>,
    /// What it asked.
    pub input: Input,
}

/// The checker's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history is linearizable and every serializable read
    /// returned a written value.
    Ok,
    /// No legal order exists for this key's linearizable operations.
    NotLinearizable {
        /// The key.
        key: u64,
        /// Its operations, by invocation time.
        ops: Vec<Operation>,
    },
    /// A serializable read returned a value no earlier write wrote.
    PhantomRead {
        /// The read.
        op: Operation,
    },
    /// A malformed operation (for example a read whose output is a CAS).
    Malformed {
        /// The operation.
        op: Operation,
        /// Why.
        reason: String,
    },
    /// The search gave up after its step budget on this key.
    Undecided {
        /// The key.
        key: u64,
    },
}

/// Applies `input` (with `output` if known) to register state `s`: the
/// new state if the step is legal.
fn step(s: Option<Value>, input: &Input, output: Option<&Output>) -> Option<Option<Value>> {
    match (input, output) {
        (Input::Write(v), _) => Some(*v),
        (Input::Read, Some(Output::Read(r))) => (*r == s).then_some(s),
        (Input::Cas { expect, new }, Some(Output::Cas(true))) => (*expect == s).then_some(*new),
        (Input::Cas { expect, .. }, Some(Output::Cas(false))) => (*expect != s).then_some(s),
        // An unknown CAS happened with whatever effect the state gives.
        (Input::Cas { expect, new }, None) => Some(if *expect == s { *new } else { s }),
        _ => None,
    }
}

fn malformed(op: &Operation) -> Option<String> {
    match (&op.input, op.ret.as_ref().map(|r| &r.1)) {
        (_, None) => None,
        (Input::Write(_), Some(Output::Done))
        | (Input::Read | Input::SerializableRead, Some(Output::Read(_)))
        | (Input::Cas { .. }, Some(Output::Cas(_))) => None,
        (i, Some(o)) => Some(format!("{i:?} cannot answer {o:?}")),
    }
    .or_else(|| {
        op.ret
            .as_ref()
            .filter(|(t, _)| *t < op.call)
            .map(|_| "returned before it was invoked".to_string())
    })
}

/// Checks a whole history; `budget` bounds the search steps per key.
pub fn check(history: &[Operation], budget: u64) -> Verdict {
    let mut by_key: BTreeMap<u64, Vec<Operation>> = BTreeMap::new();
    for op in history {
        if let Some(reason) = malformed(op) {
            return Verdict::Malformed {
                op: op.clone(),
                reason,
            };
        }
        by_key.entry(op.key).or_default().push(op.clone());
    }
    for (key, ops) in by_key {
        if let Some(v) = check_serializable(&ops) {
            return v;
        }
        let lin: Vec<Operation> = ops
            .iter()
            .filter(|o| match o.input {
                Input::SerializableRead => false,
                // An unanswered read says nothing.
                Input::Read => o.ret.is_some(),
                _ => true,
            })
            .cloned()
            .collect();
        match linearizable(&lin, budget) {
            Some(true) => {}
            Some(false) => {
                let mut ops = lin;
                ops.sort_by_key(|o| o.call);
                return Verdict::NotLinearizable { key, ops };
            }
            None => return Verdict::Undecided { key },
        }
    }
    Verdict::Ok
}

fn check_serializable(ops: &[Operation]) -> Option<Verdict> {
    for op in ops {
        let (Input::SerializableRead, Some((ret, Output::Read(Some(v))))) = (&op.input, &op.ret)
        else {
            continue;
        };
        let written = ops.iter().any(|w| {
            w.call <= *ret
                && match &w.input {
                    Input::Write(Some(x)) => x == v,
                    Input::Cas { new: Some(x), .. } => {
                        x == v && !matches!(w.ret, Some((_, Output::Cas(false))))
                    }
                    _ => false,
                }
        });
        if !written {
            return Some(Verdict::PhantomRead { op: op.clone() });
        }
    }
    None
}

/// One call or return in the time-ordered list the search walks.
#[derive(Debug, Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    /// Index of this call's return entry (calls only).
    ret: usize,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

/// Wing & Gong's search with memoisation over one key's operations.
/// Some(true): linearizable; Some(false): not; None: budget exhausted.
fn linearizable(ops: &[Operation], budget: u64) -> Option<bool> {
    if ops.is_empty() {
        return Some(true);
    }
    // Events: (time, order, op, is_call). Calls sort before returns at the
    // same time (touching operations count as concurrent); unknown
    // outcomes return after everything.
    let mut events: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call, 0, i, true));
        let t = o.ret.as_ref().map_or(u64::MAX, |r| r.0);
        events.push((t, 1, i, false));
    }
    events.sort();
    let n = events.len();
    // Index 0 is a sentinel head; entries are 1..=n.
    let mut list = vec![
        Entry {
            op: NIL,
            is_call: false,
            ret: NIL,
            prev: NIL,
            next: 1,
        };
        n + 1
    ];
    let mut ret_of = vec![0usize; ops.len()];
    for (k, &(_, _, op, is_call)) in events.iter().enumerate() {
        let idx = k + 1;
        list[idx] = Entry {
            op,
            is_call,
            ret: NIL,
            prev: idx - 1,
            next: if idx == n { NIL } else { idx + 1 },
        };
        if !is_call {
            ret_of[op] = idx;
        }
    }
    for e in list.iter_mut().skip(1) {
        if e.is_call {
            e.ret = ret_of[e.op];
        }
    }

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<Value>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<Value>)> = Vec::new();
    let mut state: Option<Value> = None;
    let mut entry = list[0].next;
    let mut steps = 0u64;

    fn lift(list: &mut [Entry], call: usize) {
        let ret = list[call].ret;
        let (p, nx) = (list[call].prev, list[call].next);
        list[p].next = nx;
        if nx != NIL {
            list[nx].prev = p;
        }
        let (p, nx) = (list[ret].prev, list[ret].next);
        list[p].next = nx;
        if nx != NIL {
            list[nx].prev = p;
        }
    }
    fn unlift(list: &mut [Entry], call: usize) {
        let ret = list[call].ret;
        let (p, nx) = (list[ret].prev, list[ret].next);
        list[p].next = ret;
        if nx != NIL {
            list[nx].prev = ret;
        }
        let (p, nx) = (list[call].prev, list[call].next);
        list[p].next = call;
        if nx != NIL {
            list[nx].prev = call;
        }
    }

    while list[0].next != NIL {
        steps += 1;
        if steps > budget {
            return None;
        }
        if entry == NIL {
            // Cannot happen: a return is always reached first.
            return Some(false);
        }
        let e = list[entry];
        if e.is_call {
            let op = &ops[e.op];
            let next_state = step(state, &op.input, op.ret.as_ref().map(|r| &r.1));
            if let Some(ns) = next_state {
                let mut lin = linearized.clone();
                lin[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((lin.clone(), ns)) {
                    stack.push((entry, state));
                    state = ns;
                    linearized = lin;
                    lift(&mut list, entry);
                    entry = list[0].next;
                    continue;
                }
            }
            entry = e.next;
        } else {
            // A return whose call is not linearized yet: backtrack.
            let Some((call, prev_state)) = stack.pop() else {
                return Some(false);
            };
            state = prev_state;
            let op = list[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut list, call);
            entry = list[call].next;
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, call: u64, ret: Option<(u64, Output)>, input: Input) -> Operation {
        Operation {
            client,
            key: 1,
            call,
            ret,
            input,
        }
    }
    fn w(c: u64, call: u64, ret: u64, v: u64) -> Operation {
        op(c, call, Some((ret, Output::Done)), Input::Write(Some(v)))
    }
    fn r(c: u64, call: u64, ret: u64, v: Option<u64>) -> Operation {
        op(c, call, Some((ret, Output::Read(v))), Input::Read)
    }

    #[test]
    fn known_linearizable_histories() {
        // Sequential.
        assert_eq!(
            check(&[w(1, 0, 1, 5), r(1, 2, 3, Some(5))], 1 << 20),
            Verdict::Ok
        );
        // A read concurrent with a write may see either value.
        for seen in [None, Some(5)] {
            assert_eq!(
                check(&[w(1, 0, 10, 5), r(2, 1, 2, seen)], 1 << 20),
                Verdict::Ok
            );
        }
        // A timed-out write may have happened...
        let lost = op(1, 0, None, Input::Write(Some(7)));
        assert_eq!(
            check(&[lost.clone(), r(2, 5, 6, Some(7))], 1 << 20),
            Verdict::Ok
        );
        // ...or not.
        assert_eq!(check(&[lost, r(2, 5, 6, None)], 1 << 20), Verdict::Ok);
        // CAS chain.
        let h = [
            w(1, 0, 1, 1),
            op(
                2,
                2,
                Some((3, Output::Cas(true))),
                Input::Cas {
                    expect: Some(1),
                    new: Some(2),
                },
            ),
            op(
                3,
                4,
                Some((5, Output::Cas(false))),
                Input::Cas {
                    expect: Some(1),
                    new: Some(3),
                },
            ),
            r(1, 6, 7, Some(2)),
        ];
        assert_eq!(check(&h, 1 << 20), Verdict::Ok);
    }

    #[test]
    fn known_violations() {
        // A stale read after the write completed.
        let h = [w(1, 0, 1, 5), r(2, 2, 3, None)];
        assert!(matches!(
            check(&h, 1 << 20),
            Verdict::NotLinearizable { key: 1, .. }
        ));
        // Two reads disagree on order: r1 sees the new value, a later r2
        // sees the old one.
        let h = [
            w(1, 0, 1, 1),
            w(1, 2, 20, 2),
            r(2, 3, 4, Some(2)),
            r(3, 5, 6, Some(1)),
        ];
        assert!(matches!(
            check(&h, 1 << 20),
            Verdict::NotLinearizable { .. }
        ));
        // A successful CAS on a value the key cannot hold.
        let h = [
            w(1, 0, 1, 1),
            op(
                2,
                2,
                Some((3, Output::Cas(true))),
                Input::Cas {
                    expect: Some(9),
                    new: Some(2),
                },
            ),
        ];
        assert!(matches!(
            check(&h, 1 << 20),
            Verdict::NotLinearizable { .. }
        ));
        // A value nobody wrote.
        let h = [r(1, 0, 1, Some(42))];
        assert!(matches!(
            check(&h, 1 << 20),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn serializable_reads_may_be_stale_but_not_invented() {
        let stale = op(
            2,
            5,
            Some((6, Output::Read(Some(1)))),
            Input::SerializableRead,
        );
        let h = [w(1, 0, 1, 1), w(1, 2, 3, 2), stale];
        assert_eq!(check(&h, 1 << 20), Verdict::Ok);
        // A value whose write began only after the read answered.
        let early = op(
            2,
            0,
            Some((1, Output::Read(Some(3)))),
            Input::SerializableRead,
        );
        let h = [early, w(1, 2, 3, 3)];
        assert!(matches!(check(&h, 1 << 20), Verdict::PhantomRead { .. }));
    }

    #[test]
    fn malformed_and_budget() {
        let bad = op(1, 5, Some((4, Output::Done)), Input::Write(Some(1)));
        assert!(matches!(check(&[bad], 10), Verdict::Malformed { .. }));
        let bad = op(1, 0, Some((1, Output::Cas(true))), Input::Read);
        assert!(matches!(check(&[bad], 10), Verdict::Malformed { .. }));
        let many: Vec<_> = (0..40)
            .map(|i| w(i, 0, 100, i))
            .chain([r(99, 101, 102, Some(1000))])
            .collect();
        assert_eq!(check(&many, 50), Verdict::Undecided { key: 1 });
    }
}
