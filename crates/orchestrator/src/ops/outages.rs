//! Notifications of a waifu's outages: `waifu_down`, `waifu_up` and
//! `waifu_flapping`, stored as incidents (so they reach the webhook through
//! the same outbox, with the same body) by the health leader only.
//!
//! Every check the leader runs is an [`Observation`] of its waifu: whether
//! any of its instances is healthy now. A waifu is down once no instance
//! was healthy at 2 checks in a row, and up again at the first check that
//! finds one. A waifu is watched from the first time it is seen up: one
//! that never was (an instance that never passed a check) is not reported.
//! In maintenance or paused it is not watched at all.
//!
//! Flapping is damped as Nagios does it: every change between "some
//! instance healthy" and "none", at any check, counts (not only the
//! confirmed ones); more than [`FLAP_CHANGES`] within `FLAP_WINDOW` and
//! the waifu is flapping: one `waifu_flapping`, then nothing until no
//! change came for a whole window, then one notification of the state it
//! settled in, with how many changes went unreported. A single outage is
//! two changes: one `waifu_down`, one `waifu_up`.
//!
//! What was last said of each waifu is stored with the notification, in
//! one transaction that first checks it is still what this leader believes
//! ([`Store::alert`]): a new leader takes it from there, and two leaders
//! for a moment never both send.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::ops::incidents::{IncidentKind, Incidents};
use crate::store::history::Alert;
use crate::store::incidents::NewIncident;
use crate::store::{Store, StoreError};

/// Checks in a row that found no healthy instance before a waifu is down.
pub(crate) const DOWN_AFTER: u32 = 2;
/// A waifu that changes state more often than this within the flap window
/// is flapping.
pub(crate) const FLAP_CHANGES: usize = 4;

/// A waifu not observed this long (it has no instance left) is forgotten
/// by the leader until it is observed again.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// One check of one of a waifu's instances, by the health leader.
#[derive(Debug)]
pub(crate) struct Observation {
    pub name: Arc<str>,
    /// Whether any of its instances (this one or another) is healthy and
    /// takes requests now.
    pub available: bool,
    /// Whether it is in maintenance or paused.
    pub quiet: bool,
    /// What the check saw if it failed: `http://10.0.0.5:8080: refused`.
    pub failure: Option<String>,
    pub at: Instant,
}

/// A waifu's tracker as the leader keeps it between checks: most waifus
/// are calm ([`Tracker::is_calm`]), which the time they were last seen says
/// as well as a whole tracker (16 bytes in the map instead of a boxed
/// tracker of 140; with 10,000 waifus 0.5 MB instead of 1.8).
#[derive(Debug)]
enum Kept {
    Calm { seen: Instant },
    Full(Box<Tracker>),
}

impl Kept {
    fn new(tracker: Tracker) -> Kept {
        match tracker.seen {
            Some(seen) if tracker.is_calm() => Kept::Calm { seen },
            _ => Kept::Full(Box::new(tracker)),
        }
    }

    fn tracker(&self) -> Tracker {
        match self {
            Kept::Calm { seen } => Tracker::calm(*seen),
            Kept::Full(t) => Tracker::clone(t),
        }
    }

    fn seen(&self) -> Option<Instant> {
        match self {
            Kept::Calm { seen } => Some(*seen),
            Kept::Full(t) => t.seen,
        }
    }

    fn alert(&self) -> Option<Alert> {
        match self {
            Kept::Calm { .. } => Some(Alert {
                up: true,
                flapping: false,
            }),
            Kept::Full(t) => t.alert(),
        }
    }
}

/// What is to be said of a waifu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notice {
    /// First seen up: nothing is sent, the state is stored.
    Watched,
    Down,
    /// Up again after `down_for`.
    Up {
        down_for: Duration,
    },
    /// `changes` changes within the window.
    Flapping {
        changes: usize,
    },
    /// Stable for a window after flapping, in this state; `suppressed`
    /// changes went unreported.
    Settled {
        up: bool,
        suppressed: u32,
    },
}

/// One waifu's side of the notifications.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    /// What was last said: up, down, or nothing yet.
    notified: Option<bool>,
    flapping: bool,
    /// Checks in a row that found no healthy instance.
    failing: u32,
    /// Whether an instance was healthy at the last check.
    available: Option<bool>,
    /// When it changed, within the window.
    changes: VecDeque<Instant>,
    last_change: Option<Instant>,
    /// Changes while flapping.
    suppressed: u32,
    /// Since when no instance is healthy.
    unavailable_since: Option<Instant>,
    /// The last failed check, for the next notification.
    pub(crate) last_failure: Option<String>,
    /// When it was last observed.
    seen: Option<Instant>,
}

