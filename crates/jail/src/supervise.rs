//! Supervising a started program: enforcing wall time, CPU time (summed over every process
//! and thread of the jail) and output size; collecting its output; and measuring what
//! happened. Runs in any thread of the client (it does not fork).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use crate::agent::Stage;
use crate::client::{Jail, OutputTarget, Process, Start, StdinSource};
use crate::config::ProcessSpec;
use crate::error::{Context, JailError};
use crate::proto::{RECORD_FINISHED, RECORD_STARTED, StepRecord, monotonic_ns};

/// Limits the supervisor enforces (the kernel enforces memory, tasks, file size and the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// Wall-clock time from the program's start.
    pub wall_time: Duration,
    /// CPU time of every process and thread of the jail together.
    pub cpu_time: Duration,
    /// Bytes per output stream; one byte more kills the program.
    pub output_bytes: u64,
}

/// The limit that ended a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    WallTime,
    CpuTime,
    Memory,
    Output,
    FileSize,
    Processes,
}

impl Limit {
    /// The API name of the limit.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::WallTime => "wall_time",
            Limit::CpuTime => "cpu_time",
            Limit::Memory => "memory",
            Limit::Output => "output",
            Limit::FileSize => "file_size",
            Limit::Processes => "processes",
        }
    }
}

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it (the supervisor's SIGKILL for a limit included).
    Signaled(i32),
    /// It never ran: starting it failed at `stage` with `errno`.
    NotStarted { stage: Stage, errno: i32 },
}

impl Exit {
    pub fn success(&self) -> bool {
        matches!(self, Exit::Exited(0))
    }
}

/// See [`Outcome::oom_killed_after`].
/// The CPUs the jails may use (read once: the standard library reads the process's cgroup
/// quota, three files, every time it is asked).
fn cpu_count() -> u64 {
    crate::cpus::host_cpus() as u64
}

fn oom_killed(exit: &Exit, killed_by_us: bool, oom_kills_at_exit: u64, since: u64) -> bool {
    *exit == Exit::Signaled(libc::SIGKILL) && !killed_by_us && oom_kills_at_exit > since
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What happened to a supervised program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit: Exit,
    /// The limit that ended the run, if one did.
    pub limit: Option<Limit>,
    /// From the program's fork to its exit (or to its kill).
    pub wall_time: Duration,
    /// CPU time of the whole jail during the run.
    pub cpu_time: Duration,
    /// Peak memory of the whole jail during the run, tmpfs included.
    pub memory_peak_bytes: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Captured output ([`Jail::run`] only; empty with [`Jail::supervise`]).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Whether the run was ended by us: the supervisor killed it for a limit, SIGKILL was sent
    /// through its [`crate::Killer`] (or a clone), or the jail was destroyed.
    pub killed_by_us: bool,
    /// The jail cgroup's count of out-of-memory kills when the program was started, and when
    /// its end was first seen (the status record or the step's exit, whichever came first).
    pub oom_kills_at_start: u64,
    pub oom_kills_at_exit: u64,
}

impl Outcome {
    /// Whether the program itself was killed by the out-of-memory killer, as far as the kernel
    /// lets us tell, counting only OOM kills after the cgroup's counter read `since`: it died
    /// of a SIGKILL that nobody of ours sent, and the jail's OOM counter had risen past `since`
    /// by the time its death was seen. (The kernel does not say which process a memory
    /// cgroup's OOM kill took; a program that SIGKILLs itself while another process of the
    /// jail is OOM-killed is counted too.)
    pub fn oom_killed_after(&self, since: u64) -> bool {
        oom_killed(&self.exit, self.killed_by_us, self.oom_kills_at_exit, since)
    }

    /// [`Outcome::oom_killed_after`] over the program's whole life.
    pub fn oom_killed(&self) -> bool {
        self.oom_killed_after(self.oom_kills_at_start)
    }
}

/// How long to wait for the output pipes to close once the step has died (they close at once
/// unless something outside the jail holds a write end).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// The same for a shared step (a sandbox's command): what still holds its output once it has
/// died is something it left running in the background (a daemon), which must not delay the
/// result; output already in the pipes is read at once.
const SHARED_DRAIN_GRACE: Duration = Duration::from_millis(100);
const READ_CHUNK: usize = 64 * 1024;

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a valid descriptor.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Reads what is available; `Ok(None)` at end of file.
fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: reading into a buffer we own, of its true length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            return Ok(Some(n as usize));
        }
        if n == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(Some(0)),
            _ => return Err(e),
        }
    }
}

