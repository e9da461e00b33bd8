//! Shell commands in a sandbox (foreground, streamed; or background, with a log read by
//! cursor) and bash sessions whose working directory and exported variables persist.

use std::sync::Arc;
use std::time::Duration;

use runcell_sandbox::{Command, CommandSpec};

use super::Live;
use crate::{Error, Kind, Result, Service};

/// A command to start.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    /// `bash -c` text: non-empty, no NUL bytes.
    pub command: String,
    pub cwd: Option<String>,
    pub envs: Vec<(String, String)>,
    /// None: no timeout.
    pub timeout: Option<Duration>,
    pub background: bool,
}

fn check_command(command: &str) -> Result<()> {
    if command.trim().is_empty() || command.contains('\0') {
        return Err(Error::invalid(
            "INVALID_REQUEST_BODY",
            "command is required: a non-empty string without NUL bytes",
        ));
    }
    Ok(())
}

fn command_not_found(id: &str) -> Error {
    Error::new(
        Kind::NotFound,
        "COMMAND_NOT_FOUND",
        format!("command not found: {id}"),
    )
}

fn session_not_found(id: &str) -> Error {
    Error::new(
        Kind::NotFound,
        "SESSION_NOT_FOUND",
        format!("session {id} not found"),
    )
}

impl Service {
    /// Starts a command in the sandbox.
    pub fn start_command(&self, live: &Live, req: CommandRequest) -> Result<Arc<Command>> {
        check_command(&req.command)?;
        let spec = CommandSpec {
            command: req.command,
            cwd: req.cwd,
            envs: req.envs,
            timeout: req.timeout,
            background: req.background,
        };
        Ok(live.sandbox.start_command(spec)?)
    }

    /// A command of the sandbox (running or finished).
    pub fn command(&self, live: &Live, id: &str) -> Result<Arc<Command>> {
        live.sandbox
            .command(id)
            .ok_or_else(|| command_not_found(id))
    }

    /// Creates a bash session starting in `cwd` (default: the workspace); returns its id.
    pub fn create_session(&self, live: &Live, cwd: Option<&str>) -> Result<String> {
        Ok(live.sandbox.create_session(cwd)?.id.clone())
    }

    /// Runs a command in a bash session (one at a time per session; standard error joins
    /// standard output).
    pub async fn run_in_session(
        &self,
        live: &Live,
        session_id: &str,
        command: &str,
        cwd: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Arc<Command>> {
        let session = live
            .sandbox
            .session(session_id)
            .ok_or_else(|| session_not_found(session_id))?;
        check_command(command)?;
        Ok(live
            .sandbox
            .run_in_session(&session, command, cwd, timeout)
            .await?)
    }

    /// Deletes a bash session.
    pub fn delete_session(&self, live: &Live, session_id: &str) -> Result<()> {
        if live.sandbox.delete_session(session_id) {
            Ok(())
        } else {
            Err(session_not_found(session_id))
        }
    }
}
