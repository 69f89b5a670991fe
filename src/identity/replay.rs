//! Pure, clock passed in: the pilot's guard against a certificate request sent twice. A
//! request carries a fresh nonce and the agent's clock (`identity::wire::CsrRequest`); the
//! pilot takes it only when `issued_at` is within [`WINDOW_SECONDS`] of its own clock and the
//! nonce is new. A nonce is remembered until its request would be refused for its age anyway,
//! so memory holds at most the nonces of one window, and never more than a fixed number.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

/// How far a request's `issued_at` may be from the pilot's clock, either way.
pub(crate) const WINDOW_SECONDS: u64 = 300;
/// The fewest hex digits of a nonce (16 random bytes), and the most a pilot reads.
const MIN_NONCE_HEX: usize = 32;
const MAX_NONCE_HEX: usize = 128;
/// Nonces remembered at most: a VM asks once a certificate lifetime, so a window of requests
/// from the largest estate fits many times over (about 60 bytes each, a nonce being kept as
/// 128 bits of its SHA-256).
const DEFAULT_CAPACITY: usize = 200_000;

/// Why a request's freshness is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stale {
    /// The nonce is not 32 to 128 hex digits: the request is malformed.
    BadNonce,
    /// `issued_at` is more than the window away from the pilot's clock.
    Clock { issued_at: u64, now: u64 },
    /// The nonce was seen within the window.
    Replayed,
    /// The window already holds as many nonces as the guard keeps.
    Full,
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stale::BadNonce => write!(
                f,
                "the nonce must be {MIN_NONCE_HEX} to {MAX_NONCE_HEX} hex digits"
            ),
            Stale::Clock { issued_at, now } => write!(
                f,
                "issued_at {issued_at} is more than {WINDOW_SECONDS} s from the pilot's clock \
                 ({now}): check the VM's time"
            ),
            Stale::Replayed => write!(f, "this nonce was already used: a replayed request"),
            Stale::Full => write!(
                f,
                "too many certificate requests within {WINDOW_SECONDS} s; try again later"
            ),
        }
    }
}

/// The nonces of the current window.
#[derive(Debug)]
pub(crate) struct ReplayGuard {
    seen: HashSet<u128>,
    /// When each nonce may be forgotten (its `issued_at` plus the window), soonest first.
    expiries: BinaryHeap<Reverse<(u64, u128)>>,
    capacity: usize,
}

/// What is kept of a nonce: the first 128 bits of the SHA-256 of its lower-case hex (hex
/// digits in either case are the same bytes). A collision would refuse one request.
fn digest(nonce: &str) -> u128 {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(nonce.to_ascii_lowercase().as_bytes());
    let mut first = [0; 16];
    first.copy_from_slice(&hash[..16]);
    u128::from_be_bytes(first)
}

impl Default for ReplayGuard {
    fn default() -> Self {
        ReplayGuard::with_capacity(DEFAULT_CAPACITY)
    }
}

