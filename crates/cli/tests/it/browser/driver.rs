//! A small W3C WebDriver client over the tests' blocking HTTP client, driving Debian's
//! headless Chromium through `chromedriver` (packages `chromium` and `chromium-driver`, which
//! scripts/test installs). No WebDriver crate: the protocol is a handful of JSON requests, and
//! reqwest is already here. A missing chromedriver or chromium fails the test (never skips it).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::blocking::Client;
use serde_json::{Value, json};

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/lib/chromium/chromium";

/// A headless Chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    http: Client,
    _profile: tempfile::TempDir,
}

/// An element of the page.
#[derive(Clone)]
pub struct El(String);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session of `width`×`height`.
    pub fn start(width: u32, height: u32) -> Browser {
        for (path, pkg) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the browser tests need Debian's `chromium` and \
                 `chromium-driver` packages (scripts/test installs them: apt-get install {pkg})"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {CHROMEDRIVER}: {e}"));
        let http = crate::server::client();
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            let ready = http
                .get(format!("{base}/status"))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not become ready on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut b = Browser {
            driver,
            base,
            http,
            _profile: profile,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                    "--hide-scrollbars", "--force-device-scale-factor=1",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", b._profile.path().display()),
                ],
            },
        }}});
        let v = b.raw("POST", "/session", Some(caps));
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b.base = format!("{}/session/{id}", b.base);
        b
    }

    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut rb = self
            .http
            .request(m, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(60));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb
            .send()
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status}: {v}"
        );
        v["value"].clone()
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        self.raw(method, path, Some(body))
    }

    /// Navigates to `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    pub fn url(&self) -> String {
        self.raw("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .into()
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
    }

    /// The first element matching `css`, if there is one now.
    pub fn try_find(&self, css: &str) -> Option<El> {
        let v = self.cmd(
            "POST",
            "/elements",
            json!({ "using": "css selector", "value": css }),
        );
        v.as_array()?
            .first()
            .and_then(|e| e[ELEMENT].as_str())
            .map(|s| El(s.to_string()))
    }

    /// The first element matching `css`, waited for up to 20 s.
    #[track_caller]
    pub fn find(&self, css: &str) -> El {
        self.wait(
            Duration::from_secs(20),
            &format!("an element {css}"),
            || self.try_find(css),
        )
    }

    pub fn click(&self, e: &El) {
        self.cmd("POST", &format!("/element/{}/click", e.0), json!({}));
    }

    /// Types `text` into `e` as keystrokes.
    pub fn type_into(&self, e: &El, text: &str) {
        self.cmd(
            "POST",
            &format!("/element/{}/value", e.0),
            json!({ "text": text }),
        );
    }

    pub fn clear(&self, e: &El) {
        self.cmd("POST", &format!("/element/{}/clear", e.0), json!({}));
    }

    /// The `textContent` of the element matching `css` (also when it is hidden), or "".
    pub fn content(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            json!([css]),
        )
        .as_str()
        .unwrap_or_default()
        .into()
    }

    /// Waits up to `timeout` for `f` to give something, polling every 50 ms.
    #[track_caller]
    pub fn wait<T>(&self, timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > timeout {
                let status = self.content("#status");
                panic!("timed out after {timeout:?} waiting for {what} (page status: {status:?})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the text of `css` to contain `needle`; the text.
    #[track_caller]
    pub fn wait_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        self.wait(timeout, &format!("{css} to contain {needle:?}"), || {
            let t = self.content(css);
            t.contains(needle).then_some(t)
        })
    }

    /// A PNG of the viewport, saved at `path`.
    pub fn screenshot(&self, path: &Path) -> Vec<u8> {
        let b64 = self.raw("GET", "/screenshot", None);
        save_png(&b64, path)
    }

    /// A PNG of the whole page (beyond the viewport), saved at `path`.
    pub fn full_screenshot(&self, path: &Path) -> Vec<u8> {
        let v = self.cdp(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        save_png(&v["data"], path)
    }

    pub fn set_window(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            json!({ "width": width, "height": height }),
        );
    }

    /// A Chrome DevTools Protocol command, through chromedriver.
    pub fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            json!({ "cmd": cmd, "params": params }),
        )
    }

    /// The browser console's entries since the last call (chromedriver's log endpoint).
    pub fn console(&self) -> Vec<Value> {
        self.cmd("POST", "/se/log", json!({ "type": "browser" }))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Asserts that the console has no errors (CSP violations, exceptions, failed loads).
    #[track_caller]
    pub fn assert_no_console_errors(&self) {
        let errors: Vec<Value> = self
            .console()
            .into_iter()
            .filter(|e| e["level"] == "SEVERE")
            .collect();
        assert!(errors.is_empty(), "console errors: {errors:#?}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .http
            .delete(&self.base)
            .timeout(Duration::from_secs(10))
            .send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Decodes a base64 PNG and writes it to `path`.
fn save_png(b64: &Value, path: &Path) -> Vec<u8> {
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().unwrap_or_default())
        .expect("a base64 screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG screenshot"
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("the screenshot directory");
    }
    std::fs::write(path, &png).expect("write the screenshot");
    png
}
