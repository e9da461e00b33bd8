//! `runcell languages` and `runcell runtimes install`.

use anyhow::{Result, bail};
use clap::Args;
use runcell_engine::LimitPolicy;
use runcell_lang::Language;
use runcell_service::languages::describe;

use crate::Global;

#[derive(Args, Debug)]
pub struct LanguagesArgs {
    /// Print JSON (the shape of `GET /api/v1/languages`).
    #[arg(long)]
    pub json: bool,
}

pub fn list(global: &Global, args: LanguagesArgs) -> Result<i32> {
    let registry = global.registry()?;
    // `runcell run` uses the built-in limits; so does this list.
    let policy = LimitPolicy::default();
    let infos = describe(registry.all(), &policy, |l| l.probe_version(), false);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&infos)?);
        return Ok(0);
    }
    println!(
        "{:<12} {:<12} {:<14} {:<10} {:<9} {:<10} ALIASES",
        "ID", "NAME", "VERSION", "INSTALLED", "COMPILED", "PROCESSES"
    );
    for i in &infos {
        println!(
            "{:<12} {:<12} {:<14} {:<10} {:<9} {:<10} {}",
            i.id,
            i.name,
            i.version.as_deref().unwrap_or("-"),
            if i.available { "yes" } else { "no" },
            if i.compiled { "yes" } else { "no" },
            i.default_max_processes,
            i.aliases.join(", ")
        );
    }
    println!(
        "\nPROCESSES: the default limit on processes and threads of a run (languages whose \
         runtime starts threads of its own get more); --max-processes overrides it, up to {}.",
        policy.maxima.max_processes
    );
    Ok(0)
}

pub fn install(global: &Global, names: &[String]) -> Result<i32> {
    let registry = global.registry()?;
    let langs: Vec<&Language> = if names.is_empty() {
        registry.all().iter().collect()
    } else {
        let mut out = Vec::new();
        for n in names {
            match registry.resolve(n) {
                Some(l) => out.push(l),
                None => bail!(
                    "unknown language {n:?}; known: {}",
                    registry
                        .all()
                        .iter()
                        .map(|l| l.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        out
    };
    let r = runcell_lang::install::install(&langs, &global.prefix())?;
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(" ")
        }
    };
    eprintln!(
        "runcell: Debian packages installed: {}; already present: {}",
        list(&r.debian_installed),
        list(&r.debian_present)
    );
    eprintln!(
        "runcell: pip packages in {}/venv installed: {}; already present: {}",
        global.prefix().display(),
        list(&r.pip_installed),
        list(&r.pip_present)
    );
    if !r.unavailable.is_empty() {
        bail!("still not installed: {}", r.unavailable.join(", "));
    }
    Ok(0)
}
