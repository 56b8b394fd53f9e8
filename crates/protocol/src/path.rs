//! The reserved `__internal` path segment: never reachable from outside.

/// Whether one path segment is reserved: it starts with `__internal`, in any
/// ASCII case.
pub fn is_internal_segment(segment: &str) -> bool {
    const PREFIX: &[u8] = b"__internal";
    segment
        .as_bytes()
        .get(..PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(PREFIX))
}

/// Whether any `/`-separated segment of `path` is reserved.
pub fn path_has_internal_segment(path: &str) -> bool {
    path.split('/').any(is_internal_segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments() {
        assert!(is_internal_segment("__internal"));
        assert!(is_internal_segment("__INTERNAL"));
        assert!(is_internal_segment("__Internal-x"));
        assert!(is_internal_segment("__internal;a=b"));
        assert!(!is_internal_segment("_internal"));
        assert!(!is_internal_segment("x__internal"));
        assert!(!is_internal_segment(""));
        assert!(path_has_internal_segment("/a/__internal/b"));
        assert!(path_has_internal_segment("/__internal"));
        assert!(!path_has_internal_segment("/name__internal"));
    }
}
