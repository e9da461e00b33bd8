//! Executions: synchronous runs, the durable queue of async ones, batches, cancellation,
//! listing, and the webhooks they trigger.
//!
//! Every execution is a row in the store before it runs: synchronous ones as `running`, async
//! ones as `pending`. A dispatcher claims pending rows as the fair scheduler grants slots. Work
//! is done in tokio tasks that outlive the request that started them, so a client that goes
//! away never leaves a row half-written; after a crash, rows left `running` are marked
//! `failed` at start-up ([`recover`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use runcell_engine::model::{now_ms, rfc3339};
use runcell_engine::{Cancel, ExecuteRequest, ExecutionResult, OutputSink, Plan, RunContext};
use runcell_jail::Stream;
use runcell_store::{
    DeliveryRow, ExecStatus, ExecutionRow, Finish, ListFilter, NewDelivery, NewExecution, Store,
};

use crate::config::Config;
use crate::fair::{Fair, FairLimits, Refused, Slot};
use crate::page::PageRequest;
use crate::tenants::Tenant;
use crate::{Error, Result, Service, StartError, webhooks};

/// How long a synchronous execution runs before it is recorded as running (listed, and
/// fetched or cancelled by its id, while it runs). One that ends sooner, nearly every one, is
/// recorded once, when it ends: one write instead of two. A streamed one, whose client has
/// its id from the start, is recorded at once.
const RECORD_RUNNING_AFTER: Duration = Duration::from_millis(250);

/// An execution as it is shown and sent in webhooks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecutionObject {
    pub execution_id: String,
    /// `pending`, `running`, `completed` or `failed`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub status: ExecStatus,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// When the execution and its result will be deleted.
    pub expires_at: Option<String>,
    /// The result, once there is one.
    pub result: Option<ExecutionResult>,
    /// Why it failed, when it failed without a result (cancelled before it ran, or
    /// interrupted by a server restart).
    pub failure_reason: Option<String>,
}

fn ts(ms: i64) -> String {
    rfc3339(system_time(ms))
}

fn system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

impl ExecutionObject {
    pub fn from_row(row: &ExecutionRow) -> ExecutionObject {
        let result: Option<ExecutionResult> = row
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok());
        ExecutionObject {
            execution_id: row.id.clone(),
            status: row.status,
            created_at: ts(row.created_at),
            started_at: row.started_at.map(ts),
            completed_at: row.completed_at.map(ts),
            expires_at: row.expires_at.map(ts),
            failure_reason: row
                .failure_reason
                .clone()
                .or_else(|| result.as_ref().and_then(|r| r.failure_reason.clone())),
            result,
        }
    }
}

/// A page of executions.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecutionList {
    pub executions: Vec<ExecutionObject>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A batch holds 1 to 10 executions.
pub fn check_batch_size(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid(
            "INVALID_REQUEST",
            "A batch needs at least one execution",
        ));
    }
    if n > 10 {
        return Err(Error::invalid(
            "BATCH_TOO_LARGE",
            "Maximum 10 executions allowed in a batch",
        ));
    }
    Ok(())
}

/// What a streaming client is told while its execution runs.
#[derive(Debug)]
pub enum Progress {
    Status(&'static str),
    Output(Stream, Vec<u8>),
    /// The end: the result, or why there is none.
    Done(Box<Result<ExecutionResult>>),
}

/// A started synchronous execution whose progress is streamed.
pub struct ExecutionStream {
    pub id: String,
    pub progress: UnboundedReceiver<Progress>,
    /// Cancels the execution (the stream's client went away).
    pub cancel: Cancel,
}

/// Coordination of running work.
pub(crate) struct Jobs {
    /// Execution slots, shared fairly between tenants.
    pub fair: Arc<Fair>,
    /// Slots granted to queued async executions, taken by the dispatcher.
    grants: Mutex<Option<UnboundedReceiver<(String, Slot)>>>,
    /// Cancellation handles of running executions.
    running: Mutex<HashMap<String, Cancel>>,
}

impl Jobs {
    pub fn new(limits: FairLimits) -> Jobs {
        let (fair, grants) = Fair::new(limits);
        Jobs {
            fair,
            grants: Mutex::new(Some(grants)),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Work accepted but not running.
    pub fn queued(&self) -> u64 {
        self.fair.queued() as u64
    }

    /// Executions running on this node.
    pub fn running(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn register(&self, id: &str, cancel: Cancel) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), cancel);
    }

