//! Request bodies that cannot hold the server: a declared length above the route's limit is
//! answered 413 before a byte is read, and a body that stalls or drips is cut off with 408.
//!
//! Bodies are read before any execution permit, jail or temporary file is taken, except the
//! multipart upload, which streams into a temporary file that is removed when the upload
//! fails; so a cut-off body leaves nothing behind.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tokio::time::{Instant, Sleep};

use crate::AppState;
use crate::error::ApiError;

/// The route whose limit is the sandbox's disk budget, checked by its handler.
pub const UPLOAD_ROUTE: &str = "/v1/sandboxes/{id}/files/upload";

/// Why a body was cut off.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyTimeout {
    #[error("the request body sent nothing for {0} s")]
    Stalled(u64),
    #[error(
        "the request body arrived too slowly ({got} bytes in {secs} s; at least {min} bytes a \
         second are required)"
    )]
    TooSlow { got: u64, secs: u64, min: u64 },
}

impl BodyTimeout {
    /// The error answer for it.
    pub fn api_error(&self) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "BODY_TIMEOUT",
            format!("{self}; send the whole body promptly"),
        )
    }

    /// The `BodyTimeout` somewhere in an error's chain of sources.
    pub fn find(e: &(dyn std::error::Error + 'static)) -> Option<BodyTimeout> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(t) = err.downcast_ref::<BodyTimeout>() {
                return Some(t.clone());
            }
            cur = err.source();
        }
        None
    }
}

/// How long a body may stall, and how fast it must arrive on average.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Longest wait for the next bytes; also the grace period of the rate check.
    pub idle: Duration,
    /// Average bytes a second required once `idle` has passed since the first poll.
    pub min_rate: u64,
}

/// A body that fails with [`BodyTimeout`] when it stalls or arrives too slowly.
pub struct PacedBody {
    inner: Body,
    pace: Pace,
    started: Option<Instant>,
    received: u64,
    timer: Pin<Box<Sleep>>,
    failed: bool,
}

impl PacedBody {
    pub fn new(inner: Body, pace: Pace) -> PacedBody {
        PacedBody {
            inner,
            pace,
            started: None,
            received: 0,
            timer: Box::pin(tokio::time::sleep(pace.idle)),
            failed: false,
        }
    }

    fn check_rate(&self, now: Instant) -> Result<(), BodyTimeout> {
        let Some(started) = self.started else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(started);
        if elapsed <= self.pace.idle {
            return Ok(());
        }
        let needed = (self.pace.min_rate as f64 * elapsed.as_secs_f64()) as u64;
        if self.received < needed {
            return Err(BodyTimeout::TooSlow {
                got: self.received,
                secs: elapsed.as_secs(),
                min: self.pace.min_rate,
            });
        }
        Ok(())
    }
}

impl HttpBody for PacedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let now = Instant::now();
        if self.started.is_none() {
            self.started = Some(now);
            let deadline = now + self.pace.idle;
            self.timer.as_mut().reset(deadline);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.received += d.len() as u64;
                }
                if let Err(e) = self.check_rate(now) {
                    self.failed = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                let deadline = now + self.pace.idle;
                self.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.failed = true;
                    let e = BodyTimeout::Stalled(self.pace.idle.as_secs());
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Every route: a declared length above the route's limit is refused before the body is
/// read (413), an unreadable `Content-Length` is refused (400), and the body is paced.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let upload = route.as_deref() == Some(UPLOAD_ROUTE);
    // Refusals are in the error shape of the route's dialect.
    let refuse = |e: ApiError| crate::dialect::answer(route.as_deref(), e);
    let declared = match declared_length(&req) {
        Ok(d) => d,
        Err(e) => return refuse(e),
    };
    let limit = state.svc.config.max_body_bytes as u64;
    let pace = Pace {
        idle: Duration::from_secs(state.svc.config.body_timeout_secs),
        min_rate: state.svc.config.body_min_bytes_per_sec,
    };
    let (parts, body) = req.into_parts();
    let body = Body::new(PacedBody::new(body, pace));
    if !upload && let Some(n) = declared.filter(|n| *n > limit) {
        drain_later(body);
        return refuse(too_large(n, limit));
    }
    next.run(Request::from_parts(parts, body)).await
}

