//! Server-sent events, one helper for every stream: events are JSON objects stamped with a
//! `timestamp`, a ping goes out when nothing else did for a while, and the stream holds a
//! guard that stops the work when the client goes away (dropping the stream drops it).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use runcell_service::model::now_ms;

/// Events waiting to be sent, and whether the stream ends after them.
#[derive(Default)]
pub struct Events {
    queued: VecDeque<Event>,
    pub done: bool,
}

impl Events {
    /// Queues a JSON event (stamped with the time).
    pub fn push(&mut self, mut v: Value) {
        v["timestamp"] = json!(now_ms());
        self.queued.push_back(Event::default().data(v.to_string()));
    }
}

/// A stream of `T`s turned into events: `backlog` first (what happened before the client
/// came), then what `rx` brings, each translated by `translate`, until it sets `done` or `rx`
/// closes; `ping` every `ping_every` in between. `guard` lives as long as the stream.
pub struct Feed<T, F, G> {
    pub events: Events,
    pub backlog: Vec<T>,
    pub rx: UnboundedReceiver<T>,
    pub ping_every: Duration,
    pub ping: Value,
    pub translate: F,
    pub guard: G,
}

struct State<T, F, G> {
    feed: Feed<T, F, G>,
    backlog: VecDeque<T>,
    ping: tokio::time::Interval,
}

impl<T, F, G> State<T, F, G>
where
    F: FnMut(T, &mut Events),
{
    async fn next(&mut self) -> Option<Event> {
        loop {
            let events = &mut self.feed.events;
            if let Some(e) = events.queued.pop_front() {
                return Some(e);
            }
            if events.done {
                return None;
            }
            if let Some(item) = self.backlog.pop_front() {
                (self.feed.translate)(item, events);
                continue;
            }
            tokio::select! {
                item = self.feed.rx.recv() => match item {
                    Some(item) => (self.feed.translate)(item, &mut self.feed.events),
                    None => self.feed.events.done = true,
                },
                _ = self.ping.tick() => self.feed.events.push(self.feed.ping.clone()),
            }
        }
    }
}

/// The event-stream answer of a feed.
pub fn respond<T, F, G>(mut feed: Feed<T, F, G>) -> Response
where
    T: Send + 'static,
    F: FnMut(T, &mut Events) + Send + 'static,
    G: Send + 'static,
{
    let mut ping = tokio::time::interval(feed.ping_every);
    ping.reset();
    let backlog = std::mem::take(&mut feed.backlog).into();
    let st = State {
        feed,
        backlog,
        ping,
    };
    response(stream::unfold(st, |mut st| async move {
        st.next().await.map(|e| (Ok::<_, Infallible>(e), st))
    }))
}

/// An event-stream answer of any stream of events (not buffered by proxies, not cached).
pub fn response(
    s: impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    let mut r = Sse::new(s).into_response();
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

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

    #[tokio::test]
    async fn backlog_then_live_items_then_the_end() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let mut events = Events::default();
        events.push(json!({"type": "init"}));
        let feed = Feed {
            events,
            backlog: vec![1, 2],
            rx,
            ping_every: Duration::from_secs(60),
            ping: json!({"type": "ping"}),
            translate: |n: u32, out: &mut Events| {
                out.push(json!({"type": "n", "n": n}));
                out.done = n == 3;
            },
            guard: (),
        };
        let mut st = State {
            backlog: feed.backlog.clone().into(),
            ping: tokio::time::interval(Duration::from_secs(60)),
            feed,
        };
        st.ping.reset();
        tx.send(3).unwrap();
        tx.send(4).unwrap();
        let mut n = 0;
        while st.next().await.is_some() {
            n += 1;
        }
        // init, 1, 2, 3; 4 comes after the end.
        assert_eq!(n, 4);
    }
}
