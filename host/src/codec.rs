//! Byte encodings the record stage and the embedded store share:
//! little-endian integers and LEB128 varints, read back without panicking
//! whatever the bytes.

/// Append `n` as LEB128: seven bits per byte, low first.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads encoded values off the front of a buffer; `None` where the bytes
/// run out or do not decode.
pub(crate) struct Decoder<'a> {
    /// What is left to read.
    pub buf: &'a [u8],
}

impl<'a> Decoder<'a> {
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    }

    pub fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_overlong_ones_are_refused() {
        let mut out = Vec::new();
        for n in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            out.clear();
            put_varint(&mut out, n);
            let mut d = Decoder { buf: &out };
            assert_eq!(d.varint(), Some(n));
            assert!(d.buf.is_empty());
        }
        assert_eq!(Decoder { buf: &[0x80; 11] }.varint(), None);
        assert_eq!(Decoder { buf: &[0x80] }.varint(), None);
    }
}
