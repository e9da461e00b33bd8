//! Warm interpreters: for languages that declare one (`[warm]` in their TOML), a filler thread
//! keeps a few jails prepared *with the interpreter already started in them*, waiting on
//! standard input for the run's command line. A run that such a jail can serve (the same
//! limits, environment and step as its cold run would get) takes one, writes its files, hands
//! the waiting process off (measurements and the wall-time limit start then) and sends the
//! command line and its standard input; the interpreter then runs the program as the cold
//! command would.
//!
//! The isolation is the cold path's by construction: the interpreter was started in the run's
//! own jail (namespaces, cgroup, uid, seccomp, Landlock, rlimits, no_new_privs) by the same
//! step code, before any user input existed, and the jail serves one run only, then is
//! destroyed.
//!
//! Where the language has a zygote (`warm.zygote_library`), a warm jail is a fork of it and
//! its interpreter is the zygote's, already initialized (`Start::preloaded`): no interpreter
//! start at all, so a jail is quick enough to make on the request's path when none is ready.
//! Either way the jail is prepared and its step started in one go
//! (`Spawner::prepare_and_start`: the start request waits on the agent's socket until the
//! jail is ready). The jail and step are built by the same code; what
//! the fork shares with its siblings (the zygote's copy-on-write memory: address layout, hash
//! seed) is in docs/security.md. Without a zygote nothing is shared between runs.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use runcell_jail::{
    CgroupLimits, Jail, JailConfig, JailError, OutputTarget, Process, ProcessSpec, Spawner, Start,
    StdinSource, ZygoteSpec,
};

/// A jail with an interpreter waiting in it.
pub(crate) struct Warm {
    pub jail: Jail,
    pub process: Process,
    /// The write end of the interpreter's standard input.
    pub input: File,
    /// Whether the interpreter is a zygote's fork.
    pub preloaded: bool,
    /// Whether the run's input follows the header in the pipe (set when taken).
    pub stdin_pipe: bool,
}

/// A language with a warm interpreter: its step (argv = its warm command), as a default run
/// gets it, and its zygote if it has one.
pub(crate) struct WarmLang {
    pub lang: String,
    pub spec: ProcessSpec,
    pub zygote: Option<Zygote>,
}

/// A language's zygote, renewed every `max_forks` forks or `max_age` (a fresh hash seed and
/// address layout per generation) and restarted if it dies. The old one is stopped by the
/// spawner once its last jail is gone.
pub(crate) struct Zygote {
    spec: ZygoteSpec,
    max_forks: u64,
    max_age: Duration,
    current: Mutex<Generation>,
}

struct Generation {
    /// The zygote forked from now; `None` after it died or failed to start.
    id: Option<u64>,
    forks: u64,
    started: Instant,
    /// Zygotes started, this one included.
    count: u64,
}

impl Zygote {
    /// A zygote already started as `id`.
    pub fn new(spec: ZygoteSpec, id: u64, max_forks: u64, max_age: Duration) -> Zygote {
        Zygote {
            spec,
            max_forks: max_forks.max(1),
            max_age,
            current: Mutex::new(Generation {
                id: Some(id),
                forks: 0,
                started: Instant::now(),
                count: 1,
            }),
        }
    }

    /// Zygotes started for this language so far.
    pub fn generations(&self) -> u64 {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).count
    }

    /// The zygote to fork the next jail from (counting that fork): the current one, or a new
    /// one when it is used up, too old or gone. `None` if none can start (retried at most
    /// every few seconds; runs then take another path).
    fn next(&self, spawner: &Spawner) -> Option<u64> {
        let mut g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = g.forks < self.max_forks && g.started.elapsed() < self.max_age;
        if let (Some(id), true) = (g.id, fresh) {
            g.forks += 1;
            return Some(id);
        }
        if g.id.is_none() && g.started.elapsed() < Duration::from_secs(5) {
            return None;
        }
        if let Some(old) = g.id.take() {
            let _ = spawner.stop_zygote(old);
        }
        g.started = Instant::now();
        g.forks = 0;
        match spawner.start_zygote(&self.spec) {
            Ok((id, _)) => {
                g.id = Some(id);
                g.forks = 1;
                g.count += 1;
                Some(id)
            }
            Err(e) => {
                tracing::warn!("restarting a zygote failed: {e}");
                None
            }
        }
    }

    /// The zygote `id` could not fork a jail: if it is still the current one, it is replaced
    /// at the next fork.
    fn failed(&self, spawner: &Spawner, id: u64) {
        let mut g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if g.id == Some(id) {
            g.id = None;
            g.started = Instant::now() - Duration::from_secs(5);
            let _ = spawner.stop_zygote(id);
        }
    }
}

