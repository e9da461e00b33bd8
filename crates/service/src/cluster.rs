//! Nodes sharing one database (docs/cluster.md).
//!
//! Every node has an id kept in its data directory (stable across its restarts) and stamps the
//! executions it claims or runs, and the sandboxes it creates, with it. Its heartbeat, every
//! third of the lease, records where it is and how loaded, and renews the leases of its running
//! executions. The same loop recovers what silent nodes left: running executions whose lease
//! ran out fail with a reason (as after a restart: their effects are unknown, so they are not
//! re-run), and sandboxes of nodes silent for a lease end (their processes died with their
//! node). It also brings the scheduler's view of the queue up to date with the database, since
//! other nodes queue work too; on PostgreSQL, `LISTEN`/`NOTIFY` does that at once.
//!
//! A node that cannot reach the database says so in `/health` and claims nothing (every claim
//! goes through the database); its running work ends as it ends, and what it cannot record is
//! failed by the others once its leases run out.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::Serialize;

use runcell_engine::model::now_ms;
use runcell_store::{NodeBeat, NodeRow, Owner};

use crate::tenants::hash_key;
use crate::{Error, Kind, Result, Service, StartError};

/// The failure reason of an execution whose node went silent.
pub const NODE_LOST: &str = "the node running this execution stopped (no heartbeat within its \
     lease); it was not re-run";
/// The end reason of a sandbox whose node went silent.
pub const SANDBOX_NODE_LOST: &str = "terminated: the node this sandbox lived on stopped (no heartbeat within its lease), and \
     its processes with it";

/// This node.
pub(crate) struct Node {
    pub(crate) id: String,
    /// Where other nodes reach it: configured, or the address it listens on once bound.
    address: std::sync::Mutex<String>,
    advertised: bool,
    pub(crate) started_at: i64,
    pub(crate) lease_ms: i64,
    /// When the last heartbeat reached the database (0: never).
    last_beat: AtomicI64,
    /// When the database last failed a heartbeat (0: it has not since the last success).
    failing_since: AtomicI64,
}

impl Node {
    /// The node of `data_dir`: its id is read from `node-id` there, made on first start.
    pub(crate) fn of(config: &crate::Config) -> Result<Node, StartError> {
        let path = config.data_dir.join("node-id");
        let id = match std::fs::read_to_string(&path) {
            Ok(s) if valid_id(s.trim()) => s.trim().to_string(),
            _ => {
                let id = format!("node-{}", uuid::Uuid::new_v4().simple());
                crate::write_private(&path, id.as_bytes()).map_err(|e| StartError::Io {
                    what: format!("write {}", path.display()),
                    source: e,
                })?;
                id
            }
        };
        let address = if config.cluster.advertise.is_empty() {
            // A port of 0 is chosen when the server binds (`listening_on`); unknown until then.
            if config.listen.port() == 0 {
                String::new()
            } else {
                format!("http://{}", config.listen)
            }
        } else {
            config.cluster.advertise.trim_end_matches('/').to_string()
        };
        Ok(Node {
            id,
            address: std::sync::Mutex::new(address),
            advertised: !config.cluster.advertise.is_empty(),
            started_at: now_ms(),
            lease_ms: config.cluster.lease_secs as i64 * 1000,
            last_beat: AtomicI64::new(0),
            failing_since: AtomicI64::new(0),
        })
    }

