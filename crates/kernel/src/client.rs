//! The Jupyter client side of one kernel: shell, IOPub and control channels over ZeroMQ,
//! each reaching the kernel through a guarded pump.

use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jupyter_protocol::{ExecuteRequest, JupyterMessage, JupyterMessageContent, KernelInfoRequest};
use jupyter_zmq_client::Connection;
use serde_json::{Map, Value};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use zeromq::{Socket, SocketRecv};

use runcell_jail::Jail;

use crate::KernelError;
use crate::guard::{GuardLimits, pump};

/// Something the kernel produced while running code.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Text on standard output (`stdout: true`) or standard error.
    Stream { stdout: bool, text: String },
    /// A MIME bundle: the value of the last expression (`main`), or a `display()`.
    Display {
        data: Map<String, Value>,
        main: bool,
    },
    /// The execution count of this run.
    ExecutionCount(u64),
    /// The code raised.
    Error {
        ename: String,
        evalue: String,
        traceback: Vec<String>,
    },
}

/// The kernel's verdict on a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStatus {
    Ok,
    Error,
    Aborted,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecuteOutcome {
    pub status: ReplyStatus,
    pub execution_count: Option<u64>,
}

type Shell = Connection<zeromq::DealerSocket>;

/// How long a reply may lag behind the kernel's idle status before it counts as lost.
const LOST_REPLY: Duration = Duration::from_millis(500);

/// Consecutive unreadable messages after which the connection is considered broken.
const MAX_BAD_MESSAGES: u32 = 64;
type IoPub = Connection<zeromq::SubSocket>;

/// One kernel's connections.
pub struct KernelConnection {
    shell: Shell,
    iopub: IoPub,
    #[allow(dead_code)]
    control: Shell,
    alive: watch::Receiver<bool>,
    sockets: Vec<PathBuf>,
}

fn proto(e: impl std::fmt::Display) -> KernelError {
    KernelError::Protocol(e.to_string())
}

/// Connects to a port of the jail's loopback, retrying until the kernel listens.
async fn connect_kernel_port(
    jail: &Arc<Jail>,
    port: u16,
    deadline: Instant,
    alive: &watch::Receiver<bool>,
) -> Result<tokio::net::TcpStream, KernelError> {
    loop {
        if !*alive.borrow() {
            return Err(KernelError::Dead(" while starting".into()));
        }
        let j = Arc::clone(jail);
        let r =
            tokio::task::spawn_blocking(move || j.connect_tcp(port, Duration::from_millis(500)))
                .await
                .map_err(proto)?;
        match r {
            Ok(s) => {
                let s: StdTcpStream = s;
                s.set_nonblocking(true)?;
                return Ok(tokio::net::TcpStream::from_std(s)?);
            }
            Err(e) if Instant::now() < deadline => {
                tracing::trace!("kernel port {port} not ready: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(KernelError::Start(format!(
                    "nothing listens on port {port} of the jail: {e}"
                )));
            }
        }
    }
}

/// Exposes a connected kernel stream on a private unix socket for the ZeroMQ client; the
/// stream passes the guard. Returns the socket's path.
async fn expose(
    kernel: tokio::net::TcpStream,
    dir: &Path,
    channel: &str,
    limits: GuardLimits,
    alive_tx: Arc<watch::Sender<bool>>,
) -> Result<PathBuf, KernelError> {
    let path = dir.join(format!("{}-{channel}.sock", uuid::Uuid::new_v4().simple()));
    let listener = UnixListener::bind(&path)?;
    let p = path.clone();
    tokio::spawn(async move {
        let accepted: std::io::Result<(UnixStream, _)> = listener.accept().await;
        drop(listener);
        let _ = std::fs::remove_file(&p);
        if let Ok((client, _)) = accepted
            && let Err(e) = pump(kernel, client, limits).await
        {
            tracing::warn!("kernel connection closed: {e}");
        }
        // A broken connection is a dead kernel.
        alive_tx.send_replace(false);
    });
    Ok(path)
}

