//! The checker against a brute-force model: on random small histories
//! (unknown outcomes included), Wing & Gong's search and an exhaustive
//! search over every order agree.
#![allow(clippy::unwrap_used)]

use cairn_sim_tests::checker::{check, Input, Operation, Output, Value, Verdict};
use proptest::prelude::*;

/// Whether some order of `ops` respects real time and register semantics
/// (unknown outcomes return at infinity).
fn brute_force(ops: &[Operation]) -> bool {
    fn ret(o: &Operation) -> u64 {
        o.ret.as_ref().map_or(u64::MAX, |r| r.0)
    }
    fn go(ops: &[Operation], used: &mut Vec<bool>, state: Option<Value>) -> bool {
        if used.iter().all(|&u| u) {
            return true;
        }
        for i in 0..ops.len() {
            if used[i] {
                continue;
            }
            // i may go next only if no unused op finished before i began.
            let blocked = (0..ops.len()).any(|j| j != i && !used[j] && ret(&ops[j]) < ops[i].call);
            if blocked {
                continue;
            }
            let out = ops[i].ret.as_ref().map(|r| &r.1);
            let next = match (&ops[i].input, out) {
                (Input::Write(v), _) => Some(*v),
                (Input::Read, Some(Output::Read(r))) => (*r == state).then_some(state),
                (Input::Cas { expect, new }, Some(Output::Cas(true))) => {
                    (*expect == state).then_some(*new)
                }
                (Input::Cas { expect, .. }, Some(Output::Cas(false))) => {
                    (*expect != state).then_some(state)
                }
                (Input::Cas { expect, new }, None) => {
                    Some(if *expect == state { *new } else { state })
                }
                _ => None,
            };
            if let Some(s) = next {
                used[i] = true;
                if go(ops, used, s) {
                    return true;
                }
                used[i] = false;
            }
        }
        false
    }
    let ops: Vec<Operation> = ops
        .iter()
        .filter(|o| !(o.input == Input::Read && o.ret.is_none()))
        .cloned()
        .collect();
    go(&ops, &mut vec![false; ops.len()], None)
}

fn history() -> impl Strategy<Value = Vec<Operation>> {
    prop::collection::vec(
        (
            0u64..20,
            prop::option::weighted(0.85, 0u64..10),
            0u8..4,
            0u64..4,
            0u64..4,
            any::<bool>(),
        ),
        1..7,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (call, dur, kind, a, b, flag))| {
                let val = |x: u64| if x == 0 { None } else { Some(x) };
                let (input, out) = match kind {
                    0 => (Input::Write(Some(i as u64 + 1)), Output::Done),
                    1 => (Input::Write(None), Output::Done),
                    2 => (Input::Read, Output::Read(val(a))),
                    _ => (
                        Input::Cas {
                            expect: val(a),
                            new: val(b + 10),
                        },
                        Output::Cas(flag),
                    ),
                };
                Operation {
                    client: i as u64,
                    key: 1,
                    call,
                    ret: dur.map(|d| (call + d, out)),
                    input,
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]
    #[test]
    fn search_agrees_with_brute_force(h in history()) {
        let expected = brute_force(&h);
        match check(&h, 1 << 24) {
            Verdict::Ok => prop_assert!(expected, "checker said linearizable: {h:?}"),
            Verdict::NotLinearizable { .. } => {
                prop_assert!(!expected, "checker said not linearizable: {h:?}")
            }
            v => prop_assert!(false, "unexpected {v:?} for {h:?}"),
        }
    }
}

/// The generated histories exercise both verdicts (so the property above
/// can fail): each is a sizeable share of the cases.
#[test]
fn generated_histories_cover_both_verdicts() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = history();
    let (mut yes, mut no) = (0, 0);
    for _ in 0..2000 {
        let h = strategy.new_tree(&mut runner).unwrap().current();
        if brute_force(&h) {
            yes += 1;
        } else {
            no += 1;
        }
    }
    assert!(yes > 200 && no > 200, "linearizable {yes}, not {no}");
}

/// A long history that is linearizable by construction (each write and
/// read takes effect at a point inside its interval) is accepted quickly.
#[test]
fn long_generated_histories_are_accepted() {
    let mut ops = Vec::new();
    let mut state: Option<Value> = None;
    // Effects happen at times 10, 20, 30, ...; each operation's interval
    // covers its effect point and overlaps its neighbours'.
    for i in 0..2000u64 {
        let at = 100 + 10 * i;
        let (input, out) = if i % 3 == 0 {
            (Input::Read, Output::Read(state))
        } else {
            state = Some(i);
            (Input::Write(Some(i)), Output::Done)
        };
        ops.push(Operation {
            client: i % 8,
            key: i % 4,
            call: at - 12,
            ret: Some((at + 12, out)),
            input,
        });
    }
    // Per-key states: regenerate reads per key.
    let mut per_key: std::collections::HashMap<u64, Option<Value>> = Default::default();
    for o in ops.iter_mut() {
        let s = per_key.entry(o.key).or_insert(None);
        match &o.input {
            Input::Write(v) => *s = *v,
            Input::Read => o.ret.as_mut().unwrap().1 = Output::Read(*s),
            _ => {}
        }
    }
    assert_eq!(check(&ops, 1 << 24), Verdict::Ok);
}
