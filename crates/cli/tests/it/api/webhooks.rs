//! Webhooks: retries with a stable id, Standard Webhooks signatures checked by the reference
//! implementation, the delivery log, and the SSRF guard; and two nodes on one PostgreSQL
//! making each attempt once.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::pg::TestDatabase;
use crate::server::{KEY_A, KEY_B, Opts, Receiver, Server, eventually};

const FAST_RETRIES: &str = "[webhooks]\nbackoff_secs = [0.3]\nmax_attempts = 3\n";

/// Polls the deliveries of an execution until the first one satisfies `done` (the receiver
/// may have answered before the server recorded the attempt).
fn deliveries_when(srv: &Server, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(
        Duration::from_secs(60),
        &format!("the deliveries of {id}"),
        || {
            let v = srv
                .get(&format!("/api/v1/executions/{id}/deliveries"), Some(key))
                .expect(200)
                .json();
            done(&v["deliveries"][0]).then_some(v)
        },
    )
}

/// A delivery that is over: delivered, or given up.
fn settled(d: &Value) -> bool {
    d["state"] == "delivered" || d["state"] == "failed"
}

fn secret_of(srv: &Server, key: &str) -> String {
    let v = srv
        .get("/api/v1/webhook-secret", Some(key))
        .expect(200)
        .json();
    let s = v["secret"].as_str().expect("secret").to_string();
    assert!(s.starts_with("whsec_"), "{v}");
    s
}

