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
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

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
    /// pipe, the offered overlays, then its cgroup `tasks` files (v1). Answered with `Forked`
    /// and a pidfd.
    Fork {
        /// Plan `plan_id`, when the zygote does not hold it yet. The spawner sends each plan
        /// once and the zygote keeps the last [`PLANS_KEPT`] it was sent: a fork request then
        /// carries only what is the jail's own, and the zygote neither parses nor frees a whole
        /// plan per fork (each page of its heap that it writes after a fork is copied, since
        /// its forks share them).
        plan: Option<Box<AgentPlan>>,
        plan_id: u64,
        /// The jail's own parts of the plan (see [`AgentPlan`]).
        devices: PathBuf,
        overlay_lowers: Vec<PathBuf>,
        uid_map: String,
        gid_map: String,
    },
}

/// Plans a zygote keeps (the spawner mirrors the list to know which it need not send again).
const PLANS_KEPT: usize = 4;

/// Plans by id, oldest first: the zygote's list, and the spawner's mirror of it.
pub(crate) type Plans = proto::Held<AgentPlan>;

/// Adds plan `id` to `plans`, forgetting the oldest beyond [`PLANS_KEPT`]: the one rule both
/// the zygote and the spawner's mirror follow, so that they hold the same ids.
pub(crate) fn hold_plan(plans: &mut Plans, id: u64, plan: AgentPlan) {
    proto::hold(plans, id, plan, PLANS_KEPT);
}

/// Zygote → spawner.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ZygoteReply {
    Ready { version: String },
    Forked,
    Error(WireError),
}

/// A CPython object pointer (`PyObject *`).
type Obj = *mut c_void;

/// `Py_file_input`: the start symbol for a module's worth of statements.
const PY_FILE_INPUT: c_int = 257;

/// The zygote's preloaded interpreter, inherited by its forks: the C API functions a run
/// needs, and the objects made for it at start-up (kept alive for the zygote's whole life).
struct Python {
    after_fork_child: unsafe extern "C" fn(),
    /// `PyRun_StringFlags(code, start, globals, locals, flags)`: a new reference, or NULL
    /// with an exception set.
    run_string: unsafe extern "C" fn(*const c_char, c_int, Obj, Obj, *mut c_void) -> Obj,
    /// `_Py_HandleSystemExit(&status)`: if the pending exception is `SystemExit`, prints its
    /// message if it has one, clears it and returns 1 with the exit status.
    handle_system_exit: unsafe extern "C" fn(*mut c_int) -> c_int,
    /// `PyEval_EvalCode(code, globals, locals)`: a new reference, or NULL with an exception.
    eval_code: unsafe extern "C" fn(Obj, Obj, Obj) -> Obj,
    /// `PyErr_Occurred()`: the pending exception's type (borrowed), or NULL.
    err_occurred: unsafe extern "C" fn() -> Obj,
    /// `&PyExc_KeyboardInterrupt` (a `PyObject *` variable).
    keyboard_interrupt: usize,
    print_error: unsafe extern "C" fn(),
    call_no_args: unsafe extern "C" fn(Obj) -> Obj,
    get_attr: unsafe extern "C" fn(Obj, *const c_char) -> Obj,
    is_true: unsafe extern "C" fn(Obj) -> c_int,
    dec_ref: unsafe extern "C" fn(Obj),
    write_unraisable: unsafe extern "C" fn(Obj),
    clear_error: unsafe extern "C" fn(),
    /// `PySys_GetObject(name)`: a borrowed reference or NULL, never an exception.
    sys_get: unsafe extern "C" fn(*const c_char) -> Obj,
    /// `PyDict_GetItemString(dict, key)`: a borrowed reference or NULL.
    dict_get: unsafe extern "C" fn(Obj, *const c_char) -> Obj,
    /// `&_Py_NoneStruct`.
    none: Obj,
    /// `_Py_UnhandledKeyboardInterrupt`: set when a `KeyboardInterrupt` ended the code.
    unhandled_interrupt: usize,
    /// `__main__`'s namespace, where the code runs (as `PyRun_SimpleString` runs it).
    main: Obj,
    /// `atexit._run_exitfuncs` (the module leaves `sys.modules` if the start had not imported it).
    exitfuncs: Obj,
    /// The run's share of the interpreter's finalization (see [`EXIT_PRELUDE`]).
    clear: Obj,
    /// The code of `-c`, compiled once by the zygote (as `PyRun_StringFlags` compiles it: file
    /// `<string>`, no flags), so that no fork compiles it again.
    compiled: Obj,
    /// `signal.signal(SIGINT, default_int_handler)`, compiled once.
    sigint: Obj,
    argv: Vec<String>,
}

