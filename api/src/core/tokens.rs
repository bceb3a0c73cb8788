//! Sandbox tokens on the core: checking what a create asks for, issuing
//! the token once the sandbox is ready, and verifying a bearer token
//! (signature and expiry by [`crate::auth::token`], then the sandbox's
//! liveness from the core's memory: a token dies with its sandbox).

use super::Core;
use crate::auth::{token, Actor, Claims, TokenError};
use crate::config::TimeoutsConfig;
use crate::model::{now_ms, IssuedToken, SandboxInfo, TokenOp, TokenRequest};
use crate::{Error, Result};

/// Longest token subject.
const MAX_SUBJECT: usize = 128;

/// A token request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckedToken {
    /// Operations, sorted, without repeats.
    pub ops: Vec<TokenOp>,
    /// Lifetime, seconds (`None`: the sandbox's TTL).
    pub ttl_secs: Option<u64>,
    /// Subject (`None`: named after the creator).
    pub subject: Option<String>,
}

/// Checks a create's `token` against the allowed TTLs.
pub(crate) fn check_token(req: &TokenRequest, t: &TimeoutsConfig) -> Result<CheckedToken> {
    let mut ops = req.ops.clone();
    ops.sort_unstable();
    ops.dedup();
    if ops.is_empty() {
        return Err(Error::invalid(
            "token.ops must name at least one operation (exec, files)",
        ));
    }
    let ttl_secs = req
        .ttl_secs
        .map(|v| t.ttl().check("token.ttl_secs", Some(v)))
        .transpose()?;
    if let Some(s) = &req.subject {
        let visible = s.bytes().all(|b| b.is_ascii_graphic());
        if s.is_empty() || s.len() > MAX_SUBJECT || !visible {
            return Err(Error::invalid(format!(
                "token.subject must be 1 to {MAX_SUBJECT} visible ASCII characters"
            )));
        }
    }
    Ok(CheckedToken {
        ops,
        ttl_secs,
        subject: req.subject.clone(),
    })
}

/// The subject of a token whose create named none.
fn default_subject(creator: &Actor) -> String {
    match creator {
        Actor::Uid(Some(uid)) => format!("uid:{uid}"),
        Actor::Token { subject } => subject.clone(),
        Actor::Uid(None) | Actor::System => "kiln".into(),
    }
}

impl Core {
    /// Signs a token for the live sandbox `info`.
    pub(super) fn issue_token(
        &self,
        info: &SandboxInfo,
        req: &CheckedToken,
        creator: &Actor,
    ) -> IssuedToken {
        let ttl_secs = req.ttl_secs.unwrap_or(info.ttl_secs);
        let claims = Claims {
            sbx: info.id.clone(),
            ops: req.ops.clone(),
            sub: req
                .subject
                .clone()
                .unwrap_or_else(|| default_subject(creator)),
            exp: now_ms().saturating_add(ttl_secs.saturating_mul(1000)),
            jti: super::new_id("tok"),
        };
        IssuedToken {
            token: token::encode(&claims, &self.inner.token_key),
            subject: claims.sub,
            ops: claims.ops,
            expires_at_ms: claims.exp,
        }
    }

    /// Checks a bearer token: it must verify, be unexpired, and its
    /// sandbox must be live. Every failure is `unauthenticated`.
    pub(crate) fn verify_token(&self, bearer: &str) -> std::result::Result<Claims, TokenError> {
        let claims = token::decode(bearer, &self.inner.token_key, now_ms())?;
        if !self.state().sandboxes.contains_key(&claims.sbx) {
            return Err(TokenError::SandboxEnded(claims.sbx));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_requests_are_checked() {
        let t = TimeoutsConfig::default();
        let req = |ops: Vec<TokenOp>, ttl, subject: Option<&str>| TokenRequest {
            ops,
            ttl_secs: ttl,
            subject: subject.map(str::to_string),
        };
        let ok = check_token(
            &req(
                vec![TokenOp::Files, TokenOp::Exec, TokenOp::Files],
                Some(5),
                Some("agent-1"),
            ),
            &t,
        )
        .expect("valid");
        assert_eq!(ok.ops, [TokenOp::Exec, TokenOp::Files]);
        assert_eq!(
            (ok.ttl_secs, ok.subject.as_deref()),
            (Some(5), Some("agent-1"))
        );
        assert!(check_token(&req(vec![], None, None), &t).is_err());
        assert!(check_token(&req(vec![TokenOp::Exec], Some(0), None), &t).is_err());
        assert!(check_token(
            &req(vec![TokenOp::Exec], Some(t.max_ttl_secs + 1), None),
            &t
        )
        .is_err());
        for bad in ["", "a b", "ü", &"x".repeat(MAX_SUBJECT + 1)] {
            assert!(
                check_token(&req(vec![TokenOp::Exec], None, Some(bad)), &t).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(default_subject(&Actor::Uid(Some(1000))), "uid:1000");
    }
}
