//! Streaming a synchronous execution as server-sent events: `init`, `status`, `stdout` and
//! `stderr` chunks as they are produced, `ping` every few seconds, and `execution_complete`
//! carrying the `ExecutionResult`. A client that disconnects cancels the run.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use runcell_engine::{Cancel, ExecuteRequest, Plan};
use runcell_jail::Stream as Output;

use crate::auth::Tenant;
use crate::error::ApiError;
use crate::jobs::{self, Progress, check_capacity};
use crate::state::{AppState, now_ms};

const PING: Duration = Duration::from_secs(5);

/// Decodes a byte stream into text without splitting characters across events.
#[derive(Default)]
pub struct Utf8Chunks {
    carry: Vec<u8>,
}

impl Utf8Chunks {
    /// The text of `chunk` up to the last complete character (the rest is kept for later);
    /// invalid bytes become U+FFFD.
    pub fn push(&mut self, chunk: &[u8]) -> String {
        self.carry.extend_from_slice(chunk);
        let n = self.carry.len();
        let mut cut = n;
        // An incomplete sequence can only be the last 1 to 3 bytes: find its lead byte.
        for k in 1..=n.min(3) {
            let b = self.carry[n - k];
            if b & 0xc0 == 0x80 {
                continue;
            }
            let len = match b {
                0xf0..=0xf7 => 4,
                0xe0..=0xef => 3,
                0xc0..=0xdf => 2,
                _ => 1,
            };
            if len > k {
                cut = n - k;
            }
            break;
        }
        let rest = self.carry.split_off(cut);
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry = rest;
        text
    }

    /// Whatever is left at the end.
    pub fn finish(&mut self) -> String {
        let t = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry.clear();
        t
    }
}

fn event(mut v: Value) -> Event {
    v["timestamp"] = json!(now_ms());
    Event::default().data(v.to_string())
}

/// Cancels the execution when the client goes away (and harmlessly after it ended).
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

struct Streamer {
    rx: UnboundedReceiver<Progress>,
    ping: tokio::time::Interval,
    out: Utf8Chunks,
    err: Utf8Chunks,
    queued: Vec<Event>,
    done: bool,
    _cancel: CancelOnDrop,
}

impl Streamer {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if !self.queued.is_empty() {
                return Some(self.queued.remove(0));
            }
            if self.done {
                return None;
            }
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(Progress::Status(s)) => {
                        self.queued.push(event(json!({"type": "status", "text": s})));
                    }
                    Some(Progress::Output(which, bytes)) => {
                        let (name, dec) = match which {
                            Output::Stdout => ("stdout", &mut self.out),
                            Output::Stderr => ("stderr", &mut self.err),
                        };
                        let text = dec.push(&bytes);
                        if !text.is_empty() {
                            self.queued.push(event(json!({"type": name, "text": text})));
                        }
                    }
                    Some(Progress::Done(r)) => {
                        for (name, dec) in [("stdout", &mut self.out), ("stderr", &mut self.err)] {
                            let text = dec.finish();
                            if !text.is_empty() {
                                self.queued.push(event(json!({"type": name, "text": text})));
                            }
                        }
                        match *r {
                            Ok(result) => self.queued.push(event(json!({
                                "type": "execution_complete",
                                "execution_time": result.execution_time * 1000.0,
                                "result": result,
                            }))),
                            Err(e) => self.queued.push(event(json!({
                                "type": "error",
                                "error": {"ename": e.code, "evalue": e.detail, "traceback": []},
                            }))),
                        }
                        self.done = true;
                    }
                    None => self.done = true,
                },
                _ = self.ping.tick() => {
                    self.queued.push(event(json!({"type": "ping"})));
                }
            }
        }
    }
}

/// Starts a validated request and streams it.
pub async fn execute_stream(
    state: AppState,
    tenant: Tenant,
    req: ExecuteRequest,
    plan: Plan,
) -> Result<Response, ApiError> {
    check_capacity(&state, &tenant.0, 1)?;
    let id = uuid::Uuid::new_v4().to_string();
    let (tx, rx) = unbounded_channel::<Progress>();
    let cancel = Cancel::new();
    let task_cancel = cancel.clone();
    let task_id = id.clone();
    let task_tx = tx.clone();
    tokio::spawn(async move {
        let r = jobs::run_sync(
            &state,
            &tenant.0,
            &req,
            plan,
            task_id,
            Some(task_tx),
            task_cancel,
        )
        .await;
        let _ = tx.send(Progress::Done(Box::new(r)));
    });
    let mut ping = tokio::time::interval(PING);
    ping.reset();
    let streamer = Streamer {
        rx,
        ping,
        out: Utf8Chunks::default(),
        err: Utf8Chunks::default(),
        queued: vec![
            event(json!({"type": "init", "text": id})),
            event(json!({"type": "status", "text": "queued"})),
        ],
        done: false,
        _cancel: CancelOnDrop(cancel),
    };
    let s = stream::unfold(streamer, |mut st| async move {
        st.next().await.map(|e| (Ok::<_, Infallible>(e), st))
    });
    Ok(sse_response(s))
}

fn sse_response(s: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(s).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_are_never_split_across_events() {
        let mut d = Utf8Chunks::default();
        let text = "héllo wörld €";
        let bytes = text.as_bytes();
        let mut out = String::new();
        for b in bytes.chunks(1) {
            out.push_str(&d.push(b));
        }
        out.push_str(&d.finish());
        assert_eq!(out, text);
        let mut d = Utf8Chunks::default();
        assert_eq!(d.push(b"a\xffb\xe2\x82"), "a\u{fffd}b");
        assert_eq!(d.push(b"\xac"), "€");
    }
}