// SAFETY: the pointers are CPython's objects and functions in this single-threaded process
// (a zygote, then each fork); the `OnceLock` only needs them to be storable in a static.
unsafe impl Send for Python {}
// SAFETY: as above: only the thread holding the interpreter ever uses them.
unsafe impl Sync for Python {}

/// Python run once in the zygote, in a namespace of its own, to define `clear`: the part of
/// `Py_FinalizeEx`'s `finalize_modules` that concerns a run. A fork's program ends the way
/// `python3 -c` ends (threads joined, `atexit`, standard streams flushed, exit status 120 if
/// that fails), but instead of tearing the whole interpreter down (≈4 ms of CPU copying and
/// freeing the zygote's pages) only what the run made goes, in CPython's order: the standard
/// streams restored, `__main__` and the modules the run imported out of `sys.modules`, the
/// names it added to `builtins` removed, a collection, then (newest first) each of those
/// modules still alive cleared the way CPython clears one (single-underscore names first),
/// and a last collection. Objects a run hides in a module the zygote had already imported
/// (say `os.x = obj`) or in `sys` are not finalized (CPython finalizes the latter only after
/// the standard streams are gone, and does not promise `__del__` at exit at all), and the
/// order of finalizers across modules may differ from a cold run's (docs/security.md).
const EXIT_PRELUDE: &str = r#"
import sys as _sys, builtins as _builtins, _weakref
_had_atexit = 'atexit' in _sys.modules
exitfuncs = __import__('atexit')._run_exitfuncs
if not _had_atexit:
    del _sys.modules['atexit']
def clear(sys=_sys, builtins=_builtins, ref=_weakref.ref, gc=__import__('gc')):
    try:
        for n in ('last_type', 'last_value', 'last_traceback'):
            if n in sys.__dict__:
                setattr(sys, n, None)
        for n in ('stdin', 'stdout', 'stderr'):
            setattr(sys, n, getattr(sys, '__%s__' % n, None))
        mods = sys.modules
        main = mods['__main__'].__dict__
        weak = []
        for n in [n for n in mods if n not in BEFORE or n == '__main__']:
            m = mods[n]
            if type(m) is type(sys):
                weak.append(ref(m))
                mods[n] = None
        m = None
        space = builtins.__dict__
        for k in [k for k in space if k not in BUILTINS]:
            del space[k]
        gc.collect()
        if weak[0]() is None:
            # __main__'s module is gone, and with it (collected) its namespace in a cold
            # run; the zygote's namespace is never collected (frozen): freed here instead,
            # in the order a collection finalizes what it held (creation order).
            main.clear()
        main = None
        for r in reversed(weak):
            m = r()
            if m is not None:
                d = m.__dict__
                for k in [k for k in d if k[:1] == '_' and k[1:2] != '_']:
                    d[k] = None
                for k in [k for k in d if k != '__builtins__']:
                    d[k] = None
        m = d = r = weak = space = None
        gc.collect()
    except BaseException:
        pass
def snapshot():
    global BEFORE, BUILTINS
    BEFORE, BUILTINS = frozenset(_sys.modules), frozenset(_builtins.__dict__)