impl Tracker {
    /// A tracker starting from what was stored, at `now`.
    pub(crate) fn from_alert(alert: Alert, now: Instant) -> Tracker {
        Tracker {
            notified: Some(alert.up),
            flapping: alert.flapping,
            available: Some(alert.up),
            last_change: alert.flapping.then_some(now),
            ..Tracker::default()
        }
    }

    /// Up, and nothing else to remember: watched, not flapping, no change
    /// within the window. What a calm tracker keeps beyond that (when it
    /// was last unavailable, its last change, its last failure) is read
    /// only after the next change, which sets it anew.
    fn is_calm(&self) -> bool {
        self.notified == Some(true)
            && self.available == Some(true)
            && !self.flapping
            && self.failing == 0
            && self.suppressed == 0
            && self.changes.is_empty()
    }

    /// A calm tracker, last observed at `seen`.
    fn calm(seen: Instant) -> Tracker {
        Tracker {
            notified: Some(true),
            available: Some(true),
            seen: Some(seen),
            ..Tracker::default()
        }
    }

    /// What is stored of it.
    pub(crate) fn alert(&self) -> Option<Alert> {
        self.notified.map(|up| Alert {
            up,
            flapping: self.flapping,
        })
    }

    /// One check at `at`; what it makes to be said, if anything.
    pub(crate) fn observe(
        &mut self,
        at: Instant,
        available: bool,
        quiet: bool,
        failure: Option<&str>,
        window: Duration,
    ) -> Option<Notice> {
        self.seen = Some(at);
        if let Some(failure) = failure {
            self.last_failure = Some(failure.to_owned());
        }
        if quiet {
            self.failing = 0;
            // Seen up in maintenance: watched from now on, all the same.
            if available && self.notified.is_none() {
                self.notified = Some(true);
                self.available = Some(true);
                return Some(Notice::Watched);
            }
            return None;
        }
        if self.available != Some(available) {
            if self.available.is_some() {
                self.changes.push_back(at);
                self.last_change = Some(at);
                if self.flapping {
                    self.suppressed += 1;
                }
            }
            self.available = Some(available);
            if !available {
                self.unavailable_since = Some(at);
            }
        }
        while self
            .changes
            .front()
            .is_some_and(|t| at.duration_since(*t) > window)
        {
            self.changes.pop_front();
        }
        self.failing = if available { 0 } else { self.failing + 1 };
        let confirmed = if available {
            Some(true)
        } else if self.failing >= DOWN_AFTER {
            Some(false)
        } else {
            None
        };
        if self.flapping {
            let stable = self
                .last_change
                .is_none_or(|t| at.duration_since(t) >= window);
            return match confirmed {
                Some(up) if stable => {
                    self.flapping = false;
                    self.notified = Some(up);
                    self.changes.clear();
                    Some(Notice::Settled {
                        up,
                        suppressed: std::mem::take(&mut self.suppressed),
                    })
                }
                _ => None,
            };
        }
        if self.changes.len() > FLAP_CHANGES && self.notified.is_some() {
            self.flapping = true;
            self.suppressed = 0;
            return Some(Notice::Flapping {
                changes: self.changes.len(),
            });
        }
        match (self.notified, confirmed) {
            (None, Some(true)) => {
                self.notified = Some(true);
                Some(Notice::Watched)
            }
            (Some(true), Some(false)) => {
                self.notified = Some(false);
                Some(Notice::Down)
            }
            (Some(false), Some(true)) => {
                self.notified = Some(true);
                let since = self.unavailable_since.unwrap_or(at);
                Some(Notice::Up {
                    down_for: at.duration_since(since),
                })
            }
            _ => None,
        }
    }
}

