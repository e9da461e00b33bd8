//! The compile cache: a compiled language's program is compiled once per (scope, language,
//! version, compiler command and environment, source and extra files); later runs with the same
//! inputs get the compiler's output files written into their fresh workspace instead of running
//! the compiler again.
//!
//! * **Written only by the server.** An entry is the set of regular files the compile step
//!   created or changed in the workspace, read out by descriptor (never following a link, as
//!   the program's uid) and stored in a root-only host directory that no jail can see. A run
//!   gets copies in its own workspace; nothing it does reaches the cache.
//! * **Scoped.** Keys include a scope (the server uses the tenant), so whether a program was
//!   compiled before (a timing difference) is never visible to another tenant.
//! * **Only fresh workspaces.** Runs in a session's jail (whose workspace holds earlier files
//!   that may change what the compiler does) neither use nor fill the cache.
//! * **Deterministic inputs only.** Sources mentioning `__DATE__`, `__TIME__` or
//!   `__TIMESTAMP__` are never cached (their output depends on when they were compiled).
//! * **Bounded.** Entries are capped in size and the whole cache in bytes; the least recently
//!   used entries are removed first.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::CompileResult;

/// Largest entry (the compiler's output files together), bytes.
pub const MAX_ENTRY_BYTES: u64 = 64 << 20;
/// Most files in one entry.
pub const MAX_ENTRY_FILES: usize = 256;

/// Everything that determines what a compile step produces.
#[derive(Debug, Clone)]
pub struct KeyInputs<'a> {
    pub scope: &'a str,
    pub language: &'a str,
    pub version: &'a str,
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub files: &'a [(&'a str, &'a [u8])],
}

/// A cache key: the SHA-256 of the inputs, in hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    /// The key of `inputs`, or `None` when their output would not be deterministic.
    pub fn of(inputs: &KeyInputs<'_>) -> Option<Key> {
        const TIME_MACROS: [&[u8]; 3] = [b"__DATE__", b"__TIME__", b"__TIMESTAMP__"];
        for (_, data) in inputs.files {
            if TIME_MACROS
                .iter()
                .any(|m| data.windows(m.len()).any(|w| w == *m))
            {
                return None;
            }
        }
        let mut h = Sha256::new();
        // Every field is length-prefixed, so no two different inputs hash the same bytes.
        let mut put = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        put(b"runcell compile cache v1");
        put(inputs.scope.as_bytes());
        put(inputs.language.as_bytes());
        put(inputs.version.as_bytes());
        put(&(inputs.argv.len() as u64).to_le_bytes());
        for a in inputs.argv {
            put(a.as_bytes());
        }
        let mut env: Vec<&(String, String)> = inputs.env.iter().collect();
        env.sort();
        put(&(env.len() as u64).to_le_bytes());
        for (k, v) in env {
            put(k.as_bytes());
            put(v.as_bytes());
        }
        let mut files: Vec<&(&str, &[u8])> = inputs.files.iter().collect();
        files.sort_by(|a, b| a.0.cmp(b.0));
        put(&(files.len() as u64).to_le_bytes());
        for (name, data) in files {
            put(name.as_bytes());
            put(data);
        }
        let digest = h.finalize();
        Some(Key(digest.iter().map(|b| format!("{b:02x}")).collect()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One output file of a compile step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedFile {
    /// Path relative to the workspace.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    #[serde(skip)]
    pub data: Vec<u8>,
}

/// What a hit gives back: the files and the compile result that produced them.
#[derive(Debug, Clone)]
pub struct Entry {
    pub files: Vec<CachedFile>,
    pub compile: CompileResult,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    files: Vec<CachedFile>,
    compile: CompileResult,
}

/// The cache directory and its budget.
#[derive(Debug)]
pub struct CompileCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Serializes inserts and evictions (reads need no lock: entries appear by rename).
    write: Mutex<()>,
}

impl CompileCache {
    /// A cache in `dir` (created 0700) of at most `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<CompileCache> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            max_bytes,
            write: Mutex::new(()),
        })
    }

    fn entry_dir(&self, key: &Key) -> PathBuf {
        self.dir.join(key.as_str())
    }

    /// The entry of `key`, if there is a complete one.
    pub fn get(&self, key: &Key) -> Option<Entry> {
        let dir = self.entry_dir(key);
        let manifest: Manifest =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()?;
        let mut files = Vec::with_capacity(manifest.files.len());
        for (i, f) in manifest.files.into_iter().enumerate() {
            let data = std::fs::read(dir.join(format!("{i}.bin"))).ok()?;
            files.push(CachedFile { data, ..f });
        }
        // Most recently used first when evicting.
        let _ = std::fs::File::open(dir.join("manifest.json"))
            .and_then(|f| f.set_modified(SystemTime::now()));
        Some(Entry {
            files,
            compile: manifest.compile,
        })
    }

    /// Stores an entry (an existing one of the same key is kept), then evicts the least
    /// recently used entries beyond the budget. Entries larger than [`MAX_ENTRY_BYTES`] or
    /// with more than [`MAX_ENTRY_FILES`] files are not stored.
    pub fn put(&self, key: &Key, entry: &Entry) -> std::io::Result<bool> {
        let size: u64 = entry.files.iter().map(|f| f.data.len() as u64).sum();
        if size > MAX_ENTRY_BYTES || entry.files.len() > MAX_ENTRY_FILES || size > self.max_bytes {
            return Ok(false);
        }
        let _g = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let dest = self.entry_dir(key);
        if dest.exists() {
            return Ok(false);
        }
        let tmp = self
            .dir
            .join(format!(".tmp-{}-{}", key.as_str(), std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::DirBuilder::new().mode(0o700).create(&tmp)?;
        let written = (|| {
            for (i, f) in entry.files.iter().enumerate() {
                write_new(&tmp.join(format!("{i}.bin")), &f.data)?;
            }
            let manifest = Manifest {
                files: entry.files.clone(),
                compile: entry.compile.clone(),
            };
            let text = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;
            // The manifest last: an entry without one is incomplete and never read.
            write_new(&tmp.join("manifest.json"), &text)
        })();
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &dest)) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        self.evict()?;
        Ok(true)
    }

    /// Removes least recently used entries until the cache fits its budget.
    fn evict(&self) -> std::io::Result<()> {
        let mut entries = Vec::new();
        let mut total = 0u64;
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            let path = e.path();
            let name = e.file_name();
            if name.to_string_lossy().starts_with(".tmp-") {
                continue;
            }
            let mut size = 0u64;
            for f in std::fs::read_dir(&path)?.flatten() {
                size += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
            let used = std::fs::metadata(path.join("manifest.json"))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            total += size;
            entries.push((used, size, path));
        }
        entries.sort();
        for (_, size, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            std::fs::remove_dir_all(&path)?;
            total -= size;
        }
        Ok(())
    }
}

