//! Signed artifact links: an HMAC of the artifact id and the link's expiry with a key kept in
//! the data directory, so a link can be handed to anyone (a browser, a chat) without other
//! credentials, and stops working when it expires.

use std::path::PathBuf;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use runcell_engine::model::now_ms;
use runcell_sandbox::model::{Artifact, CodeRun};

use super::Sandboxes;
use crate::{Error, Kind, Result};

/// Reads the artifact signing key from `path`, creating it (0600) on first start.
pub(super) fn signing_key(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(k) if k.len() >= 32 => return Ok(k),
        Ok(_) | Err(_) => {}
    }
    let mut k = vec![0u8; 32];
    getrandom::fill(&mut k).map_err(|e| std::io::Error::other(e.to_string()))?;
    crate::write_private(path, &k)?;
    Ok(k)
}

impl Sandboxes {
    /// The base of links: the configured public URL, or the request's host.
    pub fn base_url(&self, host: Option<&str>) -> String {
        if !self.cfg.public_url.is_empty() {
            return self.cfg.public_url.trim_end_matches('/').to_string();
        }
        format!("http://{}", host.unwrap_or("localhost"))
    }

    /// The access token of sandbox `id` (its `X-EXECD-ACCESS-TOKEN`): an HMAC of its id, so
    /// that its owner can be given it again (OpenSandbox's endpoint lookup hands it out with
    /// every endpoint) while the store keeps only its hash. Unguessable without the server's
    /// key, like every signed link.
    pub fn access_token(&self, id: &str) -> String {
        self.hmac_hex(&format!("sandbox-access-token\0{id}"))
    }

    fn hmac_hex(&self, message: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.signing_key)
            .expect("HMAC takes keys of any length");
        mac.update(message.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn signature(&self, id: &str, expires: i64) -> String {
        self.hmac_hex(&format!("{id}.{expires}"))
    }

    /// Checks a link's signature and expiry.
    pub fn verify(&self, id: &str, expires: i64, signature: &str) -> Result<(), Error> {
        let want = self.signature(id, expires);
        if !constant_time_eq(want.as_bytes(), signature.as_bytes()) {
            return Err(Error::new(
                Kind::Forbidden,
                "INVALID_SIGNATURE",
                "this artifact link is not valid (its signature does not match)",
            ));
        }
        if now_ms() / 1000 >= expires {
            return Err(Error::new(
                Kind::Forbidden,
                "LINK_EXPIRED",
                "this artifact link has expired",
            ));
        }
        Ok(())
    }

    fn link(&self, base: &str, id: &str, kind: &str, expires_at: &str) -> String {
        let expires = parse_rfc3339_secs(expires_at).unwrap_or(0);
        format!(
            "{base}/v1/artifacts/{id}/{kind}?expires={expires}&signature={}",
            self.signature(id, expires)
        )
    }

    /// Fills in the signed links of an artifact.
    pub fn artifact_links(&self, mut a: Artifact, base: &str) -> Artifact {
        a.download_url = self.link(base, &a.id, "download", &a.expires_at);
        a.preview_url = self.link(base, &a.id, "preview", &a.expires_at);
        a
    }

    pub fn with_links(&self, mut doc: CodeRun, base: &str) -> CodeRun {
        doc.execution.artifacts = std::mem::take(&mut doc.execution.artifacts)
            .into_iter()
            .map(|a| self.artifact_links(a, base))
            .collect();
        doc
    }

    /// The path of an artifact's content.
    pub fn blob(&self, id: &str) -> PathBuf {
        runcell_sandbox::artifacts::blob_path(&self.scfg.artifact_dir, id)
    }
}

/// Seconds since the epoch of an RFC 3339 time (as written by `rfc3339`, or any other).
pub fn parse_rfc3339_secs(s: &str) -> Option<i64> {
    parse_rfc3339_ms(s).map(|ms| ms.div_euclid(1000))
}

/// Unix milliseconds of an RFC 3339 time: `2026-12-04T21:00:00Z`,
/// `2026-12-04T21:00:00.123456+00:00`, `2026-12-04 21:00:00-05:30`.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (h, mi, se) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let first3: String = frac[..n].chars().chain("000".chars()).take(3).collect();
        ms = first3.parse().ok()?;
        rest = &frac[n..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let o = rest.as_bytes();
            if o.len() != 6 || o[3] != b':' {
                return None;
            }
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_secs;
    Some(secs * 1000 + ms)
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-12-04T21:00:00.123456+00:00"),
            Some(1_796_418_000_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-12-04T22:00:00.5+01:00"),
            Some(1_796_418_000_500)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-12-04 15:30:00-05:30"),
            Some(1_796_418_000_000)
        );
        for bad in [
            "",
            "2026-12-04",
            "2026-12-04T21:00:00",
            "2026-13-04T21:00:00Z",
            "2026-12-04T21:00:00.Z",
            "2026-12-04T21:00:00+0100",
            "２026-12-04T21:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }
}
