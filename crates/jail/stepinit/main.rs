//! The init of a jail's last step, once its program has started.
//!
//! A jail's agent is pid 1 of the jail's pid namespace and a fork of the spawner or of a
//! zygote: a whole copy of that process. For the jail's last step it starts the program with
//! `clone(CLONE_VM)` (the program takes the agent's memory over instead of copying it) and
//! then executes this binary, which leaves the program that memory alone. What is left for
//! pid 1 to do is what this file does, without the standard library, in a few pages:
//!
//! 1. wait for the program to report on its error pipe, (stage, errno) if it could not start,
//!    end of file once it runs;
//! 2. reap every child (orphans of the step are reparented to pid 1), forward the signals the
//!    client asks for on the control pipe to the program's process group, until the program
//!    has exited;
//! 3. write the step's record (`src/record.rs`) on the status pipe and exit, which makes the
//!    kernel kill whatever is left in the pid namespace.
//!
//! Arguments: the program's pid and the error pipe's, status pipe's and control pipe's
//! descriptors, in decimal. SIGCHLD arrives blocked and SIGPIPE ignored (both survive
//! `execve`). Built by `build.rs` for x86_64 Linux only.

#![no_std]
#![no_main]
#![allow(dead_code)]

use core::arch::{asm, global_asm};

#[path = "../src/record.rs"]
mod record;

use record::{RECORD_FINISHED, StepRecord};

const SYS_READ: usize = 0;
const SYS_WRITE: usize = 1;
const SYS_CLOSE: usize = 3;
const SYS_POLL: usize = 7;
const SYS_RT_SIGPROCMASK: usize = 14;
const SYS_WAIT4: usize = 61;
const SYS_KILL: usize = 62;
const SYS_PRCTL: usize = 157;
const SYS_CLOCK_GETTIME: usize = 228;
const SYS_EXIT_GROUP: usize = 231;
const SYS_SIGNALFD4: usize = 289;

const EINTR: isize = 4;
const ECHILD: isize = 10;
const SIGKILL: usize = 9;
const SIGCHLD: usize = 17;
const PR_SET_PDEATHSIG: usize = 1;
const PR_SET_DUMPABLE: usize = 4;
const PR_SET_NAME: usize = 15;
const WNOHANG: usize = 1;
const POLLIN: i16 = 1;
const SFD_NONBLOCK: usize = 0o4000;
const SFD_CLOEXEC: usize = 0o2000000;
const SIG_BLOCK: usize = 0;
const CLOCK_MONOTONIC: usize = 1;

/// Exit status when the arguments are not what the agent passes (never in practice).
const BAD_ARGUMENTS: usize = 125;

global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {main}",
    "ud2",
    main = sym start,
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    exit(BAD_ARGUMENTS)
}

/// A raw system call with up to four arguments; returns the kernel's value (`-errno` on error).
fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the `syscall` instruction with the kernel's x86_64 calling convention; rcx and
    // r11 are clobbered by it. Every caller passes arguments valid for its call (pointers to
    // memory of this process, sized as the kernel expects).
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            in("r10") d,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

fn exit(code: usize) -> ! {
    loop {
        syscall4(SYS_EXIT_GROUP, code, 0, 0, 0);
    }
}

fn close(fd: usize) {
    syscall4(SYS_CLOSE, fd, 0, 0, 0);
}

/// Reads until `buf` is full or end of file; returns how many bytes were read.
fn read_full(fd: usize, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        let r = syscall4(
            SYS_READ,
            fd,
            buf[got..].as_mut_ptr() as usize,
            buf.len() - got,
            0,
        );
        if r == -EINTR {
            continue;
        }
        if r <= 0 {
            break;
        }
        got += r as usize;
    }
    got
}

