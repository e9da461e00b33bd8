//! Accepted work is durable: a server killed with SIGKILL loses none of it, and leaves no jail
//! process behind.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::server::{JAIL_UID_BASE, KEY_A, Opts, Proc, Server, alive, descendants, eventually};

const JOBS: usize = 50;

#[test]
fn accepted_work_survives_kill_9() {
    let mut first = Server::with(Opts::new().env("RUNCELL_CONCURRENCY", "1"));
    let data_dir = first.data_dir.clone();
    let mut expected: HashMap<String, String> = HashMap::new();
    for i in 0..JOBS {
        let id = first.submit(
            KEY_A,
            &json!({"language": "python",
                    "code": format!("import time\ntime.sleep(0.1)\nprint({i})")}),
        );
        expected.insert(id, format!("{i}\n"));
    }

    // Let a few finish, then kill the server while the rest waits.
    eventually(
        Duration::from_secs(60),
        "a few executions to finish",
        || (first.list_all(KEY_A, "&status=completed").len() >= 3).then_some(()),
    );
    let pending = first.list_all(KEY_A, "&status=pending").len();
    assert!(
        pending >= 10,
        "work must still be pending when the server dies ({pending})"
    );

    // Freeze the server so that it starts no new jail, note its jails, and kill it.
    let pid = first.pid();
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    std::thread::sleep(Duration::from_millis(300));
    let jails: Vec<Proc> = descendants(pid)
        .into_iter()
        .filter(|p| p.uid >= JAIL_UID_BASE)
        .collect();
    first.kill9();
    assert!(
        !jails.is_empty(),
        "the server had jails (its pool, its running execution)"
    );

    // Its spawner destroys every jail it made once the server is gone.
    let t = Instant::now();
    loop {
        let left: Vec<&Proc> = jails.iter().filter(|p| alive(p)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "jail processes of the killed server are still running: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A new server on the same data (kept by `first`) finishes everything.
    let second = Server::with(
        Opts::new()
            .env("RUNCELL_CONCURRENCY", "1")
            .data_dir(&data_dir),
    );
    let all = eventually(Duration::from_secs(90), "every execution to finish", || {
        let all = second.list_all(KEY_A, "");
        all.iter()
            .all(|e| matches!(e["status"].as_str(), Some("completed" | "failed")))
            .then_some(all)
    });
    assert_eq!(all.len(), JOBS, "none lost, none added");
    let mut failed = 0;
    for e in &all {
        let id = e["execution_id"].as_str().unwrap();
        let out = expected
            .get(id)
            .unwrap_or_else(|| panic!("unknown execution {id}"));
        match e["status"].as_str().unwrap() {
            "completed" => {
                assert_eq!(&e["result"]["stdout"], out.as_str(), "{e:#}");
                assert_eq!(e["result"]["exit_code"], 0, "{e:#}");
            }
            _ => {
                failed += 1;
                assert!(
                    e["failure_reason"].as_str().is_some_and(|s| !s.is_empty()),
                    "a failure says why: {e:#}"
                );
            }
        }
    }
    // With one worker, at most the one running when the server died was interrupted.
    assert!(failed <= 1, "{failed} executions failed");
}
