//! Join tokens (docs/workloads.md): `boshy-join.<id>.<secret>`, the id 16 hex digits, the
//! secret 32 random bytes in base64url without padding. The store keeps the id, the group it
//! is for, its times and the SHA-256 of the secret, never the secret: whoever reads the
//! director's config cannot join with what it finds there. Pure: the randomness and the
//! clock are passed in.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::refusal::JoinRefusal;

/// What every join token starts with: says what it is to someone who finds one in a file.
pub(crate) const TOKEN_PREFIX: &str = "boshy-join.";
/// Random bytes of a secret.
const SECRET_BYTES: usize = 32;
/// Random bytes of an id (16 hex digits).
const ID_BYTES: usize = 8;

/// A join token as a VM presents it. Its `Debug` shows the id alone.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct JoinToken {
    pub(crate) id: String,
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({}, secret hidden)", self.id)
    }
}

/// One token as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenRecord {
    pub(crate) id: String,
    /// `<config>/<WorkloadGroup name>`.
    pub(crate) group: String,
    /// Lower-case hex of the secret's SHA-256.
    pub(crate) sha256: String,
    pub(crate) created_at: u64,
    pub(crate) expires_at: u64,
    #[serde(default)]
    pub(crate) revoked: bool,
}

impl JoinToken {
    /// A new token from `rng` (the OS's in the pilot).
    pub(crate) fn generate(rng: &mut impl RngCore) -> JoinToken {
        let mut id = [0u8; ID_BYTES];
        rng.fill_bytes(&mut id);
        let mut secret = [0u8; SECRET_BYTES];
        rng.fill_bytes(&mut secret);
        JoinToken {
            id: hex(&id),
            secret: base64url(&secret),
        }
    }

    /// Reads the text a VM presents (`Authorization: Bearer <token>`); `Malformed` names what
    /// is wrong without quoting the secret.
    pub(crate) fn parse(text: &str) -> Result<JoinToken, JoinRefusal> {
        let malformed = |why: &str| JoinRefusal::Malformed(why.to_string());
        let rest = text.strip_prefix(TOKEN_PREFIX).ok_or_else(|| {
            malformed("a join token starts with `boshy-join.` (boshy workload configure makes one)")
        })?;
        let (id, secret) = rest
            .split_once('.')
            .ok_or_else(|| malformed("a join token is boshy-join.<id>.<secret>"))?;
        if id.len() != 2 * ID_BYTES || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("the token's id is not 16 hex digits"));
        }
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(secret);
        if decoded.map_or(true, |bytes| bytes.len() != SECRET_BYTES) {
            return Err(malformed(
                "the token's secret is not 32 bytes of base64url without padding",
            ));
        }
        Ok(JoinToken {
            id: id.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }

    /// The token as the VM must present it: shown once, when it is made.
    pub(crate) fn reveal(&self) -> String {
        format!("{TOKEN_PREFIX}{}.{}", self.id, self.secret)
    }

    /// What the store keeps of it.
    pub(crate) fn record(&self, group: &str, now: u64, ttl_seconds: u64) -> TokenRecord {
        TokenRecord {
            id: self.id.clone(),
            group: group.to_string(),
            sha256: hex(&Sha256::digest(self.secret.as_bytes())),
            created_at: now,
            expires_at: now.saturating_add(ttl_seconds),
            revoked: false,
        }
    }
}

impl TokenRecord {
    /// Whether `token` is this record's (same id) and usable at `now`: its secret hashes to
    /// the record's (compared in constant time), and it has neither been revoked nor expired.
    pub(crate) fn authenticates(&self, token: &JoinToken, now: u64) -> Result<(), JoinRefusal> {
        let presented = Sha256::digest(token.secret.as_bytes());
        if !constant_time_eq(hex(&presented).as_bytes(), self.sha256.as_bytes()) {
            return Err(JoinRefusal::Forged(self.id.clone()));
        }
        if self.revoked {
            return Err(JoinRefusal::Revoked(self.id.clone()));
        }
        if now >= self.expires_at {
            return Err(JoinRefusal::Expired {
                id: self.id.clone(),
                at: self.expires_at,
            });
        }
        Ok(())
    }

