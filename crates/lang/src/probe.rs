//! Running a trusted host command with a deadline and capturing its output.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Output kept per stream; a version banner is far smaller.
const MAX_CAPTURE: u64 = 64 * 1024;

/// Runs `argv` with exactly `env`, stdin closed, in its own process group, and returns
/// (stdout, stderr) once it has exited and both streams are closed. Returns `None` if it cannot
/// be started or is not done within `timeout`; then the whole process group is killed.
pub(crate) fn run_capture(
    argv: &[String],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Option<(Vec<u8>, Vec<u8>)> {
    let (program, args) = argv.split_first()?;
    let deadline = Instant::now() + timeout;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().ok()?;
    let pgid = child.id() as libc::pid_t;

    // Readers report through a channel so that a descendant holding a pipe open cannot make us
    // wait past the deadline.
    let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
    let streams: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ];
    for (i, stream) in streams.into_iter().enumerate() {
        let Some(stream) = stream else { continue };
        let tx = tx.clone();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let mut limited = stream.take(MAX_CAPTURE);
            let _ = limited.read_to_end(&mut buf);
            // Drain the rest so the child never blocks on a full pipe.
            let _ = std::io::copy(&mut limited.into_inner(), &mut std::io::sink());
            let _ = tx.send((i, buf));
        });
    }
    drop(tx);

    let mut outputs: [Option<Vec<u8>>; 2] = [None, None];
    let mut exited = false;
    loop {
        if !exited {
            match child.try_wait() {
                Ok(Some(_)) => exited = true,
                Ok(None) => {}
                Err(_) => break,
            }
        }
        if exited && outputs.iter().all(Option::is_some) {
            let [out, err] = outputs;
            return Some((out.unwrap_or_default(), err.unwrap_or_default()));
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let step = (deadline - now).min(Duration::from_millis(5));
        match rx.recv_timeout(step) {
            Ok((i, buf)) => outputs[i] = Some(buf),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Both readers are done; anything not received was never sent.
                for o in &mut outputs {
                    o.get_or_insert_with(Vec::new);
                }
            }
        }
    }
    // SAFETY: kill(2) on the process group we created; no memory is involved.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_ms: u64) -> Option<(Vec<u8>, Vec<u8>)> {
        let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
        run_capture(
            &argv,
            &[("PATH", "/usr/bin:/bin")],
            Duration::from_millis(timeout_ms),
        )
    }

    #[test]
    fn captures_both_streams() {
        let (out, err) = sh("echo out; echo err >&2; exit 3", 5000).unwrap();
        assert_eq!(out, b"out\n");
        assert_eq!(err, b"err\n");
    }

    #[test]
    fn env_is_exactly_what_was_given() {
        let (out, _) = sh("echo \"$PATH|${HOME-unset}\"", 5000).unwrap();
        assert_eq!(out, b"/usr/bin:/bin|unset\n");
    }

    #[test]
    fn times_out_and_kills_the_group() {
        let start = Instant::now();
        assert!(sh("sleep 30 & sleep 30", 300).is_none());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn missing_program_is_none() {
        let argv = vec!["/nonexistent/prog".to_owned()];
        assert!(run_capture(&argv, &[], Duration::from_secs(1)).is_none());
        assert!(run_capture(&[], &[], Duration::from_secs(1)).is_none());
    }
}
