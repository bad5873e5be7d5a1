//! What a plugin's store holds: its input, its log, its budgets, and a WASI
//! context that grants nothing.

use std::io::Read;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::sluice::adapter::{input, log, types};
use super::limits::Limits;

/// A budget that ran out during a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tripped {
    Cpu,
    Wall,
    Cancelled,
}

/// The error an epoch callback raises to stop a call; classified afterwards
/// from [`CallBudget::tripped`].
#[derive(Debug)]
pub(crate) struct BudgetExceeded;

impl std::fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("call budget exceeded")
    }
}

impl std::error::Error for BudgetExceeded {}

/// Time budgets of the call in progress.
pub(crate) struct CallBudget {
    started: Instant,
    /// CPU time and wall-clock time since the call started, at its first
    /// epoch tick.
    cpu_base: Option<(Duration, Duration)>,
    cpu: Duration,
    wall: Duration,
    pub(crate) tripped: Option<Tripped>,
    cancel: Option<Arc<AtomicBool>>,
}

impl CallBudget {
    fn new(limits: &Limits, cancel: Option<Arc<AtomicBool>>) -> Self {
        CallBudget {
            started: Instant::now(),
            cpu_base: None,
            cpu: limits.cpu_per_call,
            wall: limits.wall_per_call,
            tripped: None,
            cancel,
        }
    }

    /// Start the clock for a new call.
    pub(crate) fn start(&mut self) {
        // No CPU clock read here: reading the thread's CPU time is a system
        // call, and most calls end long before the first epoch tick. The
        // first tick of a call takes the baseline instead (see `check`).
        self.started = Instant::now();
        self.cpu_base = None;
        self.tripped = None;
    }

    /// Called on each epoch tick while plugin code runs.
    fn check(&mut self) -> wasmtime::Result<UpdateDeadline> {
        let tripped = if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            Some(Tripped::Cancelled)
        } else if self.started.elapsed() > self.wall {
            Some(Tripped::Wall)
        } else if self.cpu_used() > self.cpu {
            Some(Tripped::Cpu)
        } else {
            None
        };
        match tripped {
            Some(t) => {
                self.tripped = Some(t);
                Err(wasmtime::Error::new(BudgetExceeded))
            }
            None => Ok(UpdateDeadline::Continue(1)),
        }
    }
}

impl CallBudget {
    /// CPU used by this call so far, over-estimated by at most the time
    /// before its first tick: the CPU used before the baseline was taken is
    /// bounded by the wall-clock time that passed.
    fn cpu_used(&mut self) -> Duration {
        let now = thread_cpu_time();
        let (cpu0, wall0) = *self.cpu_base.get_or_insert((now, self.started.elapsed()));
        now.saturating_sub(cpu0) + wall0
    }
}

/// CPU time used by the calling thread. Plugin calls run start to end on one
/// (blocking) thread, so this measures the plugin, not the process.
pub(crate) fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a
    // constant the platform defines.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Caps memory summed over all of an instance's memories, and table sizes.
pub(crate) struct MemoryCap {
    cap: usize,
    total: usize,
    table_cap: usize,
    /// Whether a growth was refused: a trap after this is out-of-memory.
    pub(crate) hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // `total` is the sum of every memory's current size; this memory
        // moves from `current` to `desired`.
        let next = self.total.saturating_sub(current).saturating_add(desired);
        if next > self.cap {
            self.hit = true;
            return Ok(false);
        }
        self.total = next;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_cap)
    }
}

/// Keeps the first and the last bytes written to a plugin's stdout or
/// stderr (a panic message comes last, after whatever the plugin printed
/// before) and drops the middle, reporting success either way so a chatty
/// plugin never traps on its own output.
#[derive(Clone)]
pub(crate) struct Capture {
    inner: Arc<Mutex<CaptureInner>>,
}

struct CaptureInner {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    half: usize,
    dropped: u64,
}

impl Capture {
    fn new(cap: usize) -> Self {
        Capture {
            inner: Arc::new(Mutex::new(CaptureInner {
                head: Vec::new(),
                tail: std::collections::VecDeque::new(),
                half: cap / 2,
                dropped: 0,
            })),
        }
    }

    fn push(&self, mut bytes: &[u8]) {
        let mut inner = crate::lock(&self.inner);
        let room = inner.half.saturating_sub(inner.head.len());
        let n = room.min(bytes.len());
        inner.head.extend_from_slice(&bytes[..n]);
        bytes = &bytes[n..];
        if bytes.len() > inner.half {
            inner.dropped += (inner.tail.len() + bytes.len() - inner.half) as u64;
            inner.tail.clear();
            bytes = &bytes[bytes.len() - inner.half..];
        }
        let overflow = (inner.tail.len() + bytes.len()).saturating_sub(inner.half);
        inner.tail.drain(..overflow);
        inner.dropped += overflow as u64;
        inner.tail.extend(bytes);
    }

