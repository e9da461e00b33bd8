//! The jail's last step without a second copy of the agent.
//!
//! A jail's agent is pid 1 of the jail's pid namespace and a fork of the spawner or of a
//! zygote. For the jail's last step (see [`crate::Start::last`]) it used to fork the program
//! and stay, as the step's init, with a whole copy of that process's memory: forking copied
//! its page tables, and its exit tore its copy down (≈ 5 % of all CPU per execution under load,
//! `docs/benchmarks.md`). Now the agent starts the program with `clone(CLONE_VM)`, so that the
//! program runs in the agent's memory rather than a copy of it, and then executes the step
//! init (`stepinit/main.rs`, a static binary of a few kilobytes embedded here and executed from
//! a sealed memfd), which leaves that memory to the program alone.
//!
//! While both processes share the memory, the program must not run: the agent's code and data
//! would be the program's to change. So the program's first act, on a stack of its own, is to
//! wait for the end of file of a pipe whose write end the agent holds close-on-exec: the kernel
//! closes it only after `execve` has replaced the agent's memory. Then it sets up what glibc's
//! `fork` would have set and the kernel copied (its thread id in the thread descriptor, its
//! robust futex list, its restartable-sequences area), moves onto the main stack (so that the
//! stack is the one the kernel grows and glibc and interpreters find, as after a fork) and
//! becomes the program exactly as a forked one does. (A process started sharing memory also
//! stays in its parent's time namespace until it executes a file: the agent has entered the
//! one it made for the jail, see `agent::enter_own_time_namespace`.)

#![cfg_attr(not(step_init), allow(dead_code, unused_imports))]

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

#[cfg(step_init)]
const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/runcell-step-init"));

/// The sealed memfd holding the step init, or -1.
static INIT: AtomicI32 = AtomicI32::new(-1);
/// The address of the thread descriptor's `tid` (glibc's `set_tid_address` argument).
static TID_ADDRESS: AtomicUsize = AtomicUsize::new(0);
/// The thread descriptor's robust futex list head, and its length.
static ROBUST_HEAD: AtomicUsize = AtomicUsize::new(0);
static ROBUST_LEN: AtomicUsize = AtomicUsize::new(0);
/// The thread's restartable-sequences area as glibc registered it, and its length (0: none).
static RSEQ_AREA: AtomicUsize = AtomicUsize::new(0);
static RSEQ_LEN: AtomicUsize = AtomicUsize::new(0);

/// glibc's `RSEQ_SIG` on x86_64.
const RSEQ_SIG: u32 = 0x5305_3053;

/// Makes the step init available to this process's forks (their agents): the sealed memfd,
/// and the addresses in glibc's thread descriptor that a program started with `clone` must set
/// for itself. Called at start-up by the single-threaded processes that fork agents (the
/// spawner, zygotes), on the thread that forks. Where it cannot (another architecture, a host
/// that forbids executing memfds), agents keep forking their last step.
pub(crate) fn prepare() {
    #[cfg(step_init)]
    if INIT.load(Ordering::SeqCst) < 0
        && let Ok(fd) = make()
    {
        INIT.store(fd, Ordering::SeqCst);
    }
}

/// The step init's descriptor, when this process's last steps can use it.
pub(crate) fn fd() -> Option<RawFd> {
    let fd = INIT.load(Ordering::SeqCst);
    (fd >= 0).then_some(fd)
}

