//! Finding sandboxes by status and metadata with numbered pages (OpenSandbox's listing), the
//! access token an owner may be given again, renewal to an absolute time, and connections to a
//! port a program in the sandbox listens on.

use std::sync::Arc;
use std::time::Duration;

use runcell_store::{SandboxFilter, SandboxStatus};

use super::{Live, SandboxObject, Sandboxes, object_of_row};
use crate::tenants::Tenant;
use crate::{Error, Result, Service};

/// Ended sandboxes considered by a search (the newest; older ones are still listed by the
/// native API's cursor).
const MAX_ENDED_SEARCHED: u32 = 1000;

/// Which sandboxes to find.
#[derive(Debug, Clone, Default)]
pub struct SandboxQuery {
    /// Statuses as the native API names them (`running`, `paused`, `terminated`); empty: the
    /// live ones (every status but `terminated`). Ended sandboxes are searched among the
    /// newest [`MAX_ENDED_SEARCHED`].
    pub statuses: Vec<String>,
    /// Every pair must be in the sandbox's metadata, with that string value.
    pub metadata: Vec<(String, String)>,
    /// 1-based.
    pub page: u32,
    pub page_size: u32,
}

/// A numbered page of sandboxes, newest first.
#[derive(Debug, Clone)]
pub struct SandboxPage {
    pub items: Vec<SandboxObject>,
    pub total: usize,
}

fn matches(o: &SandboxObject, pairs: &[(String, String)]) -> bool {
    pairs
        .iter()
        .all(|(k, v)| o.metadata.get(k).and_then(|x| x.as_str()) == Some(v.as_str()))
}

/// The native name of a sandbox's status (`running`, `terminated`, …).
pub fn status_name(o: &SandboxObject) -> String {
    match serde_json::to_value(o.status) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

const TERMINATED: &str = "terminated";

impl Sandboxes {
    async fn find(&self, tenant: &str, q: &SandboxQuery) -> Result<SandboxPage> {
        if q.page == 0 || !(1..=200).contains(&q.page_size) {
            return Err(Error::invalid(
                "INVALID_QUERY",
                "page must be at least 1 and pageSize between 1 and 200",
            ));
        }
        let wanted = |o: &SandboxObject| {
            let s = status_name(o);
            if q.statuses.is_empty() {
                s != TERMINATED
            } else {
                q.statuses.contains(&s)
            }
        };
        let ended = q.statuses.iter().any(|s| s == TERMINATED);
        let live = q.statuses.is_empty() || q.statuses.iter().any(|s| s != TERMINATED);
        let mut found: Vec<(i64, SandboxObject)> = Vec::new();
        if live {
            let live: Vec<Arc<Live>> = self
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|l| l.tenant == tenant)
                .cloned()
                .collect();
            found.extend(live.iter().map(|l| (l.created_at, l.object())));
        }
        if ended {
            let rows = self
                .store
                .list_sandboxes(
                    tenant,
                    &SandboxFilter {
                        status: Some(SandboxStatus::Terminated),
                        before_seq: None,
                        limit: MAX_ENDED_SEARCHED,
                    },
                )
                .await?;
            // A sandbox being ended may be in both for a moment: the live one answers.
            let live_ids: std::collections::HashSet<String> =
                found.iter().map(|(_, o)| o.id.clone()).collect();
            found.extend(
                rows.iter()
                    .filter(|r| !live_ids.contains(&r.id))
                    .map(|r| (r.created_at, object_of_row(r))),
            );
        }
        found.retain(|(_, o)| wanted(o) && matches(o, &q.metadata));
        found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        let total = found.len();
        let start = (q.page as usize - 1).saturating_mul(q.page_size as usize);
        let items = found
            .into_iter()
            .skip(start)
            .take(q.page_size as usize)
            .map(|(_, o)| o)
            .collect();
        Ok(SandboxPage { items, total })
    }
}

impl Service {
    /// The tenant's sandboxes that match `q`, newest first, one numbered page of them.
    pub async fn find_sandboxes(&self, tenant: &Tenant, q: &SandboxQuery) -> Result<SandboxPage> {
        self.sandboxes.find(&tenant.0, q).await
    }

    /// The sandbox's access token (`X-EXECD-ACCESS-TOKEN`), for its owner.
    pub fn sandbox_access_token(&self, live: &Live) -> String {
        self.sandboxes.access_token(live.id())
    }

    /// Renews a sandbox's lifetime to end at `expires_at` (Unix ms): at least a second from
    /// now, at most the configured maximum lifetime from now.
    pub async fn renew_sandbox_until(&self, live: &Live, expires_at: i64) -> Result<i64> {
        self.sandboxes.renew_until(live, expires_at).await
    }

    /// A connection to TCP `port` on the sandbox's own loopback, where a program in it
    /// listens (502-worthy `Busy` when nothing does).
    pub async fn connect_sandbox_port(
        &self,
        live: &Arc<Live>,
        port: u16,
    ) -> Result<std::net::TcpStream> {
        if port == 0 {
            return Err(Error::invalid(
                "INVALID_PORT",
                "port must be from 1 to 65535",
            ));
        }
        let jail = Arc::clone(live.sandbox.jail());
        let id = live.id().to_string();
        tokio::task::spawn_blocking(move || jail.connect_tcp(port, Duration::from_secs(5)))
            .await
            .map_err(Error::internal)?
            .map_err(|e| {
                Error::busy(
                    "PORT_UNREACHABLE",
                    format!("nothing in sandbox {id} accepts connections on port {port}: {e}"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_filters_need_every_pair() {
        let mut o = SandboxObject {
            id: "sb_x".into(),
            status: crate::sandboxes::SandboxState::Running,
            paused_at: None,
            access_token: None,
            created_at: String::new(),
            expires_at: String::new(),
            timeout_secs: 1,
            limits: crate::config::SandboxLimits {
                memory_mb: 1,
                cpus: 1.0,
                max_processes: 1,
                disk_mb: 1,
            },
            metadata: Default::default(),
            network: false,
            egress: Vec::new(),
            ended_at: None,
            end_reason: None,
            image: None,
            entrypoint: None,
        };
        o.metadata.insert("project".into(), json!("Apollo"));
        o.metadata.insert("n".into(), json!(3));
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert!(matches(&o, &[]));
        assert!(matches(&o, &[pair("project", "Apollo")]));
        assert!(!matches(
            &o,
            &[pair("project", "Apollo"), pair("team", "x")]
        ));
        assert!(!matches(&o, &[pair("project", "apollo")]));
        // Only string values match a filter's strings.
        assert!(!matches(&o, &[pair("n", "3")]));
    }
}
