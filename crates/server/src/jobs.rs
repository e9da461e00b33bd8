//! Running executions: synchronous requests, and the durable queue of async ones.
//!
//! Every execution is a row in the store before it runs: synchronous ones as `running`, async
//! ones as `pending`. A dispatcher claims pending rows in order whenever a worker permit is
//! free. Work is done in tokio tasks that outlive the request that started them, so a client
//! that goes away never leaves a row half-written; after a crash, rows left `running` are
//! marked `failed` at start-up (see `lib.rs`).

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;

use tokio::sync::mpsc::UnboundedSender;

use runcell_engine::{Cancel, ExecuteRequest, ExecutionResult, Plan, RunContext};
use runcell_jail::Stream;
use runcell_store::{ExecStatus, ExecutionRow, Finish, NewDelivery, NewExecution};

use crate::api::ExecutionObject;
use crate::error::ApiError;
use crate::fair::Refused;
use crate::state::{AppState, now_ms};

/// What a streaming client is told while its execution runs.
#[derive(Debug)]
pub enum Progress {
    Status(&'static str),
    Output(Stream, Vec<u8>),
    /// The end: the result, or why there is none.
    Done(Box<Result<ExecutionResult, ApiError>>),
}

fn system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// The answer when the scheduler refuses work: 503 when the whole queue is full, 429 when
/// this tenant's share of it is.
pub fn refused(r: Refused) -> ApiError {
    match r {
        Refused::QueueFull { .. } => {
            let mut e = ApiError::unavailable("QUEUE_FULL", r.to_string());
            e.retry_after = Some(1);
            e
        }
        Refused::TenantQueueFull { .. } => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TENANT_QUEUE_FULL",
                r.to_string(),
            );
            e.retry_after = Some(1);
            e
        }
    }
}

/// Refuses new work of `tenant` when the queue, or the tenant's share of it, is full.
pub fn check_capacity(state: &AppState, tenant: &str, extra: u64) -> Result<(), ApiError> {
    state
        .jobs
        .fair
        .check(tenant, extra as usize)
        .map_err(refused)
}

/// Runs a validated request now (waiting for a free worker, in the tenant's turn), recording
/// it in the store. The work runs in its own task: if the caller goes away, it still finishes
/// and is recorded.
pub async fn run_sync(
    state: &AppState,
    tenant: &str,
    req: &ExecuteRequest,
    plan: Plan,
    id: String,
    progress: Option<UnboundedSender<Progress>>,
    cancel: Cancel,
) -> Result<ExecutionResult, ApiError> {
    let request = serde_json::to_string(req).map_err(ApiError::internal)?;
    let ticket = state.jobs.fair.enter_sync(tenant).map_err(refused)?;
    metrics::gauge!("runcell_queue_depth").set(state.jobs.queued() as f64);
    let st = state.clone();
    let tenant = tenant.to_string();
    let task = tokio::spawn(async move {
        let created = now_ms();
        let slot = ticket
            .wait()
            .await
            .ok_or_else(|| ApiError::internal("the scheduler dropped a waiting request"))?;
        if let Some(p) = &progress {
            let _ = p.send(Progress::Status("running"));
        }
        let started = now_ms();
        st.store
            .insert_execution(&NewExecution {
                id: id.clone(),
                tenant: tenant.clone(),
                status: ExecStatus::Running,
                language: plan.language.clone(),
                session_id: plan.session_id.clone(),
                request,
                callback_url: None,
                created_at: created,
                started_at: Some(started),
            })
            .await?;
        st.jobs.register(&id, cancel.clone());
        let result = execute(&st, &tenant, plan, &id, created, progress, cancel).await;
        st.jobs.unregister(&id);
        finish(&st, &tenant, &id, None, &result).await;
        drop(slot);
        Ok(result)
    });
    task.await.map_err(ApiError::internal)?
}

