//! The hostile-program suite: every class of attack the jail claims to contain, run for real
//! against the jail, each asserting the reported outcome and that nothing of the run is left
//! on the host (processes, cgroup, mounts).
//!
//! Needs root (namespaces, cgroups) and Debian's /usr/bin/python3, gcc and coreutils; fails
//! loudly without them.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use runcell_jail::*;

// ---------------------------------------------------------------------------------------------
// Harness

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the jail tests must run as root (CI runs them as root)"
    );
    for tool in [
        "/usr/bin/python3",
        "/usr/bin/gcc",
        "/usr/bin/dd",
        "/usr/bin/yes",
    ] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is required by the jail tests"
        );
    }
}

fn spawner_command() -> SpawnerCommand {
    SpawnerCommand {
        program: env!("CARGO_BIN_EXE_runcell-spawner").into(),
        args: vec![],
    }
}

fn spawner() -> &'static Spawner {
    static S: OnceLock<Spawner> = OnceLock::new();
    S.get_or_init(|| {
        require_root();
        Spawner::launch(&spawner_command(), &SpawnerOptions::default()).expect("launch spawner")
    })
}

fn config() -> JailConfig {
    let mut binds = vec![Bind::same("/usr")];
    // As the server shows `/etc`: copies in the root's skeleton.
    for p in [
        "/etc/ld.so.cache",
        "/etc/alternatives",
        "/etc/python3.11",
        "/etc/localtime",
    ] {
        binds.push(Bind::copied(p));
    }
    let link = |target: &str, link: &str| Symlink {
        target: target.into(),
        link: link.into(),
    };
    JailConfig {
        binds,
        symlinks: vec![
            link("usr/bin", "/bin"),
            link("usr/sbin", "/sbin"),
            link("usr/lib", "/lib"),
            link("usr/lib64", "/lib64"),
        ],
        files: vec![],
        workspace: TmpfsSize::mib(64),
        hostname: "runcell".into(),
        shared: None,
        loopback_listener: None,
    }
}

fn cgroup_limits() -> CgroupLimits {
    CgroupLimits {
        memory_bytes: 256 << 20,
        max_tasks: 64,
        cpus: None,
        background: false,
    }
}

fn spec(argv: &[&str]) -> ProcessSpec {
    ProcessSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("HOME".into(), "/tmp".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ],
        cwd: WORKSPACE.into(),
        rlimits: Rlimits {
            cpu_secs: 30,
            file_size_bytes: 64 << 20,
            open_files: 256,
            stack_bytes: 8 << 20,
            processes: 64,
            locked_memory_bytes: 64 << 10,
        },
        mode: StepMode::Private {
            tmp: TmpfsSize::mib(64),
            shm: TmpfsSize::mib(64),
        },
    }
}

fn py(code: &str) -> ProcessSpec {
    spec(&["/usr/bin/python3", "-c", code])
}

fn sh(script: &str) -> ProcessSpec {
    spec(&["/bin/sh", "-c", script])
}

fn run_limits() -> RunLimits {
    RunLimits {
        wall_time: Duration::from_secs(20),
        cpu_time: Duration::from_secs(20),
        output_bytes: 1 << 20,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Pids of host processes whose real uid is one of `uids`.
fn processes_of(uids: &[u32]) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let uid = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse::<u32>().ok());
        if let Some(uid) = uid
            && uids.contains(&uid)
        {
            let name = status.lines().next().unwrap_or("").to_string();
            out.push((pid, name));
        }
    }
    out
}

fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        dirs.push(e.path().join("runcell").join(name));
    }
    dirs.push(Path::new("/sys/fs/cgroup/runcell").join(name));
    // cgroup v2 in a delegated group (a systemd service with Delegate=yes): the spawner moved
    // this process into the group's runcell-supervisor leaf and creates jails beside it.
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    if let Some(own) = own.lines().find_map(|l| l.strip_prefix("0::")) {
        let own = own.trim().trim_start_matches('/');
        let base = own.strip_suffix("/runcell-supervisor").unwrap_or(own);
        if !base.is_empty() {
            dirs.push(
                Path::new("/sys/fs/cgroup")
                    .join(base)
                    .join("runcell")
                    .join(name),
            );
        }
    }
    dirs
}

fn host_mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').skip(4).take(1).collect::<String>())
        .collect()
}

/// What identifies a jail on the host, to check that nothing of it is left.
struct Trace {
    uids: [u32; 2],
    cgroup: String,
}

impl Trace {
    fn of(jail: &Jail) -> Trace {
        let p = jail.program_host_id();
        Trace {
            uids: [p, p - 1],
            cgroup: jail.cgroup_name().to_string(),
        }
    }

    /// Asserts that no process or host mount of the jail is left, and that its cgroup is
    /// gone or empty (kept by the spawner for a later jail of the slot, which the spawner
    /// hands out only after 16 others).
    fn assert_gone(&self, mounts_before: &BTreeSet<String>) {
        Trace::assert_all_gone(std::slice::from_ref(self), mounts_before);
    }

    /// [`Trace::assert_gone`] for several jails, with one look at the host's processes.
    fn assert_all_gone(traces: &[Trace], mounts_before: &BTreeSet<String>) {
        let uids: Vec<u32> = traces.iter().flat_map(|t| t.uids).collect();
        let left = processes_of(&uids);
        assert!(left.is_empty(), "processes left on the host: {left:?}");
        for t in traces {
            t.assert_group_empty();
        }
        let after = host_mounts();
        let new: Vec<_> = after.difference(mounts_before).collect();
        assert!(new.is_empty(), "mounts appeared on the host: {new:?}");
    }

    fn assert_group_empty(&self) {
        for d in cgroup_dirs(&self.cgroup) {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            assert!(
                procs.trim().is_empty(),
                "processes left in cgroup {}: {procs}",
                d.display()
            );
        }
    }

    /// As [`Trace::assert_gone`], and the jail's cgroup no longer exists.
    fn assert_removed(&self, mounts_before: &BTreeSet<String>) {
        self.assert_gone(mounts_before);
        for d in cgroup_dirs(&self.cgroup) {
            assert!(!d.exists(), "cgroup left: {}", d.display());
        }
    }
}

/// Prepares a jail, runs one program, destroys the jail and checks nothing is left.
fn run_once(
    spec: &ProcessSpec,
    stdin: StdinSource,
    cg: &CgroupLimits,
    limits: &RunLimits,
) -> Outcome {
    let mounts = host_mounts();
    let (jail, out) = if as_last_step() {
        // As the engine starts a warm jail's program: queued while the jail is prepared.
        let (jail, p) = spawner()
            .prepare_and_start(
                None,
                &config(),
                cg,
                Start {
                    last: true,
                    ..Start::default()
                },
                spec,
                stdin,
                OutputTarget::Pipe,
                OutputTarget::Pipe,
            )
            .expect("prepare and start");
        let out = collect(&jail, p, limits);
        (jail, out)
    } else {
        let jail = spawner().prepare(&config(), cg).expect("prepare");
        let out = jail
            .run_with(Start::default(), spec, stdin, limits)
            .expect("run");
        (jail, out)
    };
    let trace = Trace::of(&jail);
    jail.destroy().expect("destroy");
    trace.assert_gone(&mounts);
    out
}

/// Supervises `p` to its end, its output kept in the outcome.
fn collect(jail: &Jail, p: Process, limits: &RunLimits) -> Outcome {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut o = jail
        .supervise(p, limits, &mut |s, c| match s {
            Stream::Stdout => out.extend_from_slice(c),
            Stream::Stderr => err.extend_from_slice(c),
        })
        .expect("supervise");
    o.stdout = out;
    o.stderr = err;
    o
}

const PRELOADED: Start = Start {
    preloaded: true,
    last: false,
};

