//! What the compatibility dialects (Judge0, Piston) share: an error answer in the dialect's own
//! JSON shape (`{"error": …}`, `{"message": …}`), with the status and `Retry-After` of the
//! service's error it stands for.

use std::marker::PhantomData;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use runcell_service::Kind;

/// A dialect's way of telling an error.
pub trait Shape {
    /// The body of an error that is one sentence.
    fn body(message: String) -> Value;

    /// The status of a service error of `kind`.
    fn status(kind: Kind) -> StatusCode {
        crate::error::status_of(kind)
    }
}

/// An error answer of dialect `S`.
pub struct DialectError<S> {
    pub status: StatusCode,
    pub body: Value,
    pub retry_after: Option<u64>,
    shape: PhantomData<S>,
}

impl<S: Shape> DialectError<S> {
    /// An error whose body is one sentence, in the dialect's shape.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self::with_body(status, S::body(message.into()))
    }

    /// An error with a body of its own.
    pub fn with_body(status: StatusCode, body: Value) -> Self {
        DialectError {
            status,
            body,
            retry_after: None,
            shape: PhantomData,
        }
    }

    fn retrying(mut self, retry_after: Option<u64>) -> Self {
        self.retry_after = retry_after;
        self
    }
}

impl<S: Shape> From<runcell_service::Error> for DialectError<S> {
    fn from(e: runcell_service::Error) -> Self {
        Self::new(S::status(e.kind), e.detail).retrying(e.retry_after)
    }
}

impl<S: Shape> From<crate::error::ApiError> for DialectError<S> {
    fn from(e: crate::error::ApiError) -> Self {
        Self::new(e.status, e.detail).retrying(e.retry_after)
    }
}

impl<S> IntoResponse for DialectError<S> {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// An error of the layers every route shares (the body guard), in the shape of the dialect
/// whose route `path` (the matched route) is.
pub fn answer(path: Option<&str>, e: crate::error::ApiError) -> Response {
    match path {
        Some(p) if p.starts_with("/judge0/") => crate::judge0::J0Error::from(e).into_response(),
        Some(p) if p.starts_with("/piston/") => crate::piston::PistonError::from(e).into_response(),
        Some(p) if crate::execd::is_execd_path(p) || p.starts_with("/opensandbox/") => {
            crate::execd::ExecdError(e).into_response()
        }
        _ => e.into_response(),
    }
}
