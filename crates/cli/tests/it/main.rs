//! One integration test binary for the runcell binary: the CLI and the HTTP API.

mod api;
mod browser;
mod cli;
mod contexts;
mod fakenet;
mod pg;
mod server;
