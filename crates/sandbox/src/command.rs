//! Shell commands in a sandbox (execd's `/command`): foreground ones stream their output line
//! by line, background ones write a combined log read with a cursor; both can be polled,
//! interrupted (SIGTERM to the process group, SIGKILL after a grace period) and time out.
//! Bash sessions keep a shell's working directory and exported variables between commands.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use runcell_engine::base_env;
use runcell_engine::model::rfc3339;
use runcell_jail::{Exit, Killer, Limit, OutputTarget, RunLimits, StdinSource, Stream};
use tokio::sync::{mpsc, watch};

use crate::{Sandbox, SandboxError};

/// The shell every command runs in.
pub const SHELL: &str = "/bin/bash";

/// Output kept per command (the oldest is dropped beyond it; cursors stay valid).
const MAX_LOG: usize = 16 << 20;
/// A line longer than this is sent in pieces.
const MAX_LINE: usize = 64 << 10;
/// How long an interrupted command may take to end before it is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(3);

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct CommandSpec {
    /// Shell text, run with `bash -c`.
    pub command: String,
    /// Working directory in the sandbox (relative: under `/workspace`).
    pub cwd: Option<String>,
    pub envs: Vec<(String, String)>,
    /// Killed (with everything in its process group) after this long.
    pub timeout: Option<Duration>,
    pub background: bool,
}

/// Something a command did, for streaming.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandEvent {
    /// One line of standard output, without its newline (an empty line is `"\n"`).
    Stdout(String),
    Stderr(String),
    /// It ended: exit code (`-1` when a signal killed it), an error text unless it exited 0,
    /// and its wall time in milliseconds.
    Exit {
        code: i32,
        error: Option<String>,
        execution_time_ms: u64,
    },
}

/// A command's state, as `GET /command/status/{id}` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandStatus {
    pub id: String,
    pub content: String,
    pub running: bool,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
}

struct Inner {
    running: bool,
    exit_code: Option<i32>,
    error: Option<String>,
    finished_at: Option<SystemTime>,
    /// Combined output; `log_base` bytes were dropped from its front.
    log: Vec<u8>,
    log_base: u64,
    history: Vec<CommandEvent>,
    subscribers: Vec<mpsc::UnboundedSender<CommandEvent>>,
    partial: [Vec<u8>; 2],
    history_bytes: usize,
}

/// A started command.
pub struct Command {
    pub id: String,
    pub content: String,
    pub background: bool,
    pub started_at: SystemTime,
    inner: Mutex<Inner>,
    killer: Option<Killer>,
    done: watch::Sender<bool>,
}

impl Command {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(g: &mut Inner, ev: CommandEvent) {
        g.subscribers.retain(|s| s.send(ev.clone()).is_ok());
        // Foreground history is for late subscribers; it is capped like the log.
        let n = match &ev {
            CommandEvent::Stdout(t) | CommandEvent::Stderr(t) => t.len(),
            CommandEvent::Exit { .. } => 0,
        };
        if g.history_bytes + n <= MAX_LOG {
            g.history_bytes += n;
            g.history.push(ev);
        } else if matches!(ev, CommandEvent::Exit { .. }) {
            g.history.push(ev);
        }
    }