thread_local! {
    /// Set by the tests of `mod as_the_last_step`: `run_once` and `run_preloaded_with` then
    /// start their program as the jail's last step (see [`Start::last`]).
    static LAST_STEP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn as_last_step() -> bool {
    LAST_STEP.with(|l| l.get())
}

/// The hostile-program tests below, run again with the program as its jail's last step: the
/// agent is then the step's init (no step init of its own, no pid or mount namespace of the
/// step's own; it starts the program sharing its memory and executes the small step init
/// binary), as in every one-shot execution. Each test runs on its own thread, so the mode
/// is the test's alone.
macro_rules! also_as_the_last_step {
    ($($name:ident),* $(,)?) => {
        mod as_the_last_step {
            $(
                #[test]
                fn $name() {
                    super::LAST_STEP.with(|l| l.set(true));
                    super::$name()
                }
            )*
        }
    };
}

also_as_the_last_step!(
    programs_run_unprivileged_without_capabilities,
    rlimits_are_applied_and_core_dumps_are_off,
    setuid_binaries_grant_nothing,
    landlock_confines_writes_outside_the_workspace,
    fork_bomb_hits_the_task_limit,
    exponential_fork_bomb_is_contained,
    thread_bomb_hits_the_task_limit,
    a_program_stuck_after_a_failed_thread_creation_is_reported_as_the_task_limit,
    daemons_die_when_the_program_exits,
    stopped_process_groups_die_when_the_program_exits,
    grandchildren_holding_the_output_pipe_do_not_delay_the_result,
    signals_are_reported,
    a_missing_program_is_reported_as_not_started,
    wall_time_limit_kills_and_is_reported,
    cpu_time_is_summed_over_processes_and_threads,
    cpu_and_memory_are_measured,
    memory_split_across_processes_is_limited_as_a_whole,
    tmpfs_pages_count_against_the_memory_limit,
    tmpfs_sizes_are_enforced,
    file_size_limit_stops_the_writer,
    output_floods_are_cut_at_the_cap,
    stdin_never_blocks_anyone,
    host_files_are_not_visible_and_the_root_is_read_only,
    the_network_is_empty,
    dangerous_syscalls_are_refused,
    device_timestamps_are_the_jails_own,
    locks_in_the_workspace_and_tmp_work,
    zygote_forks_run_like_a_cold_interpreter,
    zygote_forks_hit_the_same_limits_as_cold_programs,
    zygote_forks_hold_nothing_of_the_spawner,
    an_attacker_forked_from_a_zygote_reaches_neither_it_nor_the_next_fork,
);

fn run(spec: &ProcessSpec) -> Outcome {
    run_once(spec, StdinSource::Null, &cgroup_limits(), &run_limits())
}

// ---------------------------------------------------------------------------------------------
// Identity and privileges

#[test]
fn programs_run_unprivileged_without_capabilities() {
    let out = run(&sh(
        "id -u; id -g; id -G; grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status; hostname",
    ));
    assert_eq!(out.exit, Exit::Exited(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(&lines[..3], ["1000", "1000", "1000"]);
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            s.contains(&format!("{cap}:\t0000000000000000")),
            "{cap} not empty:\n{s}"
        );
    }
    assert!(s.contains("NoNewPrivs:\t1"), "{s}");
    assert!(s.contains("Seccomp:\t2"), "{s}");
    assert!(s.trim_end().ends_with("runcell"), "{s}");
}

#[test]
fn rlimits_are_applied_and_core_dumps_are_off() {
    let out = run(&py("import resource as r\n\
         for n in ('RLIMIT_CORE','RLIMIT_NOFILE','RLIMIT_STACK','RLIMIT_FSIZE','RLIMIT_CPU','RLIMIT_NPROC'):\n\
         \x20   print(n, *r.getrlimit(getattr(r, n)))"));
    let s = text(&out.stdout);
    assert!(s.contains("RLIMIT_CORE 0 0"), "{s}");
    assert!(s.contains("RLIMIT_NOFILE 256 256"), "{s}");
    assert!(s.contains(&format!("RLIMIT_STACK {0} {0}", 8 << 20)), "{s}");
    assert!(
        s.contains(&format!("RLIMIT_FSIZE {0} {0}", 64 << 20)),
        "{s}"
    );
    assert!(s.contains("RLIMIT_CPU 30 31"), "{s}");
    assert!(s.contains("RLIMIT_NPROC 64 64"), "{s}");
}

#[test]
fn setuid_binaries_grant_nothing() {
    // mount(8) and su(1) are setuid root on Debian; inside they run as uid 1000 and fail.
    let out = run(&sh(
        "ls -l /usr/bin/su /usr/bin/mount | cut -c1-10; su -c id root </dev/null; echo su=$?; \
         mount -t tmpfs none /tmp 2>&1; echo mount=$?; id -u",
    ));
    let s = text(&out.stdout);
    assert!(
        s.contains("-rwsr-xr-x"),
        "the test needs a setuid binary: {s}"
    );
    assert!(!s.contains("su=0"), "{s}");
    assert!(!s.contains("mount=0"), "{s}");
    assert!(s.trim_end().ends_with("1000"), "{s}");
}

#[test]
fn landlock_confines_writes_outside_the_workspace() {
    // /proc/self/comm is the process's own file (allowed by permissions and by the mount);
    // only Landlock forbids writing it.
    let out = run(&py("import errno\n\
         try:\n\
         \x20   open('/proc/self/comm', 'w').write('x')\n\
         \x20   print('written')\n\
         except OSError as e:\n\
         \x20   print('refused', errno.errorcode[e.errno])\n\
         open('/workspace/ok', 'w').write('fine'); open('/tmp/ok', 'w').write('fine'); open('/dev/shm/ok', 'w').write('fine')\n\
         print('workspace ok')"));
    let s = text(&out.stdout);
    assert!(s.contains("refused EACCES"), "{s}{}", text(&out.stderr));
    assert!(s.contains("workspace ok"), "{s}{}", text(&out.stderr));
}

// ---------------------------------------------------------------------------------------------
// Processes

#[test]
fn fork_bomb_hits_the_task_limit() {
    let cg = CgroupLimits {
        max_tasks: 32,
        ..cgroup_limits()
    };
    let out = run_once(
        &py("import os, time\n\
             n = 0\n\
             try:\n\
             \x20   while True:\n\
             \x20       if os.fork() == 0:\n\
             \x20           time.sleep(60); os._exit(0)\n\
             \x20       n += 1\n\
             except OSError as e:\n\
             \x20   print('fork failed after', n, e.errno, flush=True); raise SystemExit(1)"),
        StdinSource::Null,
        &cg,
        &run_limits(),
    );
    let s = text(&out.stdout);
    assert!(s.contains("fork failed after"), "{s}{}", text(&out.stderr));
    assert!(s.contains(" 11"), "EAGAIN expected: {s}");
    let n: u32 = s.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(n < 32, "{n} children");
    assert_eq!(out.limit, Some(Limit::Processes));
    assert!(out.wall_time < Duration::from_secs(10));
}

#[test]
fn exponential_fork_bomb_is_contained() {
    let cg = CgroupLimits {
        max_tasks: 48,
        ..cgroup_limits()
    };
    let limits = RunLimits {
        wall_time: Duration::from_secs(2),
        ..run_limits()
    };
    let started = Instant::now();
    let out = run_once(
        &spec(&["/bin/bash", "-c", "b(){ b|b & }; b; sleep 30"]),
        StdinSource::Null,
        &cg,
        &limits,
    );
    assert!(
        matches!(out.limit, Some(Limit::WallTime) | Some(Limit::Processes)),
        "{out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn thread_bomb_hits_the_task_limit() {
    let cg = CgroupLimits {
        max_tasks: 32,
        ..cgroup_limits()
    };
    let out = run_once(
        &py("import threading, time\n\
             n = 0\n\
             try:\n\
             \x20   while True:\n\
             \x20       threading.Thread(target=time.sleep, args=(60,), daemon=True).start(); n += 1\n\
             except RuntimeError as e:\n\
             \x20   print('thread failed after', n, flush=True); raise SystemExit(1)"),
        StdinSource::Null,
        &cg,
        &run_limits(),
    );
    assert!(
        text(&out.stdout).contains("thread failed after"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(out.limit, Some(Limit::Processes));
}

#[test]
fn a_program_stuck_after_a_failed_thread_creation_is_reported_as_the_task_limit() {
    // The thread that could not start is what the program waits for: the time limit that ends
    // it must not hide the cause. The first program's threads wait on a barrier that never
    // fills, and the interpreter waits for them after the RuntimeError (wall-clock time); the
    // second program spins (CPU time). With room for every thread, the same programs are
    // reported at their time limits.
    let hang = py("import threading\n\
                   b = threading.Barrier(42)\n\
                   for _ in range(40):\n\
                   \x20   threading.Thread(target=b.wait).start()\n\
                   b.wait()\n");
    let spin = py("import threading, time\n\
                   try:\n\
                   \x20   for _ in range(40):\n\
                   \x20       threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n\
                   except RuntimeError:\n\
                   \x20   pass\n\
                   while True: pass\n");
    let hang_limits = RunLimits {
        wall_time: Duration::from_secs(2),
        ..run_limits()
    };
    let spin_limits = RunLimits {
        cpu_time: Duration::from_millis(500),
        ..run_limits()
    };
    for (what, spec, limits, time_limit) in [
        ("hang", &hang, &hang_limits, Limit::WallTime),
        ("spin", &spin, &spin_limits, Limit::CpuTime),
    ] {
        for (max_tasks, expected) in [(16, Limit::Processes), (64, time_limit)] {
            let cg = CgroupLimits {
                max_tasks,
                ..cgroup_limits()
            };
            let out = run_once(spec, StdinSource::Null, &cg, limits);
            assert_eq!(out.exit, Exit::Signaled(libc::SIGKILL), "{what}: {out:?}");
            assert_eq!(
                out.limit,
                Some(expected),
                "{what}, {max_tasks} tasks: {out:?}"
            );
        }
    }
}

#[test]
fn daemons_die_when_the_program_exits() {
    let started = Instant::now();
    let out = run(&sh(
        "(setsid sh -c 'trap \"\" TERM HUP INT; sleep 1000' &); \
         (nohup sleep 1000 >/dev/null 2>&1 &); \
         sh -c 'sleep 1000 & sleep 1000 & wait' & \
         echo started",
    ));
    assert_eq!(out.exit, Exit::Exited(0));
    assert_eq!(text(&out.stdout), "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "result must not wait for daemons: {:?}",
        started.elapsed()
    );
}

#[test]
fn stopped_process_groups_die_when_the_program_exits() {
    let started = Instant::now();
    let out = run(&spec(&[
        "/bin/bash",
        "-c",
        "set -m; (sleep 1000 & sleep 1000 & sleep 0.2; kill -STOP 0) & \
         for i in $(seq 50); do s=$(ps -o stat= -C sleep | tr -d ' \\n'); \
           [ \"$s\" = TT ] && break; sleep 0.1; done; echo states=$s; exit 0",
    ]));
    assert_eq!(out.exit, Exit::Exited(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "states=TT\n",
        "the sleepers should be stopped"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn grandchildren_holding_the_output_pipe_do_not_delay_the_result() {
    let started = Instant::now();
    let out = run(&sh("sleep 1000 & sleep 1000 >&2 & echo done"));
    assert_eq!(text(&out.stdout), "done\n");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        out.wall_time < Duration::from_secs(1),
        "{:?}",
        out.wall_time
    );
}

#[test]
fn signals_are_reported() {
    let out = run(&sh("kill -SEGV $$"));
    assert_eq!(out.exit, Exit::Signaled(libc::SIGSEGV));
    assert_eq!(out.limit, None);
    let out = run(&spec(&["/bin/false"]));
    assert_eq!(out.exit, Exit::Exited(1));
}

#[test]
fn a_missing_program_is_reported_as_not_started() {
    let out = run(&spec(&["/no/such/program"]));
    assert_eq!(
        out.exit,
        Exit::NotStarted {
            stage: Stage::Exec,
            errno: libc::ENOENT
        }
    );
    let out = run(&spec(&["no-such-program-in-path"]));
    assert!(matches!(out.exit, Exit::NotStarted { .. }));
    let out = run(&spec(&["/etc/hostname"]));
    assert_eq!(
        out.exit,
        Exit::NotStarted {
            stage: Stage::Exec,
            errno: libc::EACCES
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Time

#[test]
fn wall_time_limit_kills_and_is_reported() {
    let limits = RunLimits {
        wall_time: Duration::from_millis(700),
        ..run_limits()
    };
    let out = run_once(
        &sh("sleep 100"),
        StdinSource::Null,
        &cgroup_limits(),
        &limits,
    );
    assert_eq!(out.limit, Some(Limit::WallTime));
    assert_eq!(out.exit, Exit::Signaled(libc::SIGKILL));
    assert!(
        out.wall_time >= Duration::from_millis(700) && out.wall_time < Duration::from_millis(1500),
        "{:?}",
        out.wall_time
    );
}

#[test]
fn cpu_time_is_summed_over_processes_and_threads() {
    let limits = RunLimits {
        cpu_time: Duration::from_secs(1),
        ..run_limits()
    };
    let out = run_once(
        &py("import os, threading\n\
             def spin():\n\
             \x20   while True: pass\n\
             if os.fork() == 0: spin()\n\
             threading.Thread(target=spin, daemon=True).start()\n\
             spin()"),
        StdinSource::Null,
        &cgroup_limits(),
        &limits,
    );
    assert_eq!(out.limit, Some(Limit::CpuTime), "{out:?}");
    assert!(
        out.cpu_time >= Duration::from_secs(1) && out.cpu_time < Duration::from_millis(1500),
        "{:?}",
        out.cpu_time
    );
}

#[test]
fn cpu_and_memory_are_measured() {
    let out = run(&py("import time\n\
         b = b'x' * (60 << 20)\n\
         t = time.process_time()\n\
         while time.process_time() - t < 0.3: pass"));
    assert_eq!(out.exit, Exit::Exited(0), "{}", text(&out.stderr));
    assert!(
        out.cpu_time >= Duration::from_millis(300) && out.cpu_time < Duration::from_secs(2),
        "{:?}",
        out.cpu_time
    );
    assert!(
        out.memory_peak_bytes > 60 << 20 && out.memory_peak_bytes < 120 << 20,
        "{}",
        out.memory_peak_bytes
    );
}

// ---------------------------------------------------------------------------------------------
// Memory and disk

#[test]
fn memory_split_across_processes_is_limited_as_a_whole() {
    let cg = CgroupLimits {
        memory_bytes: 128 << 20,
        ..cgroup_limits()
    };
    // Four processes of 48 MiB each: every one is under the limit, together they are not.
    let out = run_once(
        &py("import os, time\n\
             kids = []\n\
             for _ in range(4):\n\
             \x20   pid = os.fork()\n\
             \x20   if pid == 0:\n\
             \x20       b = b'x' * (48 << 20); time.sleep(2); os._exit(0)\n\
             \x20   kids.append(pid)\n\
             raise SystemExit(sum(os.waitpid(k, 0)[1] != 0 for k in kids))"),
        StdinSource::Null,
        &cg,
        &run_limits(),
    );
    assert_eq!(out.limit, Some(Limit::Memory), "{out:?}");
    assert!(matches!(out.exit, Exit::Exited(n) if n > 0), "{out:?}");
    assert!(
        out.memory_peak_bytes <= 128 << 20,
        "{}",
        out.memory_peak_bytes
    );
    assert!(
        out.memory_peak_bytes > 90 << 20,
        "{}",
        out.memory_peak_bytes
    );
}

#[test]
fn tmpfs_pages_count_against_the_memory_limit() {
    let cg = CgroupLimits {
        memory_bytes: 96 << 20,
        ..cgroup_limits()
    };
    for dir in ["/tmp", "/dev/shm"] {
        let mut s = spec(&["/usr/bin/dd", "if=/dev/zero", "bs=1M", "count=300"]);
        s.argv.push(format!("of={dir}/fill"));
        s.mode = StepMode::Private {
            tmp: TmpfsSize::mib(512),
            shm: TmpfsSize::mib(512),
        };
        s.rlimits.file_size_bytes = 1 << 30;
        let out = run_once(&s, StdinSource::Null, &cg, &run_limits());
        assert_eq!(out.limit, Some(Limit::Memory), "{dir}: {out:?}");
        assert!(out.memory_peak_bytes <= 96 << 20);
    }
}

#[test]
fn tmpfs_sizes_are_enforced() {
    // /tmp of 8 MiB: writing 20 MiB fails with ENOSPC, well before the memory limit.
    let mut s = sh(
        "dd if=/dev/zero of=/tmp/fill bs=1M count=20 2>&1; echo rc=$?; \
         dd if=/dev/zero of=/workspace/fill bs=1M count=100 2>&1; echo rc=$?; du -sm /tmp /workspace",
    );
    s.mode = StepMode::Private {
        tmp: TmpfsSize::mib(8),
        shm: TmpfsSize::mib(64),
    };
    s.rlimits.file_size_bytes = 1 << 30;
    let out = run(&s);
    let o = text(&out.stdout);
    assert_eq!(o.matches("No space left on device").count(), 2, "{o}");
    assert!(o.contains("rc=1"), "{o}");
    assert_eq!(out.limit, None);
}

#[test]
fn file_size_limit_stops_the_writer() {
    let mut s = spec(&[
        "/usr/bin/dd",
        "if=/dev/zero",
        "of=/workspace/big",
        "bs=1M",
        "count=20",
    ]);
    s.rlimits.file_size_bytes = 4 << 20;
    let out = run(&s);
    assert_eq!(out.exit, Exit::Signaled(libc::SIGXFSZ));
    assert_eq!(out.limit, Some(Limit::FileSize));
}

// ---------------------------------------------------------------------------------------------
// Output and input

#[test]
fn output_floods_are_cut_at_the_cap() {
    let limits = RunLimits {
        output_bytes: 64 * 1024,
        ..run_limits()
    };
    let out = run_once(
        &spec(&["/usr/bin/yes"]),
        StdinSource::Null,
        &cgroup_limits(),
        &limits,
    );
    assert_eq!(out.limit, Some(Limit::Output));
    assert!(out.stdout_truncated);
    assert_eq!(out.stdout.len(), 64 * 1024);
    assert!(out.stdout.chunks(2).all(|c| c == b"y\n"));
    let out = run_once(&sh("yes >&2"), StdinSource::Null, &cgroup_limits(), &limits);
    assert_eq!(out.limit, Some(Limit::Output));
    assert!(out.stderr_truncated && !out.stdout_truncated);
    assert_eq!(out.stderr.len(), 64 * 1024);
    // Exactly at the cap is fine.
    let out = run_once(
        &py("import sys; sys.stdout.write('z' * 65536)"),
        StdinSource::Null,
        &cgroup_limits(),
        &limits,
    );
    assert_eq!(out.limit, None);
    assert!(!out.stdout_truncated);
    assert_eq!(out.stdout.len(), 65536);
}

#[test]
fn stdin_never_blocks_anyone() {
    let big = vec![b'a'; 10 << 20];
    // A program that never reads its input ends at once.
    let started = Instant::now();
    let out = run_once(
        &sh("echo ignoring"),
        StdinSource::Bytes(big.clone()),
        &cgroup_limits(),
        &run_limits(),
    );
    assert_eq!(text(&out.stdout), "ignoring\n");
    assert!(started.elapsed() < Duration::from_secs(3));
    // One that reads it all sees every byte and then end of file.
    let out = run_once(
        &spec(&["/usr/bin/wc", "-c"]),
        StdinSource::Bytes(big),
        &cgroup_limits(),
        &run_limits(),
    );
    assert_eq!(text(&out.stdout).trim(), (10 << 20).to_string());
    // Input cannot be modified through its descriptor.
    let out = run_once(
        &py(
            "import os\ntry:\n    os.write(0, b'x'); print('wrote')\nexcept OSError as e:\n    print('refused', e.errno)",
        ),
        StdinSource::Bytes(b"data".to_vec()),
        &cgroup_limits(),
        &run_limits(),
    );
    assert!(
        text(&out.stdout).starts_with("refused"),
        "{}",
        text(&out.stdout)
    );
}

// ---------------------------------------------------------------------------------------------
// The host and other runs

#[test]
fn host_files_are_not_visible_and_the_root_is_read_only() {
    let out = run(&sh(
        "for p in /etc/shadow /etc/gshadow /etc/ssh /etc/sudoers /root /home /boot /srv /opt /run \
                  /sys /work /run/runcell /var/lib /var/log; do \
           if [ -e \"$p\" ]; then echo \"VISIBLE $p\"; fi; done; \
         for p in /proc/1/exe /proc/1/mem /proc/1/environ /proc/kcore; do \
           if cat \"$p\" >/dev/null 2>&1; then echo \"READABLE $p\"; fi; done; \
         for p in /proc/1/root/ /proc/1/cwd/; do \
           if ls \"$p\" >/dev/null 2>&1; then echo \"READABLE $p\"; fi; done; \
         touch /usr/x 2>&1; touch /etc/x 2>&1; touch /x 2>&1; mkdir /dev/x 2>&1; cat /etc/passwd",
    ));
    let s = text(&out.stdout);
    assert!(!s.contains("VISIBLE") && !s.contains("READABLE"), "{s}");
    assert_eq!(s.matches("Read-only file system").count(), 4, "{s}");
    // The passwd file is the jail's own: no host accounts.
    assert!(s.contains("runner:x:1000:1000"), "{s}");
    assert!(!s.contains("daemon:"), "{s}");
}

/// A spawner started with `secret` in its environment and with signals ignored (as a careless
/// operator or `nohup` might).
fn careless_spawner(secret: &str) -> Spawner {
    let cmd = SpawnerCommand {
        program: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            format!(
                "trap '' INT HUP USR1 PIPE; exec env RUNCELL_TEST_SECRET={secret} {}",
                env!("CARGO_BIN_EXE_runcell-spawner")
            ),
        ],
    };
    Spawner::launch(&cmd, &SpawnerOptions::default()).expect("launch")
}

#[test]
fn the_spawners_environment_does_not_reach_programs() {
    let secret = "hunter2-runcell-secret";
    let sp = careless_spawner(secret);
    let jail = sp.prepare(&config(), &cgroup_limits()).unwrap();
    let mut s = py("import os, glob\n\
         print(sorted(os.environ.items()))\n\
         print([l for l in open('/proc/self/status') if l.startswith(('SigIgn', 'SigBlk'))])\n\
         for p in glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline') + glob.glob('/proc/*/task/*/environ'):\n\
         \x20   try:\n\
         \x20       print(p, open(p, 'rb').read())\n\
         \x20   except OSError as e:\n\
         \x20       print(p, 'refused', e.errno)");
    s.env.push(("MINE".into(), "visible".into()));
    let out = jail.run(&s, StdinSource::Null, &run_limits()).unwrap();
    let o = text(&out.stdout);
    assert!(!o.contains(secret), "{o}");
    assert!(o.contains("('MINE', 'visible')"), "{o}");
    assert!(o.contains("/proc/1/environ refused 13"), "{o}");
    // Python ignores SIGPIPE and SIGXFSZ itself; nothing else is inherited (not even the
    // signals the C library reserves, which it refuses to reset).
    assert!(
        o.contains("'SigBlk:\\t0000000000000000\\n', 'SigIgn:\\t0000000001001000\\n'"),
        "{o}"
    );
    let env_line = o.lines().next().unwrap();
    assert_eq!(
        env_line.matches("', '").count(),
        4,
        "only the given variables: {env_line}"
    );
}

/// Run A listens on loopback TCP and on an abstract unix socket.
const PROBE_A: &str = "import socket, time
open('/tmp/marker-a', 'w').write('x')
t = socket.socket(); t.bind(('127.0.0.1', 45678)); t.listen()
u = socket.socket(socket.AF_UNIX); u.bind('\\0runcell-a'); u.listen()
time.sleep(3); print('a survived')";

/// Run B tries to reach them.
const PROBE_B: &str = "import socket
for fam, addr in ((socket.AF_INET, ('127.0.0.1', 45678)), (socket.AF_UNIX, '\\0runcell-a')):
    s = socket.socket(fam)
    try:
        s.connect(addr); print('reached', addr)
    except OSError as e:
        print('refused', e.errno)";

#[test]
fn runs_do_not_see_or_touch_each_other() {
    let mounts = host_mounts();
    let a = spawner().prepare(&config(), &cgroup_limits()).unwrap();
    let b = spawner().prepare(&config(), &cgroup_limits()).unwrap();
    let (ta, tb) = (Trace::of(&a), Trace::of(&b));
    a.workspace()
        .write_file("secret-a.txt", b"a's data", 0o600)
        .unwrap();
    let victim = a
        .start(
            &py(PROBE_A),
            StdinSource::Null,
            OutputTarget::Pipe,
            OutputTarget::Pipe,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut probe = sh(
        "ls /proc | grep -c '^[0-9]'; cat /proc/*/cmdline | tr '\\0' ' '; echo; \
         ls /workspace /tmp; kill -9 -1; echo killed=$?; python3 -c \"$PROBE\"",
    );
    probe.env.push(("PROBE".into(), PROBE_B.into()));
    let out = b.run(&probe, StdinSource::Null, &run_limits()).unwrap();
    let o = text(&out.stdout);
    assert!(!o.contains("time.sleep"), "{o}");
    assert_eq!(
        o.matches("refused 111").count(),
        2,
        "{o}{}",
        text(&out.stderr)
    );
    assert!(!o.contains("reached"), "{o}");
    assert!(!o.contains("secret-a") && !o.contains("marker-a"), "{o}");
    let pids: u32 = o.lines().next().unwrap().trim().parse().unwrap();
    assert!(pids <= 6, "only its own processes: {o}");
    let va = a.supervise(victim, &run_limits(), &mut |_, _| {}).unwrap();
    assert_eq!(va.exit, Exit::Exited(0), "the other run must survive");
    a.destroy().unwrap();
    b.destroy().unwrap();
    ta.assert_gone(&mounts);
    tb.assert_gone(&mounts);
}

#[test]
fn the_network_is_empty() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = run(&py(&format!(
        "import socket, errno\n\
         def probe(host, port):\n\
         \x20   s = socket.socket(); s.settimeout(2)\n\
         \x20   try:\n\
         \x20       s.connect((host, port)); print(host, 'connected')\n\
         \x20   except OSError as e:\n\
         \x20       print(host, errno.errorcode.get(e.errno, e))\n\
         probe('127.0.0.1', {port}); probe('8.8.8.8', 53); probe('10.0.0.1', 80); probe('169.254.169.254', 80)\n\
         try:\n\
         \x20   socket.getaddrinfo('example.com', 80); print('resolved')\n\
         except OSError as e:\n\
         \x20   print('no dns')\n\
         srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen()\n\
         c = socket.create_connection(srv.getsockname()); print('loopback', srv.accept()[0].fileno() > 0)\n\
         print(sorted(n for _, n in socket.if_nameindex()))"
    )));
    let o = text(&out.stdout);
    assert!(
        o.contains("127.0.0.1 ECONNREFUSED"),
        "{o}{}",
        text(&out.stderr)
    );
    assert!(o.contains("8.8.8.8 ENETUNREACH"), "{o}");
    assert!(o.contains("10.0.0.1 ENETUNREACH"), "{o}");
    assert!(o.contains("169.254.169.254 ENETUNREACH"), "{o}");
    assert!(o.contains("no dns"), "{o}");
    assert!(o.contains("loopback True"), "{o}");
    assert!(o.contains("['lo']"), "{o}");
    assert!(
        listener.accept().is_err(),
        "the host listener must see nothing"
    );
}

#[test]
fn dangerous_syscalls_are_refused() {
    // Each probe is chosen so that, without the filter, the kernel would answer something
    // other than EPERM (success, EBADF, EFAULT, ENOTTY…): EPERM proves the filter.
    let out = run(&py("import ctypes, os, errno\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         libc.syscall.restype = ctypes.c_long\n\
         def call(name, nr, *args):\n\
         \x20   ctypes.set_errno(0)\n\
         \x20   r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])\n\
         \x20   print(name, 'ok' if r >= 0 else errno.errorcode[ctypes.get_errno()])\n\
         params = ctypes.create_string_buffer(120)\n\
         call('unshare_user', 272, 0x10000000)\n\
         call('unshare_net', 272, 0x40000000)\n\
         call('clone_newuser', 56, 0x10000000 | 17, 0, 0, 0, 0)\n\
         call('clone3', 435, 0, 0)\n\
         call('setns', 308, -1, 0)\n\
         call('ptrace_traceme', 101, 0, 0, 0, 0)\n\
         call('keyctl_get_keyring', 250, 0, -3, 0)\n\
         call('process_vm_readv', 310, os.getpid(), 0, 0, 0, 0, 0)\n\
         call('io_uring_setup', 425, 1, ctypes.addressof(params))\n\
         call('perf_event_open', 298, 0, 0, -1, -1, 0)\n\
         call('userfaultfd', 323, 0)\n\
         call('name_to_handle_at', 303, -100, 0, 0, 0, 0)\n\
         call('mount_setattr', 442, -1, 0, 0, 0, 0)\n\
         call('open_tree', 428, -1, 0, 0)\n\
         call('ioctl_tiocsti', 16, 0, 0x5412, ctypes.addressof(params))\n\
         call('personality_32', 135, 8)\n\
         call('socket_vsock', 41, 40, 1, 0)\n\
         call('socket_alg', 41, 38, 5, 0)\n\
         call('socketpair_inet', 53, 2, 1, 0, ctypes.addressof(params))\n\
         call('getpid', 39)"));
    let o = text(&out.stdout);
    for name in [
        "unshare_user",
        "unshare_net",
        "clone_newuser",
        "setns",
        "ptrace_traceme",
        "keyctl_get_keyring",
        "process_vm_readv",
        "io_uring_setup",
        "perf_event_open",
        "userfaultfd",
        "name_to_handle_at",
        "mount_setattr",
        "open_tree",
        "ioctl_tiocsti",
        "personality_32",
        "socket_vsock",
        "socket_alg",
        "socketpair_inet",
    ] {
        assert!(
            o.contains(&format!("{name} EPERM\n")),
            "{name}:\n{o}{}",
            text(&out.stderr)
        );
    }
    assert!(o.contains("clone3 ENOSYS\n"), "{o}");
    assert!(o.contains("getpid ok\n"), "{o}");
}

#[test]
fn thirty_two_bit_system_calls_kill_the_program() {
    let mounts = host_mounts();
    let jail = spawner().prepare(&config(), &cgroup_limits()).unwrap();
    let trace = Trace::of(&jail);
    jail.workspace()
        .write_file(
            "int80.c",
            b"#include <stdio.h>\n\
              int main(void) {\n\
                long r; printf(\"before\\n\"); fflush(stdout);\n\
                __asm__ volatile (\"int $0x80\" : \"=a\"(r) : \"a\"(20L));\n\
                printf(\"after %ld\\n\", r); return 0; }\n",
            0o644,
        )
        .unwrap();
    let cc = jail
        .run(
            &spec(&["/usr/bin/gcc", "-o", "int80", "int80.c"]),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(cc.exit, Exit::Exited(0), "{}", text(&cc.stderr));
    let out = jail
        .run(&spec(&["./int80"]), StdinSource::Null, &run_limits())
        .unwrap();
    assert_eq!(text(&out.stdout), "before\n");
    assert_eq!(out.exit, Exit::Signaled(libc::SIGSYS));
    jail.destroy().unwrap();
    trace.assert_gone(&mounts);
}

#[test]
fn planted_links_do_not_lead_the_host_outside_the_workspace() {
    let host = tempfile::tempdir().unwrap();
    let canary = host.path().join("canary");
    std::fs::write(&canary, b"host canary").unwrap();
    let mounts = host_mounts();
    let jail = spawner().prepare(&config(), &cgroup_limits()).unwrap();
    let trace = Trace::of(&jail);
    let canary_s = canary.display().to_string();
    let out = jail
        .run(
            &sh(&format!(
                "ln -s /etc/passwd out.txt; ln -s {canary_s} canary; ln -s / root; \
                 mkdir d; ln -s /etc d/etc; mkfifo fifo; \
                 ln /usr/bin/env hard 2>&1; echo hard=$?"
            )),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert!(
        text(&out.stdout).contains("hard=1"),
        "{}",
        text(&out.stdout)
    );
    let ws = jail.workspace();
    let loop_or_notdir = |e: WorkspaceError| {
        assert!(
            matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)),
            "{e}"
        )
    };
    loop_or_notdir(ws.read_file("out.txt", 1 << 20).unwrap_err());
    loop_or_notdir(ws.read_file("canary", 1 << 20).unwrap_err());
    loop_or_notdir(ws.read_file("root/etc/hostname", 1 << 20).unwrap_err());
    loop_or_notdir(ws.read_file("d/etc/hostname", 1 << 20).unwrap_err());
    assert!(ws.write_file("root/tmp/pwned", b"x", 0o644).is_err());
    assert!(ws.write_file("d/etc/pwned", b"x", 0o644).is_err());
    // Writing a planted name replaces the link itself.
    ws.write_file("canary", b"replaced", 0o644).unwrap();
    assert_eq!(ws.read_file("canary", 100).unwrap(), b"replaced");
    let started = Instant::now();
    assert!(matches!(
        ws.read_file("fifo", 100),
        Err(WorkspaceError::NotRegular { .. })
    ));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a FIFO must not block"
    );
    for bad in ["../../../etc/passwd", "/etc/passwd", "a/../../x"] {
        assert!(ws.read_file(bad, 100).is_err());
    }
    jail.destroy().unwrap();
    trace.assert_gone(&mounts);
    assert_eq!(std::fs::read(&canary).unwrap(), b"host canary");
}

// ---------------------------------------------------------------------------------------------
// Steps, workspace and lifecycle

#[test]
fn steps_share_the_workspace_but_not_tmp() {
    let mounts = host_mounts();
    let jail = spawner().prepare(&config(), &cgroup_limits()).unwrap();
    let trace = Trace::of(&jail);
    jail.workspace()
        .write_file("src/in.txt", b"from the host\n", 0o644)
        .unwrap();
    let first = jail
        .run(
            &sh(
                "stat -c '%U %a' src/in.txt; cat src/in.txt; echo made > out.txt; echo t > /tmp/t; \
                 echo $$; sleep 1000 &",
            ),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(
        text(&first.stdout),
        "runner 644\nfrom the host\n2\n",
        "{}",
        text(&first.stderr)
    );
    let second = jail
        .run(
            &sh("cat out.txt; ls /tmp | wc -l; ps -e -o comm= | grep -c sleep"),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(
        text(&second.stdout),
        "made\n0\n0\n",
        "{}",
        text(&second.stderr)
    );
    assert_eq!(
        jail.workspace().read_file("out.txt", 100).unwrap(),
        b"made\n"
    );
    jail.destroy().unwrap();
    trace.assert_gone(&mounts);
}

/// A jail's last step: the agent is the step's init, the program sees what a step's program
/// sees, the jail's processes end with it (before anyone destroys the jail) while its
/// workspace stays readable, and nothing can be started after it.
#[test]
fn the_last_step_runs_under_the_jails_agent_and_ends_the_jail() {
    let mounts = host_mounts();
    let jail = spawner().prepare(&config(), &cgroup_limits()).unwrap();
    let trace = Trace::of(&jail);
    // The step before it is an ordinary one: its files stay, its /tmp does not.
    jail.run(
        &sh("echo made > out.txt; echo t > /tmp/t"),
        StdinSource::Null,
        &run_limits(),
    )
    .unwrap();
    let last = Start {
        last: true,
        ..Start::default()
    };
    let out = jail
        .run_with(
            last,
            &sh("echo $$ $PPID; cat out.txt; ls /tmp | wc -l; n=0; for p in /proc/[0-9]*; do case $p in /proc/[23]) ;; *) n=$((n+1)) ;; esac; done; echo $n;                  stat -f -c %T /tmp /dev/shm; df -k /tmp | tail -1 | tr -s ' ' | cut -d' ' -f2;                  echo new > /tmp/n; echo made again > out2.txt;                  (setsid sleep 1000 &); nohup sleep 1000 >/dev/null 2>&1 &"),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    // A child of pid 1, the agent (pids 2 and 3 went to the earlier step's init and program,
    // in the jail's pid namespace too); an empty /tmp; /proc lists the jail's pid namespace:
    // the agent and this shell, counted by the shell alone (no process forked meanwhile; the
    // earlier step's init may not be reaped yet when this step starts: pids 2 and 3 are left
    // out of the count).
    assert_eq!(
        text(&out.stdout),
        format!("4 1\nmade\n0\n2\ntmpfs\ntmpfs\n{}\n", 64 * 1024),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(out.exit, Exit::Exited(0));
    // The agent exits with the step, and the kernel kills every process of the jail with it
    // (the agent stays a zombie until the spawner reaps it when the jail is destroyed).
    let alive = || {
        processes_of(&trace.uids)
            .into_iter()
            .filter(|(pid, _)| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
                !status.is_ok_and(|s| s.contains("\nState:\tZ"))
            })
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alive().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the jail's processes outlived its last step: {:?}",
            alive()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        jail.workspace().read_file("out2.txt", 100).unwrap(),
        b"made again\n"
    );
    let err = jail
        .run(&sh("echo too late"), StdinSource::Null, &run_limits())
        .expect_err("nothing starts after the last step");
    assert!(err.to_string().contains("jail"), "{err}");
    jail.destroy().unwrap();
    trace.assert_gone(&mounts);
}

/// Only a private step can be a jail's last, and only in a jail whose agent serves nothing
/// else (no loopback listener); a refused request leaves the jail as it was.
#[test]
fn a_last_step_must_be_private_in_a_jail_without_a_listener() {
    let last = Start {
        last: true,
        ..Start::default()
    };
    let mut cfg = shared_config();
    cfg.loopback_listener = Some(44772);
    for (what, cfg, spec) in [
        ("a shared step", shared_config(), shared(&["/bin/true"])),
        ("a jail with a listener", cfg, sh("true")),
    ] {
        let jail = spawner().prepare(&cfg, &cgroup_limits()).unwrap();
        let err = jail
            .run_with(last, &spec, StdinSource::Null, &run_limits())
            .expect_err(what);
        assert!(err.to_string().contains("last step"), "{what}: {err}");
        let out = jail
            .run(&sh("echo still here"), StdinSource::Null, &run_limits())
            .unwrap();
        assert_eq!(text(&out.stdout), "still here\n", "{what}");
        jail.destroy().unwrap();
    }
}

/// A jail whose root cannot be built (a required host path is missing) fails after the
/// spawner has let its agent go (the agent builds the root outside the spawner's turn): the
/// error reaches the caller, and the agent, its slot and its mounts are gone.
#[test]
fn a_jail_that_cannot_build_its_root_leaves_nothing_behind() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let sp = Spawner::launch(
        &spawner_command(),
        &SpawnerOptions {
            state_dir: dir.path().to_path_buf(),
            ..SpawnerOptions::default()
        },
    )
    .expect("launch spawner");
    let pid = sp.pid().expect("spawner pid");
    let mounts = host_mounts();
    let mut bad = config();
    bad.binds
        .push(Bind::same("/usr/share/runcell-test-no-such-path"));
    for _ in 0..3 {
        let err = sp
            .prepare(&bad, &cgroup_limits())
            .expect_err("a missing required path fails the jail");
        assert!(
            err.to_string().contains("runcell-test-no-such-path"),
            "{err}"
        );
        // The same with a start request queued behind the preparation (a warm jail's way).
        let err = sp
            .prepare_and_start(
                None,
                &bad,
                &cgroup_limits(),
                Start {
                    last: true,
                    ..Start::default()
                },
                &sh("echo never"),
                StdinSource::Null,
                OutputTarget::Pipe,
                OutputTarget::Pipe,
            )
            .expect_err("a missing required path fails the jail and its queued start");
        assert!(
            err.to_string().contains("runcell-test-no-such-path"),
            "{err}"
        );
        // The spawner's children: its network namespace factory (root) and no jail agent.
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for c in children.split_whitespace() {
            let status = std::fs::read_to_string(format!("/proc/{c}/status")).unwrap_or_default();
            let uid: u32 = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|u| u.parse().ok())
                .unwrap_or(0);
            assert!(uid < 0x5f00_0000, "a failed jail's agent is left: {status}");
        }
    }
    assert_eq!(host_mounts(), mounts, "mounts appeared on the host");
    let good = sp.prepare(&config(), &cgroup_limits()).expect("prepare");
    let trace = Trace::of(&good);
    let out = good
        .run(&sh("echo fine"), StdinSource::Null, &run_limits())
        .unwrap();
    assert_eq!(text(&out.stdout), "fine\n");
    good.destroy().unwrap();
    trace.assert_gone(&mounts);
}

#[test]
fn a_dead_client_leaves_nothing_behind() {
    let mounts = host_mounts();
    let sp = Spawner::launch(&spawner_command(), &SpawnerOptions::default()).unwrap();
    let jail = sp.prepare(&config(), &cgroup_limits()).unwrap();
    let trace = Trace::of(&jail);
    let p = jail
        .start(
            &sh("setsid sleep 1000 & sleep 1000"),
            StdinSource::Null,
            OutputTarget::Null,
            OutputTarget::Null,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!processes_of(&trace.uids).is_empty());
    // The spawner dies without any cleanup of its own.
    let pid = sp.pid().unwrap();
    // SAFETY: kill(2) of the spawner we started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_of(&trace.uids).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        processes_of(&trace.uids).is_empty(),
        "jail outlived its spawner"
    );
    drop(p);
    std::mem::forget(jail);
    // The next spawner removes the orphaned cgroup.
    let _sp2 = Spawner::launch(&spawner_command(), &SpawnerOptions::default()).unwrap();
    trace.assert_removed(&mounts);
}

/// A spawner keeps emptied groups for later jails of their slots; what a jail is told counts
/// from its own start (an out-of-memory kill, refused forks, CPU time and the peak of an
/// earlier jail in the same group never show), and the spawner removes every kept group when
/// it ends.
#[test]
fn kept_groups_serve_later_jails_with_their_own_counts_and_go_with_the_spawner() {
    let mounts = host_mounts();
    let sp = Spawner::launch(&spawner_command(), &SpawnerOptions::default()).unwrap();
    let tight = CgroupLimits {
        memory_bytes: 64 << 20,
        max_tasks: 8,
        ..cgroup_limits()
    };
    let mut traces = Vec::new();
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut dirty = BTreeSet::new();
    let mut checked = 0;
    // Enough jails that the spawner hands out kept groups (after 16).
    for i in 0..24 {
        let jail = sp.prepare(&config(), &tight).unwrap();
        let trace = Trace::of(&jail);
        let name = jail.cgroup_name().to_string();
        let stats = jail.stats().unwrap();
        if dirty.contains(&name) {
            // A group that held a jail that was killed for memory, hit the task limit and
            // burnt CPU: none of that is this jail's.
            assert_eq!(stats.oom_kills, 0, "{name}: {stats:?}");
            assert_eq!(stats.task_limit_hits, 0, "{name}: {stats:?}");
            assert!(stats.cpu_ns < 50_000_000, "{name}: {stats:?}");
            assert!(stats.memory_peak < 32 << 20, "{name}: {stats:?}");
            checked += 1;
        }
        *seen.entry(name.clone()).or_default() += 1;
        if i % 2 == 0 {
            // The hostile half: a busy loop, a fork bomb, then a memory bomb.
            let forks = jail
                .run(
                    &sh("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; \
                         for n in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done 2>/dev/null; \
                         kill $(jobs -p) 2>/dev/null; wait"),
                    StdinSource::Null,
                    &run_limits(),
                )
                .unwrap();
            let bomb = jail
                .run(
                    &py("b = b'x' * (200 << 20)"),
                    StdinSource::Null,
                    &run_limits(),
                )
                .unwrap();
            assert_eq!(bomb.limit, Some(Limit::Memory), "{bomb:?}");
            let counts = jail.stats().unwrap();
            assert!(counts.task_limit_hits > 0, "{forks:?} {counts:?}");
            assert!(counts.oom_kills > 0, "{counts:?}");
            assert!(counts.cpu_ns > 100_000_000, "{counts:?}");
            dirty.insert(name);
        } else {
            let out = jail
                .run(&sh("echo ok"), StdinSource::Null, &run_limits())
                .unwrap();
            assert_eq!(text(&out.stdout), "ok\n");
            dirty.remove(&name);
        }
        jail.destroy().unwrap();
        trace.assert_gone(&mounts);
        traces.push(trace);
    }
    assert!(
        checked > 0,
        "no group served a jail after a hostile one: {seen:?}"
    );
    assert!(seen.len() < 24, "no group served two jails: {seen:?}");
    // A Ctrl-C or SIGTERM meant for the server does not end the spawner before its client
    // does (it would leave its groups behind).
    let pid = sp.pid().expect("the spawner's pid") as libc::pid_t;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: kill(2) of the spawner we started.
        unsafe { libc::kill(pid, sig) };
    }
    std::thread::sleep(Duration::from_millis(200));
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = state
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .next();
    assert!(
        matches!(state, Some("S" | "R")),
        "the spawner died of a signal meant for the server: {state:?}"
    );
    drop(sp);
    for t in &traces {
        t.assert_removed(&mounts);
    }
}

/// The engine's pattern under load: threads prepare jails one after another and hand each,
/// used, to one reaper thread. Destroying one jail per turn on the spawner, the reaper fell
/// behind (one destroy for every few prepares) until the dead jails held every slot; with
/// `Jail::destroy_all` each of its turns clears what was queued meanwhile. A killed jail is
/// gone (agent and program) before the reaper gets to it.
#[test]
fn a_reaper_destroying_in_turns_keeps_up_with_threads_preparing_jails() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let mounts = host_mounts();
    // A killed jail's processes are gone without a word to the spawner.
    let jail = spawner().prepare(&config(), &cgroup_limits()).unwrap();
    let trace = Trace::of(&jail);
    let sleeper = jail
        .start(
            &sh("sleep 100"),
            StdinSource::Null,
            OutputTarget::Pipe,
            OutputTarget::Pipe,
        )
        .unwrap();
    jail.kill();
    assert!(
        jail.ends_within(Duration::from_secs(10)),
        "killed jail still alive"
    );
    // At most the agent's zombie, which the spawner reaps when it destroys the jail.
    let running: Vec<_> = processes_of(&trace.uids)
        .into_iter()
        .filter(|(pid, _)| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next());
            state.flatten().is_some_and(|c| c != 'Z')
        })
        .collect();
    assert!(
        running.is_empty(),
        "killed jail's processes still run: {running:?}"
    );
    drop(sleeper);
    Jail::destroy_all(vec![jail]).unwrap();
    trace.assert_gone(&mounts);

    let (tx, rx) = std::sync::mpsc::channel::<Jail>();
    let pending = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let reaper = {
        let pending = Arc::clone(&pending);
        let mounts = mounts.clone();
        std::thread::spawn(move || {
            while let Ok(jail) = rx.recv() {
                let mut batch = vec![jail];
                batch.extend(rx.try_iter());
                let n = batch.len();
                let traces: Vec<Trace> = batch.iter().map(Trace::of).collect();
                Jail::destroy_all(batch).unwrap();
                // Checked at once: a freed slot (its host uids, its cgroup) is handed out
                // again after 16 other frees, to this test's next jails or another test's,
                // whose processes would then be taken for leftovers of these.
                Trace::assert_all_gone(&traces, &mounts);
                pending.fetch_sub(n, SeqCst);
            }
        })
    };
    const THREADS: usize = 3;
    const EACH: usize = 30;
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (tx, pending, most) = (tx.clone(), Arc::clone(&pending), Arc::clone(&most));
            std::thread::spawn(move || {
                for _ in 0..EACH {
                    let jail = spawner().prepare(&config(), &cgroup_limits()).unwrap();
                    jail.kill();
                    most.fetch_max(pending.fetch_add(1, SeqCst) + 1, SeqCst);
                    tx.send(jail).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    for w in workers {
        w.join().unwrap();
    }
    reaper.join().unwrap();
    // Between two turns of the reaper every worker prepares at most one jail (turns are
    // taken in order), so what waits for it stays near the number of workers; one destroy
    // per turn let it grow with every round (to about 2 per round here).
    let most = most.load(SeqCst);
    assert!(
        most <= 5 * THREADS,
        "{most} used jails waited for the reaper at once ({} prepared)",
        THREADS * EACH
    );
}

#[test]
fn bad_specs_are_refused_before_anything_runs() {
    let jail = spawner().prepare(&config(), &cgroup_limits()).unwrap();
    let mut s = spec(&["/bin/true"]);
    s.rlimits.cpu_secs = 0;
    assert!(matches!(
        jail.start(
            &s,
            StdinSource::Null,
            OutputTarget::Null,
            OutputTarget::Null
        ),
        Err(JailError::InvalidConfig(_))
    ));
    let mut s = spec(&["/bin/true"]);
    s.env.push(("BAD=NAME".into(), "x".into()));
    assert!(
        jail.start(
            &s,
            StdinSource::Null,
            OutputTarget::Null,
            OutputTarget::Null
        )
        .is_err()
    );
    let mut cfg = config();
    cfg.binds.push(Bind::same("/proc"));
    assert!(matches!(
        spawner().prepare(&cfg, &cgroup_limits()),
        Err(JailError::InvalidConfig(_))
    ));
    let mut cfg = config();
    cfg.binds.push(Bind::same("/no/such/dir"));
    let e = spawner().prepare(&cfg, &cgroup_limits()).unwrap_err();
    assert!(e.to_string().contains("/no/such/dir"), "{e}");
    // The jail is still usable after refusals.
    let out = jail
        .run(&spec(&["/bin/true"]), StdinSource::Null, &run_limits())
        .unwrap();
    assert_eq!(out.exit, Exit::Exited(0));
}

// ---------------------------------------------------------------------------------------------
// Shared steps (sandboxes)

fn shared_config() -> JailConfig {
    JailConfig {
        shared: Some(SharedMounts {
            tmp: TmpfsSize::mib(64),
            shm: TmpfsSize::mib(16),
            runtime: TmpfsSize::mib(4),
        }),
        ..config()
    }
}

fn shared(argv: &[&str]) -> ProcessSpec {
    ProcessSpec {
        mode: StepMode::Shared,
        ..spec(argv)
    }
}

#[test]
fn shared_steps_share_tmp_and_background_processes_outlive_them() {
    let mounts = host_mounts();
    let jail = spawner()
        .prepare(&shared_config(), &cgroup_limits())
        .unwrap();
    let trace = Trace::of(&jail);
    let first = jail
        .run(
            &shared(&[
                "/bin/sh",
                "-c",
                "echo kept > /tmp/x; setsid sleep 1000 >/dev/null 2>&1 & echo started",
            ]),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(text(&first.stdout), "started\n", "{}", text(&first.stderr));
    let second = jail
        .run(
            &shared(&["/bin/sh", "-c", "cat /tmp/x; pgrep -c sleep"]),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(
        text(&second.stdout),
        "kept\n1\n",
        "{}",
        text(&second.stderr)
    );
    // A private step still sees only itself.
    let private = jail
        .run(
            &sh("ls /tmp | wc -l; pgrep -c sleep || true"),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(text(&private.stdout), "0\n0\n");
    assert!(
        !processes_of(&trace.uids).is_empty(),
        "the background sleep lives"
    );
    jail.destroy().unwrap();
    trace.assert_gone(&mounts);
}

#[test]
fn the_loopback_listener_accepts_every_connection_and_its_port_stays_taken() {
    let cfg = JailConfig {
        loopback_listener: Some(44771),
        ..shared_config()
    };
    let jail = spawner().prepare(&cfg, &cgroup_limits()).unwrap();
    // Many more connections than a listen backlog holds: each is accepted and closed.
    let probe = "import socket\n\
        for i in range(1000):\n\
        \x20   s = socket.create_connection(('127.0.0.1', 44771), timeout=5)\n\
        \x20   s.close()\n\
        try:\n\
        \x20   socket.create_server(('127.0.0.1', 44771))\n\
        \x20   print('bound')\n\
        except OSError as e:\n\
        \x20   print('taken', e.errno)\n";
    let out = jail
        .run(
            &ProcessSpec {
                mode: StepMode::Shared,
                ..py(probe)
            },
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(out.exit, Exit::Exited(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "taken 98\n", "{}", text(&out.stderr));
    jail.destroy().unwrap();

    // Without it, nothing listens there.
    let jail = spawner()
        .prepare(&shared_config(), &cgroup_limits())
        .unwrap();
    let out = jail
        .run(
            &py("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 44771), timeout=5)\n    print('connected')\nexcept ConnectionRefusedError:\n    print('refused')\n"),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(text(&out.stdout), "refused\n", "{}", text(&out.stderr));
    jail.destroy().unwrap();
}

#[test]
fn shared_steps_need_a_shared_jail() {
    let jail = spawner().prepare(&config(), &cgroup_limits()).unwrap();
    let e = jail
        .start(
            &shared(&["/bin/true"]),
            StdinSource::Null,
            OutputTarget::Null,
            OutputTarget::Null,
        )
        .unwrap_err();
    assert!(e.to_string().contains("shared"), "{e}");
}

#[test]
fn signals_reach_the_programs_process_group() {
    let mounts = host_mounts();
    let jail = spawner()
        .prepare(&shared_config(), &cgroup_limits())
        .unwrap();
    let trace = Trace::of(&jail);
    // SIGINT interrupts (the program handles it and carries on to a clean exit). The signal
    // can come while `print('ready')` is still flushing (the line is already out) or just
    // before the program enters its sleep, where Python would only run the handler once the
    // sleep ends: so the handler writes with os.write, not print (whose buffer is busy), and
    // the program sleeps in short slices.
    let (out, o) = signalled_when_ready(
        &jail,
        Start::default(),
        &ProcessSpec {
            mode: StepMode::Shared,
            ..py("import os, signal, sys, time\n\
                  signal.signal(signal.SIGINT, lambda *a: (os.write(1, b'interrupted\\n'), sys.exit(3)))\n\
                  print('ready', flush=True)\n\
                  for _ in range(1200): time.sleep(0.05)")
        },
        libc::SIGINT,
    );
    assert_eq!(out, "ready\ninterrupted\n", "{o:?}");
    assert_eq!(o.exit, Exit::Exited(3), "{o:?}");
    // Kill takes the whole group of a shared step, children included.
    let p = jail
        .start(
            &shared(&["/bin/sh", "-c", "sleep 1000 & sleep 1000 & wait"]),
            StdinSource::Null,
            OutputTarget::Null,
            OutputTarget::Null,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    p.kill().unwrap();
    let o = jail.supervise(p, &run_limits(), &mut |_, _| {}).unwrap();
    assert_eq!(o.exit, Exit::Signaled(libc::SIGKILL));
    let left = jail
        .run(
            &shared(&["/bin/sh", "-c", "pgrep -c sleep || true"]),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(text(&left.stdout), "0\n");
    // A private step is signalled the same way.
    let p = jail
        .start(
            &sh("trap 'exit 7' TERM; sleep 1000 & wait"),
            StdinSource::Null,
            OutputTarget::Null,
            OutputTarget::Null,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    p.signal(libc::SIGTERM).unwrap();
    let o = jail.supervise(p, &run_limits(), &mut |_, _| {}).unwrap();
    assert_eq!(o.exit, Exit::Exited(7));
    jail.destroy().unwrap();
    trace.assert_gone(&mounts);
}

/// A jail's last step is signalled as any step is: the client's signal goes through the
/// control pipe to the step's init (there the small init binary, see `stepinit`), which sends
/// it to the program's process group.
#[test]
fn a_last_step_is_signalled_through_its_init() {
    let mounts = host_mounts();
    let jail = spawner().prepare(&config(), &cgroup_limits()).unwrap();
    let trace = Trace::of(&jail);
    let last = Start {
        last: true,
        ..Start::default()
    };
    let (out, o) = signalled_when_ready(
        &jail,
        last,
        &sh("trap 'echo terminated; exit 7' TERM; echo ready; sleep 1000 & wait"),
        libc::SIGTERM,
    );
    assert_eq!(out, "ready\nterminated\n", "{o:?}");
    assert_eq!(o.exit, Exit::Exited(7), "{o:?}");
    jail.destroy().unwrap();
    trace.assert_gone(&mounts);
}

/// Starts `spec` in `jail` as `how` says, sends it `sig` through the client once it has
/// printed `ready` (its handler is installed then, however slow the start), and returns its
/// whole output and outcome.
fn signalled_when_ready(
    jail: &Jail,
    how: Start,
    spec: &ProcessSpec,
    sig: libc::c_int,
) -> (String, Outcome) {
    let p = jail
        .start_with(
            how,
            spec,
            StdinSource::Null,
            OutputTarget::Pipe,
            OutputTarget::Pipe,
        )
        .unwrap();
    let signaller = p.killer().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_ok() {
            signaller.signal(sig).unwrap();
        }
    });
    let mut out = Vec::new();
    let o = jail
        .supervise(p, &run_limits(), &mut |_, c| {
            out.extend_from_slice(c);
            if text(&out).contains("ready") {
                let _ = ready_tx.send(());
            }
        })
        .unwrap();
    (text(&out), o)
}

/// Starts a shared step that prints `ready` once it has set up, supervises it on a thread of
/// `scope`, and returns once it is ready (or panics after 30 s).
fn start_ready<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    jail: &'s Jail,
    spec: &ProcessSpec,
) -> (Killer, std::thread::ScopedJoinHandle<'s, Outcome>) {
    let p = jail
        .start(
            spec,
            StdinSource::Null,
            OutputTarget::Pipe,
            OutputTarget::Null,
        )
        .unwrap();
    let killer = p.killer().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = scope.spawn(move || {
        let limits = RunLimits {
            wall_time: Duration::from_secs(120),
            ..run_limits()
        };
        jail.supervise(p, &limits, &mut |_, c| {
            let _ = tx.send(c.to_vec());
        })
        .unwrap()
    });
    let mut seen = Vec::new();
    while !text(&seen).contains("ready") {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(c) => seen.extend_from_slice(&c),
            Err(e) => panic!("the step never said ready ({e}): {:?}", text(&seen)),
        }
    }
    (killer, h)
}

/// A frozen jail (the pause of a sandbox) keeps its processes but uses no CPU until it is
/// thawed, and a jail destroyed while frozen leaves nothing behind.
#[test]
fn a_frozen_jail_uses_no_cpu_until_thawed_and_dies_frozen() {
    let mounts = host_mounts();
    let jail = spawner()
        .prepare(&shared_config(), &cgroup_limits())
        .unwrap();
    let trace = Trace::of(&jail);
    std::thread::scope(|scope| {
        let spin = shared(&[
            "/usr/bin/python3",
            "-c",
            "print('ready', flush=True)\nwhile True: pass",
        ]);
        let (_killer, h) = start_ready(scope, &jail, &spin);
        jail.set_frozen(true).unwrap();
        let frozen_at = jail.stats().unwrap().cpu_ns;
        std::thread::sleep(Duration::from_millis(300));
        let later = jail.stats().unwrap().cpu_ns;
        assert_eq!(frozen_at, later, "a frozen jail used CPU");
        jail.set_frozen(false).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let thawed = jail.stats().unwrap().cpu_ns;
        assert!(
            thawed > later + 50_000_000,
            "a thawed jail did not run: {later} -> {thawed} ns"
        );
        jail.set_frozen(true).unwrap();
        jail.shutdown().unwrap();
        // The supervisor sees its program die with the jail (or the jail gone).
        let _ = h.join();
    });
    trace.assert_gone(&mounts);
}

/// Time a jail spends frozen does not count against its programs' wall-time limits (a paused
/// sandbox's command is not killed for the pause): a step that sleeps 0.6 s under a 1.5 s
/// limit, frozen for 2 s just after it started, ends by itself once thawed; the same step
/// under a 0.3 s limit is still killed for its wall time.
#[test]
fn the_wall_time_limit_does_not_count_while_frozen() {
    let mounts = host_mounts();
    let jail = spawner()
        .prepare(&shared_config(), &cgroup_limits())
        .unwrap();
    let trace = Trace::of(&jail);
    let sleeper = shared(&["/usr/bin/sleep", "0.6"]);
    let supervised = |wall_ms: u64, frozen_for: Option<Duration>| {
        let p = jail
            .start(
                &sleeper,
                StdinSource::Null,
                OutputTarget::Null,
                OutputTarget::Null,
            )
            .unwrap();
        std::thread::scope(|scope| {
            let h = scope.spawn(|| {
                let limits = RunLimits {
                    wall_time: Duration::from_millis(wall_ms),
                    ..run_limits()
                };
                jail.supervise(p, &limits, &mut |_, _| {}).unwrap()
            });
            if let Some(d) = frozen_for {
                std::thread::sleep(Duration::from_millis(100));
                jail.set_frozen(true).unwrap();
                std::thread::sleep(d);
                jail.set_frozen(false).unwrap();
            }
            h.join().unwrap()
        })
    };
    let o = supervised(1500, Some(Duration::from_secs(2)));
    assert_eq!((o.exit, o.limit), (Exit::Exited(0), None), "{o:?}");
    assert!(o.wall_time >= Duration::from_secs(2), "{o:?}");
    let o = supervised(300, None);
    assert_eq!(o.limit, Some(Limit::WallTime), "{o:?}");
    jail.destroy().unwrap();
    trace.assert_gone(&mounts);
}

/// Steps of a shared jail (a sandbox's commands and kernels) share its cgroup and its OOM
/// counter, so the counter rising while a step ran does not make the step a memory kill: a
/// step is reported killed by the memory limit only if it itself died of a SIGKILL nobody of
/// ours sent, with an OOM kill in the jail during its life. Attacks: a holder that the OOM
/// killer takes while another step allocates and exits 0 (that step is a success, the holder
/// the memory kill); a step that fails on its own (exit 3) while that happens; a step we kill
/// while another step is OOM-killed; a step that SIGKILLs itself after an earlier OOM kill.
#[test]
fn shared_steps_are_blamed_only_for_their_own_oom_kills() {
    let mounts = host_mounts();
    let cg = CgroupLimits {
        memory_bytes: 128 << 20,
        ..cgroup_limits()
    };
    let jail = spawner().prepare(&shared_config(), &cg).unwrap();
    let trace = Trace::of(&jail);
    let alloc = |mib: u32, then: &str| ProcessSpec {
        mode: StepMode::Shared,
        ..py(&format!(
            "import sys, time\nb = b'x' * ({mib} << 20)\n{then}"
        ))
    };
    std::thread::scope(|scope| {
        // A holder of 80 MiB; then a step that allocates 80 MiB more and exits 0, and one that
        // exits 3 while it runs: the kernel kills the holder (the larger), both others finish.
        let (_, holder) = start_ready(
            scope,
            &jail,
            &alloc(80, "print('ready', flush=True)\ntime.sleep(100)"),
        );
        let (_, failing) = start_ready(
            scope,
            &jail,
            &shared(&[
                "/bin/sh",
                "-c",
                "echo ready; until [ -e /tmp/allocated ]; do sleep 0.05; done; exit 3",
            ]),
        );
        let fg = jail
            .run(
                &alloc(80, "open('/tmp/allocated', 'w').close()\nprint('done')"),
                StdinSource::Null,
                &run_limits(),
            )
            .unwrap();
        let holder = holder.join().unwrap();
        let failing = failing.join().unwrap();
        assert_eq!(fg.exit, Exit::Exited(0), "{fg:?} {}", text(&fg.stderr));
        assert_eq!(text(&fg.stdout), "done\n");
        assert!(
            fg.oom_kills_at_exit > fg.oom_kills_at_start,
            "an OOM kill happened while it ran: {fg:?}"
        );
        assert_eq!(
            fg.limit, None,
            "another step's OOM kill is not its own: {fg:?}"
        );
        assert!(!fg.oom_killed(), "{fg:?}");
        assert_eq!(holder.exit, Exit::Signaled(libc::SIGKILL), "{holder:?}");
        assert_eq!(holder.limit, Some(Limit::Memory), "{holder:?}");
        assert!(holder.oom_killed() && !holder.killed_by_us, "{holder:?}");
        assert_eq!(failing.exit, Exit::Exited(3), "{failing:?}");
        assert!(
            failing.oom_kills_at_exit > failing.oom_kills_at_start,
            "{failing:?}"
        );
        assert_eq!(failing.limit, None, "{failing:?}");

        // A step we kill while another is OOM-killed: the kill is ours, the OOM kill the
        // other's.
        let (killer, sleeper) = start_ready(
            scope,
            &jail,
            &shared(&["/bin/sh", "-c", "echo ready; exec sleep 100"]),
        );
        let victim = jail
            .run(
                &alloc(200, "print('survived')"),
                StdinSource::Null,
                &run_limits(),
            )
            .unwrap();
        assert_eq!(victim.exit, Exit::Signaled(libc::SIGKILL), "{victim:?}");
        assert_eq!(victim.limit, Some(Limit::Memory), "{victim:?}");
        assert!(victim.oom_killed(), "{victim:?}");
        killer.kill().unwrap();
        let sleeper = sleeper.join().unwrap();
        assert_eq!(sleeper.exit, Exit::Signaled(libc::SIGKILL), "{sleeper:?}");
        assert!(
            sleeper.oom_kills_at_exit > sleeper.oom_kills_at_start,
            "{sleeper:?}"
        );
        assert!(sleeper.killed_by_us, "{sleeper:?}");
        assert_eq!(
            sleeper.limit, None,
            "our kill is no memory kill: {sleeper:?}"
        );
        assert!(!sleeper.oom_killed(), "{sleeper:?}");
    });
    // A step that SIGKILLs itself after the jail's earlier OOM kills: they were before its
    // time.
    let selfkill = jail
        .run(
            &shared(&["/bin/sh", "-c", "kill -9 $$"]),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(selfkill.exit, Exit::Signaled(libc::SIGKILL), "{selfkill:?}");
    assert!(selfkill.oom_kills_at_start >= 2, "{selfkill:?}");
    assert_eq!(selfkill.limit, None, "{selfkill:?}");
    assert!(
        !selfkill.killed_by_us && !selfkill.oom_killed(),
        "{selfkill:?}"
    );
    jail.destroy().unwrap();
    trace.assert_gone(&mounts);
}

#[test]
fn the_runtime_directory_is_the_programs_and_safe_for_the_host() {
    let jail = spawner()
        .prepare(&shared_config(), &cgroup_limits())
        .unwrap();
    let rt = jail
        .runtime_dir()
        .expect("a shared jail has a runtime directory");
    rt.write_file("conn.json", b"{\"key\":\"k\"}", 0o600)
        .unwrap();
    let out = jail
        .run(
            &shared(&[
                "/bin/sh",
                "-c",
                "stat -c '%U %a' /run/runcell /run/runcell/conn.json; \
               cat /run/runcell/conn.json; echo; ln -s /etc/passwd /run/runcell/evil; \
               touch /run/runcell/made",
            ]),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "runner 700\nrunner 600\n{\"key\":\"k\"}\n",
        "{}",
        text(&out.stderr)
    );
    assert!(rt.read_file("evil", 100).is_err());
    assert_eq!(rt.read_file("made", 100).unwrap(), b"");
    // The workspace does not show it.
    let ls = jail
        .run(
            &shared(&["/bin/ls", "-A", "/workspace"]),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(text(&ls.stdout), "");
    jail.destroy().unwrap();
}

// ---------------------------------------------------------------------------------------------
// The sandbox's filesystem view from the host (the files API)

/// Files on the host that no operation on a sandbox's view may touch: a tempdir with a
/// canary file and a subdirectory, and `/etc/hostname`.
struct HostCanary {
    dir: tempfile::TempDir,
    hostname: Vec<u8>,
    before: Vec<(PathBuf, Vec<u8>, u32)>,
}

impl HostCanary {
    fn new() -> HostCanary {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("canary"), b"host canary").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), b"host sub").unwrap();
        for p in ["", "canary", "sub", "sub/f"] {
            let p = dir.path().join(p);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut c = HostCanary {
            dir,
            hostname: std::fs::read("/etc/hostname").unwrap_or_default(),
            before: Vec::new(),
        };
        c.before = c.snapshot();
        c
    }

    fn path(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>, u32)> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let mut todo = vec![self.dir.path().to_path_buf()];
        while let Some(p) = todo.pop() {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let data = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                for e in std::fs::read_dir(&p).unwrap() {
                    todo.push(e.unwrap().path());
                }
            }
            out.push((p, data, m.mode()));
        }
        out.sort();
        out
    }

    fn assert_untouched(&self) {
        assert_eq!(
            self.snapshot(),
            self.before,
            "the host canary directory changed"
        );
        assert_eq!(
            std::fs::read("/etc/hostname").unwrap_or_default(),
            self.hostname,
            "the host's /etc/hostname changed"
        );
    }
}

fn sandbox_jail() -> Jail {
    spawner()
        .prepare(&shared_config(), &cgroup_limits())
        .unwrap()
}

/// Runs a shell script as a shared step (the sandbox's own view) and checks it succeeded.
fn in_jail(jail: &Jail, script: &str) -> String {
    let out = jail
        .run(
            &shared(&["/bin/sh", "-c", script]),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(
        out.exit,
        Exit::Exited(0),
        "{script}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn read_all(fs: &SandboxFs, path: &str) -> Result<Vec<u8>, FsError> {
    use std::io::Read;
    let (mut f, _) = fs.open_read(path)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    Ok(v)
}

fn put(fs: &SandboxFs, path: &str, data: &[u8]) -> Result<u64, FsError> {
    let mut u = fs.upload(path, 1 << 20)?;
    u.write(data)?;
    u.commit(None)
}

fn not_found_or_forbidden(r: Result<impl std::fmt::Debug, FsError>, what: &str) {
    assert!(
        matches!(
            r,
            Err(FsError::NotFound { .. }) | Err(FsError::Forbidden { .. })
        ),
        "{what}: {r:?}"
    );
}

fn upload_names(fs: &SandboxFs, dir: &str) -> Vec<String> {
    fs.list(dir, 1, 100_000)
        .unwrap()
        .0
        .into_iter()
        .map(|m| m.path)
        .filter(|p| p.contains(".runcell-upload-"))
        .collect()
}

#[test]
fn sandbox_fs_is_the_programs_view_as_its_user() {
    let mounts = host_mounts();
    let jail = sandbox_jail();
    let trace = Trace::of(&jail);
    let fs = jail.filesystem().unwrap();
    assert_eq!(fs.host_id(), jail.program_host_id());
    let ws = fs.stat("/workspace").unwrap();
    assert_eq!((ws.kind, ws.uid, ws.gid), (FsKind::Dir, JAIL_UID, JAIL_GID));
    assert_eq!(fs.stat(".").unwrap().path, "/workspace");
    // Generated files are in the root's skeleton, made by the host's root like `/usr`'s.
    let h = fs.stat("/etc/hostname").unwrap();
    assert_eq!((h.kind, h.uid, h.mode), (FsKind::File, OVERFLOW_ID, 0o644));
    assert_eq!(read_all(&fs, "/etc/hostname").unwrap(), b"runcell\n");
    let py = fs.stat("/usr/bin/python3").unwrap();
    assert_eq!((py.kind, py.uid), (FsKind::Symlink, OVERFLOW_ID));
    // Written from the host: the program sees it as its own.
    assert_eq!(put(&fs, "src/hello.txt", b"hi\n").unwrap(), 3);
    assert_eq!(
        in_jail(
            &jail,
            "stat -c '%U %a' src src/hello.txt; cat src/hello.txt"
        ),
        "runner 755\nrunner 644\nhi\n"
    );
    let mut u = fs.upload("/workspace/src/hello.txt", 100).unwrap();
    u.write(b"again").unwrap();
    assert_eq!(u.commit(Some(0o4640)).unwrap(), 5);
    let m = fs.stat("src/hello.txt").unwrap();
    assert_eq!((m.mode, m.size, m.uid), (0o640, 5, JAIL_UID));
    // Written by the program: the host reads it.
    in_jail(&jail, "echo made > /tmp/made; ln -s made /tmp/link");
    assert_eq!(read_all(&fs, "/tmp/made").unwrap(), b"made\n");
    assert_eq!(read_all(&fs, "/tmp/link").unwrap(), b"made\n");
    assert_eq!(fs.stat("/tmp/link").unwrap().kind, FsKind::Symlink);
    let (top, truncated) = fs.list("/", 1, 1000).unwrap();
    assert!(!truncated);
    let names: Vec<_> = top.iter().map(|m| m.path.as_str()).collect();
    for want in ["/etc", "/proc", "/tmp", "/usr", "/workspace"] {
        assert!(names.contains(&want), "{names:?}");
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    // Depth-first order: a directory's descendants come right after it.
    fs.mkdir_all("t/b/c", 0o755).unwrap();
    put(&fs, "t/a", b"").unwrap();
    put(&fs, "t/b/z", b"").unwrap();
    put(&fs, "t/d", b"").unwrap();
    let (l, _) = fs.list("t", 10, 100).unwrap();
    let l: Vec<_> = l.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(
        l,
        [
            "/workspace/t/a",
            "/workspace/t/b",
            "/workspace/t/b/c",
            "/workspace/t/b/z",
            "/workspace/t/d"
        ]
    );
    let (l, _) = fs.list("t", 1, 100).unwrap();
    assert_eq!(l.len(), 3);
    assert_eq!(fs.list("t", 0, 100).unwrap(), (vec![], false));
    let (s, _) = fs.search("/workspace", "[a-z]", 100, 10_000).unwrap();
    let s: Vec<_> = s.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(s, ["/workspace/t/a", "/workspace/t/b/z", "/workspace/t/d"]);
    assert!(matches!(
        fs.search("/workspace", "[a-", 100, 100),
        Err(FsError::InvalidPattern { .. })
    ));
    // mkdir_all, chmod, replace, remove.
    assert!(fs.mkdir_all("m/n/o", 0o750).unwrap());
    assert!(!fs.mkdir_all("m/n/o", 0o700).unwrap());
    assert_eq!(fs.stat("m/n/o").unwrap().mode, 0o750);
    assert_eq!(fs.stat("m/n").unwrap().mode, 0o750);
    assert!(matches!(
        fs.mkdir_all("src/hello.txt/x", 0o755),
        Err(FsError::NotADirectory { .. })
    ));
    fs.chmod("src/hello.txt", 0o6755).unwrap();
    assert_eq!(fs.stat("src/hello.txt").unwrap().mode, 0o755);
    assert!(matches!(
        fs.chmod("src/hello.txt", 0o17777),
        Err(FsError::InvalidArgument { .. })
    ));
    put(&fs, "conf", b"host=localhost:8080 localhost").unwrap();
    assert_eq!(fs.replace("conf", "localhost", "0.0.0.0", 1000).unwrap(), 2);
    assert_eq!(read_all(&fs, "conf").unwrap(), b"host=0.0.0.0:8080 0.0.0.0");
    assert_eq!(fs.replace("conf", "nothing", "x", 1000).unwrap(), 0);
    assert!(matches!(
        fs.replace("conf", "", "x", 1000),
        Err(FsError::InvalidArgument { .. })
    ));
    assert!(matches!(
        fs.replace("conf", "host", "x", 5),
        Err(FsError::TooLarge { .. })
    ));
    assert!(matches!(
        fs.remove_file("m"),
        Err(FsError::IsADirectory { .. })
    ));
    fs.remove_file("conf").unwrap();
    assert!(matches!(
        fs.remove_file("conf"),
        Err(FsError::NotFound { .. })
    ));
    fs.remove_all("m").unwrap();
    fs.remove_all("t").unwrap();
    assert!(matches!(fs.stat("m"), Err(FsError::NotFound { .. })));
    assert!(matches!(fs.remove_all("m"), Err(FsError::NotFound { .. })));
    assert_eq!(in_jail(&jail, "ls /workspace"), "src\n");
    drop(fs);
    jail.destroy().unwrap();
    trace.assert_gone(&mounts);
    assert!(jail_filesystem_after_destroy_fails());
}

fn jail_filesystem_after_destroy_fails() -> bool {
    let jail = sandbox_jail();
    let fs = jail.filesystem().unwrap();
    put(&fs, "x", b"x").unwrap();
    jail.shutdown().unwrap();
    assert!(jail.filesystem().is_err());
    // A handle kept past the jail's end sees nothing of it any more.
    fs.stat("/workspace/x").is_err() && put(&fs, "y", b"y").is_err()
}

#[test]
fn traversal_stays_inside_the_view() {
    let canary = HostCanary::new();
    let jail = sandbox_jail();
    let fs = jail.filesystem().unwrap();
    // `..` stops at the sandbox's root: this is the jail's generated passwd.
    let passwd = text(&read_all(&fs, "../../../../etc/passwd").unwrap());
    assert!(passwd.contains("runcell sandbox"), "{passwd}");
    assert_eq!(
        text(&read_all(&fs, "/workspace/../../../etc/passwd").unwrap()),
        passwd
    );
    for p in [
        "/workspace/../../../etc/shadow",
        "../../etc/shadow",
        "..%2f..%2fetc%2fpasswd",
        "..\\..\\etc\\passwd",
        "%2e%2e/%2e%2e/etc/passwd",
    ] {
        assert!(
            matches!(fs.open_read(p), Err(FsError::NotFound { .. })),
            "{p}"
        );
    }
    // Encoded and backslashed names are ordinary names in the workspace.
    put(&fs, "..%2fx", b"1").unwrap();
    put(&fs, "a\\..\\b", b"2").unwrap();
    assert_eq!(in_jail(&jail, "ls -A /workspace"), "..%2fx\na\\..\\b\n");
    // NUL bytes, empty and overlong paths, overlong names.
    let long = "a/".repeat(2100);
    let long_name = "n".repeat(300);
    for p in [
        "",
        "a\0b",
        "/etc/passwd\0",
        long.as_str(),
        long_name.as_str(),
    ] {
        let bad = |r: Result<(), FsError>| {
            assert!(
                matches!(r, Err(FsError::InvalidPath { .. })),
                "{p:?}: {r:?}"
            )
        };
        bad(fs.stat(p).map(drop));
        bad(fs.open_read(p).map(drop));
        bad(fs.upload(p, 10).map(drop));
        bad(fs.list(p, 1, 10).map(drop));
        bad(fs.search(p, "*", 10, 10).map(drop));
        bad(fs.chmod(p, 0o644));
        bad(fs.mkdir_all(p, 0o755).map(drop));
        bad(fs.remove_file(p));
        bad(fs.remove_all(p));
        bad(fs.rename(p, "x"));
        bad(fs.rename("x", p));
        bad(fs.replace(p, "a", "b", 10).map(drop));
    }
    assert!(matches!(fs.remove_all("/"), Err(FsError::Forbidden { .. })));
    assert!(matches!(
        fs.remove_all("../.."),
        Err(FsError::Forbidden { .. })
    ));
    assert!(matches!(
        fs.remove_all("/workspace"),
        Err(FsError::Forbidden { .. })
    ));
    assert!(matches!(
        fs.rename("/", "/workspace/root"),
        Err(FsError::Forbidden { .. })
    ));
    // Everything is still there.
    assert_eq!(in_jail(&jail, "ls -A /workspace | wc -l"), "2\n");
    drop(fs);
    jail.destroy().unwrap();
    canary.assert_untouched();
}

/// ATTACK: names that are not UTF-8 (written by the program with `printf` escapes) next to
/// decoys whose UTF-8 names look like encoded ones (`caf%E9.txt`, a directory `%`). Every path
/// a listing gives is in text form (encoded after `/%/` when needed) and reaches exactly its
/// own file again for every operation; encoded `/`, `..` and NUL are checked like any path,
/// and nothing leaves the view.
#[test]
fn non_utf8_names_round_trip_and_stay_inside_the_view() {
    use std::os::unix::ffi::OsStrExt;
    let canary = HostCanary::new();
    let jail = sandbox_jail();
    let fs = jail.filesystem().unwrap();
    in_jail(
        &jail,
        r#"set -e; cd /workspace; d=$(printf 'd\351'); mkdir "$d"
           printf latin1 > "$d/$(printf 'caf\351.txt')"; printf decoy2 > "$d/caf%E9.txt"
           printf decoy > 'caf%E9.txt'; printf ff > "$(printf '50%%\377')"
           mkdir '%'; printf lit > '%/x'; ln -s /etc/passwd "$(printf 'l\376')"
           printf sur > "$(printf '\355\240\200')""#,
    );
    let (l, truncated) = fs.list("/workspace", 3, 100).unwrap();
    assert!(!truncated);
    let listed: Vec<&str> = l.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(
        listed,
        [
            "/workspace/%",
            "/workspace/%/x",
            "/%/workspace/50%25%FF",
            "/workspace/caf%E9.txt",
            "/%/workspace/d%E9",
            "/%/workspace/d%E9/caf%25E9.txt",
            "/%/workspace/d%E9/caf%E9.txt",
            "/%/workspace/l%FE",
            "/%/workspace/%ED%A0%80",
        ]
    );
    // Each listed path names exactly its own file again.
    for m in &l {
        let again = fs.stat(&m.path).unwrap();
        assert_eq!(again, *m, "{}", m.path);
        assert_eq!(is_encoded_path(&m.path), m.path.starts_with("/%/"));
    }
    let contents = [
        ("/%/workspace/d%E9/caf%E9.txt", "latin1"),
        ("/%/workspace/d%e9/caf%e9.txt", "latin1"),
        ("/%/workspace/d%E9/caf%25E9.txt", "decoy2"),
        ("/workspace/caf%E9.txt", "decoy"),
        ("caf%E9.txt", "decoy"),
        ("/%/workspace/50%25%FF", "ff"),
        ("/workspace/%/x", "lit"),
        ("%/x", "lit"),
        ("/%/workspace/%25/x", "lit"),
        ("/%/workspace/%ED%A0%80", "sur"),
    ];
    for (p, want) in contents {
        assert_eq!(text(&read_all(&fs, p).unwrap()), want, "{p}");
    }
    let (_, meta) = fs.open_read("/%/workspace/d%e9/./caf%E9.txt").unwrap();
    assert_eq!(
        meta.path, "/%/workspace/d%E9/caf%E9.txt",
        "canonical text form"
    );
    assert_eq!(fs.stat("/%/workspace/l%FE").unwrap().kind, FsKind::Symlink);
    assert!(text(&read_all(&fs, "/%/workspace/l%FE").unwrap()).contains("runcell sandbox"));
    // Search matches invalid bytes as U+FFFD: `?` is the é of the Latin-1 name only.
    let (found, _) = fs.search("/workspace", "caf?.txt", 100, 1000).unwrap();
    let found: Vec<_> = found.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(found, ["/%/workspace/d%E9/caf%E9.txt"]);
    let (found, _) = fs.search("/%/workspace/d%E9", "*", 100, 1000).unwrap();
    assert_eq!(found.len(), 2);

    // Changes by the listed names land on exactly those files.
    fs.chmod("/%/workspace/d%E9/caf%E9.txt", 0o600).unwrap();
    assert_eq!(
        in_jail(
            &jail,
            r#"cd /workspace; stat -c %a "$(printf 'd\351/caf\351.txt')" "$(printf 'd\351')/caf%E9.txt" caf%E9.txt"#
        ),
        "600\n644\n644\n"
    );
    fs.rename("/%/workspace/50%25%FF", "/%/workspace/d%E9/moved%FE%25")
        .unwrap();
    assert_eq!(
        in_jail(&jail, r#"cat "$(printf '/workspace/d\351/moved\376%%')""#),
        "ff"
    );
    assert_eq!(put(&fs, "/%/workspace/new%80", b"up").unwrap(), 2);
    assert_eq!(
        in_jail(&jail, r#"cat "$(printf '/workspace/new\200')""#),
        "up"
    );
    assert!(fs.mkdir_all("/%/workspace/m%FF/n", 0o700).unwrap());
    assert!(fs.mkdir_parent("/%/workspace/p%FF/q/file", 0o755).unwrap());
    in_jail(
        &jail,
        r#"test -d "$(printf '/workspace/m\377/n')"; test -d "$(printf '/workspace/p\377/q')""#,
    );
    fs.remove_file("/%/workspace/l%FE").unwrap();
    fs.remove_file("/%/workspace/%ED%A0%80").unwrap();
    fs.remove_all("/%/workspace/d%E9").unwrap();
    fs.remove_all("/%/workspace/m%FF").unwrap();
    fs.remove_all("/%/workspace/p%FF").unwrap();
    fs.remove_file("/%/workspace/new%80").unwrap();
    fs.replace("/%/workspace/%25/x", "lit", "changed", 100)
        .unwrap();
    // Only the decoys are left, untouched but for the one edited through its encoded name.
    assert_eq!(
        in_jail(&jail, "cd /workspace; ls -A; cat caf%E9.txt; echo; cat %/x"),
        "%\ncaf%E9.txt\ndecoy\nchanged"
    );
    assert!(text(&read_all(&fs, "/etc/passwd").unwrap()).contains("runcell sandbox"));

    // Encoded traversal is ordinary traversal: it stays in the view.
    let passwd = read_all(&fs, "/etc/passwd").unwrap();
    assert_eq!(
        read_all(&fs, "/%/workspace%2F..%2F..%2F..%2Fetc%2Fpasswd").unwrap(),
        passwd
    );
    assert_eq!(
        read_all(&fs, "/%/%2E%2E/%2e%2e/etc/passwd").unwrap(),
        passwd
    );
    let host = canary.path();
    let host_enc: String = host.bytes().map(|b| format!("%{b:02X}")).collect();
    for p in [
        format!("/%/..%2F..%2F..{host_enc}%2Fcanary"),
        format!("/%/proc%2F1%2Froot{host_enc}%2Fcanary"),
        "/%/proc/self/root/etc/passwd".to_string(),
        "/%/proc%2F1%2Fenviron".to_string(),
    ] {
        not_found_or_forbidden(fs.open_read(&p).map(drop), &p);
        not_found_or_forbidden(fs.stat(&p).map(drop), &p);
    }
    // A write "above" the workspace through encoded dots lands in the jail's own /tmp.
    put(&fs, "/%/workspace/%2E%2E/%2E%2E/tmp/esc%FF", b"inside").unwrap();
    assert_eq!(
        in_jail(&jail, r#"cat "$(printf '/tmp/esc\377')""#),
        "inside"
    );
    assert!(!Path::new(std::ffi::OsStr::from_bytes(b"/tmp/esc\xFF")).exists());
    assert!(
        fs.rename("/workspace/caf%E9.txt", "/%/..%2Fetc%2Fpasswd")
            .is_err()
    );
    assert_eq!(read_all(&fs, "/etc/passwd").unwrap(), passwd);
    // Encoded NUL, malformed escapes and overlong decoded names are refused before anything.
    let long = format!("/%/workspace/{}", "%FF".repeat(256));
    for p in [
        "/%/workspace/a%00b",
        "/%/%00",
        "/%/etc/passwd%00",
        "/%/%",
        "/%/workspace/%zz",
        "/%/a%4",
        long.as_str(),
    ] {
        let bad = |r: Result<(), FsError>| {
            assert!(
                matches!(r, Err(FsError::InvalidPath { .. })),
                "{p:?}: {r:?}"
            )
        };
        bad(fs.stat(p).map(drop));
        bad(fs.open_read(p).map(drop));
        bad(fs.upload(p, 10).map(drop));
        bad(fs.list(p, 1, 10).map(drop));
        bad(fs.search(p, "*", 10, 10).map(drop));
        bad(fs.chmod(p, 0o644));
        bad(fs.mkdir_all(p, 0o755).map(drop));
        bad(fs.mkdir_parent(p, 0o755).map(drop));
        bad(fs.remove_file(p));
        bad(fs.remove_all(p));
        bad(fs.rename(p, "x"));
        bad(fs.rename("caf%E9.txt", p));
        bad(fs.replace(p, "a", "b", 10).map(drop));
    }
    // The marker is unambiguous: nothing named `%` can exist at the read-only root, so no
    // literal path starts with `/%/` (written literally, such a path names nothing).
    assert_eq!(
        in_jail(&jail, "mkdir /% 2>/dev/null && echo made || echo refused"),
        "refused\n"
    );
    assert!(matches!(fs.stat("//%"), Err(FsError::NotFound { .. })));
    assert!(fs.mkdir_all("//%/x", 0o755).is_err());
    assert!(matches!(fs.stat("//%/x"), Err(FsError::NotFound { path }) if path == "/%/%25/x"));
    drop(fs);
    jail.destroy().unwrap();
    canary.assert_untouched();
}

#[test]
fn planted_symlinks_never_lead_outside_the_view() {
    let canary = HostCanary::new();
    let host = canary.path();
    let jail = sandbox_jail();
    let fs = jail.filesystem().unwrap();
    // The program plants links to the host canary's path (which in the jail is a copy of
    // its own under /tmp), through /proc magic links, and to the root.
    in_jail(
        &jail,
        &format!(
            "set -e; cd /workspace; mkdir -p d {host}/sub; echo jail copy > {host}/canary; \
             echo inside > d/f; \
             ln -s {host}/canary canary; ln -s {host} hostdir; ln -s /proc/1/root proot; \
             ln -s /proc/1/root{host}/canary pcanary; ln -s /proc/self/cwd cwd; \
             ln -s /proc/self/root sroot; ln -s / root; ln -s /etc/passwd passwd; \
             ln -s ../../../../..{host} relhost"
        ),
    );
    // Final components: followed within the view only.
    assert_eq!(read_all(&fs, "canary").unwrap(), b"jail copy\n");
    assert_eq!(read_all(&fs, "relhost/canary").unwrap(), b"jail copy\n");
    assert!(
        text(&read_all(&fs, "passwd").unwrap()).contains("runcell sandbox"),
        "the jail's passwd"
    );
    assert_eq!(read_all(&fs, "root/workspace/d/f").unwrap(), b"inside\n");
    for p in ["pcanary", "proot/etc/passwd", "cwd/d/f", "sroot/etc/passwd"] {
        not_found_or_forbidden(fs.open_read(p), p);
        not_found_or_forbidden(fs.stat(&format!("{p}/x")), p);
        not_found_or_forbidden(fs.list(&format!("{p}/etc"), 1, 10), p);
        not_found_or_forbidden(fs.search(&format!("{p}/etc"), "*", 10, 10), p);
        not_found_or_forbidden(fs.upload(&format!("{p}/x"), 10).map(drop), p);
        not_found_or_forbidden(fs.mkdir_all(&format!("{p}/x"), 0o755), p);
        not_found_or_forbidden(fs.chmod(&format!("{p}/x"), 0o777), p);
        not_found_or_forbidden(fs.remove_file(&format!("{p}/x")), p);
        not_found_or_forbidden(fs.remove_all(&format!("{p}/x")), p);
        not_found_or_forbidden(fs.rename(&format!("{p}/x"), "y"), p);
        not_found_or_forbidden(fs.rename("d/f", &format!("{p}/x")), p);
        not_found_or_forbidden(fs.replace(p, "a", "b", 100), p);
    }
    // Intermediate components through a link to the host path: the jail's copy.
    put(&fs, "hostdir/new", b"x").unwrap();
    assert_eq!(in_jail(&jail, &format!("cat {host}/new")), "x");
    fs.chmod("hostdir/canary", 0o600).unwrap();
    assert_eq!(fs.stat("hostdir/canary").unwrap().mode, 0o600);
    assert_eq!(
        fs.replace("hostdir/canary", "jail", "JAIL", 100).unwrap(),
        1
    );
    assert!(matches!(
        fs.rename("hostdir/canary", "/workspace/moved"),
        Err(FsError::CrossDevice { .. })
    ));
    fs.rename("hostdir/canary", "hostdir/sub/moved").unwrap();
    fs.remove_file("hostdir/sub/moved").unwrap();
    fs.remove_all("hostdir/sub").unwrap();
    let (found, _) = fs.search("hostdir/..", "*", 100, 1000).unwrap_or_default();
    assert!(found.iter().all(|m| !m.path.starts_with("/proc")));
    // Operations on the links themselves act on the links, never on their targets.
    for link in ["canary", "hostdir", "proot", "cwd", "root"] {
        assert!(
            matches!(fs.chmod(link, 0o777), Err(FsError::IsSymlink { .. })),
            "{link}"
        );
        assert!(
            matches!(fs.list(link, 1, 10), Err(FsError::IsSymlink { .. })),
            "{link}"
        );
        assert!(
            matches!(fs.search(link, "*", 10, 10), Err(FsError::IsSymlink { .. })),
            "{link}"
        );
        assert_eq!(fs.stat(link).unwrap().kind, FsKind::Symlink);
    }
    let (l, truncated) = fs.list("/workspace", 5, 1000).unwrap();
    assert!(!truncated);
    let links = l.iter().filter(|m| m.kind == FsKind::Symlink).count();
    assert_eq!(links, 9, "{l:?}");
    assert!(l.iter().all(|m| m.path.starts_with("/workspace/")));
    let (s, _) = fs.search("/workspace", "*", 1000, 1000).unwrap();
    assert_eq!(s.len(), 10, "{s:?}");
    fs.remove_all("proot").unwrap();
    fs.remove_all("root").unwrap();
    fs.remove_file("cwd").unwrap();
    fs.rename("hostdir", "hostdir2").unwrap();
    fs.remove_all("hostdir2").unwrap();
    put(&fs, "canary", b"replaced the link").unwrap();
    assert_eq!(fs.stat("canary").unwrap().kind, FsKind::File);
    put(&fs, "pcanary", b"replaced the link").unwrap();
    assert_eq!(
        in_jail(&jail, &format!("ls {host}; ls /workspace")),
        "new\ncanary\nd\npasswd\npcanary\nrelhost\nsroot\n"
    );
    drop(fs);
    jail.destroy().unwrap();
    canary.assert_untouched();
}

#[test]
fn symlink_swaps_during_requests_stay_inside_the_view() {
    let canary = HostCanary::new();
    let host = canary.path();
    let jail = sandbox_jail();
    in_jail(
        &jail,
        "mkdir -p /workspace/d/sub && echo inside > /workspace/d/canary && \
         echo f > /workspace/d/f",
    );
    // The program swaps `x` between a directory of its own and places outside, as fast as
    // it can, by atomic renames.
    let swapper = jail
        .start(
            &shared(&[
                "/usr/bin/python3",
                "-c",
                &format!(
                    "import os\n\
                     targets = ['/etc', '{host}', '/proc/1/root{host}', '/proc/self/cwd', \
                     '/proc/1/root/etc', '/', '/workspace/d']\n\
                     while True:\n\
                     \x20   for t in targets:\n\
                     \x20       try: os.unlink('/workspace/x.tmp')\n\
                     \x20       except OSError: pass\n\
                     \x20       os.symlink(t, '/workspace/x.tmp')\n\
                     \x20       os.rename('/workspace/x.tmp', '/workspace/x')\n\
                     \x20       os.makedirs('/workspace/d/sub', exist_ok=True)\n"
                ),
            ]),
            StdinSource::Null,
            OutputTarget::Null,
            OutputTarget::Null,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(2);
    let ops = std::sync::atomic::AtomicU64::new(0);
    let inside = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..3 {
            let (jail, ops, inside, canary) = (&jail, &ops, &inside, &canary);
            s.spawn(move || {
                let fs = jail.filesystem().unwrap();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    i += 1;
                    let n = format!("{t}-{i}");
                    let r = match i % 10 {
                        0 => read_all(&fs, "x/canary").map(drop),
                        1 => read_all(&fs, "x/hostname").map(drop),
                        2 => put(&fs, &format!("x/pwned-{n}"), b"pwned").map(drop),
                        3 => fs.chmod("x/canary", 0o777),
                        4 => fs.remove_file("x/canary"),
                        5 => fs.remove_all("x/sub"),
                        6 => fs.rename("x/f", &format!("x/g-{n}")),
                        7 => fs.list("x", 3, 100).map(drop),
                        8 => fs.search("x/", "*", 100, 1000).map(drop),
                        _ => fs.replace("x/canary", "host", "HOST", 100).map(drop),
                    };
                    ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if r.is_ok() {
                        inside.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    canary.assert_untouched();
                }
            });
        }
    });
    swapper.kill().unwrap();
    let _ = jail.supervise(swapper, &run_limits(), &mut |_, _| {});
    let ops = ops.into_inner();
    assert!(ops > 300, "only {ops} operations");
    assert!(inside.into_inner() > 0, "some operations hit /workspace/d");
    // Whatever succeeded did so inside the view: the jail's /etc is as generated, and the
    // host's canary is untouched.
    let fs = jail.filesystem().unwrap();
    assert_eq!(read_all(&fs, "/etc/hostname").unwrap(), b"runcell\n");
    assert!(
        !in_jail(&jail, "ls /workspace/d").contains("proc"),
        "nothing of /proc was created"
    );
    drop(fs);
    jail.destroy().unwrap();
    canary.assert_untouched();
}

#[test]
fn fifos_sockets_devices_and_kernel_files_are_refused_without_blocking() {
    let jail = sandbox_jail();
    let fs = jail.filesystem().unwrap();
    in_jail(
        &jail,
        "mkfifo /workspace/fifo /tmp/fifo && \
         python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('/workspace/sock')\"",
    );
    for p in [
        "fifo",
        "/tmp/fifo",
        "sock",
        "/dev/null",
        "/dev/zero",
        "/dev/urandom",
        "/dev/tty",
    ] {
        let started = Instant::now();
        assert!(
            matches!(fs.open_read(p), Err(FsError::NotRegular { .. })),
            "{p}"
        );
        assert!(
            matches!(fs.replace(p, "a", "b", 10), Err(FsError::NotRegular { .. })),
            "{p}"
        );
        assert!(
            matches!(fs.chmod(p, 0o777), Err(FsError::NotRegular { .. })),
            "{p}"
        );
        assert!(started.elapsed() < Duration::from_secs(1), "{p} blocked");
        assert_eq!(fs.stat(p).unwrap().kind, FsKind::Other, "{p}");
    }
    // A FIFO can still be removed or replaced, as the program could.
    put(&fs, "fifo", b"now a file").unwrap();
    assert_eq!(read_all(&fs, "fifo").unwrap(), b"now a file");
    fs.remove_file("sock").unwrap();
    assert!(matches!(
        fs.upload("/dev/null", 10),
        Err(FsError::ReadOnly { .. })
    ));
    assert!(matches!(
        fs.remove_file("/dev/null"),
        Err(FsError::ReadOnly { .. })
    ));
    // /proc (the jail's) and other kernel file systems are off limits entirely.
    for p in [
        "/proc",
        "/proc/1/status",
        "/proc/1/environ",
        "/proc/1/mem",
        "/proc/meminfo",
        "/proc/sys/kernel/hostname",
        "/dev/pts/ptmx",
        "/proc/1/root/etc/passwd",
        "/proc/1/cwd",
        "/proc/1/fd/0",
    ] {
        let forbidden = |r: Result<(), FsError>| {
            assert!(matches!(r, Err(FsError::Forbidden { .. })), "{p}: {r:?}")
        };
        forbidden(fs.open_read(p).map(drop));
        forbidden(fs.replace(p, "a", "b", 100).map(drop));
        forbidden(fs.chmod(p, 0o777));
        forbidden(fs.upload(p, 10).map(drop));
        forbidden(fs.remove_file(p));
        forbidden(fs.remove_all(p));
        forbidden(fs.rename(p, "/workspace/p"));
        forbidden(fs.stat(p).map(drop));
    }
    // /dev/ptmx is a symlink to pts/ptmx: followed for reading, into devpts.
    assert!(matches!(
        fs.open_read("/dev/ptmx"),
        Err(FsError::Forbidden { .. })
    ));
    assert!(matches!(
        fs.chmod("/dev/ptmx", 0o777),
        Err(FsError::IsSymlink { .. })
    ));
    for p in ["/proc", "/proc/1", "/proc/self", "/dev/pts"] {
        assert!(
            matches!(fs.list(p, 1, 10), Err(FsError::Forbidden { .. })),
            "{p}"
        );
        assert!(
            matches!(fs.search(p, "*", 10, 10), Err(FsError::Forbidden { .. })),
            "{p}"
        );
    }
    assert!(matches!(
        fs.mkdir_all("/proc/x/y", 0o755),
        Err(FsError::Forbidden { .. })
    ));
    // `/proc/self` names no process for the host's thread (it is not in the jail's pid
    // namespace).
    for p in [
        "/proc/self/status",
        "/proc/self/root/etc/passwd",
        "/proc/thread-self/fd",
    ] {
        not_found_or_forbidden(fs.open_read(p), p);
        not_found_or_forbidden(fs.upload(p, 10).map(drop), p);
        not_found_or_forbidden(fs.chmod(p, 0o777), p);
        not_found_or_forbidden(fs.remove_all(p), p);
    }
    // There is no /sys in a jail; it stays that way.
    not_found_or_forbidden(fs.open_read("/sys/kernel/uevent_helper"), "/sys");
    // Walks list /proc but never enter it.
    let (l, _) = fs.list("/", 3, 100_000).unwrap();
    assert!(l.iter().any(|m| m.path == "/proc"));
    assert!(l.iter().all(|m| !m.path.starts_with("/proc/")));
    assert!(l.iter().all(|m| !m.path.starts_with("/dev/pts/")));
    drop(fs);
    jail.destroy().unwrap();
}

#[test]
fn hard_links_inside_the_sandbox_work_normally() {
    let jail = sandbox_jail();
    let fs = jail.filesystem().unwrap();
    // Host files are on other (read-only) file systems: they cannot be hard-linked.
    let out = in_jail(
        &jail,
        "echo data > a; ln a b; ln /usr/bin/env env 2>/dev/null; echo hard=$?; \
         ln /etc/hostname h 2>/dev/null; echo hard=$?",
    );
    assert_eq!(out, "hard=1\nhard=1\n");
    assert_eq!(read_all(&fs, "b").unwrap(), b"data\n");
    assert_eq!(fs.replace("b", "data", "changed", 100).unwrap(), 1);
    assert_eq!(read_all(&fs, "a").unwrap(), b"changed\n");
    put(&fs, "b", b"replaced").unwrap();
    assert_eq!(read_all(&fs, "a").unwrap(), b"changed\n");
    drop(fs);
    jail.destroy().unwrap();
}

#[test]
fn huge_directories_are_listed_and_searched_within_caps() {
    let cfg = JailConfig {
        workspace: TmpfsSize {
            bytes: 1 << 30,
            inodes: 400_000,
        },
        ..shared_config()
    };
    let cg = CgroupLimits {
        memory_bytes: 1 << 30,
        ..cgroup_limits()
    };
    let jail = spawner().prepare(&cfg, &cg).unwrap();
    let fs = jail.filesystem().unwrap();
    in_jail(
        &jail,
        "python3 -c \"import os\nos.mkdir('big')\nfor i in range(200000): \
         os.close(os.open('big/f%06d' % i, os.O_CREAT | os.O_WRONLY, 0o644))\"",
    );
    let started = Instant::now();
    let (l, truncated) = fs.list("big", 1, 10_000).unwrap();
    let took = started.elapsed();
    assert_eq!(l.len(), 10_000);
    assert!(truncated);
    assert!(took < Duration::from_secs(2), "list took {took:?}");
    assert_eq!(l[0].path, "/workspace/big/f000000");
    assert_eq!(l[9_999].path, "/workspace/big/f009999");
    let started = Instant::now();
    let (s, truncated) = fs.search("/workspace", "f1*", 10_000, 1_000_000).unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(s.len(), 10_000);
    assert!(truncated);
    assert!(s.iter().all(|m| m.path.starts_with("/workspace/big/f1")));
    let (s, truncated) = fs.search("/workspace", "f19999?", 100, 1_000_000).unwrap();
    assert_eq!((s.len(), truncated), (10, false));
    let (s, truncated) = fs.search("/workspace", "*", 1_000_000, 50_000).unwrap();
    assert!(truncated);
    assert!(s.len() <= 50_000);
    let (l, truncated) = fs.list("/workspace", 2, 1_000_000).unwrap();
    assert_eq!((l.len(), truncated), (200_001, false));
    // Too deep to walk: listed and searched up to the cap, and reported as truncated.
    in_jail(
        &jail,
        "python3 -c \"import os\nos.makedirs('/'.join(['deep'] + ['n'] * 300))\"",
    );
    let (l, truncated) = fs.list("deep", u32::MAX, 1_000_000).unwrap();
    assert!(truncated);
    assert_eq!(l.len(), MAX_WALK_DEPTH);
    let started = Instant::now();
    fs.remove_all("big").unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(matches!(fs.stat("big"), Err(FsError::NotFound { .. })));
    // Removed however deep (deeper than a descriptor per level allows).
    let started = Instant::now();
    fs.remove_all("deep").unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(fs.stat("deep"), Err(FsError::NotFound { .. })));
    in_jail(
        &jail,
        "python3 -c \"import os\nos.mkdir('deep')\nos.chdir('deep')\n\
         for i in range(3000): os.mkdir('n'); os.chdir('n')\nopen('f', 'w').close()\"",
    );
    fs.remove_all("deep").unwrap();
    assert_eq!(in_jail(&jail, "ls -A /workspace"), "");
    drop(fs);
    jail.destroy().unwrap();
}

#[test]
fn symlink_loops_are_harmless() {
    let jail = sandbox_jail();
    let fs = jail.filesystem().unwrap();
    in_jail(
        &jail,
        "ln -s a b; ln -s b a; mkdir -p p/q; ln -s .. p/q/up; ln -s . self; ln -s /workspace ws; \
         echo x > p/q/file",
    );
    let (l, truncated) = fs.list("/workspace", 100, 1000).unwrap();
    assert!(!truncated);
    let paths: Vec<_> = l.iter().map(|m| (m.path.as_str(), m.kind)).collect();
    assert_eq!(
        paths,
        [
            ("/workspace/a", FsKind::Symlink),
            ("/workspace/b", FsKind::Symlink),
            ("/workspace/p", FsKind::Dir),
            ("/workspace/p/q", FsKind::Dir),
            ("/workspace/p/q/file", FsKind::File),
            ("/workspace/p/q/up", FsKind::Symlink),
            ("/workspace/self", FsKind::Symlink),
            ("/workspace/ws", FsKind::Symlink),
        ]
    );
    let (s, truncated) = fs.search("/workspace", "*", 1000, 1000).unwrap();
    assert_eq!((s.len(), truncated), (6, false));
    for p in ["a", "b", "self/a", "ws/self/ws/b"] {
        assert!(
            matches!(fs.open_read(p), Err(FsError::Forbidden { .. })),
            "{p}"
        );
    }
    assert_eq!(read_all(&fs, "p/q/up/q/up/q/file").unwrap(), b"x\n");
    assert_eq!(read_all(&fs, "ws/ws/ws/self/p/q/file").unwrap(), b"x\n");
    fs.remove_all("p").unwrap();
    assert_eq!(in_jail(&jail, "ls /workspace"), "a\nb\nself\nws\n");
    drop(fs);
    jail.destroy().unwrap();
}

#[test]
fn read_only_areas_stay_read_only() {
    use std::os::unix::fs::MetadataExt;
    let env_mode = std::fs::metadata("/usr/bin/env").unwrap().mode();
    let jail = sandbox_jail();
    let fs = jail.filesystem().unwrap();
    let ro = |r: Result<(), FsError>, what: &str| {
        assert!(
            matches!(
                r,
                Err(FsError::ReadOnly { .. }) | Err(FsError::Forbidden { .. })
            ),
            "{what}: {r:?}"
        )
    };
    ro(fs.upload("/usr/x", 10).map(drop), "upload /usr/x");
    ro(
        fs.upload("/usr/bin/env", 10).map(drop),
        "upload /usr/bin/env",
    );
    ro(
        fs.upload("/etc/hostname", 10).map(drop),
        "upload /etc/hostname",
    );
    ro(fs.upload("/newdir/x", 10).map(drop), "upload /newdir/x");
    ro(fs.chmod("/usr/bin/env", 0o777), "chmod /usr/bin/env");
    ro(fs.chmod("/etc/hostname", 0o777), "chmod /etc/hostname");
    ro(fs.remove_file("/usr/bin/env"), "rm /usr/bin/env");
    ro(fs.remove_all("/usr/lib"), "rm -r /usr/lib");
    ro(fs.remove_all("/etc"), "rm -r /etc");
    ro(fs.mkdir_all("/usr/x", 0o755).map(drop), "mkdir /usr/x");
    ro(fs.rename("/etc/hostname", "/etc/h2"), "mv /etc/hostname");
    ro(
        fs.replace("/etc/hostname", "runcell", "pwned", 100)
            .map(drop),
        "replace /etc/hostname",
    );
    ro(
        fs.replace("/usr/bin/env", "a", "b", 1 << 30).map(drop),
        "replace /usr/bin/env",
    );
    assert!(matches!(
        fs.chmod("/usr/bin/python3", 0o777),
        Err(FsError::IsSymlink { .. })
    ));
    assert_eq!(std::fs::metadata("/usr/bin/env").unwrap().mode(), env_mode);
    assert_eq!(read_all(&fs, "/etc/hostname").unwrap(), b"runcell\n");
    drop(fs);
    jail.destroy().unwrap();
}

#[test]
fn permissions_are_the_sandbox_users() {
    let mut cfg = shared_config();
    cfg.files.push(JailFile {
        path: "/etc/secret".into(),
        contents: "root only\n".into(),
        mode: 0o640,
    });
    let jail = spawner().prepare(&cfg, &cgroup_limits()).unwrap();
    let fs = jail.filesystem().unwrap();
    in_jail(
        &jail,
        "echo secret > s && chmod 000 s && mkdir locked && chmod 000 locked",
    );
    assert!(matches!(fs.open_read("s"), Err(FsError::Forbidden { .. })));
    assert!(matches!(
        fs.replace("s", "secret", "x", 100),
        Err(FsError::Forbidden { .. })
    ));
    assert!(matches!(
        fs.list("locked", 1, 10),
        Err(FsError::Forbidden { .. })
    ));
    assert!(matches!(
        fs.upload("locked/x", 10),
        Err(FsError::Forbidden { .. })
    ));
    // The owner may change the mode, as the program could.
    fs.chmod("s", 0o600).unwrap();
    assert_eq!(read_all(&fs, "s").unwrap(), b"secret\n");
    fs.chmod("locked", 0o700).unwrap();
    put(&fs, "locked/x", b"x").unwrap();
    // Not the owner: the jail's root owns /tmp (sticky, writable by all) and /etc/secret.
    assert!(matches!(
        fs.chmod("/tmp", 0o777),
        Err(FsError::Forbidden { .. })
    ));
    assert!(matches!(
        fs.remove_all("/tmp"),
        Err(FsError::Forbidden { .. })
    ));
    put(&fs, "/tmp/mine", b"x").unwrap();
    assert!(matches!(
        fs.open_read("/etc/secret"),
        Err(FsError::Forbidden { .. })
    ));
    // Even when the calling thread has the file's group as a supplementary group: the
    // groups are dropped for the operation, and restored afterwards.
    let agent_gid = jail.program_host_id() - 1;
    let mut saved = vec![0 as libc::gid_t; 256];
    // SAFETY: getgroups into a buffer of the size we pass (raw syscall: this thread only).
    let n = unsafe { libc::syscall(libc::SYS_getgroups, saved.len(), saved.as_mut_ptr()) };
    assert!(n >= 0);
    saved.truncate(n as usize);
    // SAFETY: setgroups of this thread only (raw syscall), restored below.
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_setgroups, 1, [agent_gid].as_ptr()) },
        0
    );
    let r = fs.open_read("/etc/secret").map(drop);
    let mut now = [0 as libc::gid_t; 8];
    // SAFETY: getgroups into a buffer of the size we pass.
    let n = unsafe { libc::syscall(libc::SYS_getgroups, now.len(), now.as_mut_ptr()) };
    // SAFETY: restores this thread's groups.
    unsafe { libc::syscall(libc::SYS_setgroups, saved.len(), saved.as_ptr()) };
    assert!(matches!(r, Err(FsError::Forbidden { .. })), "{r:?}");
    assert_eq!(&now[..n as usize], &[agent_gid]);
    assert_eq!(read_all(&fs, "/etc/hostname").unwrap(), b"runcell\n");
    // The thread's own ids are back to root's.
    assert!(std::fs::read("/etc/hostname").is_ok());
    drop(fs);
    jail.destroy().unwrap();
}

#[test]
fn uploads_are_limited_and_leave_nothing_behind() {
    let cfg = JailConfig {
        workspace: TmpfsSize::mib(2),
        ..shared_config()
    };
    let jail = spawner().prepare(&cfg, &cgroup_limits()).unwrap();
    let fs = jail.filesystem().unwrap();
    put(&fs, "keep", b"old").unwrap();
    // Past the file system's size.
    let mut u = fs.upload("keep", 100 << 20).unwrap();
    let chunk = vec![7u8; 64 << 10];
    let mut r = Ok(());
    for _ in 0..100 {
        r = u.write(&chunk);
        if r.is_err() {
            break;
        }
    }
    assert!(matches!(r, Err(FsError::NoSpace { .. })), "{r:?}");
    assert!(!upload_names(&fs, "/workspace").is_empty());
    drop(u);
    assert_eq!(upload_names(&fs, "/workspace"), Vec::<String>::new());
    assert_eq!(read_all(&fs, "keep").unwrap(), b"old");
    // Past the caller's limit.
    let mut u = fs.upload("new/dir/file", 10).unwrap();
    u.write(b"0123456789").unwrap();
    assert!(matches!(u.write(b"x"), Err(FsError::TooLarge { .. })));
    drop(u);
    assert_eq!(upload_names(&fs, "new/dir"), Vec::<String>::new());
    assert!(matches!(
        fs.stat("new/dir/file"),
        Err(FsError::NotFound { .. })
    ));
    // A directory of the target's name is refused, before or at commit.
    fs.mkdir_all("adir", 0o755).unwrap();
    assert!(matches!(
        fs.upload("adir", 10),
        Err(FsError::IsADirectory { .. })
    ));
    let u = fs.upload("later", 10).unwrap();
    fs.mkdir_all("later", 0o755).unwrap();
    assert!(matches!(u.commit(None), Err(FsError::IsADirectory { .. })));
    assert_eq!(upload_names(&fs, "/workspace"), Vec::<String>::new());
    // Growing a file in place on a full file system fails before the file changes.
    let big = vec![b'a'; 1 << 20];
    let mut u = fs.upload("big", 2 << 20).unwrap();
    u.write(&big).unwrap();
    u.commit(None).unwrap();
    assert!(matches!(
        fs.replace("big", "a", "bb", 4 << 20),
        Err(FsError::NoSpace { .. })
    ));
    assert_eq!(read_all(&fs, "big").unwrap(), big);
    drop(fs);
    jail.destroy().unwrap();
}

#[test]
fn renames_never_replace_and_stay_on_their_mount() {
    let jail = sandbox_jail();
    let fs = jail.filesystem().unwrap();
    put(&fs, "a", b"a").unwrap();
    put(&fs, "b", b"b").unwrap();
    put(&fs, "/tmp/t", b"t").unwrap();
    fs.mkdir_all("d/e", 0o755).unwrap();
    assert!(matches!(
        fs.rename("/tmp/t", "/workspace/t"),
        Err(FsError::CrossDevice { .. })
    ));
    assert!(matches!(
        fs.rename("a", "/tmp/a"),
        Err(FsError::CrossDevice { .. })
    ));
    assert!(matches!(
        fs.rename("a", "b"),
        Err(FsError::AlreadyExists { .. })
    ));
    assert!(matches!(
        fs.rename("a", "d"),
        Err(FsError::AlreadyExists { .. })
    ));
    assert!(matches!(
        fs.rename("d", "d/e/f"),
        Err(FsError::InvalidArgument { .. })
    ));
    assert!(matches!(
        fs.rename("missing", "c"),
        Err(FsError::NotFound { .. })
    ));
    assert!(matches!(
        fs.rename("a", "no/such/dir/c"),
        Err(FsError::NotFound { .. })
    ));
    assert!(matches!(
        fs.rename("/workspace", "/workspace2"),
        Err(FsError::ReadOnly { .. }) | Err(FsError::Forbidden { .. })
    ));
    fs.rename("a", "d/e/a").unwrap();
    assert_eq!(read_all(&fs, "d/e/a").unwrap(), b"a");
    assert_eq!(read_all(&fs, "b").unwrap(), b"b");
    drop(fs);
    jail.destroy().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Locks and watches on the shared read-only root (issue 8, item 3)

/// The runtime prefix (installed by `runcell runtimes install`).
const PREFIX: &str = "/opt/runcell";

/// Files every jail shows from the host, one of each kind: a file of a bound directory, a file
/// of the runtime prefix, a bound `/etc` file, a device, standard input when there is none
/// (the client passes the host's `/dev/null`; reopened through `/proc`, as a lock on it needs
/// an open file of its own), and the time namespace's inode (which was the host's in every
/// jail). Each line is `path open-mode`.
const SHARED_FILES: &str = "/usr/bin/env r\n\
    /opt/runcell/venv/pyvenv.cfg r\n\
    /etc/ld.so.cache r\n\
    /dev/zero rw\n\
    /proc/self/fd/0 rw\n\
    /proc/self/ns/time r";

/// Python shared by the lock holder and the probes: `lock(type, start)` is a `struct flock` of
/// 10 bytes at `start`; `targets()` the files above with their open flags and the strongest
/// lock type their open mode allows.
const LOCK_COMMON: &str = r#"
import errno, fcntl, os, struct, sys, time
F_OFD_GETLK, F_OFD_SETLK = 36, 37
def lock(kind, start):
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, start, 10, 0)
def targets():
    for line in os.environ["FILES"].splitlines():
        path, mode = line.split()
        rw = mode == "rw"
        yield path, os.O_RDWR if rw else os.O_RDONLY, fcntl.F_WRLCK if rw else fcntl.F_RDLCK
def err(e):
    return errno.errorcode.get(e.errno, str(e.errno))
"#;

/// Takes every kind of lock on every shared file and holds them: `flock(LOCK_EX)` on a
/// read-only descriptor, a POSIX lock on bytes 0-9, an OFD lock on bytes 10-19, and a read
/// lease. Reports what it got in /workspace/held, then sleeps until killed.
const LOCK_HOLDER: &str = r#"
def hold(keep):
    report = []
    for path, flags, kind in targets():
        got = []
        for name, take in (
            ("flock", lambda fd: fcntl.flock(fd, fcntl.LOCK_EX)),
            ("posix", lambda fd: fcntl.fcntl(fd, fcntl.F_SETLK, lock(kind, 0))),
            ("ofd", lambda fd: fcntl.fcntl(fd, F_OFD_SETLK, lock(kind, 10))),
            ("lease", lambda fd: fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)),
        ):
            fd = os.open(path, flags)
            keep.append(fd)  # closing any descriptor of the file would drop the POSIX lock
            try:
                take(fd)
                got.append(name + "=held")
            except OSError as e:
                got.append(name + "=refused:" + err(e))
        report.append(path + " " + " ".join(got))
    return "\n".join(report) + "\n"
keep = []
try:
    report = hold(keep)
except Exception as e:
    report = "ERROR " + repr(e) + "\n"
with open("/workspace/held.tmp", "w") as f:
    f.write(report)
os.rename("/workspace/held.tmp", "/workspace/held")
time.sleep(600)
"#;

/// Tries, without waiting, what would conflict with the holder: `flock(LOCK_EX | LOCK_NB)` and
/// the POSIX and OFD "would a write lock be granted" queries. Prints `path flock=… posix=…
/// ofd=…`, each `free`, `busy` or `refused:ERRNO`.
const LOCK_PROBE: &str = r#"
for path, flags, kind in targets():
    got = []
    fd = os.open(path, flags)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        got.append("flock=free")
    except OSError as e:
        got.append("flock=" + ("busy" if e.errno == errno.EWOULDBLOCK else "refused:" + err(e)))
    for name, cmd, start in (("posix", fcntl.F_GETLK, 0), ("ofd", F_OFD_GETLK, 10)):
        try:
            r = fcntl.fcntl(fd, cmd, lock(fcntl.F_WRLCK, start))
            free = struct.unpack("hhqqi4x", r)[0] == fcntl.F_UNLCK
            got.append(name + "=" + ("free" if free else "busy"))
        except OSError as e:
            got.append(name + "=refused:" + err(e))
    os.close(fd)
    print(path, " ".join(got))
"#;

fn lock_program(body: &str, mode: StepMode) -> ProcessSpec {
    lock_program_on(body, mode, SHARED_FILES)
}

fn lock_program_on(body: &str, mode: StepMode, files: &str) -> ProcessSpec {
    let mut p = py(&format!("{LOCK_COMMON}{body}"));
    p.env.push(("FILES".into(), files.into()));
    p.mode = mode;
    p
}

/// A jail's view with the runtime prefix, as the engine builds it.
fn prefix_config(base: JailConfig) -> JailConfig {
    assert!(
        Path::new(PREFIX).join("venv/pyvenv.cfg").exists(),
        "{PREFIX} must hold the runtimes (cargo run -p runcell -- runtimes install)"
    );
    assert!(Path::new("/etc/ld.so.cache").is_file());
    let mut c = base;
    c.binds.push(Bind::same(PREFIX));
    c
}

/// Waits (generously: a loaded machine is slow, not wrong) for a file the program writes when
/// it is ready.
fn wait_for_file(jail: &Jail, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(b) = jail.workspace().read_file(name, 1 << 16) {
            return text(&b);
        }
        assert!(Instant::now() < deadline, "{name} never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn probe_lines(out: &Outcome) -> Vec<String> {
    assert_eq!(out.exit, Exit::Exited(0), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), SHARED_FILES.lines().count(), "{lines:?}");
    lines
}

/// Issue 8: a program in one tenant's jail took `flock(LOCK_EX)` on `/usr/bin/env` and another
/// tenant's program locking the same file blocked. Now every jail shows the host's files
/// through inodes of its own (overlays, copies, its own device nodes and time namespace), so
/// no lock of one jail is visible in another, while the same probe in the holder's own jail
/// sees every lock (the locks are real, and the probe detects them).
#[test]
fn locks_on_shared_files_do_not_reach_another_jail() {
    let mounts = host_mounts();
    // Tenant A: a sandbox; tenant B: a one-shot run. Both use the same root builder.
    let a = spawner()
        .prepare(&prefix_config(shared_config()), &cgroup_limits())
        .unwrap();
    let b = spawner()
        .prepare(&prefix_config(config()), &cgroup_limits())
        .unwrap();
    let (ta, tb) = (Trace::of(&a), Trace::of(&b));
    let holder = a
        .start(
            &lock_program(LOCK_HOLDER, StepMode::Shared),
            StdinSource::Null,
            OutputTarget::Null,
            OutputTarget::Pipe,
        )
        .unwrap();
    let held = wait_for_file(&a, "held");
    let held: Vec<&str> = held.lines().collect();
    assert_eq!(held.len(), SHARED_FILES.lines().count(), "{held:?}");
    for line in &held {
        // Every lock but the lease is granted; leases need the file's owner (the host's root,
        // or the jail's agent for a copy) or are for regular files only.
        assert!(
            line.contains("flock=held")
                && line.contains("posix=held")
                && line.contains("ofd=held")
                && line.contains("lease=refused:"),
            "{line}"
        );
    }

    let other = b
        .run(
            &lock_program(
                LOCK_PROBE,
                StepMode::Private {
                    tmp: TmpfsSize::mib(4),
                    shm: TmpfsSize::mib(4),
                },
            ),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    let lines = probe_lines(&other);
    assert!(
        lines
            .iter()
            .all(|l| l.ends_with(" flock=free posix=free ofd=free")),
        "another jail sees the locks: {lines:#?}"
    );
    // The same probe beside the holder, in its own jail: every lock is seen.
    let same = a
        .run(
            &lock_program(LOCK_PROBE, StepMode::Shared),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    let lines = probe_lines(&same);
    assert!(
        lines
            .iter()
            .all(|l| l.ends_with(" flock=busy posix=busy ofd=busy")),
        "the holder's own jail must see every lock: {lines:#?}"
    );
    holder.kill().unwrap();
    let o = a.supervise(holder, &run_limits(), &mut |_, _| {}).unwrap();
    assert_eq!(o.exit, Exit::Signaled(libc::SIGKILL), "{}", text(&o.stderr));
    a.destroy().unwrap();
    b.destroy().unwrap();
    ta.assert_gone(&mounts);
    tb.assert_gone(&mounts);
}

/// Files and a directory every jail shows from the host, watched with inotify.
const WATCHED: &str =
    "/usr/bin\n/usr/bin/env\n/opt/runcell/venv/pyvenv.cfg\n/etc/ld.so.cache\n/dev/zero";

/// Watches `WATCHED` for opens and reads. Events that arrive until /workspace/drain appears
/// are written to /workspace/before; then it collects events until every path has had one
/// (or 60 s pass) and writes them to /workspace/after.
const WATCHER: &str = r#"
import ctypes, os, select, struct, time
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
assert fd >= 0, ctypes.get_errno()
paths = os.environ["WATCHED"].splitlines()
wds = {}
for p in paths:
    wd = libc.inotify_add_watch(fd, p.encode(), 0x1 | 0x20)  # IN_ACCESS | IN_OPEN
    assert wd >= 0, (p, ctypes.get_errno())
    wds[wd] = p
def events():
    seen = set()
    while True:
        try:
            buf = os.read(fd, 65536)
        except BlockingIOError:
            return seen
        i = 0
        while i < len(buf):
            wd, mask, cookie, n = struct.unpack_from("iIII", buf, i)
            seen.add(wds.get(wd, "?"))
            i += 16 + n
def write(name, seen):
    with open("/workspace/" + name + ".tmp", "w") as f:
        f.write("".join(p + "\n" for p in sorted(seen)))
    os.rename("/workspace/" + name + ".tmp", "/workspace/" + name)
write("watching", set())
before = set()
while not os.path.exists("/workspace/drain"):
    before |= events()
    time.sleep(0.01)
write("before", before | events())
after, deadline = set(), time.monotonic() + 60
while after != set(paths) and time.monotonic() < deadline:
    select.select([fd], [], [], 0.1)
    after |= events()
write("after", after)
"#;

/// Opens and reads every path of `WATCHED` (lists the directory).
const TOUCHER: &str = r#"
import os
for p in os.environ["WATCHED"].splitlines():
    if os.path.isdir(p):
        os.listdir(p)
    else:
        fd = os.open(p, os.O_RDONLY)
        os.read(fd, 1)
        os.close(fd)
os.system("/usr/bin/env true")
print("touched")
"#;

fn watch_program(body: &str, mode: StepMode) -> ProcessSpec {
    let mut p = py(body);
    p.env.push(("WATCHED".into(), WATCHED.into()));
    p.mode = mode;
    p
}

/// A writable device node's timestamps can be set by anyone who may write to it
/// (`utimensat` with the current time): on the host's nodes that was a channel between jails and
/// a way to touch the host. Each jail's nodes are its own, in a read-only `/dev`: the times
/// cannot be set at all.
#[test]
fn device_timestamps_are_the_jails_own() {
    use std::os::unix::fs::MetadataExt;
    let devices = [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
    ];
    let mtimes = || -> Vec<(i64, i64)> {
        devices
            .iter()
            .map(|d| {
                let m = std::fs::metadata(d).unwrap();
                (m.mtime(), m.mtime_nsec())
            })
            .collect()
    };
    let before = mtimes();
    let out = run(&sh(&format!(
        "touch -c {} 2>&1; echo x > /dev/null && echo written",
        devices.join(" ")
    )));
    let s = text(&out.stdout);
    assert_eq!(s.matches("Read-only file system").count(), 5, "{s}");
    assert!(s.ends_with("written\n"), "{s}");
    assert_eq!(mtimes(), before, "a jail changed the host's device nodes");
}

/// A watch is per inode too: inotify on a shared file would tell one tenant what another runs
/// and reads (and carry messages). A watch in one jail sees nothing of another jail opening,
/// reading and executing the same host files, and sees its own jail doing it.
#[test]
fn watches_on_shared_files_see_only_their_own_jail() {
    let mounts = host_mounts();
    let a = spawner()
        .prepare(&prefix_config(shared_config()), &cgroup_limits())
        .unwrap();
    let b = spawner()
        .prepare(&prefix_config(config()), &cgroup_limits())
        .unwrap();
    let (ta, tb) = (Trace::of(&a), Trace::of(&b));
    let watcher = a
        .start(
            &watch_program(WATCHER, StepMode::Shared),
            StdinSource::Null,
            OutputTarget::Null,
            OutputTarget::Null,
        )
        .unwrap();
    wait_for_file(&a, "watching");
    let other = b
        .run(
            &watch_program(
                TOUCHER,
                StepMode::Private {
                    tmp: TmpfsSize::mib(4),
                    shm: TmpfsSize::mib(4),
                },
            ),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(text(&other.stdout), "touched\n", "{}", text(&other.stderr));
    // Everything B did is queued by now (events are queued during the system call).
    a.workspace().write_file("drain", b"", 0o644).unwrap();
    let before = wait_for_file(&a, "before");
    assert_eq!(before, "", "a watch in A saw B's accesses");
    let own = a
        .run(
            &watch_program(TOUCHER, StepMode::Shared),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(text(&own.stdout), "touched\n", "{}", text(&own.stderr));
    let after = wait_for_file(&a, "after");
    let mut want: Vec<&str> = WATCHED.lines().collect();
    want.sort();
    assert_eq!(
        after.lines().collect::<Vec<_>>(),
        want,
        "the watch saw its own jail"
    );
    let o = a.supervise(watcher, &run_limits(), &mut |_, _| {}).unwrap();
    assert_eq!(o.exit, Exit::Exited(0), "{}", text(&o.stderr));
    a.destroy().unwrap();
    b.destroy().unwrap();
    ta.assert_gone(&mounts);
    tb.assert_gone(&mounts);
}

/// Programs still lock their own files: `flock`, OFD locks and SQLite's POSIX locks conflict
/// and release as usual in the workspace and in `/tmp`.
#[test]
fn locks_in_the_workspace_and_tmp_work() {
    let out = run(&py(&format!(
        "{LOCK_COMMON}{}",
        r#"
import sqlite3
res = []
for d in ("/workspace", "/tmp"):
    path = d + "/lockfile"
    a = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    b = os.open(path, os.O_RDWR)
    fcntl.flock(a, fcntl.LOCK_EX)
    try:
        fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res.append("flock:shared")
    except BlockingIOError:
        res.append("flock:exclusive")
    fcntl.flock(a, fcntl.LOCK_UN)
    fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
    res.append("flock:released")
    fcntl.fcntl(a, F_OFD_SETLK, lock(fcntl.F_WRLCK, 0))
    try:
        fcntl.fcntl(b, F_OFD_SETLK, lock(fcntl.F_WRLCK, 0))
        res.append("ofd:shared")
    except BlockingIOError:
        res.append("ofd:exclusive")
    db = d + "/db.sqlite"
    c1 = sqlite3.connect(db, timeout=0, isolation_level=None)
    c1.execute("create table t(x)")
    c1.execute("begin exclusive")
    c1.execute("insert into t values (1)")
    c2 = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        c2.execute("insert into t values (2)")
        res.append("sqlite:unlocked")
    except sqlite3.OperationalError as e:
        res.append("sqlite:" + ("locked" if "locked" in str(e) else str(e)))
    c1.execute("commit")
    c2.execute("insert into t values (2)")
    res.append("sqlite:rows=%d" % c1.execute("select count(*) from t").fetchone()[0])
print(" ".join(res))
"#
    )));
    let one = "flock:exclusive flock:released ofd:exclusive sqlite:locked sqlite:rows=2";
    assert_eq!(
        text(&out.stdout),
        format!("{one} {one}\n"),
        "{}",
        text(&out.stderr)
    );
}

/// Copied paths (`Bind::copy`) are in the root's skeleton, not mounted: read-only, with the
/// host's permission bits (a file the jail's user could not read stays unreadable), links as
/// links, and as the host has them when the jail is prepared (the spawner looks again at most
/// once a second; a prepared jail keeps its copy).
#[test]
fn copied_paths_are_shown_as_the_host_had_them_when_the_jail_was_prepared() {
    use std::os::unix::fs::PermissionsExt;
    let host = tempfile::Builder::new()
        .prefix("runcell-copies-")
        .tempdir()
        .unwrap();
    let dir = host.path().join("conf");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.conf"), "one\n").unwrap();
    std::fs::write(dir.join("sub/deep.conf"), "deep\n").unwrap();
    std::os::unix::fs::symlink("a.conf", dir.join("link")).unwrap();
    let secret = host.path().join("secret");
    std::fs::write(&secret, "not for the jail\n").unwrap();
    for (p, mode) in [
        (host.path(), 0o755),
        (dir.as_path(), 0o755),
        (dir.join("sub").as_path(), 0o755),
        (dir.join("a.conf").as_path(), 0o644),
        (dir.join("sub/deep.conf").as_path(), 0o644),
        (secret.as_path(), 0o600),
    ] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let mut cfg = config();
    for (source, target) in [(&dir, "/srv/conf"), (&secret, "/srv/secret")] {
        cfg.binds.push(Bind {
            source: source.clone(),
            target: target.into(),
            optional: false,
            copy: true,
        });
    }
    let show = "cat /srv/conf/a.conf /srv/conf/sub/deep.conf /srv/conf/link; \
        readlink /srv/conf/link; stat -c %a /srv/conf/a.conf /srv/secret; \
        cat /srv/secret 2>&1; echo x 2>&1 > /srv/conf/a.conf; \
        grep -c ' /srv' /proc/self/mountinfo";
    let sp = spawner();
    let first = sp.prepare(&cfg, &cgroup_limits()).unwrap();
    let out = first
        .run(&sh(show), StdinSource::Null, &run_limits())
        .unwrap();
    let s = text(&out.stdout);
    assert_eq!(
        s.lines().take(6).collect::<Vec<_>>(),
        ["one", "deep", "one", "a.conf", "644", "600"],
        "{s}"
    );
    assert!(s.contains("/srv/secret: Permission denied"), "{s}");
    assert!(s.contains("Read-only file system"), "{s}");
    assert!(s.ends_with("\n0\n"), "nothing is mounted at /srv: {s}");
    // Changed on the host: a jail prepared once the spawner looks again has the new copy.
    std::fs::write(dir.join("a.conf"), "two\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = sp.prepare(&cfg, &cgroup_limits()).unwrap();
    let cat = sh("cat /srv/conf/a.conf /srv/conf/link");
    for (jail, want) in [(&second, "two\ntwo\n"), (&first, "one\none\n")] {
        let out = jail.run(&cat, StdinSource::Null, &run_limits()).unwrap();
        assert_eq!(text(&out.stdout), want);
    }
    first.destroy().unwrap();
    second.destroy().unwrap();
}

/// Bound directories and files are shown read-only as the host has them, through overlays,
/// whatever their names (overlayfs options use `,` and `:` as separators).
#[test]
fn bound_directories_and_files_are_shown_as_the_host_has_them() {
    use std::os::unix::fs::PermissionsExt;
    let host = tempfile::Builder::new()
        .prefix("runcell-binds-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let odd = host.path().join("odd,upperdir=x:y\\z");
    std::fs::create_dir(&odd).unwrap();
    std::fs::write(odd.join("inside.txt"), "from the directory\n").unwrap();
    let file = host.path().join("one:file,txt");
    std::fs::write(&file, "from the file\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cfg = config();
    cfg.binds.push(Bind {
        source: odd.clone(),
        target: "/srv/dir".into(),
        optional: false,
        copy: false,
    });
    cfg.binds.push(Bind {
        source: file.clone(),
        target: "/srv/file".into(),
        optional: false,
        copy: false,
    });
    let jail = spawner().prepare(&cfg, &cgroup_limits()).unwrap();
    let out = jail
        .run(
            &sh(
                "cat /srv/dir/inside.txt /srv/file; ls /srv/dir; stat -c %a /srv/file; \
                 ls /srv/dir/../.. >/dev/null; echo x > /srv/file 2>&1 || echo refused",
            ),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "from the directory\nfrom the file\ninside.txt\n644\nrefused\n",
        "{}",
        text(&out.stderr)
    );
    jail.destroy().unwrap();
}

/// From the jail's user namespace the kernel takes no directory with a host mount beneath it
/// as an overlay layer; such a directory is bound as it is, whole and read-only, and a file in
/// it is copied: its locks stay in each jail. A file too big to copy is refused with a reason.
/// The mount is made after the spawner started (which notices it), in the spawner's own mount
/// namespace: the host never sees it.
#[test]
fn a_bound_directory_with_a_mount_beneath_is_shown_whole() {
    use std::os::unix::fs::PermissionsExt;
    require_root();
    let host = tempfile::Builder::new()
        .prefix("runcell-submount-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tree = host.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for (name, len) in [("top.txt", 0), ("big", 2 << 20)] {
        let data = if len == 0 {
            b"top\n".to_vec()
        } else {
            vec![b'x'; len]
        };
        std::fs::write(tree.join(name), data).unwrap();
        std::fs::set_permissions(tree.join(name), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut cfg = config();
    cfg.binds.push(Bind {
        source: tree.clone(),
        target: "/srv/tree".into(),
        optional: false,
        copy: false,
    });
    cfg.binds.push(Bind {
        source: tree.join("top.txt"),
        target: "/srv/copied".into(),
        optional: false,
        copy: false,
    });
    let show = "cat /srv/tree/top.txt /srv/tree/sub/* /srv/copied; \
                touch /srv/tree/sub/x 2>/dev/null || echo read-only";
    // A spawner of the test's own: its mount namespace is its own (a slave of the host's).
    let own = Spawner::launch(&spawner_command(), &SpawnerOptions::default()).unwrap();
    let before = own.prepare(&cfg, &cgroup_limits()).unwrap();
    let out = before
        .run(&sh(show), StdinSource::Null, &run_limits())
        .unwrap();
    assert_eq!(text(&out.stdout), "top\ntop\nread-only\n");
    before.destroy().unwrap();
    // A mount beneath the directory, in the spawner's namespace only; the next jail sees it.
    let sub = tree.join("sub");
    let mounted = std::process::Command::new("/usr/bin/nsenter")
        .arg(format!("--mount=/proc/{}/ns/mnt", own.pid().unwrap()))
        .args(["/bin/sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size=64k,mode=755 runcell-test '{0}' && \
             echo beneath > '{0}/inner.txt'",
            sub.display()
        ))
        .status()
        .unwrap();
    assert!(mounted.success());
    let jail = own.prepare(&cfg, &cgroup_limits()).unwrap();
    let out = jail
        .run(&sh(show), StdinSource::Null, &run_limits())
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "top\nbeneath\ntop\nread-only\n",
        "{}",
        text(&out.stderr)
    );
    // The copy's locks are the jail's own.
    let private = StepMode::Private {
        tmp: TmpfsSize::mib(4),
        shm: TmpfsSize::mib(4),
    };
    let holder = jail
        .start(
            &lock_program_on(LOCK_HOLDER, private, "/srv/copied r"),
            StdinSource::Null,
            OutputTarget::Null,
            OutputTarget::Null,
        )
        .unwrap();
    let held = wait_for_file(&jail, "held");
    assert!(held.contains("flock=held posix=held ofd=held"), "{held}");
    let other = own.prepare(&cfg, &cgroup_limits()).unwrap();
    let probe = other
        .run(
            &lock_program_on(LOCK_PROBE, private, "/srv/copied r"),
            StdinSource::Null,
            &run_limits(),
        )
        .unwrap();
    assert_eq!(
        text(&probe.stdout),
        "/srv/copied flock=free posix=free ofd=free\n",
        "{}",
        text(&probe.stderr)
    );
    holder.kill().unwrap();
    other.destroy().unwrap();
    jail.destroy().unwrap();
    cfg.binds.push(Bind {
        source: tree.join("big"),
        target: "/srv/big".into(),
        optional: false,
        copy: false,
    });
    let e = own.prepare(&cfg, &cgroup_limits()).unwrap_err();
    assert!(e.to_string().contains("bind its directory instead"), "{e}");
    assert!(
        !host_mounts()
            .iter()
            .any(|m| m.contains("runcell-submount-")),
        "the test's mount must not reach the host"
    );
}

// ---------------------------------------------------------------------------------------------
// Zygotes: a preloaded interpreter whose forks are jails. Same isolation, checked by attacks.

/// What a zygote program prints about itself, the same cold and preloaded.
const ZYGOTE_PROBE: &str = r#"
import os, sys
print(sys.argv, sys.orig_argv[:1], sys.executable, sys.prefix, sys.path)
print(sorted(k for k in os.environ), os.getcwd(), os.getuid(), os.getgid())
print(sys.flags.dont_write_bytecode, sys.stdout.write_through, sys.stdin.isatty())
print(open('/proc/self/status').read().count('CapEff:\t0000000000000000'))
print(sorted(m for m in sys.modules if not m.startswith('_')))
"#;

fn zygote_spec(code: &str) -> ZygoteSpec {
    let mut env = spec(&["x"]).env;
    env.push(("PYTHONUNBUFFERED".into(), "1".into()));
    env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
    ZygoteSpec {
        kind: ZygoteKind::Python,
        library: "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0".into(),
        argv: vec!["/usr/bin/python3".into(), "-c".into(), code.into()],
        env,
        config: config(),
    }
}

/// Runs `z`'s program once in a fresh jail forked from zygote `id`, cleaning up like `run`.
fn run_preloaded(id: u64, z: &ZygoteSpec, stdin: StdinSource) -> Outcome {
    run_preloaded_with(spawner(), id, z, stdin, &cgroup_limits(), &run_limits())
}

fn run_preloaded_with(
    sp: &Spawner,
    id: u64,
    z: &ZygoteSpec,
    stdin: StdinSource,
    cg: &CgroupLimits,
    limits: &RunLimits,
) -> Outcome {
    run_preloaded_in(sp, id, z, &config(), stdin, cg, limits)
}

fn run_preloaded_in(
    sp: &Spawner,
    id: u64,
    z: &ZygoteSpec,
    cfg: &JailConfig,
    stdin: StdinSource,
    cg: &CgroupLimits,
    limits: &RunLimits,
) -> Outcome {
    let mounts = host_mounts();
    let mut s = spec(&[]);
    s.argv = z.argv.clone();
    s.env = z.env.clone();
    let (jail, p) = if as_last_step() {
        // As the engine starts a warm jail's interpreter: queued while the jail is prepared.
        let how = Start {
            last: true,
            ..PRELOADED
        };
        sp.prepare_and_start(
            Some(id),
            cfg,
            cg,
            how,
            &s,
            stdin,
            OutputTarget::Pipe,
            OutputTarget::Pipe,
        )
        .expect("prepare in zygote and start")
    } else {
        let jail = sp.prepare_in(Some(id), cfg, cg).expect("prepare in zygote");
        let p = jail
            .start_with(PRELOADED, &s, stdin, OutputTarget::Pipe, OutputTarget::Pipe)
            .expect("start preloaded");
        (jail, p)
    };
    let trace = Trace::of(&jail);
    let o = collect(&jail, p, limits);
    jail.destroy().expect("destroy");
    trace.assert_gone(&mounts);
    o
}

#[test]
fn zygote_forks_run_like_a_cold_interpreter() {
    let z = zygote_spec(ZYGOTE_PROBE);
    let (id, version) = spawner().start_zygote(&z).expect("start zygote");
    assert!(version.starts_with("3."), "{version}");
    let warm = run_preloaded(id, &z, StdinSource::Null);
    let mut cold_spec = spec(&[]);
    cold_spec.argv = z.argv.clone();
    cold_spec.env = z.env.clone();
    let cold = run(&cold_spec);
    assert_eq!(text(&warm.stderr), "", "{warm:?}");
    assert_eq!(text(&warm.stdout), text(&cold.stdout));
    assert_eq!(warm.exit, cold.exit);
}

/// A zygote's forks get a TCP socket table of their own (512 buckets; a namespace sharing the
/// host's shows the host's size negated), and loopback connections work in it.
#[test]
fn zygote_forks_have_tcp_tables_of_their_own() {
    let (id, z) = zygote_of(
        "import socket\n\
         print(open('/proc/sys/net/ipv4/tcp_ehash_entries').read().strip())\n\
         s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
         c = socket.create_connection(s.getsockname()); a, _ = s.accept()\n\
         c.sendall(b'through'); print(a.recv(16).decode())",
    );
    let out = run_preloaded(id, &z, StdinSource::Null);
    assert_eq!(text(&out.stdout), "512\nthrough\n", "{out:?}");
}

/// A zygote is sent each jail configuration once and keeps the last few: jails of several
/// configurations, in turns and more of them than it keeps, each get their own.
#[test]
fn a_zygotes_forks_each_get_their_own_configuration() {
    let (id, z) = zygote_of("import socket; print(socket.gethostname())");
    let names: Vec<String> = (0..6).map(|i| format!("config-{i}")).collect();
    for round in [0, 1, 2, 3, 4, 5, 0, 5, 1, 1, 0] {
        let mut cfg = config();
        cfg.hostname = names[round].clone();
        let out = run_preloaded_in(
            spawner(),
            id,
            &z,
            &cfg,
            StdinSource::Null,
            &cgroup_limits(),
            &run_limits(),
        );
        assert_eq!(text(&out.stdout), format!("{}\n", names[round]), "{out:?}");
    }
}

/// A jail's last step ends with a small init as pid 1, not a copy of the agent: the agent
/// starts the program sharing its memory and then executes the step init (a few pages). The
/// program, cold or preloaded, is then the one thread of its process as after a fork: glibc's
/// thread descriptor holds its thread id (`pthread_sigqueue` to itself reaches it), its
/// robust futex list and its restartable-sequences area are registered (registering the area
/// again is refused as busy), and it is in the jail's own time namespace (a process
/// started sharing memory stays in its parent's until it executes a file: the agent enters
/// the namespace it made for its children).
#[test]
fn the_last_steps_init_is_small_and_the_program_a_thread_of_its_own() {
    const PROBE: &str = "import ctypes, os, signal\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        st = dict(l.split(':', 1) for l in open('/proc/1/status').read().splitlines())\n\
        got = []\n\
        signal.signal(signal.SIGUSR1, lambda *a: got.append(1))\n\
        libc.pthread_self.restype = ctypes.c_ulong\n\
        class Val(ctypes.Union): _fields_ = [('i', ctypes.c_int), ('p', ctypes.c_void_p)]\n\
        r = libc.pthread_sigqueue(ctypes.c_ulong(libc.pthread_self()), signal.SIGUSR1, Val(0))\n\
        head, n = ctypes.c_void_p(), ctypes.c_size_t()\n\
        rr = libc.syscall(274, 0, ctypes.byref(head), ctypes.byref(n))\n\
        print(st['Name'].strip(), int(st['VmRSS'].split()[0]) < 1024, os.getppid(), r, got, rr, head.value is not None, n.value)\n\
        print(os.readlink('/proc/self/ns/time') == os.readlink('/proc/self/ns/time_for_children'))\n\
        size = ctypes.c_uint.in_dll(libc, '__rseq_size').value\n\
        area = libc.pthread_self() + ctypes.c_long.in_dll(libc, '__rseq_offset').value\n\
        libc.syscall.restype = ctypes.c_long\n\
        again = libc.syscall(334, ctypes.c_void_p(area), 32, 0, 0x53053053)\n\
        print(size > 0, again == -1 and ctypes.get_errno() == 16)";
    LAST_STEP.with(|l| l.set(true));
    let expected = "runcell-init True 1 0 [1] 0 True 24\nTrue\nTrue True\n";
    let cold = run(&py(PROBE));
    assert_eq!(text(&cold.stdout), expected, "{cold:?}");
    assert_eq!(cold.exit, Exit::Exited(0));
    let (id, z) = zygote_of(PROBE);
    let warm = run_preloaded(id, &z, StdinSource::Null);
    assert_eq!(text(&warm.stdout), expected, "{warm:?}");
    assert_eq!(warm.exit, Exit::Exited(0));
}

/// A zygote's fork exits without the C library's exit handlers only while nothing of the
/// run's own is loaded: a handler registered through `ctypes` (which loads an extension
/// module) runs at exit as in a cold run, here `abort`.
#[test]
fn c_exit_handlers_a_run_registers_still_run() {
    const PROBE: &str = "import ctypes\n\
        libc = ctypes.CDLL(None)\n\
        libc.__cxa_atexit(ctypes.cast(libc.abort, ctypes.c_void_p), None, None)\n\
        print('registered')";
    let cold = run(&py(PROBE));
    assert_eq!(text(&cold.stdout), "registered\n", "{cold:?}");
    assert_eq!(cold.exit, Exit::Signaled(libc::SIGABRT), "{cold:?}");
    let (id, z) = zygote_of(PROBE);
    let warm = run_preloaded(id, &z, StdinSource::Null);
    assert_eq!(text(&warm.stdout), "registered\n", "{warm:?}");
    assert_eq!(warm.exit, Exit::Signaled(libc::SIGABRT), "{warm:?}");
}

/// A zygote whose program is `code`, started on the shared test spawner.
fn zygote_of(code: &str) -> (u64, ZygoteSpec) {
    let z = zygote_spec(code);
    let (id, _) = spawner().start_zygote(&z).expect("start zygote");
    (id, z)
}

#[test]
fn zygote_forks_hit_the_same_limits_as_cold_programs() {
    // Fork bomb: the task limit.
    let (id, z) = zygote_of(
        "import os, time\n\
         n = 0\n\
         try:\n\
         \x20   while True:\n\
         \x20       if os.fork() == 0:\n\
         \x20           time.sleep(60); os._exit(0)\n\
         \x20       n += 1\n\
         except OSError as e:\n\
         \x20   print('fork failed after', n, e.errno, flush=True); raise SystemExit(1)",
    );
    let cg = CgroupLimits {
        max_tasks: 32,
        ..cgroup_limits()
    };
    let out = run_preloaded_with(spawner(), id, &z, StdinSource::Null, &cg, &run_limits());
    let s = text(&out.stdout);
    assert!(s.contains("fork failed after"), "{s}{}", text(&out.stderr));
    let n: u32 = s.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(n < 32, "{n} children");
    assert_eq!(out.limit, Some(Limit::Processes));

    // Memory bomb: the memory limit, and a peak that is the run's alone (under the limit).
    let (id, z) = zygote_of("b = []\nwhile True:\n    b.append(bytearray(16 << 20))");
    let out = run_preloaded(id, &z, StdinSource::Null);
    assert_eq!(out.limit, Some(Limit::Memory), "{out:?}");
    assert!(out.memory_peak_bytes <= 256 << 20, "{out:?}");

    // Busy loop: the CPU time limit, counted from the fork (not the zygote's start).
    let (id, z) = zygote_of("while True:\n    pass");
    let limits = RunLimits {
        cpu_time: Duration::from_millis(500),
        ..run_limits()
    };
    let out = run_preloaded_with(
        spawner(),
        id,
        &z,
        StdinSource::Null,
        &cgroup_limits(),
        &limits,
    );
    assert_eq!(out.limit, Some(Limit::CpuTime), "{out:?}");
    assert!(out.cpu_time < Duration::from_secs(2), "{out:?}");

    // Daemons die with the program, and the result does not wait for them.
    let (id, z) = zygote_of(
        "import os, subprocess\n\
         subprocess.Popen(['sleep', '1000'], start_new_session=True)\n\
         if os.fork() == 0:\n\
         \x20   os.setsid(); os.execvp('sleep', ['sleep', '1000'])\n\
         print('started')",
    );
    let started = Instant::now();
    let out = run_preloaded(id, &z, StdinSource::Null);
    assert_eq!(text(&out.stdout), "started\n", "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// The spawner's environment (an operator's secret) is neither in a fork's environment nor
/// anywhere in its memory (the zygote is a fresh execve with the runs' environment), and its
/// signal state is a cold Python's. (The memory is searched for the secret with every byte
/// shifted by one, so that the program's own copy of what it looks for never matches.)
#[test]
fn zygote_forks_hold_nothing_of_the_spawner() {
    let secret = "hunter2-runcell-zygote-secret";
    let sp = careless_spawner(secret);
    let z = zygote_spec(
        "import os, re\n\
         print(sorted(os.environ))\n\
         print([l for l in open('/proc/self/status') if l.startswith(('SigIgn', 'SigBlk'))])\n\
         shift = bytes(range(1, 256)) + bytes([0])\n\
         needle = bytes(range(0)).join([b'ivoufs3.svodfmm.', b'{zhpuf.tfdsfu'])\n\
         found = 0\n\
         mem = open('/proc/self/mem', 'rb', 0)\n\
         for line in open('/proc/self/maps'):\n\
         \x20   m = re.match(r'([0-9a-f]+)-([0-9a-f]+) r', line)\n\
         \x20   if not m or '[vvar' in line or '[vsyscall' in line:\n\
         \x20       continue\n\
         \x20   a, b = int(m.group(1), 16), int(m.group(2), 16)\n\
         \x20   try:\n\
         \x20       mem.seek(a); data = mem.read(b - a)\n\
         \x20   except OSError:\n\
         \x20       continue\n\
         \x20   found += data.translate(shift).count(needle)\n\
         print('found', found)\n\
         try:\n\
         \x20   open('/proc/self/exe', 'rb').read(1); print('exe readable')\n\
         except OSError as e:\n\
         \x20   print('exe refused', e.errno)",
    );
    let (id, _) = sp.start_zygote(&z).expect("start zygote");
    let out = run_preloaded_with(
        &sp,
        id,
        &z,
        StdinSource::Null,
        &cgroup_limits(),
        &run_limits(),
    );
    let o = text(&out.stdout);
    assert!(o.contains("found 0"), "{o}{}", text(&out.stderr));
    // The zygote's binary is on a mount the fork's root does not contain: Landlock refuses it.
    assert!(o.contains("exe refused 13"), "{o}");
    assert!(!o.contains(secret), "{o}");
    assert!(
        o.contains("['HOME', 'LANG', 'PATH', 'PYTHONDONTWRITEBYTECODE', 'PYTHONUNBUFFERED']"),
        "{o}"
    );
    assert!(
        o.contains("'SigBlk:\\t0000000000000000\\n', 'SigIgn:\\t0000000001001000\\n'"),
        "{o}"
    );
}

/// An attacker forked from a zygote kills what it can, leaves files and a daemon and exits;
/// a victim forked from the same zygote afterwards runs normally and sees none of it.
#[test]
fn an_attacker_forked_from_a_zygote_reaches_neither_it_nor_the_next_fork() {
    let code = "import os, signal, subprocess, sys\n\
        if sys.stdin.read() == 'attack':\n\
        \x20   for d in ('/workspace', '/tmp', '/dev/shm'):\n\
        \x20       open(d + '/planted', 'w').write('x')\n\
        \x20   subprocess.Popen(['sleep', '1000'], start_new_session=True)\n\
        \x20   signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
        \x20   os.environ['PLANTED'] = '1'\n\
        \x20   for sig in (signal.SIGKILL, signal.SIGSTOP):\n\
        \x20       for pid in range(1, 64):\n\
        \x20           try: os.kill(pid, sig) if pid != os.getpid() else None\n\
        \x20           except OSError: pass\n\
        \x20   print('attacked')\n\
        else:\n\
        \x20   print([d for d in ('/workspace', '/tmp', '/dev/shm') if os.path.exists(d + '/planted')],\n\
        \x20         os.environ.get('PLANTED'), signal.getsignal(signal.SIGTERM), os.getppid())";
    let (id, z) = zygote_of(code);
    let a = run_preloaded(id, &z, StdinSource::Bytes(b"attack".to_vec()));
    assert_eq!(text(&a.stdout), "attacked\n", "{a:?}");
    let v = run_preloaded(id, &z, StdinSource::Null);
    assert_eq!(text(&v.stdout), "[] None 0 1\n", "{v:?}{}", text(&v.stderr));
}

/// A stopped zygote forks no more, but its jails (which cannot outlive it) keep working until
/// they are destroyed; then it ends.
#[test]
fn a_stopped_zygote_ends_with_its_last_jail() {
    let (id, z) = zygote_of("print('alive')");
    let jail = spawner()
        .prepare_in(Some(id), &config(), &cgroup_limits())
        .expect("prepare in zygote");
    spawner().stop_zygote(id).expect("stop");
    let err = spawner()
        .prepare_in(Some(id), &config(), &cgroup_limits())
        .expect_err("a stopped zygote forks no more");
    assert!(err.to_string().contains("no zygote"), "{err}");
    let mut s = spec(&[]);
    s.argv = z.argv.clone();
    s.env = z.env.clone();
    let out = jail
        .run_with(PRELOADED, &s, StdinSource::Null, &run_limits())
        .expect("run in the stopped zygote's jail");
    assert_eq!(text(&out.stdout), "alive\n");
    // Zygotes are the spawner's children running `__zygote`; only this test stops one.
    let sp = spawner().pid().expect("spawner pid");
    let before = zygote_pids(sp);
    jail.destroy().expect("destroy");
    let deadline = Instant::now() + Duration::from_secs(5);
    let ended = || before.iter().any(|p| !zygote_pids(sp).contains(p));
    while !ended() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ended(), "the stopped zygote is still running");
}

/// Pids of `spawner`'s children that are zygotes.
fn zygote_pids(spawner: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let ppid = stat[close + 2..].split_whitespace().nth(1);
        let zygote =
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.ends_with(b"__zygote\0"));
        if zygote && ppid == Some(spawner.to_string().as_str()) {
            found.push(pid);
        }
    }
    found
}

/// A jail prepared as a pool prepares one ahead of its run (at the lowest CPU weight).
fn prepared_ahead() -> Jail {
    spawner()
        .prepare(
            &config(),
            &CgroupLimits {
                background: true,
                ..cgroup_limits()
            },
        )
        .expect("prepare")
}

/// A jail prepared ahead of its run (a pool's) has the lowest CPU weight, so that preparing it
/// never takes CPU from a program running in another jail; the run's limits restore the
/// normal weight.
#[test]
fn a_jail_prepared_ahead_yields_the_cpu_until_a_run_takes_it() {
    let jail = prepared_ahead();
    let weight = || {
        cgroup_dirs(jail.cgroup_name())
            .iter()
            .find_map(|d| {
                let v1 = std::fs::read_to_string(d.join("cpu.shares")).ok();
                v1.or_else(|| std::fs::read_to_string(d.join("cpu.weight")).ok())
                    .map(|w| (d.clone(), w.trim().parse::<u64>().expect("a weight")))
            })
            .expect("the jail's cpu controller")
    };
    let (dir, w) = weight();
    let v2 = dir.join("cpu.weight").exists() && !dir.join("cpu.shares").exists();
    assert_eq!(w, if v2 { 1 } else { 2 }, "{}", dir.display());
    jail.set_limits(&cgroup_limits()).expect("set limits");
    assert_eq!(weight().1, if v2 { 100 } else { 1024 });
    jail.destroy().expect("destroy");
}

/// Setting limits writes only what changed since the last limits (the spawner's, then the
/// owner's): every limit the kernel holds afterwards is the new one, whatever changed.
#[test]
fn changed_limits_hold_in_the_kernel_whatever_changed() {
    let jail = prepared_ahead();
    let dirs = cgroup_dirs(jail.cgroup_name());
    let read = |file: &str| {
        dirs.iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .map(|s| s.trim().to_string())
    };
    let v2 = read("cpu.max").is_some();
    // (memory, tasks, CPU quota, weight) as the kernel holds them.
    let held = || {
        if v2 {
            (
                read("memory.max").unwrap(),
                read("pids.max").unwrap(),
                read("cpu.max").unwrap(),
                read("cpu.weight").unwrap(),
            )
        } else {
            (
                read("memory.limit_in_bytes").unwrap(),
                read("pids.max").unwrap(),
                read("cpu.cfs_quota_us").unwrap(),
                read("cpu.shares").unwrap(),
            )
        }
    };
    let expect = |l: &CgroupLimits| {
        let quota = l.cpus.map(|c| (c * 100_000.0).round() as u64);
        if v2 {
            (
                l.memory_bytes.to_string(),
                l.max_tasks.to_string(),
                quota.map_or("max 100000".into(), |q| format!("{q} 100000")),
                if l.background { "1" } else { "100" }.to_string(),
            )
        } else {
            (
                l.memory_bytes.to_string(),
                l.max_tasks.to_string(),
                quota.map_or("-1".into(), |q| q.to_string()),
                if l.background { "2" } else { "1024" }.to_string(),
            )
        }
    };
    let base = cgroup_limits();
    let steps = [
        // Everything changes, then one thing at a time, then back.
        CgroupLimits {
            memory_bytes: 64 << 20,
            max_tasks: 8,
            cpus: Some(0.5),
            background: false,
        },
        CgroupLimits {
            memory_bytes: 128 << 20,
            max_tasks: 8,
            cpus: Some(0.5),
            background: false,
        },
        CgroupLimits {
            memory_bytes: 128 << 20,
            max_tasks: 16,
            cpus: Some(0.5),
            background: false,
        },
        CgroupLimits {
            memory_bytes: 128 << 20,
            max_tasks: 16,
            cpus: None,
            background: false,
        },
        CgroupLimits {
            memory_bytes: 128 << 20,
            max_tasks: 16,
            cpus: None,
            background: true,
        },
        base,
    ];
    for l in steps {
        jail.set_limits(&l).expect("set limits");
        assert_eq!(held(), expect(&l), "after setting {l:?}");
    }
    // And they bind: a memory bomb under a lowered limit is killed for memory.
    jail.set_limits(&CgroupLimits {
        memory_bytes: 48 << 20,
        ..base
    })
    .expect("set limits");
    let out = jail
        .run(
            &py("b = bytearray(200 << 20)"),
            StdinSource::Null,
            &run_limits(),
        )
        .expect("run");
    assert_eq!(out.limit, Some(Limit::Memory), "{out:?}");
    jail.destroy().expect("destroy");
}

/// A tmpfs superblock made with the new mount API and mounted nowhere (`fsopen`, then
/// `fsconfig(FSCONFIG_CMD_CREATE)`): it holds an anonymous device number while the returned
/// descriptor is open.
fn unmounted_tmpfs() -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: a NUL-terminated literal and FSOPEN_CLOEXEC; a new descriptor or -1.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), 1) };
    assert!(fs >= 0, "fsopen: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    let fs = unsafe { std::os::fd::OwnedFd::from_raw_fd(fs as i32) };
    // SAFETY: FSCONFIG_CMD_CREATE (6) takes no key or value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            6,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    assert_eq!(r, 0, "fsconfig: {}", std::io::Error::last_os_error());
    fs
}

/// A spawner of its own with `slots` slots (indexes 0 to `slots - 1` of the host's).
fn spawner_with_slots(state_dir: &Path, slots: u32) -> Spawner {
    Spawner::launch(
        &spawner_command(),
        &SpawnerOptions {
            state_dir: state_dir.to_path_buf(),
            slots,
            ..SpawnerOptions::default()
        },
    )
    .expect("launch spawner")
}

/// A jail of `sp`, whose few slots other tests' spawners may hold a moment: tried again while
/// none is free, for up to a minute.
fn prepare_in_turn(sp: &Spawner, limits: &CgroupLimits) -> Jail {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match sp.prepare(&config(), limits) {
            Ok(j) => return j,
            Err(JailError::NoSlot(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("prepare: {e}"),
        }
    }
}

/// A pool's reaper releases used jails (`Jail::release_all`): the spawner kills them and
/// answers at once, freeing each slot once the jail's processes are gone (it serves other
/// callers meanwhile instead of waiting for the teardown). A prepare that finds every slot
/// held by released jails waits for them rather than failing, and a spawner that ends first
/// still leaves nothing behind.
#[test]
fn released_jails_give_their_slots_back_once_their_processes_are_gone() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let sp = spawner_with_slots(dir.path(), 1);
    let mounts = host_mounts();
    let prepare = || prepare_in_turn(&sp, &cgroup_limits());
    let alive = |pids: &[i32]| -> Vec<i32> {
        pids.iter()
            .copied()
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            .collect()
    };
    let mut jail = prepare();
    for _ in 0..3 {
        let trace = Trace::of(&jail);
        let daemon = jail
            .start(
                &sh("sleep 100 & exec sleep 100"),
                StdinSource::Null,
                OutputTarget::Pipe,
                OutputTarget::Pipe,
            )
            .unwrap();
        // Both sleeps run (the program is `sleep`, not the shell, once exec'd).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while processes_of(&trace.uids)
            .iter()
            .filter(|(_, name)| name.ends_with("\tsleep"))
            .count()
            < 2
        {
            assert!(std::time::Instant::now() < deadline, "the sleeps never ran");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pids: Vec<i32> = processes_of(&trace.uids).iter().map(|(p, _)| *p).collect();
        Jail::release_all(vec![jail]).unwrap();
        drop(daemon);
        // The one slot is the released jail's: this waits for its processes to be gone.
        jail = prepare();
        let left = alive(&pids);
        assert!(
            left.is_empty(),
            "a released jail's processes outlived its slot: {left:?}"
        );
    }
    let trace = Trace::of(&jail);
    Jail::release_all(vec![jail]).unwrap();
    // The spawner ends (its client is gone) only once every released jail is.
    drop(sp);
    trace.assert_gone(&mounts);
}

/// The spawner keeps an emptied group, with its files open, for its slot's next jail. If the
/// group was removed and made anew meanwhile (by another runcell process that held the slot),
/// the next jail gets the new group, limited and with its agent in it, never the files of the
/// old one.
#[test]
fn a_kept_group_made_anew_meanwhile_is_opened_again() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let sp = spawner_with_slots(dir.path(), 1);
    let prepare = |limits: &CgroupLimits| prepare_in_turn(&sp, limits);
    let dirs = |name: &str| {
        let mut out: Vec<PathBuf> = cgroup_dirs(name)
            .into_iter()
            .filter_map(|d| d.canonicalize().ok())
            .collect();
        out.sort();
        out.dedup();
        out
    };
    let mut limits = cgroup_limits();
    limits.max_tasks = 23;
    for attempt in 0.. {
        let first = prepare(&cgroup_limits());
        let name = first.cgroup_name().to_string();
        // Measured, so that this client's handle on the group has its files open.
        first.stats().expect("first jail's stats");
        // Destroyed (and its group emptied and kept) before this returns.
        first.destroy().unwrap();
        let old = dirs(&name);
        assert!(!old.is_empty(), "no group {name}");
        // Removed and made anew, as another process holding the slot could have done; a
        // spawner that took the slot in between makes the removal fail: then again.
        if old.iter().any(|d| std::fs::remove_dir(d).is_err()) {
            assert!(attempt < 20, "the slot's group never stayed free");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        for d in &old {
            std::fs::create_dir(d).unwrap();
        }
        let second = prepare(&limits);
        assert_eq!(second.cgroup_name(), name, "one slot, one group");
        // Measured through the new group's files, not the removed group's the client had open.
        let stats = second.stats().expect("the new group is measured");
        assert!(stats.memory_current > 0, "{stats:?}");
        let now = dirs(&name);
        let pids_max = now
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join("pids.max")).ok())
            .expect("pids.max");
        assert_eq!(pids_max.trim(), "23", "the new group is limited");
        for d in &now {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
            assert!(
                !procs.trim().is_empty(),
                "the jail's agent is not in {}",
                d.display()
            );
        }
        second.destroy().unwrap();
        break;
    }
}

/// A client keeps an ended jail's group handle for the slot's next jail while the spawner
/// keeps the group: measuring jail after jail of one slot opens no file again.
#[test]
fn a_slots_next_jail_is_measured_through_the_handle_kept() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let sp = spawner_with_slots(dir.path(), 1);
    // Slots are the host's: other tests' spawners in this process may keep handles on this
    // slot's group too (and close them at any time). Ours are the files opened meanwhile.
    let others = group_files_open(&slots::cgroup_name(0));
    let first = prepare_in_turn(&sp, &cgroup_limits());
    let name = first.cgroup_name().to_string();
    assert_eq!(name, slots::cgroup_name(0), "a spawner of one slot");
    first.stats().expect("stats");
    let ours: Vec<i32> = group_files_open(&name)
        .into_iter()
        .filter(|f| !others.contains(f))
        .map(|(fd, _)| fd.parse().unwrap())
        .collect();
    assert!(!ours.is_empty(), "measuring opened no file of the group");
    first.destroy().unwrap();
    // Copies of our descriptors: a file opened again, even under the same number, is another
    // open file than its copy (and a closed number compares as an error).
    let copies: Vec<(i32, std::os::fd::OwnedFd)> = ours
        .iter()
        .map(|&fd| {
            // SAFETY: borrowing a descriptor this process has open, to copy it.
            let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            (
                fd,
                b.try_clone_to_owned()
                    .expect("the ended jail's handle was not kept"),
            )
        })
        .collect();
    let second = prepare_in_turn(&sp, &cgroup_limits());
    assert_eq!(second.cgroup_name(), name, "one slot, one group");
    let stats = second.stats().expect("stats");
    assert!(stats.memory_current > 0, "{stats:?}");
    let me = std::process::id() as libc::c_long;
    for (fd, copy) in &copies {
        // SAFETY: kcmp(2) compares two descriptors of this process; no memory is passed.
        let same = unsafe {
            libc::syscall(
                libc::SYS_kcmp,
                me,
                me,
                0, /* KCMP_FILE */
                *fd as libc::c_long,
                std::os::fd::AsRawFd::as_raw_fd(copy) as libc::c_long,
            )
        };
        assert_eq!(
            same, 0,
            "descriptor {fd} is not the kept handle's file any more"
        );
    }
    second.destroy().unwrap();
}

/// This process's descriptors of files in group `name`'s directories.
fn group_files_open(name: &str) -> Vec<(String, PathBuf)> {
    let needle = format!("/{name}/");
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            target
                .to_string_lossy()
                .contains(&needle)
                .then(|| (e.file_name().to_string_lossy().into_owned(), target))
        })
        .collect();
    out.sort();
    out
}

/// The spawner keeps a slot's read-only overlays (the root's, `/usr`'s, ...) for the slot's
/// jails one after another: the next jail of the slot shows the same overlay filesystems
/// (where the kernel copies detached mounts; on Linux 6.1 every jail mounts its own).
/// Two jails alive at once are in two slots and never share one (each overlay's inodes, and
/// so the locks and watches on them, are its slot's only).
#[test]
fn a_slots_overlays_serve_its_jails_one_after_another_never_two_at_once() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let sp = spawner_with_slots(dir.path(), 2);
    let prepare = || prepare_in_turn(&sp, &cgroup_limits());
    // The filesystem (device) of the root and of /usr, as the jail sees them.
    let devices = |jail: &Jail| -> String {
        let out = jail
            .run(&sh("stat -c %d / /usr"), StdinSource::Null, &run_limits())
            .unwrap();
        assert_eq!(out.exit, Exit::Exited(0), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let first = prepare();
    let second = prepare();
    assert_ne!(first.slot(), second.slot());
    let (a, b) = (devices(&first), devices(&second));
    for (x, y) in a.lines().zip(b.lines()) {
        assert_ne!(x, y, "two jails at once share an overlay: {a:?} {b:?}");
    }
    let slot = first.slot();
    first.destroy().unwrap();
    // Three tmpfs superblocks, mounted nowhere (no other test sees a mount), take the lowest
    // free anonymous device numbers: had the first jail's overlays gone with it, they would
    // take its numbers, and the next jail could not show them again by chance.
    let pins: Vec<std::os::fd::OwnedFd> = (0..3).map(|_| unmounted_tmpfs()).collect();
    let third = prepare();
    assert_eq!(third.slot(), slot, "the freed slot is the only one");
    let c = devices(&third);
    drop(pins);
    // Where the kernel cannot copy a detached mount (Linux 6.1) each jail mounts its own.
    if runcell_jail::slots_keep_overlays() {
        assert_eq!(c, a, "the slot's next jail shows the slot's overlays");
    }
    third.destroy().unwrap();
    second.destroy().unwrap();
}

/// Two runcell servers on one host with different state directories share the host's slots:
/// a slot is a pair of host uids and a cgroup name, the same for every spawner, so a slot
/// one holds is never handed out by the other (when each counted slots in a lock file of its
/// own state directory, the second handed out the first's slots: two jails with one uid and
/// one cgroup).
#[test]
fn spawners_with_different_state_dirs_never_share_a_slot() {
    require_root();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let launch = |dir: &Path| {
        Spawner::launch(
            &spawner_command(),
            &SpawnerOptions {
                state_dir: dir.to_path_buf(),
                slots: 2,
                ..SpawnerOptions::default()
            },
        )
        .expect("launch spawner")
    };
    let (a, b) = (launch(dirs[0].path()), launch(dirs[1].path()));
    // Both count the same two slots (0 and 1): whatever one holds, the other may not take.
    let held: Vec<Jail> = (0..2)
        .filter_map(|_| a.prepare(&config(), &cgroup_limits()).ok())
        .collect();
    assert!(!held.is_empty(), "the first spawner got no slot at all");
    for _ in 0..2 {
        match b.prepare(&config(), &cgroup_limits()) {
            Ok(other) => {
                for h in &held {
                    assert_ne!(other.slot(), h.slot(), "one slot, two jails");
                    assert_ne!(other.program_host_id(), h.program_host_id());
                    assert_ne!(other.cgroup_name(), h.cgroup_name());
                }
                other.destroy().unwrap();
            }
            Err(JailError::NoSlot(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    Jail::destroy_all(held).unwrap();
}
