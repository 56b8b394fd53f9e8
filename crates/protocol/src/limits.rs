//! The limits a hello may ask the proxy to enforce for its instance: the
//! largest request body, the most requests in flight to it at once, and how
//! long its response head may take. Each is clamped by the operator's own
//! maximum where it has one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The most requests in flight a hello may ask for.
pub const MAX_IN_FLIGHT: u32 = 100_000;
/// The longest response timeout a hello may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// `"limits"` in a hello, as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// The largest request body in bytes (0: none allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<u64>,
    /// The most requests (and upgraded connections) in flight to the
    /// instance at once, per orchestrator; more are answered 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// How long the response head may take, such as `"30s"` (then 504).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Limits checked: what the proxy applies (before the operator's clamp).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_body_size: Option<u64>,
    pub max_in_flight: Option<u32>,
    pub timeout: Option<Duration>,
}

/// Why limits were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("maxInFlight must be from 1 to {MAX_IN_FLIGHT}")]
    InFlight,
    #[error("timeout {0:?} is not a duration from 1ms to 1h, such as \"30s\"")]
    Timeout(String),
}

impl Limits {
    /// Checks the values; the limits to apply.
    pub fn check(&self) -> Result<RequestLimits, LimitsError> {
        if let Some(n) = self.max_in_flight
            && !(1..=MAX_IN_FLIGHT).contains(&n)
        {
            return Err(LimitsError::InFlight);
        }
        let timeout = match &self.timeout {
            None => None,
            Some(text) => Some(
                parse_duration(text)
                    .filter(|d| !d.is_zero() && *d <= MAX_TIMEOUT)
                    .ok_or_else(|| LimitsError::Timeout(text.clone()))?,
            ),
        };
        Ok(RequestLimits {
            max_body_size: self.max_body_size,
            max_in_flight: self.max_in_flight,
            timeout,
        })
    }
}

impl RequestLimits {
    /// Whether none is set.
    pub fn is_empty(&self) -> bool {
        *self == RequestLimits::default()
    }

    /// What the proxy applies under the operator's maximums: the body limit
    /// and the timeout always set, each the smaller of the two.
    ///
    /// ```
    /// use std::time::Duration;
    /// use waifus_protocol::RequestLimits;
    /// let asked = RequestLimits { max_body_size: Some(1 << 40), ..Default::default() };
    /// let applied = asked.clamped(1 << 20, Duration::from_secs(60));
    /// assert_eq!(applied.max_body_size, Some(1 << 20));
    /// assert_eq!(applied.timeout, Some(Duration::from_secs(60)));
    /// ```
    pub fn clamped(self, max_body_size: u64, max_timeout: Duration) -> RequestLimits {
        RequestLimits {
            max_body_size: Some(
                self.max_body_size
                    .map_or(max_body_size, |b| b.min(max_body_size)),
            ),
            max_in_flight: self.max_in_flight,
            timeout: Some(self.timeout.map_or(max_timeout, |t| t.min(max_timeout))),
        }
    }

    /// As a hello writes them.
    pub fn to_wire(self) -> Limits {
        Limits {
            max_body_size: self.max_body_size,
            max_in_flight: self.max_in_flight,
            timeout: self.timeout.map(|t| {
                if t.subsec_millis() == 0 {
                    format!("{}s", t.as_secs())
                } else {
                    format!("{}ms", t.as_millis())
                }
            }),
        }
    }
}

/// `250ms`, `30s`, `2m`, `1h`, or a whole number of seconds.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(waifus_protocol::parse_duration("30s"), Some(Duration::from_secs(30)));
/// assert_eq!(waifus_protocol::parse_duration("soon"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("25s"), Some(Duration::from_secs(25)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["soon", "5d", "", "-1s", "1.5s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn limits_are_checked() {
        let ok = Limits {
            max_body_size: Some(0),
            max_in_flight: Some(4),
            timeout: Some("2s".into()),
        };
        assert_eq!(
            ok.check(),
            Ok(RequestLimits {
                max_body_size: Some(0),
                max_in_flight: Some(4),
                timeout: Some(Duration::from_secs(2)),
            })
        );
        let bad = |l: Limits| l.check().is_err();
        assert!(bad(Limits {
            max_in_flight: Some(0),
            ..Default::default()
        }));
        assert!(bad(Limits {
            timeout: Some("0s".into()),
            ..Default::default()
        }));
        assert!(bad(Limits {
            timeout: Some("2h".into()),
            ..Default::default()
        }));
        assert!(bad(Limits {
            timeout: Some("later".into()),
            ..Default::default()
        }));
        let json: Result<Limits, _> = serde_json::from_str(r#"{"maxBody": 1}"#);
        assert!(json.is_err(), "unknown fields are refused");
        assert!(Limits::default().check().unwrap().is_empty());
    }
}
