//! Who may do what. Unix-socket peers are administrators (the socket is
//! owner-only); everyone else holds a sandbox token: HMAC-SHA256-signed
//! claims naming one sandbox, the operations allowed on it, an expiry and
//! a subject, checked without a database lookup ([`token`]) with a key kept
//! in the state dir ([`key`]). [`access`] says what a request needs.

pub(crate) mod access;
pub(crate) mod key;
pub(crate) mod token;

pub(crate) use key::TokenKey;
pub(crate) use token::{Claims, TokenError};

/// Who is calling: recorded with every change in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Actor {
    /// A unix-socket peer (an administrator), or the embedding process.
    Uid(Option<u32>),
    /// A token holder.
    Token {
        /// The token's subject.
        subject: String,
    },
    /// The daemon itself (expiry, drain, VM death).
    System,
}

impl Actor {
    /// The unix uid, for a socket peer.
    pub(crate) fn uid(&self) -> Option<u32> {
        match self {
            Actor::Uid(uid) => *uid,
            _ => None,
        }
    }

    /// The token subject, for a token holder.
    pub(crate) fn subject(&self) -> Option<&str> {
        match self {
            Actor::Token { subject } => Some(subject),
            _ => None,
        }
    }
}
