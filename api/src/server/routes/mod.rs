//! The HTTP handlers: each turns a request into one call on the embedded
//! core's [`Backend`](crate::backend::Backend) for the peer's uid.

pub(crate) mod execs;
pub(crate) mod files;
pub(crate) mod pools;
pub(crate) mod sandboxes;
pub(crate) mod system;

use axum::extract::{ConnectInfo, State};

use super::peer::Peer;
use super::AppState;
use crate::backend::embedded::Embedded;

/// The core acting for the peer.
pub(crate) fn backend(state: &State<AppState>, peer: &ConnectInfo<Peer>) -> Embedded {
    Embedded {
        core: state.core.clone(),
        caller: peer.0.uid,
    }
}
