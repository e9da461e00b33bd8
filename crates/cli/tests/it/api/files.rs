//! The per-sandbox filesystem routes end to end, against `docs/sandboxes.md` ("Files") and
//! `docs/execd-compat.md` section 8: upload, info, download (ranges and lines), directories,
//! listings, search, permissions, moves, replacements, the disk budget; then an attack suite.
//!
//! Every attack test first plants host canaries (a file in a host directory, the host's
//! `/etc/hostname`, a file in another sandbox's workspace) and checks at the end that none was
//! read, changed or removed, whatever the sandbox planted (traversal strings, symlinks to host
//! paths and to `/proc`, a symlink swapped in a loop, FIFOs, devices, huge directories, link
//! loops, hard links).

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::commands::{call, cmdline, command, create_as, sandbox, sb_path, send, sh};
use crate::server::{KEY_A, KEY_B, Resp, Server, execd_error, is_timestamp, jail_procs};

// ---------------------------------------------------------------------------------------------
// Requests

/// Percent-encodes a query value (everything but unreserved characters and `/`).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `?path=<encoded path>`.
fn qp(path: &str) -> String {
    format!("?path={}", enc(path))
}

/// A request to the sandbox's `rest` as A that must be answered within 30 s.
fn get(srv: &Server, sb: &str, rest: &str) -> Resp {
    call(srv, "GET", &sb_path(sb, rest), Some(KEY_A), None)
}

fn post(srv: &Server, sb: &str, rest: &str, body: &Value) -> Resp {
    call(srv, "POST", &sb_path(sb, rest), Some(KEY_A), Some(body))
}

fn delete(srv: &Server, sb: &str, rest: &str) -> Resp {
    call(srv, "DELETE", &sb_path(sb, rest), Some(KEY_A), None)
}

/// Like a request, but it must be answered within 5 s; also returns how long it took.
fn timed(srv: &Server, method: &str, sb: &str, rest: &str) -> (Resp, Duration) {
    let t = Instant::now();
    let r = send(
        srv.req(method, &sb_path(sb, rest), Some(KEY_A))
            .timeout(Duration::from_secs(5)),
        None,
    );
    (r, t.elapsed())
}

/// `GET /files/info?path=` (raw: the query value as it goes on the wire).
fn info_raw(srv: &Server, sb: &str, raw: &str) -> Resp {
    get(srv, sb, &format!("/files/info?path={raw}"))
}

/// The `FileInfo` of `path`, asserting 200 and that the answer is keyed by the path as given.
#[track_caller]
fn info(srv: &Server, sb: &str, path: &str) -> Value {
    let r = info_raw(srv, sb, &enc(path)).expect(200);
    let v = r.json();
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(1),
        "one entry: {}",
        r.text
    );
    let fi = v[path].clone();
    assert!(fi.is_object(), "keyed by the path as given ({path}): {v}");
    assert_file_info(&fi);
    fi
}

/// Asserts the `FileInfo` shape.
#[track_caller]
fn assert_file_info(fi: &Value) {
    assert!(
        fi["path"].as_str().is_some_and(|p| p.starts_with('/')),
        "absolute path: {fi}"
    );
    assert!(
        matches!(
            fi["type"].as_str(),
            Some("file" | "directory" | "symlink" | "other")
        ),
        "{fi}"
    );
    assert!(fi["size"].is_u64(), "{fi}");
    assert!(is_timestamp(&fi["modified_at"]), "{fi}");
    assert!(is_timestamp(&fi["created_at"]), "{fi}");
    assert!(fi["owner"].is_string() && fi["group"].is_string(), "{fi}");
    let mode = fi["mode"].as_u64().unwrap_or(9999);
    assert!(
        mode.to_string().bytes().all(|b| (b'0'..=b'7').contains(&b)) && mode <= 7777,
        "mode is octal digits: {fi}"
    );
}

fn download_raw(srv: &Server, sb: &str, raw: &str) -> Resp {
    get(srv, sb, &format!("/files/download?path={raw}"))
}

fn download(srv: &Server, sb: &str, path: &str) -> Resp {
    download_raw(srv, sb, &enc(path))
}

/// A download with a `Range` header.
fn download_range(srv: &Server, sb: &str, path: &str, range: &str) -> Resp {
    send(
        srv.req(
            "GET",
            &sb_path(sb, &format!("/files/download{}", qp(path))),
            Some(KEY_A),
        )
        .header("Range", range)
        .timeout(Duration::from_secs(30)),
        None,
    )
}

fn list(srv: &Server, sb: &str, path: &str, depth: u32) -> Resp {
    get(
        srv,
        sb,
        &format!("/directories/list{}&depth={depth}", qp(path)),
    )
}

fn search(srv: &Server, sb: &str, path: &str, pattern: &str) -> Resp {
    get(
        srv,
        sb,
        &format!("/files/search{}&pattern={}", qp(path), enc(pattern)),
    )
}

