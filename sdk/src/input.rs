//! The adapter's view of its input: a buffered reader over chunks the host
//! hands out one at a time.

use std::io::{self, BufRead, Read};

/// Where chunks come from: the host inside the sandbox, a byte slice in
/// native tests.
pub(crate) trait ChunkSource {
    /// The next chunk; empty at the end of input.
    fn next_chunk(&mut self) -> Vec<u8>;
}

/// The input of a parse.
///
/// It implements [`BufRead`] and [`Read`], so streaming parsers (quick-xml,
/// `csv-core` driven by `fill_buf`) read it directly. The adapter never sees a
/// path, a file handle or the whole input: only the chunk at hand.
///
/// [`Input::offset`] tells the absolute input offset of the next unread byte,
/// which is what [`Location::offset`](crate::Location) wants.
pub struct Input {
    source: Box<dyn ChunkSource>,
    chunk: Vec<u8>,
    pos: usize,
    /// Absolute offset of `chunk[0]`.
    base: u64,
    ended: bool,
}

impl Input {
    pub(crate) fn new(source: Box<dyn ChunkSource>, start_offset: u64) -> Self {
        Input {
            source,
            chunk: Vec::new(),
            pos: 0,
            base: start_offset,
            ended: false,
        }
    }

    /// An input over a byte slice, for tests and native use, handing out
    /// chunks of `chunk_size` bytes (at least 1).
    pub fn from_bytes(bytes: &[u8], chunk_size: usize) -> Self {
        Self::from_bytes_at(bytes, chunk_size, 0)
    }

    /// Like [`Input::from_bytes`] for the part of an input that starts at
    /// `start_offset` (when resuming from a checkpoint).
    pub fn from_bytes_at(bytes: &[u8], chunk_size: usize, start_offset: u64) -> Self {
        Self::new(
            Box::new(SliceSource {
                bytes: bytes.to_vec(),
                pos: 0,
                plan: vec![chunk_size.max(1)],
                turn: 0,
            }),
            start_offset,
        )
    }

    /// An input over a byte slice whose chunk sizes cycle through `plan`
    /// (each at least 1): the way the test harness varies chunk boundaries.
    pub fn from_bytes_with_plan(bytes: &[u8], plan: &[usize], start_offset: u64) -> Self {
        let plan: Vec<usize> = plan.iter().map(|&n| n.max(1)).collect();
        let plan = if plan.is_empty() {
            vec![usize::MAX]
        } else {
            plan
        };
        Self::new(
            Box::new(SliceSource {
                bytes: bytes.to_vec(),
                pos: 0,
                plan,
                turn: 0,
            }),
            start_offset,
        )
    }

    /// An input over any reader (a file, for native runs over inputs too
    /// large to hold in memory), handing out chunks of up to `chunk_size`
    /// bytes. A read error ends the input, as the host would fail the parse.
    pub fn from_reader(reader: impl std::io::Read + 'static, chunk_size: usize) -> Self {
        Self::new(
            Box::new(ReaderSource {
                reader: Box::new(reader),
                chunk: chunk_size.max(1),
            }),
            0,
        )
    }

    /// Absolute input offset of the next unread byte.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Whether the input has ended (no byte left, none to come).
    pub fn at_end(&mut self) -> bool {
        self.fill().is_empty()
    }

    /// The unread bytes of the current chunk, fetching the next chunk when the
    /// current one is used up. Empty only at the end of input.
    pub fn fill(&mut self) -> &[u8] {
        while self.pos >= self.chunk.len() && !self.ended {
            self.base += self.chunk.len() as u64;
            self.pos = 0;
            self.chunk = self.source.next_chunk();
            if self.chunk.is_empty() {
                self.ended = true;
            }
        }
        &self.chunk[self.pos..]
    }

    /// Mark `n` bytes of [`Input::fill`]'s slice as read.
    pub fn advance(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.chunk.len());
    }
}

impl Read for Input {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill();
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.advance(n);
        Ok(n)
    }
}

impl BufRead for Input {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(self.fill())
    }

    fn consume(&mut self, amt: usize) {
        self.advance(amt);
    }
}

struct ReaderSource {
    reader: Box<dyn std::io::Read>,
    chunk: usize,
}

impl ChunkSource for ReaderSource {
    fn next_chunk(&mut self) -> Vec<u8> {
        let mut buf = vec![0; self.chunk];
        let mut filled = 0;
        while filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        buf.truncate(filled);
        buf
    }
}

struct SliceSource {
    bytes: Vec<u8>,
    pos: usize,
    plan: Vec<usize>,
    turn: usize,
}

impl ChunkSource for SliceSource {
    fn next_chunk(&mut self) -> Vec<u8> {
        let size = self.plan[self.turn % self.plan.len()];
        self.turn += 1;
        let end = self.pos.saturating_add(size).min(self.bytes.len());
        let chunk = self.bytes[self.pos..end].to_vec();
        self.pos = end;
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_chunks() {
        let mut input = Input::from_bytes_with_plan(b"abcdefg", &[1, 3], 100);
        assert_eq!(input.offset(), 100);
        let mut all = Vec::new();
        input.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abcdefg");
        assert_eq!(input.offset(), 107);
        assert!(input.at_end());
    }

    #[test]
    fn readers_are_chunked() {
        let mut input = Input::from_reader(std::io::Cursor::new(b"hello world".to_vec()), 4);
        assert_eq!(input.fill(), b"hell");
        input.advance(4);
        let mut rest = String::new();
        input.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "o world");
    }

    #[test]
    fn bufread_lines_cross_chunks() {
        let input = Input::from_bytes(b"one\ntwo\nthree", 2);
        let lines: Vec<String> = input.lines().map(Result::unwrap).collect();
        assert_eq!(lines, ["one", "two", "three"]);
    }
}
