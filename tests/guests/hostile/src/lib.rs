//! A deliberately misbehaving adapter. Its `mode` option picks the
//! misbehaviour, so one small component covers every case the sandbox must
//! survive; `after` (default 0) is how many good records come first.
//!
//! Each good record is one line of the input; the bad behaviour starts once
//! `after` records have been returned.

use sluice_sdk::{
    Adapter, AdapterInfo, Checkpoint, ConfigError, Input, Item, Layout, Level, Location,
    OptionInfo, Options, Record, StateReader, StateWriter, log,
};
use std::hint::black_box;

pub struct Hostile {
    input: Input,
    mode: String,
    after: u64,
    layout: Layout,
    ordinal: u64,
    /// Opened from a checkpoint.
    resumed: bool,
}

const MODES: &str = "ok | drift | slow | loop-open | loop | grow-memory | recurse | gigantic | recurse-buffers | many-fields | \
     endless | overlap | past-input | skip-ordinal | missing-value | panic | log-flood | \
     stderr-flood | wasi | exit";

impl Adapter for Hostile {
    fn describe() -> AdapterInfo {
        AdapterInfo {
            name: "hostile".into(),
            version: "6.6.6".into(),
            description: "Misbehaves on purpose, for the sandbox's tests".into(),
            formats: vec!["hostile".into()],
            extensions: vec![],
            media_types: vec![],
            options: vec![
                OptionInfo::new("mode", Some("ok"), MODES),
                OptionInfo::new("after", Some("0"), "good records before misbehaving"),
            ],
            resumable: true,
        }
    }

    fn open(
        input: Input,
        options: &Options,
        resume: Option<Checkpoint>,
    ) -> Result<Self, ConfigError> {
        let mode = options.get("mode").unwrap_or("ok").to_owned();
        let after = options.parse::<u64>("after")?.unwrap_or(0);
        if mode == "loop-open" {
            spin();
        }
        let ordinal = match &resume {
            Some(cp) => StateReader::new(&cp.state)
                .u64()
                .map_err(|e| ConfigError::other(e.to_string()))?,
            None => 0,
        };
        Ok(Hostile {
            input,
            mode,
            after,
            layout: Layout::new(Some("line"), ["text"]),
            ordinal,
            resumed: resume.is_some(),
        })
    }

    fn checkpoint(&self) -> Option<Checkpoint> {
        Some(Checkpoint {
            offset: self.input.offset(),
            state: StateWriter::new().u64(self.ordinal).finish(),
        })
    }

    fn next(&mut self) -> Item {
        if self.ordinal < self.after || self.mode == "ok" || self.mode == "drift" {
            return self.good_line();
        }
        match self.mode.as_str() {
            "loop" => spin(),
            "slow" => {
                // A good record that takes tens of milliseconds of CPU.
                let mut x = 0u64;
                for _ in 0..20_000_000u64 {
                    x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
                black_box(x);
                self.good_line()
            }
            "grow-memory" => {
                // Leak 1 MiB at a time until an allocation fails.
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    black_box(&hoard);
                }
            }
            "recurse" => {
                let depth = recurse(0, u64::MAX - self.after);
                Item::Record(self.record_with_text(&depth.to_string()))
            }
            "recurse-buffers" => {
                let depth = recurse_with_buffers(1);
                Item::Record(self.record_with_text(&depth.to_string()))
            }
            "gigantic" => {
                // 24 MiB of text in one record: fits the default memory cap,
                // exceeds the host's record-size limit.
                let text = "g".repeat(24 << 20);
                Item::Record(self.record_with_text(&text))
            }
            "many-fields" => {
                let names: Vec<String> = (0..200_000).map(|i| format!("f{i}")).collect();
                let layout = Layout::new(None, names);
                let mut r = Record::new(&layout);
                for _ in 0..200_000 {
                    r.push_text("");
                }
                self.ordinal += 1;
                let offset = self.claim_byte();
                r.set_location(self.loc(offset, 1));
                Item::Record(r)
            }
            "endless" => {
                // Records forever, each claiming one byte more of the input.
                let rec = self.record_with_text("again");
                Item::Record(rec)
            }
            "overlap" => {
                self.ordinal += 1;
                let mut r = Record::new(&self.layout);
                r.push_text("overlap").set_location(self.loc(0, 1));
                Item::Record(r)
            }
            "past-input" => {
                self.ordinal += 1;
                let mut r = Record::new(&self.layout);
                r.push_text("far").set_location(self.loc(1 << 40, 10));
                Item::Record(r)
            }
            "skip-ordinal" => {
                self.ordinal += 5;
                let offset = self.claim_byte();
                let mut r = Record::new(&self.layout);
                r.push_text("gap").set_location(self.loc(offset, 1));
                Item::Record(r)
            }
            "missing-value" => {
                self.ordinal += 1;
                let offset = self.claim_byte();
                let mut r = Record::new(&self.layout);
                r.set_location(self.loc(offset, 1));
                Item::Record(r)
            }
            "panic" => panic!("hostile guest panics at record {}", self.ordinal + 1),
            "log-flood" => {
                for i in 0..100_000 {
                    log(Level::Info, &format!("log line {i} {}", "x".repeat(100)));
                }
                Item::End
            }
            "stderr-flood" => {
                for i in 0..100_000 {
                    eprintln!("stderr line {i} {}", "y".repeat(100));
                }
                panic!("panic after flooding stderr");
            }
            "wasi" => Item::Record(self.probe_wasi()),
            "exit" => std::process::exit(3),
            other => panic!("unknown mode {other:?}"),
        }
    }
}

