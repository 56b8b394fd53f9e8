//! A waifu's switch as the state database keeps it, and how a row reads.

use std::time::Duration;

/// A switch as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSwitch {
    pub mode: SwitchMode,
    /// Changes with every setting.
    pub generation: i64,
}

/// What a stored switch holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchMode {
    Paused {
        max_wait: Duration,
    },
    Maintenance {
        message: Option<String>,
        retry_after: Duration,
    },
}

/// The columns `switch_of` reads, from `at`.
pub(super) const SWITCH_COLUMNS: &str =
    "s.mode, s.message, s.retry_after_s, s.max_wait_ms, s.generation";

/// A switch from the columns of [`SWITCH_COLUMNS`] at `at`, if there is one.
pub(super) fn switch_of(row: &tokio_postgres::Row, at: usize) -> Option<StoredSwitch> {
    let mode: Option<&str> = row.get(at);
    let mode = match mode? {
        "paused" => SwitchMode::Paused {
            max_wait: Duration::from_millis(u64::try_from(row.get::<_, i64>(at + 3)).unwrap_or(0)),
        },
        _ => SwitchMode::Maintenance {
            message: row.get(at + 1),
            retry_after: Duration::from_secs(u64::try_from(row.get::<_, i32>(at + 2)).unwrap_or(0)),
        },
    };
    Some(StoredSwitch {
        mode,
        generation: row.get(at + 4),
    })
}