impl KernelConnection {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn connect(
        jail: &Arc<Jail>,
        ports: [u16; 5],
        key: &str,
        sock_dir: &Path,
        limits: GuardLimits,
        alive_tx: Arc<watch::Sender<bool>>,
        alive: watch::Receiver<bool>,
        deadline: Instant,
    ) -> Result<KernelConnection, KernelError> {
        let session = uuid::Uuid::new_v4().to_string();
        let mut paths = Vec::new();
        for (port, channel) in [
            (ports[0], "shell"),
            (ports[1], "iopub"),
            (ports[3], "control"),
        ] {
            let stream = connect_kernel_port(jail, port, deadline, &alive).await?;
            paths.push(expose(stream, sock_dir, channel, limits, Arc::clone(&alive_tx)).await?);
        }
        let endpoint = |p: &Path| format!("ipc://{}", p.display());
        let mut shell_sock = zeromq::DealerSocket::new();
        shell_sock
            .connect(&endpoint(&paths[0]))
            .await
            .map_err(proto)?;
        let mut iopub_sock = zeromq::SubSocket::new();
        iopub_sock.subscribe("").await.map_err(proto)?;
        iopub_sock
            .connect(&endpoint(&paths[1]))
            .await
            .map_err(proto)?;
        let mut control_sock = zeromq::DealerSocket::new();
        control_sock
            .connect(&endpoint(&paths[2]))
            .await
            .map_err(proto)?;
        let mut conn = KernelConnection {
            shell: Connection::new(shell_sock, key, &session),
            iopub: Connection::new(iopub_sock, key, &session),
            control: Connection::new(control_sock, key, &session),
            alive,
            sockets: paths,
        };
        conn.handshake(deadline).await?;
        Ok(conn)
    }