    fn unregister(&self, id: &str) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Cancels a running execution; false if it is not running here.
    fn cancel(&self, id: &str) -> bool {
        match self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            Some(c) => {
                c.cancel();
                true
            }
            None => false,
        }
    }
}

/// The answer when the scheduler refuses work: `Busy` when the whole queue is full,
/// `LimitExceeded` when this tenant's share of it is.
fn refused(r: Refused) -> Error {
    match r {
        Refused::QueueFull { .. } => Error::busy("QUEUE_FULL", r.to_string()).retry_after(1),
        Refused::TenantQueueFull { .. } => {
            Error::limit("TENANT_QUEUE_FULL", r.to_string()).retry_after(1)
        }
    }
}

/// What an earlier process left: executions it was running (failed now, with a reason) and
/// the pending ones of each tenant.
pub(crate) struct Recovered {
    interrupted: Vec<ExecutionRow>,
    pending: Vec<(String, u64)>,
}

/// Executions that were running when the previous process died cannot be resumed safely
/// (their effects are unknown): they fail with a reason (their webhooks go out in
/// [`resume`]).
pub(crate) async fn recover(config: &Config, store: &dyn Store) -> Result<Recovered, StartError> {
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
    Ok(Recovered {
        interrupted,
        pending,
    })
}

/// Puts pending executions back in their tenants' lines, sends the webhooks of interrupted
/// ones, and starts the dispatcher and the deletion of expired executions.
pub(crate) async fn resume(svc: &Arc<Service>, r: Recovered) {
    for (tenant, n) in &r.pending {
        svc.jobs.fair.queued_async(tenant, *n as usize);
    }
    for row in &r.interrupted {
        if let Some(url) = &row.callback_url {
            svc.enqueue_webhook(&row.tenant, &row.id, url).await;
        }
    }
    tokio::spawn(dispatch(Arc::clone(svc)));
    let cleanup = Arc::clone(svc);
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
}

impl Service {
    /// Checks a request (language, limits, files) without running it.
    fn plan(&self, tenant: &Tenant, req: &ExecuteRequest) -> Result<Plan> {
        let plan = self.engine.plan(req)?;
        self.network.check(&tenant.0, plan.network.as_ref())?;
        Ok(plan)
    }

    /// Refuses new work of `tenant` when the queue, or the tenant's share of it, is full.
    fn check_capacity(&self, tenant: &Tenant) -> Result<()> {
        self.jobs.fair.check(&tenant.0, 1).map_err(refused)
    }

    /// Runs a request now (in the tenant's turn) and answers with its result.
    pub async fn execute(
        self: &Arc<Self>,
        tenant: &Tenant,
        req: ExecuteRequest,
    ) -> Result<ExecutionResult> {
        let plan = self.plan(tenant, &req)?;
        self.check_capacity(tenant)?;
        let id = uuid::Uuid::new_v4().to_string();
        self.run_sync(tenant, &req, plan, id, None, Cancel::new())
            .await
    }

    /// Starts a request now and streams its progress, ending with the result.
    pub fn execute_streaming(
        self: &Arc<Self>,
        tenant: &Tenant,
        req: ExecuteRequest,
    ) -> Result<ExecutionStream> {
        let plan = self.plan(tenant, &req)?;
        if plan.is_judged() {
            return Err(Error::invalid(
                "INVALID_REQUEST",
                "a run with test_cases cannot be streamed; run it synchronously or \
                 asynchronously",
            ));
        }
        self.check_capacity(tenant)?;
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = unbounded_channel::<Progress>();
        let cancel = Cancel::new();
        let (svc, tenant, task_id, task_cancel) =
            (Arc::clone(self), tenant.clone(), id.clone(), cancel.clone());
        tokio::spawn(async move {
            let r = svc
                .run_sync(&tenant, &req, plan, task_id, Some(tx.clone()), task_cancel)
                .await;
            let _ = tx.send(Progress::Done(Box::new(r)));
        });
        Ok(ExecutionStream {
            id,
            progress: rx,
            cancel,
        })
    }

