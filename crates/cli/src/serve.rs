//! `runcell serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use runcell_jail::{Spawner, SpawnerCommand, SpawnerOptions};
use runcell_lang::Registry;
use runcell_service::{Config, Service};

use crate::Global;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8002).
    #[arg(long, env = "RUNCELL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the SQLite database and the generated API key (default /var/lib/runcell).
    #[arg(long, env = "RUNCELL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep the records in this PostgreSQL database (postgres://user:password@host:port/db)
    /// instead of the SQLite database in the data directory.
    #[arg(long, env = "RUNCELL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// TOML configuration file (see docs/configuration.md); environment variables and flags
    /// override it.
    #[arg(long, env = "RUNCELL_CONFIG")]
    pub config: Option<PathBuf>,
}

pub fn serve(global: &Global, args: ServeArgs) -> Result<i32> {
    let mut config = Config::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(url) = args.database_url.filter(|u| !u.trim().is_empty()) {
        config.database_url = Some(url.trim().to_string());
    }
    if let Some(p) = &global.prefix {
        config.engine.prefix = p.clone();
    }
    if let Some(d) = &global.state_dir {
        config.state_dir = d.clone();
    }
    config
        .languages_dirs
        .extend(global.languages_dirs.iter().cloned());
    config.validate()?;
    let registry = Arc::new(
        Registry::load(&config.engine.prefix, &config.languages_dirs)
            .context("loading language definitions")?,
    );
    // The spawner starts before any thread does.
    let exe = std::env::current_exe().context("finding the runcell executable")?;
    let spawner = Spawner::launch(
        &SpawnerCommand {
            program: exe,
            args: vec!["__spawner".into()],
        },
        &SpawnerOptions {
            state_dir: config.state_dir.clone(),
            ..SpawnerOptions::default()
        },
    )
    .context("starting the jail spawner")?;
    eprintln!("runcell: jails use {}", spawner.cgroup_place());
    confine_server_threads(&config.server_cpus)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUNCELL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("runcell")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        runcell_server::install_crypto_provider();
        let callbacks = runcell_server::callback_formats(&config);
        let svc = Service::start_with(config, spawner, registry, callbacks).await?;
        runcell_server::serve(svc).await?;
        anyhow::Ok(())
    })?;
    Ok(0)
}

/// Keeps the server's own threads, all started after this, on the CPUs `server_cpus` names
/// (the spawner, started before, and its zygotes and jails keep every CPU): their hand-offs
/// then wake threads on the same CPU (runcell_jail::cpus).
fn confine_server_threads(spec: &str) -> Result<()> {
    use runcell_jail::cpus;
    // What the jails have, before this thread's set shrinks (sizes, usage shares).
    let _ = cpus::host_cpus();
    let allowed = cpus::allowed_cpus().context("reading the CPUs this process may use")?;
    match cpus::server_cpus(spec, &allowed).map_err(anyhow::Error::msg)? {
        Some(chosen) => {
            cpus::confine_to(&chosen).context("keeping the server's threads on their CPUs")?;
            eprintln!(
                "runcell: the server's threads run on CPU {} of {} (server_cpus = \"{}\"); jails on all",
                cpus::format_cpu_list(&chosen),
                cpus::format_cpu_list(&allowed),
                spec.trim()
            );
        }
        None => eprintln!(
            "runcell: the server's threads run on every CPU ({})",
            cpus::format_cpu_list(&allowed)
        ),
    }
    Ok(())
}
