//! Errors as HTTP responses, and extractors whose rejections use the same
//! JSON error body.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::Error;

/// An [`Error`] as a response: its status and `{"error":{...}}`.
#[derive(Debug)]
pub(crate) struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(code = self.0.code(), error = %self.0, "request failed");
        } else {
            tracing::debug!(code = self.0.code(), error = %self.0, "request refused");
        }
        (status, axum::Json(self.0.to_body())).into_response()
    }
}

/// Handler result.
pub(crate) type ApiResult<T> = std::result::Result<T, ApiError>;

/// JSON body, whatever the content type (so `curl -d` works); an empty
/// body is `{}`. A malformed body, an unknown field or a body over the
/// limit is a JSON error (`invalid_argument` or `too_large`).
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes =
            axum::body::Bytes::from_request(req, state)
                .await
                .map_err(|r: BytesRejection| {
                    ApiError(if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        Error::TooLarge(r.body_text())
                    } else {
                        Error::invalid(r.body_text())
                    })
                })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(ApiJson)
            .map_err(|e| ApiError(Error::invalid(format!("invalid JSON body: {e}"))))
    }
}

/// Query string; a malformed one is `invalid_argument`.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|r: QueryRejection| ApiError(Error::invalid(r.body_text())))
    }
}

/// Path parameters; a malformed one is `invalid_argument`.
pub(crate) struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|r: PathRejection| ApiError(Error::invalid(r.body_text())))
    }
}
