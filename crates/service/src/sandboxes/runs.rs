//! Code runs in a sandbox's contexts (queued, running, final; recorded as they change),
//! contexts themselves, and artifacts.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use runcell_engine::model::{now_ms, unix_ms};
use runcell_sandbox::model::{Artifact, CodeRun, RunStatus};
use runcell_sandbox::{Context, Run, RunObserver, ids};
use runcell_store::CodeRunRow;

use super::{Live, Observer, Sandboxes, ms_rfc3339, parse_env};
use crate::page::PageRequest;
use crate::{Error, Kind, Result, Service};

/// `POST /v1/sandboxes/{id}/code/runs`.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CodeRunRequest {
    pub code: Option<String>,
    /// A context of the sandbox; without it, the sandbox's default context of `language`.
    pub context_id: Option<String>,
    /// Default `python`.
    pub language: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub timeout_secs: Option<Value>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub env: Option<Value>,
}

/// The runs of a sandbox.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunList {
    pub runs: Vec<CodeRun>,
    pub next_cursor: Option<String>,
}

/// An artifact's content, for a download through its signed link.
pub struct ArtifactContent {
    /// A file name safe for a header (letters, digits, `._-`).
    pub file_name: String,
    pub mime_type: String,
    pub bytes: Vec<u8>,
}

impl Sandboxes {
    /// A new run of `ctx` in `live`, recorded as queued, then executed in the background.
    pub async fn start_run(
        &self,
        live: &Arc<Live>,
        ctx: &Arc<runcell_sandbox::Context>,
        code: String,
        env: Vec<(String, String)>,
        timeout_secs: u64,
    ) -> Result<Arc<Run>, Error> {
        let unfinished = live.live_runs().iter().filter(|r| !r.is_final()).count();
        if unfinished >= self.cfg.max_queued_runs {
            return Err(Error::new(
                Kind::LimitExceeded,
                "TOO_MANY_RUNS",
                format!(
                    "this sandbox has {unfinished} unfinished code runs, its maximum; wait for \
                     some to finish"
                ),
            ));
        }
        let now = SystemTime::now();
        let doc = runcell_sandbox::new_doc(
            ids::run_id(),
            live.id(),
            &ctx.id,
            &ctx.language,
            timeout_secs,
            now,
            now + Duration::from_millis(self.retention_ms as u64),
        );
        self.store
            .insert_code_run(&CodeRunRow {
                id: doc.id.clone(),
                tenant: live.tenant.clone(),
                sandbox_id: live.id().to_string(),
                context_id: ctx.id.clone(),
                status: runcell_store::RunStatus::Queued,
                doc: serde_json::to_string(&doc).map_err(Error::internal)?,
                created_at: unix_ms(now),
                seq: 0,
            })
            .await?;
        let observer: Arc<dyn RunObserver> = Arc::new(Observer {
            tenant: live.tenant.clone(),
            tx: self.writes.clone(),
        });
        let run = Run::new(doc, self.scfg.output, Some(observer));
        live.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run.id().to_string(), Arc::clone(&run));
        let (ctx, r, l) = (Arc::clone(ctx), Arc::clone(&run), Arc::clone(live));
        tokio::spawn(async move {
            ctx.execute(Arc::clone(&r), code, env, Duration::from_secs(timeout_secs))
                .await;
            metrics::counter!("runcell_code_runs_total", "status" => r.status().as_str())
                .increment(1);
            // The record is written by now (finish waits for it); keep the live run a little
            // for readers of its events.
            tokio::time::sleep(Duration::from_secs(60)).await;
            l.runs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(r.id());
        });
        Ok(run)
    }

    /// A run of `live` (live or recorded), as the API shows it.
    pub async fn get_run(
        &self,
        live: &Live,
        run_id: &str,
        base: &str,
    ) -> Result<Option<CodeRun>, Error> {
        let doc = match live.run(run_id) {
            Some(r) => Some(r.snapshot()),
            None => match self
                .store
                .get_code_run(&live.tenant, live.id(), run_id)
                .await?
            {
                Some(row) => Some(serde_json::from_str(&row.doc).map_err(Error::internal)?),
                None => None,
            },
        };
        Ok(doc.map(|d| self.with_links(d, base)))
    }

    /// The sandbox's runs, newest first.
    pub async fn list_runs(
        &self,
        live: &Live,
        before_seq: Option<i64>,
        limit: u32,
        base: &str,
    ) -> Result<(Vec<CodeRun>, Option<String>), Error> {
        let rows = self
            .store
            .list_code_runs(&live.tenant, live.id(), before_seq, limit + 1)
            .await?;
        let (rows, next) = crate::page::split(rows, limit, |r| r.seq);
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let doc = match live.run(&row.id) {
                Some(r) => r.snapshot(),
                None => serde_json::from_str(&row.doc).map_err(Error::internal)?,
            };
            out.push(self.with_links(doc, base));
        }
        Ok((out, next))
    }
}