fn write_all(fd: usize, buf: &[u8]) {
    let mut done = 0;
    while done < buf.len() {
        let r = syscall4(
            SYS_WRITE,
            fd,
            buf[done..].as_ptr() as usize,
            buf.len() - done,
            0,
        );
        if r == -EINTR {
            continue;
        }
        if r <= 0 {
            return;
        }
        done += r as usize;
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = [0i64; 2];
    syscall4(
        SYS_CLOCK_GETTIME,
        CLOCK_MONOTONIC,
        ts.as_mut_ptr() as usize,
        0,
        0,
    );
    ts[0] as u64 * 1_000_000_000 + ts[1] as u64
}

/// A decimal argument.
///
/// # Safety
/// `arg` is a NUL-terminated string.
unsafe fn number(arg: *const u8) -> Option<usize> {
    if arg.is_null() {
        return None;
    }
    let mut n: usize = 0;
    let mut i = 0;
    loop {
        // SAFETY: reading up to and including the terminating NUL (the caller's contract).
        let c = unsafe { *arg.add(i) };
        if c == 0 {
            return if i == 0 { None } else { Some(n) };
        }
        if !c.is_ascii_digit() || i >= 10 {
            return None;
        }
        n = n * 10 + (c - b'0') as usize;
        i += 1;
    }
}

/// The entry point: `sp` is the stack pointer the kernel started us with (argc, then argv).
extern "C" fn start(sp: *const usize) -> ! {
    // Nobody in the jail may read our memory or open our /proc entries; we die with our
    // parent as the agent did.
    syscall4(SYS_PRCTL, PR_SET_DUMPABLE, 0, 0, 0);
    syscall4(SYS_PRCTL, PR_SET_PDEATHSIG, SIGKILL, 0, 0);
    syscall4(SYS_PRCTL, PR_SET_NAME, c"runcell-init".as_ptr() as usize, 0, 0);

    // SAFETY: the kernel's initial stack: argc, then argc argument pointers and a NULL.
    let args = unsafe {
        let argc = *sp;
        if argc != 5 {
            exit(BAD_ARGUMENTS)
        }
        let argv = sp.add(1) as *const *const u8;
        [
            number(*argv.add(1)),
            number(*argv.add(2)),
            number(*argv.add(3)),
            number(*argv.add(4)),
        ]
    };
    let [Some(child), Some(err), Some(status), Some(ctl)] = args else {
        exit(BAD_ARGUMENTS)
    };

    // The program reports (stage, errno) if it fails before it runs; end of file means it runs.
    let mut buf = [0u8; 8];
    let got = read_full(err, &mut buf);
    close(err);
    let (stage, errno) = if got == 8 {
        (
            u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]),
            i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]),
        )
    } else {
        (0, 0)
    };
    let wait_status = wait_for(child, ctl);
    let record = StepRecord {
        kind: RECORD_FINISHED,
        stage,
        errno,
        wait_status,
        time_ns: monotonic_ns(),
    };
    write_all(status, &record.to_bytes());
    // Exiting as pid 1 makes the kernel kill everything left in the step's pid namespace.
    exit(0)
}

/// Waits for the program, reaping every other child meanwhile and forwarding the signals
/// asked for on the control pipe to the program's process group. Returns its wait status.
fn wait_for(child: usize, ctl: usize) -> i32 {
    let mask: u64 = 1 << (SIGCHLD - 1);
    // SIGCHLD is blocked already (inherited through execve); block it again in case.
    syscall4(
        SYS_RT_SIGPROCMASK,
        SIG_BLOCK,
        &mask as *const u64 as usize,
        0,
        8,
    );
    let sfd = syscall4(
        SYS_SIGNALFD4,
        usize::MAX,
        &mask as *const u64 as usize,
        8,
        SFD_NONBLOCK | SFD_CLOEXEC,
    );
    let mut ctl_open = true;
    loop {
        loop {
            let mut st: i32 = 0;
            let r = syscall4(
                SYS_WAIT4,
                usize::MAX, // -1: any child
                &mut st as *mut i32 as usize,
                WNOHANG,
                0,
            );
            if r == child as isize {
                return st;
            }
            if r == -ECHILD {
                return 0;
            }
            if r <= 0 {
                break;
            }
        }
        let mut fds = [
            PollFd {
                fd: if sfd >= 0 { sfd as i32 } else { -1 },
                events: POLLIN,
                revents: 0,
            },
            PollFd {
                fd: if ctl_open { ctl as i32 } else { -1 },
                events: POLLIN,
                revents: 0,
            },
        ];
        // Without a signalfd, look for exits every 10 ms.
        let timeout = if sfd >= 0 { usize::MAX } else { 10 };
        let n = syscall4(SYS_POLL, fds.as_mut_ptr() as usize, 2, timeout, 0);
        if n <= 0 {
            continue;
        }
        if fds[0].revents != 0 {
            let mut info = [0u8; 128];
            while syscall4(SYS_READ, sfd as usize, info.as_mut_ptr() as usize, 128, 0) > 0 {}
        }
        if fds[1].revents != 0 {
            let mut b = [0u8; 4];
            if read_full(ctl, &mut b) == 4 {
                let sig = i32::from_ne_bytes(b) as isize as usize;
                // The program's process group (it is a session leader), or the program alone
                // if the group is gone.
                if syscall4(SYS_KILL, (child as isize).wrapping_neg() as usize, sig, 0, 0) < 0 {
                    syscall4(SYS_KILL, child, sig, 0, 0);
                }
            } else {
                ctl_open = false;
            }
        }
    }
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}