    /// Takes output: appended to the log, split into line events.
    fn output(&self, stream: Stream, bytes: &[u8]) {
        let mut g = self.lock();
        let g = &mut *g;
        g.log.extend_from_slice(bytes);
        if g.log.len() > MAX_LOG {
            let cut = g.log.len() - MAX_LOG;
            g.log.drain(..cut);
            g.log_base += cut as u64;
        }
        if self.background {
            return;
        }
        let i = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        };
        g.partial[i].extend_from_slice(bytes);
        loop {
            let pos = g.partial[i].iter().position(|b| *b == b'\n');
            let line: Vec<u8> = match pos {
                Some(p) => {
                    let mut l: Vec<u8> = g.partial[i].drain(..=p).collect();
                    l.pop();
                    if l.last() == Some(&b'\r') {
                        l.pop();
                    }
                    l
                }
                None if g.partial[i].len() >= MAX_LINE => g.partial[i].drain(..MAX_LINE).collect(),
                None => break,
            };
            let text = if line.is_empty() {
                "\n".to_string()
            } else {
                String::from_utf8_lossy(&line).into_owned()
            };
            let ev = if i == 0 {
                CommandEvent::Stdout(text)
            } else {
                CommandEvent::Stderr(text)
            };
            Self::emit(g, ev);
        }
    }

    fn finish(&self, code: i32, error: Option<String>, elapsed: Duration) {
        {
            let mut g = self.lock();
            let g = &mut *g;
            for i in 0..2 {
                if !g.partial[i].is_empty() {
                    let text =
                        String::from_utf8_lossy(&std::mem::take(&mut g.partial[i])).into_owned();
                    let ev = if i == 0 {
                        CommandEvent::Stdout(text)
                    } else {
                        CommandEvent::Stderr(text)
                    };
                    Self::emit(g, ev);
                }
            }
            g.running = false;
            g.exit_code = Some(code);
            g.error = error.clone();
            g.finished_at = Some(SystemTime::now());
            Self::emit(
                g,
                CommandEvent::Exit {
                    code,
                    error,
                    execution_time_ms: elapsed.as_millis() as u64,
                },
            );
            g.subscribers.clear();
        }
        self.done.send_replace(true);
    }

    /// The events so far and a receiver of the rest (closed at the end).
    pub fn subscribe(&self) -> (Vec<CommandEvent>, mpsc::UnboundedReceiver<CommandEvent>) {
        let mut g = self.lock();
        let (tx, rx) = mpsc::unbounded_channel();
        if g.running {
            g.subscribers.push(tx);
        }
        (g.history.clone(), rx)
    }

    pub fn status(&self) -> CommandStatus {
        let g = self.lock();
        CommandStatus {
            id: self.id.clone(),
            content: self.content.clone(),
            running: g.running,
            exit_code: g.exit_code,
            error: g.error.clone(),
            started_at: rfc3339(self.started_at),
            finished_at: g.finished_at.map(rfc3339),
        }
    }

    pub fn is_running(&self) -> bool {
        self.lock().running
    }

    /// The combined output from byte `cursor` on, and the cursor of what follows.
    pub fn logs(&self, cursor: u64) -> (Vec<u8>, u64) {
        let g = self.lock();
        let end = g.log_base + g.log.len() as u64;
        let from = cursor.clamp(g.log_base, end);
        let start = (from - g.log_base) as usize;
        (g.log[start..].to_vec(), end)
    }

    /// SIGTERM to its process group, then SIGKILL after the grace period. False if it had
    /// ended.
    pub fn interrupt(self: &Arc<Self>) -> bool {
        if !self.is_running() {
            return false;
        }
        if let Some(k) = &self.killer {
            let _ = k.signal(libc::SIGTERM);
            let (k, me) = (k.clone(), Arc::clone(self));
            tokio::spawn(async move {
                let mut done = me.done.subscribe();
                let ended = tokio::time::timeout(INTERRUPT_GRACE, done.wait_for(|d| *d)).await;
                if ended.is_err() {
                    let _ = k.kill();
                }
            });
        }
        true
    }

    /// Resolves once the command has ended.
    pub async fn wait(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }
}