    /// Whether it may join `group`: it is scoped to one.
    pub(crate) fn is_for(&self, group: &str) -> Result<(), JoinRefusal> {
        if self.group != group {
            return Err(JoinRefusal::OtherGroup {
                token: self.group.clone(),
                asked: group.to_string(),
            });
        }
        Ok(())
    }

    /// Whether it is of no use any more: past its expiry, revoked or not.
    pub(crate) fn expired(&self, now: u64) -> bool {
        now >= self.expires_at
    }
}

/// Equal bytes, in a time that depends on the lengths alone: an attacker timing the
/// refusals learns nothing of the stored hash.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn token() -> JoinToken {
        JoinToken::generate(&mut rand::rngs::StdRng::seed_from_u64(7))
    }

    #[test]
    fn a_token_reads_back_as_itself_and_hides_its_secret() {
        let token = token();
        let text = token.reveal();
        assert!(text.starts_with("boshy-join."), "{text}");
        assert_eq!(text.len(), "boshy-join.".len() + 16 + 1 + 43);
        assert_eq!(JoinToken::parse(&text).unwrap(), token);
        assert!(!format!("{token:?}").contains(&token.secret));
        let record = token.record("legacy/rabbitmq", 100, 3600);
        assert_eq!(record.expires_at, 3700);
        assert!(!serde_yaml::to_string(&record)
            .unwrap()
            .contains(&token.secret));
        assert_eq!(record.sha256.len(), 64);
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let good = token().reveal();
        let secret = good.rsplit('.').next().unwrap().to_string();
        for (bad, why) in [
            ("bearer-thing".to_string(), "starts with"),
            (
                "boshy-join.0123456789abcdef".to_string(),
                "boshy-join.<id>.<secret>",
            ),
            (format!("boshy-join.0123.{secret}"), "16 hex digits"),
            (
                format!("boshy-join.0123456789abcdeg.{secret}"),
                "16 hex digits",
            ),
            (
                "boshy-join.0123456789abcdef.c2hvcnQ".to_string(),
                "32 bytes",
            ),
            (format!("boshy-join.0123456789abcdef.{secret}="), "32 bytes"),
        ] {
            match JoinToken::parse(&bad) {
                Err(JoinRefusal::Malformed(message)) => {
                    assert!(message.contains(why), "{bad}: {message}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_record_authenticates_its_own_token_until_it_expires_or_is_revoked_for_its_group_alone() {
        let token = token();
        let record = token.record("legacy/rabbitmq", 100, 60);
        assert_eq!(record.authenticates(&token, 159), Ok(()));
        assert_eq!(record.is_for("legacy/rabbitmq"), Ok(()));
        assert_eq!(
            record.authenticates(&token, 160),
            Err(JoinRefusal::Expired {
                id: token.id.clone(),
                at: 160
            })
        );
        assert_eq!(
            record.is_for("legacy/postgres"),
            Err(JoinRefusal::OtherGroup {
                token: "legacy/rabbitmq".into(),
                asked: "legacy/postgres".into()
            })
        );
        let revoked = TokenRecord {
            revoked: true,
            ..record.clone()
        };
        assert_eq!(
            revoked.authenticates(&token, 120),
            Err(JoinRefusal::Revoked(token.id.clone()))
        );
        // Another secret under the same id: forged, whatever else holds.
        let mut forged = JoinToken::generate(&mut rand::rngs::StdRng::seed_from_u64(8));
        forged.id = token.id.clone();
        assert_eq!(
            record.authenticates(&forged, 120),
            Err(JoinRefusal::Forged(token.id.clone()))
        );
        assert!(record.expired(160) && !record.expired(159));
    }

    #[test]
    fn constant_time_comparison_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