fn context_not_found(id: &str) -> Error {
    Error::new(
        Kind::NotFound,
        "CONTEXT_NOT_FOUND",
        format!("context {id} not found in this sandbox"),
    )
}

fn run_not_found(id: &str) -> Error {
    Error::new(
        Kind::NotFound,
        "RUN_NOT_FOUND",
        format!("code run {id} not found in this sandbox"),
    )
}

fn already_finished(id: &str) -> Error {
    Error::conflict(
        "ALREADY_FINISHED",
        format!("code run {id} has already finished"),
    )
}

fn artifact_not_found(detail: &str) -> Error {
    Error::new(Kind::NotFound, "ARTIFACT_NOT_FOUND", detail)
}

fn check_code(code: Option<String>) -> Result<String> {
    match code {
        Some(c) if !c.trim().is_empty() => {
            if c.contains('\0') {
                return Err(Error::invalid(
                    "INVALID_REQUEST",
                    "code must not contain NUL bytes",
                ));
            }
            Ok(c)
        }
        _ => Err(Error::invalid(
            "INVALID_REQUEST",
            "code is required and must not be empty",
        )),
    }
}

impl Service {
    /// The context a run goes to: `context_id`'s (whose language must match `language` if
    /// both are given), or the sandbox's default context of `language` (else
    /// `default_language`), started if need be.
    async fn context_for(
        &self,
        live: &Live,
        context_id: Option<&str>,
        language: Option<&str>,
        default_language: &str,
    ) -> Result<Arc<Context>> {
        match context_id.filter(|s| !s.is_empty()) {
            Some(id) => {
                let ctx = live
                    .sandbox
                    .context(id)
                    .ok_or_else(|| context_not_found(id))?;
                if let Some(lang) = language.filter(|l| !l.trim().is_empty())
                    && self.canonical_language(lang) != ctx.language
                {
                    return Err(Error::invalid(
                        "INVALID_REQUEST",
                        format!("context {id} is a {} context, not {lang}", ctx.language),
                    ));
                }
                Ok(ctx)
            }
            None => {
                let lang = language
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .unwrap_or(default_language);
                Ok(live.sandbox.default_context(lang).await?)
            }
        }
    }

    /// A language's id for an id or alias (as given when it names none).
    fn canonical_language(&self, lang: &str) -> String {
        self.engine
            .registry()
            .resolve(lang.trim())
            .map(|l| l.id.clone())
            .unwrap_or_else(|| lang.trim().to_string())
    }

    fn run_timeout(&self, v: Option<&Value>) -> Result<u64> {
        let c = &self.sandboxes.cfg;
        match v {
            None | Some(Value::Null) => Ok(c.default_run_timeout_secs),
            Some(v) => match v.as_u64() {
                Some(n) if (1..=c.max_run_timeout_secs).contains(&n) => Ok(n),
                _ => Err(Error::invalid(
                    "INVALID_REQUEST",
                    format!(
                        "timeout_secs must be a whole number from 1 to {}, got {v}",
                        c.max_run_timeout_secs
                    ),
                )),
            },
        }
    }