#[test]
fn webhooks_are_retried_signed_and_listed() {
    let receiver = Receiver::start(&[500, 200]);
    let srv = Server::with(
        Opts::new()
            .env("RUNCELL_WEBHOOK_ALLOW", "127.0.0.1")
            .config(FAST_RETRIES),
    );
    let url = receiver.url("/hooks/runcell?x=1");
    let id = srv.submit(
        KEY_A,
        &json!({"language": "python", "code": "print('hooked')", "callback_url": url}),
    );

    let hooks = receiver.wait_for(2, Duration::from_secs(60));
    let done = srv.wait_done(KEY_A, &id, Duration::from_secs(10));
    assert_eq!(done["result"]["stdout"], "hooked\n");

    // Both attempts: the same message, signed under the tenant's secret.
    let secret = secret_of(&srv, KEY_A);
    assert_ne!(
        secret,
        secret_of(&srv, KEY_B),
        "each tenant has its own secret"
    );
    assert_eq!(secret, secret_of(&srv, KEY_A), "the secret is stable");
    let verifier = standardwebhooks::Webhook::new(&secret).expect("a valid whsec_ secret");
    let other = standardwebhooks::Webhook::new(&secret_of(&srv, KEY_B)).unwrap();
    let webhook_id = hooks[0]
        .header("webhook-id")
        .expect("webhook-id")
        .to_string();
    for h in &hooks {
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/hooks/runcell?x=1");
        assert_eq!(
            h.header("webhook-id"),
            Some(webhook_id.as_str()),
            "stable across retries"
        );
        let ts: i64 = h
            .header("webhook-timestamp")
            .expect("webhook-timestamp")
            .parse()
            .expect("Unix seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now - ts).abs() < 120, "timestamp {ts} vs now {now}");
        assert!(
            h.header("webhook-signature")
                .is_some_and(|s| s.starts_with("v1,")),
            "{h:?}"
        );
        assert!(
            h.header("content-type")
                .is_some_and(|c| c.starts_with("application/json"))
        );
        verifier
            .verify(&h.body, &h.header_map())
            .unwrap_or_else(|e| panic!("the signature does not verify: {e}: {h:?}"));
        assert!(
            other.verify(&h.body, &h.header_map()).is_err(),
            "another tenant's secret must not verify"
        );
        // A tampered body does not verify.
        let mut tampered = h.body.clone();
        tampered.extend_from_slice(b" ");
        assert!(verifier.verify(&tampered, &h.header_map()).is_err());

        let body: Value = serde_json::from_slice(&h.body).expect("JSON body");
        assert_eq!(
            body,
            json!({"type": "execution.completed", "data": done}),
            "the body is the GET object"
        );
    }

    // The delivery log shows both attempts and the final state.
    let v = deliveries_when(&srv, KEY_A, &id, settled);
    let deliveries = v["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 1, "{v:#}");
    let d = &deliveries[0];
    assert_eq!(d["webhook_id"], webhook_id.as_str(), "{d:#}");
    assert_eq!(d["url"], url.as_str(), "{d:#}");
    assert_eq!(d["state"], "delivered", "{d:#}");
    let codes: Vec<Value> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(codes, vec![json!(500), json!(200)], "{d:#}");

    // No more requests after the 2xx.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(receiver.hooks().len(), 2);

    // The alias `webhook_url` on the submit route of the sync/async/webhooks guide.
    let id2 = srv
        .post(
            "/api/submit",
            Some(KEY_B),
            &json!({"language": "python", "code": "print(42)",
                    "webhook_url": receiver.url("/second")}),
        )
        .expect(202)
        .json()["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    let hooks = receiver.wait_for(3, Duration::from_secs(60));
    let h = &hooks[2];
    assert_eq!(h.path, "/second");
    assert_ne!(h.header("webhook-id"), Some(webhook_id.as_str()));
    let body: Value = serde_json::from_slice(&h.body).unwrap();
    assert_eq!(body["data"]["execution_id"], id2.as_str());
    assert_eq!(body["data"]["result"]["stdout"], "42\n");
    other
        .verify(&h.body, &h.header_map())
        .expect("signed with tenant B's secret");
    let v = deliveries_when(&srv, KEY_B, &id2, settled);
    assert_eq!(v["deliveries"][0]["state"], "delivered", "{v:#}");
    // Executions without a callback have no deliveries.
    let plain = srv.submit(KEY_A, &json!({"language": "python", "code": "print(1)"}));
    srv.wait_done(KEY_A, &plain, Duration::from_secs(60));
    let v = srv
        .get(
            &format!("/api/v1/executions/{plain}/deliveries"),
            Some(KEY_A),
        )
        .expect(200)
        .json();
    assert_eq!(v, json!({"deliveries": []}));
}

#[test]
fn a_webhook_that_keeps_failing_is_given_up_after_max_attempts() {
    let receiver = Receiver::start(&[500, 503, 502, 500, 500]);
    let srv = Server::with(
        Opts::new()
            .env("RUNCELL_WEBHOOK_ALLOW", "127.0.0.1")
            .config(FAST_RETRIES),
    );
    let id = srv.submit(
        KEY_A,
        &json!({"language": "bash", "code": "echo hi", "callback_url": receiver.url("/h")}),
    );
    let v = deliveries_when(&srv, KEY_A, &id, settled);
    assert_eq!(v["deliveries"][0]["state"], "failed", "{v:#}");
    let attempts = v["deliveries"][0]["attempts"].as_array().unwrap().clone();
    assert_eq!(attempts.len(), 3, "max_attempts = 3: {v:#}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(receiver.hooks().len(), 3);
}

#[test]
fn private_callback_targets_are_refused_without_the_allow_list() {
    let srv = Server::start();
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://10.0.0.1/hook",
        "http://192.168.1.10/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/hook",
        "http://[::ffff:127.0.0.1]:9/hook",
        "http://0.0.0.0:9/hook",
        "ftp://example.com/hook",
        "not a url",
    ] {
        for (route, field) in [
            ("/api/v1/execute/async", "callback_url"),
            ("/api/v1/execute/async", "webhook_url"),
            ("/api/submit", "callback_url"),
        ] {
            let r = srv.post(
                route,
                Some(KEY_A),
                &json!({"language": "python", "code": "print(1)", field: url}),
            );
            assert_eq!(r.status, 400, "{route} {field}={url}: {}", r.text);
            r.error(400, None);
        }
    }
    assert!(srv.list_all(KEY_A, "").is_empty(), "nothing was queued");
}

#[test]
fn a_pending_delivery_survives_a_restart() {
    let receiver = Receiver::start(&[500, 200]);
    let opts = |o: Opts| {
        o.env("RUNCELL_WEBHOOK_ALLOW", "127.0.0.1")
            .config("[webhooks]\nbackoff_secs = [5.0]\nmax_attempts = 3\n")
    };
    let mut first = Server::with(opts(Opts::new()));
    let id = first.submit(
        KEY_A,
        &json!({"language": "bash", "code": "echo durable", "callback_url": receiver.url("/d")}),
    );
    // The first attempt fails and is recorded; the retry is due 5 s later, when this server
    // is gone.
    let hooks = receiver.wait_for(1, Duration::from_secs(60));
    let v = deliveries_when(&first, KEY_A, &id, |d| {
        d["attempts"].as_array().is_some_and(|a| !a.is_empty())
    });
    assert_eq!(v["deliveries"][0]["state"], "pending", "{v:#}");
    first.kill9();
    assert_eq!(
        receiver.hooks().len(),
        1,
        "the retry must not have happened yet"
    );
    let webhook_id = hooks[0].header("webhook-id").unwrap().to_string();

    let second = Server::with(opts(Opts::new().data_dir(&first.data_dir)));
    let hooks = receiver.wait_for(2, Duration::from_secs(60));
    assert_eq!(hooks[1].header("webhook-id"), Some(webhook_id.as_str()));
    assert_eq!(hooks[1].body, hooks[0].body, "the same message");
    let secret = secret_of(&second, KEY_A);
    standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&hooks[1].body, &hooks[1].header_map())
        .expect("signed with the same, stored secret");
    let v = deliveries_when(&second, KEY_A, &id, settled);
    let d = &v["deliveries"][0];
    assert_eq!(d["state"], "delivered", "{v:#}");
    let codes: Vec<&Value> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status_code"])
        .collect();
    assert_eq!(codes, [&json!(500), &json!(200)], "{v:#}");
    let body: Value = serde_json::from_slice(&hooks[1].body).unwrap();
    assert_eq!(body["data"]["result"]["stdout"], "durable\n");
}

/// Three nodes on one PostgreSQL, all running the delivery loop: every attempt of every
/// delivery is one POST, whichever node makes it. Some targets fail their first attempt (500),
/// and the retry, due at the same moment for every node, is made once too.
#[test]
fn three_nodes_on_one_database_make_each_attempt_once() {
    const N: usize = 30;
    // Executions whose target answers 500 to the first attempt: 0, 5, 10, … (6 of 30).
    let fails_first = |i: usize| i.is_multiple_of(5);
    let receiver = Receiver::answering(move |before, hook| {
        let i: usize = hook
            .path
            .strip_prefix("/h/")
            .and_then(|n| n.parse().ok())
            .unwrap_or(usize::MAX);
        let seen = before
            .iter()
            .any(|h| h.header("webhook-id") == hook.header("webhook-id"));
        if fails_first(i) && !seen { 500 } else { 200 }
    });
    let db = TestDatabase::create();
    let opts = || {
        Opts::new()
            .database_url(&db.url)
            .env("RUNCELL_WEBHOOK_ALLOW", "127.0.0.1")
            .config("[webhooks]\nbackoff_secs = [1.0]\nmax_attempts = 3\n")
    };
    let a = Server::with(opts());
    let b = Server::with(opts());
    let c = Server::with(opts());
    let nodes = [&a, &b, &c];
    let ids: Vec<String> = (0..N)
        .map(|i| {
            nodes[i % 3].submit(
                KEY_A,
                &json!({"language": "bash", "code": format!("echo {i}"),
                        "callback_url": receiver.url(&format!("/h/{i}"))}),
            )
        })
        .collect();
    let failing = (0..N).filter(|i| fails_first(*i)).count();
    receiver.wait_for(N + failing, Duration::from_secs(180));

    // Every delivery is settled, as any node tells; its attempts are the receiver's answers,
    // one each.
    let mut logged = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let v = deliveries_when(nodes[(i + 1) % 3], KEY_A, id, settled);
        let d = &v["deliveries"][0];
        assert_eq!(v["deliveries"].as_array().map(Vec::len), Some(1), "{v:#}");
        assert_eq!(d["state"], "delivered", "{v:#}");
        let codes: Vec<u64> = d["attempts"]
            .as_array()
            .expect("attempts")
            .iter()
            .map(|a| a["status_code"].as_u64().expect("a status code"))
            .collect();
        let want: &[u64] = if fails_first(i) { &[500, 200] } else { &[200] };
        assert_eq!(codes, want, "execution {i}: {v:#}");
        let webhook_id = d["webhook_id"].as_str().expect("webhook_id").to_string();
        logged.insert(webhook_id, (i, codes.len()));
    }
    assert_eq!(logged.len(), N, "one message per execution");

    // Retries are due 1 s after a failure: wait past them, then count what the receiver got.
    std::thread::sleep(Duration::from_secs(3));
    let hooks = receiver.hooks();
    let mut received: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for h in &hooks {
        let webhook_id = h.header("webhook-id").expect("webhook-id").to_string();
        received
            .entry(webhook_id)
            .or_default()
            .push(h.path.as_str());
    }
    assert_eq!(
        hooks.len(),
        N + failing,
        "each attempt is one POST, whichever node makes it; per message: {received:?}"
    );
    for (webhook_id, paths) in &received {
        let (i, attempts) = logged
            .get(webhook_id)
            .unwrap_or_else(|| panic!("{webhook_id} is no execution's message"));
        assert_eq!(paths.len(), *attempts, "message {webhook_id}: {paths:?}");
        let path = format!("/h/{i}");
        assert!(paths.iter().all(|p| *p == path), "{webhook_id}: {paths:?}");
    }
}
