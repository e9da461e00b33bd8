//! Egress allow-lists, attacked from inside jails, against a made-up internet
//! (`crate::fakenet`): allowed names work over HTTP and HTTPS; everything else (a denied name,
//! a known address, a name that resolves or rebinds to loopback, private, link-local or this
//! node's addresses, a Host or SNI naming another host, another jail) is refused; limits hold
//! and are reported; offline stays the default; asking for more than the operator allows is
//! a 403.

use std::time::Duration;

use serde_json::{Value, json};

use super::commands::{background, call, create_as, sb_path, sh};
use crate::fakenet;
use crate::server::{KEY_A, Opts, Server, eventually};

/// A server whose keys may let runs reach `*.test`, resolved by the made-up internet.
fn server() -> Server {
    fakenet::get();
    Server::with(
        Opts::new()
            .env("RUNCELL_EGRESS_ALLOW", "*.test")
            .env("RUNCELL_EGRESS_RESOLVER", fakenet::RESOLVER),
    )
}

/// Runs Python `code` that may reach `allow` (with `limits`), the test CA in `ca.pem`.
fn py(srv: &Server, code: &str, allow: &[&str], limits: Value) -> Value {
    let r = srv.execute(&json!({
        "language": "python",
        "code": code,
        "files": [{"name": "ca.pem", "content": fakenet::get().ca_pem}],
        "network": {"egress": {"allow": allow, "default": "deny"}, "limits": limits},
        "limits": {"wall_time": 30},
    }));
    assert_eq!(r["status"], "completed", "{r:#}");
    r
}

/// Asserts that the result reports a refusal of `name` whose reason says `why`.
#[track_caller]
fn assert_refused(r: &Value, name: &str, why: &str) {
    let found = r["network"]["refusals"].as_array().is_some_and(|l| {
        l.iter()
            .any(|x| x["name"] == name && x["reason"].as_str().is_some_and(|s| s.contains(why)))
    });
    assert!(
        found,
        "no refusal of {name} saying {why:?}: {:#}",
        r["network"]
    );
}

#[test]
fn allowed_names_are_reached_over_http_and_https_and_counted() {
    let srv = server();
    let r = py(
        &srv,
        "import ssl, urllib.request as u\n\
         print(u.urlopen('http://allowed.test/', timeout=10).read().decode().strip())\n\
         c = ssl.create_default_context(cafile='ca.pem')\n\
         print(u.urlopen('https://allowed.test/', timeout=10, context=c).read().decode().strip())\n",
        &["allowed.test"],
        json!({}),
    );
    assert_eq!(
        r["stdout"], "hello from the http server\nhello from the https server\n",
        "{r:#}"
    );
    let n = &r["network"];
    assert_eq!(n["connections"], 2, "{n:#}");
    assert_eq!(n["refused"], 0, "{n:#}");
    assert!(n["bytes_in"].as_u64().unwrap() > 100, "{n:#}");
    assert!(n["bytes_out"].as_u64().unwrap() > 100, "{n:#}");
    assert!(n.get("limit_exceeded").is_none(), "{n:#}");
}

#[test]
fn everything_else_is_refused_at_the_resolver_or_by_the_kernel() {
    let srv = server();
    let port = srv.url.rsplit(':').next().unwrap().to_string();
    let code = format!(
        r#"import json, socket
res = {{}}
def conn(label, host, port):
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n")
        d = s.recv(100)
        res[label] = "got " + d[:30].decode() if d else "closed"
    except Exception as e:
        res[label] = "error " + type(e).__name__
def name(label, n):
    try:
        res[label] = "resolved " + socket.gethostbyname(n)
    except Exception as e:
        res[label] = "error " + type(e).__name__
name("denied", "denied.test")
conn("denied_ip", "203.0.113.3", 80)
conn("allowed_ip", "203.0.113.2", 80)
conn("host_side", "203.0.113.1", {port})
conn("server_loopback", "127.0.0.1", {port})
conn("metadata", "169.254.169.254", 80)
name("meta", "meta.test")
name("private", "private.test")
name("self", "self.test")
conn("rebind", "rebind.test", 80)
conn("other_port", "allowed.test", 8080)
conn("udp_dns_elsewhere", "203.0.113.2", 53)
print(json.dumps(res))
"#
    );
    let r = py(
        &srv,
        &code,
        &[
            "allowed.test",
            "rebind.test",
            "meta.test",
            "private.test",
            "self.test",
        ],
        json!({}),
    );
    let res: Value = serde_json::from_str(r["stdout"].as_str().unwrap().trim())
        .unwrap_or_else(|e| panic!("{e}: {r:#}"));
    assert_eq!(res["denied"], "error gaierror", "{res:#}");
    for (k, v) in res.as_object().unwrap() {
        let v = v.as_str().unwrap();
        assert!(
            !v.starts_with("got") && !v.starts_with("resolved"),
            "{k} was reached: {res:#}"
        );
    }
    for k in ["meta", "private", "self"] {
        assert_eq!(res[k], "error gaierror", "{k}: {res:#}");
    }
    // The rebinding name resolved (to a stand-in) and its connection was cut: the name
    // pointed at loopback by then.
    assert!(fakenet::get().rebind_queries() >= 2);
    assert_refused(&r, "rebind.test", "127.0.0.1");
    assert_refused(&r, "meta.test", "link-local");
    assert_refused(&r, "self.test", "own address");
    assert_refused(&r, "denied.test", "not in the allow-list");
    assert_refused(&r, "private.test", "private");
    assert_eq!(r["network"]["connections"], 0, "{r:#}");
    assert!(r["network"]["refused"].as_u64().unwrap() >= 5, "{r:#}");
}

