//! Errors of the sandbox, kept apart by whose fault they are: the plugin
//! broke (`PluginFault`), the user's options are wrong (`ConfigError`), the
//! host could not read the input (`Input`), or the job was cancelled.

use std::fmt;
use std::io;

/// What went wrong inside a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FaultKind {
    /// The plugin panicked (its message is kept).
    Panic,
    /// The plugin trapped for another reason (unreachable code, a bad memory
    /// access, calling `exit`).
    Trap,
    /// The plugin recursed past the WebAssembly stack limit.
    StackOverflow,
    /// One call used more CPU time than `Limits::cpu_per_call`.
    CpuBudget,
    /// One call took longer than `Limits::wall_per_call`.
    Deadline,
    /// The plugin needed more memory than `Limits::memory_bytes`.
    OutOfMemory,
    /// The plugin returned something that breaks the contract (a record
    /// with the wrong number of values, an item outside the input ...).
    InvalidOutput,
    /// The component is not a sluice adapter of a version this host speaks,
    /// or needs imports the host does not give.
    IncompatibleInterface,
}

impl FaultKind {
    /// Stable kebab-case name, as in reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Panic => "panic",
            FaultKind::Trap => "trap",
            FaultKind::StackOverflow => "stack-overflow",
            FaultKind::CpuBudget => "cpu-budget",
            FaultKind::Deadline => "deadline",
            FaultKind::OutOfMemory => "out-of-memory",
            FaultKind::InvalidOutput => "invalid-output",
            FaultKind::IncompatibleInterface => "incompatible-interface",
        }
    }

    fn advice(self) -> &'static str {
        match self {
            FaultKind::Panic | FaultKind::Trap | FaultKind::StackOverflow => {
                "this is a bug in the plugin or an input it cannot handle: send the plugin's \
                 author this message and the input around this offset"
            }
            FaultKind::CpuBudget | FaultKind::Deadline => {
                "the plugin is stuck or far too slow on this input; if it is legitimately slow, \
                 raise the per-call time limits"
            }
            FaultKind::OutOfMemory => {
                "the input needs more memory than the plugin may use (a giant record?); split \
                 the input, lower the plugin's own size limits, or raise the memory limit"
            }
            FaultKind::InvalidOutput => {
                "the plugin breaks the adapter contract; report it to the plugin's author"
            }
            FaultKind::IncompatibleInterface => {
                "rebuild the plugin against a supported sluice-sdk, or upgrade sluice"
            }
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A plugin failed: its parse is over, the host and other parses are fine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PluginFault {
    pub kind: FaultKind,
    /// Plugin name from `describe()` (or the file name before it is known).
    pub plugin: String,
    /// Plugin version from `describe()`.
    pub version: String,
    /// SHA-256 of the component, hex.
    pub digest: String,
    /// What the plugin was doing (`open`, `next`, `checkpoint`, `describe`).
    pub call: String,
    /// Ordinal of the item being produced when it failed.
    pub ordinal: u64,
    /// Input offset reached: the end of the last good item.
    pub offset: u64,
    /// What happened, in detail.
    pub detail: String,
    /// The plugin's panic message, when it panicked.
    pub panic_message: Option<String>,
}

impl fmt::Display for PluginFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self.digest.get(..12).unwrap_or(&self.digest);
        write!(
            f,
            "plugin {} {} (sha256 {short}) failed with {} in {}() at record {}, byte offset {}: {}",
            self.plugin, self.version, self.kind, self.call, self.ordinal, self.offset, self.detail
        )?;
        if let Some(msg) = &self.panic_message {
            write!(f, "; panic message: {msg:?}")?;
        }
        write!(f, "; {}", self.kind.advice())
    }
}

impl std::error::Error for PluginFault {}

/// The plugin refused the options it was opened with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin} refused its options: {}{message}", option.as_ref().map(|o| format!("option {o:?}: ")).unwrap_or_default())]
pub struct ConfigError {
    pub plugin: String,
    pub option: Option<String>,
    pub message: String,
}

impl From<PluginFault> for ParseError {
    fn from(f: PluginFault) -> Self {
        ParseError::Fault(Box::new(f))
    }
}

/// Why a parse stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The plugin failed.
    #[error(transparent)]
    Fault(Box<PluginFault>),
    /// The plugin refused its options (only from `open`).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The host could not read the input at this offset.
    #[error(
        "cannot read the input at byte offset {offset}: {source}; check the spooled file and the disk"
    )]
    Input { offset: u64, source: io::Error },
    /// The parse was cancelled.
    #[error("the parse was cancelled")]
    Cancelled,
    /// `next` was called after the parse ended or failed.
    #[error("the parse is over; open a new one")]
    Finished,
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Not a WebAssembly component, or one wasmtime cannot compile.
    #[error("{what} is not a valid WebAssembly component: {detail}")]
    Invalid { what: String, detail: String },
    /// The component does not speak a supported adapter interface.
    #[error("{what} cannot be used: {detail}; {}", FaultKind::IncompatibleInterface.advice())]
    Incompatible { what: String, detail: String },
    /// `describe()` failed or returned nonsense.
    #[error("{what}: describe() failed: {source}")]
    Describe {
        what: String,
        #[source]
        source: Box<PluginFault>,
    },
}
