//! Waifu names: a DNS label, `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`.
//!
//! A name becomes a path segment, a database and a role name, so the rule is
//! deliberately narrow: nothing in it needs quoting anywhere.

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is longer than 63 characters")]
    TooLong,
    #[error("the name may contain only lowercase letters a-z, digits and '-'")]
    BadCharacter,
    #[error("the name must start and end with a letter or a digit")]
    BadEdge,
}

/// Checks that `name` is a DNS label, as every waifu name must be.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Err(NameError::Empty);
    };
    if bytes.len() > 63 {
        return Err(NameError::TooLong);
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err(NameError::BadCharacter);
    }
    if *first == b'-' || *last == b'-' {
        return Err(NameError::BadEdge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let cases: &[(&str, Result<(), NameError>)] = &[
            ("link", Ok(())),
            ("a", Ok(())),
            ("0", Ok(())),
            ("a-b-9", Ok(())),
            (&"a".repeat(63), Ok(())),
            ("", Err(NameError::Empty)),
            (&"a".repeat(64), Err(NameError::TooLong)),
            ("Link", Err(NameError::BadCharacter)),
            ("a_b", Err(NameError::BadCharacter)),
            ("a.b", Err(NameError::BadCharacter)),
            ("a/b", Err(NameError::BadCharacter)),
            ("__internal", Err(NameError::BadCharacter)),
            ("é", Err(NameError::BadCharacter)),
            ("-a", Err(NameError::BadEdge)),
            ("a-", Err(NameError::BadEdge)),
        ];
        for (name, want) in cases {
            assert_eq!(validate_name(name), *want, "{name:?}");
        }
    }
}