    fn address(&self) -> String {
        self.address
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn owner(&self) -> Owner {
        Owner {
            node: self.id.clone(),
            lease_ms: self.lease_ms,
        }
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A node as `GET /cluster` shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeObject {
    pub id: String,
    pub address: String,
    pub started_at: String,
    pub heartbeat_at: String,
    /// Whether it has heart-beat within its lease.
    pub alive: bool,
    /// This node (the one that answered).
    pub this: bool,
    pub running: u64,
    pub queued: u64,
    pub sandboxes: u64,
}

/// `GET /cluster`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterObject {
    /// `postgresql` or `sqlite`.
    pub database: &'static str,
    pub lease_secs: u64,
    pub nodes: Vec<NodeObject>,
}

/// This node's link to the database, for `/health`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatabaseHealth {
    /// Whether the last heartbeat reached the database.
    pub ok: bool,
    /// When it last did.
    pub last_heartbeat_at: Option<String>,
    /// What a failing node says: it claims no work until the database answers again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Service {
    /// Records this node's heartbeat, then recovers what silent nodes left and brings the
    /// scheduler's queue up to date with the database.
    pub(crate) async fn beat(self: &Arc<Self>) {
        let now = now_ms();
        if !self.record_heartbeat(now).await {
            return;
        }
        self.recover_silent_nodes(now).await;
    }

    /// Writes this node's heartbeat (address, load) and renews its leases; false when the
    /// database did not take it (which `/health` then says).
    async fn record_heartbeat(&self, now: i64) -> bool {
        let beat = NodeBeat {
            address: self.node.address(),
            started_at: self.node.started_at,
            running: self.jobs.running() as u64,
            queued: self.jobs.queued(),
            sandboxes: self.sandboxes.count() as u64,
        };
        match self.store.heartbeat(now, &beat).await {
            Ok(_) => {
                self.node.last_beat.store(now, Ordering::SeqCst);
                if self.node.failing_since.swap(0, Ordering::SeqCst) != 0 {
                    tracing::info!("the database answers again; claiming work again");
                }
            }
            Err(e) => {
                if self.node.failing_since.load(Ordering::SeqCst) == 0 {
                    self.node.failing_since.store(now, Ordering::SeqCst);
                    tracing::error!(
                        "heartbeat: the database does not answer ({e}); this node claims no \
                         work until it does"
                    );
                }
                return false;
            }
        }
        true
    }

    /// Fails the running work of nodes whose leases ran out, ends their sandboxes, shares the
    /// rate limits between the live nodes and recounts the queue.
    async fn recover_silent_nodes(self: &Arc<Self>, now: i64) {
        let retention = self.config.result_retention_secs as i64 * 1000;
        match self
            .store
            .fail_expired_leases(NODE_LOST, now, now + retention)
            .await
        {
            Ok(rows) => {
                for row in rows {
                    tracing::warn!(execution = %row.id, "failed: its node stopped");
                    if let Some(url) = &row.callback_url {
                        self.enqueue_webhook(&row.tenant, &row.id, url).await;
                    }
                }
            }
            Err(e) => tracing::warn!("failing executions of silent nodes: {e}"),
        }
        match self
            .store
            .end_sandboxes_of_silent_nodes(now - self.node.lease_ms, now, SANDBOX_NODE_LOST)
            .await
        {
            Ok(ids) if !ids.is_empty() => {
                tracing::warn!("{} sandbox(es) of silent nodes ended", ids.len());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("ending sandboxes of silent nodes: {e}"),
        }
        match self.store.list_nodes().await {
            Ok(nodes) => {
                let live = nodes
                    .iter()
                    .filter(|n| n.heartbeat_at >= now - self.node.lease_ms)
                    .count();
                self.share_rate_between(u32::try_from(live).unwrap_or(u32::MAX));
            }
            Err(e) => tracing::warn!("reading the nodes: {e}"),
        }
        self.resync_queue().await;
    }

    /// Makes the scheduler's count of each tenant's queued executions the database's.
    pub(crate) async fn resync_queue(&self) {
        match self.store.count_pending_by_tenant().await {
            Ok(counts) => {
                let counts: Vec<(String, usize)> = counts
                    .into_iter()
                    .map(|(t, n)| (t, usize::try_from(n).unwrap_or(usize::MAX)))
                    .collect();
                self.jobs.fair.sync_async(&counts);
            }
            Err(e) => tracing::warn!("reading the queue: {e}"),
        }
    }

    /// Whether the database answered this node's last heartbeat.
    pub fn database_health(&self) -> DatabaseHealth {
        let last = self.node.last_beat.load(Ordering::SeqCst);
        let failing = self.node.failing_since.load(Ordering::SeqCst);
        DatabaseHealth {
            ok: failing == 0,
            last_heartbeat_at: (last > 0).then(|| crate::sandboxes::ms_rfc3339(last)),
            detail: (failing != 0).then(|| {
                format!(
                    "the database has not answered since {}; this node claims no queued work \
                     until it does",
                    crate::sandboxes::ms_rfc3339(failing)
                )
            }),
        }
    }

    /// The nodes on this database, for an operator's key.
    pub async fn cluster(&self, key: &str) -> Result<ClusterObject> {
        let presented = hash_key(key);
        let admin = self.config.cluster.admin_keys.iter().any(|k| {
            crate::sandboxes::constant_time_eq(hash_key(k).as_bytes(), presented.as_bytes())
        });
        if !admin {
            return Err(Error::new(
                Kind::Forbidden,
                "ADMIN_KEY_REQUIRED",
                "GET /cluster needs one of the operator keys (cluster.admin_keys, \
                 RUNCELL_ADMIN_KEYS)",
            ));
        }
        let now = now_ms();
        let rows: Vec<NodeRow> = self.store.list_nodes().await?;
        Ok(ClusterObject {
            database: if self.config.database_url.is_some() {
                "postgresql"
            } else {
                "sqlite"
            },
            lease_secs: self.config.cluster.lease_secs,
            nodes: rows
                .into_iter()
                .map(|n| NodeObject {
                    alive: n.heartbeat_at >= now - self.node.lease_ms,
                    this: n.id == self.node.id,
                    started_at: crate::sandboxes::ms_rfc3339(n.started_at),
                    heartbeat_at: crate::sandboxes::ms_rfc3339(n.heartbeat_at),
                    id: n.id,
                    address: n.address,
                    running: n.running,
                    queued: n.queued,
                    sandboxes: n.sandboxes,
                })
                .collect(),
        })
    }

    /// Where sandbox `id` lives when that is another node: its advertised address (requests
    /// for it are forwarded there). `None` when it lives here, is unknown or has ended.
    pub async fn sandbox_home(&self, id: &str) -> Result<Option<String>> {
        if !runcell_sandbox::ids::is_base32_id(id, "sb_") || self.sandboxes.is_live(id) {
            return Ok(None);
        }
        Ok(self.elsewhere(self.store.sandbox_node(id).await?))
    }

    /// Where execution `id` runs when that is another node: its advertised address (a cancel
    /// is forwarded there, where its process is). `None` when it runs here or is not running.
    pub async fn execution_home(&self, id: &str) -> Result<Option<String>> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Ok(None);
        }
        Ok(self.elsewhere(self.store.execution_node(id).await?))
    }

