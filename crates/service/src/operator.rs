//! The operator's overview (the playground's operator view, `GET /api/v1/operator/overview`):
//! this node's load, the cluster's nodes, every tenant's newest executions and running
//! sandboxes with their metrics. Needs an operator key (`cluster.admin_keys`), like
//! `GET /cluster`.

use std::time::Duration;

use serde::Serialize;

use runcell_engine::model::now_ms;
use runcell_store::ListFilter;

use crate::cluster::ClusterObject;
use crate::executions::ExecutionObject;
use crate::model::{ExecStatus, Metrics, SandboxStatus};
use crate::page::PageRequest;
use crate::sandboxes::{Cred, SandboxObject};
use crate::tenants::Tenant;
use crate::{Error, Result, Service};

/// Which executions the overview lists.
#[derive(Debug, Clone, Default)]
pub struct OverviewQuery {
    /// `pending`, `running`, `completed` or `failed`.
    pub status: Option<String>,
    /// A language id (`python`).
    pub language: Option<String>,
    /// One tenant's id.
    pub tenant: Option<String>,
    /// At most this many executions (1 to 100, default 50).
    pub limit: Option<u32>,
}

/// This node's load.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeLoad {
    /// Executions accepted and waiting for a slot.
    pub queued: u64,
    /// Executions running on this node.
    pub running: usize,
    /// The node's execution slots.
    pub concurrency: usize,
    pub sandboxes: usize,
    pub sessions: usize,
    pub jail_pool_ready: usize,
    pub warm_ready: usize,
    pub sandbox_pool_ready: usize,
}

/// An execution of some tenant.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantExecution {
    pub tenant: String,
    pub language: String,
    #[serde(flatten)]
    pub execution: ExecutionObject,
}

/// A running sandbox of some tenant, with a metrics sample when it lives on this node.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantSandbox {
    pub tenant: String,
    #[serde(flatten)]
    pub sandbox: SandboxObject,
    pub metrics: Option<Metrics>,
}

/// `GET /api/v1/operator/overview`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Overview {
    pub load: NodeLoad,
    pub cluster: ClusterObject,
    /// The tenants' ids (the executions' and sandboxes' `tenant`).
    pub tenants: Vec<String>,
    /// The newest executions of every tenant (or of `tenant`) that pass the filters, newest
    /// first.
    pub executions: Vec<TenantExecution>,
    /// Every tenant's running and paused sandboxes (at most 100), newest first.
    pub sandboxes: Vec<TenantSandbox>,
}

/// How long a sandbox's CPU use is sampled for the overview.
const METRICS_SAMPLE: Duration = Duration::from_millis(100);

impl Service {
    /// The operator's overview, for an operator's key (403 for any other).
    pub async fn operator_overview(&self, key: &str, q: &OverviewQuery) -> Result<Overview> {
        let cluster = self.cluster(key).await.map_err(|e| {
            if e.code == "ADMIN_KEY_REQUIRED" {
                Error::new(
                    e.kind,
                    "ADMIN_KEY_REQUIRED",
                    "the operator overview needs one of the operator keys (cluster.admin_keys, \
                     RUNCELL_ADMIN_KEYS)",
                )
            } else {
                e
            }
        })?;
        let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(ExecStatus::parse(s).ok_or_else(|| {
                Error::invalid(
                    "INVALID_QUERY",
                    format!("status must be pending, running, completed or failed, not {s:?}"),
                )
            })?),
        };
        let limit = q.limit.unwrap_or(50);
        if !(1..=100).contains(&limit) {
            return Err(Error::invalid(
                "INVALID_QUERY",
                "limit must be between 1 and 100",
            ));
        }
        let language = q.language.as_deref().filter(|l| !l.is_empty());
        let tenants = self.tenants.ids();
        let chosen: Vec<&String> = match q.tenant.as_deref().filter(|t| !t.is_empty()) {
            None => tenants.iter().collect(),
            Some(t) => {
                let found: Vec<&String> = tenants.iter().filter(|x| *x == t).collect();
                if found.is_empty() {
                    return Err(Error::invalid(
                        "INVALID_QUERY",
                        format!("no tenant {t:?} (tenants: {})", tenants.join(", ")),
                    ));
                }
                found
            }
        };

        let mut executions = Vec::new();
        for t in &chosen {
            let filter = ListFilter {
                session_id: None,
                status,
                before_seq: None,
                // A language filter is applied to the newest 100 of each tenant.
                limit: if language.is_some() { 100 } else { limit },
            };
            for row in self.store.list_executions(t, &filter, now_ms()).await? {
                if language.is_some_and(|l| l != row.language) {
                    continue;
                }
                executions.push(TenantExecution {
                    tenant: row.tenant.clone(),
                    language: row.language.clone(),
                    execution: ExecutionObject::from_row(&row),
                });
            }
        }
        executions.sort_by(|a, b| b.execution.created_at.cmp(&a.execution.created_at));
        executions.truncate(limit as usize);

        let mut sandboxes = Vec::new();
        for t in &tenants {
            // Paused sandboxes are `running` records too.
            let page = PageRequest {
                limit: Some(100),
                cursor: None,
            };
            let list = self
                .list_sandboxes(&Tenant(t.clone()), Some(SandboxStatus::Running), &page)
                .await?;
            for sb in list.sandboxes {
                let cred = Cred::Tenant(t.clone());
                let metrics = match self.sandbox_lifecycle(&cred, &sb.id).await {
                    Ok(live) => self.sandbox_metrics(&live, METRICS_SAMPLE).await.ok(),
                    Err(_) => None,
                };
                sandboxes.push(TenantSandbox {
                    tenant: t.clone(),
                    sandbox: sb,
                    metrics,
                });
            }
        }
        sandboxes.sort_by(|a, b| b.sandbox.created_at.cmp(&a.sandbox.created_at));
        sandboxes.truncate(100);

        let load = self.load();
        Ok(Overview {
            load: NodeLoad {
                queued: load.queued,
                running: self.jobs.running(),
                concurrency: self.config.concurrency,
                sandboxes: load.sandboxes,
                sessions: load.sessions,
                jail_pool_ready: load.jail_pool_ready,
                warm_ready: load.warm_ready,
                sandbox_pool_ready: load.sandbox_pool_ready,
            },
            cluster,
            tenants,
            executions,
            sandboxes,
        })
    }
}
