//! `/v1/sandboxes/{id}/ports/{port}/…`: HTTP to a server a program in the sandbox runs on
//! its own loopback (a user's web app, a notebook server), for the sandbox's owner or token
//! holder. OpenSandbox's endpoint lookup hands this out for every port but execd's.
//!
//! The request is passed on with the path after the port, its query, method, headers and
//! body; the credentials that opened the route (the API key, the sandbox's token) and
//! hop-by-hop headers are removed, since the program in the sandbox is not to be trusted with
//! them. Errors are execd's `{"code", "message"}`; nothing listening is a 502.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use crate::AppState;
use crate::error::ApiError;
use crate::execd::{ExecdCaller, ExecdError};

/// Headers never passed to the sandbox: credentials of this server and hop-by-hop headers.
const DROPPED: [&str; 11] = [
    "x-api-key",
    "open-sandbox-api-key",
    "x-execd-access-token",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn bad_gateway(message: String) -> ExecdError {
    ExecdError(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "BAD_GATEWAY",
        message,
    ))
}

pub async fn proxy_root(
    state: State<AppState>,
    caller: ExecdCaller,
    Path((id, port)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ExecdError> {
    forward(state, caller, id, port, String::new(), req).await
}

pub async fn proxy_path(
    state: State<AppState>,
    caller: ExecdCaller,
    Path((id, port, rest)): Path<(String, String, String)>,
    req: Request,
) -> Result<Response, ExecdError> {
    forward(state, caller, id, port, rest, req).await
}

async fn forward(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    id: String,
    port: String,
    rest: String,
    req: Request,
) -> Result<Response, ExecdError> {
    let port = match port.parse::<u16>() {
        Ok(p) if p >= 1 => p,
        _ => {
            return Err(ExecdError(ApiError::bad_request(
                "INVALID_PORT",
                format!("port must be a whole number from 1 to 65535, got {port:?}"),
            )));
        }
    };
    let live = state.svc.sandbox(&cred, &id).await?;
    let stream = match state.svc.connect_sandbox_port(&live, port).await {
        Ok(s) => s,
        Err(e) if e.code == "PORT_UNREACHABLE" => return Err(bad_gateway(e.detail)),
        Err(e) => return Err(e.into()),
    };
    stream
        .set_nonblocking(true)
        .map_err(|e| bad_gateway(format!("the connection to port {port} failed: {e}")))?;
    let stream = tokio::net::TcpStream::from_std(stream)
        .map_err(|e| bad_gateway(format!("the connection to port {port} failed: {e}")))?;

    let (mut parts, body) = req.into_parts();
    // Whether `Authorization` carried this server's key (then it is a credential of ours, not
    // the app's).
    let ours = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .is_some_and(|(scheme, key)| {
            scheme.eq_ignore_ascii_case("bearer") && state.svc.identify(key.trim()).is_ok()
        });
    if ours {
        parts.headers.remove(header::AUTHORIZATION);
    }
    for name in DROPPED {
        parts.headers.remove(HeaderName::from_static(name));
    }
    let path = match parts.uri.query() {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    };
    parts.uri = path.parse::<Uri>().map_err(|e| {
        ExecdError(ApiError::bad_request(
            "INVALID_REQUEST",
            format!("the path cannot be passed on: {e}"),
        ))
    })?;
    if let Ok(h) = HeaderValue::from_str(&format!("127.0.0.1:{port}")) {
        parts.headers.insert(header::HOST, h);
    }
    parts.version = axum::http::Version::HTTP_11;

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| bad_gateway(format!("port {port} does not speak HTTP/1.1: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(axum::http::Request::from_parts(parts, body))
        .await
        .map_err(|e| bad_gateway(format!("port {port} did not answer: {e}")))?;
    let (mut parts, body) = resp.into_parts();
    for name in DROPPED {
        parts.headers.remove(HeaderName::from_static(name));
    }
    Ok(Response::from_parts(parts, Body::new(body)).into_response())
}