/// A command's exit code and error from what happened to its own process (the supervisor
/// names a limit for a shared step only when that process itself was killed by it, or exited
/// with an error while the sandbox refused forks).
fn exit_of(outcome: &runcell_jail::Outcome) -> (i32, Option<String>) {
    match (&outcome.exit, outcome.limit) {
        (Exit::Exited(0), _) => (0, None),
        (Exit::Exited(n), Some(Limit::Processes)) => (
            *n,
            Some(format!(
                "exit status {n} (the sandbox's process limit refused a fork while it ran)"
            )),
        ),
        (_, Some(Limit::WallTime)) => (-1, Some("signal: killed (timeout)".into())),
        (_, Some(l)) => (-1, Some(format!("signal: killed ({} limit)", l.as_str()))),
        (Exit::Exited(n), None) => (*n, Some(format!("exit status {n}"))),
        (Exit::Signaled(s), None) => (
            -1,
            Some(format!(
                "signal: {}",
                runcell_engine::model::signal_description(*s)
            )),
        ),
        (Exit::NotStarted { stage, errno }, None) => (
            255,
            Some(format!(
                "the command could not start ({stage:?}): {}",
                std::io::Error::from_raw_os_error(*errno)
            )),
        ),
    }
}

/// An absolute working directory in the sandbox.
/// The most of the `EXECD_ENVS` file read for a command.
const MAX_ENV_FILE: u64 = 256 << 10;

impl Sandbox {
    /// The variables persisted in the file named by `EXECD_ENVS` (in `env`), as OpenSandbox's
    /// SDKs write them (`commands.set_env`): read as the sandbox's user inside its own
    /// filesystem view; a missing or unreadable file gives none, as execd does.
    fn persisted_env(&self, env: &[(String, String)]) -> Vec<(String, String)> {
        let Some((_, path)) = env.iter().rev().find(|(k, _)| k == ENV_FILE_VAR) else {
            return Vec::new();
        };
        if path.trim().is_empty() {
            return Vec::new();
        }
        let read = || -> Option<String> {
            use std::io::Read;
            let fs = self.jail().filesystem().ok()?;
            let (file, _) = fs.open_read(path).ok()?;
            let mut buf = Vec::new();
            file.take(MAX_ENV_FILE).read_to_end(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf).into_owned())
        };
        read().map_or_else(Vec::new, |text| parse_env_file(&text, env))
    }
}

/// The variable naming the file of persisted variables (execd's).
pub const ENV_FILE_VAR: &str = "EXECD_ENVS";

/// `KEY=VALUE` lines of an `EXECD_ENVS` file, later lines winning: `'…'` is literal,
/// `"…"` takes `\\ \" \n \r \t` escapes, and an unquoted or double-quoted value expands
/// `$NAME` and `${NAME}` from `env` and the lines before it (unset: empty). Blank lines,
/// `#` comments and lines without a valid name are skipped.
pub fn parse_env_file(text: &str, env: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if !is_env_name(key) {
            continue;
        }
        let lookup = |name: &str| -> String {
            out.iter()
                .rev()
                .chain(env.iter().rev())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let value = if raw.len() >= 2 && raw.starts_with('\'') && raw.ends_with('\'') {
            raw[1..raw.len() - 1].to_string()
        } else if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
            expand(&unescape(&raw[1..raw.len() - 1]), &lookup)
        } else {
            expand(raw, &lookup)
        };
        out.retain(|(k, _)| k != key);
        out.push((key.to_string(), value));
    }
    out
}

fn is_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c == b'_' || c.is_ascii_alphabetic())
        && b.all(|c| c == b'_' || c.is_ascii_alphanumeric())
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some(e @ ('\\' | '"')) => out.push(e),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// `$NAME` and `${NAME}` replaced by `lookup(NAME)`; any other `$` stays.
fn expand(s: &str, lookup: &dyn Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(body) = after.strip_prefix('{')
            && let Some(end) = body.find('}')
            && is_env_name(&body[..end])
        {
            out.push_str(&lookup(&body[..end]));
            rest = &body[end + 1..];
            continue;
        }
        let n = after
            .bytes()
            .enumerate()
            .take_while(|&(j, c)| {
                c == b'_' || c.is_ascii_alphabetic() || (j > 0 && c.is_ascii_digit())
            })
            .count();
        if n == 0 {
            out.push('$');
            rest = after;
        } else {
            out.push_str(&lookup(&after[..n]));
            rest = &after[n..];
        }
    }
    out.push_str(rest);
    out
}

