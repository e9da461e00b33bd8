//! Zygotes: an interpreter started once, whose forks become jails.
//!
//! Starting Python costs ~10 ms of CPU per run, spent on the same work every time. A zygote does
//! it once: the spawner starts it in namespaces of its own (user, mount, pid, network, IPC,
//! UTS) as an unprivileged host uid, with a clean environment and a fresh `execve` of this
//! binary (so nothing of the spawner's memory is in it). It builds the same root a jail gets,
//! `chroot`s into it and initializes the interpreter there (the embedded `libpython`, with the
//! exact environment and `sys.path` a cold run has), then waits.
//!
//! For each jail the spawner asks it to fork one: the fork leaves the chroot and becomes that
//! jail's agent exactly as a spawner-cloned agent does (see [`crate::agent`]): fresh user
//! namespace mapped to the slot's host uids, fresh mount, pid, network, IPC, UTS, cgroup and
//! time namespaces, the slot's cgroup joined before anything else, a root built and pivoted
//! into with the old one detached. A program started with [`crate::Jail::start_preloaded`]
//! then goes through the same step (its own pid namespace, `/tmp`, `/dev/shm`, session,
//! rlimits, uid 1000 without capabilities, `no_new_privs`, Landlock, seccomp) and, where a
//! cold program would `execve`, runs the preloaded interpreter's command instead.
//!
//! What differs from a cold start, and why it is acceptable, is in `docs/security.md`: memory
//! is a copy-on-write image of the zygote (so the address layout and Python's hash seed are
//! the zygote's, shared by its forks; `random`, `os.urandom`, `uuid4` are fresh per run), and
//! `/proc/self/exe` and `/proc/self/cmdline` name this binary.

use std::ffi::{CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};

use serde::{Deserialize, Serialize};

use crate::agent::{self, AgentPlan, Enter};
use crate::config::{JailConfig, ProcessSpec};
use crate::error::{JailError, WireError};
use crate::proto;
use crate::sys;

/// Descriptor number of a zygote's control socket after its `execve`.
pub(crate) const ZYGOTE_FD: RawFd = 3;
/// The namespaces a jail's agent (and a zygote) is cloned into; the cgroup and time
/// namespaces follow from inside.
pub(crate) const JAIL_NAMESPACES: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWNET;
/// The first argument that makes runcell's binary a zygote (see [`zygote_main`]).
pub const ZYGOTE_ARG: &str = "__zygote";

/// The interpreters a zygote can preload.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ZygoteKind {
    /// CPython, embedded from its shared library (`libpython3.X.so`).
    Python,
}

/// What a zygote preloads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ZygoteSpec {
    pub kind: ZygoteKind,
    /// The interpreter's shared library, as seen inside the jail.
    pub library: PathBuf,
    /// The command a preloaded program runs as: `[interpreter, "-c", code]`. Programs started
    /// preloaded must have exactly this `argv`.
    pub argv: Vec<String>,
    /// The complete environment of the interpreter (the programs' own).
    pub env: Vec<(String, String)>,
    /// The root the interpreter starts in: the jails' own.
    pub config: JailConfig,
}

impl ZygoteSpec {
    pub fn validate(&self) -> Result<(), JailError> {
        self.config.validate()?;
        if !self.library.is_absolute() {
            return Err(JailError::InvalidConfig(
                "a zygote's library must be an absolute path".into(),
            ));
        }
        if self.argv.len() != 3 || self.argv[1] != "-c" || self.argv[0].is_empty() {
            return Err(JailError::InvalidConfig(
                "a Python zygote's command must be [interpreter, \"-c\", code]".into(),
            ));
        }
        let nul = |v: &str| v.contains('\0');
        if self.argv.iter().any(|a| nul(a))
            || self
                .env
                .iter()
                .any(|(k, v)| k.is_empty() || k.contains('=') || nul(k) || nul(v))
        {
            return Err(JailError::InvalidConfig(
                "a zygote's command and environment must be C strings (NAME=value)".into(),
            ));
        }
        Ok(())
    }
}

/// Spawner → zygote, once, right after its `execve`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ZygoteInit {
    pub spec: ZygoteSpec,
    /// The zygote's own root: `spec.config` over the zygote's device nodes.
    pub plan: AgentPlan,
}

/// Spawner → zygote.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ZygoteRequest {
    /// Fork a jail's agent. Descriptors: the agent's control socket, the read end of its sync
    /// pipe, then its cgroup `tasks` files (v1). Answered with `Forked` and a pidfd.
    Fork {
        plan: AgentPlan,
        uid_map: String,
        gid_map: String,
    },
}