    /// Waits until the kernel answers and IOPub is subscribed: kernel_info requests are
    /// repeated until one of them shows on IOPub (messages published before the subscription
    /// took effect are lost, so the first executions must not start earlier).
    async fn handshake(&mut self, deadline: Instant) -> Result<(), KernelError> {
        let mut replied = false;
        let mut subscribed = false;
        while !(replied && subscribed) {
            if Instant::now() >= deadline {
                return Err(KernelError::Start(
                    "the kernel did not answer in time".into(),
                ));
            }
            let req = JupyterMessage::new(KernelInfoRequest {}, None);
            let id = req.header.msg_id.clone();
            self.shell.send(req).await.map_err(proto)?;
            let round = Instant::now() + Duration::from_millis(500);
            loop {
                let now = Instant::now();
                if now >= round {
                    break;
                }
                let wait = round - now;
                let mut alive = self.alive.clone();
                tokio::select! {
                    m = self.iopub.read() => {
                        let m = m.map_err(proto)?;
                        if m.parent_header.as_ref().is_some_and(|p| p.msg_id == id) {
                            subscribed = true;
                        }
                    }
                    m = self.shell.read() => match m {
                        Ok(m) => {
                            if matches!(m.content, JupyterMessageContent::KernelInfoReply(_)) {
                                replied = true;
                            }
                        }
                        // Some kernels (bash_kernel) leave out fields of their info that the
                        // protocol crate requires; an answer is an answer.
                        Err(e) if e.to_string().contains("kernel_info_reply") => replied = true,
                        Err(e) => return Err(proto(e)),
                    },
                    _ = alive.changed() => {
                        if !*alive.borrow() {
                            return Err(KernelError::Dead(" while starting".into()));
                        }
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
                if replied && subscribed {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Runs `code`, passing outputs to `on` until the kernel is idle again, then returns its
    /// reply.
    pub(crate) async fn execute(
        &mut self,
        code: &str,
        silent: bool,
        settle: Duration,
        on: &mut (dyn FnMut(Event) + Send),
    ) -> Result<ExecuteOutcome, KernelError> {
        let req = JupyterMessage::new(
            ExecuteRequest {
                code: code.to_string(),
                silent,
                store_history: !silent,
                user_expressions: None,
                allow_stdin: false,
                stop_on_error: true,
            },
            None,
        );
        let id = req.header.msg_id.clone();
        self.shell.send(req).await.map_err(proto)?;
        let mut reply: Option<ExecuteOutcome> = None;
        let mut idle = false;
        let mut count: Option<u64> = None;
        let mut errors = 0u32;
        // When the kernel is idle again without having replied (an interrupt that landed in
        // the kernel's own code can lose the reply), the run is over all the same.
        let mut idle_since: Option<tokio::time::Instant> = None;
        while !(idle && reply.is_some()) {
            let mut alive = self.alive.clone();
            tokio::select! {
                _ = tokio::time::sleep_until(
                    idle_since.map(|t| t + LOST_REPLY).unwrap_or_else(tokio::time::Instant::now)
                ), if idle_since.is_some() => {
                    tracing::debug!("the kernel went idle without replying to {id}");
                    break;
                }
                m = self.iopub.read(), if !idle => {
                    let m = match m {
                        Ok(m) => {
                            errors = 0;
                            m
                        }
                        Err(e) => {
                            // A message this client cannot parse is skipped; a broken
                            // connection also ends the kernel's liveness.
                            errors += 1;
                            tracing::debug!("unreadable IOPub message: {e}");
                            if errors > MAX_BAD_MESSAGES {
                                return Err(proto(e));
                            }
                            continue;
                        }
                    };
                    if m.parent_header.as_ref().is_none_or(|p| p.msg_id != id) {
                        continue;
                    }
                    if output(m.content, &mut count, on) {
                        idle = true;
                        if reply.is_none() {
                            idle_since = Some(tokio::time::Instant::now());
                        }
                    }
                }
                m = self.shell.read(), if reply.is_none() => {
                    let m = match m {
                        Ok(m) => {
                            errors = 0;
                            m
                        }
                        Err(e) => {
                            errors += 1;
                            tracing::debug!("unreadable shell message: {e}");
                            if errors > MAX_BAD_MESSAGES {
                                return Err(proto(e));
                            }
                            continue;
                        }
                    };
                    if m.parent_header.as_ref().is_none_or(|p| p.msg_id != id) {
                        continue;
                    }
                    if let JupyterMessageContent::ExecuteReply(r) = m.content {
                        let status = match r.status {
                            jupyter_protocol::ReplyStatus::Ok => ReplyStatus::Ok,
                            jupyter_protocol::ReplyStatus::Error => ReplyStatus::Error,
                            _ => ReplyStatus::Aborted,
                        };
                        let n = r.execution_count.value() as u64;
                        if count.is_none() && n > 0 {
                            count = Some(n);
                            on(Event::ExecutionCount(n));
                        }
                        reply = Some(ExecuteOutcome { status, execution_count: count.or(Some(n)) });
                    }
                }
                _ = alive.changed() => {
                    if !*alive.borrow() {
                        return Err(KernelError::Dead(" while running the code".into()));
                    }
                }
            }
        }
        // Some kernels (Deno's) publish a result through an internal queue that the idle
        // status can overtake: what still arrives for this request within `settle` of the
        // last message belongs to it.
        while !settle.is_zero() {
            match tokio::time::timeout(settle, self.iopub.read()).await {
                Ok(Ok(m)) => {
                    if m.parent_header.as_ref().is_some_and(|p| p.msg_id == id) {
                        output(m.content, &mut count, on);
                    }
                }
                Ok(Err(_)) | Err(_) => break,
            }
        }
        Ok(reply.unwrap_or(ExecuteOutcome {
            status: ReplyStatus::Aborted,
            execution_count: count,
        }))
    }
}

/// Passes one IOPub message of a request on to `on`; true when it is the kernel's idle status.
fn output(
    content: JupyterMessageContent,
    count: &mut Option<u64>,
    on: &mut (dyn FnMut(Event) + Send),
) -> bool {
    match content {
        JupyterMessageContent::StreamContent(s) => on(Event::Stream {
            stdout: matches!(s.name, jupyter_protocol::Stdio::Stdout),
            text: s.text,
        }),
        JupyterMessageContent::DisplayData(d) => on(Event::Display {
            data: bundle(&d.data),
            main: false,
        }),
        JupyterMessageContent::UpdateDisplayData(d) => on(Event::Display {
            data: bundle(&d.data),
            main: false,
        }),
        JupyterMessageContent::ExecuteResult(r) => {
            let n = r.execution_count.value() as u64;
            if *count != Some(n) {
                *count = Some(n);
                on(Event::ExecutionCount(n));
            }
            on(Event::Display {
                data: bundle(&r.data),
                main: true,
            });
        }
        JupyterMessageContent::ExecuteInput(i) => {
            let n = i.execution_count.value() as u64;
            if *count != Some(n) {
                *count = Some(n);
                on(Event::ExecutionCount(n));
            }
        }
        JupyterMessageContent::ErrorOutput(e) => on(Event::Error {
            ename: e.ename,
            evalue: e.evalue,
            traceback: e.traceback,
        }),
        JupyterMessageContent::Status(s) => {
            return matches!(s.execution_state, jupyter_protocol::ExecutionState::Idle);
        }
        _ => {}
    }
    false
}

impl Drop for KernelConnection {
    fn drop(&mut self) {
        for p in &self.sockets {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A MIME bundle as a JSON map (`"text/plain": "…"`, `"image/png": "<base64>"`, …).
fn bundle(media: &jupyter_protocol::Media) -> Map<String, Value> {
    match serde_json::to_value(media) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

#[allow(dead_code)]
fn _assert_recv<S: SocketRecv>() {}