/// Accepts a validated request into the durable queue.
pub async fn submit_async(
    state: &AppState,
    tenant: &str,
    req: &ExecuteRequest,
    plan: &Plan,
    callback_url: Option<String>,
) -> Result<ExecutionObject, ApiError> {
    check_capacity(state, tenant, 1)?;
    let id = uuid::Uuid::new_v4().to_string();
    let row = NewExecution {
        id: id.clone(),
        tenant: tenant.to_string(),
        status: ExecStatus::Pending,
        language: plan.language.clone(),
        session_id: plan.session_id.clone(),
        request: serde_json::to_string(req).map_err(ApiError::internal)?,
        callback_url,
        created_at: now_ms(),
        started_at: None,
    };
    state.store.insert_execution(&row).await?;
    state.jobs.fair.queued_async(tenant, 1);
    metrics::gauge!("runcell_queue_depth").set(state.jobs.queued() as f64);
    // The answer describes the execution as accepted (API.md: 202 with status `pending`),
    // not as read back: by then the dispatcher may already have claimed it.
    let accepted = ExecutionObject {
        execution_id: id,
        status: ExecStatus::Pending.as_str().to_string(),
        created_at: runcell_engine::model::rfc3339(system_time(row.created_at)),
        started_at: None,
        completed_at: None,
        expires_at: None,
        result: None,
        failure_reason: None,
    };
    Ok(accepted)
}

/// Runs queued executions as the scheduler grants them slots, forever: each grant names a
/// tenant, whose oldest pending execution is claimed.
pub async fn dispatch(state: AppState) {
    let Some(mut grants) = state
        .jobs
        .grants
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        tracing::error!("the dispatcher was started twice");
        return;
    };
    while let Some((tenant, slot)) = grants.recv().await {
        match state.store.claim_next_pending_of(&tenant, now_ms()).await {
            Ok(Some(row)) => {
                metrics::gauge!("runcell_queue_depth").set(state.jobs.queued() as f64);
                let st = state.clone();
                tokio::spawn(async move {
                    run_claimed(&st, row).await;
                    drop(slot);
                });
            }
            // Its pending execution was cancelled meanwhile: the slot goes to the next.
            Ok(None) => drop(slot),
            Err(e) => {
                tracing::warn!("claiming queued work: {e}");
                state.jobs.fair.retry_async(slot);
                tokio::time::sleep(Duration::from_secs(1)).await;
                state.jobs.fair.kick();
            }
        }
    }
}

async fn run_claimed(state: &AppState, row: ExecutionRow) {
    let req: ExecuteRequest = match serde_json::from_str(&row.request) {
        Ok(r) => r,
        Err(e) => {
            fail_without_result(
                state,
                &row,
                &format!("the stored request is unreadable: {e}"),
            )
            .await;
            return;
        }
    };
    let plan = match state.engine.plan(&req) {
        Ok(p) => p,
        Err(e) => {
            fail_without_result(state, &row, &format!("the request is no longer valid: {e}")).await;
            return;
        }
    };
    let cancel = Cancel::new();
    state.jobs.register(&row.id, cancel.clone());
    let result = execute(
        state,
        &row.tenant,
        plan,
        &row.id,
        row.created_at,
        None,
        cancel,
    )
    .await;
    state.jobs.unregister(&row.id);
    finish(
        state,
        &row.tenant,
        &row.id,
        row.callback_url.as_deref(),
        &result,
    )
    .await;
}

async fn fail_without_result(state: &AppState, row: &ExecutionRow, reason: &str) {
    let now = now_ms();
    let f = Finish {
        status: ExecStatus::Failed,
        result: None,
        failure_reason: Some(reason.to_string()),
        completed_at: now,
        expires_at: now + state.config.result_retention_secs as i64 * 1000,
    };
    if let Err(e) = state.store.finish_execution(&row.id, &f).await {
        tracing::error!("recording the failure of {}: {e}", row.id);
    }
    metrics::counter!("runcell_executions_total", "language" => row.language.clone(), "status" => "failed")
        .increment(1);
    if let Some(url) = &row.callback_url {
        enqueue_webhook(state, &row.tenant, &row.id, url).await;
    }
}

