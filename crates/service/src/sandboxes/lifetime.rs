//! A live sandbox's lifetime: when it expires, whether it is paused (its expiry clock
//! stopped), and whether (and why) it has begun to end.
//!
//! Every request answers from this one state, so that an expired sandbox answers
//! `SANDBOX_EXPIRED` in every order of events: after its expiry time but before the reaper
//! gets to it, while the reaper is ending it (the sandbox is still in the live map and its
//! record still says running), and after its record says so. Deletion and expiry claim the end
//! under the same lock as a renewal, a pause and a resume, so a sandbox is never renewed (or
//! paused, or resumed) and ended at once.
//!
//! A paused sandbox keeps the lifetime it had left when it was paused, and never expires while
//! paused: on resume it expires that long after the resume. Renewing a paused sandbox sets
//! that remaining lifetime. Deletion ends a paused sandbox like any other.

use std::sync::Mutex;

use crate::{Error, Kind};

use super::{EXPIRED, ended};

/// See the module's documentation.
pub(crate) struct Lifetime {
    state: Mutex<State>,
}

struct State {
    /// When a running sandbox expires (for a paused one: when it would have, had it not been
    /// paused; meaningless until it is resumed).
    expires_at: i64,
    /// Why and when the sandbox began to end, once deleted or expired.
    ended: Option<(String, i64)>,
    /// Since when the sandbox is paused, and how many milliseconds of its lifetime it had
    /// left then (or since a renewal while paused).
    paused: Option<Paused>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Paused {
    at: i64,
    remaining: i64,
}

/// What a request sees of a sandbox that has not ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    /// Paused since (Unix ms).
    Paused(i64),
}