pub fn sandbox_path(cwd: Option<&str>) -> Result<String, SandboxError> {
    let cwd = cwd.map(str::trim).filter(|c| !c.is_empty());
    let p = match cwd {
        None => return Ok(runcell_jail::WORKSPACE.to_string()),
        Some(c) if c.starts_with('/') => c.to_string(),
        Some(c) => format!("{}/{c}", runcell_jail::WORKSPACE),
    };
    if p.contains('\0') || p.len() > 4096 {
        return Err(SandboxError::Invalid(
            "cwd must be a path without NUL bytes, at most 4096 bytes".into(),
        ));
    }
    Ok(p)
}

impl Sandbox {
    /// Starts a command. Output of a foreground command is streamed; of a background one,
    /// logged. A command that cannot start (say, its `cwd` does not exist) ends at once with
    /// an error.
    pub fn start_command(&self, spec: CommandSpec) -> Result<Arc<Command>, SandboxError> {
        self.check_open()?;
        let cwd = sandbox_path(spec.cwd.as_deref())?;
        let mut env = base_env();
        for (k, v) in self.env() {
            env.retain(|(x, _)| x != k);
            env.push((k.clone(), v.clone()));
        }
        let persisted = self.persisted_env(&env);
        for (k, v) in persisted.iter().chain(spec.envs.iter()) {
            env.retain(|(x, _)| x != k);
            env.push((k.clone(), v.clone()));
        }
        let mut process = self.engine().sandbox_process(
            vec![SHELL.into(), "-c".into(), spec.command.clone()],
            env,
            self.budget(),
            self.config().cpu_secs,
        );
        process.cwd = cwd.into();
        let started_at = SystemTime::now();
        let started = Instant::now();
        let (done, _) = watch::channel(false);
        let proc = self
            .jail()
            .start(
                &process,
                StdinSource::Null,
                OutputTarget::Pipe,
                OutputTarget::Pipe,
            )
            .map_err(SandboxError::from);
        let (proc, killer) = match proc {
            Ok(p) => {
                let k = p.killer().ok();
                (Some(p), k)
            }
            Err(e) => {
                tracing::debug!("starting a command: {e}");
                (None, None)
            }
        };
        let cmd = Arc::new(Command {
            id: crate::ids::command_id(),
            content: spec.command.clone(),
            background: spec.background,
            started_at,
            inner: Mutex::new(Inner {
                running: true,
                exit_code: None,
                error: None,
                finished_at: None,
                log: Vec::new(),
                log_base: 0,
                history: Vec::new(),
                subscribers: Vec::new(),
                partial: [Vec::new(), Vec::new()],
                history_bytes: 0,
            }),
            killer,
            done,
        });
        self.remember(&cmd);
        let Some(proc) = proc else {
            cmd.finish(
                255,
                Some("the command could not be started in the sandbox".into()),
                started.elapsed(),
            );
            return Ok(cmd);
        };
        let wall = spec
            .timeout
            .unwrap_or(Duration::from_secs(self.config().cpu_secs));
        let jail = Arc::clone(self.jail());
        let c = Arc::clone(&cmd);
        std::thread::Builder::new()
            .name("runcell-command".into())
            .spawn(move || {
                let forever = Duration::from_secs(100 * 365 * 24 * 3600);
                let limits = RunLimits {
                    wall_time: wall,
                    cpu_time: forever,
                    output_bytes: u64::MAX,
                };
                let outcome = jail.supervise(proc, &limits, &mut |s, b| c.output(s, b));
                let (code, error) = match outcome {
                    Ok(o) => exit_of(&o),
                    Err(e) => (-1, Some(format!("supervising the command failed: {e}"))),
                };
                c.finish(code, error, started.elapsed());
            })
            .map_err(|e| SandboxError::Kernel(format!("starting a supervisor thread: {e}")))?;
        Ok(cmd)
    }

