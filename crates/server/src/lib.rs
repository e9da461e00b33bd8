//! runcell's HTTP server: thin API dialects over `runcell_service::Service`. Each handler
//! parses a request, makes one service call and renders the answer; the native API's errors
//! are `{"detail", "code"}` (`error.rs`), execd's `{"code", "message"}` (`execd.rs`). Knows
//! nothing of jails, engines or stores: those are the service's.
//!
//! One file per API family: `executions` (and the compatibility `submit`/`result`),
//! `sandboxes` (lifecycle and metrics), `runs` (code runs and artifacts), `execd` (contexts and
//! code, execd's error dialect), `commands` (commands and bash sessions), `files`,
//! `operations` (health, metrics, languages); `request` (queries, optional bodies, `Host`), `auth` (credentials as extractors), `sse` (every
//! event stream), `body` (size and pace of request bodies), `openapi`. The compatibility
//! dialects are folders: `judge0` (Judge0 CE 1.13.1) and `piston` (Piston v2), with their error
//! shapes in `dialect`, and `opensandbox` (OpenSandbox's lifecycle API, errors in execd's
//! shape); `ports` proxies HTTP to a server a program runs inside a sandbox; `playground` serves
//! the web playground (embedded assets) and `operator` its operator view's overview.
//!
//! Tests: unit tests here (`cargo test -p runcell-server`); every route is driven over HTTP
//! against the real binary in the CLI's integration tests (`crates/cli/tests/it/api/`, one
//! file per API family; `cargo test -p runcell --test it`).

pub mod auth;
pub mod body;
pub mod commands;
pub mod dialect;
pub mod error;
pub mod execd;
pub mod executions;
pub mod files;
pub mod forward;
pub mod judge0;
pub mod openapi;
pub mod opensandbox;
pub mod operations;
pub mod operator;
pub mod piston;
pub mod playground;
pub mod ports;
pub mod request;
pub mod runs;
pub mod sandboxes;
pub mod sse;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, patch, post};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use utoipa::OpenApi;

use runcell_service::Service;

use crate::error::ApiError;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// What every handler sees (cheap to clone).
/// The callback formats of this server's dialects (Judge0's PUT of its submission), for
/// [`Service::start_with`].
pub fn callback_formats(config: &runcell_service::Config) -> runcell_service::CallbackFormats {
    let mut formats = runcell_service::CallbackFormats::new();
    formats.insert("judge0".into(), judge0::callback_format(config));
    formats
}

#[derive(Clone)]
pub struct AppState {
    pub svc: Arc<Service>,
    pub metrics: PrometheusHandle,
}

/// Counts requests by route, method and status.
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    metrics::counter!(
        "runcell_http_requests_total",
        "method" => method,
        "route" => route,
        "status" => resp.status().as_u16().to_string()
    )
    .increment(1);
    resp
}

