//! kiln: microVM sandboxes for AI agents.
//!
//! Host diagnostics live in [`doctor`]; the daemon, warm pool, HTTP API and
//! Rust client join them here.

pub mod doctor;