/// Zygote → spawner.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ZygoteReply {
    Ready { version: String },
    Forked,
    Error(WireError),
}

/// The zygote's preloaded interpreter, inherited by its forks.
struct Python {
    after_fork_child: unsafe extern "C" fn(),
    run_string: unsafe extern "C" fn(*const c_char, *mut c_void) -> c_int,
    finalize: unsafe extern "C" fn() -> c_int,
    /// `_Py_UnhandledKeyboardInterrupt`: set when a `KeyboardInterrupt` ended the code.
    unhandled_interrupt: usize,
    /// The code of `-c`.
    code: CString,
    argv: Vec<String>,
}

static PYTHON: OnceLock<Python> = OnceLock::new();
static FILTERS: OnceLock<Vec<seccompiler::BpfProgram>> = OnceLock::new();
/// The zygote's mount namespace's real root, and the root it built and lives in (chrooted).
static REAL_ROOT: AtomicI32 = AtomicI32::new(-1);
static OWN_ROOT: AtomicI32 = AtomicI32::new(-1);

/// `chroot` to the directory `dir` names; `/` becomes the working directory.
fn enter(dir: RawFd) -> io::Result<()> {
    // SAFETY: fchdir to a directory descriptor we hold, then chroot/chdir with literal paths.
    let ok = unsafe {
        libc::fchdir(dir) == 0
            && libc::chroot(c".".as_ptr()) == 0
            && libc::chdir(c"/".as_ptr()) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Refuses a preloaded start in a jail that has no preloaded interpreter, or for another
/// command than the one it preloaded.
pub(crate) fn check_preloaded(spec: &ProcessSpec) -> Result<(), JailError> {
    match PYTHON.get() {
        Some(py) if py.argv == spec.argv => Ok(()),
        Some(_) => Err(JailError::InvalidConfig(
            "a preloaded program must have its zygote's command line".into(),
        )),
        None => Err(JailError::InvalidConfig(
            "this jail was not forked from a zygote".into(),
        )),
    }
}

/// Where a cold program would `execve`: runs the preloaded interpreter's command the way
/// `python3 -c CODE` would, and exits with its status. Called in the program's process after
/// every restriction is in place.
pub(crate) fn run_preloaded() -> ! {
    let Some(py) = PYTHON.get() else {
        // SAFETY: ending the process.
        unsafe { libc::_exit(127) }
    };
    // Closing the error pipe tells the step init the program is running (as execve would).
    let _ = sys::close_range(3, libc::c_uint::MAX, 0);
    // SAFETY: the interpreter was initialized in this (forked) process's ancestor on this same
    // thread, which holds the GIL; after a fork CPython requires exactly this call before any
    // other use. Then code runs through the C API with NUL-terminated strings we own.
    unsafe {
        (py.after_fork_child)();
        // The dispositions CPython sets at start-up (the jail reset every signal to default):
        // SIGINT raises KeyboardInterrupt, SIGPIPE and SIGXFSZ are ignored.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        (py.run_string)(
            c"__import__('_signal').signal(2, __import__('_signal').default_int_handler)".as_ptr(),
            std::ptr::null_mut(),
        );
        // Like Py_RunMain: 1 after an uncaught exception (SystemExit exits from inside),
        // 120 if finalizing fails, death by SIGINT after an uncaught KeyboardInterrupt.
        let mut status = if (py.run_string)(py.code.as_ptr(), std::ptr::null_mut()) == 0 {
            0
        } else {
            1
        };
        if (py.finalize)() < 0 {
            status = 120;
        }
        if *(py.unhandled_interrupt as *const c_int) != 0 {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::kill(libc::getpid(), libc::SIGINT);
            status = 130;
        }
        libc::exit(status)
    }
}

/// Entry point of a zygote process (runcell's binary run with [`ZYGOTE_ARG`] by the spawner,
/// already in its namespaces, as uid 0 of its user namespace). Returns its exit status.
pub fn zygote_main() -> i32 {
    // SAFETY: the spawner placed the control socket at ZYGOTE_FD before execve; nothing else
    // in this fresh process owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(ZYGOTE_FD) };
    let init = match proto::recv::<ZygoteInit>(sock.as_fd()) {
        Ok(Some((init, _))) => init,
        _ => return 2,
    };
    match start(&init) {
        Ok(version) => {
            if proto::send(sock.as_fd(), &ZygoteReply::Ready { version }, &[]).is_err() {
                return 1;
            }
        }
        Err(e) => {
            let _ = proto::send(sock.as_fd(), &ZygoteReply::Error(WireError::from(&e)), &[]);
            return 2;
        }
    }
    match serve(sock.as_fd()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn setup_err(what: &str, e: impl Into<io::Error>) -> JailError {
    JailError::Setup {
        stage: "zygote".into(),
        detail: format!("{what}: {}", e.into()),
    }
}

/// Builds the zygote's root, enters it and initializes the interpreter; returns its version.
fn start(init: &ZygoteInit) -> Result<String, JailError> {
    init.spec.validate()?;
    let _ = FILTERS.set(crate::seccomp::filters()?);
    // Kept open (without close-on-exec: nothing here executes) for the forks to leave the
    // chroot through.
    // SAFETY: open with a NUL-terminated path and plain flags.
    let root = unsafe { libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_DIRECTORY) };
    if root < 0 {
        return Err(setup_err("open /", io::Error::last_os_error()));
    }
    REAL_ROOT.store(root, Ordering::SeqCst);
    agent::build_root(&init.plan, Enter::Chroot)?;
    // SAFETY: open with a NUL-terminated path and plain flags.
    let own = unsafe { libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_DIRECTORY) };
    if own < 0 {
        return Err(setup_err("open the new root", io::Error::last_os_error()));
    }
    OWN_ROOT.store(own, Ordering::SeqCst);
    nix::sys::prctl::set_dumpable(false).map_err(|e| setup_err("set_dumpable", e))?;
    // The interpreter's standard streams are bound to 0-2 at start-up; a run's replace them.
    // SAFETY: open and dup2 onto the standard descriptors of this single-threaded process.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 {
            return Err(setup_err("open /dev/null", io::Error::last_os_error()));
        }
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        libc::close(null);
    }
    match init.spec.kind {
        ZygoteKind::Python => start_python(&init.spec),
    }
}