/// What a notice becomes: its incident, if it sends one.
fn incident(
    notice: Notice,
    name: &str,
    tracker: &Tracker,
    replica: &str,
    window: Duration,
) -> Option<NewIncident> {
    let window = humantime::format_duration(window);
    let failure = || {
        tracker
            .last_failure
            .as_deref()
            .map(|f| format!("; last failed check: {f}"))
            .unwrap_or_default()
    };
    let (kind, detail) = match notice {
        Notice::Watched => return None,
        Notice::Down => (
            IncidentKind::WaifuDown,
            format!(
                "no healthy instance at {DOWN_AFTER} checks in a row{}",
                failure()
            ),
        ),
        Notice::Up { down_for } => (
            IncidentKind::WaifuUp,
            format!(
                "a healthy instance again, after {} without one",
                humantime::format_duration(Duration::from_secs(down_for.as_secs()))
            ),
        ),
        Notice::Flapping { changes } => (
            IncidentKind::WaifuFlapping,
            format!(
                "changed between up and down {changes} times within {window}{}: no more \
                 notifications of it until it is stable for {window}",
                failure()
            ),
        ),
        Notice::Settled { up, suppressed } => (
            if up {
                IncidentKind::WaifuUp
            } else {
                IncidentKind::WaifuDown
            },
            format!(
                "stable for {window} after flapping, {}; {suppressed} change(s) were not \
                 notified{}",
                if up { "up" } else { "down" },
                if up { String::new() } else { failure() }
            ),
        ),
    };
    Some(NewIncident {
        kind: kind.as_str(),
        name: name.to_owned(),
        source: replica.to_owned(),
        detail,
    })
}

/// Turns the health leader's observations into notifications, until
/// `shutdown`.
pub(crate) async fn watch(
    mut observations: mpsc::UnboundedReceiver<Observation>,
    store: Store,
    incidents: Incidents,
    window: Duration,
    mut leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let mut trackers: HashMap<Arc<str>, Kept> = HashMap::new();
    // What was stored, read when this orchestrator starts to lead.
    let mut stored: Option<HashMap<String, Alert>> = None;
    let mut sweep = tokio::time::interval(FORGET_AFTER / 6);
    loop {
        let observation = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = sweep.tick() => {
                // Waifus no longer checked (gone) are forgotten here; what
                // was said of them stays in the store.
                let now = Instant::now();
                trackers.retain(|name, t| {
                    let keep = t.seen().is_some_and(|s| now.duration_since(s) < FORGET_AFTER);
                    if !keep
                        && let (Some(alerts), Some(alert)) = (stored.as_mut(), t.alert())
                    {
                        alerts.insert(name.to_string(), alert);
                    }
                    keep
                });
                continue;
            }
            r = leading.changed() => {
                if r.is_err() {
                    return;
                }
                // Another leader may have said things meanwhile.
                trackers.clear();
                stored = None;
                continue;
            }
            o = observations.recv() => match o { Some(o) => o, None => return },
        };
        if !*leading.borrow() {
            continue;
        }
        let alerts = match &mut stored {
            Some(alerts) => alerts,
            None => match store.alerts().await {
                Ok(rows) => stored.insert(rows.into_iter().collect()),
                Err(e) => {
                    debug!(error = %e, "what the notifications said cannot be read now");
                    continue;
                }
            },
        };
        let name = observation.name.clone();
        let tracker = trackers.entry(name.clone()).or_insert_with(|| {
            Kept::new(
                alerts
                    .remove(&*name)
                    .map(|a| Tracker::from_alert(a, observation.at))
                    .unwrap_or_default(),
            )
        });
        let mut next = tracker.tracker();
        let Some(notice) = next.observe(
            observation.at,
            observation.available,
            observation.quiet,
            observation.failure.as_deref(),
            window,
        ) else {
            *tracker = Kept::new(next);
            continue;
        };
        debug!(%name, ?notice, "a waifu's state changed");
        let said = incident(notice, &name, &next, store.replica(), window);
        match say(&store, &incidents, &name, tracker.alert(), &next, said).await {
            Ok(true) => *tracker = Kept::new(next),
            Ok(false) => {
                // Another orchestrator moved it: start again from the store.
                trackers.remove(&name);
                stored = None;
            }
            // Tried again at the next check, which sees the same.
            Err(e) => warn!(%name, error = %e, "could not store a notification"),
        }
    }
}

/// Stores what is said of `name` (was `was`, now what `next` holds) and its
/// incident; whether it was still `was`.
async fn say(
    store: &Store,
    incidents: &Incidents,
    name: &str,
    was: Option<Alert>,
    next: &Tracker,
    said: Option<NewIncident>,
) -> Result<bool, StoreError> {
    let Some(now) = next.alert() else {
        return Ok(true);
    };
    let moved = store
        .alert(name, was, now, said.as_ref(), incidents.webhook())
        .await?;
    if moved && let Some(incident) = &said {
        incidents.noted(incident);
    }
    Ok(moved)
}

#[cfg(test)]
mod tests;