    fn remember(&self, cmd: &Arc<Command>) {
        let mut all = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() >= MAX_COMMANDS {
            // Forget the oldest finished ones.
            let mut done: Vec<(SystemTime, String)> = all
                .values()
                .filter(|c| !c.is_running())
                .map(|c| (c.started_at, c.id.clone()))
                .collect();
            done.sort();
            for (_, id) in done.into_iter().take(all.len() + 1 - MAX_COMMANDS) {
                all.remove(&id);
            }
        }
        all.insert(cmd.id.clone(), Arc::clone(cmd));
    }

    pub fn command(&self, id: &str) -> Option<Arc<Command>> {
        self.commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Commands still running.
    pub fn running_commands(&self) -> usize {
        self.commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|c| c.is_running())
            .count()
    }
}

/// Commands remembered per sandbox (finished ones are forgotten oldest first beyond it).
pub const MAX_COMMANDS: usize = 1024;

/// The commands of a sandbox.
pub type Commands = Mutex<HashMap<String, Arc<Command>>>;

// --- bash sessions ---------------------------------------------------------------------------

/// A bash session: commands run one at a time in a fresh `bash` that starts from the
/// session's saved working directory and exported variables, and saves them when it ends
/// (in the sandbox's private runtime directory, as the sandbox's user).
pub struct Session {
    pub id: String,
    /// Where the first command starts.
    cwd: String,
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// Quotes a string for the shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The script around a session's command: restore, run in this shell (so `cd` and `export`
/// stick), save on any exit; standard error joins standard output.
fn session_script(dir: &str, first_cwd: &str, cwd: Option<&str>, command: &str) -> String {
    let cd = match cwd {
        Some(c) => format!("cd {} || exit 1\n", quote(c)),
        None => String::new(),
    };
    format!(
        "__rc_dir={dir}\n\
         mkdir -p \"$__rc_dir\" 2>/dev/null\n\
         if [ -f \"$__rc_dir/env\" ]; then . \"$__rc_dir/env\" 2>/dev/null; fi\n\
         if [ -f \"$__rc_dir/cwd\" ]; then cd \"$(cat \"$__rc_dir/cwd\")\" 2>/dev/null; \
         else cd {first} 2>/dev/null; fi\n\
         __rc_save() {{ export -p > \"$__rc_dir/env\" 2>/dev/null; pwd > \"$__rc_dir/cwd\" 2>/dev/null; }}\n\
         trap __rc_save EXIT\n\
         exec 2>&1\n\
         {cd}{command}\n",
        dir = quote(dir),
        first = quote(first_cwd),
    )
}

impl Sandbox {
    /// Creates a bash session whose first command starts in `cwd`.
    pub fn create_session(&self, cwd: Option<&str>) -> Result<Arc<Session>, SandboxError> {
        self.check_open()?;
        let session = Arc::new(Session {
            id: crate::ids::context_id(),
            cwd: sandbox_path(cwd)?,
            lock: Arc::new(tokio::sync::Mutex::new(())),
        });
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.id.clone(), Arc::clone(&session));
        Ok(session)
    }

