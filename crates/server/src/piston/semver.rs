//! Piston's version selectors: npm `semver` ranges (`*`, `3`, `3.x`, `3.11`, `^3.10`, `~3.11.0`,
//! `>=3 <4`, `1.0.0 - 2`, `a || b`), matched against a language's installed version as Piston's
//! `semver.satisfies` does. Pre-release tags are not supported (no runtime here has one); a
//! selector that is not a range matches nothing.

/// A version: major, minor, patch.
type Version = (u64, u64, u64);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

/// One comparison a version must pass; `None` in a set means the set matches nothing.
type Comparator = Option<(Op, Version)>;

/// The installed version as semver: its first one to three numeric parts (`17` is `17.0.0`,
/// `3.11.2+deb` is `3.11.2`), or none if it does not start with a number.
pub fn coerce(installed: &str) -> Option<Version> {
    let s = installed.trim().trim_start_matches(['v', 'V']);
    let mut parts = [0u64; 3];
    let mut n = 0;
    for piece in s.split('.').take(3) {
        let digits: String = piece.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            break;
        }
        parts[n] = digits.parse().ok()?;
        n += 1;
        if digits.len() != piece.len() {
            break;
        }
    }
    (n > 0).then_some((parts[0], parts[1], parts[2]))
}

/// Whether `installed` satisfies `range` (npm semantics; an invalid range matches nothing).
pub fn satisfies(installed: &str, range: &str) -> bool {
    if installed == range {
        return true;
    }
    let Some(v) = coerce(installed) else {
        return matches!(range.trim(), "" | "*" | "x" | "X");
    };
    range.split("||").any(|set| match parse_set(set) {
        Some(cmps) => cmps.iter().all(|c| passes(v, *c)),
        None => false,
    })
}

fn passes(v: Version, c: Comparator) -> bool {
    let Some((op, w)) = c else { return false };
    match op {
        Op::Lt => v < w,
        Op::Le => v <= w,
        Op::Gt => v > w,
        Op::Ge => v >= w,
        Op::Eq => v == w,
    }
}

/// A partial version: its known leading parts (`1.2.x` is `[1, 2]`).
fn partial(s: &str) -> Option<Vec<u64>> {
    let s = s.trim_start_matches(['v', 'V', '=']);
    // Build metadata and pre-release tags are left out.
    let s = s.split(['+', '-']).next().unwrap_or("");
    if s.is_empty() {
        return Some(Vec::new());
    }
    let mut known = Vec::new();
    let mut wild = false;
    for (i, piece) in s.split('.').enumerate() {
        if i >= 3 {
            return None;
        }
        if matches!(piece, "x" | "X" | "*") {
            wild = true;
        } else if wild {
            return None;
        } else {
            known.push(piece.parse().ok()?);
        }
    }
    Some(known)
}

fn filled(p: &[u64]) -> Version {
    (
        p.first().copied().unwrap_or(0),
        p.get(1).copied().unwrap_or(0),
        p.get(2).copied().unwrap_or(0),
    )
}

/// The first version above every version that `p` (with fewer than 3 parts) stands for.
fn above(p: &[u64]) -> Version {
    match p {
        [m] => (m + 1, 0, 0),
        [m, n, ..] => (*m, n + 1, 0),
        [] => (u64::MAX, 0, 0),
    }
}

/// The comparators of one space-separated set (or a hyphen range).
fn parse_set(set: &str) -> Option<Vec<Comparator>> {
    let words: Vec<&str> = set.split_whitespace().collect();
    if let [a, "-", b] = words[..] {
        let (a, b) = (partial(a)?, partial(b)?);
        let mut out = vec![Some((Op::Ge, filled(&a)))];
        out.push(match b.len() {
            0 => Some((Op::Ge, (0, 0, 0))),
            3 => Some((Op::Le, filled(&b))),
            _ => Some((Op::Lt, above(&b))),
        });
        return Some(out);
    }
    // An operator may stand apart from its version (`>= 1.2`).
    let mut tokens: Vec<String> = Vec::new();
    let mut pending = String::new();
    for w in words {
        if w.chars().all(|c| "<>=~^".contains(c)) {
            pending.push_str(w);
        } else {
            tokens.push(format!("{pending}{w}"));
            pending.clear();
        }
    }
    if !pending.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for t in tokens {
        out.extend(comparators(&t)?);
    }
    Some(out)
}

