//! The web playground in a real browser (docs/playground.md): Debian's headless Chromium
//! driven over WebDriver (`driver.rs`) against `runcell serve`. Each test fails, never skips,
//! when Chromium or chromedriver is missing.
//!
//! Screenshots of the main views are taken by every run; with `RUNCELL_SCREENSHOTS=1` they are
//! written to `docs/playground/` (the README's pictures), else to a temporary directory.

mod driver;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::server::{KEY_A, KEY_B, Opts, Server};
use driver::Browser;

const OPERATOR: &str = "it-operator-key-0123456789abcdef";
const LONG: Duration = Duration::from_secs(90);

/// Where screenshots go, and the temporary directory that holds them when not in docs/.
fn screenshot_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    if std::env::var_os("RUNCELL_SCREENSHOTS").is_some_and(|v| v == "1") {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/playground");
        (dir, None)
    } else {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        (tmp.path().to_path_buf(), Some(tmp))
    }
}

/// A fragment value of a deep link (percent-encoded).
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Replaces the editor's code (CodeMirror's own API: typing would be auto-indented).
fn set_code(b: &Browser, code: &str) {
    b.js(
        "document.querySelector('.CodeMirror').CodeMirror.setValue(arguments[0]);",
        json!([code]),
    );
}

/// Chooses a language in the picker as a user would (a `change` event).
fn pick_language(b: &Browser, id: &str) {
    let ok = b.js(
        "const s = document.getElementById('language');
         if (![...s.options].some(o => o.value === arguments[0] && !o.disabled)) return false;
         s.value = arguments[0]; s.dispatchEvent(new Event('change')); return true;",
        json!([id]),
    );
    assert_eq!(ok, true, "language {id} is not offered");
}

/// Opens the playground and enters the key A through the key form (keystrokes).
fn open_with_key(b: &Browser, srv: &Server) {
    b.goto(&format!("{}/playground", srv.url));
    let key = b.find("#api-key");
    b.clear(&key);
    b.type_into(&key, KEY_A);
    b.click(&b.find("#save-key"));
    b.wait(LONG, "the languages to load", || {
        let n = b.js(
            "return document.querySelectorAll('#language option[value=python]').length;",
            json!([]),
        );
        (n == 1).then_some(())
    });
    assert_eq!(
        b.js("return localStorage.getItem('runcell.apiKey');", json!([])),
        KEY_A,
        "the key is kept in local storage"
    );
}

/// A screenshot of the whole page from its top (a window `height` tall), then the window as
/// it was.
fn shot(b: &Browser, path: &std::path::Path, height: u32) {
    b.set_window(1280, height);
    b.js("window.scrollTo(0, 0);", json!([]));
    b.screenshot(path);
    b.set_window(1280, 900);
}

/// Clicks Run and waits for the run's result (the exit code field).
fn run_and_wait(b: &Browser) -> String {
    b.click(&b.find("#run"));
    b.wait(LONG, "the result", || {
        let t = b.content("#result [data-field=exit-code]");
        (!t.is_empty()).then_some(t)
    })
}

