//! Write [sluice](https://example.invalid/sluice) format adapters in plain Rust.
//!
//! A format adapter turns the bytes of an upload into records, one at a time.
//! sluice runs it as a sandboxed WebAssembly component: it reads its input in
//! chunks the host hands out, may write bounded log lines, and can do nothing
//! else (no files, network, environment or clock). This crate hides the
//! component plumbing: implement [`Adapter`], call [`export_adapter!`] once,
//! and build with `cargo build --target wasm32-wasip2 --release`.
//!
//! The same code compiles natively, so [`testing`] runs an adapter over bytes
//! in an ordinary `cargo test`, with chunk boundaries varied and every
//! checkpoint resumed, without WebAssembly.
//!
//! # A complete adapter
//!
//! This is `plugins/template` in the sluice repository, built into a
//! component and tested in CI. It yields one record per non-empty line, with
//! the line's text as its only field:
//!
//! ```
#![doc = include_str!("../../plugins/template/src/lib.rs")]
//! ```
//!
//! # The record shape, and why
//!
//! Crossing the sandbox boundary costs per string, not per call, so a
//! [`Record`] keeps all its text in one buffer and field names live in a
//! [`Layout`] sent once per parse. Build the layout once (for example from a
//! CSV header) and every record with it.
//!
//! # Rules the host enforces
//!
//! Items come in input order, never overlap, and span at least one byte
//! ([`Location`]); ordinals start at 1 and have no gaps; a record has one
//! value per layout field. A parse that breaks these rules fails as a whole
//! with "invalid output". [`testing::Harness::check`] checks the same rules.

// The bindings' generated paths name this crate `sluice_sdk`, also from
// inside it.
extern crate self as sluice_sdk;

mod checkpoint;
mod input;
mod log;
mod options;
mod record;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod text;

#[cfg(target_arch = "wasm32")]
mod glue;

pub use checkpoint::{BadState, Checkpoint, StateReader, StateWriter};
pub use input::Input;
pub use log::{Level, log};
pub use options::{AdapterInfo, ConfigError, OptionInfo, Options};
pub use record::{Item, Layout, Location, Record, RecordError, Value, first_duplicate};
pub use text::{ByteOrderMark, byte_order_mark, count_line_breaks};

/// Version of the WIT contract (`sluice:adapter`) this SDK builds against.
pub const INTERFACE_VERSION: &str = "0.2.1";

/// A format adapter.
///
/// One value of the implementing type parses one input. The host creates it
/// with [`Adapter::open`], then calls [`Adapter::next`] until it returns
/// [`Item::End`] or [`Item::Fatal`], asking for a [`Adapter::checkpoint`]
/// between items when it wants to be able to resume.
pub trait Adapter: Sized + 'static {
    /// Name, version, what the adapter handles and the options it accepts.
    /// Must not depend on input.
    fn describe() -> AdapterInfo;

    /// Start a parse of `input` with `options` (already checked against
    /// [`AdapterInfo::options`]). With `resume`, continue right after the
    /// item at which that checkpoint was taken: `input` then starts at the
    /// checkpoint's offset.
    fn open(
        input: Input,
        options: &Options,
        resume: Option<Checkpoint>,
    ) -> Result<Self, ConfigError>;

    /// The next item. After [`Item::End`] or [`Item::Fatal`] it is not
    /// called again.
    fn next(&mut self) -> Item;

    /// A checkpoint for the position right after the last item returned, or
    /// `None` if the adapter cannot resume. Set
    /// [`AdapterInfo::resumable`] accordingly.
    fn checkpoint(&self) -> Option<Checkpoint> {
        None
    }
}

/// Error codes shared by sluice's adapters. An adapter may define its own;
/// codes are stable identifiers users match on, so never change the meaning
/// of a released one.
pub mod codes {
    /// Text that is not valid UTF-8.
    pub const INVALID_UTF8: &str = "invalid-utf8";
    /// A NUL byte where the format does not allow one.
    pub const NUL_BYTE: &str = "nul-byte";
    /// A row with more or fewer fields than the header.
    pub const RAGGED_ROW: &str = "ragged-row";
    /// A quoted field that never ends.
    pub const UNTERMINATED_QUOTE: &str = "unterminated-quote";
    /// A field longer than the adapter's limit.
    pub const FIELD_TOO_LONG: &str = "field-too-long";
    /// A record longer than the adapter's limit.
    pub const RECORD_TOO_LONG: &str = "record-too-long";
    /// More fields than the adapter's limit.
    pub const TOO_MANY_FIELDS: &str = "too-many-fields";
    /// A header that names a field twice, or names none.
    pub const BAD_HEADER: &str = "bad-header";
    /// Input that breaks the format's syntax.
    pub const MALFORMED: &str = "malformed";
    /// A construct the adapter refuses for safety (a DTD, an entity).
    pub const FORBIDDEN: &str = "forbidden";
    /// Nesting, name length or attribute count beyond the adapter's limit.
    pub const LIMIT_EXCEEDED: &str = "limit-exceeded";
    /// A value that does not fit its field's declared type.
    pub const BAD_VALUE: &str = "bad-value";
    /// Input in an encoding the adapter does not read (UTF-16, Latin-1 ...);
    /// the message says to convert to UTF-8.
    pub const UNSUPPORTED_ENCODING: &str = "unsupported-encoding";
}

/// Export an [`Adapter`] as the component's `sluice:adapter/parse`
/// interface. Call it once, in the plugin crate's `lib.rs`.
///
/// It expands to nothing outside WebAssembly, so the same crate also builds
/// natively for tests and benchmarks.
#[macro_export]
macro_rules! export_adapter {
    ($adapter:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct SluiceAdapterExport;
            impl $crate::__private::Guest for SluiceAdapterExport {
                type Parser = $crate::__private::ParserGlue<$adapter>;
                fn describe() -> $crate::__private::WitAdapterInfo {
                    $crate::__private::describe::<$adapter>()
                }
            }
            $crate::__private::bindings::__export_raw!(SluiceAdapterExport with_types_in $crate::__private::bindings);
        };
    };
}

#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::glue::{Guest, ParserGlue, WitAdapterInfo, describe};
    #[cfg(target_arch = "wasm32")]
    pub use wit_bindgen;

    #[cfg(target_arch = "wasm32")]
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../wit/v0.2.1",
            world: "adapter",
            pub_export_macro: true,
            export_macro_name: "__export_raw",
            default_bindings_module: "sluice_sdk::__private::bindings",
            runtime_path: "sluice_sdk::__private::wit_bindgen::rt",
            // Records compare their values in tests.
            additional_derives: [PartialEq],
        });
    }
}