    /// Runs up to 10 requests one after the other; results in request order. Every request is
    /// checked before any runs (an item's error names its index).
    pub async fn execute_batch(
        self: &Arc<Self>,
        tenant: &Tenant,
        reqs: Vec<ExecuteRequest>,
    ) -> Result<Vec<ExecutionResult>> {
        check_batch_size(reqs.len())?;
        let mut planned = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.into_iter().enumerate() {
            let plan = self.engine.plan(&req).map_err(|e| match e {
                // The seed's exact answer for an unsupported language anywhere in the batch.
                runcell_engine::EngineError::UnsupportedLanguage(_) => Error::from(e),
                other => Error::from(other).within(&format!("item {i}")),
            })?;
            self.network
                .check(&tenant.0, plan.network.as_ref())
                .map_err(|e| e.within(&format!("item {i}")))?;
            planned.push((req, plan));
        }
        self.check_capacity(tenant)?;
        let mut results = Vec::with_capacity(planned.len());
        for (req, plan) in planned {
            let id = uuid::Uuid::new_v4().to_string();
            results.push(
                self.run_sync(tenant, &req, plan, id, None, Cancel::new())
                    .await?,
            );
        }
        Ok(results)
    }

    /// Accepts a request into the durable queue; `callback_url` gets the webhook when it ends.
    pub async fn submit(
        &self,
        tenant: &Tenant,
        req: ExecuteRequest,
        callback_url: Option<String>,
    ) -> Result<ExecutionObject> {
        let plan = self.plan(tenant, &req)?;
        if let Some(url) = &callback_url {
            webhooks::check_target(url, &self.webhooks.allow)
                .await
                .map_err(|e| Error::invalid("INVALID_CALLBACK_URL", e))?;
        }
        self.check_capacity(tenant)?;
        let id = uuid::Uuid::new_v4().to_string();
        let row = NewExecution {
            id: id.clone(),
            tenant: tenant.0.clone(),
            status: ExecStatus::Pending,
            language: plan.language.clone(),
            session_id: plan.session_id.clone(),
            request: serde_json::to_string(&req).map_err(Error::internal)?,
            callback_url,
            created_at: now_ms(),
            started_at: None,
        };
        self.store.insert_execution(&row).await?;
        self.jobs.fair.queued_async(&tenant.0, 1);
        metrics::gauge!("runcell_queue_depth").set(self.jobs.queued() as f64);
        // The answer describes the execution as accepted (API.md: 202 with status `pending`),
        // not as read back: by then the dispatcher may already have claimed it.
        Ok(ExecutionObject {
            execution_id: id,
            status: ExecStatus::Pending,
            created_at: ts(row.created_at),
            started_at: None,
            completed_at: None,
            expires_at: None,
            result: None,
            failure_reason: None,
        })
    }

    /// An execution of `tenant`: its status and, once finished, its result.
    pub async fn execution(&self, tenant: &Tenant, id: &str) -> Result<ExecutionObject> {
        self.store
            .get_execution(&tenant.0, id, now_ms())
            .await?
            .map(|r| ExecutionObject::from_row(&r))
            .ok_or_else(|| Error::not_found("Execution"))
    }

    /// An execution of `tenant` with the request it was made from (for dialects that show
    /// the request's fields back, such as Judge0's submissions).
    pub async fn execution_with_request(
        &self,
        tenant: &Tenant,
        id: &str,
    ) -> Result<(ExecutionObject, ExecuteRequest)> {
        let row = self
            .store
            .get_execution(&tenant.0, id, now_ms())
            .await?
            .ok_or_else(|| Error::not_found("Execution"))?;
        let req = serde_json::from_str(&row.request)
            .map_err(|e| Error::internal(format!("the stored request of {id}: {e}")))?;
        Ok((ExecutionObject::from_row(&row), req))
    }

