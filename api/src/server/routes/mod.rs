//! The HTTP handlers: each turns a request into one call on the embedded
//! core's [`Backend`](crate::backend::Backend) for the caller the gate
//! decided on (a socket peer's uid or a token's subject).

pub(crate) mod audit;
pub(crate) mod execs;
pub(crate) mod files;
pub(crate) mod pools;
pub(crate) mod sandboxes;
pub(crate) mod system;

use axum::extract::State;

use super::gate::Caller;
use super::AppState;
use crate::backend::embedded::Embedded;

/// The core acting for the caller.
pub(crate) fn backend(state: &State<AppState>, caller: &Caller) -> Embedded {
    Embedded {
        core: state.core.clone(),
        caller: caller.0.clone(),
    }
}