/// Runs a plan in a blocking thread (in the caller's session jail, if it names one).
async fn execute(
    state: &AppState,
    tenant: &str,
    plan: Plan,
    id: &str,
    created_ms: i64,
    progress: Option<UnboundedSender<Progress>>,
    cancel: Cancel,
) -> ExecutionResult {
    let engine = state.engine.clone();
    let created = system_time(created_ms);
    let session = match &plan.session_id {
        Some(sid) => match state.sessions.get(&engine, tenant, sid) {
            Ok(s) => Some(s),
            Err(e) => return engine.failure(&plan, id, created, e.detail),
        },
        None => None,
    };
    let id_owned = id.to_string();
    let started = std::time::Instant::now();
    let language = plan.language.clone();
    // Kept to describe a failure of the blocking task itself.
    let plan_copy = plan.clone();
    let scope = tenant.to_string();
    let joined = tokio::task::spawn_blocking(move || {
        let id = id_owned;
        let mut forward = |s: Stream, chunk: &[u8]| {
            if let Some(p) = &progress {
                let _ = p.send(Progress::Output(s, chunk.to_vec()));
            }
        };
        match session {
            Some(s) => {
                let mut guard = s.jail.lock().unwrap_or_else(|p| p.into_inner());
                if guard.is_none() {
                    match engine.session_jail() {
                        Ok(j) => *guard = Some(j),
                        Err(e) => {
                            return engine.failure(
                                &plan,
                                &id,
                                created,
                                format!("runcell could not create the session's jail: {e}"),
                            );
                        }
                    }
                }
                let ctx = RunContext {
                    on_output: Some(&mut forward),
                    cancel: Some(&cancel),
                    jail: guard.as_ref(),
                    cache_scope: None,
                };
                let r = engine.run(&plan, &id, created, ctx);
                s.last_used.store(now_ms(), Ordering::SeqCst);
                r
            }
            None => {
                let ctx = RunContext {
                    on_output: Some(&mut forward),
                    cancel: Some(&cancel),
                    jail: None,
                    // Compiled programs are shared within a tenant only.
                    cache_scope: Some(&scope),
                };
                engine.run(&plan, &id, created, ctx)
            }
        }
    })
    .await;
    metrics::histogram!("runcell_execution_duration_seconds", "language" => language)
        .record(started.elapsed().as_secs_f64());
    match joined {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("execution {id} panicked: {e}");
            state
                .engine
                .failure(&plan_copy, id, created, format!("internal error: {e}"))
        }
    }
}

/// Records a finished execution and enqueues its webhook.
async fn finish(
    state: &AppState,
    tenant: &str,
    id: &str,
    callback_url: Option<&str>,
    result: &ExecutionResult,
) {
    let status = if result.status == runcell_engine::ResultStatus::Completed {
        ExecStatus::Completed
    } else {
        ExecStatus::Failed
    };
    let now = now_ms();
    let f = Finish {
        status,
        result: serde_json::to_string(result).ok(),
        failure_reason: result.failure_reason.clone(),
        completed_at: now,
        expires_at: now + state.config.result_retention_secs as i64 * 1000,
    };
    // The answer waits for this record (read-your-writes): a store that fails for a moment is
    // tried again before the result is given without it.
    for attempt in 1..=5u32 {
        match state.store.finish_execution(id, &f).await {
            Ok(_) => break,
            Err(e) if attempt < 5 => {
                tracing::warn!("recording the result of {id} (attempt {attempt}): {e}");
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            Err(e) => tracing::error!("recording the result of {id}: {e}"),
        }
    }
    metrics::counter!(
        "runcell_executions_total",
        "language" => result.language.clone(),
        "status" => status.as_str()
    )
    .increment(1);
    if let Some(url) = callback_url {
        enqueue_webhook(state, tenant, id, url).await;
    }
}

/// Queues the `execution.completed` webhook of a finished execution (once per execution).
pub async fn enqueue_webhook(state: &AppState, tenant: &str, id: &str, url: &str) {
    let row = match state.store.get_execution(tenant, id, now_ms()).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::error!("reading {id} for its webhook: {e}");
            return;
        }
    };
    let payload = serde_json::json!({
        "type": "execution.completed",
        "data": ExecutionObject::from_row(&row),
    });
    let d = NewDelivery {
        id: format!("msg_{}", id.replace('-', "")),
        execution_id: id.to_string(),
        tenant: tenant.to_string(),
        url: url.to_string(),
        payload: payload.to_string(),
        created_at: now_ms(),
        next_attempt_at: now_ms(),
    };
    match state.store.insert_delivery(&d).await {
        Ok(()) => state.webhooks.wake.notify_one(),
        Err(e) => tracing::error!("queueing the webhook of {id}: {e}"),
    }
}