    /// Deletes a finished execution of `tenant` with its webhook deliveries; the answer is
    /// the execution as it was. One that has not finished is a conflict.
    pub async fn delete_execution(
        &self,
        tenant: &Tenant,
        id: &str,
    ) -> Result<(ExecutionObject, ExecuteRequest)> {
        let found = self.execution_with_request(tenant, id).await?;
        if !self.store.delete_execution(&tenant.0, id).await? {
            return Err(Error::conflict(
                "NOT_FINISHED",
                "the execution has not finished; it can be deleted once it has",
            ));
        }
        Ok(found)
    }

    /// The tenant's executions, newest first (of one session or status, if given).
    pub async fn list_executions(
        &self,
        tenant: &Tenant,
        session_id: Option<String>,
        status: Option<ExecStatus>,
        page: &PageRequest,
    ) -> Result<ExecutionList> {
        let (limit, before_seq) = page.check()?;
        // One row more than the page tells whether there is a next page.
        let filter = ListFilter {
            session_id: session_id.filter(|s| !s.is_empty()),
            status,
            before_seq,
            limit: limit + 1,
        };
        let rows = self
            .store
            .list_executions(&tenant.0, &filter, now_ms())
            .await?;
        let (rows, next_cursor) = crate::page::split(rows, limit, |r| r.seq);
        Ok(ExecutionList {
            executions: rows.iter().map(ExecutionObject::from_row).collect(),
            next_cursor,
        })
    }