fn write_new(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(scope: &'a str, files: &'a [(&'a str, &'a [u8])]) -> KeyInputs<'a> {
        KeyInputs {
            scope,
            language: "c",
            version: "12.2",
            argv: &[],
            env: &[],
            files,
        }
    }

    fn compile() -> CompileResult {
        CompileResult {
            stdout: String::new(),
            stderr: "warning: x".into(),
            exit_code: 0,
            execution_time: 0.1,
            cpu_time: 0.1,
            memory_peak_kb: 1,
            limit_exceeded: None,
            cached: false,
        }
    }

    #[test]
    fn keys_cover_every_input_and_refuse_time_macros() {
        let a = Key::of(&inputs("t1", &[("main.c", b"int main(){}")])).unwrap();
        assert_eq!(
            a,
            Key::of(&inputs("t1", &[("main.c", b"int main(){}")])).unwrap()
        );
        assert_ne!(
            a,
            Key::of(&inputs("t2", &[("main.c", b"int main(){}")])).unwrap()
        );
        assert_ne!(
            a,
            Key::of(&inputs("t1", &[("main.c", b"int main(){ }")])).unwrap()
        );
        assert_ne!(
            a,
            Key::of(&inputs("t1", &[("x.c", b"int main(){}")])).unwrap()
        );
        // Moving bytes between a name and its content changes the key.
        assert_ne!(
            Key::of(&inputs("t", &[("ab", b"c")])),
            Key::of(&inputs("t", &[("a", b"bc")]))
        );
        let argv = vec!["gcc".to_string(), "-O2".to_string()];
        let mut i = inputs("t1", &[("main.c", b"int main(){}")]);
        i.argv = &argv;
        assert_ne!(a, Key::of(&i).unwrap());
        assert!(Key::of(&inputs("t", &[("m.c", b"puts(__TIME__);")])).is_none());
        assert!(Key::of(&inputs("t", &[("h.h", b"__DATE__")])).is_none());
    }

    #[test]
    fn entries_round_trip_and_the_oldest_are_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(&dir.path().join("cc"), 2500).unwrap();
        let entry = |n: u8| Entry {
            files: vec![CachedFile {
                path: "main".into(),
                mode: 0o755,
                data: vec![n; 1000],
            }],
            compile: compile(),
        };
        let key = |n: u8| Key::of(&inputs("t", &[("m.c", &[n])])).unwrap();
        assert!(cache.get(&key(1)).is_none());
        assert!(cache.put(&key(1), &entry(1)).unwrap());
        assert!(
            !cache.put(&key(1), &entry(9)).unwrap(),
            "the first entry stays"
        );
        let got = cache.get(&key(1)).unwrap();
        assert_eq!(got.files.len(), 1);
        assert_eq!(got.files[0].path, "main");
        assert_eq!(got.files[0].data, vec![1; 1000]);
        assert_eq!(got.files[0].mode, 0o755);
        assert_eq!(got.compile.stderr, "warning: x");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(cache.put(&key(2), &entry(2)).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Key 1 is used again, so key 2 is the least recently used when 3 arrives.
        assert!(cache.get(&key(1)).is_some());
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(cache.put(&key(3), &entry(3)).unwrap());
        assert!(cache.get(&key(2)).is_none(), "evicted");
        assert!(cache.get(&key(1)).is_some());
        assert!(cache.get(&key(3)).is_some());
        // Too large for the budget: not stored.
        let big = Entry {
            files: vec![CachedFile {
                path: "main".into(),
                mode: 0o755,
                data: vec![0; 3000],
            }],
            compile: compile(),
        };
        assert!(!cache.put(&key(4), &big).unwrap());
        // The directory is private.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("cc"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