impl Hostile {
    fn loc(&self, offset: u64, length: u64) -> Location {
        Location {
            offset,
            length,
            line: self.ordinal,
            ordinal: self.ordinal,
        }
    }

    /// One record per input line; the end of input ends the parse.
    fn good_line(&mut self) -> Item {
        let offset = self.input.offset();
        let mut line = Vec::new();
        loop {
            let chunk = self.input.fill();
            if chunk.is_empty() {
                break;
            }
            let (n, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            line.extend_from_slice(&chunk[..n]);
            self.input.advance(n);
            if done {
                break;
            }
        }
        if line.is_empty() {
            return Item::End;
        }
        self.ordinal += 1;
        let mut text = String::from_utf8_lossy(&line).trim_end().to_owned();
        if self.mode == "drift" && self.resumed {
            // A resume bug: the same lines come out differently.
            text = text.to_uppercase();
        }
        let mut r = Record::new(&self.layout);
        r.push_text(&text)
            .set_location(self.loc(offset, line.len() as u64));
        Item::Record(r)
    }

    /// Read one byte of input and return its offset.
    fn claim_byte(&mut self) -> u64 {
        self.input.fill();
        let offset = self.input.offset();
        self.input.advance(1);
        offset
    }

    /// A one-field record claiming the next input byte.
    fn record_with_text(&mut self, text: &str) -> Record {
        self.ordinal += 1;
        let offset = self.claim_byte();
        let mut r = Record::new(&self.layout);
        r.push_text(text).set_location(self.loc(offset, 1));
        r
    }

    /// Try every ambient capability and report what came back.
    fn probe_wasi(&mut self) -> Record {
        let fs = match std::fs::read("/etc/passwd") {
            Ok(b) => format!("READ {} BYTES", b.len()),
            Err(e) => format!("denied: {e}"),
        };
        let dir = match std::fs::read_dir(".") {
            Ok(d) => format!("LISTED {} ENTRIES", d.count()),
            Err(e) => format!("denied: {e}"),
        };
        let write = match std::fs::write("sluice-escape.txt", b"x") {
            Ok(()) => "WROTE A FILE".to_owned(),
            Err(e) => format!("denied: {e}"),
        };
        let net = match std::net::TcpStream::connect("127.0.0.1:9") {
            Ok(_) => "CONNECTED".to_owned(),
            Err(e) => format!("denied: {e}"),
        };
        let dns = match std::net::ToSocketAddrs::to_socket_addrs("localhost:80") {
            Ok(a) => format!("RESOLVED {} ADDRESSES", a.count()),
            Err(e) => format!("denied: {e}"),
        };
        let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
        let args: Vec<String> = std::env::args().collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(u64::MAX);
        let layout = Layout::new(
            Some("probe"),
            ["fs", "dir", "write", "net", "dns", "env", "args", "clock"],
        );
        self.ordinal += 1;
        let mut r = Record::new(&layout);
        r.push_text(&fs)
            .push_text(&dir)
            .push_text(&write)
            .push_text(&net)
            .push_text(&dns)
            .push_text(&env.join(","))
            .push_text(&args.join(","))
            .push_text(&now.to_string());
        let offset = self.claim_byte();
        r.set_location(self.loc(offset, 1));
        self.mode = "ok".into();
        r
    }
}

/// Burn CPU forever without allocating or calling the host.
fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// Recurse (practically) without bound on WebAssembly's own call stack.
/// The combining step is not associative, so the compiler cannot turn the
/// recursion into a loop.
#[inline(never)]
fn recurse(depth: u64, limit: u64) -> u64 {
    if depth == limit {
        return depth;
    }
    recurse(depth + 1, limit).rotate_left(3) ^ depth
}

/// Recurse without bound with a buffer in each frame: Rust keeps such
/// frames on the shadow stack in linear memory, which runs out first.
#[allow(unconditional_recursion)]
fn recurse_with_buffers(depth: u64) -> u64 {
    let buf = black_box([depth as u8; 256]);
    recurse_with_buffers(depth + 1) + u64::from(buf[0])
}

sluice_sdk::export_adapter!(Hostile);