fn start_python(spec: &ZygoteSpec) -> Result<String, JailError> {
    let lib = CString::new(spec.library.as_os_str().as_encoded_bytes())
        .map_err(|_| JailError::InvalidConfig("library path with a NUL byte".into()))?;
    // SAFETY: dlopen with a NUL-terminated path; RTLD_GLOBAL so that extension modules find
    // the interpreter's symbols, as they do in the python3 executable.
    let handle = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        return Err(JailError::Setup {
            stage: "zygote".into(),
            detail: format!("cannot load {}", spec.library.display()),
        });
    }
    let sym = |name: &std::ffi::CStr| -> Result<usize, JailError> {
        // SAFETY: dlsym on a live handle with a NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if p.is_null() {
            return Err(JailError::Setup {
                stage: "zygote".into(),
                detail: format!("{} has no symbol {name:?}", spec.library.display()),
            });
        }
        Ok(p as usize)
    };
    type DecodeLocale = unsafe extern "C" fn(*const c_char, *mut usize) -> *mut libc::wchar_t;
    type SetProgramName = unsafe extern "C" fn(*const libc::wchar_t);
    type InitializeEx = unsafe extern "C" fn(c_int);
    type GetVersion = unsafe extern "C" fn() -> *const c_char;
    // SAFETY: each symbol is the CPython 3 C API function of that name, whose C signature the
    // type spells out (stable since 3.0 for these five and the three kept in `Python`).
    let python = unsafe {
        let decode: DecodeLocale = std::mem::transmute(sym(c"Py_DecodeLocale")?);
        let set_name: SetProgramName = std::mem::transmute(sym(c"Py_SetProgramName")?);
        let initialize: InitializeEx = std::mem::transmute(sym(c"Py_InitializeEx")?);
        let version: GetVersion = std::mem::transmute(sym(c"Py_GetVersion")?);
        let py = Python {
            after_fork_child: std::mem::transmute::<usize, unsafe extern "C" fn()>(sym(
                c"PyOS_AfterFork_Child",
            )?),
            run_string: std::mem::transmute::<
                usize,
                unsafe extern "C" fn(*const c_char, *mut c_void) -> c_int,
            >(sym(c"PyRun_SimpleStringFlags")?),
            finalize: std::mem::transmute::<usize, unsafe extern "C" fn() -> c_int>(sym(
                c"Py_FinalizeEx",
            )?),
            unhandled_interrupt: sym(c"_Py_UnhandledKeyboardInterrupt")?,
            code: CString::new(spec.argv[2].as_str())
                .map_err(|_| JailError::InvalidConfig("code with a NUL byte".into()))?,
            argv: spec.argv.clone(),
        };
        let prog = CString::new(spec.argv[0].as_str())
            .map_err(|_| JailError::InvalidConfig("interpreter with a NUL byte".into()))?;
        // The name sys.executable and the prefix are derived from, as for the cold command.
        // (The wide string is leaked on purpose: CPython keeps the pointer.)
        let wide = decode(prog.as_ptr(), std::ptr::null_mut());
        if wide.is_null() {
            return Err(setup_err(
                "decode the interpreter's name",
                io::ErrorKind::InvalidData,
            ));
        }
        set_name(wide);
        // Reads PYTHON* variables from the environment the zygote was started with (the
        // programs' own), installs the signal handlers and imports `site`, as `python3` does.
        initialize(1);
        // What `python3 -c` sets at start: '' (the working directory) first on sys.path, and
        // sys.argv ['-c'] (a loader replaces them per run). Leaves no name in __main__.
        // And sys.orig_argv, the command line (a JSON list of strings is a Python literal).
        // Then every object so far goes to the collector's permanent generation, so that the
        // forks' collections do not write to (and copy) the zygote's pages ('gc' then leaves
        // sys.modules: a cold start has not imported it).
        let argv = serde_json::to_string(&spec.argv).unwrap_or_else(|_| "[]".into());
        let prelude = CString::new(format!(
            "__import__('sys').path.insert(0, ''); __import__('sys').argv[:] = ['-c']; \
             __import__('sys').orig_argv[:] = {argv}; __import__('gc').freeze(); \
             __import__('sys').modules.pop('gc')"
        ))
        .map_err(|_| JailError::InvalidConfig("command with a NUL byte".into()))?;
        if (py.run_string)(prelude.as_ptr(), std::ptr::null_mut()) != 0 {
            return Err(setup_err("prepare sys", io::ErrorKind::Other));
        }
        let v = std::ffi::CStr::from_ptr(version()).to_string_lossy();
        let v = v.split_whitespace().next().unwrap_or_default().to_string();
        (py, v)
    };
    let (py, version) = python;
    let _ = PYTHON.set(py);
    Ok(version)
}