/// The `path`s of a listing or search answer, checking every entry's shape.
#[track_caller]
fn paths(r: &Resp) -> Vec<String> {
    let v = r.json();
    v.as_array()
        .unwrap_or_else(|| panic!("an array: {}", r.text))
        .iter()
        .map(|fi| {
            assert_file_info(fi);
            fi["path"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The type of every entry of a listing or search answer, by path.
fn types(r: &Resp) -> HashMap<String, String> {
    r.json()
        .as_array()
        .map(|a| {
            a.iter()
                .map(|fi| {
                    (
                        fi["path"].as_str().unwrap_or_default().to_string(),
                        fi["type"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn truncated(r: &Resp) -> bool {
    r.header("X-Runcell-Truncated").as_deref() == Some("true")
}

const BOUNDARY: &str = "runcell-it-boundary-7f3e9a1c0b5d";

/// A multipart body of `(metadata, bytes)` pairs, the metadata sent as a file part named
/// "metadata" (as the SDKs do) or, if `plain_metadata`, as a plain form field.
fn multipart(pairs: &[(Value, &[u8])], plain_metadata: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (meta, bytes) in pairs {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        if plain_metadata {
            out.extend_from_slice(b"Content-Disposition: form-data; name=\"metadata\"\r\n");
        } else {
            out.extend_from_slice(
                b"Content-Disposition: form-data; name=\"metadata\"; filename=\"metadata\"\r\n",
            );
        }
        out.extend_from_slice(b"Content-Type: application/json\r\n\r\n");
        out.extend_from_slice(meta.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        out.extend_from_slice(
            b"Content-Disposition: form-data; name=\"file\"; filename=\"blob\"\r\n\
              Content-Type: application/octet-stream\r\n\r\n",
        );
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

/// POSTs a raw body to `/files/upload` with `content_type`.
fn upload_body(
    srv: &Server,
    sb: &str,
    content_type: &str,
    body: Vec<u8>,
) -> reqwest::Result<reqwest::blocking::Response> {
    srv.req("POST", &sb_path(sb, "/files/upload"), Some(KEY_A))
        .timeout(Duration::from_secs(60))
        .header("Content-Type", content_type)
        .body(body)
        .send()
}

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// `POST /files/upload` of `pairs`.
fn upload(srv: &Server, sb: &str, pairs: &[(Value, &[u8])]) -> Resp {
    Resp::of(upload_body(
        srv,
        sb,
        &multipart_type(),
        multipart(pairs, false),
    ))
}

/// Uploads one file to `path`.
fn put(srv: &Server, sb: &str, path: &str, bytes: &[u8]) -> Resp {
    upload(srv, sb, &[(json!({ "path": path }), bytes)])
}

/// A fresh string for canaries and secrets.
fn unique(what: &str) -> String {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what}-{}-{ns:x}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Canaries

/// Another sandbox's workspace file, with where the host sees it.
struct Victim {
    sb: String,
    name: String,
    secret: String,
    /// `/proc/<pid of one of its processes>/root/workspace`: its workspace as the host sees it.
    host_dir: PathBuf,
}

/// Host files an attack must never read, change or remove.
struct Canaries {
    _dir: tempfile::TempDir,
    /// A host directory (under /var/tmp) that holds only `canary`.
    dir: PathBuf,
    file: PathBuf,
    content: String,
    meta: (u32, i64, i64, u64, u64),
    hostname: Vec<u8>,
    victim: Victim,
    /// Text that must never appear in an answer.
    leaks: Vec<String>,
}

fn meta_of(p: &std::path::Path) -> (u32, i64, i64, u64, u64) {
    let m = std::fs::symlink_metadata(p).expect("canary metadata");
    (m.mode(), m.mtime(), m.mtime_nsec(), m.ino(), m.size())
}

impl Canaries {
    /// Writes the host canaries and starts a victim sandbox (tenant B) with a secret.
    fn plant(srv: &Server) -> Canaries {
        let dir = tempfile::Builder::new()
            .prefix("runcell-canary-")
            .tempdir_in("/var/tmp")
            .expect("a host directory for the canary");
        let file = dir.path().join("canary");
        let content = unique("host-canary");
        std::fs::write(&file, &content).expect("write the canary");
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        let hostname = std::fs::read("/etc/hostname").unwrap_or_default();

        // The victim: another tenant's sandbox with a secret in its workspace, kept alive by a
        // process through which the host sees that workspace.
        let vsb = create_as(srv, KEY_B, &json!({}))["id"]
            .as_str()
            .unwrap()
            .to_string();
        let name = unique("secret");
        let secret = unique("victim-secret");
        let r = send(
            srv.req("POST", &sb_path(&vsb, "/command"), Some(KEY_B))
                .timeout(Duration::from_secs(60)),
            Some(&json!({
                "command": format!("printf %s {secret} > /workspace/{name}; exec sleep 100000"),
                "background": true,
            })),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        let host_dir = crate::server::eventually(
            Duration::from_secs(10),
            "the victim's workspace as the host sees it",
            || {
                jail_procs(srv.pid()).into_iter().find_map(|p| {
                    let d = PathBuf::from(format!("/proc/{}/root/workspace", p.pid));
                    (cmdline(p.pid) == "sleep 100000"
                        && std::fs::read_to_string(d.join(&name)).ok()? == secret)
                        .then_some(d)
                })
            },
        );

        // (Paths and names are not secrets: error messages may repeat the path asked for.)
        let mut leaks = vec![content.clone(), secret.clone()];
        // A line of the host's passwd that the sandbox's generated one does not have.
        let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        if let Some(l) = host_passwd.lines().find(|l| {
            let user = l.split(':').next().unwrap_or_default();
            !l.is_empty() && !["root", "runner", "nobody"].contains(&user)
        }) {
            leaks.push(l.to_string());
        }
        if let Some(l) = std::fs::read_to_string("/etc/shadow")
            .unwrap_or_default()
            .lines()
            .next()
            .filter(|l| l.len() >= 12)
        {
            leaks.push(l.to_string());
        }
        Canaries {
            meta: meta_of(&file),
            dir: dir.path().to_path_buf(),
            _dir: dir,
            file,
            content,
            hostname,
            victim: Victim {
                sb: vsb,
                name,
                secret,
                host_dir,
            },
            leaks,
        }
    }

    /// Asserts a 4xx or a success that leaked nothing of the host or of the victim.
    #[track_caller]
    fn safe(&self, r: &Resp, what: &str) {
        assert!(
            r.status < 500,
            "{what}: a 5xx is a bug: {} {}",
            r.status,
            r.text
        );
        for l in &self.leaks {
            assert!(!r.text.contains(l.as_str()), "{what} leaked {l:?}: {r:?}");
        }
    }

    /// Asserts that every canary is as it was.
    #[track_caller]
    fn check(&self, srv: &Server) {
        assert_eq!(
            std::fs::read_to_string(&self.file).ok().as_deref(),
            Some(self.content.as_str()),
            "the host canary's content"
        );
        assert_eq!(
            meta_of(&self.file),
            self.meta,
            "the host canary's mode, mtime, inode and size"
        );
        let names: Vec<String> = std::fs::read_dir(&self.dir)
            .expect("the canary directory")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["canary"],
            "nothing new in the host canary directory"
        );
        assert_eq!(
            std::fs::read("/etc/hostname").unwrap_or_default(),
            self.hostname,
            "the host's /etc/hostname"
        );
        let v = &self.victim;
        assert_eq!(
            std::fs::read_to_string(v.host_dir.join(&v.name))
                .ok()
                .as_deref(),
            Some(v.secret.as_str()),
            "the victim's file, seen from the host"
        );
        let r = send(
            srv.req("POST", &sb_path(&v.sb, "/command"), Some(KEY_B))
                .header("Accept", "text/event-stream")
                .timeout(Duration::from_secs(60)),
            Some(&json!({"command": format!("cat /workspace/{}; echo; ls -A /workspace", v.name)})),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            r.text.contains(&format!("\"text\":\"{}\"", v.secret))
                && r.text.contains(&format!("\"text\":\"{}\"", v.name))
                && r.text.contains("execution_complete"),
            "the victim's file is there, unchanged: {}",
            r.text
        );
    }

    /// The host path of the victim's secret.
    fn victim_file(&self) -> String {
        self.victim
            .host_dir
            .join(&self.victim.name)
            .to_string_lossy()
            .into_owned()
    }
}

/// The sandbox's own `/etc/passwd` (read by a command).
fn sandbox_passwd(srv: &Server, sb: &str) -> String {
    let out = sh(srv, sb, "cat /etc/passwd");
    assert!(out.contains("runner:"), "{out}");
    format!("{out}\n")
}

// ---------------------------------------------------------------------------------------------
// Functional tests

/// Uploads two files in one request (one into new nested directories with `mode: 755`, one by
/// a relative path, metadata as a file part and as a plain field); `info` of both (type, size,
/// mode, owner `runner`); downloads whole (`attachment`), by `Range` (`206` and
/// `Content-Range`, suffix ranges, `416 RANGE_NOT_SATISFIABLE` for a bad one or one past the
/// end) and by lines (`offset`+`limit`); files cross between the API and commands both ways.
#[test]
fn upload_info_and_download() {
    let srv = Server::start();
    let sb = sandbox(&srv, &json!({}));

    let script = b"#!/bin/sh\necho from-upload\n";
    let text = b"line1\nline2\nline3\nline4\n";
    let r = upload(
        &srv,
        &sb,
        &[
            (
                json!({"path": "/workspace/up/new/deep/a.sh", "mode": 755}),
                script,
            ),
            (json!({"path": "rel.txt"}), text),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text);

    let a = info(&srv, &sb, "/workspace/up/new/deep/a.sh");
    assert_eq!(a["path"], "/workspace/up/new/deep/a.sh", "{a}");
    assert_eq!(a["type"], "file", "{a}");
    assert_eq!(a["size"], script.len(), "{a}");
    assert_eq!(a["mode"], 755, "{a}");
    assert_eq!(a["owner"], "runner", "{a}");
    assert_eq!(a["group"], "runner", "{a}");
    let t = info(&srv, &sb, "rel.txt");
    assert_eq!(
        t["path"], "/workspace/rel.txt",
        "relative to /workspace: {t}"
    );
    assert_eq!(t["type"], "file", "{t}");
    assert_eq!(t["size"], text.len(), "{t}");
    assert_eq!(t["owner"], "runner", "{t}");
    let d = info(&srv, &sb, "/workspace/up/new");
    assert_eq!(d["type"], "directory", "{d}");
    // Several paths at once; all or nothing.
    let r = get(
        &srv,
        &sb,
        "/files/info?path=rel.txt&path=/workspace/up/new/deep/a.sh",
    )
    .expect(200);
    let v = r.json();
    assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{v}");
    assert_eq!(v["rel.txt"]["size"], text.len(), "{v}");
    let r = get(&srv, &sb, "/files/info?path=rel.txt&path=/workspace/nope");
    execd_error(&r, 404, Some("FILE_NOT_FOUND"));

    // Whole.
    let r = download(&srv, &sb, "/workspace/up/new/deep/a.sh").expect(200);
    assert_eq!(r.text.as_bytes(), script, "{r:?}");
    let cd = r.header("content-disposition").unwrap_or_default();
    assert!(
        cd.starts_with("attachment") && cd.contains("a.sh"),
        "Content-Disposition: {r:?}"
    );
    let size = script.len();
    // Ranges.
    let r = download_range(&srv, &sb, "/workspace/up/new/deep/a.sh", "bytes=0-3");
    assert_eq!(r.status, 206, "{r:?}");
    assert_eq!(r.text, "#!/b", "{r:?}");
    assert_eq!(
        r.header("content-range").as_deref(),
        Some(format!("bytes 0-3/{size}").as_str()),
        "{r:?}"
    );
    let r = download_range(&srv, &sb, "/workspace/up/new/deep/a.sh", "bytes=-2");
    assert_eq!(r.status, 206, "{r:?}");
    assert_eq!(r.text, "d\n", "{r:?}");
    assert_eq!(
        r.header("content-range").as_deref(),
        Some(format!("bytes {}-{}/{size}", size - 2, size - 1).as_str()),
        "{r:?}"
    );
    let r = download_range(&srv, &sb, "/workspace/up/new/deep/a.sh", "bytes=10-");
    assert_eq!(r.status, 206, "{r:?}");
    assert_eq!(r.text.as_bytes(), &script[10..], "{r:?}");
    for bad in ["bytes=x", &format!("bytes={}-", size + 10)] {
        let r = download_range(&srv, &sb, "/workspace/up/new/deep/a.sh", bad);
        execd_error(&r, 416, Some("RANGE_NOT_SATISFIABLE"));
    }
    // Lines: offset is 1-based, limit a count.
    let r = get(
        &srv,
        &sb,
        &format!("/files/download{}&offset=2&limit=2", qp("rel.txt")),
    )
    .expect(200);
    assert_eq!(r.text, "line2\nline3\n", "{r:?}");
    let r = get(
        &srv,
        &sb,
        &format!("/files/download{}&offset=4&limit=10", qp("rel.txt")),
    )
    .expect(200);
    assert_eq!(r.text, "line4\n", "{r:?}");
    let r = get(
        &srv,
        &sb,
        &format!("/files/download{}&offset=2", qp("rel.txt")),
    );
    execd_error(&r, 400, Some("INVALID_REQUEST_BODY"));
    let r = get(
        &srv,
        &sb,
        &format!("/files/download{}&offset=0&limit=1", qp("rel.txt")),
    );
    execd_error(&r, 400, Some("INVALID_REQUEST_BODY"));
    execd_error(
        &download(&srv, &sb, "/workspace/nope"),
        404,
        Some("FILE_NOT_FOUND"),
    );
    execd_error(
        &download(&srv, &sb, "/workspace/up"),
        400,
        None, // IS_A_DIRECTORY or NOT_A_REGULAR_FILE
    );

    // The API's files are the commands' files, and the other way round.
    assert_eq!(
        sh(
            &srv,
            &sb,
            "cat rel.txt; /workspace/up/new/deep/a.sh; stat -c %U rel.txt"
        ),
        "line1\nline2\nline3\nline4\nfrom-upload\nrunner"
    );
    sh(&srv, &sb, "printf 'made by cmd' > /workspace/bycmd.txt");
    let r = download(&srv, &sb, "bycmd.txt").expect(200);
    assert_eq!(r.text, "made by cmd", "{r:?}");

    // Metadata as a plain form field works too; an upload replaces a file.
    let r = Resp::of(upload_body(
        &srv,
        &sb,
        &multipart_type(),
        multipart(&[(json!({"path": "rel.txt", "mode": 600}), b"v2")], true),
    ));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(download(&srv, &sb, "rel.txt").expect(200).text, "v2");
    assert_eq!(info(&srv, &sb, "rel.txt")["mode"], 600);
}

/// Directories and the other file operations: `POST /directories` (mode 700 on what it
/// creates), listings (depth 1 and 2, depth first, names in order), search by glob,
/// permissions (mode; ownership only to `runner`), moves (parent created; `409 FILE_EXISTS`;
/// `404` for a missing source), replace (with `replacedCount`), `DELETE /files` (a missing
/// file is fine, a directory is `400 IS_A_DIRECTORY`) and recursive `DELETE /directories`.
#[test]
fn directories_list_search_permissions_move_replace_delete() {
    let srv = Server::start();
    let sb = sandbox(&srv, &json!({}));

    let r = post(
        &srv,
        &sb,
        "/directories",
        &json!({"/workspace/d1/d2": {"mode": 700}, "d1/z": {"mode": 755}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(info(&srv, &sb, "/workspace/d1")["mode"], 700);
    let d2 = info(&srv, &sb, "/workspace/d1/d2");
    assert_eq!(
        (&d2["type"], &d2["mode"]),
        (&json!("directory"), &json!(700))
    );
    assert_eq!(info(&srv, &sb, "/workspace/d1/z")["mode"], 755);
    for (p, body) in [
        ("d1/b.txt", &b"foo bar foo\n"[..]),
        ("d1/a.py", b"print(1)\n"),
        ("d1/d2/c.txt", b"c\n"),
    ] {
        put(&srv, &sb, p, body).expect(200);
    }

    let w = |p: &str| format!("/workspace/{p}");
    let r = list(&srv, &sb, "/workspace/d1", 1).expect(200);
    assert_eq!(
        paths(&r),
        [w("d1/a.py"), w("d1/b.txt"), w("d1/d2"), w("d1/z")],
        "{}",
        r.text
    );
    assert!(!truncated(&r), "{r:?}");
    let r = list(&srv, &sb, "d1", 2).expect(200);
    assert_eq!(
        paths(&r),
        [
            w("d1/a.py"),
            w("d1/b.txt"),
            w("d1/d2"),
            w("d1/d2/c.txt"),
            w("d1/z")
        ],
        "depth first, names in order: {}",
        r.text
    );
    let ty = types(&r);
    assert_eq!(ty[&w("d1/d2")], "directory");
    assert_eq!(ty[&w("d1/a.py")], "file");

    let r = search(&srv, &sb, "/workspace/d1", "*.txt").expect(200);
    let found: BTreeSet<String> = paths(&r).into_iter().collect();
    assert_eq!(
        found,
        BTreeSet::from([w("d1/b.txt"), w("d1/d2/c.txt")]),
        "{}",
        r.text
    );
    let r = search(&srv, &sb, "/workspace/d1", "*").expect(200);
    assert!(
        !paths(&r).contains(&w("d1/d2")),
        "no directories: {}",
        r.text
    );

    // Permissions.
    let r = post(
        &srv,
        &sb,
        "/files/permissions",
        &json!({"/workspace/d1/b.txt": {"mode": 600}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(info(&srv, &sb, "/workspace/d1/b.txt")["mode"], 600);
    let r = post(
        &srv,
        &sb,
        "/files/permissions",
        &json!({"d1/a.py": {"mode": 640, "owner": "runner", "group": "runner"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(info(&srv, &sb, "d1/a.py")["mode"], 640);
    for body in [
        json!({"d1/a.py": {"mode": 644, "owner": "root"}}),
        json!({"d1/a.py": {"mode": 644, "group": "root"}}),
        json!({"d1/a.py": {"mode": 644, "owner": "0"}}),
        json!({"d1/a.py": {"mode": 789}}),
    ] {
        let r = post(&srv, &sb, "/files/permissions", &body);
        execd_error(&r, 400, None);
    }
    assert_eq!(info(&srv, &sb, "d1/a.py")["owner"], "runner");
    let r = post(
        &srv,
        &sb,
        "/files/permissions",
        &json!({"d1/missing": {"mode": 644}}),
    );
    execd_error(&r, 404, Some("FILE_NOT_FOUND"));

    // Moves.
    let r = post(
        &srv,
        &sb,
        "/files/mv",
        &json!([{"src": "/workspace/d1/b.txt", "dest": "/workspace/d1/moved/b2.txt"}]),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(info(&srv, &sb, "d1/moved/b2.txt")["size"], 12);
    execd_error(
        &info_raw(&srv, &sb, &enc("d1/b.txt")),
        404,
        Some("FILE_NOT_FOUND"),
    );
    let r = post(
        &srv,
        &sb,
        "/files/mv",
        &json!([{"src": "d1/a.py", "dest": "d1/d2/c.txt"}]),
    );
    execd_error(&r, 409, Some("FILE_EXISTS"));
    assert_eq!(download(&srv, &sb, "d1/d2/c.txt").expect(200).text, "c\n");
    let r = post(
        &srv,
        &sb,
        "/files/mv",
        &json!([{"src": "d1/nope", "dest": "d1/nope2"}]),
    );
    execd_error(&r, 404, Some("FILE_NOT_FOUND"));

    // Replace.
    let r = post(
        &srv,
        &sb,
        "/files/replace?verbose=true",
        &json!({"d1/moved/b2.txt": {"old": "foo", "new": "baz"},
                "/workspace/d1/a.py": {"old": "not-there", "new": "x"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json(),
        json!({"d1/moved/b2.txt": {"replacedCount": 2},
               "/workspace/d1/a.py": {"replacedCount": 0}}),
        "{}",
        r.text
    );
    assert_eq!(
        download(&srv, &sb, "d1/moved/b2.txt").expect(200).text,
        "baz bar baz\n"
    );
    assert_eq!(info(&srv, &sb, "d1/moved/b2.txt")["mode"], 600, "mode kept");
    let r = post(
        &srv,
        &sb,
        "/files/replace",
        &json!({"d1/moved/b2.txt": {"old": "bar", "new": "qux"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.trim().is_empty(), "no body without verbose: {r:?}");
    let r = post(
        &srv,
        &sb,
        "/files/replace",
        &json!({"d1/moved/b2.txt": {"old": "", "new": "x"}}),
    );
    execd_error(&r, 400, Some("INVALID_REQUEST_BODY"));
    let r = post(
        &srv,
        &sb,
        "/files/replace",
        &json!({"d1/none.txt": {"old": "a", "new": "b"}}),
    );
    execd_error(&r, 404, Some("FILE_NOT_FOUND"));

    // Deletes.
    let r = delete(&srv, &sb, &format!("/files{}", qp("d1/moved/b2.txt")));
    assert_eq!(r.status, 200, "{}", r.text);
    execd_error(
        &info_raw(&srv, &sb, &enc("d1/moved/b2.txt")),
        404,
        Some("FILE_NOT_FOUND"),
    );
    let r = delete(&srv, &sb, &format!("/files{}", qp("d1/moved/b2.txt")));
    assert_eq!(r.status, 200, "a missing file is fine: {}", r.text);
    let r = delete(&srv, &sb, &format!("/files{}", qp("d1/d2")));
    execd_error(&r, 400, Some("IS_A_DIRECTORY"));
    let r = delete(&srv, &sb, &format!("/directories{}", qp("/workspace/d1")));
    assert_eq!(r.status, 200, "{}", r.text);
    execd_error(
        &info_raw(&srv, &sb, &enc("d1")),
        404,
        Some("FILE_NOT_FOUND"),
    );
    assert_eq!(sh(&srv, &sb, "ls -A /workspace"), "");
}

/// An upload larger than the sandbox's `disk_mb` is refused with `413` (`PAYLOAD_TOO_LARGE`
/// when its declared length already says so, else `NO_SPACE` or `FILE_TOO_LARGE`) and leaves
/// no partial file; the sandbox's disk works afterwards.
#[test]
fn an_upload_over_the_disk_budget_is_refused_and_leaves_nothing() {
    let srv = Server::start();
    let sb = sandbox(&srv, &json!({"limits": {"disk_mb": 8}}));
    put(&srv, &sb, "small.txt", b"small").expect(200);
    let before = paths(&list(&srv, &sb, "/workspace", 3).expect(200));

    let big = vec![b'x'; 20 << 20];
    let resp = upload_body(
        &srv,
        &sb,
        &multipart_type(),
        multipart(&[(json!({"path": "/workspace/huge.bin"}), &big)], false),
    );
    match resp {
        Ok(r) => {
            let r = Resp::of(Ok(r));
            let v = execd_error(&r, 413, None);
            assert!(
                matches!(
                    v["code"].as_str(),
                    Some("NO_SPACE" | "FILE_TOO_LARGE" | "PAYLOAD_TOO_LARGE")
                ),
                "{v}"
            );
        }
        Err(e) => panic!("the server hung up instead of answering 413: {e}"),
    }
    let after = paths(&list(&srv, &sb, "/workspace", 3).expect(200));
    assert_eq!(after, before, "no partial file");
    assert_eq!(sh(&srv, &sb, "ls -A /workspace"), "small.txt");
    put(&srv, &sb, "again.txt", &vec![b'y'; 1 << 20]).expect(200);
    assert_eq!(info(&srv, &sb, "again.txt")["size"], 1 << 20);
}

/// Another tenant gets `404 SANDBOX_NOT_FOUND` on every files route of A's sandbox and changes
/// nothing; no credentials are `401 UNAUTHORIZED`; missing `path` queries are
/// `400 MISSING_QUERY`; malformed bodies and uploads are `400` with execd's codes.
#[test]
fn files_routes_refuse_strangers_and_bad_input() {
    let srv = Server::start();
    let sb = sandbox(&srv, &json!({}));
    put(&srv, &sb, "mine.txt", b"mine").expect(200);
    let before = info(&srv, &sb, "mine.txt");

    let p = qp("mine.txt");
    let cases: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/files/info{p}"), None),
        ("GET", format!("/files/download{p}"), None),
        (
            "GET",
            format!("/directories/list{}", qp("/workspace")),
            None,
        ),
        ("GET", format!("/files/search{}", qp("/workspace")), None),
        ("DELETE", format!("/files{p}"), None),
        ("DELETE", format!("/directories{}", qp("/workspace")), None),
        (
            "POST",
            "/directories".into(),
            Some(json!({"b-dir": {"mode": 755}})),
        ),
        (
            "POST",
            "/files/permissions".into(),
            Some(json!({"mine.txt": {"mode": 777}})),
        ),
        (
            "POST",
            "/files/mv".into(),
            Some(json!([{"src": "mine.txt", "dest": "b.txt"}])),
        ),
        (
            "POST",
            "/files/replace".into(),
            Some(json!({"mine.txt": {"old": "mine", "new": "b"}})),
        ),
    ];
    for (method, rest, body) in &cases {
        let path = sb_path(&sb, rest);
        let r = call(&srv, method, &path, Some(KEY_B), body.as_ref());
        execd_error(&r, 404, Some("SANDBOX_NOT_FOUND"));
        let r = call(&srv, method, &path, None, body.as_ref());
        execd_error(&r, 401, Some("UNAUTHORIZED"));
    }
    let body = multipart(&[(json!({"path": "mine.txt"}), b"B")], false);
    let r = Resp::of(
        srv.req("POST", &sb_path(&sb, "/files/upload"), Some(KEY_B))
            .header("Content-Type", multipart_type())
            .body(body)
            .send(),
    );
    execd_error(&r, 404, Some("SANDBOX_NOT_FOUND"));
    assert_eq!(download(&srv, &sb, "mine.txt").expect(200).text, "mine");
    assert_eq!(sh(&srv, &sb, "ls -A /workspace"), "mine.txt");
    assert_eq!(info(&srv, &sb, "mine.txt"), before, "unchanged");

    for rest in [
        "/files/download",
        "/directories/list",
        "/files/search",
        "/files",
    ] {
        let method = if rest == "/files" { "DELETE" } else { "GET" };
        let r = call(&srv, method, &sb_path(&sb, rest), Some(KEY_A), None);
        execd_error(&r, 400, Some("MISSING_QUERY"));
    }
    for bad in ["depth=x", "depth=-1"] {
        let r = get(
            &srv,
            &sb,
            &format!("/directories/list{}&{bad}", qp("/workspace")),
        );
        execd_error(&r, 400, Some("INVALID_REQUEST_BODY"));
    }
    let r = search(&srv, &sb, "/workspace", "[");
    execd_error(&r, 400, None);
    for (rest, body) in [
        ("/files/mv", json!({"src": "a", "dest": "b"})),
        ("/files/mv", json!([{"src": "mine.txt"}])),
        ("/files/permissions", json!(["mine.txt"])),
        ("/files/replace", json!({"mine.txt": "x"})),
        ("/directories", json!(["d"])),
    ] {
        let r = post(&srv, &sb, rest, &body);
        execd_error(&r, 400, Some("INVALID_REQUEST_BODY"));
    }

    // Uploads: not multipart; no metadata; bad metadata; no file.
    let r = Resp::of(upload_body(&srv, &sb, "application/json", b"{}".to_vec()));
    execd_error(&r, 400, Some("INVALID_FILE"));
    let only_file = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n\
         data\r\n--{BOUNDARY}--\r\n"
    );
    let r = Resp::of(upload_body(
        &srv,
        &sb,
        &multipart_type(),
        only_file.into_bytes(),
    ));
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        matches!(
            r.json()["code"].as_str(),
            Some("INVALID_FILE_METADATA" | "INVALID_FILE")
        ),
        "{}",
        r.text
    );
    let bad_meta = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"metadata\"\r\n\r\n\
         not json\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n\
         data\r\n--{BOUNDARY}--\r\n"
    );
    let r = Resp::of(upload_body(
        &srv,
        &sb,
        &multipart_type(),
        bad_meta.into_bytes(),
    ));
    execd_error(&r, 400, Some("INVALID_FILE_METADATA"));
    let only_meta = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"metadata\"\r\n\r\n\
         {{\"path\":\"x.txt\"}}\r\n--{BOUNDARY}--\r\n"
    );
    let r = Resp::of(upload_body(
        &srv,
        &sb,
        &multipart_type(),
        only_meta.into_bytes(),
    ));
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        matches!(
            r.json()["code"].as_str(),
            Some("INVALID_FILE_CONTENT" | "INVALID_FILE")
        ),
        "{}",
        r.text
    );
    execd_error(&info_raw(&srv, &sb, "x.txt"), 404, Some("FILE_NOT_FOUND"));
}

// ---------------------------------------------------------------------------------------------
// Attack suite

/// Every files route with each hostile path, reads first (so nothing a write plants is read
/// back by a later read), then writes; `check` judges each answer. Returns how many downloads
/// gave the sandbox's own `/etc/passwd` (which traversal strings may reach inside the view).
fn attack_every_route(
    srv: &Server,
    sb: &str,
    paths: &[&Hostile],
    own_passwd: &str,
    check: &dyn Fn(&Hostile, &Resp, &str),
) -> usize {
    let mut passwd_reads = 0;
    for h in paths.iter().copied() {
        check(h, &info_raw(srv, sb, &h.raw), "info");
        let r = download_raw(srv, sb, &h.raw);
        check(h, &r, "download");
        if r.status == 200 {
            // Only the passwd variants exist in the sandbox's view.
            assert_eq!(
                r.text, own_passwd,
                "download {:?}: the sandbox's passwd",
                h.json
            );
            passwd_reads += 1;
        }
        let r = get(
            srv,
            sb,
            &format!("/directories/list?path={}&depth=2", h.raw),
        );
        check(h, &r, "list");
        let r = get(srv, sb, &format!("/files/search?path={}&pattern=*", h.raw));
        check(h, &r, "search");
    }
    // Then writes.
    for (i, h) in paths.iter().copied().enumerate() {
        let r = post(
            srv,
            sb,
            "/files/permissions",
            &json!({ &h.json: {"mode": 777} }),
        );
        check(h, &r, "permissions");
        let r = post(
            srv,
            sb,
            "/files/replace",
            &json!({ &h.json: {"old": "root", "new": "pwned"} }),
        );
        check(h, &r, "replace");
        put(srv, sb, "/workspace/own.txt", b"own").expect(200);
        let r = post(
            srv,
            sb,
            "/files/mv",
            &json!([{"src": &h.json, "dest": format!("/workspace/stolen-{i}")}]),
        );
        check(h, &r, "mv from");
        let r = post(
            srv,
            sb,
            "/files/mv",
            &json!([{"src": "/workspace/own.txt", "dest": &h.json}]),
        );
        check(h, &r, "mv onto");
        check(h, &put(srv, sb, &h.json, b"attacker-bytes"), "upload");
        let r = delete(srv, sb, &format!("/files?path={}", h.raw));
        check(h, &r, "delete file");
        let r = post(srv, sb, "/directories", &json!({ &h.json: {"mode": 755} }));
        check(h, &r, "mkdir");
    }
    passwd_reads
}

/// One hostile path: the query value as it goes on the wire, and what it decodes to (the same
/// string in a JSON body or upload metadata).
struct Hostile {
    raw: String,
    json: String,
}

fn hostile(raw: &str, json: &str) -> Hostile {
    Hostile {
        raw: raw.into(),
        json: json.into(),
    }
}

fn plain(s: &str) -> Hostile {
    hostile(&enc(s), s)
}

/// ATTACK: traversal strings in `path` on every route (`../../etc/shadow`,
/// `/workspace/../../../root/.bashrc`, `%2e%2e%2f` once and twice encoded, backslashes, host
/// paths, 5000-character paths, NUL). They resolve inside the sandbox's view or are refused:
/// never a host file, never a 5xx; NUL, empty and over-long paths are `400 INVALID_PATH`; the
/// passwd read through the API is the sandbox's generated one; a write "above" the workspace
/// lands in the sandbox's own `/tmp`.
#[test]
fn traversal_strings_stay_inside_the_sandbox() {
    let srv = Server::start();
    let c = Canaries::plant(&srv);
    let sb = sandbox(&srv, &json!({}));
    let own_passwd = sandbox_passwd(&srv, &sb);
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert_ne!(own_passwd, host_passwd, "the sandbox has its own passwd");

    let canary = c.file.to_string_lossy().into_owned();
    let long_dots = format!("{}etc/passwd", "../".repeat(1700));
    let long_name = "a".repeat(5000);
    let long_dirs = "a/".repeat(2500);
    let ok_paths = [
        plain("../../etc/shadow"),
        plain("/workspace/../../../root/.bashrc"),
        plain("../../../../../../../../etc/passwd"),
        plain("/etc/passwd"),
        plain("/workspace/../etc/passwd"),
        hostile("%2e%2e%2f%2e%2e%2fetc%2fpasswd", "../../etc/passwd"),
        hostile("%2E%2E/%2E%2E/%2E%2E/root/.bashrc", "../../../root/.bashrc"),
        hostile(
            "%252e%252e%252f%252e%252e%252fetc%252fpasswd",
            "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        ),
        plain("..\\..\\etc\\passwd"),
        plain("..%2f..%2fetc%2fpasswd"),
        plain(&canary),
        plain(&format!("../../../../..{canary}")),
        plain(&c.victim_file()),
        plain(&format!("/proc/1/root{canary}")),
        plain("/proc/self/root/etc/passwd"),
        plain("//etc//passwd"),
        plain("/./etc/./passwd"),
        plain("~root/.bashrc"),
    ];
    let invalid = [
        hostile("a%00b", "a\0b"),
        hostile("%2e%2e%2f%00%2fetc%2fpasswd", "../\0/etc/passwd"),
        plain(&long_dots),
        plain(&long_name),
        plain(&long_dirs),
    ];

    let all = || ok_paths.iter().chain(invalid.iter());
    let is_bad = |h: &Hostile| h.json.contains('\0') || h.json.len() >= 5000;
    let what = |h: &Hostile, op: &str| format!("{op} {:?}", &h.raw[..h.raw.len().min(80)]);
    let check = |h: &Hostile, r: &Resp, op: &str| {
        c.safe(r, &what(h, op));
        if is_bad(h) {
            execd_error(r, 400, Some("INVALID_PATH"));
        }
    };

    // Reads first: nothing the attacks write can be read back by a later one.
    let paths: Vec<&Hostile> = all().collect();
    let passwd_reads = attack_every_route(&srv, &sb, &paths, &own_passwd, &check);
    assert!(passwd_reads >= 4, "the passwd variants are readable");
    // The host's passwd never came back, and nothing was stolen into the workspace.
    let listing = sh(&srv, &sb, "cat /workspace/stolen-* 2>/dev/null; true");
    for l in &c.leaks {
        assert!(!listing.contains(l.as_str()), "{listing}");
    }
    // Deleting "directories" with traversal strings, last (they may empty the workspace).
    for h in all() {
        let r = delete(&srv, &sb, &format!("/directories?path={}", h.raw));
        check(h, &r, "delete directory");
    }

    // A write "above" the workspace lands in the sandbox's own /tmp, not the host's.
    let name = unique("escape");
    let r = put(&srv, &sb, &format!("../../../../tmp/{name}"), b"inside");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(sh(&srv, &sb, &format!("cat /tmp/{name}")), "inside");
    assert!(!std::path::Path::new(&format!("/tmp/{name}")).exists());
    // Empty paths.
    for rest in ["/files/info?path=", "/files/download?path="] {
        let r = get(&srv, &sb, rest);
        let v = execd_error(&r, 400, None);
        assert!(
            matches!(v["code"].as_str(), Some("INVALID_PATH" | "MISSING_QUERY")),
            "{v}"
        );
    }
    let r = put(&srv, &sb, "", b"x");
    execd_error(&r, 400, None);

    c.check(&srv);
}

/// The entries of a listing or search answer as `(path, path_encoding)`, checking that the
/// flag is there exactly for encoded paths.
#[track_caller]
fn entries(r: &Resp) -> Vec<(String, bool)> {
    let v = r.json();
    v.as_array()
        .unwrap_or_else(|| panic!("an array: {}", r.text))
        .iter()
        .map(|fi| {
            assert_file_info(fi);
            let path = fi["path"].as_str().unwrap().to_string();
            let flagged = match fi.get("path_encoding") {
                None => false,
                Some(e) => {
                    assert_eq!(e, "percent", "{fi}");
                    true
                }
            };
            assert_eq!(flagged, path.starts_with("/%/"), "{fi}");
            (path, flagged)
        })
        .collect()
}

/// ATTACK: file names that are not UTF-8, written by code in the sandbox (`printf` octal
/// escapes), next to a decoy whose UTF-8 name is the encoded form of another (`caf%E9.txt`).
/// Listings and searches give every entry a path that round-trips (percent-encoded after the
/// marker `/%/`, flagged `"path_encoding": "percent"`); info, download, permissions, replace,
/// move, upload, mkdir, delete and delete-directory by that path reach exactly that file and
/// never the decoy. Raw non-UTF-8 bytes in a query are refused with a 400 that explains the
/// form. Encoded `/`, `..` and NUL (`%2F`, `%2E%2E`, `%00`), encoded host paths, `/proc` and
/// the victim's files stay inside the sandbox or are refused: host canaries and another
/// sandbox's files are checked at the end.
#[test]
fn non_utf8_names_round_trip_over_http() {
    let srv = Server::start();
    let c = Canaries::plant(&srv);
    let sb = sandbox(&srv, &json!({}));
    sh(
        &srv,
        &sb,
        r#"set -e; mkdir -p /workspace/n; cd /workspace/n
           printf latin1 > "$(printf 'caf\351.txt')"; printf decoy > 'caf%E9.txt'
           d=$(printf 'd\351'); mkdir "$d"; printf deep > "$d/$(printf 'x\377')"
           printf pct > "$(printf '50%%\376')"; ln -s /etc/passwd "$(printf 'l\375')""#,
    );
    let r = list(&srv, &sb, "/workspace/n", 2).expect(200);
    let listed = entries(&r);
    let listed_paths: Vec<&str> = listed.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        listed_paths,
        [
            "/%/workspace/n/50%25%FE",
            "/workspace/n/caf%E9.txt",
            "/%/workspace/n/caf%E9.txt",
            "/%/workspace/n/d%E9",
            "/%/workspace/n/d%E9/x%FF",
            "/%/workspace/n/l%FD",
        ],
        "{}",
        r.text
    );
    // Every listed path is accepted back by info, keyed as given, as the same entry.
    let listing = r.json();
    for (i, (p, _)) in listed.iter().enumerate() {
        let fi = info(&srv, &sb, p);
        assert_eq!(fi["path"], listing[i]["path"], "{fi}");
        assert_eq!(fi.get("path_encoding"), listing[i].get("path_encoding"));
        assert_eq!(fi["type"], listing[i]["type"], "{fi}");
    }
    let one = get(
        &srv,
        &sb,
        &format!(
            "/files/info{}&path={}",
            qp("/%/workspace/n/caf%E9.txt"),
            enc("/workspace/n/caf%E9.txt")
        ),
    )
    .expect(200)
    .json();
    assert_eq!(one.as_object().map(|o| o.len()), Some(2), "{one}");
    assert_eq!(one["/%/workspace/n/caf%E9.txt"]["size"], 6, "latin1: {one}");
    assert_eq!(one["/workspace/n/caf%E9.txt"]["size"], 5, "decoy: {one}");
    // Downloads by the listed paths get exactly those files.
    for (p, want) in [
        ("/%/workspace/n/caf%E9.txt", "latin1"),
        ("/%/workspace/n/caf%e9.txt", "latin1"),
        ("/workspace/n/caf%E9.txt", "decoy"),
        ("/%/workspace/n/d%E9/x%FF", "deep"),
        ("/%/workspace/n/50%25%FE", "pct"),
    ] {
        let r = download(&srv, &sb, p).expect(200);
        assert_eq!(r.text, want, "{p}");
    }
    let r = download(&srv, &sb, "/%/workspace/n/caf%E9.txt").expect(200);
    let cd = r.header("Content-Disposition").unwrap_or_default();
    assert!(
        cd.contains("filename*=UTF-8''caf%EF%BF%BD.txt"),
        "a lossy name to save as: {cd}"
    );
    let r = download_range(&srv, &sb, "/%/workspace/n/caf%E9.txt", "bytes=1-3").expect(206);
    assert_eq!(r.text, "ati");
    // The link is reported as a link and downloads what it points to inside the sandbox.
    let r = download(&srv, &sb, "/%/workspace/n/l%FD").expect(200);
    assert_eq!(r.text, sandbox_passwd(&srv, &sb));
    // Searches give the same paths; `?` matches the byte that is not UTF-8, not the decoy.
    let r = search(&srv, &sb, "/workspace/n", "caf?.txt").expect(200);
    assert_eq!(
        entries(&r),
        [("/%/workspace/n/caf%E9.txt".to_string(), true)],
        "{}",
        r.text
    );
    let r = search(&srv, &sb, "/%/workspace/n/d%E9", "*").expect(200);
    assert_eq!(
        entries(&r),
        [("/%/workspace/n/d%E9/x%FF".to_string(), true)],
        "{}",
        r.text
    );

    // Changes by the listed paths.
    post(
        &srv,
        &sb,
        "/files/permissions",
        &json!({"/%/workspace/n/caf%E9.txt": {"mode": 600}}),
    )
    .expect(200);
    assert_eq!(
        sh(
            &srv,
            &sb,
            r#"cd /workspace/n; stat -c %a "$(printf 'caf\351.txt')" caf%E9.txt"#
        ),
        "600\n644"
    );
    let r = post(
        &srv,
        &sb,
        "/files/replace?verbose=true",
        &json!({"/%/workspace/n/d%E9/x%FF": {"old": "deep", "new": "DEEP"}}),
    )
    .expect(200);
    assert_eq!(
        r.json(),
        json!({"/%/workspace/n/d%E9/x%FF": {"replacedCount": 1}})
    );
    assert_eq!(
        sh(&srv, &sb, r#"cat "$(printf '/workspace/n/d\351/x\377')""#),
        "DEEP"
    );
    post(
        &srv,
        &sb,
        "/files/mv",
        &json!([{"src": "/%/workspace/n/50%25%FE", "dest": "/%/workspace/n/new%F0dir/moved%FF"}]),
    )
    .expect(200);
    assert_eq!(
        sh(
            &srv,
            &sb,
            r#"cat "$(printf '/workspace/n/new\360dir/moved\377')""#
        ),
        "pct"
    );
    put(&srv, &sb, "/%/workspace/n/up%80.bin", b"uploaded").expect(200);
    assert_eq!(
        sh(&srv, &sb, r#"cat "$(printf '/workspace/n/up\200.bin')""#),
        "uploaded"
    );
    post(
        &srv,
        &sb,
        "/directories",
        &json!({"/%/workspace/n/mk%FF/sub": {"mode": 700}}),
    )
    .expect(200);
    assert_eq!(
        sh(
            &srv,
            &sb,
            r#"stat -c %a "$(printf '/workspace/n/mk\377/sub')""#
        ),
        "700"
    );
    let r = list(&srv, &sb, "/workspace/n", 3).expect(200);
    let after: Vec<String> = entries(&r).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        after,
        [
            "/workspace/n/caf%E9.txt",
            "/%/workspace/n/caf%E9.txt",
            "/%/workspace/n/d%E9",
            "/%/workspace/n/d%E9/x%FF",
            "/%/workspace/n/l%FD",
            "/%/workspace/n/mk%FF",
            "/%/workspace/n/mk%FF/sub",
            "/%/workspace/n/new%F0dir",
            "/%/workspace/n/new%F0dir/moved%FF",
            "/%/workspace/n/up%80.bin",
        ],
        "{}",
        r.text
    );
    // Deleting by the listed paths removes those entries, and only them.
    delete(
        &srv,
        &sb,
        &format!(
            "/files{}&path={}&path={}",
            qp("/%/workspace/n/l%FD"),
            enc("/%/workspace/n/caf%E9.txt"),
            enc("/%/workspace/n/up%80.bin")
        ),
    )
    .expect(200);
    for d in [
        "/%/workspace/n/d%E9",
        "/%/workspace/n/mk%FF",
        "/%/workspace/n/new%F0dir",
    ] {
        delete(&srv, &sb, &format!("/directories{}", qp(d))).expect(200);
    }
    assert_eq!(
        sh(&srv, &sb, "ls -A /workspace/n; cat /workspace/n/caf%E9.txt"),
        "caf%E9.txt\ndecoy"
    );
    assert!(sandbox_passwd(&srv, &sb).contains("runcell sandbox"));

    // Raw bytes that are not UTF-8 in a query are refused with an explanation, never read
    // lossily as another name.
    put(&srv, &sb, "/%/workspace/n/caf%E9.txt", b"latin1").expect(200);
    for rest in [
        "/files/info?path=%2Fworkspace%2Fn%2Fcaf%E9.txt",
        "/files/download?path=%2Fworkspace%2Fn%2Fcaf%E9.txt",
        "/directories/list?path=%2Fworkspace%2F%FF",
        "/files/search?path=%2Fworkspace%2F%FF",
    ] {
        let v = execd_error(&get(&srv, &sb, rest), 400, Some("INVALID_PATH"));
        assert!(
            v["message"].as_str().unwrap_or_default().contains("/%/"),
            "{v}"
        );
    }
    let r = delete(&srv, &sb, "/files?path=%2Fworkspace%2Fn%2Fcaf%E9.txt");
    execd_error(&r, 400, Some("INVALID_PATH"));
    assert_eq!(
        sh(&srv, &sb, r#"cat "$(printf '/workspace/n/caf\351.txt')""#),
        "latin1"
    );
    let r = get(&srv, &sb, "/files/search?path=%2Fworkspace&pattern=%FF");
    execd_error(&r, 400, Some("INVALID_REQUEST_BODY"));

    // Encoded traversal, host paths, /proc, the victim, NUL and malformed escapes.
    let hex = |s: &str| -> String { s.bytes().map(|b| format!("%{b:02X}")).collect() };
    let canary = c.file.to_string_lossy().into_owned();
    let own_passwd = sandbox_passwd(&srv, &sb);
    let ok_paths = [
        plain("/%/..%2F..%2F..%2Fetc%2Fshadow"),
        plain("/%/workspace%2F..%2F..%2F..%2Fetc%2Fpasswd"),
        plain("/%/%2E%2E/%2E%2E/%2e%2e/etc/passwd"),
        plain(&format!("/%/{}", hex(canary.trim_start_matches('/')))),
        plain(&format!("/%/..%2F..%2F..{}", hex(&canary))),
        plain(&format!("/%/proc%2F1%2Froot{}", hex(&canary))),
        plain(&format!(
            "/%/{}",
            hex(c.victim_file().trim_start_matches('/'))
        )),
        plain("/%/proc/self/root/etc/passwd"),
        plain("/%/proc%2F1%2Fenviron"),
        plain("/%/%2Froot%2F.bashrc"),
    ];
    let long_name = format!("/%/workspace/{}", "%FF".repeat(300));
    let invalid = [
        plain("/%/workspace/a%00b"),
        plain("/%/..%2F%00%2Fetc%2Fpasswd"),
        plain("/%/%"),
        plain("/%/workspace/%zz"),
        plain("/%/a%4"),
        plain(&long_name),
    ];
    let all = || ok_paths.iter().chain(invalid.iter());
    let is_bad = |h: &Hostile| invalid.iter().any(|i| i.json == h.json);
    let what = |h: &Hostile, op: &str| format!("{op} {:?}", &h.json[..h.json.len().min(80)]);
    let check = |h: &Hostile, r: &Resp, op: &str| {
        c.safe(r, &what(h, op));
        if is_bad(h) {
            execd_error(r, 400, Some("INVALID_PATH"));
        }
    };
    let paths: Vec<&Hostile> = all().collect();
    let passwd_reads = attack_every_route(&srv, &sb, &paths, &own_passwd, &check);
    assert!(passwd_reads >= 2, "encoded dots reach the sandbox's passwd");
    for h in all() {
        let r = delete(&srv, &sb, &format!("/directories?path={}", h.raw));
        check(h, &r, "delete directory");
    }
    let stolen = sh(&srv, &sb, "cat /workspace/stolen-* 2>/dev/null; true");
    for l in &c.leaks {
        assert!(!stolen.contains(l.as_str()), "{stolen}");
    }
    // A write "above" the workspace through encoded dots lands in the sandbox's own /tmp.
    put(
        &srv,
        &sb,
        "/%/workspace%2F..%2F..%2Ftmp%2Fesc%FF",
        b"inside",
    )
    .expect(200);
    assert_eq!(sh(&srv, &sb, r#"cat "$(printf '/tmp/esc\377')""#), "inside");
    assert!(
        !std::path::Path::new(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"/tmp/esc\xFF")
        )
        .exists()
    );
    c.check(&srv);
}

/// The links a sandbox plants for [`symlinks_planted_in_the_sandbox_never_lead_out`].
fn plant_links(srv: &Server, sb: &str, c: &Canaries) -> Vec<&'static str> {
    let canary_dir = c.dir.to_string_lossy();
    let script = format!(
        "cd /workspace && rm -rf l_* real moved && \
         ln -s {file} l_file && ln -s {canary_dir} l_dir && \
         ln -s ../../../../../../..{canary_dir} l_rel && \
         ln -s /proc/1/root/etc/shadow l_shadow && ln -s /proc/1/root l_proc1 && \
         ln -s /proc/self/root l_self && \
         ln -s {vfile} l_victim && ln -s {vdir} l_vdir && \
         mkdir real && ln -s ../l_dir real/up && ls -A",
        file = c.file.display(),
        vfile = c.victim_file(),
        vdir = c.victim.host_dir.display(),
    );
    sh(srv, sb, &script);
    vec![
        "l_file", "l_dir", "l_rel", "l_shadow", "l_proc1", "l_self", "l_victim", "l_vdir",
        "real/up",
    ]
}

/// ATTACK: symlinks planted by code in the sandbox (to the host canary and its directory, by
/// absolute and by climbing relative paths, to `/proc/1/root/etc/shadow`, `/proc/1/root`,
/// `/proc/self/root`, to another sandbox's workspace as the host sees it, and a link to a link)
/// as the final and as an intermediate component of every route: nothing on the host is read
/// or changed; answers are 4xx or act inside the sandbox (a listing shows links as links; an
/// upload onto a link replaces the link; deleting a link deletes the link only).
#[test]
fn symlinks_planted_in_the_sandbox_never_lead_out() {
    let srv = Server::start();
    let c = Canaries::plant(&srv);
    let sb = sandbox(&srv, &json!({}));
    let links = plant_links(&srv, &sb, &c);

    // Reads.
    for l in &links {
        for p in [
            l.to_string(),
            format!("{l}/canary"),
            format!("{l}/{}", c.victim.name),
            format!("{l}/etc/shadow"),
        ] {
            let r = info_raw(&srv, &sb, &enc(&p));
            c.safe(&r, &format!("info {p}"));
            if r.status == 200 && p == *l {
                assert_eq!(
                    r.json()[&p]["type"],
                    "symlink",
                    "never followed: {}",
                    r.text
                );
            }
            let r = download(&srv, &sb, &p);
            c.safe(&r, &format!("download {p}"));
            assert!(
                (400..500).contains(&r.status),
                "download {p}: nothing there in the sandbox's view: {r:?}"
            );
            for r in [list(&srv, &sb, &p, 3), search(&srv, &sb, &p, "*")] {
                c.safe(&r, &format!("list/search {p}"));
            }
        }
    }
    // A link to the root of the view: the sandbox's own files.
    sh(&srv, &sb, "ln -s / /workspace/l_root");
    let r = download(&srv, &sb, "l_root/etc/passwd").expect(200);
    assert_eq!(r.text, sandbox_passwd(&srv, &sb), "{r:?}");
    c.safe(&r, "download l_root/etc/passwd");
    let r = list(&srv, &sb, "/workspace", 5).expect(200);
    c.safe(&r, "list /workspace");
    let ty = types(&r);
    for l in links.iter().chain(["l_root"].iter()) {
        let p = format!("/workspace/{l}");
        assert_eq!(
            ty.get(&p).map(String::as_str),
            Some("symlink"),
            "{p}: {}",
            r.text
        );
        assert!(
            !ty.keys().any(|k| k.starts_with(&format!("{p}/"))),
            "links are never followed: {}",
            r.text
        );
    }
    let r = search(&srv, &sb, "/workspace", "*").expect(200);
    c.safe(&r, "search /workspace");
    let ty = types(&r);
    assert_eq!(
        ty.get("/workspace/l_file").map(String::as_str),
        Some("symlink"),
        "{}",
        r.text
    );
    assert!(
        ty.keys().all(|k| links
            .iter()
            .chain(["l_root"].iter())
            .all(|l| !k.starts_with(&format!("/workspace/{l}/")))),
        "{}",
        r.text
    );
    c.check(&srv);

    // Writes through a link (intermediate component).
    put(&srv, &sb, "/workspace/own.txt", b"own").expect(200);
    for l in &links {
        for p in [
            format!("{l}/canary"),
            format!("{l}/new/x"),
            format!("{l}/{}", c.victim.name),
        ] {
            let what = |op: &str| format!("{op} {p}");
            c.safe(&put(&srv, &sb, &p, b"attacker-bytes"), &what("upload"));
            c.safe(
                &post(
                    &srv,
                    &sb,
                    "/files/permissions",
                    &json!({ &p: {"mode": 777} }),
                ),
                &what("permissions"),
            );
            c.safe(
                &post(
                    &srv,
                    &sb,
                    "/files/replace",
                    &json!({ &p: {"old": "host", "new": "pwned"} }),
                ),
                &what("replace"),
            );
            c.safe(
                &post(
                    &srv,
                    &sb,
                    "/files/mv",
                    &json!([{"src": &p, "dest": "/workspace/stolen"}]),
                ),
                &what("mv from"),
            );
            c.safe(
                &post(
                    &srv,
                    &sb,
                    "/files/mv",
                    &json!([{"src": "/workspace/own.txt", "dest": &p}]),
                ),
                &what("mv onto"),
            );
            put(&srv, &sb, "/workspace/own.txt", b"own").expect(200);
            c.safe(
                &delete(&srv, &sb, &format!("/files{}", qp(&p))),
                &what("delete"),
            );
            c.safe(
                &post(
                    &srv,
                    &sb,
                    "/directories",
                    &json!({ format!("{p}/d"): {"mode": 777} }),
                ),
                &what("mkdir"),
            );
            c.safe(
                &delete(&srv, &sb, &format!("/directories{}", qp(&p))),
                &what("delete directory"),
            );
        }
    }
    let stolen = sh(&srv, &sb, "cat /workspace/stolen 2>/dev/null; true");
    for l in &c.leaks {
        assert!(!stolen.contains(l.as_str()), "{stolen}");
    }
    c.check(&srv);

    // The links themselves (final component).
    for l in &links {
        let r = post(
            &srv,
            &sb,
            "/files/permissions",
            &json!({ *l: {"mode": 777} }),
        );
        c.safe(&r, &format!("permissions {l}"));
    }
    c.check(&srv);
    let links = plant_links(&srv, &sb, &c);
    for l in &links {
        let r = delete(&srv, &sb, &format!("/directories{}", qp(l)));
        c.safe(&r, &format!("delete directory {l}"));
    }
    c.check(&srv);
    let links = plant_links(&srv, &sb, &c);
    for l in &links {
        let r = delete(&srv, &sb, &format!("/files{}", qp(l)));
        c.safe(&r, &format!("delete {l}"));
        assert_eq!(
            r.status, 200,
            "deleting a link deletes the link: {}",
            r.text
        );
    }
    assert_eq!(
        sh(
            &srv,
            &sb,
            "ls -A /workspace/real; ls /workspace | grep -c l_ || true"
        ),
        "0"
    );
    c.check(&srv);
    let links = plant_links(&srv, &sb, &c);
    for (i, l) in links.iter().enumerate() {
        let r = post(
            &srv,
            &sb,
            "/files/mv",
            &json!([{"src": l, "dest": format!("/workspace/moved/{i}")}]),
        );
        c.safe(&r, &format!("mv {l}"));
        assert_eq!(r.status, 200, "a link moves as a link: {}", r.text);
    }
    assert_eq!(
        sh(
            &srv,
            &sb,
            "cd /workspace/moved && for f in *; do [ -L $f ] || echo $f; done"
        ),
        "",
        "the moved entries are still links"
    );
    c.check(&srv);
    let links = plant_links(&srv, &sb, &c);
    for l in &links {
        let r = put(&srv, &sb, l, b"replaced-the-link");
        c.safe(&r, &format!("upload onto {l}"));
        assert_eq!(r.status, 200, "an upload replaces a link: {}", r.text);
        let out = sh(
            &srv,
            &sb,
            &format!("[ -L /workspace/{l} ] && echo still-a-link; cat /workspace/{l}"),
        );
        assert_eq!(out, "replaced-the-link", "{l}");
    }
    c.check(&srv);
}

/// ATTACK: a symlink swap race. Code in the sandbox turns `/workspace/x` into a directory, a
/// link to `/`, to `/etc` and to the host canary's directory, in a tight loop, while two
/// clients hammer upload, download, permissions, mv and delete on `x/canary` for 3 s: no 5xx,
/// nothing leaks, no host canary changes.
#[test]
fn a_symlink_swapped_in_a_loop_never_leads_out() {
    let srv = Server::start();
    let c = Canaries::plant(&srv);
    let sb = sandbox(&srv, &json!({}));
    let script = [
        "import os, shutil, time",
        "os.chdir('/workspace')",
        &format!("targets = ['/', '/etc', '{}']", c.dir.display()),
        "end = time.time() + 60",
        "i = 0",
        "while time.time() < end:",
        "    i += 1",
        "    try: os.symlink(targets[i % 3], 'x')",
        "    except OSError: pass",
        "    try: os.unlink('x')",
        "    except OSError: pass",
        "    try: os.mkdir('x')",
        "    except OSError: pass",
        "    shutil.rmtree('x', ignore_errors=True)",
    ]
    .join("\n");
    let ran = command(
        &srv,
        &sb,
        &json!({"command": "exec python3 -c \"$SCRIPT\"", "envs": {"SCRIPT": script},
                "background": true}),
    );
    assert_eq!(ran.last()["type"], "execution_complete", "{ran}");
    let swapper = ran.init();
    // The loop is going.
    crate::server::eventually(Duration::from_secs(10), "the swapper to run", || {
        let r = info_raw(&srv, &sb, "x");
        (r.status == 200).then_some(())
    });

    let end = Instant::now() + Duration::from_secs(3);
    let counts = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let (srv, c, sb) = (&srv, &c, &sb);
                s.spawn(move || {
                    let mut n: HashMap<u16, usize> = HashMap::new();
                    let mut i = 0usize;
                    while Instant::now() < end {
                        i += 1;
                        let p = if (i + w).is_multiple_of(2) {
                            "x/canary"
                        } else {
                            "/workspace/x/canary"
                        };
                        let r = match i % 6 {
                            0 => put(srv, sb, p, b"attacker-bytes"),
                            1 => download(srv, sb, p),
                            2 => post(srv, sb, "/files/permissions", &json!({ p: {"mode": 777} })),
                            3 => post(
                                srv,
                                sb,
                                "/files/mv",
                                &json!([{"src": p, "dest": format!("/workspace/got-{w}-{i}")}]),
                            ),
                            4 => delete(srv, sb, &format!("/files{}", qp(p))),
                            _ => info_raw(srv, sb, &enc(p)),
                        };
                        c.safe(&r, &format!("op {} on {p} during the swaps", i % 6));
                        if i % 6 == 1 && r.status == 200 {
                            assert_eq!(r.text, "attacker-bytes", "only what we wrote: {r:?}");
                        }
                        *n.entry(r.status).or_default() += 1;
                    }
                    n
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|h| h.join().expect("a client thread"))
            .collect::<Vec<_>>()
    });
    let total: usize = counts.iter().flat_map(|m| m.values()).sum();
    assert!(total >= 20, "the clients made {total} requests: {counts:?}");

    let r = delete(&srv, &sb, &format!("/command?id={swapper}"));
    assert_eq!(r.status, 200, "{}", r.text);
    let got = sh(&srv, &sb, "cat /workspace/got-* 2>/dev/null; true");
    for l in &c.leaks {
        assert!(!got.contains(l.as_str()), "{got}");
    }
    c.check(&srv);
}

/// ATTACK: a FIFO, sockets, devices, `/proc` and `/sys` (directly and through links): refused
/// with a 4xx within a second, never opened for reading (no hang) and never a 5xx.
#[test]
fn fifos_devices_proc_and_sys_are_refused_at_once() {
    let srv = Server::start();
    let c = Canaries::plant(&srv);
    let sb = sandbox(&srv, &json!({}));
    sh(
        &srv,
        &sb,
        "cd /workspace && mkfifo p && ln -s /workspace/p pl && ln -s /dev/zero z && \
         ln -s /proc/self/environ pe && ln -s /sys sy && \
         python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"/workspace/s.sock\")'",
    );
    let fi = info(&srv, &sb, "/workspace/p");
    assert_eq!(fi["type"], "other", "a FIFO is `other`: {fi}");

    let quick = |method: &str, rest: String, what: &str| {
        let (r, took) = timed(&srv, method, &sb, &rest);
        c.safe(&r, what);
        assert!(
            (400..500).contains(&r.status),
            "{what}: expected a 4xx, got {r:?}"
        );
        assert!(took < Duration::from_secs(1), "{what} took {took:?}");
        r
    };
    for p in [
        "/workspace/p",
        "p",
        "pl",
        "/workspace/s.sock",
        "/dev/zero",
        "/dev/urandom",
        "/dev/null",
        "z",
        "/proc/self/environ",
        "/proc/1/environ",
        "/proc/self/root/etc/passwd",
        "pe",
        "/sys/kernel/notes",
        "sy/kernel/notes",
    ] {
        quick(
            "GET",
            format!("/files/download{}", qp(p)),
            &format!("download {p}"),
        );
        quick(
            "GET",
            format!("/files/download{}&offset=1&limit=1", qp(p)),
            &format!("download lines of {p}"),
        );
    }
    // `/proc` is refused as such: `403 PERMISSION_DENIED` (checked at the end, all at once,
    // after the safety checks). What is not in the sandbox's view at all (it has no `/sys`, and
    // `/proc/self` names no process of the sandbox from the server's side) is a 404, or a 403.
    let mut not_denied = Vec::new();
    let mut denied = |r: Resp, what: String, absent_ok: bool| {
        let absent = absent_ok && r.status == 404 && r.text.contains("\"FILE_NOT_FOUND\"");
        if !absent && (r.status != 403 || !r.text.contains("\"PERMISSION_DENIED\"")) {
            not_denied.push(format!("{what}: {} {}", r.status, r.text));
        }
    };
    for (p, absent_ok) in [
        ("/proc/self/environ", true),
        ("/proc/1/environ", false),
        ("pe", true),
    ] {
        let r = quick("GET", format!("/files/download{}", qp(p)), p);
        denied(r, format!("download {p}"), absent_ok);
    }
    for (p, absent_ok) in [
        ("/proc", false),
        ("/proc/1", false),
        ("/sys", true),
        ("/sys/kernel", true),
    ] {
        let r = quick(
            "GET",
            format!("/directories/list{}", qp(p)),
            &format!("list {p}"),
        );
        denied(r, format!("list {p}"), absent_ok);
        let r = quick("GET", format!("/files/info{}", qp(p)), &format!("info {p}"));
        denied(r, format!("info {p}"), absent_ok);
        quick(
            "GET",
            format!("/files/search{}", qp(p)),
            &format!("search {p}"),
        );
    }
    // Writes that would open the FIFO or a device: refused (or the FIFO replaced) at once.
    for p in ["p", "pl"] {
        let t = Instant::now();
        let r = post(
            &srv,
            &sb,
            "/files/replace",
            &json!({ p: {"old": "a", "new": "b"} }),
        );
        c.safe(&r, &format!("replace {p}"));
        assert!((400..500).contains(&r.status), "replace {p}: {r:?}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "replace {p}: {:?}",
            t.elapsed()
        );
    }
    for p in ["/dev/null", "z", "/proc/self/environ"] {
        let t = Instant::now();
        let r = put(&srv, &sb, p, b"x");
        c.safe(&r, &format!("upload {p}"));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "upload {p}: {:?}",
            t.elapsed()
        );
    }
    let t = Instant::now();
    let r = put(&srv, &sb, "/workspace/p", b"into the fifo");
    c.safe(&r, "upload onto the FIFO");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "upload onto the FIFO took {:?}",
        t.elapsed()
    );
    if r.status == 200 {
        assert_eq!(
            download(&srv, &sb, "/workspace/p").expect(200).text,
            "into the fifo",
            "the FIFO was replaced by a file"
        );
    }
    c.check(&srv);
    assert!(
        not_denied.is_empty(),
        "/proc and /sys must be refused with 403 PERMISSION_DENIED:\n{}",
        not_denied.join("\n")
    );
}

/// ATTACK: a directory of 200,000 files and link loops. Listing and searching the big directory
/// answer 10,000 entries with `X-Runcell-Truncated: true` within 3 s; loops (`a → b → a`,
/// `up → ..`, `self → .`, `root → /`) end quickly, shown as symlinks and never followed.
#[test]
fn huge_directories_and_link_loops_end_quickly() {
    let srv = Server::start();
    let c = Canaries::plant(&srv);
    let sb = sandbox(
        &srv,
        &json!({"limits": {"disk_mb": 4096, "memory_mb": 2048}}),
    );
    let script = [
        "import os",
        "os.mkdir('/workspace/big')",
        "for i in range(200000):",
        "    os.close(os.open('/workspace/big/f%06d' % i, os.O_CREAT | os.O_WRONLY, 0o644))",
    ]
    .join("\n");
    let ran = command(
        &srv,
        &sb,
        &json!({
            "command": "python3 -c \"$SCRIPT\" && ls -f /workspace/big | wc -l",
            "envs": {"SCRIPT": script},
            "timeout": 180_000,
        }),
    );
    assert_eq!(ran.exit(), "0", "{ran}");
    assert_eq!(ran.output("stdout"), "200002", "{ran}");

    for (what, rest) in [
        (
            "list",
            format!("/directories/list{}&depth=1", qp("/workspace/big")),
        ),
        (
            "search",
            format!("/files/search{}&pattern=*", qp("/workspace/big")),
        ),
        (
            "list /workspace",
            format!("/directories/list{}&depth=3", qp("/workspace")),
        ),
    ] {
        let t = Instant::now();
        let r = get(&srv, &sb, &rest);
        let took = t.elapsed();
        assert_eq!(
            r.status,
            200,
            "{what}: {}",
            &r.text[..r.text.len().min(500)]
        );
        let p = paths(&r);
        assert_eq!(p.len(), 10_000, "{what}: at most 10,000 entries");
        assert!(
            truncated(&r),
            "{what}: X-Runcell-Truncated: {:?}",
            r.headers
        );
        assert!(took < Duration::from_secs(3), "{what} took {took:?}");
        let distinct: BTreeSet<&String> = p.iter().collect();
        assert_eq!(distinct.len(), p.len(), "{what}: no duplicates");
        if what == "list" {
            assert!(p.windows(2).all(|w| w[0] < w[1]), "{what}: names in order");
        }
    }

    sh(
        &srv,
        &sb,
        "mkdir /workspace/loop && cd /workspace/loop && ln -s a b && ln -s b a && \
         ln -s .. up && ln -s . self && ln -s / root && mkdir d && echo x > d/f.txt && \
         ln -s ../.. d/upup",
    );
    let l = |n: &str| format!("/workspace/loop/{n}");
    let t = Instant::now();
    let r = list(&srv, &sb, "/workspace/loop", 20).expect(200);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(!truncated(&r), "{r:?}");
    assert_eq!(
        paths(&r),
        [
            l("a"),
            l("b"),
            l("d"),
            l("d/f.txt"),
            l("d/upup"),
            l("root"),
            l("self"),
            l("up")
        ],
        "{}",
        r.text
    );
    let ty = types(&r);
    for n in ["a", "b", "d/upup", "root", "self", "up"] {
        assert_eq!(ty[&l(n)], "symlink", "{n}: {}", r.text);
    }
    let t = Instant::now();
    let r = search(&srv, &sb, "/workspace/loop", "*").expect(200);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let found: BTreeSet<String> = paths(&r).into_iter().collect();
    let want: BTreeSet<String> = ["a", "b", "d/f.txt", "d/upup", "root", "self", "up"]
        .iter()
        .map(|n| l(n))
        .collect();
    assert_eq!(found, want, "{}", r.text);
    for p in ["a", "b", "up", "self", "d/upup", "a/x"] {
        for rest in [
            format!("/files/info{}", qp(&l(p))),
            format!("/files/download{}", qp(&l(p))),
            format!("/directories/list{}&depth=50", qp(&l(p))),
            format!("/files/search{}&pattern=*", qp(&l(p))),
        ] {
            let (r, took) = timed(&srv, "GET", &sb, &rest);
            c.safe(&r, &rest);
            assert!(took < Duration::from_secs(3), "{rest} took {took:?}");
        }
    }
    c.check(&srv);
}

/// Hard links inside the workspace are ordinary files to the API. Host files cannot be
/// hard-linked into a sandbox at all: everything the sandbox sees of the host (its root, the
/// read-only binds of `/usr` and some `/etc` files) is on other file systems than its
/// `/workspace`, and `link(2)` across file systems fails (`EXDEV`), so a hard link can never
/// smuggle a host inode into the workspace.
#[test]
fn hard_links_stay_inside_the_workspace() {
    let srv = Server::start();
    let c = Canaries::plant(&srv);
    let sb = sandbox(&srv, &json!({}));
    sh(
        &srv,
        &sb,
        "echo data > /workspace/orig.txt && ln /workspace/orig.txt /workspace/hard.txt",
    );
    let fi = info(&srv, &sb, "hard.txt");
    assert_eq!(
        (&fi["type"], &fi["size"]),
        (&json!("file"), &json!(5)),
        "{fi}"
    );
    assert_eq!(download(&srv, &sb, "hard.txt").expect(200).text, "data\n");
    let r = delete(&srv, &sb, &format!("/files{}", qp("hard.txt")));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(download(&srv, &sb, "orig.txt").expect(200).text, "data\n");

    for target in [
        "/etc/hostname",
        "/etc/passwd",
        "/etc/ld.so.cache",
        "/usr/bin/bash",
    ] {
        let ran = command(
            &srv,
            &sb,
            &json!({ "command": format!("ln {target} /workspace/h") }),
        );
        assert_ne!(ran.exit(), "0", "ln {target} must fail: {ran}");
    }
    execd_error(&info_raw(&srv, &sb, "h"), 404, Some("FILE_NOT_FOUND"));
    c.check(&srv);
}
