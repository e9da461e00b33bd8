//! Comparing a program's output with a test case's expected output: exact, trimmed lines
//! (Judge0's rule), whitespace-separated tokens, and tokens with a floating-point tolerance.
//! A mismatch is explained in a sentence (where the outputs first differ).

use serde::{Deserialize, Serialize};

/// How a judged run's output is compared with the expected output (`comparison` of a request).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComparisonMode {
    /// Byte for byte.
    Exact,
    /// Judge0's rule: every line right-trimmed, trailing blank lines (and trailing whitespace)
    /// ignored. The default.
    TrimmedLines,
    /// The same whitespace-separated tokens, however they are spaced or broken into lines.
    Tokens,
    /// Tokens, where two numbers match within `absolute_tolerance` or `relative_tolerance`.
    Float,
    /// A checker program decides (`checker` of the request).
    Checker,
}

impl ComparisonMode {
    pub const NAMES: &'static str = "exact, trimmed_lines, tokens, float or checker";

    pub fn parse(s: &str) -> Option<ComparisonMode> {
        Some(match s {
            "exact" => ComparisonMode::Exact,
            "trimmed_lines" => ComparisonMode::TrimmedLines,
            "tokens" => ComparisonMode::Tokens,
            "float" => ComparisonMode::Float,
            "checker" => ComparisonMode::Checker,
            _ => return None,
        })
    }
}

/// A comparison that the engine does itself (everything but a checker).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Comparison {
    Exact,
    TrimmedLines,
    Tokens,
    Float { absolute: f64, relative: f64 },
}

/// Default tolerances of `float` comparison.
pub const DEFAULT_TOLERANCE: f64 = 1e-6;
/// Slack for the rounding of the comparison itself (as testlib's `doubleCompare`).
const ROUNDING: f64 = 1e-15;
/// Longest piece of output quoted in a mismatch sentence, characters.
const QUOTE_CHARS: usize = 60;

impl Comparison {
    /// `Ok` when `actual` matches `expected`; otherwise where they first differ.
    pub fn compare(&self, expected: &str, actual: &str) -> Result<(), String> {
        match *self {
            Comparison::Exact => {
                if expected == actual {
                    Ok(())
                } else {
                    Err(first_line_difference(expected, actual, false))
                }
            }
            Comparison::TrimmedLines => {
                let (e, a) = (judge0_strip(expected), judge0_strip(actual));
                if e == a {
                    Ok(())
                } else {
                    Err(first_line_difference(&e, &a, true))
                }
            }
            Comparison::Tokens => compare_tokens(expected, actual, |e, a| e == a),
            Comparison::Float { absolute, relative } => compare_tokens(expected, actual, |e, a| {
                e == a || numbers_match(e, a, absolute, relative)
            }),
        }
    }
}

/// Ruby's `String#rstrip` whitespace (Judge0 is a Ruby program): space, \t, \n, \v, \f, \r and NUL.
fn is_ruby_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r' | '\0')
}

/// Judge0's normalization of outputs before it compares them (`isolate_job.rb`):
/// `text.split("\n").collect(&:rstrip).join("\n").rstrip`.
pub fn judge0_strip(text: &str) -> String {
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.trim_end_matches(is_ruby_space))
        .collect();
    lines.join("\n").trim_end_matches(is_ruby_space).to_string()
}

/// A piece of output for a sentence: quoted, escaped, shortened.
fn quote(s: &str) -> String {
    let mut short: String = s.chars().take(QUOTE_CHARS).collect();
    if short.len() < s.len() {
        short.push('…');
    }
    format!("{short:?}")
}

/// Where two texts that differ first differ, by line.
fn first_line_difference(expected: &str, actual: &str, trimmed: bool) -> String {
    let (mut e, mut a) = (expected.split('\n'), actual.split('\n'));
    let mut line = 1;
    loop {
        match (e.next(), a.next()) {
            (Some(x), Some(y)) if x == y => line += 1,
            (Some(x), Some(y)) => {
                return format!(
                    "line {line} differs: expected {}, got {}",
                    quote(x),
                    quote(y)
                );
            }
            (Some(x), None) => {
                return format!("the output ends before line {line}; expected {}", quote(x));
            }
            (None, Some(y)) => {
                return format!(
                    "the output has more lines than expected; line {line} is {}",
                    quote(y)
                );
            }
            // Same lines: only possible for exact comparison (a trailing newline, say).
            (None, None) => {
                let what = if trimmed { "trimmed " } else { "" };
                return format!(
                    "the {what}outputs differ ({} bytes expected, {} got)",
                    expected.len(),
                    actual.len()
                );
            }
        }
    }
}

fn compare_tokens(
    expected: &str,
    actual: &str,
    same: impl Fn(&str, &str) -> bool,
) -> Result<(), String> {
    let (mut e, mut a) = (expected.split_whitespace(), actual.split_whitespace());
    let mut n = 1;
    loop {
        match (e.next(), a.next()) {
            (None, None) => return Ok(()),
            (Some(x), Some(y)) if same(x, y) => n += 1,
            (Some(x), Some(y)) => {
                return Err(format!(
                    "token {n} differs: expected {}, got {}",
                    quote(x),
                    quote(y)
                ));
            }
            (Some(x), None) => {
                return Err(format!(
                    "the output has {} tokens, expected more (token {n} is {})",
                    n - 1,
                    quote(x)
                ));
            }
            (None, Some(y)) => {
                return Err(format!(
                    "the output has more tokens than the {} expected (token {n} is {})",
                    n - 1,
                    quote(y)
                ));
            }
        }
    }
}

