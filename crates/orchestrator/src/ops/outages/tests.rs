use std::time::Duration;

use tokio::time::Instant;

use super::{Kept, Notice, Tracker, incident};

const WINDOW: Duration = Duration::from_secs(300);
const CHECK: Duration = Duration::from_secs(1);

/// Drives a tracker one check a second from the state of each check
/// (`true`: some instance healthy); the notices with the check they came
/// at.
fn run(tracker: &mut Tracker, start: Instant, checks: &[bool]) -> Vec<(usize, Notice)> {
    checks
        .iter()
        .enumerate()
        .filter_map(|(i, &up)| {
            let at = start + CHECK * u32::try_from(i).unwrap();
            let failure = (!up).then_some("http://127.0.0.1:9: refused");
            tracker
                .observe(at, up, false, failure, WINDOW)
                .map(|n| (i, n))
        })
        .collect()
}

fn kinds(notices: &[(usize, Notice)]) -> Vec<Notice> {
    notices.iter().map(|(_, n)| *n).collect()
}

#[test]
fn one_outage_is_one_down_and_one_up() {
    let mut t = Tracker::default();
    let mut checks = vec![true; 3];
    checks.extend([false; 10]);
    checks.extend([true; 3]);
    let got = run(&mut t, Instant::now(), &checks);
    assert_eq!(
        got,
        [
            (0, Notice::Watched),
            // the second check in a row without a healthy instance
            (4, Notice::Down),
            (
                13,
                Notice::Up {
                    down_for: Duration::from_secs(10)
                }
            ),
        ]
    );
}

#[test]
fn one_failed_check_alone_is_no_outage() {
    let mut t = Tracker::default();
    let got = run(&mut t, Instant::now(), &[true, false, true, false, true]);
    assert_eq!(kinds(&got), [Notice::Watched]);
}

#[test]
fn a_waifu_never_up_is_not_reported() {
    let mut t = Tracker::default();
    assert!(run(&mut t, Instant::now(), &[false; 20]).is_empty());
    assert_eq!(t.alert(), None);
}

#[test]
fn short_flaps_give_flapping_then_the_settled_state_with_what_was_suppressed() {
    let mut t = Tracker::default();
    let start = Instant::now();
    // Five flaps within a minute, each one failed check: never a confirmed
    // outage, ten changes.
    let mut checks = vec![true; 2];
    for _ in 0..5 {
        checks.extend([false, true, true, true, true, true, true, true, true, true]);
    }
    // Then stable for more than a window.
    checks.extend(vec![true; 310]);
    let got = run(&mut t, start, &checks);
    assert_eq!(
        kinds(&got),
        [
            Notice::Watched,
            Notice::Flapping { changes: 5 },
            Notice::Settled {
                up: true,
                suppressed: 5
            },
        ]
    );
    // The settled one comes a whole window after the last change.
    let last_change = 2 + 4 * 10 + 1;
    assert_eq!(got[2].0, last_change + 300);
}

#[test]
fn long_flaps_are_each_notified_until_the_fifth_change() {
    let mut t = Tracker::default();
    let mut checks = vec![true; 2];
    for _ in 0..5 {
        checks.extend([false; 5]);
        checks.extend([true; 5]);
    }
    let got = kinds(&run(&mut t, Instant::now(), &checks));
    assert_eq!(got.len(), 6, "{got:?}");
    assert!(matches!(
        got[1..],
        [
            Notice::Down,
            Notice::Up { .. },
            Notice::Down,
            Notice::Up { .. },
            Notice::Flapping { changes: 5 }
        ]
    ));
}

#[test]
fn nothing_is_said_in_maintenance_and_an_outage_after_it_is() {
    let mut t = Tracker::default();
    let start = Instant::now();
    let at = |i: u32| start + CHECK * i;
    assert_eq!(
        t.observe(at(0), true, false, None, WINDOW),
        Some(Notice::Watched)
    );
    for i in 1..20 {
        assert_eq!(
            t.observe(at(i), false, true, Some("x: refused"), WINDOW),
            None
        );
    }
    // Maintenance over, still down: reported after two checks.
    assert_eq!(t.observe(at(20), false, false, None, WINDOW), None);
    assert_eq!(
        t.observe(at(21), false, false, None, WINDOW),
        Some(Notice::Down)
    );
    assert_eq!(t.last_failure.as_deref(), Some("x: refused"));
}

#[test]
fn a_waifu_first_seen_up_in_maintenance_is_watched() {
    let mut t = Tracker::default();
    let start = Instant::now();
    assert_eq!(
        t.observe(start, true, true, None, WINDOW),
        Some(Notice::Watched)
    );
    assert_eq!(t.observe(start + CHECK, false, false, None, WINDOW), None);
    assert_eq!(
        t.observe(start + CHECK * 2, false, false, None, WINDOW),
        Some(Notice::Down)
    );
}

#[test]
fn a_new_leader_goes_on_from_what_was_stored() {
    use crate::store::history::Alert;
    let start = Instant::now();
    let mut t = Tracker::from_alert(
        Alert {
            up: false,
            flapping: false,
        },
        start,
    );
    // Still down: nothing new. Up: one `waifu_up`.
    assert!(run(&mut t, start, &[false, false, false]).is_empty());
    let got = run(&mut t, start + CHECK * 3, &[true]);
    assert!(matches!(kinds(&got)[..], [Notice::Up { .. }]));
}

/// A tracker kept between checks as the leader keeps it (a calm one as the
/// time it was seen only) says what a whole one says, word for word, over
/// long runs of random checks: outages, flapping, maintenance.
#[test]
fn a_calm_tracker_kept_small_says_what_a_whole_one_says() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let start = Instant::now();
    let (mut calm, mut full) = (0, 0);
    for run in 0..200 {
        let mut whole = Tracker::default();
        let mut kept = Kept::new(Tracker::default());
        // Long healthy stretches, then bursts of changes.
        let mut up = true;
        for i in 0..1000u32 {
            let at = start + CHECK * (run * 1000 + i);
            if random(if up { 300 } else { 4 }) == 0 {
                up = !up;
            }
            let quiet = random(50) == 0;
            let failure = (!up || random(30) == 0).then(|| format!("check {i}: refused"));
            let mut next = kept.tracker();
            let said = whole.observe(at, up, quiet, failure.as_deref(), WINDOW);
            let also = next.observe(at, up, quiet, failure.as_deref(), WINDOW);
            assert_eq!(said, also, "run {run}, check {i}");
            if let Some(notice) = said {
                let a = incident(notice, "w", &whole, "r", WINDOW);
                let b = incident(notice, "w", &next, "r", WINDOW);
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "run {run}, check {i}");
            }
            assert_eq!(whole.alert(), next.alert());
            kept = Kept::new(next);
            assert_eq!(kept.alert(), whole.alert());
            assert_eq!(kept.seen(), Some(at));
            match kept {
                Kept::Calm { .. } => calm += 1,
                Kept::Full(_) => full += 1,
            }
        }
    }
    assert!(
        calm > 10_000 && full > 10_000,
        "both kinds were kept: {calm} calm, {full} whole"
    );
}