#[cfg(step_init)]
fn make() -> io::Result<RawFd> {
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
    let unsupported = || io::Error::from_raw_os_error(libc::ENOTSUP);
    let mut tid_address: usize = 0;
    // SAFETY: prctl(PR_GET_TID_ADDRESS) writes one pointer-sized value into ours.
    if unsafe { libc::prctl(libc::PR_GET_TID_ADDRESS, &mut tid_address as *mut usize) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // glibc points the kernel at the thread descriptor's `tid` at start-up; check that this is
    // what the address holds before anyone relies on it.
    // SAFETY: a non-null address the kernel holds for this thread: glibc's thread descriptor,
    // mapped for the process's whole life; an aligned i32 read.
    if tid_address == 0
        || !tid_address.is_multiple_of(4)
        || unsafe { std::ptr::read_volatile(tid_address as *const i32) } != tid
    {
        return Err(unsupported());
    }
    let mut head: usize = 0;
    let mut len: usize = 0;
    // SAFETY: get_robust_list(0, ...) writes the calling thread's head pointer and length.
    if unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut usize,
            &mut len as *mut usize,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    const MFD_EXEC: libc::c_uint = 0x10;
    let name = c"runcell-step-init";
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // Linux 6.3 and later want to be told that the memfd is executable; earlier ones refuse
    // the flag.
    // SAFETY: memfd_create with a NUL-terminated name and plain flags.
    let mut raw = unsafe { libc::memfd_create(name.as_ptr(), flags | MFD_EXEC) };
    if raw < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        raw = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    }
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor memfd_create just returned; nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    crate::sys::write_all(fd.as_raw_fd(), BINARY)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl(F_ADD_SEALS) on our memfd.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let (rseq_area, rseq_len) = registered_rseq();
    RSEQ_AREA.store(rseq_area, Ordering::SeqCst);
    RSEQ_LEN.store(rseq_len, Ordering::SeqCst);
    TID_ADDRESS.store(tid_address, Ordering::SeqCst);
    ROBUST_HEAD.store(head, Ordering::SeqCst);
    ROBUST_LEN.store(len, Ordering::SeqCst);
    Ok(fd.into_raw_fd())
}

/// Where glibc registered this thread's restartable-sequences area with the kernel, and its
/// length; (0, 0) if it did not. A fork inherits the registration, a process started sharing
/// memory does not: it registers the same area again (glibc, and libraries built on it such as
/// per-CPU allocators, read the CPU number the kernel keeps there).
#[cfg(step_init)]
fn registered_rseq() -> (usize, usize) {
    // SAFETY: dlsym of data symbols glibc exports (2.35 and later); null if absent.
    let (offset, size) = unsafe {
        (
            libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) as *const isize,
            libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) as *const u32,
        )
    };
    if offset.is_null() || size.is_null() {
        return (0, 0);
    }
    // SAFETY: both symbols are glibc's variables, set at start-up and constant after.
    let (offset, size) = unsafe { (*offset, *size as usize) };
    if size == 0 {
        return (0, 0);
    }
    let tp: usize;
    // SAFETY: on x86_64 glibc's thread pointer (fs base) points at the thread descriptor,
    // whose first word is that same pointer.
    unsafe { std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly)) };
    let area = tp.wrapping_add_signed(offset);
    // Registering again what is registered fails with EBUSY, and only then: this confirms the
    // area, its length and the signature.
    for len in [32, size.next_multiple_of(32)] {
        // SAFETY: rseq(2) with the thread's own registered area; it registers nothing new.
        let r = unsafe { libc::syscall(libc::SYS_rseq, area, len, 0, RSEQ_SIG) };
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
            return (area, len);
        }
    }
    (0, 0)
}

/// The descriptors the step init keeps: the program's error pipe (read end), the step's
/// status pipe, the step's control pipe.
pub(crate) struct InitFds {
    pub err: RawFd,
    pub status: RawFd,
    pub control: RawFd,
}