/// The comparators of one `<op><partial>`.
fn comparators(t: &str) -> Option<Vec<Comparator>> {
    let (op, rest) = ["<=", ">=", "~>", "<", ">", "=", "~", "^"]
        .iter()
        .find_map(|op| t.strip_prefix(op).map(|r| (*op, r)))
        .unwrap_or(("", t));
    let p = partial(rest)?;
    let k = p.len();
    let lo = Some((Op::Ge, filled(&p)));
    let any = vec![Some((Op::Ge, (0, 0, 0)))];
    Some(match op {
        "" | "=" if k == 3 => vec![Some((Op::Eq, filled(&p)))],
        "" | "=" if k == 0 => any,
        "" | "=" => vec![lo, Some((Op::Lt, above(&p)))],
        ">" if k == 0 => vec![None],
        ">" if k == 3 => vec![Some((Op::Gt, filled(&p)))],
        ">" => vec![Some((Op::Ge, above(&p)))],
        ">=" => vec![lo],
        "<" if k == 0 => vec![None],
        "<" => vec![Some((Op::Lt, filled(&p)))],
        "<=" if k == 0 => any,
        "<=" if k == 3 => vec![Some((Op::Le, filled(&p)))],
        "<=" => vec![Some((Op::Lt, above(&p)))],
        "~" | "~>" if k == 0 => any,
        "~" | "~>" if k == 1 => vec![lo, Some((Op::Lt, above(&p)))],
        "~" | "~>" => vec![lo, Some((Op::Lt, above(&p[..2])))],
        // ^: the leftmost non-zero part stays.
        _ if k == 0 => any,
        _ => {
            let (m, n, pa) = filled(&p);
            let hi = if m > 0 || k == 1 {
                (m + 1, 0, 0)
            } else if n > 0 || k == 2 {
                (0, n + 1, 0)
            } else {
                (0, 0, pa + 1)
            };
            vec![lo, Some((Op::Lt, hi))]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_as_npm_semver_does() {
        let yes = [
            "3.11.2",
            "*",
            "",
            "x",
            "3",
            "3.x",
            "3.11",
            "3.11.x",
            "=3.11.2",
            "v3.11.2",
            "^3",
            "^3.10",
            "^3.11.1",
            "~3.11.0",
            "~3.11",
            "~3",
            ">=3.11.2",
            ">3.11.1",
            ">3.10",
            ">= 3 < 4",
            "<4",
            "<=3.11",
            "<=3.11.2",
            "3.0.0 - 3.12",
            "3.11.2 - 4",
            "2 || 3",
            "1.x || >=3.11.0 <3.12.0",
        ];
        for r in yes {
            assert!(satisfies("3.11.2", r), "{r:?} should match 3.11.2");
        }
        let no = [
            "3.1",
            "2",
            "3.12",
            "^3.12",
            "~3.10",
            ">3.11",
            ">3.11.2",
            "<3.11.2",
            "<3",
            "<=3.10",
            "3.12.0 - 4",
            "1 - 3.10",
            "banana",
            "3.11.2.1",
            ">",
            "1 || 2",
            "<*",
            ">*",
        ];
        for r in no {
            assert!(!satisfies("3.11.2", r), "{r:?} should not match 3.11.2");
        }
        // ^ with leading zeros keeps the leftmost non-zero part.
        assert!(satisfies("0.2.5", "^0.2.3"));
        assert!(!satisfies("0.3.0", "^0.2.3"));
        assert!(satisfies("0.0.3", "^0.0.3"));
        assert!(!satisfies("0.0.4", "^0.0.3"));
        assert!(satisfies("0.0.9", "^0.0"));
        assert!(!satisfies("0.1.0", "^0.0"));
    }

    #[test]
    fn installed_versions_are_coerced() {
        assert_eq!(coerce("17"), Some((17, 0, 0)));
        assert_eq!(coerce("3.11.2+deb12u1"), Some((3, 11, 2)));
        assert_eq!(coerce("1.63.0-nightly"), Some((1, 63, 0)));
        assert_eq!(coerce("unknown"), None);
        // Whatever the listing shows is accepted back as it is.
        assert!(satisfies("5.2.15(1)-release", "5.2.15(1)-release"));
        assert!(satisfies("17", "17.0.0"));
        assert!(satisfies("unknown", "*"));
        assert!(!satisfies("unknown", "1"));
    }
}
