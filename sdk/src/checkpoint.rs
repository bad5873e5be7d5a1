//! Checkpoints: where a parse can be resumed, and a small encoding for the
//! adapter state they carry.

/// A place from which a parse can resume.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Input offset from which the resumed parser is fed.
    pub offset: u64,
    /// Adapter state needed to continue from there; opaque to the host.
    /// Keep it small: the host bounds it (see the host's limits).
    pub state: Vec<u8>,
}

/// Writes checkpoint state: unsigned integers as LEB128, byte strings with a
/// length prefix. Pair it with [`StateReader`], reading in the same order.
#[derive(Debug, Default)]
pub struct StateWriter {
    buf: Vec<u8>,
}

impl StateWriter {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append an unsigned integer.
    pub fn u64(&mut self, mut v: u64) -> &mut Self {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(byte);
                return self;
            }
            self.buf.push(byte | 0x80);
        }
    }

    /// Append a boolean.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u64(u64::from(v))
    }

    /// Append a byte string.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u64(v.len() as u64);
        self.buf.extend_from_slice(v);
        self
    }

    /// Append a string.
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// The encoded state.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// Error from [`StateReader`]: the state is truncated or not what this
/// adapter wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadState;

impl std::fmt::Display for BadState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("checkpoint state is corrupt or was written by another adapter")
    }
}

impl std::error::Error for BadState {}

/// Reads state written by [`StateWriter`].
#[derive(Debug)]
pub struct StateReader<'a> {
    buf: &'a [u8],
}

impl<'a> StateReader<'a> {
    /// Read from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        StateReader { buf }
    }

    /// Next unsigned integer.
    pub fn u64(&mut self) -> Result<u64, BadState> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.buf.split_first().ok_or(BadState)?;
            self.buf = rest;
            v |= u64::from(byte & 0x7f).checked_shl(shift).ok_or(BadState)?;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(BadState)
    }

    /// Next boolean.
    pub fn bool(&mut self) -> Result<bool, BadState> {
        match self.u64()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(BadState),
        }
    }

    /// Next byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], BadState> {
        let len = usize::try_from(self.u64()?).map_err(|_| BadState)?;
        if len > self.buf.len() {
            return Err(BadState);
        }
        let (v, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(v)
    }

    /// Next string.
    pub fn str(&mut self) -> Result<&'a str, BadState> {
        std::str::from_utf8(self.bytes()?).map_err(|_| BadState)
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let state = StateWriter::new()
            .u64(0)
            .u64(u64::MAX)
            .bool(true)
            .str("héllo")
            .bytes(&[0, 1, 2])
            .finish();
        let mut r = StateReader::new(&state);
        assert_eq!(r.u64(), Ok(0));
        assert_eq!(r.u64(), Ok(u64::MAX));
        assert_eq!(r.bool(), Ok(true));
        assert_eq!(r.str(), Ok("héllo"));
        assert_eq!(r.bytes(), Ok(&[0u8, 1, 2][..]));
        assert!(r.is_empty());
    }

    #[test]
    fn truncated_state_is_an_error() {
        let state = StateWriter::new().str("abcdef").finish();
        assert_eq!(StateReader::new(&state[..3]).str(), Err(BadState));
        assert_eq!(StateReader::new(&[0xff; 11]).u64(), Err(BadState));
    }
}
