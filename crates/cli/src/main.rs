//! The `runcell` command.

mod bench;
mod bench_cluster;
mod bench_egress;
mod bench_fair;
mod bench_http;
mod bench_judge;
mod bench_sandbox;
mod languages;
mod run;
mod serve;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use runcell_jail::{Spawner, SpawnerCommand, SpawnerOptions};
use runcell_lang::Registry;

/// Runs untrusted code in an isolated jail with hard limits.
#[derive(Parser, Debug)]
#[command(name = "runcell", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options shared by every command.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Read-only prefix holding runtimes that are not Debian packages (a Python venv, Deno);
    /// default /opt/runcell.
    #[arg(long, global = true, env = "RUNCELL_PREFIX")]
    pub prefix: Option<PathBuf>,
    /// Extra directory of language definitions (*.toml); may be repeated.
    #[arg(long = "languages-dir", global = true, env = "RUNCELL_LANGUAGES_DIR")]
    pub languages_dirs: Vec<PathBuf>,
    /// Host directory for the jails' staging mount point and device nodes; default /run/runcell
    /// (jail slots are always claimed in /run/runcell/slots.lock, shared by every runcell on the
    /// host).
    #[arg(long, global = true, env = "RUNCELL_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the HTTP API server (SQLite store under the data directory, or PostgreSQL with
    /// --database-url).
    Serve(serve::ServeArgs),
    /// Run a source file in a jail and print its output; the exit code mirrors the program's.
    Run(run::RunArgs),
    /// List the languages, their versions and whether their toolchains are installed.
    Languages(languages::LanguagesArgs),
    /// Manage language toolchains.
    Runtimes {
        #[command(subcommand)]
        command: RuntimesCommand,
    },
    /// Measure jail overhead against a bare spawn and bubblewrap, in one run.
    Bench(bench::BenchArgs),
    /// Internal: the single-threaded process that creates jails (started by runcell itself).
    #[command(name = "__spawner", hide = true)]
    Spawner,
}

#[derive(Subcommand, Debug)]
enum RuntimesCommand {
    /// Install the toolchains of the given languages (all if none): Debian packages and the
    /// runtime prefix. Safe to run again.
    Install {
        /// Language ids or aliases.
        languages: Vec<String>,
    },
}

impl Global {
    /// The runtime prefix.
    pub fn prefix(&self) -> PathBuf {
        self.prefix
            .clone()
            .unwrap_or_else(|| PathBuf::from("/opt/runcell"))
    }

    pub fn registry(&self) -> Result<Arc<Registry>> {
        Ok(Arc::new(
            Registry::load(&self.prefix(), &self.languages_dirs)
                .context("loading language definitions")?,
        ))
    }

    pub fn spawner(&self) -> Result<Spawner> {
        let exe = std::env::current_exe().context("finding the runcell executable")?;
        let cmd = SpawnerCommand {
            program: exe,
            args: vec!["__spawner".into()],
        };
        let mut opts = SpawnerOptions::default();
        if let Some(d) = &self.state_dir {
            opts.state_dir = d.clone();
        }
        Spawner::launch(&cmd, &opts).context("starting the jail spawner")
    }
}

fn main() {
    // The spawner must stay single-threaded: dispatch to it before anything else.
    if std::env::args_os().nth(1).is_some_and(|a| a == "__spawner") {
        std::process::exit(runcell_jail::spawner_main());
    }
    // So must a zygote, which the spawner starts by executing this binary again.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == runcell_jail::ZYGOTE_ARG)
    {
        std::process::exit(runcell_jail::zygote_main());
    }
    let cli = Cli::parse();
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("runcell: {e:#}");
            125
        }
    };
    std::process::exit(code);
}

fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Serve(args) => serve::serve(&cli.global, args),
        Command::Run(args) => run::run(&cli.global, args),
        Command::Languages(args) => languages::list(&cli.global, args),
        Command::Runtimes {
            command: RuntimesCommand::Install { languages },
        } => languages::install(&cli.global, &languages),
        Command::Bench(args) => bench::bench(&cli.global, args),
        Command::Spawner => Ok(runcell_jail::spawner_main()),
    }
}
