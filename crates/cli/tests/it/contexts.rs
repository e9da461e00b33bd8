//! Code contexts below the HTTP layer: real kernels in a sandbox's jail.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use runcell_engine::{Engine, EngineConfig};
use runcell_jail::{Spawner, SpawnerCommand, SpawnerOptions};
use runcell_lang::Registry;
use runcell_sandbox::model::{CodeRun, RunStatus};
use runcell_sandbox::{Run, Sandbox, SandboxBudget, SandboxConfig, new_doc};

fn require_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "these tests need root (they create jails); run them as root"
    );
}

struct Fixture {
    engine: Arc<Engine>,
    cfg: Arc<SandboxConfig>,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        require_root();
        let spawner = Spawner::launch(
            &SpawnerCommand {
                program: env!("CARGO_BIN_EXE_runcell").into(),
                args: vec!["__spawner".into()],
            },
            &SpawnerOptions::default(),
        )
        .expect("launch the spawner");
        let prefix = Path::new("/opt/runcell");
        let registry = Arc::new(Registry::load(prefix, &[]).expect("languages"));
        let engine = Arc::new(Engine::new(spawner, registry, EngineConfig::default()));
        let dir = tempfile::tempdir().unwrap();
        let arts = dir.path().join("artifacts");
        let socks = dir.path().join("sockets");
        std::fs::create_dir_all(&arts).unwrap();
        std::fs::create_dir_all(&socks).unwrap();
        let mut cfg = SandboxConfig::with_dirs(arts, socks);
        cfg.interrupt_grace = Duration::from_secs(1);
        Fixture {
            engine,
            cfg: Arc::new(cfg),
            _dir: dir,
        }
    })
}

fn budget() -> SandboxBudget {
    SandboxBudget {
        memory_mb: 512,
        cpus: Some(1.0),
        max_processes: 128,
        disk_mb: 256,
    }
}

fn sandbox() -> Arc<Sandbox> {
    let f = fixture();
    Sandbox::create(
        Arc::clone(&f.engine),
        runcell_sandbox::ids::sandbox_id(),
        budget(),
        vec![("GREETING".into(), "hello".into())],
        Arc::clone(&f.cfg),
    )
    .expect("create a sandbox")
}

async fn run_code(
    sb: &Sandbox,
    ctx: &Arc<runcell_sandbox::Context>,
    code: &str,
    timeout: Duration,
) -> CodeRun {
    let doc = new_doc(
        runcell_sandbox::ids::run_id(),
        sb.id(),
        &ctx.id,
        &ctx.language,
        timeout.as_secs(),
        SystemTime::now(),
        SystemTime::now(),
    );
    let run = Run::new(doc, fixture().cfg.output, None);
    ctx.execute(Arc::clone(&run), code.into(), vec![], timeout)
        .await;
    run.snapshot()
}

/// The text of a run's first result (None if it has none: say, the state it needed was lost).
fn main_text(r: &CodeRun) -> Option<&str> {
    r.execution.results.first().and_then(|x| x.text.as_deref())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn python_context_keeps_state_and_returns_rich_results() {
    rt().block_on(async {
        let sb = sandbox();
        let ctx = sb.create_context("python").await.expect("python context");
        let t = Duration::from_secs(60);
        let r = run_code(
            &sb,
            &ctx,
            "x = 1\nprint('hi', __import__('os').environ['GREETING'])",
            t,
        )
        .await;
        assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
        assert_eq!(r.execution.logs.stdout.concat(), "hi hello\n");
        let r = run_code(&sb, &ctx, "x + 1", t).await;
        assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
        assert_eq!(r.execution.results.len(), 1, "{r:#?}");
        assert_eq!(r.execution.results[0].text.as_deref(), Some("2"));
        assert!(r.execution.results[0].is_main_result);
        assert_eq!(r.execution.execution_count, Some(2));
        let r = run_code(
            &sb,
            &ctx,
            "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\n\
             import pandas as pd\npd.DataFrame({'a': [1, 2]})",
            t,
        )
        .await;
        assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
        let png = r.execution.results.iter().find_map(|x| x.png.clone());
        let png = png.unwrap_or_else(|| panic!("no PNG in {r:#?}"));
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png)
            .unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let main = r
            .execution
            .results
            .iter()
            .find(|x| x.is_main_result)
            .unwrap();
        assert!(
            main.html.as_deref().unwrap_or("").contains("<table"),
            "{main:#?}"
        );
        let r = run_code(
            &sb,
            &ctx,
            "open('out.csv', 'w').write('a,b\\n1,2\\n')\n1/0",
            t,
        )
        .await;
        assert_eq!(r.status, RunStatus::Failed);
        let e = r.execution.error.as_ref().unwrap();
        assert_eq!(e.name, "ZeroDivisionError");
        assert!(!e.traceback.contains('\u{1b}'), "{}", e.traceback);
        assert_eq!(r.execution.artifacts.len(), 1, "{r:#?}");
        assert_eq!(r.execution.artifacts[0].name, "out.csv");
        assert_eq!(r.execution.artifacts[0].size_bytes, 8);
        let sb2 = Arc::clone(&sb);
        tokio::task::spawn_blocking(move || sb2.destroy("deleted"))
            .await
            .unwrap();
    });
}

