//! A double of what the health checks and the drain ask of the registry:
//! probes answered from a script, every call recorded with the time (on the
//! paused test clock) it came at.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use waifus_protocol::parse_host;

use super::drain::Leave;
use super::health::Checks;
use super::health::Seen;
use crate::routing::{Instance, Outcome};
use crate::store::StoreError;

/// One call the double received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Call {
    Probe,
    Stored(bool),
    Deregistered(String),
    Removed(String),
    Forgot(Duration),
}

#[derive(Debug)]
pub(super) struct Double {
    start: Instant,
    /// What the next probes find; the last one repeats.
    outcomes: Mutex<VecDeque<Outcome>>,
    /// How many writes fail before they succeed.
    failures: Mutex<usize>,
    calls: Mutex<Vec<(Duration, Call)>>,
    /// How long a probe takes to answer.
    delay: Duration,
}

impl Double {
    pub(super) fn new(outcomes: &[Outcome]) -> Arc<Double> {
        Arc::new(Double {
            start: Instant::now(),
            outcomes: Mutex::new(outcomes.iter().copied().collect()),
            failures: Mutex::new(0),
            calls: Mutex::new(Vec::new()),
            delay: Duration::ZERO,
        })
    }

    /// Probes take `delay` to answer.
    pub(super) fn slow(self: Arc<Self>, delay: Duration) -> Arc<Self> {
        let mut double = Arc::into_inner(self).expect("not shared yet");
        double.delay = delay;
        Arc::new(double)
    }

    /// The next `n` writes fail (the database is away).
    pub(super) fn failing(self: Arc<Self>, n: usize) -> Arc<Self> {
        *self.failures.lock().unwrap() = n;
        self
    }

    pub(super) fn calls(&self) -> Vec<(Duration, Call)> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls other than probes.
    pub(super) fn writes(&self) -> Vec<(Duration, Call)> {
        let mut calls = self.calls();
        calls.retain(|(_, c)| *c != Call::Probe);
        calls
    }

    pub(super) fn probes(&self) -> usize {
        self.calls()
            .iter()
            .filter(|(_, c)| *c == Call::Probe)
            .count()
    }

    /// Waits (on the test clock) until `done` holds, for an hour at most.
    pub(super) async fn until(&self, done: impl Fn(&[(Duration, Call)]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(3600);
        while !done(&self.calls()) {
            assert!(Instant::now() < deadline, "never came: {:?}", self.calls());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn record(&self, call: Call) {
        let at = self.start.elapsed();
        self.calls.lock().unwrap().push((at, call));
    }

    fn write(&self, call: Call) -> Result<(), StoreError> {
        let mut failures = self.failures.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            return Err(StoreError::Corrupt {
                what: "the double fails this write".to_owned(),
            });
        }
        self.record(call);
        Ok(())
    }
}

/// An instance for the tests.
pub(super) fn instance(healthy: bool) -> Arc<Instance> {
    Arc::new(Instance::new(parse_host("127.0.0.1:9").unwrap(), healthy))
}

impl Checks for Double {
    async fn probe(&self, _: &Arc<Instance>, _: Duration, _: bool) -> Seen {
        self.record(Call::Probe);
        let outcome = {
            let mut outcomes = self.outcomes.lock().unwrap();
            match outcomes.len() {
                0 => Outcome::Failed,
                1 => outcomes[0],
                _ => outcomes.pop_front().unwrap_or(Outcome::Failed),
            }
        };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        match outcome {
            Outcome::Success => Seen::Status(204),
            Outcome::Down => Seen::Refused,
            Outcome::Failed => Seen::Status(500),
        }
    }

    async fn store_health(
        &self,
        _: &str,
        _: &Arc<Instance>,
        healthy: bool,
        _: &str,
    ) -> Result<(), StoreError> {
        self.write(Call::Stored(healthy))
    }

    fn observed(&self, _: &Arc<str>, _: &Arc<Instance>, _: Seen) {}

    async fn deregister(&self, _: &str, _: &Arc<Instance>, why: &str) -> Result<(), StoreError> {
        self.write(Call::Deregistered(why.to_owned()))
    }
}

impl Leave for Double {
    async fn remove_left(
        &self,
        _: &str,
        _: &Arc<Instance>,
        _: i64,
        why: &str,
    ) -> Result<(), StoreError> {
        self.write(Call::Removed(why.to_owned()))
    }

    async fn forget_empty(&self, after: Duration) -> Result<(), StoreError> {
        self.write(Call::Forgot(after))
    }
}
