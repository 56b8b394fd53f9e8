//! Size limits on what one HTTP/1 message may carry, for every reader.

/// Largest message head (request line or status line and fields); a larger
/// request head is 431, a larger response head a broken response.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in one head.
pub const MAX_FIELDS: usize = 100;
/// Largest chunk-size line (with its extensions) or trailer line.
pub const MAX_LINE: usize = 4 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits the documentation gives (security.md, behaviour.md).
    #[test]
    fn limits_are_the_documented_ones() {
        assert_eq!(MAX_HEAD, 65_536);
        assert_eq!(MAX_LINE, 4_096);
        assert_eq!(MAX_FIELDS, 100);
    }
}