#[test]
fn cancel_timeout_and_memory_errors_leave_the_context_usable() {
    rt().block_on(async {
        let sb = sandbox();
        let ctx = sb.create_context("python").await.expect("python context");
        run_code(&sb, &ctx, "state = 41", Duration::from_secs(30)).await;
        // Cancel a busy loop.
        let doc = new_doc(
            runcell_sandbox::ids::run_id(),
            sb.id(),
            &ctx.id,
            "python",
            60,
            SystemTime::now(),
            SystemTime::now(),
        );
        let run = Run::new(doc, fixture().cfg.output, None);
        let exec = {
            let (ctx, run) = (Arc::clone(&ctx), Arc::clone(&run));
            tokio::spawn(async move {
                ctx.execute(
                    run,
                    "while True: pass".into(),
                    vec![],
                    Duration::from_secs(60),
                )
                .await
            })
        };
        while run.status() != RunStatus::Running {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = std::time::Instant::now();
        assert!(run.cancel());
        // The run's end (what a client waiting for it sees) is measured apart from the end of
        // `execute`, which also restarts the kernel when the interrupt did not stop the code
        // within the grace period (seconds for a Python kernel on a real CPU, 20 s and more
        // under an emulated one).
        run.wait().await;
        let ended = t.elapsed();
        exec.await.unwrap();
        let returned = t.elapsed();
        let r = run.snapshot();
        eprintln!(
            "cancel: the run ended after {ended:?}, execute returned after {returned:?}: {:?}",
            r.failure_reason
        );
        assert_eq!(r.status, RunStatus::Cancelled, "{r:#?}");
        assert!(
            ended < Duration::from_secs(1),
            "cancel took {ended:?} (execute returned after {returned:?}): {:?}",
            r.failure_reason
        );
        let r = run_code(&sb, &ctx, "state + 1", Duration::from_secs(30)).await;
        assert_eq!(main_text(&r), Some("42"), "{r:#?}");

        // A time limit: interrupted, the state survives.
        let r = run_code(
            &sb,
            &ctx,
            "import time\ntime.sleep(30)",
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(r.status, RunStatus::Failed);
        assert!(
            r.failure_reason.as_deref().unwrap().starts_with("timeout"),
            "{r:#?}"
        );
        let r = run_code(&sb, &ctx, "state", Duration::from_secs(30)).await;
        assert_eq!(main_text(&r), Some("41"), "{r:#?}");

        // Code that ignores the interrupt: the kernel is killed and restarted.
        let r = run_code(
            &sb,
            &ctx,
            "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(30)",
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(r.status, RunStatus::Failed);
        assert!(
            r.failure_reason
                .as_deref()
                .unwrap()
                .contains("state is lost"),
            "{r:#?}"
        );
        let r = run_code(&sb, &ctx, "1 + 1", Duration::from_secs(30)).await;
        assert_eq!(main_text(&r), Some("2"), "{r:#?}");

        // More memory than the sandbox has.
        let r = run_code(&sb, &ctx, "x = bytearray(1 << 30)", Duration::from_secs(60)).await;
        assert_eq!(r.status, RunStatus::Failed, "{r:#?}");
        assert_eq!(
            r.execution.error.as_ref().unwrap().name,
            "MemoryError",
            "{r:#?}"
        );
        assert!(
            r.failure_reason.as_deref().unwrap().starts_with("memory"),
            "{r:#?}"
        );
        let r = run_code(&sb, &ctx, "1 + 1", Duration::from_secs(30)).await;
        assert_eq!(main_text(&r), Some("2"), "{r:#?}");
        let sb2 = Arc::clone(&sb);
        tokio::task::spawn_blocking(move || sb2.destroy("deleted"))
            .await
            .unwrap();
    });
}

#[test]
fn bash_and_javascript_contexts() {
    rt().block_on(async {
        let sb = sandbox();
        let t = Duration::from_secs(60);
        let bash = sb.create_context("bash").await.expect("bash context");
        run_code(&sb, &bash, "X=5; cd /tmp", t).await;
        let r = run_code(&sb, &bash, "echo $((X * 2)) $PWD $GREETING", t).await;
        assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
        assert_eq!(
            r.execution.logs.stdout.concat(),
            "10 /tmp hello\n",
            "{r:#?}"
        );
        let js = sb
            .create_context("javascript")
            .await
            .expect("javascript context");
        run_code(&sb, &js, "let x = 20;", t).await;
        let r = run_code(&sb, &js, "console.log('log'); x + 22", t).await;
        assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
        assert_eq!(r.execution.logs.stdout.concat(), "log\n", "{r:#?}");
        assert_eq!(r.execution.results[0].text.as_deref(), Some("42"), "{r:#?}");
        let ts = sb
            .create_context("typescript")
            .await
            .expect("typescript context");
        let r = run_code(&sb, &ts, "const n: number = 3; n * 3", t).await;
        assert_eq!(r.execution.results[0].text.as_deref(), Some("9"), "{r:#?}");
        let r = run_code(&sb, &ts, "throw new Error('boom')", t).await;
        assert_eq!(r.status, RunStatus::Failed, "{r:#?}");
        assert!(
            r.execution.error.as_ref().unwrap().value.contains("boom"),
            "{r:#?}"
        );
        let sb2 = Arc::clone(&sb);
        tokio::task::spawn_blocking(move || sb2.destroy("deleted"))
            .await
            .unwrap();
    });
}