#[test]
fn an_online_program_cannot_rewire_its_network_or_resolver() {
    let srv = server();
    let code = r#"import errno, json, socket, subprocess
res = {}
def attempt(label, f):
    try:
        f()
        res[label] = "done"
    except Exception as e:
        res[label] = "error " + type(e).__name__ + (" " + errno.errorcode[e.errno] if getattr(e, "errno", None) in errno.errorcode else "")
attempt("raw_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
attempt("packet_socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
def route():
    r = subprocess.run(["ip", "route", "add", "default", "dev", "lo"], capture_output=True)
    if r.returncode != 0:
        err = r.stderr.decode()
        raise (PermissionError if "not permitted" in err else RuntimeError)(err)
attempt("route", route)
def addr():
    r = subprocess.run(["ip", "addr", "add", "203.0.113.9/24", "dev", "lo"], capture_output=True)
    if r.returncode != 0:
        err = r.stderr.decode()
        raise (PermissionError if "not permitted" in err else RuntimeError)(err)
attempt("address", addr)
def resolv():
    open("/etc/resolv.conf", "a").write("nameserver 203.0.113.2\n")
attempt("resolv_conf", resolv)
def resolver_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 53))
attempt("resolver_port", resolver_port)
def udp_out():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", ("203.0.113.2", 53))
attempt("udp_out", udp_out)
print(json.dumps(res))
"#;
    let r = py(&srv, code, &["allowed.test"], json!({}));
    let res: Value = serde_json::from_str(r["stdout"].as_str().unwrap().trim())
        .unwrap_or_else(|e| panic!("{e}: {r:#}"));
    for (k, v) in res.as_object().unwrap() {
        assert!(
            v.as_str().unwrap().starts_with("error "),
            "{k} succeeded: {res:#}"
        );
    }
    assert_eq!(res.as_object().unwrap().len(), 7, "{res:#}");
    // Refused by the kernel, not missing tools: `ip` runs and is told no.
    for k in ["route", "address"] {
        assert_eq!(res[k], "error PermissionError", "{k}: {res:#}");
    }
    for k in ["raw_socket", "packet_socket"] {
        assert_eq!(res[k], "error PermissionError EPERM", "{k}: {res:#}");
    }
    assert_eq!(
        res["resolver_port"], "error PermissionError EACCES",
        "{res:#}"
    );
    // The root is read-only (an overlay of the spawner's skeleton, see docs/security.md).
    assert_eq!(res["resolv_conf"], "error OSError EROFS", "{res:#}");
    assert_eq!(res["udp_out"], "error OSError ENETUNREACH", "{res:#}");
}

#[test]
fn a_session_runs_online_again_and_again() {
    let srv = server();
    for i in 0..3 {
        let r = srv.execute(&json!({
            "language": "python",
            "session_id": "online",
            "code": "import urllib.request as u\nprint(u.urlopen('http://allowed.test/', timeout=10).read().decode().strip())",
            "network": {"egress": {"allow": ["allowed.test"]}},
        }));
        assert_eq!(
            r["stdout"], "hello from the http server\n",
            "run {i}: {r:#}"
        );
        assert_eq!(r["network"]["connections"], 1, "run {i}: {r:#}");
    }
}

