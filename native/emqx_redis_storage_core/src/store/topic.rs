//! MQTT topic names and topic filters, as defined in section 4.7 of
//! MQTT 3.1.1 and MQTT 5.0.
//!
//! Everything works on raw bytes exactly as they arrive from the broker: no
//! normalisation, no trimming, empty levels are significant. Functions here
//! never panic, whatever the input, because they are called across a NIF
//! boundary.

use std::fmt;

/// Longest topic name or filter allowed by the protocol, in bytes.
pub const MAX_LEN: usize = 65_535;

/// Why a topic name or filter is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// Zero bytes long.
    Empty,
    /// More than [`MAX_LEN`] bytes.
    TooLong,
    /// Not well-formed UTF-8 (this includes encoded surrogates).
    InvalidUtf8,
    /// Contains U+0000.
    ContainsNul,
    /// A topic name contains `+` or `#`.
    WildcardInName,
    /// A `#` that is not alone in its level or not in the last level.
    MisplacedMultiLevel,
    /// A `+` that is not alone in its level.
    MisplacedSingleLevel,
}

impl TopicError {
    /// Stable snake_case reason, used as an Erlang atom.
    pub fn as_str(&self) -> &'static str {
        match self {
            TopicError::Empty => "empty",
            TopicError::TooLong => "too_long",
            TopicError::InvalidUtf8 => "invalid_utf8",
            TopicError::ContainsNul => "contains_nul",
            TopicError::WildcardInName => "wildcard_in_name",
            TopicError::MisplacedMultiLevel => "misplaced_multi_level_wildcard",
            TopicError::MisplacedSingleLevel => "misplaced_single_level_wildcard",
        }
    }
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for TopicError {}

/// Checks shared by names and filters. The order of the checks fixes which
/// error is reported when several apply.
fn validate_string(s: &[u8]) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(TopicError::TooLong);
    }
    if std::str::from_utf8(s).is_err() {
        return Err(TopicError::InvalidUtf8);
    }
    // U+0000 is valid UTF-8 but forbidden by the protocol.
    if s.contains(&0) {
        return Err(TopicError::ContainsNul);
    }
    Ok(())
}

// `/`, `+` and `#` are ASCII, and in UTF-8 an ASCII byte never occurs inside a
// multi-byte sequence, so scanning bytes is as good as scanning characters.
fn levels(s: &[u8]) -> std::slice::Split<'_, u8, impl FnMut(&u8) -> bool> {
    s.split(|&b| b == b'/')
}