    /// Starts a code run (queued, then run in the background in its context's turn).
    pub async fn create_run(&self, live: &Arc<Live>, req: CodeRunRequest) -> Result<Arc<Run>> {
        let code = check_code(req.code)?;
        let timeout = self.run_timeout(req.timeout_secs.as_ref())?;
        let env = parse_env(req.env.as_ref(), "env")?;
        let ctx = self
            .context_for(
                live,
                req.context_id.as_deref(),
                req.language.as_deref(),
                runcell_sandbox::DEFAULT_CONTEXT_LANGUAGE,
            )
            .await?;
        self.sandboxes
            .start_run(live, &ctx, code, env, timeout)
            .await
    }

    /// Starts a run of `code` as execd's `POST /code` does: in the context named, else the
    /// default context of `language`, else (no language) a shell run in the bash context;
    /// with the server's default run timeout.
    pub async fn run_code(
        &self,
        live: &Arc<Live>,
        code: String,
        context_id: Option<&str>,
        language: Option<&str>,
    ) -> Result<Arc<Run>> {
        if code.contains('\0') {
            return Err(Error::invalid(
                "INVALID_REQUEST_BODY",
                "code must not contain NUL bytes",
            ));
        }
        let ctx = self.context_for(live, context_id, language, "bash").await?;
        let timeout = self.sandboxes.cfg.default_run_timeout_secs;
        self.sandboxes
            .start_run(live, &ctx, code, Vec::new(), timeout)
            .await
    }

    /// A run's document now, with signed artifact links under `base`.
    pub fn run_document(&self, run: &Run, base: &str) -> CodeRun {
        self.sandboxes.with_links(run.snapshot(), base)
    }

    /// A run of the sandbox (live or recorded).
    pub async fn code_run(&self, live: &Live, run_id: &str, base: &str) -> Result<CodeRun> {
        self.sandboxes
            .get_run(live, run_id, base)
            .await?
            .ok_or_else(|| run_not_found(run_id))
    }

    /// The sandbox's runs, newest first.
    pub async fn list_runs(&self, live: &Live, page: &PageRequest, base: &str) -> Result<RunList> {
        let (limit, before) = page.check()?;
        let (runs, next_cursor) = self.sandboxes.list_runs(live, before, limit, base).await?;
        Ok(RunList { runs, next_cursor })
    }

    /// Cancels a run: a queued one never starts; a running one is interrupted (the context
    /// stays usable). Returns once it has stopped.
    pub async fn cancel_run(&self, live: &Live, run_id: &str, base: &str) -> Result<CodeRun> {
        let Some(run) = live.run(run_id) else {
            return match self.sandboxes.get_run(live, run_id, base).await? {
                Some(_) => Err(already_finished(run_id)),
                None => Err(run_not_found(run_id)),
            };
        };
        if !run.cancel() {
            return Err(already_finished(run_id));
        }
        // The interrupt, or the kill after the grace period, ends it promptly.
        let _ = tokio::time::timeout(Duration::from_secs(10), run.wait()).await;
        Ok(self.run_document(&run, base))
    }

    /// Interrupts what `target` names: a run, the running runs of a context (or the context's
    /// kernel when it runs none of ours), or a command.
    pub fn interrupt(&self, live: &Live, target: &str) -> Result<()> {
        if let Some(run) = live.run(target) {
            run.cancel();
            return Ok(());
        }
        if let Some(ctx) = live.sandbox.context(target) {
            let running: Vec<_> = live
                .live_runs()
                .into_iter()
                .filter(|r| r.status() == RunStatus::Running && r.snapshot().context_id == ctx.id)
                .collect();
            if running.is_empty() {
                ctx.interrupt();
            }
            for r in running {
                r.cancel();
            }
            return Ok(());
        }
        if let Some(cmd) = live.sandbox.command(target) {
            cmd.interrupt();
            return Ok(());
        }
        Err(Error::new(
            Kind::NotFound,
            "CONTEXT_NOT_FOUND",
            format!("no run, context or command {target} in this sandbox"),
        ))
    }

    // --- contexts --------------------------------------------------------------------------