"#;

static PYTHON: OnceLock<Python> = OnceLock::new();
static FILTERS: OnceLock<Vec<seccompiler::BpfProgram>> = OnceLock::new();
/// The zygote's mount namespace's real root, and the root it built and lives in (chrooted).
static REAL_ROOT: AtomicI32 = AtomicI32::new(-1);
static OWN_ROOT: AtomicI32 = AtomicI32::new(-1);
/// How many objects (the executable, the C library, `libpython`, ...) were loaded once the
/// interpreter was ready: a run that loaded none of its own exits without the C library's
/// exit handlers (see [`run_preloaded`]).
static ZYGOTE_OBJECTS: AtomicUsize = AtomicUsize::new(0);

/// The number of objects loaded in this process (`dl_iterate_phdr`).
fn loaded_objects() -> usize {
    unsafe extern "C" fn count(
        _info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        n: *mut c_void,
    ) -> c_int {
        // SAFETY: `n` is the counter `loaded_objects` passes, alive for the call.
        unsafe { *(n as *mut usize) += 1 };
        0
    }
    let mut n: usize = 0;
    // SAFETY: dl_iterate_phdr calls `count` once per loaded object, with our counter.
    unsafe { libc::dl_iterate_phdr(Some(count), (&mut n as *mut usize).cast()) };
    n
}

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
    // other use. Then code runs through the C API with NUL-terminated strings we own and
    // objects the zygote made, following each function's reference rules.
    unsafe {
        (py.after_fork_child)();
        // The dispositions CPython sets at start-up (the jail reset every signal to default):
        // SIGINT raises KeyboardInterrupt, SIGPIPE and SIGXFSZ are ignored.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        py.eval(py.sigint);
        // As PyRun_SimpleString then Py_RunMain: 1 after an uncaught exception, SystemExit's
        // status, 120 if flushing the standard streams fails at exit, death by SIGINT after
        // an uncaught KeyboardInterrupt.
        let mut status = py.eval(py.compiled);
        if !py.finalize() {
            status = 120;
        }
        if *(py.unhandled_interrupt as *const c_int) != 0 {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::kill(libc::getpid(), libc::SIGINT);
            status = 130;
        }
        // The C library's exit runs the handlers registered with `atexit` and the destructors
        // of every loaded object, then flushes its streams. Only objects loaded by the run
        // (an extension module, `ctypes`) can have registered anything a program could see;
        // the zygote's own have none, and running them cost 0.7 % of all CPU under load
        // (faults on pages of each object). Without such objects, flushing is all that is
        // left to do.
        if loaded_objects() == ZYGOTE_OBJECTS.load(Ordering::SeqCst) {
            libc::fflush(std::ptr::null_mut());
            libc::_exit(status)
        }
        libc::exit(status)
    }
}

impl Python {
    /// Runs `code` in `__main__` as `PyRun_SimpleString` does, except that a `SystemExit`
    /// gives its status back instead of exiting; returns the exit status so far.
    ///
    /// # Safety
    /// In the process (and thread) holding the interpreter.
    unsafe fn run(&self, code: &std::ffi::CStr) -> c_int {
        // SAFETY: per this function's contract; `main` is a live dict.
        unsafe {
            let v = (self.run_string)(
                code.as_ptr(),
                PY_FILE_INPUT,
                self.main,
                self.main,
                std::ptr::null_mut(),
            );
            self.status(v)
        }
    }

