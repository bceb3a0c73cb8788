//! Entry points for the fuzz targets (cargo feature `fuzzing`, not part of
//! the supported API): what a client can send the daemon, checked the way
//! the daemon checks it, without a daemon, and whole HTTP requests
//! through the daemon's router ([`HttpHarness`]).

mod http;

pub use http::{Answer, HttpHarness, Origin, MAX_REQUEST_BYTES};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::TimeoutsConfig;
use crate::model::{ExecSpec, PoolUpdate, SandboxPatch, SandboxSpec, SignalRequest};
use crate::server::routes::files::{Mkdir, Rename};
use crate::Result;

pub use crate::backend::lines::LineSplitter;

/// The request bodies a client sends, by number.
pub const BODIES: [&str; 7] = [
    "sandbox_spec",
    "sandbox_patch",
    "exec_spec",
    "signal",
    "pool_update",
    "mkdir",
    "rename",
];

/// Parses `body` as the JSON the daemon reads as an `ApiJson`.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| crate::Error::invalid(format!("invalid JSON body: {e}")))
}

/// A body that parsed serializes, and parses back to itself.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let json = serde_json::to_vec(v).expect("a parsed body serializes");
    let again: T = serde_json::from_slice(&json).expect("a serialized body parses");
    assert_eq!(&again, v, "round trip");
}

/// Parses `body` as request body `BODIES[kind % 7]` and runs the daemon's
/// checks on it (with the default allowed ranges).
pub fn check_body(kind: u8, body: &[u8]) -> Result<()> {
    let timeouts = TimeoutsConfig::default();
    match usize::from(kind) % BODIES.len() {
        0 => {
            let spec: SandboxSpec = parse(body)?;
            round_trip(&spec);
            crate::core::check_create(&spec, &timeouts).map(|_| ())
        }
        1 => {
            let patch: SandboxPatch = parse(body)?;
            crate::core::check_patch(&patch, &timeouts).map(|_| ())
        }
        2 => {
            let spec: ExecSpec = parse(body)?;
            round_trip(&spec);
            crate::core::check_exec(&spec, &timeouts).map(|_| ())
        }
        3 => {
            let signal: SignalRequest = parse(body)?;
            round_trip(&signal);
            let n = signal.signal.number()?;
            assert!((1..=64).contains(&n), "signal {n} passed the check");
            Ok(())
        }
        4 => parse::<PoolUpdate>(body).map(|_| ()),
        5 => {
            let m: Mkdir = parse(body)?;
            crate::core::check_path(&m.path)
        }
        _ => {
            let r: Rename = parse(body)?;
            crate::core::check_path(&r.from)?;
            crate::core::check_path(&r.to)
        }
    }
}

/// Parses a `GET /v1/sandboxes` query string.
pub fn check_list_query(query: &str) -> Result<()> {
    crate::server::routes::sandboxes::parse_list_query(query).map(|_| ())
}
