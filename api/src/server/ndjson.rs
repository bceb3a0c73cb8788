//! NDJSON response bodies: one JSON value per line, keepalive lines while
//! nothing happens (so proxies and `curl -N` see a live stream).

use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use serde::Serialize;

/// How long a stream may be silent before a keepalive line.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(10);

fn line<T: Serialize>(v: &T) -> Bytes {
    let mut bytes = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Streams `items` as NDJSON; `keepalive(last)` makes the line sent after
/// [`KEEPALIVE`] of silence (`last` is the last item sent).
pub(crate) fn response<T, K>(
    items: BoxStream<'static, T>,
    keepalive: impl Fn(Option<&T>) -> K + Send + 'static,
) -> Response
where
    T: Serialize + Send + 'static,
    K: Serialize,
{
    let lines = stream::unfold(
        (items, None::<T>, keepalive),
        |(mut items, last, keepalive)| async move {
            match tokio::time::timeout(KEEPALIVE, items.next()).await {
                Ok(Some(item)) => {
                    let bytes = line(&item);
                    Some((
                        Ok::<_, std::io::Error>(bytes),
                        (items, Some(item), keepalive),
                    ))
                }
                Ok(None) => None,
                Err(_) => {
                    let bytes = line(&keepalive(last.as_ref()));
                    Some((Ok(bytes), (items, last, keepalive)))
                }
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}
