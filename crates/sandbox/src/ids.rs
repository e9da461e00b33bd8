//! Unguessable identifiers (130 random bits in base32, or 128 in hex).

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the system's random source failed");
    b
}

/// `prefix` followed by 26 base32 characters (130 random bits).
pub fn base32_id(prefix: &str) -> String {
    let bytes = random::<26>();
    let mut s = String::with_capacity(prefix.len() + 26);
    s.push_str(prefix);
    s.extend(bytes.iter().map(|b| BASE32[(b & 31) as usize] as char));
    s
}

/// A sandbox id: `sb_…`.
pub fn sandbox_id() -> String {
    base32_id("sb_")
}

/// A code run id: `run_…`.
pub fn run_id() -> String {
    base32_id("run_")
}

/// An artifact id: `art_…`.
pub fn artifact_id() -> String {
    base32_id("art_")
}

/// A command id: `cmd_…`.
pub fn command_id() -> String {
    base32_id("cmd_")
}

/// A context id: 32 lowercase hex digits.
pub fn context_id() -> String {
    random::<16>().iter().map(|b| format!("{b:02x}")).collect()
}

/// A secret token (256 bits, hex).
pub fn token() -> String {
    random::<32>().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` has the shape of an id made by [`base32_id`] with `prefix` (cheap check before
/// any lookup).
pub fn is_base32_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|r| r.len() == 26 && r.bytes().all(|b| BASE32.contains(&b)))
}

/// Whether `s` is 32 lowercase hex digits.
pub fn is_context_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let s = sandbox_id();
        assert!(is_base32_id(&s, "sb_"), "{s}");
        assert_ne!(s, sandbox_id());
        assert!(is_base32_id(&run_id(), "run_"));
        assert!(!is_base32_id("run_short", "run_"));
        assert!(!is_base32_id(&run_id(), "sb_"));
        assert!(is_context_id(&context_id()));
        assert!(!is_context_id("ABCDEF0123456789abcdef0123456789"));
        assert_eq!(token().len(), 64);
    }
}
