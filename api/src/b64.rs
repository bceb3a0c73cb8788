//! Base64 (standard alphabet, padded) for binary data in JSON.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Encodes `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes `text`.
pub fn decode(text: &str) -> crate::Result<Vec<u8>> {
    STANDARD
        .decode(text)
        .map_err(|e| crate::Error::invalid(format!("invalid base64: {e}")))
}