/// Serves fork requests until the spawner closes the socket, reaping forks as they end.
fn serve(sock: BorrowedFd<'_>) -> Result<(), JailError> {
    agent::serve_reaping::<ZygoteRequest>(sock, "zygote", |req, fds| {
        let ZygoteRequest::Fork {
            plan,
            uid_map,
            gid_map,
        } = req;
        match fork_jail(plan, &uid_map, &gid_map, fds) {
            Ok(pidfd) => proto::send(sock, &ZygoteReply::Forked, &[pidfd.as_raw_fd()]),
            Err(e) => proto::send(sock, &ZygoteReply::Error(WireError::from(&e)), &[]),
        }
    })
}

/// Forks a jail's agent into fresh namespaces, writes its id maps and returns its pidfd. The
/// agent then waits for the spawner (cgroup, go-ahead) like a spawner-cloned one.
fn fork_jail(
    mut plan: AgentPlan,
    uid_map: &str,
    gid_map: &str,
    fds: Vec<OwnedFd>,
) -> Result<OwnedFd, JailError> {
    if fds.len() < 2 {
        return Err(JailError::InvalidConfig(
            "a fork request carries a control socket and a sync pipe".into(),
        ));
    }
    plan.filters = FILTERS.get().cloned().unwrap_or_default();
    plan.cgroup_tasks = fds[2..].iter().map(|f| f.as_raw_fd()).collect();
    plan.loopback = true;
    let (ctrl, sync) = (fds[0].as_raw_fd(), fds[1].as_raw_fd());
    let flags = JAIL_NAMESPACES;
    // The kernel makes no user namespace from inside a chroot: leave it for the mount
    // namespace's real root (from which the agent builds the jail's root as a spawner-cloned
    // one does), and come back right after.
    enter(REAL_ROOT.load(Ordering::SeqCst)).map_err(|e| setup_err("leave the chroot", e))?;
    // SAFETY: the zygote is single-threaded (the interpreter starts no thread).
    let cloned = unsafe { sys::clone_fork(flags) };
    if matches!(cloned, Ok(0)) {
        agent::agent_entry(&plan, ctrl, sync);
    }
    if let Err(e) = enter(OWN_ROOT.load(Ordering::SeqCst)) {
        // Never serve another request outside the jail's root.
        eprintln!("runcell zygote: cannot re-enter its root: {e}");
        std::process::abort();
    }
    let pid = cloned.map_err(|e| setup_err("clone a jail", e))?;
    let kill = |e: JailError| {
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        e
    };
    let write = |file: &str, contents: &str| {
        std::fs::write(format!("/proc/{pid}/{file}"), contents)
            .map_err(|e| setup_err(&format!("write {file}"), e))
    };
    write("uid_map", uid_map).map_err(kill)?;
    write("gid_map", gid_map).map_err(kill)?;
    drop(fds);
    sys::pidfd_open(pid).map_err(|e| kill(setup_err("pidfd_open", e)))
}