#[test]
fn a_connection_naming_another_host_is_refused() {
    let srv = server();
    let r = py(
        &srv,
        "import socket, ssl\n\
         s = socket.create_connection(('allowed.test', 80), timeout=5)\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: denied.test\\r\\n\\r\\n')\n\
         print('http', s.recv(100))\n\
         c = ssl.create_default_context(cafile='ca.pem')\n\
         c.check_hostname = False\n\
         try:\n\
         \x20   raw = socket.create_connection(('allowed.test', 443), timeout=5)\n\
         \x20   t = c.wrap_socket(raw, server_hostname='denied.test')\n\
         \x20   print('tls', t.recv(10))\n\
         except Exception as e:\n\
         \x20   print('tls error', type(e).__name__)\n",
        &["allowed.test"],
        json!({}),
    );
    let out = r["stdout"].as_str().unwrap();
    assert!(out.starts_with("http b''\ntls error "), "{r:#}");
    assert_refused(&r, "allowed.test", "HTTP Host \"denied.test\"");
    assert_refused(&r, "allowed.test", "TLS server name \"denied.test\"");
    assert_eq!(r["network"]["connections"], 0, "{r:#}");
}

#[test]
fn the_byte_and_rate_limits_hold_and_are_reported() {
    let srv = server();
    let fetch = "import time, urllib.request as u\n\
                 t = time.monotonic()\n\
                 try:\n\
                 \x20   d = u.urlopen('http://big.test/size/SIZE', timeout=20).read()\n\
                 \x20   print('read', len(d), round(time.monotonic() - t, 2))\n\
                 except Exception as e:\n\
                 \x20   print('error', type(e).__name__)\n";
    let r = py(
        &srv,
        &fetch.replace("SIZE", "2000000"),
        &["big.test"],
        json!({"bytes": 100000}),
    );
    let n = &r["network"];
    assert_eq!(n["limit_exceeded"], "bytes", "{r:#}");
    let moved = n["bytes_in"].as_u64().unwrap() + n["bytes_out"].as_u64().unwrap();
    assert!(moved <= 100000 && moved > 50000, "{r:#}");
    assert!(
        !r["stdout"].as_str().unwrap().starts_with("read 2000000"),
        "{r:#}"
    );

    // 600 kB at 200 kB/s (one second of burst) cannot take less than two seconds.
    let r = py(
        &srv,
        &fetch.replace("SIZE", "600000"),
        &["big.test"],
        json!({"bytes_per_sec": 200000}),
    );
    let out = r["stdout"].as_str().unwrap();
    let secs: f64 = out
        .strip_prefix("read 600000 ")
        .unwrap_or_else(|| panic!("{r:#}"))
        .trim()
        .parse()
        .unwrap();
    assert!(secs >= 1.9, "600 kB in {secs} s at 200 kB/s: {r:#}");
    assert!(r["network"].get("limit_exceeded").is_none(), "{r:#}");

    // One connection at once: a second one is cut while the first is open; the first works.
    let r = py(
        &srv,
        "import socket, time\n\
         req = b'GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n'\n\
         a = socket.create_connection(('allowed.test', 80), timeout=10)\n\
         a.sendall(req)\n\
         time.sleep(0.5)\n\
         b = socket.create_connection(('allowed.test', 80), timeout=10)\n\
         b.sendall(req)\n\
         try:\n\
         \x20   print('second', b.recv(100) or 'cut')\n\
         except OSError:\n\
         \x20   print('second', 'cut')\n\
         print('first', a.recv(100).split(b'\\r\\n')[0])\n",
        &["allowed.test"],
        json!({"connections": 1}),
    );
    assert_eq!(
        r["stdout"], "second cut\nfirst b'HTTP/1.1 200 OK'\n",
        "{r:#}"
    );
    assert_refused(&r, "allowed.test", "more than 1 connections at once");
}

