//! A code run as it happens: its document (the `CodeRun`), the events it streams, its
//! cancellation, and a hook that sees every state change (for persistence).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use runcell_engine::model::rfc3339;
use runcell_kernel::Event;
use tokio::sync::{Notify, mpsc, watch};

use crate::model::strip_ansi;
use crate::model::{Artifact, CodeRun, Execution, ResultItem, RunError, RunEvent, RunStatus};

/// The future of [`RunObserver::finished`].
pub type Finished = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Sees a run's document whenever it changes; used to store runs durably.
pub trait RunObserver: Send + Sync {
    /// A change before the end (running, outputs, a cancel request). Must not block.
    fn changed(&self, run: &CodeRun);
    /// The final document, before anyone else sees it: the run becomes final for readers
    /// ([`Run::snapshot`]), waiters ([`Run::wait`]) and subscribers only once the returned
    /// future resolves, so an answer that reports the end comes after the end is durable.
    fn finished(&self, run: &CodeRun) -> Finished;
}

/// Caps of what one run keeps.
#[derive(Debug, Clone, Copy)]
pub struct OutputLimits {
    /// stdout and stderr text together.
    pub max_log_bytes: usize,
    /// Display results together.
    pub max_result_bytes: usize,
}

const TRUNCATED: &str = "\n[runcell: output truncated: this run wrote more than the limit]\n";

struct Inner {
    doc: CodeRun,
    history: Vec<RunEvent>,
    subscribers: Vec<mpsc::UnboundedSender<RunEvent>>,
    log_bytes: usize,
    result_bytes: usize,
    logs_truncated: bool,
    results_truncated: bool,
    started: Option<Instant>,
}

/// A code run.
pub struct Run {
    id: String,
    inner: Mutex<Inner>,
    cancel_requested: AtomicBool,
    /// Set when [`Run::finish`] starts: later changes are not reported.
    finishing: AtomicBool,
    cancel_notify: Notify,
    done: watch::Sender<bool>,
    limits: OutputLimits,
    observer: Option<Arc<dyn RunObserver>>,
}

