//! runcell's HTTP server: the Executions API of `API.md` on top of the engine, with a durable
//! queue and webhooks in the store. Knows nothing of namespaces: jails are the engine's.

pub mod api;
pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod fair;
pub mod files_routes;
pub mod jobs;
pub mod openapi;
pub mod routes;
pub mod sandbox_routes;
pub mod sandboxes;
pub mod sse;
pub mod state;
pub mod webhook;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sandbox_routes as sb;
use utoipa::OpenApi;

use runcell_engine::Engine;
use runcell_jail::Spawner;
use runcell_lang::Registry;
use runcell_store::{SqliteStore, Store};

use crate::api::LanguageInfo;
use crate::auth::{Keys, RateLimiter};
use crate::config::Config;
use crate::error::ApiError;
use crate::state::{AppState, Inner, Jobs, Sessions, now_ms};
use crate::webhook::Webhooks;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("store: {0}")]
    Store(#[from] runcell_store::StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
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
    let limit = state.config.max_body_bytes;
    let api = Router::new()
        .route("/api/v1/execute", post(routes::execute))
        .route("/api/v1/execute/async", post(routes::execute_async))
        .route("/api/v1/execute/batch", post(routes::execute_batch))
        .route("/api/v1/executions", get(routes::list_executions))
        .route(
            "/api/v1/executions/{execution_id}",
            get(routes::get_execution),
        )
        .route(
            "/api/v1/executions/{execution_id}/cancel",
            post(routes::cancel_execution),
        )
        .route(
            "/api/v1/executions/{execution_id}/deliveries",
            get(routes::deliveries),
        )
        .route("/api/v1/webhook-secret", get(routes::webhook_secret))
        .route("/api/v1/languages", get(routes::languages))
        .route("/api/submit", post(routes::submit))
        .route("/api/result/{execution_id}", get(routes::result))
        .route(
            "/v1/sandboxes",
            post(sb::create_sandbox).get(sb::list_sandboxes),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(sb::get_sandbox).delete(sb::delete_sandbox),
        )
        .route("/v1/sandboxes/{id}/timeout", post(sb::renew_sandbox))
        .route(
            "/v1/sandboxes/{id}/code/runs",
            post(sb::create_run).get(sb::list_runs),
        )
        .route("/v1/sandboxes/{id}/code/runs/{run_id}", get(sb::get_run))
        .route(
            "/v1/sandboxes/{id}/code/runs/{run_id}/cancel",
            post(sb::cancel_run),
        )
        .route("/v1/sandboxes/{id}/artifacts", get(sb::list_artifacts))
        .route(
            "/v1/artifacts/{artifact_id}/download",
            get(sb::download_artifact),
        )
        .route(
            "/v1/artifacts/{artifact_id}/preview",
            get(sb::preview_artifact),
        )
        .route("/v1/sandboxes/{id}/ping", get(sb::ping))
        .route("/v1/sandboxes/{id}/code/context", post(sb::create_context))
        .route(
            "/v1/sandboxes/{id}/code/contexts",
            get(sb::list_contexts).delete(sb::delete_contexts),
        )
        .route(
            "/v1/sandboxes/{id}/code/contexts/{context_id}",
            get(sb::get_context).delete(sb::delete_context),
        )
        .route(
            "/v1/sandboxes/{id}/code",
            post(sb::run_code).delete(sb::interrupt_code),
        )
        .route(
            "/v1/sandboxes/{id}/command",
            post(sb::run_command).delete(sb::interrupt_command),
        )
        .route(
            "/v1/sandboxes/{id}/command/status/{command_id}",
            get(sb::command_status),
        )
        .route(
            "/v1/sandboxes/{id}/command/{command_id}/logs",
            get(sb::command_logs),
        )
        .route("/v1/sandboxes/{id}/session", post(sb::create_session))
        .route(
            "/v1/sandboxes/{id}/session/{session_id}/run",
            post(sb::run_in_session),
        )
        .route(
            "/v1/sandboxes/{id}/session/{session_id}",
            axum::routing::delete(sb::delete_session),
        )
        .route(
            "/v1/sandboxes/{id}/files/info",
            get(files_routes::files_info),
        )
        .route(
            "/v1/sandboxes/{id}/files",
            axum::routing::delete(files_routes::delete_files),
        )
        .route(
            "/v1/sandboxes/{id}/directories",
            post(files_routes::make_directories).delete(files_routes::delete_directories),
        )
        .route(
            "/v1/sandboxes/{id}/directories/list",
            get(files_routes::list_directory),
        )
        .route(
            "/v1/sandboxes/{id}/files/search",
            get(files_routes::search_files),
        )
        .route(
            "/v1/sandboxes/{id}/files/permissions",
            post(files_routes::set_permissions),
        )
        .route(
            "/v1/sandboxes/{id}/files/mv",
            post(files_routes::move_files),
        )
        .route(
            "/v1/sandboxes/{id}/files/replace",
            post(files_routes::replace_in_files),
        )
        .route(
            "/v1/sandboxes/{id}/files/upload",
            post(files_routes::upload_files).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/sandboxes/{id}/files/download",
            get(files_routes::download_file),
        )
        .route("/v1/sandboxes/{id}/metrics", get(sb::sandbox_metrics))
        .route("/v1/sandboxes/{id}/metrics/watch", get(sb::watch_metrics))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), body::guard))
        .route_layer(middleware::from_fn(track))
        .with_state(state);
    Router::new()
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .url("/openapi.json", openapi::ApiDoc::openapi()),
        )
        .merge(api)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
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