/// Two tokens that are both finite numbers, within an absolute or a relative tolerance.
fn numbers_match(expected: &str, actual: &str, absolute: f64, relative: f64) -> bool {
    let (Ok(e), Ok(a)) = (expected.parse::<f64>(), actual.parse::<f64>()) else {
        return false;
    };
    if !e.is_finite() || !a.is_finite() {
        return false;
    }
    let diff = (a - e).abs();
    diff <= absolute + ROUNDING || diff <= relative * e.abs() + ROUNDING
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(c: Comparison, e: &str, a: &str) -> bool {
        c.compare(e, a).is_ok()
    }

    #[test]
    fn exact_is_byte_for_byte() {
        let c = Comparison::Exact;
        assert!(ok(c, "3\n", "3\n"));
        assert!(!ok(c, "3\n", "3"));
        assert!(!ok(c, "3\n", "3 \n"));
        assert!(!ok(c, "a\nb\n", "a\nc\n"));
        let why = c.compare("a\nb\n", "a\nc\n").unwrap_err();
        assert_eq!(why, "line 2 differs: expected \"b\", got \"c\"");
        let why = c.compare("3\n", "3").unwrap_err();
        assert!(why.contains("ends before line 2"), "{why}");
    }

    #[test]
    fn trimmed_lines_is_judge0s_rule() {
        let c = Comparison::TrimmedLines;
        // Trailing spaces of each line, trailing blank lines, CRLF: ignored.
        assert!(ok(c, "1 2\n3\n", "1 2   \n3\t\n\n\n"));
        assert!(ok(c, "1\n2", "1\r\n2\r\n"));
        assert!(ok(c, "", "\n \n"));
        assert!(ok(c, "x", "x\0"));
        // Leading whitespace, inner blank lines and spaces inside a line count.
        assert!(!ok(c, "1\n2", " 1\n2"));
        assert!(!ok(c, "1\n2", "1\n\n2"));
        assert!(!ok(c, "1 2", "1  2"));
        assert!(!ok(c, "1\n2\n", "1\n"));
        assert_eq!(judge0_strip("a \n b\t\n\n"), "a\n b");
        let why = c.compare("1\n2\n", "1\n3  \n").unwrap_err();
        assert_eq!(why, "line 2 differs: expected \"2\", got \"3\"");
        let why = c.compare("1\n", "1\n2\n").unwrap_err();
        assert!(
            why.contains("more lines than expected; line 2 is \"2\""),
            "{why}"
        );
    }

    #[test]
    fn tokens_ignore_all_whitespace() {
        let c = Comparison::Tokens;
        assert!(ok(c, "1 2 3\n", "1\n2\n   3"));
        assert!(ok(c, "", " \n\t"));
        assert!(!ok(c, "1 2 3", "1 2"));
        assert!(!ok(c, "1 2", "1 2 3"));
        assert!(!ok(c, "1.0", "1"));
        let why = c.compare("a b c", "a x c").unwrap_err();
        assert_eq!(why, "token 2 differs: expected \"b\", got \"x\"");
        let why = c.compare("a b c", "a b").unwrap_err();
        assert!(why.contains("has 2 tokens, expected more"), "{why}");
    }

    #[test]
    fn float_accepts_numbers_within_either_tolerance() {
        let c = Comparison::Float {
            absolute: 1e-6,
            relative: 1e-6,
        };
        assert!(ok(c, "3.141593", "3.14159265"));
        assert!(ok(c, "1", "1.000001"), "exactly the tolerance");
        assert!(ok(c, "0.1", "0.1000009"));
        assert!(!ok(c, "0.1", "0.1000011"));
        assert!(ok(c, "1000000", "1000000.9"), "relative");
        assert!(!ok(c, "1000000", "1000002"));
        assert!(ok(c, "1", "1.0000000"));
        assert!(ok(c, "1e3", "1000"));
        assert!(ok(c, "YES 2.5", "YES\n2.5000001"), "words compare exactly");
        assert!(!ok(c, "YES 2.5", "yes 2.5"));
        assert!(!ok(c, "1", "nan"));
        assert!(!ok(c, "inf", "1e308"));
        assert!(!ok(c, "1 2", "1"));
        let abs_only = Comparison::Float {
            absolute: 0.01,
            relative: 0.0,
        };
        assert!(ok(abs_only, "100", "100.009"));
        assert!(!ok(abs_only, "100", "100.02"));
        let rel_only = Comparison::Float {
            absolute: 0.0,
            relative: 0.01,
        };
        assert!(ok(rel_only, "100", "100.9"));
        assert!(!ok(rel_only, "0.001", "0.0011"));
        let why = c.compare("1.5 2.5", "1.5 2.6").unwrap_err();
        assert_eq!(why, "token 2 differs: expected \"2.5\", got \"2.6\"");
    }

    #[test]
    fn long_pieces_are_shortened_in_sentences() {
        let long = "x".repeat(500);
        let why = Comparison::Exact.compare("a", &long).unwrap_err();
        assert!(why.len() < 150, "{why}");
        assert!(why.contains('…'), "{why}");
    }

    #[test]
    fn modes_parse_by_name() {
        for (s, m) in [
            ("exact", ComparisonMode::Exact),
            ("trimmed_lines", ComparisonMode::TrimmedLines),
            ("tokens", ComparisonMode::Tokens),
            ("float", ComparisonMode::Float),
            ("checker", ComparisonMode::Checker),
        ] {
            assert_eq!(ComparisonMode::parse(s), Some(m));
            assert_eq!(serde_json::to_value(m).unwrap(), s);
        }
        assert_eq!(ComparisonMode::parse("fuzzy"), None);
        assert_eq!(ComparisonMode::parse("Exact"), None);
    }
}
