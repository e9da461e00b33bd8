// runcell playground: one-shot runs (streamed), judged runs, sandboxes (cells, files,
// terminal) and the operator view, over runcell's own HTTP API. No framework, no inline
// script (the page's Content-Security-Policy allows scripts from this server only).
"use strict";

(function () {
  const KEY_STORE = "runcell.apiKey";
  const OP_KEY_STORE = "runcell.operatorKey";
  const $ = (id) => document.getElementById(id);

  // CodeMirror modes by runcell language id.
  const MODES = {
    python: "python", javascript: "javascript", typescript: "text/typescript",
    bash: "shell", c: "text/x-csrc", cpp: "text/x-c++src", java: "text/x-java",
    go: "go", rust: "rust", ruby: "ruby", php: "text/x-php", csharp: "text/x-csharp",
    kotlin: "text/x-kotlin", scala: "text/x-scala",
  };
  const SAMPLES = {
    python: 'name = input() if False else "world"\nprint(f"hello, {name}")\n',
    javascript: 'console.log("hello, world");\n',
    typescript: 'const who: string = "world";\nconsole.log(`hello, ${who}`);\n',
    bash: 'echo "hello, world"\n',
    c: '#include <stdio.h>\n\nint main(void) {\n    printf("hello, world\\n");\n    return 0;\n}\n',
    cpp: '#include <iostream>\n\nint main() {\n    std::cout << "hello, world" << std::endl;\n}\n',
    java: 'public class Main {\n    public static void main(String[] args) {\n        System.out.println("hello, world");\n    }\n}\n',
    go: 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hello, world")\n}\n',
    rust: 'fn main() {\n    println!("hello, world");\n}\n',
    ruby: 'puts "hello, world"\n',
    php: '<?php\necho "hello, world\\n";\n',
  };

  let apiKey = localStorage.getItem(KEY_STORE) || "";
  let languages = [];
  let editor = null;
  let deepLink = null;
  let running = false;
  let sandbox = null; // {id}

  // ---- small helpers ----
  function status(text, isError) {
    const s = $("status");
    s.textContent = text || "";
    s.classList.toggle("error", !!isError);
  }
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) e.append(c);
    return e;
  }
  function headers(key, extra) {
    return Object.assign({ "X-API-Key": key === undefined ? apiKey : key }, extra || {});
  }
  async function errorOf(resp) {
    let body = "";
    try { body = await resp.text(); } catch (_) { /* ignore */ }
    try {
      const j = JSON.parse(body);
      return `${resp.status}: ${j.detail || j.message || body}${j.code ? " (" + j.code + ")" : ""}`;
    } catch (_) {
      return `${resp.status}: ${body || resp.statusText}`;
    }
  }
  async function api(method, path, body, key) {
    const init = { method, headers: headers(key) };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    if (!resp.ok) throw new Error(await errorOf(resp));
    if (resp.status === 204) return null;
    return resp.json();
  }
  // Reads a server-sent event stream, calling onEvent with each parsed JSON object.
  async function readSse(resp, onEvent) {
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let at;
      while ((at = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, at);
        buf = buf.slice(at + 2);
        const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (!data) continue;
        let ev;
        try { ev = JSON.parse(data); } catch (_) { continue; }
        onEvent(ev);
      }
    }
  }
  function fmtNum(v, digits) {
    return typeof v === "number" ? v.toFixed(digits) : "–";
  }

  // ---- views ----
  const VIEWS = ["run", "sandbox", "operator"];
  function show(view) {
    for (const v of VIEWS) {
      $("view-" + v).hidden = v !== view;
      $("tab-" + v).setAttribute("aria-pressed", String(v === view));
    }
    if (view === "operator" && !$("op-key").value) $("op-key").value = localStorage.getItem(OP_KEY_STORE) || apiKey;
  }

  // ---- the key ----
  function setKey(k) {
    apiKey = (k || "").trim();
    if (apiKey) localStorage.setItem(KEY_STORE, apiKey);
    else localStorage.removeItem(KEY_STORE);
    $("api-key").value = apiKey;
    const has = !!apiKey;
    for (const id of ["sb-create"]) $(id).disabled = !has;
    if (has) loadLanguages();
    else {
      languages = [];
      const sel = $("language");
      sel.replaceChildren(el("option", { value: "", text: "enter your API key first" }));
      sel.disabled = true;
      $("run").disabled = true;
    }
  }

  async function loadLanguages() {
    status("loading languages…");
    try {
      languages = await api("GET", "/api/v1/languages");
    } catch (e) {
      status("languages: " + e.message, true);
      return;
    }
    const sel = $("language");
    const prev = sel.value;
    sel.replaceChildren();
    for (const l of languages) {
      const o = el("option", { value: l.id, text: `${l.name} ${l.version}${l.available ? "" : " (not installed)"}` });
      if (!l.available) o.disabled = true;
      sel.append(o);
    }
    sel.disabled = false;
    $("run").disabled = false;
    const want = (deepLink && deepLink.language) || prev || "python";
    if (languages.some((l) => l.id === want)) sel.value = want;
    setMode(false);
    status("ready");
    if (deepLink) {
      const d = deepLink;
      deepLink = null;
      if (d.code !== undefined) editor.setValue(d.code);
      if (d.run) run();
    }
  }

  function setMode(replaceCode) {
    const lang = $("language").value;
    if (!editor) return;
    editor.setOption("mode", MODES[lang] || "text/plain");
    if (replaceCode && SAMPLES[lang] !== undefined) editor.setValue(SAMPLES[lang]);
  }

  // ---- one-shot runs ----
  function number(id) {
    const v = $(id).value.trim();
    return v === "" ? undefined : Number(v);
  }
  function request() {
    const req = { language: $("language").value, code: editor.getValue() };
    const stdin = $("stdin").value;
    if (stdin) req.stdin = stdin;
    const args = $("args").value.split("\n").filter((a) => a.length > 0);
    if (args.length) req.args = args;
    const limits = {};
    const pairs = [["wall_time", "lim-wall"], ["cpu_time", "lim-cpu"], ["memory_mb", "lim-mem"], ["max_processes", "lim-procs"]];
    for (const [k, id] of pairs) {
      const v = number(id);
      if (v !== undefined) limits[k] = v;
    }
    if (Object.keys(limits).length) req.limits = limits;
    const allow = $("net-allow").value.split(/[\s,]+/).filter((h) => h.length > 0);
    if (allow.length) req.network = { egress: { allow, default: "deny" } };
    const cases = [...document.querySelectorAll("#cases .case")].map((c) => ({
      stdin: c.querySelector(".case-stdin").value,
      expected_output: c.querySelector(".case-expected").value,
    }));
    if (cases.length) {
      req.test_cases = cases;
      req.comparison = $("comparison").value;
    }
    return req;
  }

  function clearOutput() {
    $("stdout-out").textContent = "";
    $("stderr-out").textContent = "";
    $("compile-out").textContent = "";
    $("compile-out").hidden = true;
    $("compile-h").hidden = true;
    $("result").replaceChildren();
    $("verdicts").replaceChildren();
  }

  function showResult(r) {
    const rows = [
      ["Status", r.status],
      ["Exit code", r.exit_code === null || r.exit_code === undefined ? "–" : String(r.exit_code)],
      ["Signal", r.signal || "–"],
      ["Time", fmtNum(r.execution_time, 3) + " s"],
      ["CPU", fmtNum(r.cpu_time, 3) + " s"],
      ["Memory", r.memory_peak_kb ? (r.memory_peak_kb / 1024).toFixed(1) + " MiB" : "–"],
      ["Limit exceeded", r.limit_exceeded || "none"],
      ["Version", r.version || "–"],
    ];
    if (r.stdout_truncated || r.stderr_truncated) rows.push(["Truncated", "output was cut at the output limit"]);
    if (r.network) {
      const n = r.network;
      rows.push(["Network", `${n.connections} connection(s), ${n.bytes_out} bytes out, ${n.bytes_in} in, ${n.refused} refused` +
        (n.limit_exceeded ? `, ${n.limit_exceeded} limit reached` : "")]);
      for (const f of n.refusals || []) rows.push(["Refused", `${f.name}${f.port ? ":" + f.port : ""}: ${f.reason}`]);
    }
    const dl = $("result");
    dl.replaceChildren();
    for (const [k, v] of rows) {
      dl.append(el("dt", { text: k }), el("dd", { text: v, "data-field": k.toLowerCase().replace(/ /g, "-") }));
    }
    if (r.compile && (r.compile.stderr || r.compile.stdout || r.compile.exit_code)) {
      $("compile-out").textContent = (r.compile.stdout || "") + (r.compile.stderr || "");
      $("compile-out").hidden = false;
      $("compile-h").hidden = false;
    }
    if (r.judging) showVerdicts(r.judging);
  }

  function showVerdicts(j) {
    const box = $("verdicts");
    const bad = (v) => (v === "accepted" ? "verdict-accepted" : "verdict-bad");
    box.append(el("p", {}, "Verdict: ", el("strong", { class: bad(j.verdict), id: "verdict", text: j.verdict }),
      ` (${j.passed}/${j.total} passed)${j.message ? " – " + j.message : ""}`));
    const t = el("table", { class: "table" });
    t.append(el("thead", {}, el("tr", {}, ...["Case", "Verdict", "Time, s", "Memory, MiB", "Message"].map((h) => el("th", { scope: "col", text: h })))));
    const tb = el("tbody");
    for (const c of j.cases || []) {
      tb.append(el("tr", {},
        el("td", { text: String(c.index + 1) }),
        el("td", { class: bad(c.verdict), text: c.verdict }),
        el("td", { text: fmtNum(c.execution_time, 3) }),
        el("td", { text: c.memory_peak_kb ? (c.memory_peak_kb / 1024).toFixed(1) : "–" }),
        el("td", { text: c.message || "" })));
    }
    t.append(tb);
    box.append(t);
  }

  async function run() {
    if (running || !apiKey) return;
    running = true;
    $("run").disabled = true;
    clearOutput();
    const req = request();
    status("running…");
    try {
      if (req.test_cases) {
        const r = await api("POST", "/api/v1/execute", req);
        $("stdout-out").textContent = r.stdout || "";
        $("stderr-out").textContent = r.stderr || "";
        showResult(r);
      } else {
        const resp = await fetch("/api/v1/execute?stream=true", {
          method: "POST",
          headers: headers(undefined, { "Content-Type": "application/json", Accept: "text/event-stream" }),
          body: JSON.stringify(req),
        });
        if (!resp.ok) throw new Error(await errorOf(resp));
        let done = false;
        await readSse(resp, (ev) => {
          if (ev.type === "stdout") $("stdout-out").append(document.createTextNode(ev.text));
          else if (ev.type === "stderr") $("stderr-out").append(document.createTextNode(ev.text));
          else if (ev.type === "status") status(ev.text || "running…");
          else if (ev.type === "error") status("error: " + ((ev.error && ev.error.evalue) || JSON.stringify(ev)), true);
          else if (ev.type === "execution_complete" && ev.result) {
            done = true;
            showResult(ev.result);
          }
        });
        if (!done) throw new Error("the stream ended without a result");
      }
      status("done");
    } catch (e) {
      status(e.message, true);
    } finally {
      running = false;
      $("run").disabled = false;
    }
  }

  function addCase(stdin, expected) {
    const n = document.querySelectorAll("#cases .case").length + 1;
    const c = el("div", { class: "case" });
    const sid = "case-stdin-" + n, eid = "case-expected-" + n;
    c.append(
      el("div", {}, el("label", { for: sid, class: "block", text: `Case ${n}: input` }), el("textarea", { id: sid, class: "case-stdin", rows: "2" })),
      el("div", {}, el("label", { for: eid, class: "block", text: `Case ${n}: expected output` }), el("textarea", { id: eid, class: "case-expected", rows: "2" })),
      el("button", { type: "button", class: "case-remove", text: "Remove", "aria-label": `Remove case ${n}` }));
    c.querySelector(".case-stdin").value = stdin || "";
    c.querySelector(".case-expected").value = expected || "";
    c.querySelector(".case-remove").addEventListener("click", () => c.remove());
    $("cases").append(c);
    $("tests").open = true;
  }

  function shareLink() {
    const p = new URLSearchParams();
    p.set("language", $("language").value);
    p.set("code", editor.getValue());
    if ($("stdin").value) p.set("stdin", $("stdin").value);
    if ($("net-allow").value.trim()) p.set("network", $("net-allow").value.trim());
    p.set("run", "1");
    const url = location.origin + "/playground#" + p.toString();
    if (navigator.clipboard) navigator.clipboard.writeText(url).then(() => status("link copied (without your key)"), () => status(url));
    else status(url);
  }

  // Deep links: #key=K&language=python&code=…&stdin=…&args=a%0Ab&run=1. The key goes to local
  // storage and is removed from the address bar.
  function readDeepLink() {
    if (!location.hash || location.hash.length < 2) return;
    const p = new URLSearchParams(location.hash.slice(1));
    if (p.has("key")) {
      setKeyOnly(p.get("key"));
      p.delete("key");
      const rest = p.toString();
      history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
    }
    const d = {};
    if (p.has("language")) d.language = p.get("language");
    if (p.has("code")) d.code = p.get("code");
    if (p.has("stdin")) $("stdin").value = p.get("stdin");
    if (p.has("args")) $("args").value = p.get("args");
    if (p.has("network")) $("net-allow").value = p.get("network");
    d.run = p.get("run") === "1";
    if (Object.keys(d).length) deepLink = d;
  }
  function setKeyOnly(k) {
    apiKey = (k || "").trim();
    if (apiKey) localStorage.setItem(KEY_STORE, apiKey);
  }

  // ---- sandboxes ----
  function sbPath(rest) {
    return `/v1/sandboxes/${encodeURIComponent(sandbox.id)}${rest}`;
  }
  function sandboxControls(on) {
    for (const id of ["sb-delete", "add-cell", "files-refresh", "upload", "term-run"]) $(id).disabled = !on;
    $("sb-create").disabled = on || !apiKey;
  }
  async function createSandbox() {
    status("creating a sandbox…");
    try {
      const s = await api("POST", "/v1/sandboxes", { timeout_secs: 1800 });
      sandbox = { id: s.id };
      $("sb-id").textContent = s.id;
      sandboxControls(true);
      $("cells").replaceChildren();
      addCell("python", "import matplotlib.pyplot as plt\nplt.plot([1, 4, 2, 3])\nplt.title('runcell')\nplt.show()");
      status("sandbox " + s.id + " is running");
      refreshFiles();
      metricsLoop();
    } catch (e) {
      status(e.message, true);
    }
  }
  async function deleteSandbox() {
    if (!sandbox) return;
    const id = sandbox.id;
    try {
      await api("DELETE", sbPath(""));
      status("sandbox " + id + " deleted");
    } catch (e) {
      status(e.message, true);
    }
    sandbox = null;
    $("sb-id").textContent = "";
    $("sb-metrics").textContent = "";
    sandboxControls(false);
  }
  async function metricsLoop() {
    while (sandbox) {
      try {
        const m = await api("GET", sbPath("/metrics"));
        $("sb-metrics").textContent = `CPU ${m.cpu_used_pct.toFixed(1)}% of ${m.cpu_count} · memory ${m.mem_used_mib.toFixed(0)}/${m.mem_total_mib.toFixed(0)} MiB`;
      } catch (_) {
        return;
      }
      await new Promise((r) => setTimeout(r, 5000));
    }
  }

  function contextLanguages() {
    const ls = languages.filter((l) => l.contexts && l.available).map((l) => l.id);
    return ls.length ? ls : ["python"];
  }
  let cellCount = 0;
  function addCell(lang, code) {
    cellCount += 1;
    const n = cellCount;
    const li = el("li", { class: "cell", "data-cell": String(n) });
    const sel = el("select", { id: `cell-lang-${n}`, class: "cell-lang" });
    for (const l of contextLanguages()) sel.append(el("option", { value: l, text: l }));
    sel.value = lang && contextLanguages().includes(lang) ? lang : contextLanguages()[0];
    const ta = el("textarea", { id: `cell-code-${n}`, class: "cell-code", rows: "4", spellcheck: "false" });
    ta.value = code || "";
    const btn = el("button", { type: "button", class: "cell-run primary", text: "Run cell" });
    const out = el("div", { class: "cell-out", "aria-live": "polite" });
    li.append(
      el("div", { class: "row" }, el("label", { for: sel.id, text: `Cell ${n} context` }), sel, btn),
      el("label", { for: ta.id, class: "sr", text: `Cell ${n} code` }), ta, out);
    btn.addEventListener("click", () => runCell(sel.value, ta.value, out, btn));
    ta.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey || e.shiftKey)) {
        e.preventDefault();
        runCell(sel.value, ta.value, out, btn);
      }
    });
    $("cells").append(li);
    return li;
  }

  function b64utf8(s) {
    const bytes = new TextEncoder().encode(s);
    let bin = "";
    for (const b of bytes) bin += String.fromCharCode(b);
    return btoa(bin);
  }
  // HTML results (a DataFrame's table) are rebuilt from a small allow-list of elements, with
  // no attributes but table spans: a result cannot bring scripts, styles, forms or links.
  const HTML_OK = new Set(["TABLE", "THEAD", "TBODY", "TFOOT", "TR", "TH", "TD", "CAPTION", "DIV", "SPAN", "P", "B", "I", "STRONG", "EM", "BR", "CODE", "PRE", "UL", "OL", "LI", "H1", "H2", "H3", "H4"]);
  function safeHtml(html) {
    // Style elements and attributes are dropped before parsing too: the page's CSP would
    // refuse them (and say so in the console) even in a parsed, never shown document.
    const bare = html
      .replace(/<style[\s\S]*?<\/style\s*>/gi, "")
      .replace(/\sstyle\s*=\s*("[^"]*"|'[^']*'|[^\s>]+)/gi, "");
    const doc = new DOMParser().parseFromString(bare, "text/html");
    const copy = (node) => {
      if (node.nodeType === Node.TEXT_NODE) return document.createTextNode(node.textContent);
      if (node.nodeType !== Node.ELEMENT_NODE) return null;
      const kids = [...node.childNodes].map(copy).filter(Boolean);
      if (!HTML_OK.has(node.tagName)) {
        if (["SCRIPT", "STYLE", "TEMPLATE"].includes(node.tagName)) return null;
        const f = document.createDocumentFragment();
        f.append(...kids);
        return f;
      }
      const e = document.createElement(node.tagName.toLowerCase());
      for (const a of ["colspan", "rowspan"]) if (node.hasAttribute(a)) e.setAttribute(a, node.getAttribute(a));
      e.append(...kids);
      return e;
    };
    const box = el("div", { class: "html-result" });
    for (const n of [...doc.body.childNodes]) {
      const c = copy(n);
      if (c) box.append(c);
    }
    return box;
  }
  function renderResult(item) {
    if (item.png) return el("img", { src: "data:image/png;base64," + item.png, alt: "PNG result (a plot)", class: "plot" });
    if (item.jpeg) return el("img", { src: "data:image/jpeg;base64," + item.jpeg, alt: "JPEG result" });
    if (item.svg) return el("img", { src: "data:image/svg+xml;base64," + b64utf8(item.svg), alt: "SVG result" });
    if (item.html) return safeHtml(item.html);
    if (item.text !== undefined && item.text !== null) return el("pre", { class: "out", text: item.text });
    if (item.markdown) return el("pre", { class: "out", text: item.markdown });
    if (item.json !== undefined) return el("pre", { class: "out", text: JSON.stringify(item.json, null, 2) });
    return null;
  }

  async function runCell(lang, code, out, btn) {
    if (!sandbox) return;
    btn.disabled = true;
    out.replaceChildren(el("p", { class: "muted", text: "running…" }));
    try {
      const r = await api("POST", sbPath("/code/runs?wait=true"), { code, language: lang });
      out.replaceChildren();
      const ex = r.execution || {};
      const logs = ex.logs || {};
      const so = (logs.stdout || []).join("");
      const se = (logs.stderr || []).join("");
      if (so) out.append(el("pre", { class: "out cell-stdout", text: so }));
      if (se) out.append(el("pre", { class: "out err cell-stderr", text: se }));
      const rich = el("div", { class: "rich" });
      for (const item of ex.results || []) {
        const node = renderResult(item);
        if (node) rich.append(node);
      }
      if (rich.childNodes.length) out.append(rich);
      if (ex.error) {
        const tb = Array.isArray(ex.error.traceback) ? ex.error.traceback.join("\n") : (ex.error.traceback || "");
        out.append(el("pre", { class: "out err cell-error", text: `${ex.error.name}: ${ex.error.value}\n${tb}` }));
      }
      out.append(el("p", { class: "muted", text: `[${ex.execution_count ?? "?"}] ${r.status}${r.failure_reason ? ": " + r.failure_reason : ""}` }));
      if ((ex.artifacts || []).length) refreshFiles();
    } catch (e) {
      out.replaceChildren(el("pre", { class: "out err", text: e.message }));
    } finally {
      btn.disabled = false;
    }
  }

  async function refreshFiles() {
    if (!sandbox) return;
    const dir = $("files-path").value.trim() || "/workspace";
    const tb = $("files").querySelector("tbody");
    try {
      const list = await api("GET", sbPath(`/directories/list?path=${encodeURIComponent(dir)}&depth=1`));
      tb.replaceChildren();
      for (const f of list) {
        const isDir = f.type === "directory" || f.is_dir === true;
        const name = f.path.split("/").pop();
        const dl = el("button", { type: "button", class: "download", text: "Download", "aria-label": "Download " + name });
        dl.disabled = isDir;
        dl.addEventListener("click", () => download(f.path));
        tb.append(el("tr", {}, el("td", { class: "mono", text: f.path + (isDir ? "/" : "") }), el("td", { text: isDir ? "" : String(f.size) }), el("td", {}, dl)));
      }
      if (!list.length) tb.append(el("tr", {}, el("td", { colspan: "3", class: "muted", text: "empty" })));
    } catch (e) {
      status("files: " + e.message, true);
    }
  }
  async function download(path) {
    try {
      const resp = await fetch(sbPath(`/files/download?path=${encodeURIComponent(path)}`), { headers: headers() });
      if (!resp.ok) throw new Error(await errorOf(resp));
      const blob = await resp.blob();
      const url = URL.createObjectURL(blob);
      const a = el("a", { href: url, download: path.split("/").pop() });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      status("downloaded " + path);
    } catch (e) {
      status("download: " + e.message, true);
    }
  }
  async function upload() {
    const input = $("upload-file");
    if (!sandbox || !input.files.length) {
      status("choose a file to upload first", true);
      return;
    }
    const file = input.files[0];
    const dir = ($("files-path").value.trim() || "/workspace").replace(/\/+$/, "");
    const form = new FormData();
    form.append("metadata", new Blob([JSON.stringify({ path: `${dir}/${file.name}` })], { type: "application/json" }), "metadata");
    form.append("file", file, file.name);
    try {
      const resp = await fetch(sbPath("/files/upload"), { method: "POST", headers: headers(), body: form });
      if (!resp.ok) throw new Error(await errorOf(resp));
      status(`uploaded ${file.name} to ${dir}`);
      input.value = "";
      refreshFiles();
    } catch (e) {
      status("upload: " + e.message, true);
    }
  }

  async function runCommand(ev) {
    ev.preventDefault();
    const cmd = $("term-cmd").value;
    if (!sandbox || !cmd.trim()) return;
    const out = $("term-out");
    out.append(document.createTextNode(`$ ${cmd}\n`));
    $("term-cmd").value = "";
    $("term-run").disabled = true;
    try {
      const resp = await fetch(sbPath("/command"), {
        method: "POST",
        headers: headers(undefined, { "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify({ command: cmd, cwd: "/workspace" }),
      });
      if (!resp.ok) throw new Error(await errorOf(resp));
      await readSse(resp, (e) => {
        if (e.type === "stdout" || e.type === "stderr") out.append(document.createTextNode(e.text));
        else if (e.type === "error" && e.error) out.append(document.createTextNode(`[${e.error.ename}: ${e.error.evalue}]\n`));
        out.scrollTop = out.scrollHeight;
      });
    } catch (e) {
      out.append(document.createTextNode(`[${e.message}]\n`));
    } finally {
      $("term-run").disabled = !sandbox;
      $("term-cmd").focus();
    }
  }

  // ---- the operator view ----
  async function refreshOperator(ev) {
    if (ev) ev.preventDefault();
    const key = $("op-key").value.trim();
    if (!key) {
      status("enter an operator key (cluster.admin_keys)", true);
      return;
    }
    localStorage.setItem(OP_KEY_STORE, key);
    const q = new URLSearchParams();
    for (const [p, id] of [["status", "op-status"], ["language", "op-language"], ["tenant", "op-tenant"]]) {
      const v = $(id).value.trim();
      if (v) q.set(p, v);
    }
    try {
      const o = await api("GET", "/api/v1/operator/overview?" + q.toString(), undefined, key);
      const l = o.load;
      const dl = $("op-load");
      dl.replaceChildren();
      for (const [k, v] of [["Queue depth", l.queued], ["Running", `${l.running} of ${l.concurrency}`], ["Sandboxes", l.sandboxes], ["Sessions", l.sessions], ["Ready jails", l.jail_pool_ready], ["Warm interpreters", l.warm_ready], ["Database", o.cluster.database]]) {
        dl.append(el("dt", { text: k }), el("dd", { text: String(v), "data-field": k.toLowerCase().replace(/ /g, "-") }));
      }
      const tsel = $("op-tenant");
      const cur = tsel.value;
      tsel.replaceChildren(el("option", { value: "", text: "any" }), ...o.tenants.map((t) => el("option", { value: t, text: t })));
      tsel.value = cur;
      const rows = (id, items, cells) => {
        const tb = $(id).querySelector("tbody");
        tb.replaceChildren(...items.map((x) => el("tr", {}, ...cells(x).map((c) => el("td", { text: c === null || c === undefined ? "–" : String(c) })))));
        if (!items.length) tb.append(el("tr", {}, el("td", { colspan: "8", class: "muted", text: "none" })));
      };
      rows("op-executions", o.executions, (e) => [e.created_at, e.tenant, e.language, e.status, e.result ? e.result.exit_code : null, e.result ? fmtNum(e.result.execution_time, 3) : null, e.result ? e.result.limit_exceeded || "" : null, e.execution_id]);
      rows("op-sandboxes", o.sandboxes, (s) => [s.id, s.tenant, s.status, s.metrics ? s.metrics.cpu_used_pct.toFixed(1) : null, s.metrics ? s.metrics.mem_used_mib.toFixed(1) : null, s.expires_at]);
      rows("op-nodes", o.cluster.nodes, (n) => [n.id + (n.this ? " (this)" : ""), n.address, n.alive ? "yes" : "no", n.running, n.queued, n.sandboxes]);
      status(`operator view: ${o.executions.length} executions, ${o.sandboxes.length} sandboxes`);
    } catch (e) {
      status("operator view: " + e.message, true);
    }
  }

  // ---- start ----
  function start() {
    editor = window.CodeMirror.fromTextArea($("code"), {
      lineNumbers: true, indentUnit: 4, mode: "python",
      extraKeys: { "Ctrl-Enter": run, "Cmd-Enter": run, Tab: (cm) => cm.execCommand("insertSoftTab"), Esc: (cm) => cm.getInputField().blur() },
      screenReaderLabel: "Code",
    });
    editor.setValue(SAMPLES.python);
    for (const v of VIEWS) $("tab-" + v).addEventListener("click", () => show(v));
    $("key-form").addEventListener("submit", (e) => { e.preventDefault(); setKey($("api-key").value); });
    $("forget-key").addEventListener("click", () => { setKey(""); status("key forgotten"); });
    $("language").addEventListener("change", () => setMode(true));
    $("run").addEventListener("click", run);
    $("share").addEventListener("click", shareLink);
    $("add-case").addEventListener("click", () => addCase());
    $("sb-create").addEventListener("click", createSandbox);
    $("sb-delete").addEventListener("click", deleteSandbox);
    $("add-cell").addEventListener("click", () => addCell("python", "").querySelector("textarea").focus());
    $("files-refresh").addEventListener("click", refreshFiles);
    $("upload").addEventListener("click", upload);
    $("term-form").addEventListener("submit", runCommand);
    $("op-form").addEventListener("submit", refreshOperator);
    document.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !$("view-run").hidden && !e.target.closest(".CodeMirror")) run();
    });
    window.addEventListener("hashchange", () => {
      readDeepLink();
      if (apiKey) setKey(apiKey);
    });
    readDeepLink();
    $("sb-create").disabled = !apiKey;
    if (apiKey) setKey(apiKey);
    else {
      status("enter your API key to start (it stays in this browser's local storage)");
      $("api-key").focus();
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