    /// Runs a code object the zygote compiled in `__main__`, as [`Python::run`] runs source.
    ///
    /// # Safety
    /// In the process (and thread) holding the interpreter; `code` is a live code object.
    unsafe fn eval(&self, code: Obj) -> c_int {
        // SAFETY: per this function's contract; `main` is a live dict with `__builtins__`;
        // the two addresses are CPython's variables, read and written on its thread.
        unsafe {
            // What `PyRun_StringFlags` does around the evaluation of the code it compiled
            // (`run_eval_code_obj`): an uncaught KeyboardInterrupt is noted, for the exit.
            let flag = self.unhandled_interrupt as *mut c_int;
            *flag = 0;
            let v = (self.eval_code)(code, self.main, self.main);
            if v.is_null() && (self.err_occurred)() == *(self.keyboard_interrupt as *const Obj) {
                *flag = 1;
            }
            self.status(v)
        }
    }

    /// The exit status so far after running code that returned `v` (dropped here).
    ///
    /// # Safety
    /// In the process (and thread) holding the interpreter.
    unsafe fn status(&self, v: Obj) -> c_int {
        // SAFETY: per this function's contract: `v` is a new reference or NULL with an
        // exception set.
        unsafe {
            if !v.is_null() {
                (self.dec_ref)(v);
                return 0;
            }
            let mut status: c_int = 0;
            if (self.handle_system_exit)(&mut status) != 0 {
                return status;
            }
            (self.print_error)();
            1
        }
    }

    /// What `Py_FinalizeEx` does that a program can observe: non-daemon threads joined,
    /// `atexit` handlers run, the standard streams flushed, the run's objects finalized (see
    /// [`EXIT_PRELUDE`]), the streams flushed again. Returns false if a flush failed.
    ///
    /// # Safety
    /// In the process (and thread) holding the interpreter.
    unsafe fn finalize(&self) -> bool {
        // SAFETY: per this function's contract; borrowed references are not released, new
        // ones are, and every error is reported or cleared before the next call.
        unsafe {
            let modules = (self.sys_get)(c"modules".as_ptr());
            let threading = if modules.is_null() {
                modules
            } else {
                (self.dict_get)(modules, c"threading".as_ptr())
            };
            if !threading.is_null() && !self.call_method(threading, c"_shutdown") {
                (self.write_unraisable)(threading);
            }
            self.call(self.exitfuncs);
            let mut ok = self.flush_std();
            self.call(self.clear);
            ok &= self.flush_std();
            ok
        }
    }

    /// Calls `f()`, dropping its result; an exception it leaves is cleared.
    unsafe fn call(&self, f: Obj) {
        // SAFETY: per the caller's contract; `f` is a live callable.
        unsafe {
            let r = (self.call_no_args)(f);
            if r.is_null() {
                (self.clear_error)();
            } else {
                (self.dec_ref)(r);
            }
        }
    }

    /// Calls `obj.name()`; false (with the exception set) if that fails.
    unsafe fn call_method(&self, obj: Obj, name: &std::ffi::CStr) -> bool {
        // SAFETY: per the caller's contract; `obj` is a live object.
        unsafe {
            let m = (self.get_attr)(obj, name.as_ptr());
            if m.is_null() {
                return false;
            }
            let r = (self.call_no_args)(m);
            (self.dec_ref)(m);
            if r.is_null() {
                return false;
            }
            (self.dec_ref)(r);
            true
        }
    }

