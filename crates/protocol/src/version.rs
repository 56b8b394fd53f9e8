//! Instance versions: what a hello may say it runs, `1`–`64` visible ASCII
//! characters (`1.4.2`, `2026-12-02.3`, a commit hash).

/// Longest version accepted.
pub const MAX_VERSION: usize = 64;

/// Why a version was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("the version is empty")]
    Empty,
    #[error("the version is longer than {MAX_VERSION} characters")]
    TooLong,
    #[error("the version may contain only visible ASCII characters (no spaces)")]
    BadCharacter,
}

/// Checks that `version` is 1–64 visible ASCII characters.
pub fn validate_version(version: &str) -> Result<(), VersionError> {
    if version.is_empty() {
        return Err(VersionError::Empty);
    }
    if version.len() > MAX_VERSION {
        return Err(VersionError::TooLong);
    }
    if !version.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(VersionError::BadCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for ok in ["1", "1.4.2", "2026-12-02.3", "v2+build.7", &"a".repeat(64)] {
            assert_eq!(validate_version(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_version(""), Err(VersionError::Empty));
        assert_eq!(
            validate_version(&"a".repeat(65)),
            Err(VersionError::TooLong)
        );
        for bad in ["1 2", "é", "1\t", "a\n"] {
            assert_eq!(
                validate_version(bad),
                Err(VersionError::BadCharacter),
                "{bad:?}"
            );
        }
    }
}

/// The most steps a rollout has.
pub const MAX_ROLLOUT_STEPS: usize = 20;

/// Whether `steps` can be a rollout's: 1 to 20 percents from 1 to 100,
/// each above the last, ending with 100; why not, in words.
pub fn validate_rollout_steps(steps: &[i32]) -> Result<(), String> {
    if steps.is_empty() || steps.len() > MAX_ROLLOUT_STEPS {
        return Err(format!("1 to {MAX_ROLLOUT_STEPS} steps"));
    }
    if steps.iter().any(|s| !(1..=100).contains(s)) {
        return Err("each step is a percent from 1 to 100".to_owned());
    }
    if steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err("each step is above the one before".to_owned());
    }
    if steps.last() != Some(&100) {
        return Err("the last step is 100".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod rollout_steps {
    use super::validate_rollout_steps;

    #[test]
    fn steps_rise_to_100() {
        assert!(validate_rollout_steps(&[10, 50, 100]).is_ok());
        assert!(validate_rollout_steps(&[100]).is_ok());
        for bad in [
            &[][..],
            &[10, 50],
            &[50, 10, 100],
            &[0, 100],
            &[10, 10, 100],
            &[10, 101],
        ] {
            assert!(validate_rollout_steps(bad).is_err(), "{bad:?}");
        }
        assert!(validate_rollout_steps(&[1; 21]).is_err());
    }
}
