//! The sandbox's limits: what one parse may take from the host.
//!
//! Every limit holds per parse (one plugin instance in its own store), so
//! a misbehaving plugin fails its own job and nothing else. Defaults are sized
//! for the bundled adapters with ample headroom: a legitimate parse never gets
//! near them, a hostile one hits them in well under a second.

use std::time::Duration;

/// Per-parse limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of linear memory, summed over all memories of the plugin's
    /// instance. Default 128 MiB. Bounds what a plugin can make the host
    /// allocate too: everything it returns is copied out of this memory. The
    /// bundled adapters' largest buffers are their 8 MiB record limits.
    pub memory_bytes: usize,
    /// Elements across the plugin's tables. Default 100,000 (a large guest
    /// uses a few thousand).
    pub table_elements: usize,
    /// CPU time one call into the plugin (`open`, `next`, `next-batch`,
    /// `checkpoint`, `describe`) may use, measured on the calling thread.
    /// Default 2 s: producing one record takes microseconds, so only a
    /// runaway loop gets near it. Batches are sized from the time earlier
    /// calls took, to stay far below it (see `Parse::next_batch`). Checked
    /// every [`SandboxConfig::epoch_tick`].
    pub cpu_per_call: Duration,
    /// Wall-clock time one call may take, including time the host spends
    /// reading input for it. Default 10 s. Stops a call the CPU limit cannot
    /// see (a starved thread) and bounds how long a job waits on a plugin.
    pub wall_per_call: Duration,
    /// Bytes of one record's data (text, bytes, key) plus 16 per value.
    /// Default 16 MiB: above the bundled adapters' own record limits, so they
    /// report over-long records as record errors before this trips.
    pub max_record_bytes: usize,
    /// Fields in one layout. Default 65,536.
    pub max_fields: usize,
    /// Layouts one parse may declare. Default 65,536.
    pub max_layouts: usize,
    /// Bytes of field names and kinds over all layouts of a parse. Default
    /// 16 MiB.
    pub max_layout_bytes: usize,
    /// Log bytes kept per parse; later lines are counted and dropped.
    /// Default 64 KiB.
    pub max_log_bytes: usize,
    /// Bytes of the plugin's stdout and stderr kept per parse (where a Rust
    /// plugin's panic message goes); the rest is dropped. Default 16 KiB.
    pub max_stderr_bytes: usize,
    /// Bytes of state in one checkpoint. Default 1 MiB (a CSV header of
    /// thousands of columns fits).
    pub max_checkpoint_bytes: usize,
    /// Bytes of one record error's message kept; longer ones are cut.
    /// Default 4 KiB.
    pub max_message_bytes: usize,
    /// Bytes handed to the plugin per `input.read`. Default 64 KiB: large
    /// enough that the per-call cost vanishes, small enough to stay in cache.
    pub input_chunk_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 128 << 20,
            table_elements: 100_000,
            cpu_per_call: Duration::from_secs(2),
            wall_per_call: Duration::from_secs(10),
            max_record_bytes: 16 << 20,
            max_fields: 65_536,
            max_layouts: 65_536,
            max_layout_bytes: 16 << 20,
            max_log_bytes: 64 << 10,
            max_stderr_bytes: 16 << 10,
            max_checkpoint_bytes: 1 << 20,
            max_message_bytes: 4 << 10,
            input_chunk_bytes: 64 << 10,
        }
    }
}

/// Process-wide sandbox settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Default limits for each parse (a parse may be given others).
    pub limits: Limits,
    /// Bytes of native stack WebAssembly code may use. Default 512 KiB;
    /// deep recursion in a plugin traps with "stack overflow" at this depth
    /// instead of touching the host thread's stack guard.
    pub max_wasm_stack: usize,
    /// How often the epoch advances, which is how often running plugin code
    /// checks its CPU and wall-clock budgets. Default 10 ms: a runaway call
    /// is stopped within a tick of its budget, for a few percent of speed.
    pub epoch_tick: Duration,
    /// Directory for precompiled components, keyed by content digest and
    /// engine build. `None` keeps compiled components in memory only.
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            limits: Limits::default(),
            max_wasm_stack: 512 << 10,
            epoch_tick: Duration::from_millis(10),
            cache_dir: None,
        }
    }
}