/// Starts `program` in a child process that shares this process's memory (`program` should
/// not return; if it does, the child exits with 127), closes `close`, and executes the step
/// init in this process, which then waits for the child as its parent, pid 1 of the step.
/// Returns only if that failed, with the error; the child has then been killed and reaped.
///
/// # Safety
/// The process is single-threaded, holds no lock, and [`fd`] returned `Some`. Nothing that
/// `program` uses lives on this thread's stack below the caller's frame (it is the program's
/// stack from here), nor is freed by this process: `program` runs once this process has
/// executed the step init, in the memory it left.
#[cfg(step_init)]
pub(crate) unsafe fn hand_over(
    program: Box<dyn FnOnce() + '_>,
    fds: InitFds,
    close: &[RawFd],
) -> io::Error {
    use std::os::fd::AsRawFd;
    let Some(init) = fd() else {
        return io::Error::from_raw_os_error(libc::ENOTSUP);
    };
    for fd in [fds.err, fds.status, fds.control] {
        // SAFETY: fcntl(F_SETFD) on a descriptor of this process: the init keeps it.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return io::Error::last_os_error();
        }
    }
    let (gate_r, gate_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return e.into(),
    };
    const SMALL_STACK: usize = 64 * 1024;
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let small = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SMALL_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if small == libc::MAP_FAILED {
        return io::Error::last_os_error();
    }
    // The child moves onto this thread's stack below this frame once we are gone: what lies
    // there is ours until execve (frames of the calls below), never the child's.
    let mark = 0u8;
    let main_sp = (std::ptr::addr_of!(mark) as usize - 256) & !15;
    let args = Box::into_raw(Box::new(ChildArgs {
        gate: [gate_r.as_raw_fd(), gate_w.as_raw_fd()],
        small: [small as usize, SMALL_STACK],
        main_sp,
        program: Box::into_raw(Box::new(program)).cast::<libc::c_void>(),
    }));
    let small_top = (small as usize + SMALL_STACK) & !15;
    // SAFETY: the child starts on its own stack and, before anything else, waits for our
    // execve (see `child_entry`); the caller guarantees a single thread holding no lock.
    let pid = unsafe { clone_sharing_memory(small_top, args) };
    if pid < 0 {
        // No child: the arguments are ours again.
        // SAFETY: both boxes were made above and the child that would have taken them does
        // not exist.
        unsafe {
            let a = Box::from_raw(args);
            drop(Box::from_raw(a.program.cast::<Box<dyn FnOnce()>>()));
            libc::munmap(small, SMALL_STACK);
        }
        return io::Error::from_raw_os_error(-pid as i32);
    }
    let pid = pid as libc::pid_t;
    drop(gate_r);
    for &fd in close {
        // SAFETY: closing our copies of descriptors the caller hands to the program.
        unsafe { libc::close(fd) };
    }
    let args: Vec<std::ffi::CString> = [
        "runcell-init".to_string(),
        pid.to_string(),
        fds.err.to_string(),
        fds.status.to_string(),
        fds.control.to_string(),
    ]
    .into_iter()
    .filter_map(|a| std::ffi::CString::new(a).ok())
    .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: execveat of our sealed memfd with an empty path, NULL-terminated argv and envp
    // of valid C strings alive for the call. On success the gate's write end closes (it is
    // close-on-exec) after this process's memory has been replaced, and the child goes on.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            init,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    let err = io::Error::last_os_error();
    // The child is still waiting at the gate, which we hold open: it never ran.
    // SAFETY: kill and waitpid of our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        while libc::waitpid(pid, &mut st, 0) < 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
    drop(gate_w);
    err
}

/// What the child needs, on the heap (which this process leaves to it intact).
struct ChildArgs {
    /// The gate pipe: read end, write end (our copy, closed first).
    gate: [RawFd; 2],
    /// The small stack the child starts on: address, length.
    small: [usize; 2],
    /// Where the child's stack begins on the main stack.
    main_sp: usize,
    /// A `Box<Box<dyn FnOnce()>>`, as a thin pointer (its lifetime is the caller's frames,
    /// which the child never leaves).
    program: *mut libc::c_void,
}