#[test]
fn playground_runs_code_streams_output_and_follows_deep_links() {
    let srv = Server::start();
    let (shots, _tmp) = screenshot_dir();
    let b = Browser::start(1280, 900);
    open_with_key(&b, &srv);

    // print(42), streamed, with the result's fields.
    set_code(&b, "print(42)\n");
    let exit = run_and_wait(&b);
    assert_eq!(exit, "0");
    assert_eq!(b.content("#stdout-out"), "42\n");
    assert_eq!(b.content("#result [data-field=limit-exceeded]"), "none");
    assert!(
        b.content("#result [data-field=time]").ends_with(" s"),
        "{}",
        b.content("#result")
    );
    b.assert_no_console_errors();

    // Every control has a name for assistive technology, and Ctrl+Enter runs from the keyboard.
    let unlabelled = b.js(
        "return [...document.querySelectorAll('input, select, textarea, button')]
           .filter(e => !e.closest('.CodeMirror') || e.tagName === 'TEXTAREA')
           .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                        && !e.textContent.trim())
           .map(e => e.outerHTML.slice(0, 80));",
        json!([]),
    );
    assert_eq!(unlabelled, json!([]), "controls without a label");
    set_code(&b, "print(43)\n");
    b.js(
        "document.querySelector('.CodeMirror').CodeMirror.focus();",
        json!([]),
    );
    b.type_into(&b.find(".CodeMirror textarea"), "\u{E009}\u{E007}\u{E000}");
    b.wait_text("#stdout-out", "43", LONG);
    b.wait(LONG, "the run to finish", || {
        (!b.content("#result [data-field=exit-code]").is_empty()).then_some(())
    });

    // A C program that does not compile: the compiler's message.
    pick_language(&b, "c");
    set_code(&b, "int main(void) { return undefined_thing; }\n");
    let exit = run_and_wait(&b);
    assert_eq!(exit, "-1", "no exit code without a program");
    let compiler = b.content("#compile-out");
    assert!(
        compiler.contains("undefined_thing") && compiler.contains("error"),
        "{compiler:?}"
    );
    assert_eq!(
        b.js(
            "return document.getElementById('compile-out').hidden;",
            json!([])
        ),
        false
    );

    // Three lines with pauses arrive one by one: the page's output is watched as it changes.
    pick_language(&b, "python");
    set_code(
        &b,
        "import time\nfor i in range(3):\n    print(f'line {i}', flush=True)\n    time.sleep(0.8)\n",
    );
    b.js(
        "window.__seen = [];
         const out = document.getElementById('stdout-out');
         new MutationObserver(() => window.__seen.push([performance.now(), out.textContent]))
           .observe(out, {childList: true, characterData: true, subtree: true});",
        json!([]),
    );
    run_and_wait(&b);
    let seen = b.js("return window.__seen;", json!([]));
    let seen: Vec<(f64, String)> = seen
        .as_array()
        .expect("observations")
        .iter()
        .map(|v| {
            (
                v[0].as_f64().unwrap_or(0.0),
                v[1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let first_time = |text: &str| {
        seen.iter()
            .find(|(_, t)| t.as_str() == text)
            .map(|(ms, _)| *ms)
            .unwrap_or_else(|| panic!("the output was never exactly {text:?}: {seen:?}"))
    };
    let t1 = first_time("line 0\n");
    let t2 = first_time("line 0\nline 1\n");
    let t3 = first_time("line 0\nline 1\nline 2\n");
    assert!(
        t2 - t1 > 400.0 && t3 - t2 > 400.0,
        "the lines arrived one by one, about 0.8 s apart: {t1} {t2} {t3}"
    );
    b.assert_no_console_errors();
    shot(&b, &shots.join("run.png"), 1350);

    // Judging: test cases get verdicts.
    set_code(&b, "a, b = map(int, input().split())\nprint(a + b)\n");
    b.js("document.getElementById('tests').open = true;", json!([]));
    for (stdin, expected) in [("1 2", "3"), ("2 2", "5")] {
        b.click(&b.find("#add-case"));
        let n = b.js(
            "return document.querySelectorAll('#cases .case').length;",
            json!([]),
        );
        let n = n.as_u64().expect("a count");
        b.type_into(&b.find(&format!("#case-stdin-{n}")), stdin);
        b.type_into(&b.find(&format!("#case-expected-{n}")), expected);
    }
    b.click(&b.find("#run"));
    let verdict = b.wait(LONG, "the verdict", || {
        let v = b.content("#verdict");
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(verdict, "wrong_answer");
    let table = b.content("#verdicts");
    assert!(
        table.contains("accepted") && table.contains("(1/2 passed)"),
        "{table}"
    );

    // A deep link with the key: it runs, and the key leaves the address bar for local storage.
    b.js("localStorage.clear();", json!([]));
    b.goto("about:blank");
    b.goto(&format!(
        "{}/playground#key={}&language=python&code={}&stdin={}&run=1",
        srv.url,
        enc(KEY_A),
        enc("print(int(input()) * 7)"),
        enc("6\n")
    ));
    b.wait_text("#stdout-out", "42", LONG);
    let url = b.url();
    assert!(!url.contains(KEY_A) && !url.contains("key="), "{url}");
    assert!(url.contains("run=1"), "the rest of the link stays: {url}");
    assert_eq!(
        b.js("return localStorage.getItem('runcell.apiKey');", json!([])),
        KEY_A
    );
    assert_eq!(b.content("#result [data-field=exit-code]"), "0");
    b.assert_no_console_errors();

    // Phone width: nothing wider than the screen, and the controls are still there.
    b.set_window(390, 844);
    let wide = b.js(
        "return document.documentElement.scrollWidth - window.innerWidth;",
        json!([]),
    );
    assert!(
        wide.as_i64().unwrap_or(99) <= 0,
        "horizontal overflow of {wide} px"
    );
    b.screenshot(&shots.join("phone.png"));
}

#[test]
fn playground_runs_with_network_by_name() {
    crate::fakenet::get();
    let srv = Server::with(
        Opts::new()
            .env("RUNCELL_EGRESS_ALLOW", "*.test")
            .env("RUNCELL_EGRESS_RESOLVER", crate::fakenet::RESOLVER),
    );
    let b = Browser::start(1280, 900);
    open_with_key(&b, &srv);
    set_code(
        &b,
        "import socket, urllib.request as u\n\
         print(u.urlopen('http://allowed.test/', timeout=10).read().decode().strip())\n\
         try:\n    socket.gethostbyname('denied.test')\nexcept OSError:\n    print('denied')\n",
    );
    let hosts = b.find("#net-allow");
    b.type_into(&hosts, "allowed.test");
    assert_eq!(run_and_wait(&b), "0");
    assert_eq!(
        b.content("#stdout-out"),
        "hello from the http server\ndenied\n"
    );
    let net = b.content("#result [data-field=network]");
    assert!(net.starts_with("1 connection(s), "), "{net}");
    assert!(net.ends_with(", 1 refused"), "{net}");
    let refused = b.content("#result [data-field=refused]");
    assert!(
        refused.starts_with("denied.test: ") && refused.contains("allow-list"),
        "{refused}"
    );
    b.assert_no_console_errors();

    // The hosts travel in deep links; a name beyond the key's is the server's sentence.
    b.goto("about:blank");
    b.goto(&format!(
        "{}/playground#language=python&code={}&network={}&run=1",
        srv.url,
        enc("print(1)"),
        enc("pypi.org")
    ));
    b.wait_text("#status", "pypi.org", LONG);
    assert_eq!(
        b.js(
            "return document.getElementById('net-allow').value;",
            json!([])
        ),
        "pypi.org"
    );
}

#[test]
fn playground_sandbox_renders_a_plot_and_moves_files() {
    let srv = Server::start();
    let (shots, _tmp) = screenshot_dir();
    let b = Browser::start(1280, 1000);
    open_with_key(&b, &srv);
    b.click(&b.find("#tab-sandbox"));
    b.click(&b.find("#sb-create"));
    b.wait_text("#sb-id", "sb_", LONG);

    // The first cell is a matplotlib plot: it comes back as a PNG image.
    b.find(".cell .cell-run");
    b.click(&b.find(".cell .cell-run"));
    b.wait(LONG, "the plot", || {
        let w = b.js(
            "const i = document.querySelector('.cell .rich img.plot');
             return i && i.complete ? i.naturalWidth : 0;",
            json!([]),
        );
        (w.as_u64().unwrap_or(0) > 100).then_some(())
    });
    let src = b.js(
        "return document.querySelector('.cell .rich img.plot').src.slice(0, 22);",
        json!([]),
    );
    assert_eq!(src, "data:image/png;base64,");

    // A second cell: a DataFrame's HTML table, and state kept from the first cell.
    b.click(&b.find("#add-cell"));
    let code = b.find(".cell:nth-child(2) textarea");
    b.type_into(
        &code,
        "import pandas as pd\npd.DataFrame({'n': [1, 2, 3], 'squared': [1, 4, 9]})",
    );
    b.click(&b.find(".cell:nth-child(2) .cell-run"));
    let table = b.wait_text(".cell:nth-child(2) .rich table", "squared", LONG);
    assert!(table.contains('9'), "{table}");

    // An SVG result is shown as an image; a Bash cell and a JavaScript cell run in their own
    // contexts.
    b.click(&b.find("#add-cell"));
    b.type_into(
        &b.find(".cell:nth-child(3) textarea"),
        "from IPython.display import SVG, display\ndisplay(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"40\" height=\"30\"><circle cx=\"15\" cy=\"15\" r=\"12\" fill=\"teal\"/></svg>'))",
    );
    b.click(&b.find(".cell:nth-child(3) .cell-run"));
    b.wait(LONG, "the SVG image", || {
        let w = b.js(
            "const i = document.querySelector('.cell:nth-child(3) .rich img[alt=\"SVG result\"]');
             return i && i.complete ? i.naturalWidth : 0;",
            json!([]),
        );
        (w == 40).then_some(())
    });
    for (n, lang, code, out) in [
        (4, "bash", "echo \"hi from $((6 * 7))\"", "hi from 42"),
        (
            5,
            "javascript",
            "console.log([1, 2, 3].map(x => x * 2).join(','))",
            "2,4,6",
        ),
    ] {
        b.click(&b.find("#add-cell"));
        let ok = b.js(
            "const s = document.querySelector(`.cell:nth-child(${arguments[0]}) select`);
             if (![...s.options].some(o => o.value === arguments[1])) return false;
             s.value = arguments[1]; return true;",
            json!([n, lang]),
        );
        assert_eq!(ok, true, "no {lang} context offered");
        b.type_into(&b.find(&format!(".cell:nth-child({n}) textarea")), code);
        b.click(&b.find(&format!(".cell:nth-child({n}) .cell-run")));
        b.wait_text(&format!(".cell:nth-child({n}) .cell-stdout"), out, LONG);
    }

    // Upload a file from this machine, see it listed, download it back.
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let local = tmp.path().join("hello-upload.txt");
    std::fs::write(&local, "uploaded through the playground\n").expect("write the file");
    b.type_into(&b.find("#upload-file"), &local.display().to_string());
    b.click(&b.find("#upload"));
    b.wait_text("#files", "/workspace/hello-upload.txt", LONG);

    let downloads = tempfile::tempdir().expect("a download directory");
    b.cdp(
        "Browser.setDownloadBehavior",
        json!({"behavior": "allow", "downloadPath": downloads.path().display().to_string()}),
    );
    b.click(&b.find("button[aria-label='Download hello-upload.txt']"));
    let got = b.wait(LONG, "the download", || {
        std::fs::read_to_string(downloads.path().join("hello-upload.txt")).ok()
    });
    assert_eq!(got, "uploaded through the playground\n");

    // The terminal runs a command in the sandbox.
    b.type_into(&b.find("#term-cmd"), "wc -c hello-upload.txt");
    b.click(&b.find("#term-run"));
    b.wait_text("#term-out", "32 hello-upload.txt", LONG);
    b.assert_no_console_errors();
    b.js("window.scrollTo(0, 0);", json!([]));
    b.full_screenshot(&shots.join("sandbox.png"));
}

#[test]
fn playground_operator_view_shows_every_tenants_work() {
    let srv = Server::with(Opts::new().env("RUNCELL_ADMIN_KEYS", OPERATOR));
    let (shots, _tmp) = screenshot_dir();
    let done = srv.execute(&json!({"language": "python", "code": "print(1)"}));
    let exec_id = done["execution_id"].as_str().expect("an id").to_string();
    let sb: Value = srv
        .post("/v1/sandboxes", Some(KEY_B), &json!({}))
        .expect(201)
        .json();
    let sb_id = sb["id"].as_str().expect("a sandbox id").to_string();

    let b = Browser::start(1280, 900);
    open_with_key(&b, &srv);
    b.click(&b.find("#tab-operator"));
    let key = b.find("#op-key");
    b.clear(&key);
    b.type_into(&key, OPERATOR);
    b.click(&b.find("#op-refresh"));
    b.wait_text("#op-executions", &exec_id, LONG);
    b.wait_text("#op-sandboxes", &sb_id, LONG);
    assert_eq!(b.content("#op-load [data-field=queue-depth]"), "0");
    assert!(b.content("#op-nodes").contains("(this)"));
    b.assert_no_console_errors();
    shot(&b, &shots.join("operator.png"), 800);

    // Filters: no failed executions.
    b.js(
        "document.getElementById('op-status').value = 'failed';",
        json!([]),
    );
    b.click(&b.find("#op-refresh"));
    b.wait(LONG, "the filtered list", || {
        (!b.content("#op-executions").contains(&exec_id)).then_some(())
    });

    // A tenant's key is not an operator's: the page says so.
    b.clear(&key);
    b.type_into(&key, KEY_A);
    b.click(&b.find("#op-refresh"));
    b.wait_text("#status", "ADMIN_KEY_REQUIRED", LONG);
}
