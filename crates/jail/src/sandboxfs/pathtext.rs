//! The text form of sandbox paths: how a path, which is any string of bytes, travels in JSON
//! and URLs, which carry only Unicode text.
//!
//! * A path that is valid UTF-8 is written as it is, unless it starts with the marker
//!   [`ENCODED_PATH_PREFIX`] (`/%/`).
//! * Any other absolute path (one with bytes that are not UTF-8, or one that starts with the
//!   marker) is written as the marker followed by the path without its leading `/`, in which
//!   every `%` becomes `%25` and every byte of an invalid UTF-8 sequence becomes `%XX`
//!   (uppercase hex). Valid characters, `/` included, stay as they are:
//!   `/workspace/caf\xE9 50%.txt` is `/%/workspace/caf%E9 50%25.txt`.
//!
//! Reading a path back ([`decode_path`]), only a string that starts with the marker is
//! decoded (every `%XX` becomes the byte `XX`; a `%` without two hex digits is refused), and
//! the result is the absolute path `/` + the decoded rest. Every other string is taken
//! literally, byte for byte, so a valid UTF-8 name that merely contains `%` is never misread.
//!
//! The two are inverse: `decode_path(encode_path(p)) == p` for every absolute path `p`. The
//! marker is unambiguous: read literally, `/%/…` would name something inside a directory `%`
//! at the sandbox's root, and the root is read-only and has no such entry; and even if it had,
//! its paths would be written in the encoded form (they start with the marker), so every
//! path an answer gives still reads back as exactly that path.
//!
//! Decoding only turns text into bytes: the result is then checked and normalized like any
//! other path, so an encoded `/` is a separator, an encoded `..` is the same `..` (it stays
//! inside the view) and an encoded NUL is refused.

use std::borrow::Cow;

/// Starts the text form of a path that is not plain UTF-8 (see the module documentation).
pub const ENCODED_PATH_PREFIX: &str = "/%/";

/// Whether a path's text form is encoded (starts with [`ENCODED_PATH_PREFIX`]).
pub fn is_encoded_path(text: &str) -> bool {
    text.starts_with(ENCODED_PATH_PREFIX)
}

/// The text form of an absolute path (one that starts with `/`).
pub fn encode_path(raw: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(raw)
        && !is_encoded_path(s)
    {
        return Cow::Borrowed(s);
    }
    let rest = raw.strip_prefix(b"/").unwrap_or(raw);
    let mut out = String::with_capacity(ENCODED_PATH_PREFIX.len() + rest.len() + 8);
    out.push_str(ENCODED_PATH_PREFIX);
    for chunk in rest.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '%' {
                out.push_str("%25");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            push_hex(&mut out, *b);
        }
    }
    Cow::Owned(out)
}

fn push_hex(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[(b >> 4) as usize] as char);
    out.push(HEX[(b & 15) as usize] as char);
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The bytes of a path given in text form: literally, or decoded if it starts with
/// [`ENCODED_PATH_PREFIX`]. The only error is a malformed escape after the marker.
pub fn decode_path(text: &str) -> Result<Cow<'_, [u8]>, &'static str> {
    let Some(rest) = text.strip_prefix(ENCODED_PATH_PREFIX) else {
        return Ok(Cow::Borrowed(text.as_bytes()));
    };
    let rest = rest.as_bytes();
    let mut out = Vec::with_capacity(rest.len() + 1);
    out.push(b'/');
    let mut i = 0;
    while i < rest.len() {
        let b = rest[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hi = rest.get(i + 1).copied().and_then(hex_value);
        let lo = rest.get(i + 2).copied().and_then(hex_value);
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(
                "a path that starts with /%/ is percent-encoded, and each '%' in it \
                        must be followed by two hex digits (write '%' itself as %25)",
            );
        };
        out.push(hi << 4 | lo);
        i += 3;
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(raw: &[u8]) -> String {
        encode_path(raw).into_owned()
    }

    fn dec(text: &str) -> Vec<u8> {
        decode_path(text).unwrap().into_owned()
    }

    #[test]
    fn utf8_paths_are_written_as_they_are() {
        for p in [
            "/",
            "/workspace/a.txt",
            "/workspace/50% off/%41%2F..",
            "/workspace/été/日本",
            "/%",
            "/%x",
            "/workspace/%/x",
            "/a\\b\n",
        ] {
            assert!(matches!(encode_path(p.as_bytes()), Cow::Borrowed(_)), "{p}");
            assert_eq!(enc(p.as_bytes()), p);
            assert_eq!(dec(p), p.as_bytes());
        }
    }

    #[test]
    fn other_paths_are_encoded_under_the_marker() {
        assert_eq!(enc(b"/workspace/caf\xE9.txt"), "/%/workspace/caf%E9.txt");
        assert_eq!(
            enc(b"/workspace/caf\xE9 50%.txt"),
            "/%/workspace/caf%E9 50%25.txt"
        );
        // Valid characters stay readable next to invalid bytes.
        assert_eq!(enc("/é/ÿ\u{80}".as_bytes()), "/é/ÿ\u{80}");
        assert_eq!(enc(b"/\xC3\xA9/\xFF\xC3"), "/%/é/%FF%C3");
        // A UTF-8 path that looks encoded is encoded itself.
        assert_eq!(enc(b"/%/x"), "/%/%25/x");
        assert_eq!(enc(b"/%/%41"), "/%/%25/%2541");
        for p in [
            &b"/workspace/caf\xE9.txt"[..],
            b"/%/x",
            b"/%/%41",
            b"/\xFF/\xFE\xFD/%/%%",
            b"/\xED\xA0\x80",
            b"/\xF4\x90\x80\x80",
        ] {
            let t = enc(p);
            assert!(is_encoded_path(&t), "{t}");
            assert_eq!(dec(&t), p, "{t}");
        }
    }

    #[test]
    fn every_absolute_path_round_trips() {
        // Deterministic pseudo-random byte strings over an alphabet that stresses the codec.
        let alphabet: &[u8] = b"/%aZ09.\\\x00\x7F\x80\xBF\xC0\xC3\xA9\xE9\xED\xF0\xF4\xFF25";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut p = vec![b'/'];
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let t = enc(&p);
            assert_eq!(dec(&t), p, "{p:?} -> {t:?}");
            assert_eq!(
                is_encoded_path(&t),
                match std::str::from_utf8(&p) {
                    Ok(s) => s.starts_with("/%/"),
                    Err(_) => true,
                },
                "{p:?} -> {t:?}"
            );
        }
    }

    #[test]
    fn decoding_is_explicit_and_strict() {
        // Without the marker, '%' is an ordinary character.
        assert_eq!(dec("%2e%2e/%2e%2e/etc"), b"%2e%2e/%2e%2e/etc");
        assert_eq!(dec("/workspace/%E9"), b"/workspace/%E9");
        assert_eq!(dec("//%/x"), b"//%/x");
        assert_eq!(dec("./%/x"), b"./%/x");
        assert_eq!(dec("%/x"), b"%/x");
        // With it, any escape is decoded, in either case.
        assert_eq!(dec("/%/workspace/caf%e9"), b"/workspace/caf\xE9");
        assert_eq!(dec("/%/%2e%2E/%2F%00"), b"/../\x2F\x00");
        assert_eq!(dec("/%/"), b"/");
        for bad in ["/%/%", "/%/%4", "/%/%G0", "/%/a%z1", "/%/%%41", "/%/%é1"] {
            assert!(decode_path(bad).is_err(), "{bad}");
        }
    }
}