/// Validates a topic name (what a PUBLISH carries).
pub fn validate_name(t: &[u8]) -> Result<(), TopicError> {
    validate_string(t)?;
    if t.iter().any(|&b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Validates a topic filter (what a SUBSCRIBE carries).
pub fn validate_filter(f: &[u8]) -> Result<(), TopicError> {
    validate_string(f)?;
    let mut levels = levels(f).peekable();
    while let Some(level) = levels.next() {
        if level.contains(&b'#') && (level != b"#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedMultiLevel);
        }
        if level.contains(&b'+') && level != b"+" {
            return Err(TopicError::MisplacedSingleLevel);
        }
    }
    Ok(())
}

/// Whether the topic name `name` matches the topic filter `filter`.
///
/// Both inputs are validated first: if `name` is not a valid topic name or
/// `filter` is not a valid topic filter the answer is `false`. This keeps the
/// function total and gives [`crate::store::route_index`] a precise contract to
/// mirror.
pub fn matches(name: &[u8], filter: &[u8]) -> bool {
    validate_name(name).is_ok() && validate_filter(filter).is_ok() && matches_valid(name, filter)
}

/// [`matches`] for inputs already known to be valid.
fn matches_valid(name: &[u8], filter: &[u8]) -> bool {
    // Topics starting with `$` are reserved for the server and must not be
    // matched by a filter starting with a wildcard (4.7.2). In a valid filter
    // a leading `+` or `#` byte is necessarily the whole first level.
    if name.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
        return false;
    }
    let mut names = levels(name);
    let mut filters = levels(filter);
    loop {
        match (filters.next(), names.next()) {
            // `#` also matches the parent level, i.e. when no level is left.
            (Some(b"#"), _) => return true,
            (Some(f), Some(n)) => {
                if f != b"+" && f != n {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_ok(t: &str) -> bool {
        validate_name(t.as_bytes()).is_ok()
    }

    fn filter_ok(f: &str) -> bool {
        validate_filter(f.as_bytes()).is_ok()
    }

    fn m(name: &str, filter: &str) -> bool {
        matches(name.as_bytes(), filter.as_bytes())
    }

    // 4.7.1.2 Multi-level wildcard.
    #[test]
    fn spec_multi_level_wildcard() {
        let f = "sport/tennis/player1/#";
        assert!(filter_ok(f));
        assert!(m("sport/tennis/player1", f));
        assert!(m("sport/tennis/player1/ranking", f));
        assert!(m("sport/tennis/player1/score/wimbledon", f));
        assert!(m("sport", "sport/#"));
        assert!(filter_ok("#"));
        assert!(filter_ok("sport/tennis/#"));
        assert_eq!(
            validate_filter(b"sport/tennis#"),
            Err(TopicError::MisplacedMultiLevel)
        );
        assert_eq!(
            validate_filter(b"sport/tennis/#/ranking"),
            Err(TopicError::MisplacedMultiLevel)
        );
    }

    // 4.7.1.3 Single-level wildcard.
    #[test]
    fn spec_single_level_wildcard() {
        let f = "sport/tennis/+";
        assert!(filter_ok(f));
        assert!(m("sport/tennis/player1", f));
        assert!(m("sport/tennis/player2", f));
        assert!(!m("sport/tennis/player1/ranking", f));
        assert!(!m("sport", "sport/+"));
        assert!(m("sport/", "sport/+"));
        assert!(filter_ok("+"));
        assert!(filter_ok("+/tennis/#"));
        assert_eq!(
            validate_filter(b"sport+"),
            Err(TopicError::MisplacedSingleLevel)
        );
        assert!(filter_ok("sport/+/player1"));
        assert!(m("/finance", "+/+"));
        assert!(m("/finance", "/+"));
        assert!(!m("/finance", "+"));
    }

    // 4.7.2 Topics beginning with $.
    #[test]
    fn spec_dollar_topics() {
        assert!(!m("$SYS/broker/uptime", "#"));
        assert!(!m("$SYS", "#"));
        assert!(!m("$SYS/monitor/Clients", "+/monitor/Clients"));
        assert!(!m("$SYS", "+"));
        assert!(m("$SYS/broker/uptime", "$SYS/#"));
        assert!(m("$SYS", "$SYS/#"));
        assert!(m("$SYS/monitor/Clients", "$SYS/monitor/+"));
        // Only the first level is special.
        assert!(m("a/$SYS", "a/+"));
        assert!(m("a/$SYS", "#"));
        assert!(m("$", "$"));
        assert!(!m("$", "#"));
        assert!(!m("$", "+"));
        assert!(name_ok("$"));
    }

    // 4.7.3 Topic semantic and usage.
    #[test]
    fn spec_semantics() {
        assert!(!m("ACCOUNTS", "Accounts"));
        assert!(!m("Accounts", "ACCOUNTS"));
        assert!(m("Accounts", "Accounts"));
        assert!(name_ok("Accounts payable"));
        assert!(filter_ok("Accounts payable"));
        assert!(m("Accounts payable", "Accounts payable"));
        assert!(!m("Accounts payable", "Accountspayable"));
        assert!(!m("/finance", "finance"));
        assert!(!m("finance", "/finance"));
        assert!(name_ok("/"));
        assert!(filter_ok("/"));
        assert!(m("/", "/"));
    }

    #[test]
    fn empty_levels() {
        assert!(name_ok("a//b"));
        assert!(m("a//b", "a/+/b"));
        assert!(m("a//b", "a//b"));
        assert!(!m("a/b", "a//b"));
        assert!(!m("a//b", "a/b"));
        assert!(m("/", "+/+"));
        assert!(m("/", "/+"));
        assert!(m("/", "+/"));
        assert!(!m("/", "+"));
        assert!(m("a/", "a/#"));
        assert!(m("a/", "a/+"));
        assert!(!m("a/", "a"));
        assert!(m("//", "+/+/+"));
        assert!(m("//", "/#"));
        assert!(m("//", "//#"));
    }

    #[test]
    fn multi_level_edge_cases() {
        assert!(m("a", "a/#"));
        assert!(!m("a", "a/+/#"));
        assert!(m("a/b", "a/+/#"));
        assert!(!m("ab", "a/#"));
        assert!(!m("b", "a/#"));
        assert!(m("/", "#"));
        assert!(m("a", "#"));
        assert!(m("/", "/#"));
        assert!(!m("a", "/#"));
        assert!(m("a", "+/#"));
        assert!(m("a/b/c", "+/#"));
        assert!(!m("$a/b", "+/#"));
    }

    #[test]
    fn empty() {
        assert_eq!(validate_name(b""), Err(TopicError::Empty));
        assert_eq!(validate_filter(b""), Err(TopicError::Empty));
        assert!(!m("", "#"));
        assert!(!m("a", ""));
    }

    #[test]
    fn nul() {
        assert_eq!(validate_name(b"a\0b"), Err(TopicError::ContainsNul));
        assert_eq!(validate_filter(b"a/\0"), Err(TopicError::ContainsNul));
        assert_eq!(validate_name(b"\0"), Err(TopicError::ContainsNul));
        assert!(!m("a\0", "#"));
        assert!(!m("a\0", "a\0"));
    }

    #[test]
    fn invalid_utf8() {
        let bad: [&[u8]; 5] = [
            b"\xff",
            b"a/\xc3",           // truncated sequence
            b"\xc0\x80",         // overlong NUL
            b"\xed\xa0\x80",     // encoded surrogate U+D800
            b"\xf4\x90\x80\x80", // above U+10FFFF
        ];
        for b in bad {
            assert_eq!(validate_name(b), Err(TopicError::InvalidUtf8));
            assert_eq!(validate_filter(b), Err(TopicError::InvalidUtf8));
            assert!(!matches(b, b"#"));
            assert!(!matches(b, b));
        }
    }

    #[test]
    fn multi_byte_utf8() {
        let t = "caf\u{e9}/\u{20ac}/\u{1d11e}";
        assert!(name_ok(t));
        assert!(filter_ok(t));
        assert!(m(t, t));
        assert!(m(t, "+/\u{20ac}/+"));
        assert!(m(t, "caf\u{e9}/#"));
        assert!(!m(t, "cafe/#"));
        assert!(filter_ok("\u{20ac}/+/#"));
        assert_eq!(
            validate_filter("\u{20ac}+".as_bytes()),
            Err(TopicError::MisplacedSingleLevel)
        );
    }

    #[test]
    fn length_limits() {
        let max = "a".repeat(MAX_LEN);
        assert!(name_ok(&max));
        assert!(filter_ok(&max));
        assert!(m(&max, &max));
        assert!(m(&max, "#"));
        let over = "a".repeat(MAX_LEN + 1);
        assert_eq!(validate_name(over.as_bytes()), Err(TopicError::TooLong));
        assert_eq!(validate_filter(over.as_bytes()), Err(TopicError::TooLong));
        assert!(!m(&over, "#"));
        // The limit is in bytes, not characters.
        let euros = "\u{20ac}".repeat(MAX_LEN / 3);
        assert_eq!(euros.len(), MAX_LEN);
        assert!(name_ok(&euros));
        let too_many_euros = format!("{euros}a");
        assert_eq!(
            validate_name(too_many_euros.as_bytes()),
            Err(TopicError::TooLong)
        );
        // Many empty levels.
        let slashes = "/".repeat(MAX_LEN);
        assert!(name_ok(&slashes));
        assert!(m(&slashes, &slashes));
        assert!(m(&slashes, "/#"));
    }

    #[test]
    fn wildcards_in_names() {
        for t in ["+", "#", "a/+", "a/#", "a+b", "#/a", "a#"] {
            assert_eq!(
                validate_name(t.as_bytes()),
                Err(TopicError::WildcardInName),
                "{t}"
            );
            assert!(!m(t, t), "{t}");
            assert!(!m(t, "#"), "{t}");
        }
    }

    #[test]
    fn filter_wildcard_placement() {
        for f in ["#", "+", "+/+", "/#", "+/#", "a/+/b/#", "+/", "//+//"] {
            assert!(filter_ok(f), "{f}");
        }
        for f in ["#/", "#/a", "a#", "#a", "a/#b", "##", "#/#", "+#"] {
            assert_eq!(
                validate_filter(f.as_bytes()),
                Err(TopicError::MisplacedMultiLevel),
                "{f}"
            );
        }
        for f in ["a+", "+a", "++", "a/+b/c", "a/b+"] {
            assert_eq!(
                validate_filter(f.as_bytes()),
                Err(TopicError::MisplacedSingleLevel),
                "{f}"
            );
        }
        // Invalid filters never match.
        assert!(!m("a/b", "a/#/b"));
        assert!(!m("a+", "a+"));
    }

    #[test]
    fn single_level_edge_cases() {
        assert!(m("a", "+"));
        assert!(!m("a/b", "+"));
        assert!(m("a/b", "+/b"));
        assert!(m("a/b", "+/+"));
        assert!(!m("a", "+/+"));
        assert!(m("a/b/c", "a/+/c"));
        assert!(!m("a/b/c/d", "a/+/c"));
    }

    #[test]
    fn error_reasons() {
        let all = [
            (TopicError::Empty, "empty"),
            (TopicError::TooLong, "too_long"),
            (TopicError::InvalidUtf8, "invalid_utf8"),
            (TopicError::ContainsNul, "contains_nul"),
            (TopicError::WildcardInName, "wildcard_in_name"),
            (
                TopicError::MisplacedMultiLevel,
                "misplaced_multi_level_wildcard",
            ),
            (
                TopicError::MisplacedSingleLevel,
                "misplaced_single_level_wildcard",
            ),
        ];
        for (e, s) in all {
            assert_eq!(e.as_str(), s);
            assert_eq!(e.to_string(), s);
        }
    }
}