struct OutputState {
    fd: Option<OwnedFd>,
    bytes: u64,
    truncated: bool,
}

impl Jail {
    /// Starts `spec` and supervises it to the end, capturing its output.
    pub fn run(
        &self,
        spec: &ProcessSpec,
        stdin: StdinSource,
        limits: &RunLimits,
    ) -> Result<Outcome, JailError> {
        self.run_with(Start::default(), spec, stdin, limits)
    }

    /// Like [`Jail::run`], started as `how` says (see [`Jail::start_with`]).
    pub fn run_with(
        &self,
        how: Start,
        spec: &ProcessSpec,
        stdin: StdinSource,
        limits: &RunLimits,
    ) -> Result<Outcome, JailError> {
        let process = self.start_with(how, spec, stdin, OutputTarget::Pipe, OutputTarget::Pipe)?;
        self.collect(process, limits)
    }

    /// Supervises `process`, keeping its output in the outcome.
    fn collect(&self, process: Process, limits: &RunLimits) -> Result<Outcome, JailError> {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut outcome = self.supervise(process, limits, &mut |s, chunk| match s {
            Stream::Stdout => out.extend_from_slice(chunk),
            Stream::Stderr => err.extend_from_slice(chunk),
        })?;
        outcome.stdout = out;
        outcome.stderr = err;
        Ok(outcome)
    }

