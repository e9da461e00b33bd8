//! The languages of this server, as `GET /api/v1/languages` and the CLI describe them.

use runcell_engine::{Engine, LimitPolicy};
use runcell_lang::Language;
use serde::{Deserialize, Serialize};

/// A language, its installed version and what runs of it get.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LanguageInfo {
    pub id: String,
    pub name: String,
    /// Installed version (null when not installed).
    pub version: Option<String>,
    pub aliases: Vec<String>,
    pub extensions: Vec<String>,
    /// Whether the toolchain is installed on this server.
    pub available: bool,
    /// Whether runs have a compile step.
    pub compiled: bool,
    /// Whether stateful code contexts (sandboxes) support the language.
    pub contexts: bool,
    /// The `max_processes` (processes and threads) a run of this language gets when it asks
    /// for none: higher for runtimes that start threads of their own (Go, Java), never above
    /// the server's maximum.
    pub default_max_processes: u64,
}

/// Describes languages, probing their versions in parallel (some toolchains take a while to
/// print one) with `version`; default process limits are `policy`'s. `contexts` says whether
/// this process offers sandboxes (the CLI does not).
pub fn describe(
    langs: &[Language],
    policy: &LimitPolicy,
    version: impl Fn(&Language) -> Option<String> + Sync,
    contexts: bool,
) -> Vec<LanguageInfo> {
    let version = &version;
    std::thread::scope(|s| {
        let handles: Vec<_> = langs
            .iter()
            .map(|l| {
                s.spawn(move || {
                    let available = l.available();
                    LanguageInfo {
                        id: l.id.clone(),
                        name: l.name.clone(),
                        version: if available { version(l) } else { None },
                        aliases: l.aliases.clone(),
                        extensions: l.extensions.clone(),
                        available,
                        compiled: l.is_compiled(),
                        contexts: contexts && l.contexts_available(),
                        default_max_processes: policy.default_processes(l.run.max_processes),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// The languages of an engine, as the server lists them.
pub fn of_engine(engine: &Engine) -> Vec<LanguageInfo> {
    describe(
        engine.registry().all(),
        &engine.config().limits,
        |l| engine.version_of(l),
        true,
    )
}
