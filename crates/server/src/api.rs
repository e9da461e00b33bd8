//! Response shapes of the API (beyond the engine's `ExecutionResult`).

use serde::{Deserialize, Serialize};

use runcell_engine::ExecutionResult;
use runcell_engine::model::rfc3339;
use runcell_store::{DeliveryRow, ExecutionRow};

fn ts(ms: i64) -> String {
    rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
}

/// An execution as `GET /api/v1/executions/{id}` returns it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecutionObject {
    pub execution_id: String,
    /// `pending`, `running`, `completed` or `failed`.
    pub status: String,
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

impl ExecutionObject {
    pub fn from_row(row: &ExecutionRow) -> ExecutionObject {
        let result: Option<ExecutionResult> = row
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok());
        ExecutionObject {
            execution_id: row.id.clone(),
            status: row.status.as_str().to_string(),
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
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecutionList {
    pub executions: Vec<ExecutionObject>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A language as `GET /api/v1/languages` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LanguageInfo {
    pub id: String,
    pub name: String,
    /// Installed version (null when not installed).
    pub version: Option<String>,
    pub aliases: Vec<String>,
    pub extensions: Vec<String>,
    /// Whether the toolchain is installed on this server.
    pub available: bool,
    /// Whether runs have a compile step.
    pub compiled: bool,
    /// Whether stateful code contexts (sandboxes) support the language.
    pub contexts: bool,
    /// The `max_processes` (processes and threads) a run of this language gets when it asks
    /// for none: higher for runtimes that start threads of their own (Go, Java), never above
    /// the server's maximum.
    pub default_max_processes: u64,
}

/// The tenant's webhook signing secret.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookSecret {
    /// `whsec_…`: verify `webhook-signature` with it (Standard Webhooks).
    pub secret: String,
}

/// One delivery attempt.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptInfo {
    pub at: String,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// A webhook delivery and its attempts.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryInfo {
    /// The `webhook-id` header, stable across retries.
    pub webhook_id: String,
    pub url: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub created_at: String,
    pub next_attempt_at: Option<String>,
    pub attempts: Vec<AttemptInfo>,
}

impl DeliveryInfo {
    pub fn from_row(d: &DeliveryRow) -> DeliveryInfo {
        DeliveryInfo {
            webhook_id: d.id.clone(),
            url: d.url.clone(),
            state: d.state.as_str().to_string(),
            created_at: ts(d.created_at),
            next_attempt_at: d.next_attempt_at.map(ts),
            attempts: d
                .attempts
                .iter()
                .map(|a| AttemptInfo {
                    at: ts(a.at),
                    status_code: a.status_code,
                    error: a.error.clone(),
                    duration_ms: a.duration_ms,
                })
                .collect(),
        }
    }
}

/// The deliveries of an execution.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryInfo>,
}

/// `GET /health`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
}
