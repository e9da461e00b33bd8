//! One integration test binary for the runcell binary: the CLI and the HTTP API.

mod cli;
