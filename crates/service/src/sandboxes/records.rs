//! Run records: a code run's document is written to the store every time it changes, in the
//! order of the changes, by one writer task; a final document is written with its artifacts,
//! retried for a while, and the run only becomes final for its readers once it is stored
//! (read-your-writes).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use runcell_sandbox::model::{CodeRun, RunStatus};
use runcell_sandbox::{Finished, RunObserver};
use runcell_store::{ArtifactRow, Store};

use super::parse_rfc3339_secs;

/// A record change to write, in order.
pub(super) enum Write {
    Run {
        tenant: String,
        doc: Box<CodeRun>,
        /// Told once the change is written (for final documents: the answer waits for it).
        done: Option<oneshot::Sender<()>>,
    },
}

/// Writes run records in the order their changes happened.
pub(super) struct Observer {
    pub(super) tenant: String,
    pub(super) tx: mpsc::UnboundedSender<Write>,
}

impl RunObserver for Observer {
    fn changed(&self, run: &CodeRun) {
        let _ = self.tx.send(Write::Run {
            tenant: self.tenant.clone(),
            doc: Box::new(run.clone()),
            done: None,
        });
    }

    fn finished(&self, run: &CodeRun) -> Finished {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Write::Run {
            tenant: self.tenant.clone(),
            doc: Box::new(run.clone()),
            done: Some(tx),
        });
        // Resolves once the writer has recorded the run and its artifacts (or given up on a
        // broken store, which it logs); an answer that reports the end waits for this.
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

fn status_of(s: RunStatus) -> runcell_store::RunStatus {
    match s {
        RunStatus::Queued => runcell_store::RunStatus::Queued,
        RunStatus::Running => runcell_store::RunStatus::Running,
        RunStatus::Succeeded => runcell_store::RunStatus::Succeeded,
        RunStatus::Failed => runcell_store::RunStatus::Failed,
        RunStatus::Cancelled => runcell_store::RunStatus::Cancelled,
    }
}

/// Applies record changes in order; a final run's artifacts are recorded with it.
pub(super) async fn writer(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Write>) {
    while let Some(w) = rx.recv().await {
        match w {
            Write::Run { tenant, doc, done } => {
                // A final record is retried for a while: a client is waiting for it.
                let attempts = if done.is_some() { 5 } else { 1 };
                let mut artifacts_written = false;
                for attempt in 1..=attempts {
                    match write_run(&*store, &tenant, &doc, &mut artifacts_written).await {
                        Ok(()) => break,
                        Err(e) if attempt < attempts => {
                            tracing::warn!(run = %doc.id, "recording a run (attempt {attempt}): {e}");
                            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                        }
                        Err(e) => tracing::error!(run = %doc.id, "recording a run: {e}"),
                    }
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        }
    }
}

/// Records a run's document, and a final run's artifacts before it.
async fn write_run(
    store: &dyn Store,
    tenant: &str,
    doc: &CodeRun,
    artifacts_written: &mut bool,
) -> Result<(), String> {
    if doc.status.is_final() && !doc.execution.artifacts.is_empty() && !*artifacts_written {
        let rows: Vec<ArtifactRow> = doc
            .execution
            .artifacts
            .iter()
            .map(|a| ArtifactRow {
                id: a.id.clone(),
                tenant: tenant.to_string(),
                sandbox_id: doc.sandbox_id.clone(),
                run_id: doc.id.clone(),
                context_id: a.context_id.clone(),
                name: a.name.clone(),
                mime_type: a.mime_type.clone(),
                size_bytes: a.size_bytes as i64,
                sha256: a.sha256.clone(),
                execution_count: a.execution_count.map(|c| c as i64),
                metadata: Value::Object(a.metadata.clone()).to_string(),
                created_at: parse_rfc3339_secs(&a.created_at).unwrap_or(0) * 1000,
                expires_at: parse_rfc3339_secs(&a.expires_at).unwrap_or(0) * 1000,
            })
            .collect();
        store
            .insert_artifacts(&rows)
            .await
            .map_err(|e| format!("artifacts: {e}"))?;
        *artifacts_written = true;
    }
    let text = serde_json::to_string(doc).map_err(|e| format!("serializing: {e}"))?;
    store
        .update_code_run(&doc.id, status_of(doc.status), &text)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
