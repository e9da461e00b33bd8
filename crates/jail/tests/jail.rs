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
    for p in [
        "/etc/ld.so.cache",
        "/etc/alternatives",
        "/etc/python3.11",
        "/etc/localtime",
    ] {
        binds.push(Bind::optional(p));
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
    }
}

fn cgroup_limits() -> CgroupLimits {
    CgroupLimits {
        memory_bytes: 256 << 20,
        max_tasks: 64,
        cpus: None,
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

    /// Asserts that no process, cgroup or host mount of the jail is left.
    fn assert_gone(&self, mounts_before: &BTreeSet<String>) {
        let left = processes_of(&self.uids);
        assert!(left.is_empty(), "processes left on the host: {left:?}");
        for d in cgroup_dirs(&self.cgroup) {
            assert!(!d.exists(), "cgroup left: {}", d.display());
        }
        let after = host_mounts();
        let new: Vec<_> = after.difference(mounts_before).collect();
        assert!(new.is_empty(), "mounts appeared on the host: {new:?}");
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
    let jail = spawner().prepare(&config(), cg).expect("prepare");
    let trace = Trace::of(&jail);
    let out = jail.run(spec, stdin, limits).expect("run");
    jail.destroy().expect("destroy");
    trace.assert_gone(&mounts);
    out
}

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

#[test]
fn the_spawners_environment_does_not_reach_programs() {
    // A spawner started with a secret in its environment and with signals ignored (as a
    // careless operator or `nohup` might).
    let secret = "hunter2-runcell-secret";
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
    let sp = Spawner::launch(&cmd, &SpawnerOptions::default()).expect("launch");
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
    trace.assert_gone(&mounts);
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
    // SIGINT interrupts (the program handles it and carries on to a clean exit).
    let p = jail
        .start(
            &ProcessSpec {
                mode: StepMode::Shared,
                ..py("import signal, sys, time\n\
                      signal.signal(signal.SIGINT, lambda *a: (print('interrupted', flush=True), sys.exit(3)))\n\
                      print('ready', flush=True)\n\
                      time.sleep(60)")
            },
            StdinSource::Null,
            OutputTarget::Pipe,
            OutputTarget::Pipe,
        )
        .unwrap();
    let signaller = p.killer().unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        signaller.signal(libc::SIGINT).unwrap();
    });
    let mut out = Vec::new();
    let o = jail
        .supervise(p, &run_limits(), &mut |_, c| out.extend_from_slice(c))
        .unwrap();
    assert_eq!(text(&out), "ready\ninterrupted\n");
    assert_eq!(o.exit, Exit::Exited(3));
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
