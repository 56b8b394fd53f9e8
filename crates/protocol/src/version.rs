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
