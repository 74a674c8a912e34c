//! The endpoints a client balances over: outstanding requests per
//! endpoint, passive outlier ejection (consecutive failures take an
//! endpoint out for a growing period), and power-of-two-choices selection
//! among the endpoints that are not ejected.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use tokio::time::Instant;

/// Consecutive failures that eject an endpoint.
pub(crate) const EJECT_AFTER: u32 = 3;
/// The first ejection lasts this long; each further one doubles it.
const EJECT_BASE: Duration = Duration::from_secs(1);
const EJECT_MAX: Duration = Duration::from_secs(30);

/// The counter of requests sent to `backend` that ended with `code`.
pub(crate) fn requests_counter(backend: &str, code: &'static str) -> metrics::Counter {
    metrics::counter!("cairn_client_requests_total", "backend" => backend.to_string(), "code" => code)
}

/// One endpoint's state.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) addr: String,
    outstanding: AtomicU64,
    failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    /// `cairn_client_requests_total{backend, code="OK"}`, looked up at the
    /// endpoint's first success (a lookup builds the labelled key: a hash
    /// and allocations per call). Taken after a program installs its
    /// metrics recorder, as programs do at startup.
    ok_counter: std::sync::OnceLock<metrics::Counter>,
}

impl Endpoint {
    pub(crate) fn new(addr: String) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            addr,
            outstanding: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            ok_counter: std::sync::OnceLock::new(),
        })
    }

    pub(crate) fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.lock().is_some_and(|t| now < t)
    }

    /// Counts a request in flight until the guard drops.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// `cairn_client_requests_total{backend, code="OK"}` of this endpoint.
    pub(crate) fn ok_counter(&self) -> &metrics::Counter {
        self.ok_counter
            .get_or_init(|| requests_counter(&self.addr, "OK"))
    }

    /// A success: the failure streak and the ejection backoff reset.
    pub(crate) fn succeeded(&self) {
        if self.failures.swap(0, Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A failure a retry elsewhere may fix; ejects the endpoint after
    /// [`EJECT_AFTER`] in a row. Returns whether it was ejected now.
    pub(crate) fn failed(&self) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= EJECT_AFTER {
            self.eject();
            true
        } else {
            false
        }
    }

    /// Takes the endpoint out of rotation for a period that doubles with
    /// each ejection in a row.
    pub(crate) fn eject(&self) {
        let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(5);
        let period = EJECT_BASE.saturating_mul(1 << k).min(EJECT_MAX);
        *self.ejected_until.lock() = Some(Instant::now() + period);
        self.failures.store(0, Ordering::Relaxed);
        metrics::counter!("cairn_client_ejections_total", "backend" => self.addr.clone())
            .increment(1);
        tracing::info!(backend = %self.addr, ?period, "endpoint ejected");
    }

    /// An active check found the endpoint healthy: back in rotation.
    pub(crate) fn healthy(&self) {
        *self.ejected_until.lock() = None;
        self.failures.store(0, Ordering::Relaxed);
        self.ejections.store(0, Ordering::Relaxed);
    }
}

/// A request counted against an endpoint's outstanding requests.
pub(crate) struct InFlight(Arc<Endpoint>);

#[cfg(feature = "proxy")]
impl InFlight {
    /// The endpoint it counts against.
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Power of two choices: two distinct random endpoints among those not
/// ejected (all of them when every one is), the one with fewer requests
/// outstanding.
pub(crate) fn pick(eps: &[Arc<Endpoint>], rng: &mut impl Rng) -> Option<Arc<Endpoint>> {
    let now = Instant::now();
    let live: Vec<&Arc<Endpoint>> = eps.iter().filter(|e| !e.is_ejected(now)).collect();
    let pool: Vec<&Arc<Endpoint>> = if live.is_empty() {
        eps.iter().collect()
    } else {
        live
    };
    match pool.len() {
        0 => None,
        1 => Some(pool[0].clone()),
        n => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (x, y) = (pool[a], pool[b]);
            Some(
                if y.outstanding() < x.outstanding() {
                    y
                } else {
                    x
                }
                .clone(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[tokio::test]
    async fn two_choices_prefer_the_less_loaded_and_skip_the_ejected() {
        let eps: Vec<_> = (0..3).map(|i| Endpoint::new(format!("n{i}:1"))).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let _busy: Vec<_> = (0..10).map(|_| eps[0].start()).collect();
        for _ in 0..100 {
            assert_ne!(pick(&eps, &mut rng).unwrap().addr, "n0:1");
        }
        for _ in 0..EJECT_AFTER {
            eps[1].failed();
        }
        assert!(eps[1].is_ejected(Instant::now()));
        for _ in 0..100 {
            assert_eq!(pick(&eps, &mut rng).unwrap().addr, "n2:1");
        }
        eps[1].healthy();
        assert!(!eps[1].is_ejected(Instant::now()));
        // Everything ejected: still pick something rather than nothing.
        for e in &eps {
            e.eject();
        }
        assert!(pick(&eps, &mut rng).is_some());
        drop(_busy);
        assert_eq!(eps[0].outstanding(), 0);
    }
}