/// Loads or creates the API keys: the configured ones, else those generated earlier (stored
/// hashed), else a new one, printed once and saved next to the database.
async fn load_keys(config: &Config, store: &dyn Store) -> Result<Keys, ServerError> {
    if !config.api_keys.is_empty() {
        return Ok(Keys::new(config.api_keys.iter().map(|k| {
            let h = auth::hash_key(k);
            let t = auth::tenant_of(&h);
            (h, t)
        })));
    }
    let stored = store.api_keys().await?;
    if !stored.is_empty() {
        return Ok(Keys::new(stored));
    }
    let key = auth::generate_key();
    let hash = auth::hash_key(&key);
    let tenant = auth::tenant_of(&hash);
    store.insert_api_key(&hash, &tenant, now_ms()).await?;
    let file = config.data_dir.join("initial-api-key");
    write_private(&file, &format!("{key}\n")).map_err(|e| ServerError::Io {
        what: format!("write {}", file.display()),
        source: e,
    })?;
    eprintln!(
        "runcell: created an API key (saved in {}; this is the only time it is printed):\n  {key}",
        file.display()
    );
    Ok(Keys::new([(hash, tenant)]))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

fn describe_languages(engine: &Engine) -> Vec<LanguageInfo> {
    engine
        .registry()
        .all()
        .iter()
        .map(|l| {
            let available = l.available();
            LanguageInfo {
                id: l.id.clone(),
                name: l.name.clone(),
                version: if available {
                    engine.version_of(l)
                } else {
                    None
                },
                aliases: l.aliases.clone(),
                extensions: l.extensions.clone(),
                available,
                compiled: l.is_compiled(),
                contexts: l.contexts_available(),
                default_max_processes: engine
                    .config()
                    .limits
                    .default_processes(l.run.max_processes),
            }
        })
        .collect()
}

/// Installs the TLS crypto provider (ring) used by HTTP clients in this process.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(
    config: Config,
    spawner: Spawner,
    registry: Arc<Registry>,
) -> Result<(), ServerError> {
    config.validate()?;
    install_crypto_provider();
    std::fs::create_dir_all(&config.data_dir).map_err(|e| ServerError::Io {
        what: format!("create {}", config.data_dir.display()),
        source: e,
    })?;
    let store = Arc::new(SqliteStore::open(&config.data_dir.join("runcell.db")).await?);
    let store: Arc<dyn Store> = store;
    let keys = load_keys(&config, &*store).await?;
    let mut engine_config = config.engine.clone();
    if engine_config.compile_cache_dir.is_none() {
        engine_config.compile_cache_dir = Some(config.data_dir.join("compile-cache"));
    }
    let engine = Arc::new(Engine::new(spawner, registry, engine_config));
    let languages = {
        let e = Arc::clone(&engine);
        tokio::task::spawn_blocking(move || describe_languages(&e))
            .await
            .map_err(|e| ServerError::Other(format!("probing languages: {e}")))?
    };

    // Executions that were running when the previous process died cannot be resumed safely
    // (their effects are unknown): they fail with a reason, and their webhooks go out.
    let now = now_ms();
    let retention = config.result_retention_secs as i64 * 1000;
    let interrupted = store
        .fail_interrupted(
            "the server stopped while this execution was running; it was not re-run",
            now,
            now + retention,
        )
        .await?;
    let pending = store.count_pending_by_tenant().await?;
    let webhooks = Arc::new(Webhooks::new(config.webhooks.clone()).map_err(ServerError::Other)?);
    let sandboxes = sandboxes::Sandboxes::start(
        config.sandboxes.clone(),
        Arc::clone(&engine),
        Arc::clone(&store),
        &config.data_dir,
        &config.state_dir,
        config.result_retention_secs,
    )
    .await
    .map_err(ServerError::Other)?;
    let state = AppState(Arc::new(Inner {
        sandboxes: Arc::clone(&sandboxes),
        rate: RateLimiter::new(config.rate_limit_per_minute),
        jobs: Jobs::new(fair::FairLimits {
            slots: config.concurrency,
            tenant_running: config.tenant_max_running(keys.len()),
            max_queued: config.max_queue,
            tenant_queued: config.tenant_max_queued(),
        }),
        sessions: Sessions::new(
            config.sessions.max_sessions,
            Duration::from_secs(config.sessions.idle_timeout_secs),
        ),
        metrics: install_metrics()?,
        webhooks: Arc::clone(&webhooks),
        config,
        engine,
        store: Arc::clone(&store),
        keys,
        languages,
    }));
    // Executions still pending from before take their places in their tenants' lines.
    for (tenant, n) in &pending {
        state.jobs.fair.queued_async(tenant, *n as usize);
    }
    for row in &interrupted {
        if let Some(url) = &row.callback_url {
            jobs::enqueue_webhook(&state, &row.tenant, &row.id, url).await;
        }
    }

    tokio::spawn(jobs::dispatch(state.clone()));
    tokio::spawn(webhooks.run(Arc::clone(&store)));
    let cleanup = state.clone();
    tokio::spawn(async move {
        loop {
            match cleanup.store.delete_expired(now_ms()).await {
                Ok(n) if n > 0 => tracing::info!("deleted {n} expired executions"),
                Ok(_) => {}
                Err(e) => tracing::warn!("deleting expired executions: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    });
    let reaper = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let r = reaper.clone();
            let _ = tokio::task::spawn_blocking(move || r.sessions.reap(&r.engine)).await;
        }
    });

    let listener = tokio::net::TcpListener::bind(state.config.listen)
        .await
        .map_err(|e| ServerError::Io {
            what: format!("listen on {}", state.config.listen),
            source: e,
        })?;
    let addr = listener.local_addr().map_err(|e| ServerError::Io {
        what: "read the listening address".into(),
        source: e,
    })?;
    eprintln!(
        "runcell: listening on http://{addr} ({} key(s), {} languages, concurrency {} ({} per \
         key), data in {})",
        state.keys.len(),
        state.languages.iter().filter(|l| l.available).count(),
        state.config.concurrency,
        state.config.tenant_max_running(state.keys.len()),
        state.config.data_dir.display()
    );
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| ServerError::Io {
            what: "serve".into(),
            source: e,
        });
    let _ = tokio::task::spawn_blocking(move || sandboxes.shutdown()).await;
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