impl Run {
    /// A new run in status `queued`.
    pub fn new(
        doc: CodeRun,
        limits: OutputLimits,
        observer: Option<Arc<dyn RunObserver>>,
    ) -> Arc<Run> {
        let (done, _) = watch::channel(false);
        Arc::new(Run {
            id: doc.id.clone(),
            inner: Mutex::new(Inner {
                doc,
                history: Vec::new(),
                subscribers: Vec::new(),
                log_bytes: 0,
                result_bytes: 0,
                logs_truncated: false,
                results_truncated: false,
                started: None,
            }),
            cancel_requested: AtomicBool::new(false),
            finishing: AtomicBool::new(false),
            cancel_notify: Notify::new(),
            done,
            limits,
            observer,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The run's document now.
    pub fn snapshot(&self) -> CodeRun {
        self.lock().doc.clone()
    }

    pub fn status(&self) -> RunStatus {
        self.lock().doc.status
    }

    /// The events so far and a receiver of those to come (closed when the run ends).
    pub fn subscribe(&self) -> (Vec<RunEvent>, mpsc::UnboundedReceiver<RunEvent>) {
        let mut g = self.lock();
        let (tx, rx) = mpsc::unbounded_channel();
        if !g.doc.status.is_final() {
            g.subscribers.push(tx);
        }
        (g.history.clone(), rx)
    }

    fn emit(g: &mut Inner, ev: RunEvent) {
        g.subscribers.retain(|s| s.send(ev.clone()).is_ok());
        g.history.push(ev);
    }

    fn notify(&self, doc: &CodeRun) {
        // Once the final document is on its way to the observer, nothing may overtake it.
        if self.finishing.load(Ordering::SeqCst) {
            return;
        }
        if let Some(o) = &self.observer {
            o.changed(doc);
        }
    }

    /// Asks the run to stop: a queued run will not start, a running one is interrupted.
    /// False if the run had already ended.
    pub fn cancel(&self) -> bool {
        let doc = {
            let mut g = self.lock();
            if g.doc.status.is_final() || self.finishing.load(Ordering::SeqCst) {
                return false;
            }
            if g.doc.cancel_requested_at.is_none() {
                g.doc.cancel_requested_at = Some(rfc3339(SystemTime::now()));
            }
            g.doc.clone()
        };
        self.cancel_requested.store(true, Ordering::SeqCst);
        self.cancel_notify.notify_waiters();
        self.notify(&doc);
        true
    }

    pub fn is_cancel_requested(&self) -> bool {
        self.cancel_requested.load(Ordering::SeqCst)
    }

    /// Resolves once cancellation is requested.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.cancel_notify.notified();
            if self.is_cancel_requested() {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once the run has ended.
    pub async fn wait(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    pub fn is_final(&self) -> bool {
        self.status().is_final()
    }

    pub(crate) fn set_running(&self) {
        let doc = {
            let mut g = self.lock();
            g.doc.status = RunStatus::Running;
            g.doc.started_at = Some(rfc3339(SystemTime::now()));
            g.started = Some(Instant::now());
            Self::emit(&mut g, RunEvent::Status(RunStatus::Running));
            g.doc.clone()
        };
        self.notify(&doc);
    }

    pub(crate) fn execution_count(&self) -> Option<u64> {
        self.lock().doc.execution.execution_count
    }

    /// Takes one output of the kernel.
    pub(crate) fn on_kernel_event(&self, ev: Event) {
        let mut g = self.lock();
        let g = &mut *g;
        match ev {
            Event::Stream { stdout, text } => {
                if g.logs_truncated {
                    return;
                }
                let room = self.limits.max_log_bytes.saturating_sub(g.log_bytes);
                let (text, cut) = if text.len() > room {
                    let mut end = room;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    (format!("{}{TRUNCATED}", &text[..end]), true)
                } else {
                    (text, false)
                };
                g.logs_truncated = cut;
                g.log_bytes += text.len();
                let logs = &mut g.doc.execution.logs;
                if stdout {
                    logs.stdout.push(text.clone());
                    Self::emit(g, RunEvent::Stdout(text));
                } else {
                    logs.stderr.push(text.clone());
                    Self::emit(g, RunEvent::Stderr(text));
                }
            }
            Event::Display { data, main } => {
                let item = ResultItem::from_bundle(&data, main);
                let size = item.size();
                if g.results_truncated || g.result_bytes + size > self.limits.max_result_bytes {
                    if !g.results_truncated {
                        g.results_truncated = true;
                        let note = format!(
                            "[runcell: a result of {size} bytes was dropped: this run's results \
                             exceed {} bytes]\n",
                            self.limits.max_result_bytes
                        );
                        g.doc.execution.logs.stderr.push(note.clone());
                        Self::emit(g, RunEvent::Stderr(note));
                    }
                    return;
                }
                g.result_bytes += size;
                g.doc.execution.results.push(item.clone());
                Self::emit(g, RunEvent::Result(Box::new(item)));
            }
            Event::ExecutionCount(n) => {
                g.doc.execution.execution_count = Some(n);
                Self::emit(g, RunEvent::ExecutionCount(n));
            }
            Event::Error {
                ename,
                evalue,
                traceback,
            } => {
                let traceback: Vec<String> = traceback.iter().map(|t| strip_ansi(t)).collect();
                g.doc.execution.error = Some(RunError {
                    name: ename.clone(),
                    value: strip_ansi(&evalue),
                    traceback: traceback.join("\n"),
                });
                Self::emit(
                    g,
                    RunEvent::Error {
                        ename,
                        evalue: strip_ansi(&evalue),
                        traceback,
                    },
                );
            }
        }
    }

    /// Records an error the kernel could not report itself (it died).
    pub(crate) fn set_error(&self, name: &str, value: &str) {
        let mut g = self.lock();
        g.doc.execution.error = Some(RunError {
            name: name.into(),
            value: value.into(),
            traceback: String::new(),
        });
        Self::emit(
            &mut g,
            RunEvent::Error {
                ename: name.into(),
                evalue: value.into(),
                traceback: Vec::new(),
            },
        );
    }

    pub(crate) fn error(&self) -> Option<RunError> {
        self.lock().doc.execution.error.clone()
    }

    pub(crate) fn set_artifacts(&self, artifacts: Vec<Artifact>) {
        self.lock().doc.execution.artifacts = artifacts;
    }

    /// Ends the run (once; later calls do nothing). The observer sees the final document
    /// first; only when it is done (the record is durable) does the run become final here.
    pub(crate) async fn finish(&self, status: RunStatus, failure_reason: Option<String>) {
        if self.finishing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (doc, ms) = {
            let g = self.lock();
            if g.doc.status.is_final() {
                return;
            }
            let mut doc = g.doc.clone();
            doc.status = status;
            doc.failure_reason = failure_reason;
            doc.completed_at = Some(rfc3339(SystemTime::now()));
            let ms = g
                .started
                .map(|s| s.elapsed().as_millis() as u64)
                .unwrap_or(0);
            (doc, ms)
        };
        if let Some(o) = &self.observer {
            o.finished(&doc).await;
        }
        {
            let mut g = self.lock();
            g.doc = doc;
            Self::emit(&mut g, RunEvent::Status(status));
            Self::emit(
                &mut g,
                RunEvent::Complete {
                    execution_time_ms: ms,
                },
            );
            g.subscribers.clear();
        }
        self.done.send_replace(true);
    }
}

/// A fresh run document.
pub fn new_doc(
    id: String,
    sandbox_id: &str,
    context_id: &str,
    language: &str,
    timeout_secs: u64,
    created_at: SystemTime,
    expires_at: SystemTime,
) -> CodeRun {
    CodeRun {
        id,
        sandbox_id: sandbox_id.into(),
        context_id: context_id.into(),
        language: language.into(),
        status: RunStatus::Queued,
        timeout_secs,
        created_at: rfc3339(created_at),
        expires_at: rfc3339(expires_at),
        started_at: None,
        completed_at: None,
        cancel_requested_at: None,
        execution: Execution::default(),
        failure_reason: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(limits: OutputLimits) -> Arc<Run> {
        let doc = new_doc(
            "run_x".into(),
            "sb_x",
            "ctx",
            "python",
            10,
            SystemTime::now(),
            SystemTime::now(),
        );
        Run::new(doc, limits, None)
    }

    const BIG: OutputLimits = OutputLimits {
        max_log_bytes: 1 << 20,
        max_result_bytes: 1 << 20,
    };

    #[tokio::test]
    async fn events_reach_late_subscribers_and_end_with_completion() {
        let r = run(BIG);
        r.set_running();
        r.on_kernel_event(Event::Stream {
            stdout: true,
            text: "hi\n".into(),
        });
        let (past, mut rx) = r.subscribe();
        assert_eq!(past.len(), 2);
        r.on_kernel_event(Event::ExecutionCount(3));
        r.finish(RunStatus::Succeeded, None).await;
        let mut live = Vec::new();
        while let Some(e) = rx.recv().await {
            live.push(e);
        }
        assert_eq!(live[0], RunEvent::ExecutionCount(3));
        assert!(matches!(live.last(), Some(RunEvent::Complete { .. })));
        r.wait().await;
        let doc = r.snapshot();
        assert_eq!(doc.status, RunStatus::Succeeded);
        assert_eq!(doc.execution.logs.stdout, vec!["hi\n"]);
        assert_eq!(doc.execution.execution_count, Some(3));
        // A final run is final.
        r.finish(RunStatus::Failed, Some("late".into())).await;
        assert_eq!(r.snapshot().status, RunStatus::Succeeded);
        assert!(!r.cancel());
    }

    #[tokio::test]
    async fn output_beyond_the_limit_is_cut_once() {
        let r = run(OutputLimits {
            max_log_bytes: 10,
            max_result_bytes: 5,
        });
        for _ in 0..3 {
            r.on_kernel_event(Event::Stream {
                stdout: true,
                text: "0123456789ab".into(),
            });
        }
        let mut big = serde_json::Map::new();
        big.insert("text/plain".into(), "0123456789".into());
        r.on_kernel_event(Event::Display {
            data: big.clone(),
            main: true,
        });
        r.on_kernel_event(Event::Display {
            data: big,
            main: true,
        });
        let doc = r.snapshot();
        assert_eq!(doc.execution.logs.stdout.len(), 1);
        assert!(doc.execution.logs.stdout[0].starts_with("0123456789"));
        assert!(doc.execution.logs.stdout[0].contains("truncated"));
        assert!(doc.execution.results.is_empty());
        assert_eq!(
            doc.execution.logs.stderr.len(),
            1,
            "one note about dropped results"
        );
    }

    #[tokio::test]
    async fn cancel_wakes_waiters_and_records_the_time() {
        let r = run(BIG);
        let r2 = Arc::clone(&r);
        let waiter = tokio::spawn(async move { r2.cancelled().await });
        tokio::task::yield_now().await;
        assert!(r.cancel());
        waiter.await.unwrap();
        assert!(r.snapshot().cancel_requested_at.is_some());
    }

    #[test]
    fn errors_lose_their_colours() {
        let r = run(BIG);
        r.on_kernel_event(Event::Error {
            ename: "NameError".into(),
            evalue: "name 'x' is not defined".into(),
            traceback: vec!["\u{1b}[0;31mNameError\u{1b}[0m".into(), "line 2".into()],
        });
        let e = r.snapshot().execution.error.unwrap();
        assert_eq!(e.traceback, "NameError\nline 2");
    }
}