impl ReplayGuard {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        ReplayGuard {
            seen: HashSet::new(),
            expiries: BinaryHeap::new(),
            capacity,
        }
    }

    /// Takes a request's `nonce` and `issued_at` (UNIX seconds) at `now`, or says why not. A
    /// taken nonce is refused from then on, for as long as its `issued_at` is in the window.
    pub(crate) fn admit(&mut self, nonce: &str, issued_at: u64, now: u64) -> Result<(), Stale> {
        let hex = nonce.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex || !(MIN_NONCE_HEX..=MAX_NONCE_HEX).contains(&nonce.len()) {
            return Err(Stale::BadNonce);
        }
        if issued_at.abs_diff(now) > WINDOW_SECONDS {
            return Err(Stale::Clock { issued_at, now });
        }
        self.forget_before(now);
        let nonce = digest(nonce);
        if self.seen.contains(&nonce) {
            return Err(Stale::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(Stale::Full);
        }
        self.seen.insert(nonce);
        self.expiries
            .push(Reverse((issued_at.saturating_add(WINDOW_SECONDS), nonce)));
        Ok(())
    }

    /// Forgets the nonces whose requests the clock check refuses at `now`.
    fn forget_before(&mut self, now: u64) {
        while let Some(Reverse((expiry, _))) = self.expiries.peek() {
            if *expiry >= now {
                return;
            }
            if let Some(Reverse((_, nonce))) = self.expiries.pop() {
                self.seen.remove(&nonce);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn nonce(i: u32) -> String {
        format!("{i:032x}")
    }

    #[test]
    fn a_nonce_is_taken_once_within_the_window() {
        let mut guard = ReplayGuard::default();
        assert_eq!(guard.admit(&nonce(0xabcdef), NOW, NOW), Ok(()));
        assert_eq!(
            guard.admit(&nonce(0xabcdef), NOW, NOW + 10),
            Err(Stale::Replayed)
        );
        let upper = nonce(0xabcdef).to_uppercase();
        assert_eq!(
            guard.admit(&upper, NOW, NOW + 10),
            Err(Stale::Replayed),
            "the same nonce in upper case"
        );
        assert_eq!(guard.admit(&nonce(2), NOW, NOW + 10), Ok(()));
        assert_eq!(guard.len(), 2);
    }

    #[test]
    fn issued_at_must_be_within_the_window_either_way() {
        let mut guard = ReplayGuard::default();
        assert_eq!(guard.admit(&nonce(1), NOW - WINDOW_SECONDS, NOW), Ok(()));
        assert_eq!(guard.admit(&nonce(2), NOW + WINDOW_SECONDS, NOW), Ok(()));
        assert_eq!(
            guard.admit(&nonce(3), NOW - WINDOW_SECONDS - 1, NOW),
            Err(Stale::Clock {
                issued_at: NOW - WINDOW_SECONDS - 1,
                now: NOW
            })
        );
        let ahead = guard.admit(&nonce(4), NOW + WINDOW_SECONDS + 1, NOW);
        assert!(matches!(ahead, Err(Stale::Clock { .. })), "{ahead:?}");
        assert!(ahead.unwrap_err().to_string().contains("VM's time"));
        assert_eq!(
            guard.admit(&nonce(5), 0, NOW),
            Err(Stale::Clock {
                issued_at: 0,
                now: NOW
            })
        );
    }

    #[test]
    fn a_nonce_is_forgotten_once_its_request_is_too_old_anyway() {
        let mut guard = ReplayGuard::default();
        guard.admit(&nonce(1), NOW, NOW).unwrap();
        guard.admit(&nonce(2), NOW + 100, NOW + 100).unwrap();
        // Still replayable at the edge of the window: still remembered.
        guard
            .admit(&nonce(3), NOW + WINDOW_SECONDS, NOW + WINDOW_SECONDS)
            .unwrap();
        assert_eq!(guard.len(), 3);
        // One second later the first request would be refused for its age: forgotten.
        let later = NOW + WINDOW_SECONDS + 1;
        guard.admit(&nonce(4), later, later).unwrap();
        assert_eq!(guard.len(), 3);
        assert!(matches!(
            guard.admit(&nonce(1), NOW, later),
            Err(Stale::Clock { .. })
        ));
        assert_eq!(
            guard.admit(&nonce(2), NOW + 100, later),
            Err(Stale::Replayed)
        );
    }

    #[test]
    fn memory_is_bounded_and_a_full_guard_refuses_rather_than_forgets() {
        let mut guard = ReplayGuard::with_capacity(3);
        for i in 0..3 {
            guard.admit(&nonce(i), NOW, NOW).unwrap();
        }
        assert_eq!(guard.admit(&nonce(9), NOW, NOW), Err(Stale::Full));
        assert_eq!(
            guard.admit(&nonce(0), NOW, NOW),
            Err(Stale::Replayed),
            "nothing was forgotten to make room"
        );
        let later = NOW + WINDOW_SECONDS + 1;
        assert_eq!(guard.admit(&nonce(9), later, later), Ok(()));
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn a_nonce_is_16_to_64_bytes_in_hex() {
        let mut guard = ReplayGuard::default();
        for bad in [
            "",
            "abc",
            &"g".repeat(32),
            &"a".repeat(129),
            &format!("{} ", nonce(1)),
        ] {
            assert_eq!(guard.admit(bad, NOW, NOW), Err(Stale::BadNonce), "{bad:?}");
        }
        assert_eq!(guard.len(), 0);
        assert_eq!(guard.admit(&"a".repeat(128), NOW, NOW), Ok(()));
    }
}
