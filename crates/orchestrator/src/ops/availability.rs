//! Uptime from the health history: a waifu is up while at least one of its
//! instances is healthy, down while it has instances and none is, in
//! maintenance while its switch is paused or in maintenance (whatever its
//! instances do), and not counted while it has no instance (before its
//! first hello, after its last goodbye). Draining instances do not count:
//! they take no new request.

use std::collections::HashMap;

use waifus_protocol::Availability;

use crate::store::history::Step;

/// What a moment of a waifu's time was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Moment {
    Up,
    Down,
    Maintenance,
    /// No instance: not counted.
    Absent,
}

/// One waifu's state, replayed step by step.
#[derive(Debug, Default)]
struct Replay<'a> {
    instances: HashMap<&'a str, &'a str>,
    switch: Option<&'a str>,
}

impl<'a> Replay<'a> {
    fn apply(&mut self, step: &'a Step) {
        match &step.instance {
            None => self.switch = Some(&step.state),
            Some(instance) => {
                if step.state == "removed" {
                    self.instances.remove(instance.as_str());
                } else {
                    self.instances.insert(instance, &step.state);
                }
            }
        }
    }

    fn moment(&self) -> Moment {
        if matches!(self.switch, Some("paused" | "maintenance")) {
            return Moment::Maintenance;
        }
        let mut down = false;
        for state in self.instances.values() {
            match *state {
                "healthy" => return Moment::Up,
                "added" | "unhealthy" => down = true,
                _ => {}
            }
        }
        if down { Moment::Down } else { Moment::Absent }
    }
}

/// Calls `span(start, end, moment)` for the stretches of `[from, to)`
/// (Unix milliseconds) that one waifu's `steps` (sorted by time, its state
/// at `from` first) describe.
pub(crate) fn spans(steps: &[Step], from: i64, to: i64, mut span: impl FnMut(i64, i64, Moment)) {
    let mut replay = Replay::default();
    let mut at = from;
    let mut i = 0;
    while at < to {
        while i < steps.len() && steps[i].at_ms <= at {
            replay.apply(&steps[i]);
            i += 1;
        }
        let next = steps.get(i).map_or(to, |s| s.at_ms.min(to));
        span(at, next, replay.moment());
        at = next;
    }
}

/// Seconds up, down and in maintenance within `[from, to)`, and the
/// outages that began in it (each time it went down after being up).
pub(crate) fn availability(steps: &[Step], from: i64, to: i64) -> Availability {
    // Milliseconds, summed exactly.
    let (mut up, mut down, mut maintenance, mut outages) = (0i64, 0i64, 0i64, 0u32);
    let mut last = Moment::Absent;
    spans(steps, from, to, |start, end, moment| {
        match moment {
            Moment::Up => up += end - start,
            Moment::Down => {
                down += end - start;
                // Down after being up (or in maintenance) in the window: a
                // new waifu not up yet is no outage.
                if matches!(last, Moment::Up | Moment::Maintenance) {
                    outages += 1;
                }
            }
            Moment::Maintenance => maintenance += end - start,
            Moment::Absent => {}
        }
        if end > start {
            last = moment;
        }
    });
    #[allow(clippy::cast_precision_loss)]
    let seconds = |ms: i64| ms as f64 / 1000.0;
    Availability {
        up: seconds(up),
        down: seconds(down),
        maintenance: seconds(maintenance),
        outages,
    }
}

/// `[from, to)` cut into `n` equal slots, each with its own figures.
pub(crate) fn slots(steps: &[Step], from: i64, to: i64, n: usize) -> Vec<Availability> {
    let width = (to - from) / i64::try_from(n.max(1)).unwrap_or(1);
    (0..n)
        .map(|k| {
            let k = i64::try_from(k).unwrap_or(0);
            let start = from + k * width;
            availability(steps, start, start + width)
        })
        .collect()
}

/// `steps` (ordered by waifu, then time) split by waifu.
pub(crate) fn by_waifu(steps: &[Step]) -> HashMap<&str, &[Step]> {
    let mut out = HashMap::new();
    let mut start = 0;
    for i in 1..=steps.len() {
        if i == steps.len() || steps[i].name != steps[start].name {
            out.insert(steps[start].name.as_str(), &steps[start..i]);
            start = i;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(instance: Option<&str>, state: &str, at_ms: i64) -> Step {
        Step {
            name: "link".into(),
            instance: instance.map(str::to_owned),
            state: state.into(),
            at_ms,
        }
    }

    #[test]
    fn a_ten_second_outage_in_a_minute() {
        let a = Some("http://a:1");
        let steps = [
            step(a, "added", 0),
            step(a, "healthy", 10),
            step(a, "unhealthy", 20_000),
            step(a, "healthy", 30_000),
        ];
        let got = availability(&steps, 0, 60_000);
        assert_eq!(got.up, 49.99);
        // Not checked yet for 10 ms: down, but no outage.
        assert_eq!(got.down, 10.01);
        assert_eq!(got.outages, 1);
        assert!((got.uptime().unwrap() - 49.99 / 60.0).abs() < 1e-9);
    }

    #[test]
    fn one_healthy_instance_is_enough_and_draining_ones_do_not_count() {
        let (a, b) = (Some("http://a:1"), Some("http://b:1"));
        let steps = [
            step(a, "healthy", 0),
            step(b, "unhealthy", 0),
            // a leaves (a deploy): b is not healthy yet, so 5 s down.
            step(a, "draining", 10_000),
            step(b, "healthy", 15_000),
            step(a, "removed", 16_000),
            // b leaves too: nothing is counted after.
            step(b, "draining", 20_000),
        ];
        let got = availability(&steps, 0, 40_000);
        assert_eq!((got.up, got.down, got.outages), (15.0, 5.0, 1));
    }

    #[test]
    fn maintenance_is_apart_from_outages() {
        let a = Some("http://a:1");
        let steps = [
            step(a, "healthy", 0),
            step(None, "maintenance", 10_000),
            step(a, "unhealthy", 11_000),
            step(None, "open", 20_000),
            step(a, "healthy", 25_000),
        ];
        let got = availability(&steps, 0, 30_000);
        assert_eq!((got.up, got.down, got.maintenance), (15.0, 5.0, 10.0));
        // Nothing measured at all: no figure.
        assert_eq!(availability(&[], 0, 30_000).uptime(), None);
    }

    #[test]
    fn slots_show_where_the_outage_was() {
        let a = Some("http://a:1");
        let steps = [
            step(a, "healthy", 0),
            step(a, "unhealthy", 45_000),
            step(a, "healthy", 50_000),
        ];
        let got = slots(&steps, 0, 60_000, 4);
        assert_eq!(got.len(), 4);
        assert_eq!(got[3].down, 5.0);
        assert!(got[..3].iter().all(|s| s.down == 0.0 && s.up == 15.0));
    }
}