#[test]
fn offline_stays_the_default_and_asking_for_more_is_refused() {
    let srv = server();
    let r = srv.execute(&json!({
        "language": "python",
        "code": "import socket\ntry:\n    print(socket.gethostbyname('allowed.test'))\nexcept Exception as e:\n    print('offline', type(e).__name__)\n",
    }));
    assert_eq!(r["stdout"], "offline gaierror\n", "{r:#}");
    assert!(r.get("network").is_none(), "{r:#}");

    let ask = |network: Value| {
        srv.post(
            "/api/v1/execute",
            Some(KEY_A),
            &json!({"language": "python", "code": "print(1)", "network": network}),
        )
    };
    let e = ask(json!({"egress": {"allow": ["pypi.org"]}})).error(403, Some("NETWORK_NOT_ALLOWED"));
    assert!(e.to_string().contains("pypi.org"), "{e}");
    ask(json!({"egress": {"allow": ["allowed.test:22"]}})).error(403, Some("NETWORK_NOT_ALLOWED"));
    for bad in [
        json!(true),
        json!({"egress": {"allow": ["203.0.113.2"]}}),
        json!({"egress": {"allow": ["allowed.test"], "default": "allow"}}),
        json!({"egress": {"allow": ["allowed.test"]}, "limits": {"bytes": 0}}),
        json!({"egress": {"allow": ["*"]}}),
    ] {
        ask(bad).error(400, None);
    }
    let e = call(
        &srv,
        "POST",
        "/v1/sandboxes",
        Some(KEY_A),
        Some(&json!({"network": {"egress": {"allow": ["pypi.org"]}}})),
    );
    assert_eq!(e.status, 403, "{}", e.text);

    // A server whose operator allows nothing.
    let plain = Server::start();
    let e = plain
        .post(
            "/api/v1/execute",
            Some(KEY_A),
            &json!({"language": "python", "code": "print(1)",
                    "network": {"egress": {"allow": ["allowed.test"]}}}),
        )
        .error(403, Some("NETWORK_NOT_ALLOWED"));
    assert!(e.to_string().contains("no network access"), "{e}");
}

#[test]
fn sandboxes_reach_allowed_names_but_not_each_other() {
    let srv = server();
    let net = json!({"egress": {"allow": ["allowed.test"]}});
    let a = create_as(&srv, KEY_A, &json!({ "network": net }));
    assert_eq!(a["network"], true, "{a:#}");
    assert_eq!(a["egress"], json!(["allowed.test"]), "{a:#}");
    let a = a["id"].as_str().unwrap().to_string();
    let b = create_as(&srv, KEY_A, &json!({ "network": net }))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let fetch = "python3 -c \"import urllib.request as u; \
                 print(u.urlopen('http://allowed.test/', timeout=10).read().decode().strip())\"";
    assert_eq!(sh(&srv, &a, fetch).trim(), "hello from the http server");
    let m = call(&srv, "GET", &sb_path(&a, "/metrics"), Some(KEY_A), None);
    assert_eq!(m.status, 200, "{}", m.text);
    let m: Value = serde_json::from_str(&m.text).unwrap();
    assert_eq!(m["network"]["connections"], 1, "{m:#}");

    // A serves on port 8000 of its own namespace; B cannot reach it by any address.
    background(&srv, &a, "python3 -m http.server 8000 --bind 0.0.0.0");
    eventually(Duration::from_secs(20), "the server in sandbox A", || {
        (sh(
            &srv,
            &a,
            "python3 -c \"import socket; socket.create_connection(('127.0.0.1', 8000), 1); print('up')\" 2>/dev/null || true",
        ).trim() == "up")
            .then_some(())
    });
    let probe = "for h in 127.0.0.1 198.18.0.1 198.18.0.2 203.0.113.1; do \
                 python3 -c \"import socket,sys; socket.create_connection((sys.argv[1], 8000), 2); print('reached', sys.argv[1])\" $h 2>/dev/null; \
                 done; echo done";
    assert_eq!(sh(&srv, &b, probe).trim(), "done");
    // An offline sandbox has no resolver answering at all.
    let c = create_as(&srv, KEY_A, &json!({}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = sh(
        &srv,
        &c,
        "python3 -c \"import socket\ntry: socket.gethostbyname('allowed.test')\nexcept OSError as e: print('offline')\"",
    );
    assert_eq!(out.trim(), "offline");

    // OpenSandbox's networkPolicy maps onto the same allow-lists.
    let os = |target: &str| {
        srv.req("POST", "/opensandbox/v1/sandboxes", None)
            .header("OPEN-SANDBOX-API-KEY", KEY_A)
            .header("Content-Type", "application/json")
            .body(
                json!({"image": {"uri": "python:3.11"}, "entrypoint": ["/bin/sh"],
                       "resourceLimits": {"cpu": "1", "memory": "512Mi"},
                       "networkPolicy": {"defaultAction": "deny",
                                         "egress": [{"action": "allow", "target": target}]}})
                .to_string(),
            )
            .send()
            .unwrap()
    };
    assert_eq!(os("pypi.org").status(), 403);
    let made = os("allowed.test");
    assert_eq!(made.status(), 202);
    let id = made.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sh(&srv, &id, fetch).trim(), "hello from the http server");
}
