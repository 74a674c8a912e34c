//! Bounds on open watches: node-wide and per client connection. A watch
//! past either is refused with RESOURCE_EXHAUSTED naming the bound, so a
//! client cannot hold the node's memory and tasks with watches.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::Status;

/// Open watches, in all and per connection.
#[derive(Debug)]
pub struct WatchSlots {
    max_total: usize,
    max_per_conn: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_conn: BTreeMap<SocketAddr, usize>,
}

/// One open watch's place; given back when dropped.
#[derive(Debug)]
pub struct WatchSlot {
    slots: Arc<WatchSlots>,
    conn: Option<SocketAddr>,
}

impl WatchSlots {
    /// Bounds of `max_total` watches and `max_per_conn` per connection.
    pub fn new(max_total: usize, max_per_conn: usize) -> Arc<Self> {
        Arc::new(WatchSlots {
            max_total,
            max_per_conn,
            open: Mutex::new(Open::default()),
        })
    }

    /// A place for a watch from `conn` (its peer address; `None` when the
    /// transport does not say), or the refusal naming the bound.
    pub fn take(self: &Arc<Self>, conn: Option<SocketAddr>) -> Result<WatchSlot, Status> {
        let mut open = self.open.lock();
        if open.total >= self.max_total {
            return Err(Status::resource_exhausted(format!(
                "too many watches open on this node (limit max-watches = {})",
                self.max_total
            )));
        }
        if let Some(c) = conn {
            let n = open.per_conn.entry(c).or_insert(0);
            if *n >= self.max_per_conn {
                return Err(Status::resource_exhausted(format!(
                    "too many watches open on this connection (limit \
                     max-watches-per-connection = {})",
                    self.max_per_conn
                )));
            }
            *n += 1;
        }
        open.total += 1;
        Ok(WatchSlot {
            slots: self.clone(),
            conn,
        })
    }

    /// Watches open now.
    pub fn open(&self) -> usize {
        self.open.lock().total
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock();
        open.total -= 1;
        if let Some(c) = self.conn {
            if let Some(n) = open.per_conn.get_mut(&c) {
                *n -= 1;
                if *n == 0 {
                    open.per_conn.remove(&c);
                }
            }
        }
    }
}
