//! HS256 JSON Web Tokens, the way UAA signs them with a symmetric key and the director checks
//! them locally (cf-uaa-lib `token_coder.rb`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

const SHA256_BLOCK: usize = 64;

/// HMAC-SHA256 (RFC 2104), built on `sha2` so the crate needs no extra dependency.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; SHA256_BLOCK];
    if key.len() > SHA256_BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Compares in time independent of where the first difference is, so signature checks leak nothing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a token was refused. The director answers every one of these with the same 401 text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not three dot-separated base64url segments")]
    Malformed,
    #[error("token header is not HS256")]
    WrongAlgorithm,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token claims are not a JSON object")]
    BadClaims,
}

/// Signs and verifies tokens with one symmetric key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
    key_id: String,
}

impl Signer {
    pub fn new(key: Vec<u8>, key_id: &str) -> Signer {
        Signer {
            key,
            key_id: key_id.to_string(),
        }
    }

    pub fn random() -> Signer {
        let key: [u8; 32] = rand::random();
        Signer::new(key.to_vec(), "director-sim-key")
    }

    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "HS256", "kid": self.key_id, "typ": "JWT"});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = hmac_sha256(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// Checks shape, algorithm and signature; returns the claims. Expiry and `jti` are the
    /// caller's business because the director checks them separately from the signature.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        let segments: Vec<&str> = token.split('.').collect();
        let [header, claims, signature] = segments[..] else {
            return Err(TokenError::Malformed);
        };
        let decode = |segment: &str| {
            URL_SAFE_NO_PAD
                .decode(segment)
                .map_err(|_| TokenError::Malformed)
        };
        let header: Value =
            serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
        if header.get("alg").and_then(Value::as_str) != Some("HS256") {
            return Err(TokenError::WrongAlgorithm);
        }
        let signing_input_len = token.len() - signature.len() - 1;
        let expected = hmac_sha256(&self.key, &token.as_bytes()[..signing_input_len]);
        if !constant_time_eq(&expected, &decode(signature)?) {
            return Err(TokenError::BadSignature);
        }
        match serde_json::from_slice(&decode(claims)?) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(TokenError::BadClaims),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_matches_rfc4231_vectors() {
        // Test case 1.
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // Test case 6: a key longer than the block size.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn signed_tokens_verify_and_tampering_is_caught() {
        let signer = Signer::new(b"k".to_vec(), "kid");
        let token = signer.sign(&json!({"jti": "abc", "exp": 5}));
        assert_eq!(token.split('.').count(), 3);
        let claims = signer.verify(&token).unwrap();
        assert_eq!(claims["jti"], "abc");

        let other = Signer::new(b"other".to_vec(), "kid");
        assert_eq!(other.verify(&token), Err(TokenError::BadSignature));
        let mut tampered = token.clone();
        tampered.push('A');
        assert!(signer.verify(&tampered).is_err());
        assert_eq!(signer.verify("a.b"), Err(TokenError::Malformed));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let claims = URL_SAFE_NO_PAD.encode(r#"{"jti":"x"}"#);
        let signer = Signer::new(b"k".to_vec(), "kid");
        assert_eq!(
            signer.verify(&format!("{none_header}.{claims}.")),
            Err(TokenError::WrongAlgorithm)
        );
    }
}
