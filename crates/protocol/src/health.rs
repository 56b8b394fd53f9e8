//! The health path a hello may declare: where the orchestrator checks the
//! instance instead of `/__internal/health`, for an app that has its own
//! (`/healthz`, `/up`). Any 2xx there counts as healthy.

/// The path checked when a hello declares none.
pub const DEFAULT_HEALTH_PATH: &str = "/__internal/health";

/// Longest health path accepted.
pub const MAX_HEALTH_PATH: usize = 256;

/// Why a health path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HealthPathError {
    #[error("the health path must start with '/'")]
    NotAbsolute,
    #[error("the health path is longer than {MAX_HEALTH_PATH} characters")]
    TooLong,
    #[error("the health path may contain only visible ASCII characters, and no '#'")]
    BadCharacter,
}

/// Checks a declared health path: an origin-form target (`/healthz`,
/// `/up?full=1`), visible ASCII, at most [`MAX_HEALTH_PATH`] bytes.
pub fn validate_health_path(path: &str) -> Result<(), HealthPathError> {
    if !path.starts_with('/') {
        return Err(HealthPathError::NotAbsolute);
    }
    if path.len() > MAX_HEALTH_PATH {
        return Err(HealthPathError::TooLong);
    }
    if !path.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return Err(HealthPathError::BadCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_paths() {
        let longest = format!("/{}", "a".repeat(MAX_HEALTH_PATH - 1));
        for ok in [
            "/",
            "/healthz",
            "/up?full=1",
            "/__internal/health",
            longest.as_str(),
        ] {
            assert_eq!(validate_health_path(ok), Ok(()), "{ok}");
        }
        let long = format!("/{}", "a".repeat(MAX_HEALTH_PATH));
        for (bad, why) in [
            ("healthz", HealthPathError::NotAbsolute),
            ("", HealthPathError::NotAbsolute),
            ("http://a/healthz", HealthPathError::NotAbsolute),
            (long.as_str(), HealthPathError::TooLong),
            ("/health z", HealthPathError::BadCharacter),
            ("/health#x", HealthPathError::BadCharacter),
            ("/héalth", HealthPathError::BadCharacter),
            ("/health\r\nX: y", HealthPathError::BadCharacter),
        ] {
            assert_eq!(validate_health_path(bad), Err(why), "{bad:?}");
        }
    }
}
