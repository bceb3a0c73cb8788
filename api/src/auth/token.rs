//! The token codec: `kt1.<claims>.<mac>`, both parts base64url without
//! padding, the claims JSON, the MAC HMAC-SHA256 over `kt1.<claims>` with
//! the state dir's key. Checking one needs the key and the clock, no
//! database: revocation comes from the sandbox's liveness, which the
//! caller checks.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::TokenKey;
use crate::model::TokenOp;

/// The format's prefix (bumped if the claims change meaning).
const PREFIX: &str = "kt1";

/// Longest token looked at (anything longer is malformed).
pub(crate) const MAX_TOKEN_LEN: usize = 4096;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Claims {
    /// The sandbox it is for.
    pub sbx: String,
    /// What it allows there.
    pub ops: Vec<TokenOp>,
    /// Who holds it.
    pub sub: String,
    /// Expiry, ms since the epoch.
    pub exp: u64,
    /// Random id of this token (tells two tokens of one subject apart).
    pub jti: String,
}

impl Claims {
    /// Whether the token allows `op`.
    pub(crate) fn allows(&self, op: TokenOp) -> bool {
        self.ops.contains(&op)
    }
}

/// Why a token is not accepted (each answers 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    /// Not a kiln token at all.
    #[error("malformed token")]
    Malformed,
    /// The MAC does not match: tampered with, or signed with another key.
    #[error("token signature does not verify")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired at {at_ms} ms since the epoch")]
    Expired {
        /// When it expired.
        at_ms: u64,
    },
    /// Its sandbox has ended (deleted or expired): the token died with it.
    #[error("the token's sandbox {0} has ended")]
    SandboxEnded(String),
}

fn mac(key: &TokenKey, signed: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC takes any key length");
    mac.update(signed.as_bytes());
    mac
}

/// Signs `claims`.
pub(crate) fn encode(claims: &Claims, key: &TokenKey) -> String {
    let json = serde_json::to_vec(claims).expect("claims serialize");
    let signed = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(json));
    let tag = mac(key, &signed).finalize().into_bytes();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
}

/// Checks `token`'s MAC (in constant time) and expiry against `now_ms`;
/// returns its claims.
pub(crate) fn decode(token: &str, key: &TokenKey, now_ms: u64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (prefix, payload) = signed.split_once('.').ok_or(TokenError::Malformed)?;
    if prefix != PREFIX {
        return Err(TokenError::Malformed);
    }
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| TokenError::Malformed)?;
    mac(key, signed)
        .verify_slice(&tag)
        .map_err(|_| TokenError::BadSignature)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    if now_ms >= claims.exp {
        return Err(TokenError::Expired { at_ms: claims.exp });
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            sbx: "sbx-0123".into(),
            ops: vec![TokenOp::Exec],
            sub: "agent-7".into(),
            exp: 10_000,
            jti: "abcd".into(),
        }
    }

    #[test]
    fn round_trip() {
        let key = TokenKey::from_bytes([7; 32]);
        let token = encode(&claims(), &key);
        assert!(token.starts_with("kt1."), "{token}");
        assert_eq!(decode(&token, &key, 9_999), Ok(claims()));
        assert!(claims().allows(TokenOp::Exec));
        assert!(!claims().allows(TokenOp::Files));
    }

    #[test]
    fn expiry_is_checked() {
        let key = TokenKey::from_bytes([7; 32]);
        let token = encode(&claims(), &key);
        assert_eq!(
            decode(&token, &key, 10_000),
            Err(TokenError::Expired { at_ms: 10_000 })
        );
    }

    #[test]
    fn tampering_and_other_keys_are_caught() {
        let key = TokenKey::from_bytes([7; 32]);
        let token = encode(&claims(), &key);
        // Other claims under the old MAC: another sandbox, more ops.
        let (_, tag) = token.rsplit_once('.').expect("tag");
        let forged_claims = Claims {
            sbx: "sbx-other".into(),
            ops: vec![TokenOp::Exec, TokenOp::Files],
            ..claims()
        };
        let forged = encode(&forged_claims, &key);
        let (forged_signed, _) = forged.rsplit_once('.').expect("signed");
        assert_eq!(
            decode(&format!("{forged_signed}.{tag}"), &key, 0),
            Err(TokenError::BadSignature)
        );
        // One bit of the MAC flipped.
        let mut bytes = URL_SAFE_NO_PAD.decode(tag).expect("tag");
        bytes[0] ^= 1;
        let (signed, _) = token.rsplit_once('.').expect("signed");
        let flipped = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(bytes));
        assert_eq!(decode(&flipped, &key, 0), Err(TokenError::BadSignature));
        // Another key.
        let other = TokenKey::from_bytes([8; 32]);
        assert_eq!(decode(&token, &other, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn garbage_is_malformed() {
        let key = TokenKey::from_bytes([7; 32]);
        let good = encode(&claims(), &key);
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        for bad in [
            "",
            "kt1",
            "kt1.abc",
            "xx1.e30.AAAA",
            "kt1.e30.***",
            long.as_str(),
            &good.replacen("kt1.", "kt2.", 1),
        ] {
            assert_eq!(decode(bad, &key, 0), Err(TokenError::Malformed), "{bad:?}");
        }
        // A correct MAC over claims that do not parse.
        let signed = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(b"{}"));
        let tag = URL_SAFE_NO_PAD.encode(mac(&key, &signed).finalize().into_bytes());
        assert_eq!(
            decode(&format!("{signed}.{tag}"), &key, 0),
            Err(TokenError::Malformed)
        );
    }
}