    /// Cancels an execution: a pending one never runs; a running one is killed.
    pub async fn cancel_execution(&self, tenant: &Tenant, id: &str) -> Result<ExecutionObject> {
        // The execution may move from pending to running (or finish) while we look: retry.
        for _ in 0..200 {
            let row = self
                .store
                .get_execution(&tenant.0, id, now_ms())
                .await?
                .ok_or_else(|| Error::not_found("Execution"))?;
            match row.status {
                ExecStatus::Pending => {
                    let now = now_ms();
                    let f = Finish {
                        status: ExecStatus::Failed,
                        result: None,
                        failure_reason: Some("cancelled before it ran".into()),
                        completed_at: now,
                        expires_at: now + self.config.result_retention_secs as i64 * 1000,
                    };
                    if self.store.cancel_pending(&tenant.0, id, &f).await? {
                        self.jobs.fair.dequeued_async(&tenant.0);
                        if let Some(url) = &row.callback_url {
                            self.enqueue_webhook(&tenant.0, id, url).await;
                        }
                        return self.execution(tenant, id).await;
                    }
                }
                ExecStatus::Running => {
                    if self.jobs.cancel(id) {
                        // Wait (briefly) for the kill to be recorded.
                        for _ in 0..100 {
                            let obj = self.execution(tenant, id).await?;
                            if obj.status != ExecStatus::Running {
                                return Ok(obj);
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        return self.execution(tenant, id).await;
                    }
                }
                ExecStatus::Completed | ExecStatus::Failed => {
                    return Err(Error::conflict(
                        "ALREADY_FINISHED",
                        "Execution already finished",
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(Error::busy(
            "TRY_AGAIN",
            "the execution is changing state; try again",
        ))
    }

    /// The webhook deliveries of an execution, with every attempt.
    pub async fn deliveries(&self, tenant: &Tenant, id: &str) -> Result<Vec<DeliveryRow>> {
        self.execution(tenant, id).await?;
        Ok(self.store.list_deliveries(&tenant.0, id).await?)
    }

    /// The secret that signs this tenant's webhooks (created on first use).
    pub async fn webhook_secret(&self, tenant: &Tenant) -> Result<String> {
        Ok(self
            .store
            .webhook_secret(&tenant.0, webhooks::new_secret())
            .await?)
    }

    /// Runs a validated request now (waiting for a free slot, in the tenant's turn), recording
    /// it in the store. The work runs in its own task: if the caller goes away, it still
    /// finishes and is recorded.
    async fn run_sync(
        self: &Arc<Self>,
        tenant: &Tenant,
        req: &ExecuteRequest,
        plan: Plan,
        id: String,
        progress: Option<UnboundedSender<Progress>>,
        cancel: Cancel,
    ) -> Result<ExecutionResult> {
        let request = serde_json::to_string(req).map_err(Error::internal)?;
        let ticket = self.jobs.fair.enter_sync(&tenant.0).map_err(refused)?;
        metrics::gauge!("runcell_queue_depth").set(self.jobs.queued() as f64);
        let svc = Arc::clone(self);
        let tenant = tenant.0.clone();
        let task = tokio::spawn(async move {
            let created = now_ms();
            let slot = ticket
                .wait()
                .await
                .ok_or_else(|| Error::internal("the scheduler dropped a waiting request"))?;
            if let Some(p) = &progress {
                let _ = p.send(Progress::Status("running"));
            }
            let started = now_ms();
            let row = NewExecution {
                id: id.clone(),
                tenant: tenant.clone(),
                status: ExecStatus::Running,
                language: plan.language.clone(),
                session_id: plan.session_id.clone(),
                request,
                callback_url: None,
                created_at: created,
                started_at: Some(started),
            };
            svc.jobs.register(&id, cancel.clone());
            // A run still going after RECORD_RUNNING_AFTER (or streamed: its client has its
            // id) is recorded as running meanwhile, off the latency, and finished when it
            // ends. Nearly every run ends sooner and is recorded once, already final.
            let ended = tokio::sync::Notify::new();
            let streamed = progress.is_some();
            let record_running = async {
                if !streamed {
                    tokio::select! {
                        () = tokio::time::sleep(RECORD_RUNNING_AFTER) => {}
                        () = ended.notified() => return Ok(false),
                    }
                }
                svc.store.insert_execution(&row).await.map(|()| true)
            };
            let run = async {
                let result = svc
                    .run_plan(&tenant, plan, &id, created, progress, cancel)
                    .await;
                ended.notify_one();
                result
            };
            let (recorded, result) = tokio::join!(record_running, run);
            svc.jobs.unregister(&id);
            let inserted = if recorded? { None } else { Some(&row) };
            svc.finish(&tenant, &id, None, &result, inserted).await;
            drop(slot);
            Ok(result)
        });
        task.await?
    }

    async fn run_claimed(&self, row: ExecutionRow) {
        let req: ExecuteRequest = match serde_json::from_str(&row.request) {
            Ok(r) => r,
            Err(e) => {
                self.fail_without_result(&row, &format!("the stored request is unreadable: {e}"))
                    .await;
                return;
            }
        };
        let plan = match self.engine.plan(&req) {
            Ok(p) => p,
            Err(e) => {
                self.fail_without_result(&row, &format!("the request is no longer valid: {e}"))
                    .await;
                return;
            }
        };
        let cancel = Cancel::new();
        self.jobs.register(&row.id, cancel.clone());
        let result = self
            .run_plan(&row.tenant, plan, &row.id, row.created_at, None, cancel)
            .await;
        self.jobs.unregister(&row.id);
        self.finish(
            &row.tenant,
            &row.id,
            row.callback_url.as_deref(),
            &result,
            None,
        )
        .await;
    }

    async fn fail_without_result(&self, row: &ExecutionRow, reason: &str) {
        let now = now_ms();
        let f = Finish {
            status: ExecStatus::Failed,
            result: None,
            failure_reason: Some(reason.to_string()),
            completed_at: now,
            expires_at: now + self.config.result_retention_secs as i64 * 1000,
        };
        if let Err(e) = self.store.finish_execution(&row.id, &f).await {
            tracing::error!("recording the failure of {}: {e}", row.id);
        }
        metrics::counter!("runcell_executions_total", "language" => row.language.clone(), "status" => "failed")
            .increment(1);
        if let Some(url) = &row.callback_url {
            self.enqueue_webhook(&row.tenant, &row.id, url).await;
        }
    }

    /// Runs a plan in a blocking thread (in the tenant's session workspace, if it names one).
    async fn run_plan(
        &self,
        tenant: &str,
        plan: Plan,
        id: &str,
        created_ms: i64,
        progress: Option<UnboundedSender<Progress>>,
        cancel: Cancel,
    ) -> ExecutionResult {
        let engine = self.engine.clone();
        let created = system_time(created_ms);
        let workspace = match &plan.session_id {
            Some(sid) => match self.workspaces.get(&engine, tenant, sid) {
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
            let streamed = progress.is_some();
            let mut forward = |s: Stream, chunk: &[u8]| {
                if let Some(p) = &progress {
                    let _ = p.send(Progress::Output(s, chunk.to_vec()));
                }
            };
            match workspace {
                Some(w) => {
                    let mut guard = w.jail.lock().unwrap_or_else(|p| p.into_inner());
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
                        on_output: streamed.then_some(&mut forward as OutputSink<'_>),
                        cancel: Some(&cancel),
                        jail: guard.as_ref(),
                        ..RunContext::default()
                    };
                    let r = engine.run(&plan, &id, created, ctx);
                    w.last_used.store(now_ms(), Ordering::SeqCst);
                    r
                }
                None => {
                    let ctx = RunContext {
                        on_output: streamed.then_some(&mut forward as OutputSink<'_>),
                        cancel: Some(&cancel),
                        jail: None,
                        // Compiled programs are shared within a tenant only.
                        cache_scope: Some(&scope),
                        ..RunContext::default()
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
                self.engine
                    .failure(&plan_copy, id, created, format!("internal error: {e}"))
            }
        }
    }

    /// Records a finished execution and enqueues its webhook.
    async fn finish(
        &self,
        tenant: &str,
        id: &str,
        callback_url: Option<&str>,
        result: &ExecutionResult,
        unrecorded: Option<&NewExecution>,
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
            expires_at: now + self.config.result_retention_secs as i64 * 1000,
        };
        // The answer waits for this record (read-your-writes): a store that fails for a moment
        // is tried again before the result is given without it.
        for attempt in 1..=5u32 {
            let write = match unrecorded {
                // A synchronous run that ended before it was recorded as running.
                Some(row) => self.store.insert_finished_execution(row, &f).await,
                None => self.store.finish_execution(id, &f).await.map(|_| ()),
            };
            match write {
                Ok(()) => break,
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
            self.enqueue_webhook(tenant, id, url).await;
        }
    }

    /// Queues the `execution.completed` webhook of a finished execution (once per execution).
    pub(crate) async fn enqueue_webhook(&self, tenant: &str, id: &str, url: &str) {
        let row = match self.store.get_execution(tenant, id, now_ms()).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("reading {id} for its webhook: {e}");
                return;
            }
        };
        let obj = ExecutionObject::from_row(&row);
        // A dialect's own callback (Judge0's PUT of the submission), else ours.
        let req: Option<ExecuteRequest> = serde_json::from_str(&row.request).ok();
        let format = req.as_ref().and_then(|r| {
            let dialect = r.dialect.as_ref()?.as_object()?.keys().next()?;
            Some((self.callbacks.get(dialect.as_str())?, r))
        });
        let (method, payload) = match format {
            Some((f, r)) => (f.method, (f.body)(&obj, r)),
            None => (
                "POST",
                serde_json::json!({"type": "execution.completed", "data": obj}).to_string(),
            ),
        };
        let d = NewDelivery {
            id: format!("msg_{}", id.replace('-', "")),
            execution_id: id.to_string(),
            tenant: tenant.to_string(),
            url: url.to_string(),
            method: method.to_string(),
            payload,
            created_at: now_ms(),
            next_attempt_at: now_ms(),
        };
        match self.store.insert_delivery(&d).await {
            Ok(()) => self.webhooks.wake.notify_one(),
            Err(e) => tracing::error!("queueing the webhook of {id}: {e}"),
        }
    }
}

/// Runs queued executions as the scheduler grants them slots, forever: each grant names a
/// tenant, whose oldest pending execution is claimed.
async fn dispatch(svc: Arc<Service>) {
    let Some(mut grants) = svc
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
        match svc.store.claim_next_pending_of(&tenant, now_ms()).await {
            Ok(Some(row)) => {
                metrics::gauge!("runcell_queue_depth").set(svc.jobs.queued() as f64);
                let s = Arc::clone(&svc);
                tokio::spawn(async move {
                    s.run_claimed(row).await;
                    drop(slot);
                });
            }
            // Its pending execution was cancelled meanwhile: the slot goes to the next.
            Ok(None) => drop(slot),
            Err(e) => {
                tracing::warn!("claiming queued work: {e}");
                svc.jobs.fair.retry_async(slot);
                tokio::time::sleep(Duration::from_secs(1)).await;
                svc.jobs.fair.kick();
            }
        }
    }
}
