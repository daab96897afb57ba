//! How deep a JSON text nests, found by one pass over its bytes before any
//! value tree is built.
//!
//! simd-json builds (and drops) its value tree recursively, so a body of
//! 500,000 `[` overflows a thread's stack — an abort that `catch_unwind`
//! cannot catch. Its parser has no depth limit, so this scan runs first: it
//! tracks only "inside a string" and "after a backslash", costs one branch
//! per byte, and stops at the first bracket past the limit. Whether the text
//! is otherwise valid JSON is left to the parser.

/// Nesting a v1 batch needs: the envelope object, `events`, one event, and a
/// `text_list` attribute inside it. The page object sits at level 2.
pub const BATCH_DEPTH: usize = 4;

/// Nesting a Kafka record of Chronos needs (docs/kafka-record.md): the record
/// object, its `events`, one event and a `text_list` attribute; a dead
/// letter's `event` holds a client's event (at most `BATCH_DEPTH - 1` deep
/// once receipt let it through). Two levels of slack for records written by
/// other producers or by import's record form.
pub const RECORD_DEPTH: usize = 6;

/// The text nests deeper than the limit: where (byte offset of the opening
/// bracket past the limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    pub offset: usize,
    pub limit: usize,
}

impl std::fmt::Display for TooDeep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nested deeper than {} levels at byte {}", self.limit, self.offset)
    }
}

/// Checks that no `[` or `{` outside a string opens level `limit + 1`.
pub fn check(text: &[u8], limit: usize) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (offset, &b) in text.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(TooDeep { offset, limit });
                }
            }
            // Unbalanced closers are the parser's to report.
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_passes_and_one_over_is_refused_where_it_opens() {
        assert_eq!(check(b"[[[[1]]]]", 4), Ok(()));
        assert_eq!(check(b"[[[[[1]]]]]", 4), Err(TooDeep { offset: 4, limit: 4 }));
        assert_eq!(check(br#"{"a":{"b":[{}]}}"#, 4), Ok(()));
        assert_eq!(check(br#"{"a":{"b":[{"c":[]}]}}"#, 4), Err(TooDeep { offset: 16, limit: 4 }));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        assert_eq!(check(br#"["[[[[[[[[{{{{{{"]"#, 1), Ok(()));
        // An escaped quote does not end the string; an escaped backslash does not escape the quote after it.
        assert_eq!(check(br#"["\"[[[[", "\\", "x"]"#, 1), Ok(()));
        assert_eq!(check(br#"["\\"[["#, 1), Err(TooDeep { offset: 5, limit: 1 }));
    }

    #[test]
    fn siblings_do_not_add_up() {
        let wide = format!("[{}1]", "[1],".repeat(100_000));
        assert_eq!(check(wide.as_bytes(), 2), Ok(()));
    }

    #[test]
    fn half_a_million_brackets_are_refused_at_once() {
        let deep = vec![b'['; 500_000];
        assert_eq!(check(&deep, BATCH_DEPTH), Err(TooDeep { offset: BATCH_DEPTH, limit: BATCH_DEPTH }));
    }
}