    /// What was kept, as text.
    pub(crate) fn text(&self) -> String {
        let inner = crate::lock(&self.inner);
        let mut out = String::from_utf8_lossy(&inner.head).into_owned();
        if inner.dropped > 0 {
            out.push_str(&format!("\n[... {} bytes dropped ...]\n", inner.dropped));
        }
        let tail: Vec<u8> = inner.tail.iter().copied().collect();
        out.push_str(&String::from_utf8_lossy(&tail));
        out
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A wall clock stopped at the Unix epoch, and a monotonic clock stopped at
/// zero: a plugin's output must not depend on when it runs.
struct StoppedClock;

impl wasmtime_wasi::HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A plugin's log, bounded per parse.
pub(crate) struct LogSink {
    plugin: String,
    kept: usize,
    cap: usize,
    pub(crate) dropped: u64,
}

/// Everything one plugin instance can reach.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) memory: MemoryCap,
    pub(crate) budget: CallBudget,
    pub(crate) log: LogSink,
    pub(crate) stderr: Capture,
    input: Box<dyn Read + Send>,
    chunk_bytes: usize,
    scratch: Vec<u8>,
    /// Absolute input offset of the next byte to hand out.
    pub(crate) fed_to: u64,
    input_ended: bool,
    /// A read error, which ends the call with a trap classified as the
    /// host's problem, not the plugin's.
    pub(crate) input_error: Option<std::io::Error>,
}

impl HostState {
    pub(crate) fn new(
        plugin: &str,
        limits: &Limits,
        input: Box<dyn Read + Send>,
        start_offset: u64,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Self {
        let stderr = Capture::new(limits.max_stderr_bytes);
        // Nothing ambient: no preopened directories, no environment, no
        // arguments, no network, stopped clocks and fixed "randomness".
        let wasi = WasiCtxBuilder::new()
            .stdout(stderr.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(StoppedClock)
            .monotonic_clock(StoppedClock)
            .secure_random(wasmtime_wasi::Deterministic::new(vec![
                0x5a, 0xa5, 0x3c, 0xc3,
            ]))
            .insecure_random(wasmtime_wasi::Deterministic::new(vec![
                0x3c, 0xc3, 0x5a, 0xa5,
            ]))
            .insecure_random_seed(0x5eed)
            .max_random_size(4096)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap {
                cap: limits.memory_bytes,
                total: 0,
                table_cap: limits.table_elements,
                hit: false,
            },
            budget: CallBudget::new(limits, cancel),
            log: LogSink {
                plugin: plugin.to_owned(),
                kept: 0,
                cap: limits.max_log_bytes,
                dropped: 0,
            },
            stderr,
            input,
            chunk_bytes: limits.input_chunk_bytes.max(1),
            scratch: Vec::new(),
            fed_to: start_offset,
            input_ended: false,
            input_error: None,
        }
    }

    /// Install the store-level hooks: memory cap and epoch budget checks.
    pub(crate) fn install(store: &mut wasmtime::Store<HostState>) {
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_callback(|mut ctx: StoreContextMut<'_, HostState>| {
            ctx.data_mut().budget.check()
        });
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl input::Host for HostState {
    fn read(&mut self) -> wasmtime::Result<Vec<u8>> {
        if self.input_ended {
            return Ok(Vec::new());
        }
        // One scratch buffer for the parse: read into it, hand out a copy
        // (which the component model moves into the plugin's memory).
        let buf = &mut self.scratch;
        buf.resize(self.chunk_bytes, 0);
        let mut filled = 0;
        // Fill the whole chunk unless the input ends: short reads from the
        // OS must not look like the end of input to the plugin.
        while filled < buf.len() {
            match self.input.read(&mut buf[filled..]) {
                Ok(0) => {
                    self.input_ended = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.input_error = Some(e);
                    return Err(wasmtime::format_err!("input read failed"));
                }
            }
        }
        self.fed_to += filled as u64;
        Ok(buf[..filled].to_vec())
    }
}

impl log::Host for HostState {
    fn write(&mut self, level: log::Level, message: String) {
        let sink = &mut self.log;
        if sink.kept + message.len() > sink.cap {
            sink.dropped += 1;
            return;
        }
        sink.kept += message.len();
        let plugin = sink.plugin.as_str();
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl types::Host for HostState {}

/// Link the adapter's imports and a deny-all WASI into `linker`.
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // A std Rust guest imports WASI (cli, io, random ...) even when it never
    // uses it; everything is linked, and the context above grants nothing.
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    super::bindings::Adapter::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_head_and_tail() {
        let c = Capture::new(8);
        c.push(b"abcdefgh");
        c.push(b"ijkl");
        c.push(b"panic!");
        let text = c.text();
        assert!(text.starts_with("abcd"), "{text}");
        assert!(text.ends_with("nic!"), "{text}");
        assert!(text.contains("10 bytes dropped"), "{text}");
    }

    #[test]
    fn memory_cap_sums_memories() {
        let mut cap = MemoryCap {
            cap: 100,
            total: 0,
            table_cap: 10,
            hit: false,
        };
        assert!(cap.memory_growing(0, 60, None).unwrap());
        assert!(cap.memory_growing(0, 30, None).unwrap());
        assert!(!cap.memory_growing(30, 50, None).unwrap());
        assert!(cap.hit);
        assert!(cap.memory_growing(60, 70, None).unwrap());
    }
}
