//! Requests for a sandbox that lives on another node of the cluster are forwarded to it: a
//! sandbox's processes are on the node that created it, and any node may receive a request
//! for it behind a load balancer. So is the cancel of an execution running on another node. The request goes on unchanged (method, path, query, headers,
//! body) to the owner's advertised address, marked so that it is never forwarded twice, and
//! the answer (streams included) comes back as it is. When the owner has stopped, its
//! sandboxes are ended by the other nodes within a lease and answer as terminated, with the
//! reason; before that, a forward that cannot connect is a 502 saying which node is
//! unreachable.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use crate::AppState;
use crate::error::ApiError;

/// Marks a forwarded request (it is answered where it arrives, never forwarded again).
const FORWARDED: &str = "x-runcell-forwarded";

/// The sandbox id a path is about, if it is a per-sandbox route.
fn sandbox_of(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/v1/sandboxes/")
        .or_else(|| path.strip_prefix("/opensandbox/v1/sandboxes/"))?;
    let id = rest.split('/').next()?;
    id.starts_with("sb_").then_some(id)
}

/// The execution a cancel is about (`POST /api/v1/executions/{id}/cancel`).
fn cancelled_execution(path: &str) -> Option<&str> {
    path.strip_prefix("/api/v1/executions/")?
        .strip_suffix("/cancel")
        .filter(|id| !id.contains('/'))
}

/// The artifact a signed link is about (`/v1/artifacts/{id}/download` or `/preview`).
fn linked_artifact(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/artifacts/")?;
    rest.strip_suffix("/download")
        .or_else(|| rest.strip_suffix("/preview"))
        .filter(|id| !id.contains('/'))
}

/// The middleware: forwards per-sandbox requests whose sandbox lives elsewhere, cancels of
/// executions that run elsewhere (their process is on that node), and signed artifact links
/// whose content is elsewhere (in the data directory of the node that produced it).
pub async fn forward(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // Forwarded already, or without any credential (its handler answers 401 here, without
    // a look in the database).
    let credentials = [
        "x-api-key",
        "authorization",
        "open-sandbox-api-key",
        "x-execd-access-token",
    ];
    let signed = req.uri().query().is_some_and(|q| q.contains("signature="));
    if req.headers().contains_key(FORWARDED)
        || !(signed || credentials.iter().any(|h| req.headers().contains_key(*h)))
    {
        return next.run(req).await;
    }
    let path = req.uri().path();
    let home = if let Some(id) = sandbox_of(path).map(str::to_string) {
        state.svc.sandbox_home(&id).await
    } else if let Some(id) = cancelled_execution(path).map(str::to_string) {
        state.svc.execution_home(&id).await
    } else if let Some(id) = linked_artifact(path).map(str::to_string) {
        state.svc.artifact_home(&id).await
    } else {
        return next.run(req).await;
    };
    let home = match home {
        Ok(Some(address)) => address,
        // Here, unknown or not running (its handler says so), or the database is unreachable
        // (the handler answers from what it can).
        Ok(None) | Err(_) => return next.run(req).await,
    };
    match to(&home, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn bad_gateway(home: &str, what: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "NODE_UNREACHABLE",
        format!(
            "this sandbox or execution is on the node at {home}, which {what}; if that node has \
             stopped, it is reported ended once its lease runs out"
        ),
    )
}

async fn to(home: &str, req: Request) -> Result<Response, ApiError> {
    let authority = home
        .strip_prefix("http://")
        .ok_or_else(|| {
            bad_gateway(
                home,
                "is advertised without http:// (nodes reach each other over plain HTTP)".into(),
            )
        })?
        .trim_end_matches('/')
        .to_string();
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(authority.as_str()),
    )
    .await
    .map_err(|_| bad_gateway(home, "did not accept a connection within 5 s".into()))?
    .map_err(|e| bad_gateway(home, format!("cannot be reached ({e})")))?;
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    parts.uri = path
        .parse::<Uri>()
        .map_err(|e| ApiError::bad_request("INVALID_REQUEST", format!("bad path: {e}")))?;
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        parts.headers.remove(HeaderName::from_static(name));
    }
    parts.headers.insert(
        HeaderName::from_static(FORWARDED),
        HeaderValue::from_static("1"),
    );
    // The Host the client used stays: links in answers name the node it reached.
    if !parts.headers.contains_key(header::HOST)
        && let Ok(h) = HeaderValue::from_str(&authority)
    {
        parts.headers.insert(header::HOST, h);
    }
    parts.version = axum::http::Version::HTTP_11;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| bad_gateway(home, format!("does not speak HTTP/1.1 ({e})")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(axum::http::Request::from_parts(parts, body))
        .await
        .map_err(|e| bad_gateway(home, format!("did not answer ({e})")))?;
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_sandbox_paths() {
        assert_eq!(sandbox_of("/v1/sandboxes/sb_abc/command"), Some("sb_abc"));
        assert_eq!(sandbox_of("/v1/sandboxes/sb_abc"), Some("sb_abc"));
        assert_eq!(
            sandbox_of("/opensandbox/v1/sandboxes/sb_x/endpoints/44772"),
            Some("sb_x")
        );
        assert_eq!(sandbox_of("/v1/sandboxes"), None);
        assert_eq!(sandbox_of("/opensandbox/v1/sandboxes"), None);
        assert_eq!(sandbox_of("/api/v1/execute"), None);
        assert_eq!(sandbox_of("/v1/sandboxes/other"), None);
        assert_eq!(
            cancelled_execution("/api/v1/executions/abc/cancel"),
            Some("abc")
        );
        assert_eq!(cancelled_execution("/api/v1/executions/abc"), None);
        assert_eq!(cancelled_execution("/api/v1/executions/a/b/cancel"), None);
        assert_eq!(
            linked_artifact("/v1/artifacts/art_x/download"),
            Some("art_x")
        );
        assert_eq!(
            linked_artifact("/v1/artifacts/art_x/preview"),
            Some("art_x")
        );
        assert_eq!(linked_artifact("/v1/artifacts/art_x"), None);
    }
}