/// At most this much of a refused body is read and thrown away.
const DRAIN_CAP: u64 = 64 << 20;

/// Reads and discards what a client still sends of a body that was refused (at most
/// [`DRAIN_CAP`] bytes, paced like any body), so that a client that writes its whole body
/// before reading the answer sees the answer rather than a reset connection. A body that
/// stalls or is larger ends the connection instead.
pub fn drain_later(body: Body) {
    tokio::spawn(discard(body));
}

/// Reads `body` to its end and throws it away: at most [`DRAIN_CAP`] bytes, and only while it
/// keeps its pace (a body that does not end so is left, and its connection closed).
pub async fn discard(body: Body) {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut read = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        read += chunk.len() as u64;
        if read > DRAIN_CAP {
            return;
        }
    }
}

/// A body that is handed to a parser while its rest stays readable here: the multipart
/// parser stops at the closing boundary, before the end of the body (the last chunk of a
/// chunked body, an epilogue). A connection is kept for the next request only when its
/// request body was read to the end before the answer, so the upload reads the rest with
/// [`discard`] once the parser is done, or drains it in the background if the upload failed.
#[derive(Clone)]
pub struct SharedBody(Arc<Mutex<Body>>);

impl SharedBody {
    pub fn new(body: Body) -> SharedBody {
        SharedBody(Arc::new(Mutex::new(body)))
    }

    /// A body that reads from this one.
    pub fn body(&self) -> Body {
        Body::new(self.clone())
    }
}

impl HttpBody for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        // The handles take turns (the parser, then the rest), so the lock is never contended;
        // a panic while polling leaves the body as it was.
        let mut body = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Pin::new(&mut *body).poll_frame(cx)
    }
}

/// The request's `Content-Length`, if it declares one.
pub fn declared_length(req: &Request) -> Result<Option<u64>, ApiError> {
    match req.headers().get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "INVALID_REQUEST",
                    "the Content-Length header is not a whole number",
                )
            }),
    }
}

/// 413 for a body of `declared` bytes where `limit` are accepted.
pub fn too_large(declared: u64, limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        format!("the request body is {declared} bytes; this route accepts at most {limit}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    type Frames = tokio::sync::mpsc::Receiver<Result<http_body::Frame<Bytes>, std::io::Error>>;

    /// A body whose frames come from a channel.
    fn channel_body(rx: Frames) -> Body {
        let frames =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        Body::new(http_body_util::StreamBody::new(frames))
    }

    fn pace(idle_ms: u64, min_rate: u64) -> Pace {
        Pace {
            idle: Duration::from_millis(idle_ms),
            min_rate,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let body = PacedBody::new(channel_body(rx), pace(1000, 1));
        let e = body.collect().await.expect_err("a timeout");
        assert!(
            matches!(BodyTimeout::find(&*e), Some(BodyTimeout::Stalled(_))),
            "{e}"
        );
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dripping_body_is_cut_off_and_a_prompt_one_is_not() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let f = http_body::Frame::data(Bytes::from_static(b"x"));
                if tx.send(Ok(f)).await.is_err() {
                    return;
                }
            }
        });
        let e = PacedBody::new(channel_body(rx), pace(2000, 100))
            .collect()
            .await
            .expect_err("cut off");
        assert!(
            matches!(BodyTimeout::find(&*e), Some(BodyTimeout::TooSlow { .. })),
            "{e}"
        );

        let whole = PacedBody::new(Body::from("hello"), pace(2000, 100))
            .collect()
            .await
            .expect("a prompt body");
        assert_eq!(whole.to_bytes(), "hello");
    }
}