/// `clone(CLONE_VM | SIGCHLD)`: the child starts on `stack_top` in [`child_entry`]. Returns the
/// child's pid, or `-errno`.
///
/// # Safety
/// `stack_top` is the 16-byte aligned top of memory only the child uses; `args` is valid.
#[cfg(step_init)]
unsafe fn clone_sharing_memory(stack_top: usize, args: *mut ChildArgs) -> isize {
    let flags = (libc::CLONE_VM | libc::SIGCHLD) as usize;
    let ret: isize;
    // SAFETY: the raw clone system call (x86_64: flags, stack, parent tid, child tid, tls).
    // The parent gets the child's pid (or -errno) in rax and goes on; the child starts with
    // rax = 0 on `stack_top` and calls `child_entry(args)`, which never returns. rcx and r11
    // are clobbered by `syscall`; r12 is preserved by it for the child.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call {entry}",
            "ud2",
            "2:",
            entry = sym child_entry,
            in("r12") args,
            inlateout("rax") libc::SYS_clone as isize => ret,
            in("rdi") flags,
            in("rsi") stack_top,
            in("rdx") 0usize,
            in("r10") 0usize,
            in("r8") 0usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// A raw system call with up to three arguments, without touching `errno` (which lives in
/// memory the other process is using while the gate is closed).
#[cfg(step_init)]
fn raw3(n: libc::c_long, a: usize, b: usize, c: usize) -> isize {
    let ret: isize;
    // SAFETY: the `syscall` instruction with the kernel's calling convention; rcx and r11 are
    // clobbered by it; callers pass arguments valid for their call.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// The child's first code, on the small stack: waits at the gate, then moves onto the main
/// stack and runs [`child_main`].
#[cfg(step_init)]
extern "C" fn child_entry(args: *mut ChildArgs) -> ! {
    // SAFETY: `args` was made by `hand_over` and stays valid (the parent frees nothing).
    let a = unsafe { &*args };
    raw3(libc::SYS_close, a.gate[1] as usize, 0, 0);
    let mut b = 0u8;
    loop {
        let r = raw3(
            libc::SYS_read,
            a.gate[0] as usize,
            std::ptr::addr_of_mut!(b) as usize,
            1,
        );
        if r == -(libc::EINTR as isize) {
            continue;
        }
        // End of file: the parent has executed the step init (or died, and the kernel is
        // killing us with the rest of the pid namespace). Nothing is ever written.
        break;
    }
    raw3(libc::SYS_close, a.gate[0] as usize, 0, 0);
    // SAFETY: switching to the main stack below the frame that started us, which the parent
    // has left (its memory is another now), and calling child_main(args), which never
    // returns.
    unsafe {
        std::arch::asm!(
            "mov rsp, {sp}",
            "xor ebp, ebp",
            "call {main}",
            "ud2",
            sp = in(reg) a.main_sp,
            main = sym child_main,
            in("rdi") args,
            options(noreturn),
        );
    }
}

/// The child, alone in the memory now: what glibc's `fork` does in a child, then the program.
#[cfg(step_init)]
extern "C" fn child_main(args: *mut ChildArgs) -> ! {
    // SAFETY: `args` and the program's box were made by `hand_over` for us alone.
    let a = unsafe { Box::from_raw(args) };
    // The addresses `make` found, in the memory that is ours now (the statics it set).
    let tid_address = TID_ADDRESS.load(Ordering::SeqCst);
    let robust = (
        ROBUST_HEAD.load(Ordering::SeqCst),
        ROBUST_LEN.load(Ordering::SeqCst),
    );
    let rseq = (
        RSEQ_AREA.load(Ordering::SeqCst),
        RSEQ_LEN.load(Ordering::SeqCst),
    );
    // SAFETY: gettid has no preconditions; the thread descriptor's tid (checked by `make`) is
    // ours now, as glibc's fork would set it; and its clear-on-exit address. The robust list
    // and restartable-sequences area are the thread descriptor's, registered as they were.
    unsafe {
        let tid = libc::gettid();
        std::ptr::write_volatile(tid_address as *mut i32, tid);
        libc::syscall(libc::SYS_set_tid_address, tid_address);
        if robust.0 != 0 {
            libc::syscall(libc::SYS_set_robust_list, robust.0, robust.1);
        }
        if rseq.1 != 0 {
            libc::syscall(libc::SYS_rseq, rseq.0, rseq.1, 0, RSEQ_SIG);
        }
        libc::munmap(a.small[0] as *mut libc::c_void, a.small[1]);
    }
    // SAFETY: made by `hand_over` with Box::into_raw, taken once.
    let program = unsafe { Box::from_raw(a.program.cast::<Box<dyn FnOnce()>>()) };
    drop(a);
    program();
    // SAFETY: _exit ends the process; the program is expected never to return.
    unsafe { libc::_exit(127) }
}
