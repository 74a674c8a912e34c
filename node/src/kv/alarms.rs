//! Alarms: replicated conditions that stop some writes on every replica
//! alike (etcd's model). A member raises NOSPACE when its storage passes
//! its quota; CORRUPT when replicas were found to differ. An alarm stays
//! until an operator disarms it (`cairnctl alarm disarm`).
//!
//! While NOSPACE is raised, writes that can grow the data (puts, and
//! transactions holding a put) are refused and deletes go through, so
//! space can be freed. While CORRUPT is raised, every client write is
//! refused. Reads are always served.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::command::{Op, TxnOp};

/// What an alarm says. The numbers are etcd's `AlarmType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmKind {
    /// A member's storage passed its quota (or its disk is full).
    NoSpace,
    /// Replicas hold different data at the same revision.
    Corrupt,
}

impl AlarmKind {
    /// The name `cairnctl` and errors use.
    pub fn name(self) -> &'static str {
        match self {
            AlarmKind::NoSpace => "NOSPACE",
            AlarmKind::Corrupt => "CORRUPT",
        }
    }
}

/// One raised alarm: which member raised it, and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Alarm {
    /// The member that raised it.
    pub member: u64,
    /// What it says.
    pub kind: AlarmKind,
}

impl fmt::Display for Alarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (raised by node {})", self.kind.name(), self.member)
    }
}

/// The raised alarms, in order.
pub type Alarms = BTreeSet<Alarm>;

/// The alarm that refuses `op`, if any.
pub fn blocking(alarms: &Alarms, op: &Op) -> Option<Alarm> {
    let client_write = matches!(op, Op::Put(_) | Op::Delete(_) | Op::Txn(_));
    if !client_write {
        return None;
    }
    if let Some(a) = alarms.iter().find(|a| a.kind == AlarmKind::Corrupt) {
        return Some(*a);
    }
    let grows = match op {
        Op::Put(_) => true,
        Op::Txn(t) => t
            .success
            .iter()
            .chain(&t.failure)
            .any(|o| matches!(o, TxnOp::Put(_))),
        _ => false,
    };
    if grows {
        return alarms
            .iter()
            .find(|a| a.kind == AlarmKind::NoSpace)
            .copied();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::command::{DeleteOp, PutOp, Txn};

    #[test]
    fn nospace_refuses_growth_and_lets_deletes_through_corrupt_refuses_all() {
        let put = Op::Put(PutOp {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            prev_kv: false,
        });
        let delete = Op::Delete(DeleteOp {
            key: b"k".to_vec(),
            prefix: false,
            prev_kv: false,
        });
        let txn = |ops: Vec<TxnOp>| {
            Op::Txn(Txn {
                compares: vec![],
                success: vec![],
                failure: ops,
            })
        };
        let read_txn = txn(vec![TxnOp::Get { key: b"k".to_vec() }]);
        let put_txn = txn(vec![
            TxnOp::Get { key: b"k".to_vec() },
            match &put {
                Op::Put(p) => TxnOp::Put(p.clone()),
                _ => unreachable!(),
            },
        ]);
        let nospace = Alarm {
            member: 2,
            kind: AlarmKind::NoSpace,
        };
        let alarms = Alarms::from([nospace]);
        assert_eq!(blocking(&alarms, &put), Some(nospace));
        assert_eq!(blocking(&alarms, &put_txn), Some(nospace));
        assert_eq!(blocking(&alarms, &delete), None);
        assert_eq!(blocking(&alarms, &read_txn), None);
        assert_eq!(blocking(&alarms, &Op::OpenSession), None);
        assert_eq!(blocking(&Alarms::new(), &put), None);
        let corrupt = Alarm {
            member: 1,
            kind: AlarmKind::Corrupt,
        };
        let both = Alarms::from([nospace, corrupt]);
        for op in [&put, &delete, &read_txn, &put_txn] {
            assert_eq!(blocking(&both, op), Some(corrupt));
        }
    }
}