    /// Supervises a started program until it and everything it started are gone, passing
    /// output (up to the limit per stream) to `on_output` as it arrives.
    pub fn supervise(
        &self,
        process: Process,
        limits: &RunLimits,
        on_output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<Outcome, JailError> {
        let Process {
            pidfd,
            status,
            stdout,
            stderr,
            baseline,
            sent_ns,
            killer,
            handed_off,
            frozen_base_ns,
        } = process;
        let mut outputs = [
            OutputState {
                fd: stdout,
                bytes: 0,
                truncated: false,
            },
            OutputState {
                fd: stderr,
                bytes: 0,
                truncated: false,
            },
        ];
        for o in &outputs {
            if let Some(fd) = &o.fd {
                set_nonblocking(fd.as_fd()).ctx(|| "set output non-blocking".into())?;
            }
        }
        set_nonblocking(status.as_fd()).ctx(|| "set status non-blocking".into())?;
        let mut status_fd = Some(status);
        let mut step_alive = true;
        // A program handed off to its run started (for its measurements) at the hand-off.
        let mut started_ns: Option<u64> = handed_off.then_some(sent_ns);
        let mut finished: Option<StepRecord> = None;
        let mut record_buf: Vec<u8> = Vec::with_capacity(StepRecord::SIZE * 2);
        let mut kill_reason: Option<Limit> = None;
        let mut killed_ns: Option<u64> = None;
        let mut step_dead_ns: Option<u64> = None;
        // The OOM counter as soon as the program's end is seen, so that kills of other
        // processes of a shared jail after it died are not counted against it.
        let mut oom_at_exit: Option<u64> = None;
        let oom_now = || self.cgroup.oom_kills().ok();
        let wall_ns = limits.wall_time.as_nanos().min(u64::MAX as u128) as u64;
        let cpu_limit_ns = limits.cpu_time.as_nanos().min(u64::MAX as u128) as u64;
        let ncpu = cpu_count();
        let mut next_cpu_check = sent_ns;
        let mut buf = vec![0u8; READ_CHUNK];
        let shared = killer.is_shared();
        let drain = if shared {
            SHARED_DRAIN_GRACE
        } else {
            DRAIN_GRACE
        };

        let kill = |reason: Limit, kill_reason: &mut Option<Limit>, killed_ns: &mut Option<u64>| {
            if kill_reason.is_none() {
                *kill_reason = Some(reason);
                *killed_ns = Some(monotonic_ns());
            }
            let _ = killer.kill();
        };

        loop {
            let outputs_open = outputs.iter().any(|o| o.fd.is_some());
            if !step_alive && !outputs_open && status_fd.is_none() {
                break;
            }
            // A private step's init exits right after recording the program's end, and the
            // kernel then kills whatever is left in its pid namespace: once the record is in
            // and nothing holds the output open, the result does not wait for that teardown.
            if !shared && finished.is_some() && !outputs_open {
                break;
            }
            let now = monotonic_ns();
            if !step_alive && step_dead_ns.is_some_and(|t| now - t > drain.as_nanos() as u64) {
                break;
            }
            // Limits, while the step lives and nothing has killed it yet.
            let mut timeout_ns: Option<u64> = None;
            if step_alive && kill_reason.is_none() {
                // Time the jail spent frozen (a paused sandbox) does not count: the deadline
                // moves on with it, so a frozen program is never killed for its wall time.
                let frozen = self.frozen_ns(now).saturating_sub(frozen_base_ns);
                let deadline = started_ns
                    .unwrap_or(sent_ns)
                    .saturating_add(wall_ns)
                    .saturating_add(frozen);
                if now >= deadline {
                    kill(Limit::WallTime, &mut kill_reason, &mut killed_ns);
                } else {
                    if now >= next_cpu_check {
                        let used = self
                            .cgroup
                            .cpu_ns()
                            .ctx(|| "read CPU usage".into())?
                            .saturating_sub(baseline.cpu_ns);
                        if used >= cpu_limit_ns {
                            kill(Limit::CpuTime, &mut kill_reason, &mut killed_ns);
                        } else {
                            // The jail cannot burn more than `ncpu` seconds of CPU per second,
                            // so nothing can happen before this.
                            let wait = ((cpu_limit_ns - used) / ncpu).clamp(1_000_000, 100_000_000);
                            next_cpu_check = now + wait;
                        }
                    }
                    if kill_reason.is_none() {
                        timeout_ns = Some(deadline.min(next_cpu_check) - now);
                    }
                }
            }
            if !step_alive {
                timeout_ns = Some(drain.as_nanos() as u64 / 4);
            }

            let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(4);
            let mut who: Vec<u8> = Vec::with_capacity(4);
            let mut add = |fd: &OwnedFd, tag: u8| {
                pfds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                who.push(tag);
            };
            if step_alive {
                add(&pidfd, 0);
            }
            if let Some(fd) = &status_fd {
                add(fd, 1);
            }
            for (i, o) in outputs.iter().enumerate() {
                if let Some(fd) = &o.fd {
                    add(fd, 2 + i as u8);
                }
            }
            let timeout_ms = match timeout_ns {
                Some(ns) => (ns.div_ceil(1_000_000)).min(i32::MAX as u64) as i32,
                None => -1,
            };
            // SAFETY: poll on a vector of pollfds we own, with its true length.
            let n =
                unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(JailError::io("poll", e));
            }
            for (p, tag) in pfds.iter().zip(who.iter()) {
                if p.revents == 0 {
                    continue;
                }
                match tag {
                    0 => {
                        step_alive = false;
                        step_dead_ns = Some(monotonic_ns());
                        if oom_at_exit.is_none() {
                            oom_at_exit = oom_now();
                        }
                    }
                    1 => {
                        let fd = status_fd.as_ref().expect("polled status is open");
                        match read_some(fd.as_fd(), &mut buf).ctx(|| "read status".into())? {
                            None => status_fd = None,
                            Some(n) => {
                                record_buf.extend_from_slice(&buf[..n]);
                                while record_buf.len() >= StepRecord::SIZE {
                                    let mut raw = [0u8; StepRecord::SIZE];
                                    raw.copy_from_slice(&record_buf[..StepRecord::SIZE]);
                                    record_buf.drain(..StepRecord::SIZE);
                                    let r = StepRecord::from_bytes(&raw);
                                    match r.kind {
                                        RECORD_STARTED if !handed_off => {
                                            started_ns = Some(r.time_ns)
                                        }
                                        RECORD_FINISHED => {
                                            finished = Some(r);
                                            if oom_at_exit.is_none() {
                                                oom_at_exit = oom_now();
                                            }
                                        }
                                        _ => {}
                                    }
                                }
                            }
                        }
                    }
                    t => {
                        let i = (*t - 2) as usize;
                        let stream = if i == 0 {
                            Stream::Stdout
                        } else {
                            Stream::Stderr
                        };
                        let o = &mut outputs[i];
                        let fd = o.fd.as_ref().expect("polled output is open");
                        match read_some(fd.as_fd(), &mut buf).ctx(|| "read output".into())? {
                            None => o.fd = None,
                            Some(0) => {}
                            Some(n) => {
                                let room = limits.output_bytes.saturating_sub(o.bytes);
                                let keep = (n as u64).min(room) as usize;
                                if keep > 0 {
                                    on_output(stream, &buf[..keep]);
                                }
                                o.bytes += n as u64;
                                if (n as u64) > room && !o.truncated {
                                    o.truncated = true;
                                    kill(Limit::Output, &mut kill_reason, &mut killed_ns);
                                }
                            }
                        }
                    }
                }
            }
        }

        let stats = self.cgroup.stats().ctx(|| "read cgroup stats".into())?;
        let exit = match finished {
            Some(r) if r.stage != 0 => Exit::NotStarted {
                stage: Stage::from_u32(r.stage).unwrap_or(Stage::Exec),
                errno: r.errno,
            },
            Some(r) if libc::WIFEXITED(r.wait_status) => {
                Exit::Exited(libc::WEXITSTATUS(r.wait_status))
            }
            Some(r) if libc::WIFSIGNALED(r.wait_status) => {
                Exit::Signaled(libc::WTERMSIG(r.wait_status))
            }
            _ => Exit::Signaled(libc::SIGKILL),
        };
        let start = started_ns.unwrap_or(sent_ns);
        let end = finished
            .filter(|r| r.stage == 0)
            .map(|r| r.time_ns)
            .or(killed_ns)
            .or(step_dead_ns)
            .unwrap_or_else(monotonic_ns);
        let task_limit = stats.task_limit_hits > baseline.task_limit_hits;
        let killed_by_us = kill_reason.is_some() || killer.kill_sent() || self.is_destroyed();
        let oom_kills_at_exit = oom_at_exit.unwrap_or(stats.oom_kills);
        let limit = if killer.is_shared() {
            // Other programs share the jail, its cgroup and its counters: a limit is this
            // program's only if it was itself killed. One that exited did so on its own (even
            // if our kill raced its exit); its OOM kills and refused forks may be anyone's.
            match exit {
                Exit::Signaled(sig) => kill_reason
                    .or_else(|| {
                        oom_killed(&exit, killed_by_us, oom_kills_at_exit, baseline.oom_kills)
                            .then_some(Limit::Memory)
                    })
                    .or(match sig {
                        libc::SIGXFSZ => Some(Limit::FileSize),
                        libc::SIGXCPU => Some(Limit::CpuTime),
                        _ => None,
                    }),
                Exit::Exited(n) if n != 0 && task_limit => Some(Limit::Processes),
                _ => None,
            }
        } else {
            // The jail is this run's alone. An output kill is immediate and ours; an
            // out-of-memory kill is the root cause of whatever followed (a parent waiting for
            // a killed child until the wall limit). So is a failed fork or thread creation:
            // programs often wait (or spin) for the worker that never started (a barrier, a
            // pool, a joined thread) until a time limit kills them.
            let oom = stats.oom_kills > baseline.oom_kills;
            let limit = match kill_reason {
                Some(Limit::Output) => Some(Limit::Output),
                _ if oom => Some(Limit::Memory),
                Some(Limit::WallTime | Limit::CpuTime) if task_limit => Some(Limit::Processes),
                r => r,
            };
            limit.or_else(|| {
                if exit == Exit::Signaled(libc::SIGXFSZ) {
                    Some(Limit::FileSize)
                } else if exit == Exit::Signaled(libc::SIGXCPU) {
                    Some(Limit::CpuTime)
                } else if task_limit && !exit.success() && !matches!(exit, Exit::NotStarted { .. })
                {
                    Some(Limit::Processes)
                } else {
                    None
                }
            })
        };
        Ok(Outcome {
            exit,
            limit,
            wall_time: Duration::from_nanos(end.saturating_sub(start)),
            cpu_time: Duration::from_nanos(stats.cpu_ns.saturating_sub(baseline.cpu_ns)),
            memory_peak_bytes: stats.memory_peak,
            stdout_bytes: outputs[0].bytes,
            stderr_bytes: outputs[1].bytes,
            stdout_truncated: outputs[0].truncated,
            stderr_truncated: outputs[1].truncated,
            stdout: Vec::new(),
            stderr: Vec::new(),
            killed_by_us,
            oom_kills_at_start: baseline.oom_kills,
            oom_kills_at_exit,
        })
    }
}
