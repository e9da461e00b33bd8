//! A live sandbox's lifetime: when it expires, and whether (and why) it has begun to end.
//!
//! Every request answers from this one state, so that an expired sandbox answers
//! `SANDBOX_EXPIRED` in every order of events: after its expiry time but before the reaper
//! gets to it, while the reaper is ending it (the sandbox is still in the live map and its
//! record still says running), and after its record says so. Deletion and expiry claim the end
//! under the same lock as a renewal, so a sandbox is never renewed and ended at once.

use std::sync::Mutex;

use crate::Error;

use super::{EXPIRED, ended};

/// See the module's documentation.
pub(crate) struct Lifetime {
    state: Mutex<State>,
}

struct State {
    expires_at: i64,
    /// Why and when the sandbox began to end, once deleted or expired.
    ended: Option<(String, i64)>,
}

impl Lifetime {
    pub(crate) fn new(expires_at: i64) -> Lifetime {
        Lifetime {
            state: Mutex::new(State {
                expires_at,
                ended: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn expires_at(&self) -> i64 {
        self.state().expires_at
    }

    /// Ok while the sandbox may be used at `now`; otherwise the 404 that says how it ended.
    pub(crate) fn check(&self, id: &str, now: i64) -> Result<(), Error> {
        self.state().check(id, now)
    }

    /// The sandbox now expires at `expires_at`, unless it has already ended or expired.
    pub(crate) fn renew(&self, id: &str, now: i64, expires_at: i64) -> Result<(), Error> {
        let mut s = self.state();
        s.check(id, now)?;
        s.expires_at = expires_at;
        Ok(())
    }

    /// Claims the end of the sandbox for `reason` at `now`: Ok(true) when this caller ends
    /// it, Ok(false) when `reason` is expiry but the sandbox was renewed in the meantime, and
    /// the 404 of how it ended when it already has (someone else is ending it).
    pub(crate) fn claim_end(&self, id: &str, reason: &str, now: i64) -> Result<bool, Error> {
        let mut s = self.state();
        if let Some((r, at)) = &s.ended {
            return Err(ended(id, r, *at, s.expires_at));
        }
        if reason == EXPIRED && now < s.expires_at {
            return Ok(false);
        }
        s.ended = Some((reason.to_string(), now));
        Ok(true)
    }
}

impl State {
    fn check(&self, id: &str, now: i64) -> Result<(), Error> {
        match &self.ended {
            Some((r, at)) => Err(ended(id, r, *at, self.expires_at)),
            None if now >= self.expires_at => Err(ended(id, EXPIRED, now, self.expires_at)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::DELETED;
    use super::*;

    const ID: &str = "sb_test";

    fn code(r: Result<impl std::fmt::Debug, Error>) -> &'static str {
        r.expect_err("an error").code
    }

    #[test]
    fn a_sandbox_past_its_expiry_answers_expired_before_the_reaper_ends_it() {
        let l = Lifetime::new(1_000);
        assert!(l.check(ID, 999).is_ok());
        assert_eq!(code(l.check(ID, 1_000)), "SANDBOX_EXPIRED");
        // Nor can it be renewed any more.
        assert_eq!(code(l.renew(ID, 1_001, 60_000)), "SANDBOX_EXPIRED");
        assert_eq!(l.expires_at(), 1_000);
    }

    #[test]
    fn while_the_reaper_ends_it_every_request_answers_expired() {
        let l = Lifetime::new(1_000);
        assert!(l.claim_end(ID, EXPIRED, 1_200).unwrap());
        // The record still says running, the sandbox is still in the live map: requests, a
        // renewal and a deletion all answer that it expired.
        let e = l.check(ID, 1_201).unwrap_err();
        assert_eq!(e.code, "SANDBOX_EXPIRED");
        assert!(e.detail.contains("expired at"), "{}", e.detail);
        assert_eq!(code(l.renew(ID, 1_201, 60_000)), "SANDBOX_EXPIRED");
        assert_eq!(code(l.claim_end(ID, DELETED, 1_202)), "SANDBOX_EXPIRED");
    }

    #[test]
    fn a_request_under_way_when_the_reaper_closes_the_sandbox_answers_expired() {
        // The request found the sandbox live; the reaper then closed it, and the sandbox's
        // own operation fails with the reason it was closed for.
        use runcell_sandbox::SandboxError;
        for (reason, expected) in [
            (EXPIRED, "SANDBOX_EXPIRED"),
            (DELETED, "SANDBOX_DELETED"),
            ("terminated: the server stopped", "SANDBOX_TERMINATED"),
        ] {
            let e = Error::from(SandboxError::Closed(reason.into()));
            assert_eq!(
                (e.kind, e.code),
                (crate::Kind::NotFound, expected),
                "{reason}"
            );
        }
    }

    #[test]
    fn a_deletion_first_is_what_later_requests_see() {
        let l = Lifetime::new(1_000);
        assert!(l.claim_end(ID, DELETED, 500).unwrap());
        assert_eq!(code(l.check(ID, 501)), "SANDBOX_DELETED");
        // Its expiry time passing does not turn the deletion into an expiry.
        assert_eq!(code(l.check(ID, 2_000)), "SANDBOX_DELETED");
        assert_eq!(code(l.claim_end(ID, EXPIRED, 2_000)), "SANDBOX_DELETED");
    }

    #[test]
    fn a_renewal_before_the_reaper_claims_keeps_the_sandbox() {
        let l = Lifetime::new(1_000);
        // The reaper saw it expired at 1_000 ...
        l.renew(ID, 999, 60_000).unwrap();
        // ... but claims it only after the renewal: nothing ends.
        assert!(!l.claim_end(ID, EXPIRED, 1_000).unwrap());
        assert!(l.check(ID, 1_000).is_ok());
    }
}
