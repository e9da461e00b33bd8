//! End-to-end tests of the HTTP API (`API.md` and the seeds it follows), each against its own
//! `runcell serve` child process (see `server.rs`).
//!
//! Needs root and the toolchains, like the CLI tests.

mod auth;
mod cluster;
mod commands;
mod durability;
mod egress;
mod executions;
mod fairness;
mod files;
mod input;
mod judge0;
mod judging;
mod judging_set;
mod multifile;
mod opensandbox;
mod opensandbox_execd;
mod operations;
mod piston;
mod playground;
mod postgres;
mod sandboxes;
mod sandboxes_pause;
mod seeds;
mod warm;
mod webhooks;