    /// Starts a code context (a kernel) of `language` (default Python).
    pub async fn create_context(
        &self,
        live: &Live,
        language: Option<&str>,
    ) -> Result<Arc<Context>> {
        let language = language.unwrap_or(runcell_sandbox::DEFAULT_CONTEXT_LANGUAGE);
        Ok(live.sandbox.create_context(language).await?)
    }

    /// The sandbox's contexts (of one language, if given).
    pub fn contexts(&self, live: &Live, language: Option<&str>) -> Vec<Arc<Context>> {
        let want = language
            .filter(|l| !l.trim().is_empty())
            .map(|l| self.canonical_language(l));
        live.sandbox
            .contexts()
            .into_iter()
            .filter(|c| want.as_deref().is_none_or(|w| w == c.language))
            .collect()
    }

    pub fn context(&self, live: &Live, id: &str) -> Result<Arc<Context>> {
        live.sandbox
            .context(id)
            .ok_or_else(|| context_not_found(id))
    }

    /// Deletes a context (its kernel is killed).
    pub fn delete_context(&self, live: &Live, id: &str) -> Result<()> {
        if live.sandbox.delete_context(id) {
            Ok(())
        } else {
            Err(context_not_found(id))
        }
    }

    /// Deletes every context of a language.
    pub fn delete_contexts(&self, live: &Live, language: &str) {
        for c in self.contexts(live, Some(language)) {
            live.sandbox.delete_context(&c.id);
        }
    }

    // --- artifacts -------------------------------------------------------------------------

    /// The sandbox's artifacts that have not expired (of one run, if given), with fresh
    /// signed links under `base`.
    pub async fn list_artifacts(
        &self,
        live: &Live,
        run_id: Option<&str>,
        base: &str,
    ) -> Result<Vec<Artifact>> {
        let now = now_ms();
        let rows = self
            .store
            .list_artifacts(&live.tenant, live.id(), run_id)
            .await?;
        Ok(rows
            .into_iter()
            .filter(|r| r.expires_at > now)
            .map(|r| {
                self.sandboxes.artifact_links(
                    Artifact {
                        id: r.id,
                        context_id: r.context_id,
                        mime_type: r.mime_type,
                        name: r.name,
                        size_bytes: r.size_bytes.max(0) as u64,
                        sha256: r.sha256,
                        created_at: ms_rfc3339(r.created_at),
                        execution_count: r.execution_count.map(|c| c.max(0) as u64),
                        expires_at: ms_rfc3339(r.expires_at),
                        preview_url: String::new(),
                        download_url: String::new(),
                        metadata: serde_json::from_str(&r.metadata).unwrap_or_default(),
                    },
                    base,
                )
            })
            .collect())
    }

    /// An artifact's content through a signed link (`expires` and `signature` from its
    /// query); no other credentials.
    pub async fn artifact_content(
        &self,
        id: &str,
        expires: Option<&str>,
        signature: Option<&str>,
    ) -> Result<ArtifactContent> {
        let (Some(expires), Some(sig)) = (expires, signature) else {
            return Err(Error::new(
                Kind::Forbidden,
                "INVALID_SIGNATURE",
                "this artifact link is incomplete: it needs `expires` and `signature`",
            ));
        };
        let expires: i64 = expires.parse().map_err(|_| {
            Error::new(
                Kind::Forbidden,
                "INVALID_SIGNATURE",
                "this artifact link is not valid (bad expiry)",
            )
        })?;
        if !ids::is_base32_id(id, "art_") {
            return Err(artifact_not_found("artifact not found"));
        }
        self.sandboxes.verify(id, expires, sig)?;
        let row = self
            .store
            .get_artifact_by_id(id)
            .await?
            .filter(|r| r.expires_at > now_ms())
            .ok_or_else(|| artifact_not_found("artifact not found (it may have expired)"))?;
        let bytes = tokio::fs::read(self.sandboxes.blob(id))
            .await
            .map_err(|_| artifact_not_found("the artifact's content is gone (it expired)"))?;
        let file_name = row.name.rsplit('/').next().unwrap_or("artifact").replace(
            |c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c)),
            "_",
        );
        Ok(ArtifactContent {
            file_name,
            mime_type: row.mime_type,
            bytes,
        })
    }
}
