//! UAA client-credentials tokens and when to renew them (docs/director-api.md §1.2).
//!
//! client_credentials grants carry no refresh token: renewing is running the grant again.
//! The director allows no clock skew, so a token is renewed a little before it expires
//! (proactively) and also when the director rejects it (reactively, once).

use std::time::{Duration, Instant};

use crate::config::Secret;

/// Renew this long before expiry at most; short-lived tokens renew at 90% of their life.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// A cached access token.
#[derive(Debug, Clone)]
pub struct Token {
    pub access: Secret,
    pub obtained: Instant,
    /// `expires_in`; `None` when UAA did not say, and then only a 401 renews it.
    pub lifetime: Option<Duration>,
    /// Counts grants, so that concurrent requests rejected with the same token renew it once.
    pub generation: u64,
}

impl Token {
    pub(crate) fn refresh_due(&self, now: Instant) -> bool {
        self.lifetime
            .is_some_and(|lifetime| refresh_due(self.obtained, lifetime, now))
    }
}

/// `now >= obtained + expires_in - min(60 s, expires_in / 10)`.
pub(crate) fn refresh_due(obtained: Instant, lifetime: Duration, now: Instant) -> bool {
    let margin = MAX_REFRESH_MARGIN.min(lifetime / 10);
    now >= obtained + (lifetime - margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_tokens_renew_a_minute_early() {
        let t0 = Instant::now();
        let life = Duration::from_secs(43_199);
        assert!(!refresh_due(t0, life, t0));
        assert!(!refresh_due(t0, life, t0 + Duration::from_secs(43_138)));
        assert!(refresh_due(t0, life, t0 + Duration::from_secs(43_139)));
        assert!(refresh_due(t0, life, t0 + Duration::from_secs(50_000)));
    }

    #[test]
    fn short_tokens_renew_at_ninety_percent() {
        let t0 = Instant::now();
        let life = Duration::from_secs(10);
        assert!(!refresh_due(t0, life, t0 + Duration::from_millis(8_999)));
        assert!(refresh_due(t0, life, t0 + Duration::from_secs(9)));
    }

    #[test]
    fn zero_lifetime_is_always_due() {
        let t0 = Instant::now();
        assert!(refresh_due(t0, Duration::ZERO, t0));
    }

    #[test]
    fn unknown_lifetime_is_never_due() {
        let token = Token {
            access: Secret::new("t"),
            obtained: Instant::now(),
            lifetime: None,
            generation: 1,
        };
        assert!(!token.refresh_due(Instant::now() + Duration::from_secs(1_000_000)));
    }
}