    /// Where artifact `id`'s content is when that is another node (the one whose sandbox
    /// produced it): its advertised address. `None` when it is here or unknown.
    pub async fn artifact_home(&self, id: &str) -> Result<Option<String>> {
        if !runcell_sandbox::ids::is_base32_id(id, "art_") {
            return Ok(None);
        }
        Ok(self.elsewhere(self.store.artifact_node(id).await?))
    }

    /// The address of the node `found` names, when that is another node that advertised one.
    fn elsewhere(&self, found: Option<(String, String)>) -> Option<String> {
        found
            .filter(|(node, address)| *node != self.node.id && !address.is_empty())
            .map(|(_, address)| address)
    }

    /// The address the server listens on, once bound: what other nodes reach it by unless
    /// `cluster.advertise` says otherwise (a port of 0 in the configuration is known only now).
    pub async fn listening_on(&self, addr: std::net::SocketAddr) {
        if !self.node.advertised {
            *self.node.address.lock().unwrap_or_else(|p| p.into_inner()) = format!("http://{addr}");
            // Known from now on: requests forwarded here need not wait for the next beat.
            self.record_heartbeat(now_ms()).await;
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node.id
    }
}

/// The heartbeat loop, and on PostgreSQL the listener of queued work.
pub(crate) async fn run(svc: Arc<Service>, listener: Option<runcell_store::PgStore>) {
    if let Some(pg) = listener {
        match pg.listen_queue().await {
            Ok(mut rx) => {
                let s = Arc::clone(&svc);
                tokio::spawn(async move {
                    while rx.recv().await.is_some() {
                        // Several at once are one look at the queue.
                        while rx.try_recv().is_ok() {}
                        s.resync_queue().await;
                    }
                });
            }
            Err(e) => tracing::warn!(
                "listening for queued work: {e}; other nodes' work is picked up by the \
                 heartbeat's look at the queue"
            ),
        }
    }
    let period = Duration::from_millis((svc.node.lease_ms / 3).max(500) as u64);
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        svc.beat().await;
    }
}
