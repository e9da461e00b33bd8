//! The record a step's init writes on its status pipe.
//!
//! Only `core`: this file is also compiled into the step init (`stepinit/main.rs`), a static
//! binary without the standard library, so both sides share one layout.

/// Kinds of [`StepRecord`].
pub const RECORD_STARTED: u32 = 1;
pub const RECORD_FINISHED: u32 = 2;

/// What a step's init process reports on its status pipe: once when the program is forked,
/// once when it has exited. Written with one `write` (atomic: smaller than `PIPE_BUF`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepRecord {
    pub kind: u32,
    /// When the program could not be started: which stage failed (see `agent::Stage`).
    pub stage: u32,
    /// errno of that failure, or 0.
    pub errno: i32,
    /// `waitpid` status of the program (`RECORD_FINISHED` only).
    pub wait_status: i32,
    /// `CLOCK_MONOTONIC` nanoseconds: fork time (`RECORD_STARTED`) or exit time.
    pub time_ns: u64,
}

impl StepRecord {
    pub const SIZE: usize = 24;

    pub fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.kind.to_ne_bytes());
        b[4..8].copy_from_slice(&self.stage.to_ne_bytes());
        b[8..12].copy_from_slice(&self.errno.to_ne_bytes());
        b[12..16].copy_from_slice(&self.wait_status.to_ne_bytes());
        b[16..24].copy_from_slice(&self.time_ns.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        StepRecord {
            kind: u32_at(0),
            stage: u32_at(4),
            errno: u32_at(8) as i32,
            wait_status: u32_at(12) as i32,
            time_ns: u64::from_ne_bytes(b[16..24].try_into().unwrap_or([0; 8])),
        }
    }
}