/// The router with every route and layer.
pub fn router(state: AppState) -> Router {
    use crate::{commands as cmd, execd, executions as ex, files as fs, operations as ops};
    use crate::{runs, sandboxes as sb};
    let limit = state.svc.config.max_body_bytes;
    let api = Router::new()
        .route("/api/v1/execute", post(ex::execute))
        .route("/api/v1/execute/async", post(ex::execute_async))
        .route("/api/v1/execute/batch", post(ex::execute_batch))
        .route("/api/v1/executions", get(ex::list_executions))
        .route("/api/v1/executions/{execution_id}", get(ex::get_execution))
        .route(
            "/api/v1/executions/{execution_id}/cancel",
            post(ex::cancel_execution),
        )
        .route(
            "/api/v1/executions/{execution_id}/deliveries",
            get(ex::deliveries),
        )
        .route("/api/v1/webhook-secret", get(ex::webhook_secret))
        .route("/api/v1/languages", get(ops::languages))
        .route("/api/submit", post(ex::submit))
        .route("/api/result/{execution_id}", get(ex::result))
        .route(
            "/v1/sandboxes",
            post(sb::create_sandbox).get(sb::list_sandboxes),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(sb::get_sandbox).delete(sb::delete_sandbox),
        )
        .route("/v1/sandboxes/{id}/timeout", post(sb::renew_sandbox))
        .route("/v1/sandboxes/{id}/metadata", patch(sb::patch_metadata))
        .route("/v1/sandboxes/{id}/pause", post(sb::pause_sandbox))
        .route("/v1/sandboxes/{id}/resume", post(sb::resume_sandbox))
        .route(
            "/v1/sandboxes/{id}/code/runs",
            post(runs::create_run).get(runs::list_runs),
        )
        .route("/v1/sandboxes/{id}/code/runs/{run_id}", get(runs::get_run))
        .route(
            "/v1/sandboxes/{id}/code/runs/{run_id}/cancel",
            post(runs::cancel_run),
        )
        .route("/v1/sandboxes/{id}/artifacts", get(runs::list_artifacts))
        .route(
            "/v1/artifacts/{artifact_id}/download",
            get(runs::download_artifact),
        )
        .route(
            "/v1/artifacts/{artifact_id}/preview",
            get(runs::preview_artifact),
        )
        .route("/v1/sandboxes/{id}/ping", get(execd::ping))
        .route(
            "/v1/sandboxes/{id}/code/context",
            post(execd::create_context),
        )
        .route(
            "/v1/sandboxes/{id}/code/contexts",
            get(execd::list_contexts).delete(execd::delete_contexts),
        )
        .route(
            "/v1/sandboxes/{id}/code/contexts/{context_id}",
            get(execd::get_context).delete(execd::delete_context),
        )
        .route(
            "/v1/sandboxes/{id}/code",
            post(execd::run_code).delete(execd::interrupt_code),
        )
        .route(
            "/v1/sandboxes/{id}/command",
            post(cmd::run_command).delete(cmd::interrupt_command),
        )
        .route(
            "/v1/sandboxes/{id}/command/status/{command_id}",
            get(cmd::command_status),
        )
        .route(
            "/v1/sandboxes/{id}/command/{command_id}/logs",
            get(cmd::command_logs),
        )
        .route("/v1/sandboxes/{id}/session", post(cmd::create_session))
        .route(
            "/v1/sandboxes/{id}/session/{session_id}/run",
            post(cmd::run_in_session),
        )
        .route(
            "/v1/sandboxes/{id}/session/{session_id}",
            delete(cmd::delete_session),
        )
        .route("/v1/sandboxes/{id}/files/info", get(fs::files_info))
        .route("/v1/sandboxes/{id}/files", delete(fs::delete_files))
        .route(
            "/v1/sandboxes/{id}/directories",
            post(fs::make_directories).delete(fs::delete_directories),
        )
        .route(
            "/v1/sandboxes/{id}/directories/list",
            get(fs::list_directory),
        )
        .route("/v1/sandboxes/{id}/files/search", get(fs::search_files))
        .route(
            "/v1/sandboxes/{id}/files/permissions",
            post(fs::set_permissions),
        )
        .route("/v1/sandboxes/{id}/files/mv", post(fs::move_files))
        .route(
            "/v1/sandboxes/{id}/files/replace",
            post(fs::replace_in_files),
        )
        .route(
            "/v1/sandboxes/{id}/files/upload",
            post(fs::transfer::upload_files).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/sandboxes/{id}/files/download",
            get(fs::transfer::download_file),
        )
        .route(
            "/v1/sandboxes/{id}/ports/{port}",
            any(ports::proxy_root).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/sandboxes/{id}/ports/{port}/",
            any(ports::proxy_root).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/sandboxes/{id}/ports/{port}/{*rest}",
            any(ports::proxy_path).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/sandboxes/{id}/metrics", get(sb::sandbox_metrics))
        .route("/v1/sandboxes/{id}/metrics/watch", get(sb::watch_metrics))
        .route("/health", get(ops::health))
        .route("/cluster", get(ops::cluster))
        .route("/api/v1/operator/overview", get(operator::overview))
        .route("/metrics", get(ops::metrics))
        .nest("/judge0", judge0::routes())
        .nest("/piston", piston::routes())
        .nest("/opensandbox/v1", opensandbox::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), body::guard))
        .route_layer(middleware::from_fn(track))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            forward::forward,
        ))
        .with_state(state);
    Router::new()
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .url("/openapi.json", openapi::ApiDoc::openapi()),
        )
        .merge(playground::routes())
        .merge(api)
        .fallback(|uri: axum::http::Uri| async move {
            let e = ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route");
            fallback_answer(uri.path(), e)
        })
        .method_not_allowed_fallback(|uri: axum::http::Uri| async move {
            let e = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this route does not take that method",
            );
            fallback_answer(uri.path(), e)
        })
        .layer(DefaultBodyLimit::max(limit))
}

/// A fallback's error: in execd's shape under a sandbox's daemon routes (the OpenSandbox
/// SDKs read `{"code", "message"}` there), native elsewhere.
fn fallback_answer(path: &str, e: ApiError) -> Response {
    if execd::is_execd_path(path) {
        execd::ExecdError(e).into_response()
    } else {
        e.into_response()
    }
}

fn install_metrics() -> Result<PrometheusHandle, ServerError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("runcell_execution_duration_seconds".into()),
            &[
                0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ],
        )
        .map_err(|e| ServerError::Other(format!("metrics: {e}")))?
        .install_recorder()
        .map_err(|e| ServerError::Other(format!("metrics: {e}")))
}

/// Installs the TLS crypto provider (ring) used by HTTP clients in this process.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Serves `svc` over HTTP until SIGINT or SIGTERM, then shuts it down.
pub async fn serve(svc: Arc<Service>) -> Result<(), ServerError> {
    let state = AppState {
        svc: Arc::clone(&svc),
        metrics: install_metrics()?,
    };
    let listen = svc.config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ServerError::Io {
            what: format!("listen on {listen}"),
            source: e,
        })?;
    let addr = listener.local_addr().map_err(|e| ServerError::Io {
        what: "read the listening address".into(),
        source: e,
    })?;
    svc.listening_on(addr).await;
    eprintln!(
        "runcell: listening on http://{addr} ({} key(s), {} languages, concurrency {} ({} per \
         key), data in {})",
        svc.key_count(),
        svc.languages().iter().filter(|l| l.available).count(),
        svc.config.concurrency,
        svc.config.tenant_max_running(svc.key_count()),
        svc.config.data_dir.display()
    );
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| ServerError::Io {
            what: "serve".into(),
            source: e,
        });
    svc.shutdown().await;
    served
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("runcell: shutting down");
}