    pub fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub fn delete_session(&self, id: &str) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .is_some()
    }

    /// Runs a command in a session once the session's previous command has ended; it holds
    /// the session until it ends.
    pub async fn run_in_session(
        &self,
        session: &Arc<Session>,
        command: &str,
        cwd: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Arc<Command>, SandboxError> {
        let cwd = match cwd.map(str::trim).filter(|c| !c.is_empty()) {
            Some(c) => Some(sandbox_path(Some(c))?),
            None => None,
        };
        let guard = Arc::clone(&session.lock).lock_owned().await;
        let dir = format!("{}/sessions/{}", runcell_jail::RUNTIME_DIR, session.id);
        let cmd = self.start_command(CommandSpec {
            command: session_script(&dir, &session.cwd, cwd.as_deref(), command),
            cwd: None,
            envs: Vec::new(),
            timeout,
            background: false,
        })?;
        let c = Arc::clone(&cmd);
        tokio::spawn(async move {
            c.wait().await;
            drop(guard);
        });
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_as_the_sdk_writes_them() {
        let env = vec![
            ("PATH".to_string(), "/usr/bin".to_string()),
            ("HOME".to_string(), "/workspace".to_string()),
        ];
        let text = "# a comment\n\n\
            A='lit $HOME \\n \"q\"'\n\
            B=\"it's \\\"x\\\" a\\nb \\\\ $HOME\"\n\
            PATH=/opt/bin:$PATH\n\
            C=${A}-$NOPE-$-$1x\n\
            bad-name=1\n\
            no equals sign\n\
            A='again'\n";
        let got = parse_env_file(text, &env);
        let get = |k: &str| got.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        assert_eq!(get("A"), Some("again"), "later lines win: {got:?}");
        assert_eq!(get("B"), Some("it's \"x\" a\nb \\ /workspace"));
        assert_eq!(get("PATH"), Some("/opt/bin:/usr/bin"));
        assert_eq!(get("C"), Some("lit $HOME \\n \"q\"--$-$1x"));
        assert_eq!(get("bad-name"), None);
        assert_eq!(got.len(), 4, "{got:?}");
    }

    #[test]
    fn paths_and_quotes() {
        assert_eq!(sandbox_path(None).unwrap(), "/workspace");
        assert_eq!(sandbox_path(Some("src")).unwrap(), "/workspace/src");
        assert_eq!(sandbox_path(Some("/tmp")).unwrap(), "/tmp");
        assert!(sandbox_path(Some("a\0b")).is_err());
        assert_eq!(quote("it's"), "'it'\\''s'");
        let s = session_script(
            "/run/runcell/sessions/x",
            "/workspace",
            Some("/tmp"),
            "echo hi",
        );
        assert!(s.contains("cd '/tmp' || exit 1\necho hi\n"), "{s}");
        assert!(s.contains("trap __rc_save EXIT"));
    }

    fn outcome(exit: Exit, limit: Option<Limit>) -> runcell_jail::Outcome {
        runcell_jail::Outcome {
            exit,
            limit,
            wall_time: Duration::ZERO,
            cpu_time: Duration::ZERO,
            memory_peak_bytes: 0,
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout_truncated: false,
            stderr_truncated: false,
            stdout: Vec::new(),
            stderr: Vec::new(),
            killed_by_us: false,
            oom_kills_at_start: 0,
            oom_kills_at_exit: 0,
        }
    }

    #[test]
    fn a_command_reports_what_happened_to_its_own_process() {
        let killed = Exit::Signaled(libc::SIGKILL);
        // Exit 0 is success whatever else the supervisor noticed.
        for l in [None, Some(Limit::Memory), Some(Limit::Processes)] {
            assert_eq!(exit_of(&outcome(Exit::Exited(0), l)), (0, None));
        }
        assert_eq!(
            exit_of(&outcome(killed, Some(Limit::Memory))),
            (-1, Some("signal: killed (memory limit)".into()))
        );
        assert_eq!(
            exit_of(&outcome(killed, Some(Limit::WallTime))),
            (-1, Some("signal: killed (timeout)".into()))
        );
        assert_eq!(
            exit_of(&outcome(killed, None)),
            (-1, Some("signal: killed".into()))
        );
        // A refused fork does not kill: the exit status stays.
        let (code, err) = exit_of(&outcome(Exit::Exited(1), Some(Limit::Processes)));
        assert_eq!(code, 1);
        assert!(
            err.as_deref()
                .is_some_and(|e| e.starts_with("exit status 1 (") && e.contains("process limit")),
            "{err:?}"
        );
        assert_eq!(
            exit_of(&outcome(Exit::Exited(3), None)),
            (3, Some("exit status 3".into()))
        );
    }
}