    /// CPython's `flush_std_files`: flushes `sys.stdout` (reporting a failure as unraisable)
    /// and `sys.stderr` (silently) unless missing, None or closed; false if either failed.
    unsafe fn flush_std(&self) -> bool {
        let mut ok = true;
        for (name, report) in [(c"stdout", true), (c"stderr", false)] {
            // SAFETY: per the caller's contract; `f` is borrowed from `sys`.
            unsafe {
                let f = (self.sys_get)(name.as_ptr());
                if f.is_null() || f == self.none {
                    continue;
                }
                let closed = (self.get_attr)(f, c"closed".as_ptr());
                if closed.is_null() {
                    (self.clear_error)();
                } else {
                    let r = (self.is_true)(closed);
                    (self.dec_ref)(closed);
                    if r < 0 {
                        (self.clear_error)();
                    }
                    if r > 0 {
                        continue;
                    }
                }
                if !self.call_method(f, c"flush") {
                    if report {
                        (self.write_unraisable)(f);
                    } else {
                        (self.clear_error)();
                    }
                    ok = false;
                }
            }
        }
        ok
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
    crate::stepinit::prepare();
    own_tcp_tables();
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

/// Buckets of the TCP socket table each jail's network namespace gets (see
/// [`own_tcp_tables`]): plenty for a jail's sockets, 4 KiB of memory.
pub(crate) const JAIL_TCP_BUCKETS: u32 = 512;

/// Makes every network namespace made from the zygote's (each jail's) get a TCP socket table
/// of its own. Otherwise they share the host's, and the kernel's teardown of every batch of
/// dead namespaces walks all of it for their `TIME_WAIT` sockets (262144 buckets on a 24 GiB
/// host: 0.5 % of all the CPU under load, docs/benchmarks.md). The kernel reads the size from
/// the namespace a new one is made in, which here is the zygote's own. Kernels before 6.1 have
/// no such setting, and their jails share the host's table as before.
fn own_tcp_tables() {
    let _ = std::fs::write(
        "/proc/sys/net/ipv4/tcp_child_ehash_entries",
        JAIL_TCP_BUCKETS.to_string(),
    );
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
    type Run = unsafe extern "C" fn(*const c_char, c_int, Obj, Obj, *mut c_void) -> Obj;
    type ByName = unsafe extern "C" fn(*const c_char) -> Obj;
    type Attr = unsafe extern "C" fn(Obj, *const c_char) -> Obj;
    // SAFETY: each symbol is the CPython 3 C API function (or data) of that name, whose C
    // signature the type spells out (stable since 3.0 for all but `_Py_HandleSystemExit`, an
    // exported function of 3.8 to 3.12 with this signature; the zygote's library must be the
    // version `python3` is, which the engine checks).
    let python = unsafe {
        let decode: DecodeLocale = std::mem::transmute(sym(c"Py_DecodeLocale")?);
        let set_name: SetProgramName = std::mem::transmute(sym(c"Py_SetProgramName")?);
        let initialize: InitializeEx = std::mem::transmute(sym(c"Py_InitializeEx")?);
        let version: GetVersion = std::mem::transmute(sym(c"Py_GetVersion")?);
        let add_module: ByName = std::mem::transmute(sym(c"PyImport_AddModule")?);
        let module_dict: unsafe extern "C" fn(Obj) -> Obj =
            std::mem::transmute(sym(c"PyModule_GetDict")?);
        let new_dict: unsafe extern "C" fn() -> Obj = std::mem::transmute(sym(c"PyDict_New")?);
        let mut py = Python {
            after_fork_child: std::mem::transmute::<usize, unsafe extern "C" fn()>(sym(
                c"PyOS_AfterFork_Child",
            )?),
            run_string: std::mem::transmute::<usize, Run>(sym(c"PyRun_StringFlags")?),
            eval_code: std::mem::transmute::<usize, unsafe extern "C" fn(Obj, Obj, Obj) -> Obj>(
                sym(c"PyEval_EvalCode")?,
            ),
            err_occurred: std::mem::transmute::<usize, unsafe extern "C" fn() -> Obj>(sym(
                c"PyErr_Occurred",
            )?),
            keyboard_interrupt: sym(c"PyExc_KeyboardInterrupt")?,
            handle_system_exit: std::mem::transmute::<
                usize,
                unsafe extern "C" fn(*mut c_int) -> c_int,
            >(sym(c"_Py_HandleSystemExit")?),
            print_error: std::mem::transmute::<usize, unsafe extern "C" fn()>(sym(c"PyErr_Print")?),
            call_no_args: std::mem::transmute::<usize, unsafe extern "C" fn(Obj) -> Obj>(sym(
                c"PyObject_CallNoArgs",
            )?),
            get_attr: std::mem::transmute::<usize, Attr>(sym(c"PyObject_GetAttrString")?),
            is_true: std::mem::transmute::<usize, unsafe extern "C" fn(Obj) -> c_int>(sym(
                c"PyObject_IsTrue",
            )?),
            dec_ref: std::mem::transmute::<usize, unsafe extern "C" fn(Obj)>(sym(c"Py_DecRef")?),
            write_unraisable: std::mem::transmute::<usize, unsafe extern "C" fn(Obj)>(sym(
                c"PyErr_WriteUnraisable",
            )?),
            clear_error: std::mem::transmute::<usize, unsafe extern "C" fn()>(sym(c"PyErr_Clear")?),
            sys_get: std::mem::transmute::<usize, ByName>(sym(c"PySys_GetObject")?),
            dict_get: std::mem::transmute::<usize, Attr>(sym(c"PyDict_GetItemString")?),
            none: sym(c"_Py_NoneStruct")? as Obj,
            unhandled_interrupt: sym(c"_Py_UnhandledKeyboardInterrupt")?,
            main: std::ptr::null_mut(),
            exitfuncs: std::ptr::null_mut(),
            clear: std::ptr::null_mut(),
            compiled: std::ptr::null_mut(),
            sigint: std::ptr::null_mut(),
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
        let main = add_module(c"__main__".as_ptr());
        if main.is_null() {
            return Err(setup_err("find __main__", io::ErrorKind::Other));
        }
        py.main = module_dict(main);
        // The exit path's objects, in a namespace of their own (never freed).
        let private = new_dict();
        let exit = CString::new(EXIT_PRELUDE).expect("no NUL in the exit prelude");
        let defined = (py.run_string)(
            exit.as_ptr(),
            PY_FILE_INPUT,
            private,
            private,
            std::ptr::null_mut(),
        );
        if defined.is_null() {
            (py.print_error)();
            return Err(setup_err("define the exit path", io::ErrorKind::Other));
        }
        (py.dec_ref)(defined);
        py.clear = (py.dict_get)(private, c"clear".as_ptr());
        let snapshot = (py.dict_get)(private, c"snapshot".as_ptr());
        py.exitfuncs = (py.dict_get)(private, c"exitfuncs".as_ptr());
        if py.clear.is_null() || snapshot.is_null() || py.exitfuncs.is_null() {
            return Err(setup_err("define the exit path", io::ErrorKind::Other));
        }
        // The forks' code, compiled once here (never freed), before the collector's freeze
        // below. (The warm command is the language definition's: one that does not compile
        // leaves the language without a zygote, and its runs take the other paths.)
        let compile: unsafe extern "C" fn(*const c_char, *const c_char, c_int) -> Obj =
            std::mem::transmute(sym(c"Py_CompileString")?);
        let print_error = py.print_error;
        let compile_once = |code: &std::ffi::CStr, what: &str| {
            let c = compile(code.as_ptr(), c"<string>".as_ptr(), PY_FILE_INPUT);
            if c.is_null() {
                print_error();
                return Err(setup_err(what, io::ErrorKind::InvalidInput));
            }
            Ok(c)
        };
        py.sigint = compile_once(
            c"__import__('_signal').signal(2, __import__('_signal').default_int_handler)",
            "compile the SIGINT handler",
        )?;
        let code = CString::new(spec.argv[2].as_str())
            .map_err(|_| JailError::InvalidConfig("code with a NUL byte".into()))?;
        py.compiled = compile_once(&code, "compile the warm command")?;
        // What `python3 -c` sets at start: '' (the working directory) first on sys.path, and
        // sys.argv ['-c'] (a loader replaces them per run). Leaves no name in __main__.
        // And sys.orig_argv, the command line (a JSON list of strings is a Python literal).
        // Then the builtin `compile` once: its first call in a process makes the `_ast`
        // module's ~120 node types (it checks whether its source is an AST object), which
        // Py_CompileString above does not; in every fork that was 1.2 ms of CPU, more than
        // all the rest of the loader's work (the loader's own first `compile` paid it).
        // Nothing observable changes: no module is imported, no name is bound.
        // Then every object so far goes to the collector's permanent generation, so that the
        // forks' collections do not write to (and copy) the zygote's pages ('gc' then leaves
        // sys.modules: a cold start has not imported it), and the exit path notes what the
        // zygote has (what a run adds is the run's).
        let argv = serde_json::to_string(&spec.argv).unwrap_or_else(|_| "[]".into());
        let prelude = CString::new(format!(
            "__import__('sys').path.insert(0, ''); __import__('sys').argv[:] = ['-c']; \
             __import__('sys').orig_argv[:] = {argv}; compile('', '<string>', 'exec'); \
             __import__('gc').freeze(); \
             __import__('sys').modules.pop('gc')"
        ))
        .map_err(|_| JailError::InvalidConfig("command with a NUL byte".into()))?;
        if py.run(&prelude) != 0 {
            return Err(setup_err("prepare sys", io::ErrorKind::Other));
        }
        py.call(snapshot);
        let v = std::ffi::CStr::from_ptr(version()).to_string_lossy();
        let v = v.split_whitespace().next().unwrap_or_default().to_string();
        (py, v)
    };
    let (py, version) = python;
    ZYGOTE_OBJECTS.store(loaded_objects(), Ordering::SeqCst);
    let _ = PYTHON.set(py);
    Ok(version)
}

/// Serves fork requests until the spawner closes the socket, reaping forks as they end.
fn serve(sock: BorrowedFd<'_>) -> Result<(), JailError> {
    // The plans sent so far, oldest first, each with the seccomp filters its forks apply.
    let mut plans = Plans::new();
    agent::serve_reaping::<ZygoteRequest>(sock, None, "zygote", |req, fds| {
        let ZygoteRequest::Fork {
            plan,
            plan_id,
            devices,
            overlay_lowers,
            uid_map,
            gid_map,
        } = req;
        if let Some(mut plan) = plan {
            plan.filters = FILTERS.get().cloned().unwrap_or_default();
            hold_plan(&mut plans, plan_id, *plan);
        }
        let reply = match plans.iter_mut().find(|(id, _)| *id == plan_id) {
            Some((_, plan)) => {
                plan.devices = devices;
                plan.overlay_lowers = overlay_lowers;
                fork_jail(plan, &uid_map, &gid_map, fds)
            }
            None => Err(JailError::Spawner(format!(
                "the zygote holds no plan {plan_id}"
            ))),
        };
        match reply {
            Ok(pidfd) => proto::send(sock, &ZygoteReply::Forked, &[pidfd.as_raw_fd()]),
            Err(e) => proto::send(sock, &ZygoteReply::Error(WireError::from(&e)), &[]),
        }
    })
}

/// Forks a jail's agent into fresh namespaces, writes its id maps and returns its pidfd. The
/// agent then waits for the spawner (cgroup, go-ahead) like a spawner-cloned one.
fn fork_jail(
    plan: &mut AgentPlan,
    uid_map: &str,
    gid_map: &str,
    fds: Vec<OwnedFd>,
) -> Result<OwnedFd, JailError> {
    let overlays = plan.overlay_lowers.len();
    if fds.len() < 2 + overlays {
        return Err(JailError::InvalidConfig(
            "a fork request carries a control socket, a sync pipe and the offered overlays".into(),
        ));
    }
    plan.overlay_fds = fds[2..2 + overlays].iter().map(|f| f.as_raw_fd()).collect();
    plan.cgroup_tasks = fds[2 + overlays..].iter().map(|f| f.as_raw_fd()).collect();
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
        agent::agent_entry(plan, ctrl, sync);
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
