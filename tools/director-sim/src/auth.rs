//! How the director decides who is calling (uaa_identity_provider.rb, token_coder.rb,
//! local_identity_provider.rb) and whether their scopes allow the call (permission_authorizer.rb).

use std::collections::HashSet;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;

use super::jwt::Signer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// UAA bearer tokens (bosh-deployment's `uaa.yml`).
    Uaa,
    /// Local users with HTTP Basic (the director's default without UAA).
    Basic,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    Admin,
}

/// Everything the director consults to accept a credential.
pub struct Verifier<'a> {
    pub mode: AuthMode,
    pub signer: &'a Signer,
    /// Token ids the simulator was told to treat as expired.
    pub revoked: &'a HashSet<String>,
    pub client: &'a str,
    pub client_secret: &'a str,
    pub now: i64,
}

impl Verifier<'_> {
    /// `None` means the director answers `401 Not authorized: '<path>'`.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<Principal> {
        let parts: Vec<&str> = authorization?.split_whitespace().collect();
        let [scheme, credential] = parts[..] else {
            return None;
        };
        match self.mode {
            AuthMode::Uaa if scheme.eq_ignore_ascii_case("bearer") => self.bearer(credential),
            AuthMode::Basic if scheme.eq_ignore_ascii_case("basic") => self.basic(credential),
            _ => None,
        }
    }

    fn bearer(&self, token: &str) -> Option<Principal> {
        let claims = self.signer.verify(token).ok()?;
        let exp = claims.get("exp").and_then(Value::as_i64)?;
        let jti = claims.get("jti").and_then(Value::as_str)?;
        if exp <= self.now || jti.ends_with("-r") || self.revoked.contains(jti) {
            return None;
        }
        let user = claims
            .get("user_name")
            .or_else(|| claims.get("client_id"))
            .and_then(Value::as_str)?
            .to_string();
        let scopes = claims
            .get("scope")
            .and_then(Value::as_array)
            .map(|scopes| {
                scopes
                    .iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Some(Principal { user, scopes })
    }

    fn basic(&self, encoded: &str) -> Option<Principal> {
        let decoded = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
        let (user, password) = decoded.split_once(':')?;
        // Local users are admins: the director's local provider grants bosh.admin.
        (user == self.client && password == self.client_secret).then(|| Principal {
            user: user.to_string(),
            scopes: vec!["bosh.admin".to_string()],
        })
    }
}

/// The scopes that grant `permission`, in the order the director lists them in its error.
fn granting_scopes(permission: Permission, director_uuid: &str) -> Vec<String> {
    let admin = [
        "bosh.admin".to_string(),
        format!("bosh.{director_uuid}.admin"),
    ];
    match permission {
        Permission::Admin => admin.to_vec(),
        Permission::Read => admin
            .into_iter()
            .chain([
                "bosh.read".to_string(),
                format!("bosh.{director_uuid}.read"),
            ])
            .collect(),
    }
}

/// `Err` carries the description of the 401 `{"code":600000,...}` answer.
pub fn authorize(
    principal: &Principal,
    permission: Permission,
    director_uuid: &str,
) -> Result<(), String> {
    let granting = granting_scopes(permission, director_uuid);
    if principal
        .scopes
        .iter()
        .any(|scope| granting.contains(scope))
    {
        Ok(())
    } else {
        Err(format!(
            "Require one of the scopes: {}",
            granting.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_000_000;

    fn check(mode: AuthMode, revoked: &HashSet<String>, header: &str) -> Option<Principal> {
        let signer = Signer::uaa();
        Verifier {
            mode,
            signer: &signer,
            revoked,
            client: "pilot",
            client_secret: "s3cret",
            now: NOW,
        }
        .authenticate(Some(header))
    }

    fn token(claims: Value) -> String {
        Signer::uaa().sign(&claims)
    }

    fn good_claims() -> Value {
        json!({"jti": "t1", "client_id": "pilot", "scope": ["bosh.read"], "exp": NOW + 60})
    }

    #[test]
    fn bearer_tokens_follow_the_token_coder_rules() {
        let none = HashSet::new();
        let good = token(good_claims());
        let principal = check(AuthMode::Uaa, &none, &format!("bearer {good}")).unwrap();
        assert_eq!(principal.user, "pilot");
        assert_eq!(principal.scopes, ["bosh.read"]);
        assert!(check(AuthMode::Uaa, &none, &format!("BEARER {good}")).is_some());
        assert!(check(AuthMode::Uaa, &none, &format!("bearer {good} extra")).is_none());
        assert!(check(AuthMode::Uaa, &none, &good).is_none());
        assert!(check(AuthMode::Basic, &none, &format!("bearer {good}")).is_none());

        let mut expired = good_claims();
        expired["exp"] = json!(NOW);
        assert!(check(AuthMode::Uaa, &none, &format!("bearer {}", token(expired))).is_none());
        let mut refresh = good_claims();
        refresh["jti"] = json!("t1-r");
        assert!(check(AuthMode::Uaa, &none, &format!("bearer {}", token(refresh))).is_none());
        let mut string_exp = good_claims();
        string_exp["exp"] = json!((NOW + 60).to_string());
        assert!(check(
            AuthMode::Uaa,
            &none,
            &format!("bearer {}", token(string_exp))
        )
        .is_none());

        let revoked = HashSet::from(["t1".to_string()]);
        assert!(check(AuthMode::Uaa, &revoked, &format!("bearer {good}")).is_none());
    }

    #[test]
    fn basic_credentials_must_match_the_client() {
        let none = HashSet::new();
        let good = STANDARD.encode("pilot:s3cret");
        assert!(check(AuthMode::Basic, &none, &format!("Basic {good}")).is_some());
        let bad = STANDARD.encode("pilot:wrong");
        assert!(check(AuthMode::Basic, &none, &format!("Basic {bad}")).is_none());
        assert!(check(AuthMode::Uaa, &none, &format!("Basic {good}")).is_none());
    }

    #[test]
    fn scopes_decide_read_and_admin() {
        let reader = Principal {
            user: "r".into(),
            scopes: vec!["bosh.read".into()],
        };
        assert!(authorize(&reader, Permission::Read, "u").is_ok());
        assert_eq!(
            authorize(&reader, Permission::Admin, "u").unwrap_err(),
            "Require one of the scopes: bosh.admin, bosh.u.admin"
        );
        let nobody = Principal {
            user: "n".into(),
            scopes: vec!["openid".into()],
        };
        assert_eq!(
            authorize(&nobody, Permission::Read, "u").unwrap_err(),
            "Require one of the scopes: bosh.admin, bosh.u.admin, bosh.read, bosh.u.read"
        );
        let uuid_admin = Principal {
            user: "a".into(),
            scopes: vec!["bosh.u.admin".into()],
        };
        assert!(authorize(&uuid_admin, Permission::Admin, "u").is_ok());
    }
}