/// The command line header a warm interpreter reads first: a 4-byte big-endian length, then
/// the arguments joined by NUL bytes (see `runcell_lang::WarmSpec`).
pub(crate) fn header(argv: &[String]) -> Vec<u8> {
    let joined = argv.join("\0");
    let mut h = Vec::with_capacity(4 + joined.len());
    h.extend_from_slice(&(joined.len() as u32).to_be_bytes());
    h.extend_from_slice(joined.as_bytes());
    h
}

struct Inner {
    spawner: Spawner,
    config: JailConfig,
    limits: CgroupLimits,
    target: usize,
    specs: Vec<WarmLang>,
    ready: Mutex<HashMap<String, VecDeque<Warm>>>,
    wake: Condvar,
    stop: AtomicBool,
}

/// Warm interpreters per language, refilled in the background.
pub(crate) struct WarmPool {
    inner: Arc<Inner>,
}

impl WarmPool {
    /// Keeps `target` warm jails per language of `specs`; `None` when there is nothing to do.
    pub fn new(
        spawner: Spawner,
        config: JailConfig,
        limits: CgroupLimits,
        target: usize,
        specs: Vec<WarmLang>,
    ) -> Option<WarmPool> {
        if target == 0 || specs.is_empty() {
            return None;
        }
        let inner = Arc::new(Inner {
            spawner,
            config,
            limits,
            target,
            specs,
            ready: Mutex::new(HashMap::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let filler = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("runcell-warm-pool".into())
            .spawn(move || fill(&filler))
            .expect("start the warm pool thread");
        Some(WarmPool { inner })
    }

    /// The step a warm interpreter of `lang` runs in, if the language has one here.
    pub fn spec(&self, lang: &str) -> Option<&ProcessSpec> {
        self.lang(lang).map(|w| &w.spec)
    }

    fn lang(&self, lang: &str) -> Option<&WarmLang> {
        self.inner.specs.iter().find(|w| w.lang == lang)
    }

    /// A warm interpreter of `lang`: one that is ready, else, for a language with a zygote,
    /// one forked now (a jail and no interpreter start: cheaper than a cold start).
    pub fn take(&self, lang: &str) -> Option<Warm> {
        if let Some(w) = self.take_ready(lang) {
            return Some(w);
        }
        let l = self.lang(lang)?;
        l.zygote.as_ref()?;
        match start(&self.inner, l, false) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("forking a {lang} interpreter failed: {e}");
                None
            }
        }
    }

    /// A warm interpreter of `lang`, if one is ready (never waits).
    fn take_ready(&self, lang: &str) -> Option<Warm> {
        let mut ready = self.inner.ready.lock().unwrap_or_else(|p| p.into_inner());
        let q = ready.get_mut(lang)?;
        let mut found = None;
        while let Some(w) = q.pop_front() {
            // One that died waiting (its zygote died, say) is thrown away.
            if w.process.has_exited() || !w.jail.is_alive() {
                continue;
            }
            found = Some(w);
            break;
        }
        drop(ready);
        self.inner.wake.notify_one();
        found
    }

    /// Zygotes started so far, all languages together.
    pub fn zygotes_started(&self) -> u64 {
        self.inner
            .specs
            .iter()
            .filter_map(|w| w.zygote.as_ref())
            .map(Zygote::generations)
            .sum()
    }

    /// Warm interpreters ready, all languages together.
    pub fn ready(&self) -> usize {
        self.inner
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(VecDeque::len)
            .sum()
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.wake.notify_all();
        self.inner
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Prepares a jail (forked from the language's zygote if it has one) and starts its warm
/// step in it, reading from a pipe whose write end is returned. A `background` jail (the
/// pool's, for later) is prepared at the lowest CPU weight, so that it never slows a run in
/// progress; taking it sets the run's limits, and with them the normal weight.
fn start(inner: &Inner, lang: &WarmLang, background: bool) -> Result<Warm, JailError> {
    // Without a zygote now, the interpreter starts in its jail.
    let zygote = lang
        .zygote
        .as_ref()
        .and_then(|z| z.next(&inner.spawner).map(|id| (z, id)));
    let (r, w) = std::io::pipe().map_err(|e| JailError::Io {
        what: "warm interpreter's stdin".into(),
        source: e,
    })?;
    // Readable by the jail's user, so that a program whose input follows the header in this
    // pipe can open it again as /dev/stdin, as it can a cold run's input.
    {
        use std::os::fd::AsRawFd;
        // SAFETY: fchmod on the pipe's read end, a descriptor we own.
        if unsafe { libc::fchmod(r.as_raw_fd(), 0o644) } != 0 {
            return Err(JailError::Io {
                what: "make the warm interpreter's stdin readable".into(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    // A warm jail serves one run: its program is the jail's last.
    let how = Start {
        preloaded: zygote.is_some(),
        last: true,
    };
    // The start is queued while the jail is prepared (one hand-off to the agent and back
    // fewer); the interpreter starts once the jail is ready, as it would otherwise.
    let (jail, process) = inner
        .spawner
        .prepare_and_start(
            zygote.map(|(_, id)| id),
            &inner.config,
            &CgroupLimits {
                background,
                ..inner.limits
            },
            how,
            &lang.spec,
            StdinSource::Fd(r.into()),
            OutputTarget::Pipe,
            OutputTarget::Pipe,
        )
        .inspect_err(|e| {
            // Every slot taken is not the zygote's fault: replacing it would only add work.
            if let Some((z, id)) = zygote
                && !matches!(e, JailError::NoSlot(_))
            {
                z.failed(&inner.spawner, id);
            }
        })?;
    Ok(Warm {
        jail,
        process,
        input: File::from(std::os::fd::OwnedFd::from(w)),
        preloaded: zygote.is_some(),
        stdin_pipe: false,
    })
}

fn fill(inner: &Inner) {
    let mut backoff = Duration::from_millis(50);
    loop {
        // The language with the fewest ready, if any is below target.
        let next = {
            let mut ready = inner.ready.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if inner.stop.load(Ordering::SeqCst) {
                    return;
                }
                let short = inner
                    .specs
                    .iter()
                    .enumerate()
                    .map(|(i, w)| (ready.get(&w.lang).map_or(0, VecDeque::len), i))
                    .filter(|(n, _)| *n < inner.target)
                    .min_by_key(|(n, _)| *n)
                    .map(|(_, i)| i);
                match short {
                    Some(x) => break x,
                    None => ready = inner.wake.wait(ready).unwrap_or_else(|p| p.into_inner()),
                }
            }
        };
        let l = &inner.specs[next];
        let lang = l.lang.clone();
        match start(inner, l, true) {
            Ok(w) => {
                backoff = Duration::from_millis(50);
                let mut ready = inner.ready.lock().unwrap_or_else(|p| p.into_inner());
                if inner.stop.load(Ordering::SeqCst) {
                    return;
                }
                ready.entry(lang).or_default().push_back(w);
            }
            Err(e) => {
                // Out of slots or a transient failure: runs take the cold path meanwhile.
                tracing::warn!("starting a warm {lang} interpreter failed: {e}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_the_command_line() {
        let h = header(&["/usr/bin/python3".into(), "main.py".into(), "a b".into()]);
        assert_eq!(&h[..4], &(28u32).to_be_bytes());
        assert_eq!(&h[4..], b"/usr/bin/python3\0main.py\0a b");
    }
}