impl Lifetime {
    pub(crate) fn new(expires_at: i64) -> Lifetime {
        Lifetime {
            state: Mutex::new(State {
                expires_at,
                ended: None,
                paused: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the sandbox expires, as seen at `now`: a paused sandbox's clock is stopped, so it
    /// would expire its remaining lifetime after `now` if it were resumed now.
    pub(crate) fn expires_at(&self, now: i64) -> i64 {
        let s = self.state();
        match s.paused {
            Some(p) => now + p.remaining,
            None => s.expires_at,
        }
    }

    /// Whether the reaper should end the sandbox at `now`: it is running (not paused), not
    /// ending already, and past its expiry.
    pub(crate) fn due(&self, now: i64) -> bool {
        let s = self.state();
        s.ended.is_none() && s.paused.is_none() && now >= s.expires_at
    }

    /// Running or paused (since when).
    pub(crate) fn phase(&self) -> Phase {
        match self.state().paused {
            Some(p) => Phase::Paused(p.at),
            None => Phase::Running,
        }
    }

    /// Ok while the sandbox exists at `now` (running or paused); otherwise the 404 that says
    /// how it ended.
    pub(crate) fn check(&self, id: &str, now: i64) -> Result<(), Error> {
        self.state().check(id, now)
    }

    /// Ok while the sandbox may run something at `now`: it exists and is not paused (a paused
    /// one answers 409 `SANDBOX_PAUSED`).
    pub(crate) fn check_running(&self, id: &str, now: i64) -> Result<(), Error> {
        let s = self.state();
        s.check(id, now)?;
        match s.paused {
            Some(_) => Err(paused(id)),
            None => Ok(()),
        }
    }

    /// The sandbox now has `ms` milliseconds to live: from `now` if it runs, from its resume
    /// if it is paused. Returns the expiry to record (for a paused sandbox, the one it would
    /// have if it were resumed now). Fails if it has already ended or expired.
    pub(crate) fn renew(&self, id: &str, now: i64, ms: i64) -> Result<i64, Error> {
        let mut s = self.state();
        s.check(id, now)?;
        match s.paused.as_mut() {
            Some(p) => p.remaining = ms,
            None => s.expires_at = now + ms,
        }
        Ok(now + ms)
    }

    /// Stops the expiry clock at `now`, keeping the lifetime left. Fails if the sandbox has
    /// ended or expired, or is paused already (409 `SANDBOX_PAUSED`).
    pub(crate) fn pause(&self, id: &str, now: i64) -> Result<(), Error> {
        let mut s = self.state();
        s.check(id, now)?;
        if s.paused.is_some() {
            return Err(Error::conflict(
                "SANDBOX_PAUSED",
                format!(
                    "sandbox {id} is already paused; resume it with POST /v1/sandboxes/{id}/resume"
                ),
            ));
        }
        s.paused = Some(Paused {
            at: now,
            remaining: s.expires_at - now,
        });
        Ok(())
    }

    /// Restarts the expiry clock at `now`: the sandbox expires the lifetime it had left after
    /// `now`, which is returned. Fails if it has ended, or is not paused (409
    /// `SANDBOX_NOT_PAUSED`).
    pub(crate) fn resume(&self, id: &str, now: i64) -> Result<i64, Error> {
        let mut s = self.state();
        s.check(id, now)?;
        let Some(p) = s.paused.take() else {
            return Err(not_paused(id));
        };
        s.expires_at = now + p.remaining;
        Ok(s.expires_at)
    }

    /// Fails unless the sandbox is paused (and has not ended): 409 `SANDBOX_NOT_PAUSED`.
    pub(crate) fn check_paused(&self, id: &str, now: i64) -> Result<(), Error> {
        let s = self.state();
        s.check(id, now)?;
        match s.paused {
            Some(_) => Ok(()),
            None => Err(not_paused(id)),
        }
    }

    /// Claims the end of the sandbox for `reason` at `now`: Ok(true) when this caller ends
    /// it, Ok(false) when `reason` is expiry but the sandbox was renewed or paused in the
    /// meantime, and the 404 of how it ended when it already has (someone else is ending it).
    pub(crate) fn claim_end(&self, id: &str, reason: &str, now: i64) -> Result<bool, Error> {
        let mut s = self.state();
        if let Some((r, at)) = &s.ended {
            return Err(ended(id, r, *at, s.expires_at));
        }
        if reason == EXPIRED && (now < s.expires_at || s.paused.is_some()) {
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
            None if self.paused.is_none() && now >= self.expires_at => {
                Err(ended(id, EXPIRED, now, self.expires_at))
            }
            None => Ok(()),
        }
    }
}

/// The 409 of a request that would run something in paused sandbox `id`.
pub(crate) fn paused(id: &str) -> Error {
    Error::new(
        Kind::Conflict,
        "SANDBOX_PAUSED",
        format!("sandbox {id} is paused; resume it with POST /v1/sandboxes/{id}/resume"),
    )
}

fn not_paused(id: &str) -> Error {
    Error::new(
        Kind::Conflict,
        "SANDBOX_NOT_PAUSED",
        format!("sandbox {id} is not paused (it is running); only a paused sandbox can be resumed"),
    )
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
        assert_eq!(l.expires_at(1_001), 1_000);
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
        assert_eq!(l.renew(ID, 999, 60_000).unwrap(), 60_999);
        // ... but claims it only after the renewal: nothing ends.
        assert!(!l.claim_end(ID, EXPIRED, 1_000).unwrap());
        assert!(l.check(ID, 1_000).is_ok());
    }

    #[test]
    fn a_paused_sandbox_keeps_its_remaining_lifetime_and_never_expires_while_paused() {
        let l = Lifetime::new(10_000);
        l.pause(ID, 4_000).unwrap();
        assert_eq!(l.phase(), Phase::Paused(4_000));
        // Long past its expiry time: still there, not due for the reaper, and an expiry that
        // the reaper had already seen does not end it.
        assert!(l.check(ID, 100_000).is_ok());
        assert!(!l.due(100_000));
        assert!(!l.claim_end(ID, EXPIRED, 100_000).unwrap());
        // It would expire its 6 s of lifetime after a resume now.
        assert_eq!(l.expires_at(100_000), 106_000);
        // Resumed: the clock runs again from the resume.
        assert_eq!(l.resume(ID, 100_000).unwrap(), 106_000);
        assert_eq!(l.phase(), Phase::Running);
        assert!(l.check(ID, 105_999).is_ok());
        assert!(!l.due(105_999));
        assert!(l.due(106_000));
        assert_eq!(code(l.check(ID, 106_000)), "SANDBOX_EXPIRED");
        assert!(l.claim_end(ID, EXPIRED, 106_000).unwrap());
    }

    #[test]
    fn a_paused_sandbox_refuses_work_but_not_its_lifecycle() {
        let l = Lifetime::new(10_000);
        assert!(l.check_running(ID, 1_000).is_ok());
        l.pause(ID, 1_000).unwrap();
        let e = l.check_running(ID, 1_001).unwrap_err();
        assert_eq!((e.kind, e.code), (Kind::Conflict, "SANDBOX_PAUSED"));
        assert_eq!(
            e.detail,
            "sandbox sb_test is paused; resume it with POST /v1/sandboxes/sb_test/resume"
        );
        assert!(l.check(ID, 1_001).is_ok());
        assert!(l.check_paused(ID, 1_001).is_ok());
        l.resume(ID, 2_000).unwrap();
        assert!(l.check_running(ID, 2_001).is_ok());
    }

    #[test]
    fn pausing_twice_or_resuming_a_running_sandbox_is_a_conflict() {
        let l = Lifetime::new(10_000);
        let e = l.resume(ID, 1_000).unwrap_err();
        assert_eq!((e.kind, e.code), (Kind::Conflict, "SANDBOX_NOT_PAUSED"));
        assert_eq!(code(l.check_paused(ID, 1_000)), "SANDBOX_NOT_PAUSED");
        l.pause(ID, 1_000).unwrap();
        let e = l.pause(ID, 2_000).unwrap_err();
        assert_eq!((e.kind, e.code), (Kind::Conflict, "SANDBOX_PAUSED"));
        assert!(e.detail.contains("already paused"), "{}", e.detail);
        // The second pause changed nothing: 9 s were left at the first.
        assert_eq!(l.phase(), Phase::Paused(1_000));
        assert_eq!(l.resume(ID, 50_000).unwrap(), 59_000);
        assert_eq!(code(l.resume(ID, 50_001)), "SANDBOX_NOT_PAUSED");
    }

    #[test]
    fn renewing_a_paused_sandbox_sets_its_remaining_lifetime() {
        let l = Lifetime::new(10_000);
        l.pause(ID, 1_000).unwrap();
        // Recorded as the expiry it would have if resumed at the renewal.
        assert_eq!(l.renew(ID, 5_000, 60_000).unwrap(), 65_000);
        assert_eq!(l.phase(), Phase::Paused(1_000));
        assert_eq!(l.expires_at(7_000), 67_000);
        assert_eq!(l.resume(ID, 100_000).unwrap(), 160_000);
    }

    #[test]
    fn an_expired_or_ended_sandbox_cannot_be_paused_or_resumed() {
        let l = Lifetime::new(1_000);
        assert_eq!(code(l.pause(ID, 1_000)), "SANDBOX_EXPIRED");
        assert_eq!(code(l.resume(ID, 1_000)), "SANDBOX_EXPIRED");
        let l = Lifetime::new(10_000);
        l.pause(ID, 1_000).unwrap();
        // Deleted while paused: everything after answers that it was deleted.
        assert!(l.claim_end(ID, DELETED, 2_000).unwrap());
        assert_eq!(code(l.check(ID, 2_001)), "SANDBOX_DELETED");
        assert_eq!(code(l.check_running(ID, 2_001)), "SANDBOX_DELETED");
        assert_eq!(code(l.resume(ID, 2_001)), "SANDBOX_DELETED");
        assert_eq!(code(l.pause(ID, 2_001)), "SANDBOX_DELETED");
        assert_eq!(code(l.renew(ID, 2_001, 60_000)), "SANDBOX_DELETED");
        assert!(!l.due(100_000));
    }

    #[test]
    fn a_pause_before_the_reaper_claims_keeps_the_sandbox() {
        let l = Lifetime::new(1_000);
        // The reaper found it due (its clock read 1_000), but a pause whose clock read 999
        // took the lock first ...
        assert!(l.due(1_000));
        l.pause(ID, 999).unwrap();
        // ... so the reaper's claim ends nothing, and 1 ms of lifetime is kept.
        assert!(!l.claim_end(ID, EXPIRED, 1_000).unwrap());
        assert_eq!(l.resume(ID, 5_000).unwrap(), 5_001);
    }
}
