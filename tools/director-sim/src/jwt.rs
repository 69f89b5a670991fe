//! RS256 JSON Web Tokens, the way UAA signs them with its RSA key and the director checks
//! them locally (cf-uaa-lib `token_coder.rb`), and UAA's `GET /token_keys` that publishes the
//! public half (docs/director-api.md §1.2).
//!
//! The key is a fixed test key (`fixtures/uaa/key-1.pem`, published as `key-1`): rcgen cannot
//! make RSA keys with ring, and a simulator's key protects nothing.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

const KEY_PEM: &str = include_str!("../../../fixtures/uaa/key-1.pem");
const TOKEN_KEYS: &str = include_str!("../../../fixtures/uaa/token_keys.json");
const KEY_ID: &str = "key-1";

/// Why a token was refused. The director answers every one of these with the same 401 text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not three dot-separated base64url segments")]
    Malformed,
    #[error("token header is not RS256 with the simulator's key id")]
    WrongAlgorithm,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token claims are not a JSON object")]
    BadClaims,
}

/// Signs and verifies tokens with UAA's one RSA key.
#[derive(Clone)]
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    token_keys: Value,
}

impl Signer {
    /// The simulator's UAA key.
    pub fn uaa() -> Signer {
        let token_keys: Value = serde_json::from_str(TOKEN_KEYS).expect("a JSON fixture");
        let public = &token_keys["keys"][0];
        let component = |name: &str| public[name].as_str().expect("an RSA JWK");
        Signer {
            encoding: EncodingKey::from_rsa_pem(KEY_PEM.as_bytes()).expect("a PEM fixture"),
            decoding: DecodingKey::from_rsa_components(component("n"), component("e"))
                .expect("an RSA JWK"),
            token_keys,
        }
    }

    /// `GET /token_keys` as UAA answers it: `{"keys": [{"kty": "RSA", "e", "use": "sig",
    /// "kid", "alg": "RS256", "value": "<PEM public key>", "n"}]}`.
    pub fn token_keys(&self) -> &Value {
        &self.token_keys
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KEY_ID.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("RS256 signing")
    }

    /// Checks shape, algorithm, key id and signature; returns the claims. Expiry and `jti`
    /// are the caller's business because the director checks them separately from the
    /// signature.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|err| match err.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_) => TokenError::WrongAlgorithm,
            _ => TokenError::Malformed,
        })?;
        if header.alg != Algorithm::RS256 || header.kid.as_deref() != Some(KEY_ID) {
            return Err(TokenError::WrongAlgorithm);
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        match jsonwebtoken::decode::<Value>(token, &self.decoding, &validation) {
            Ok(data) => match data.claims {
                Value::Object(map) => Ok(map),
                _ => Err(TokenError::BadClaims),
            },
            Err(err) => Err(match err.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                jsonwebtoken::errors::ErrorKind::Json(_) => TokenError::BadClaims,
                _ => TokenError::Malformed,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    #[test]
    fn signed_tokens_verify_and_tampering_is_caught() {
        let signer = Signer::uaa();
        let token = signer.sign(&json!({"jti": "abc", "exp": 5}));
        assert_eq!(token.split('.').count(), 3);
        let claims = signer.verify(&token).unwrap();
        assert_eq!(claims["jti"], "abc");

        let segments: Vec<&str> = token.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD.encode(json!({"jti": "xyz", "exp": 5}).to_string());
        let forged = format!("{}.{forged_claims}.{}", segments[0], segments[2]);
        assert_eq!(signer.verify(&forged), Err(TokenError::BadSignature));
        assert_eq!(signer.verify("a.b"), Err(TokenError::Malformed));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let claims = URL_SAFE_NO_PAD.encode(r#"{"jti":"x"}"#);
        let signer = Signer::uaa();
        assert_eq!(
            signer.verify(&format!("{none_header}.{claims}.")),
            Err(TokenError::WrongAlgorithm)
        );
        let hs256 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"jti": "x"}),
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert_eq!(signer.verify(&hs256), Err(TokenError::WrongAlgorithm));
    }

    #[test]
    fn token_keys_publish_the_signing_key_in_uaa_s_shape() {
        let keys = Signer::uaa().token_keys().clone();
        let key = &keys["keys"][0];
        for field in ["kty", "e", "use", "kid", "alg", "value", "n"] {
            assert!(key[field].is_string(), "{field}");
        }
        assert_eq!(
            (key["kty"].as_str(), key["alg"].as_str()),
            (Some("RSA"), Some("RS256"))
        );
        assert!(key["value"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----"));
    }
}
