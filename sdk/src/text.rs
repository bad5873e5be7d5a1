//! Text helpers every line- or markup-based adapter needs: what a byte
//! order mark says, and line numbers as users count them.

use crate::{Location, RecordError, codes};

/// A byte order mark at the start of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteOrderMark {
    /// The encoding it announces: `UTF-8`, `UTF-16LE`, `UTF-16BE`,
    /// `UTF-32LE` or `UTF-32BE`.
    pub encoding: &'static str,
    /// Its length in bytes.
    pub len: usize,
}

impl ByteOrderMark {
    /// The UTF-8 mark, which a UTF-8 adapter skips.
    pub fn is_utf8(&self) -> bool {
        self.encoding == "UTF-8"
    }

    /// The fatal error for a UTF-8-only adapter given input with this mark:
    /// code [`codes::UNSUPPORTED_ENCODING`], spanning the mark, saying how
    /// to convert the file.
    pub fn unsupported(&self, ordinal: u64) -> RecordError {
        let name = self.encoding;
        RecordError::new(
            codes::UNSUPPORTED_ENCODING,
            format!(
                "the input is {name} (it starts with a {name} byte order mark); this adapter \
                 reads UTF-8 only: convert the file to UTF-8 (for example `iconv -f {name} -t \
                 UTF-8`)"
            ),
            Location {
                offset: 0,
                length: self.len as u64,
                line: 1,
                ordinal,
            },
        )
    }
}

/// The byte order mark `head`, an input's first bytes (four are enough),
/// starts with, if any.
pub fn byte_order_mark(head: &[u8]) -> Option<ByteOrderMark> {
    // UTF-32LE before UTF-16LE: the shorter mark is a prefix of the longer.
    const MARKS: [(&[u8], &str); 5] = [
        (&[0xEF, 0xBB, 0xBF], "UTF-8"),
        (&[0x00, 0x00, 0xFE, 0xFF], "UTF-32BE"),
        (&[0xFF, 0xFE, 0x00, 0x00], "UTF-32LE"),
        (&[0xFF, 0xFE], "UTF-16LE"),
        (&[0xFE, 0xFF], "UTF-16BE"),
    ];
    MARKS
        .iter()
        .find(|(mark, _)| head.starts_with(mark))
        .map(|&(mark, encoding)| ByteOrderMark {
            encoding,
            len: mark.len(),
        })
}

/// Line breaks in `bytes` as users count them: LF, CR LF and a lone CR
/// each end one line. `prev_cr`: the bytes before ended with a CR, so an LF
/// first in `bytes` completes that CR LF and is not counted again. A CR
/// last in `bytes` counts, whatever follows.
pub fn count_line_breaks(bytes: &[u8], prev_cr: bool) -> u64 {
    // Byte-wide counters over 255-byte blocks vectorize well; a second
    // pass runs only when there is a CR at all.
    let mut lf = 0u64;
    let mut any_cr = 0u8;
    for block in bytes.chunks(255) {
        let mut n = 0u8;
        for &b in block {
            n += u8::from(b == b'\n');
            any_cr |= u8::from(b == b'\r');
        }
        lf += u64::from(n);
    }
    let mut breaks = lf;
    if any_cr != 0 {
        // A CR counts unless an LF follows it here (that LF is counted).
        let lone = bytes
            .windows(2)
            .filter(|w| w[0] == b'\r' && w[1] != b'\n')
            .count();
        breaks += lone as u64 + u64::from(bytes.last() == Some(&b'\r'));
    }
    if prev_cr && bytes.first() == Some(&b'\n') {
        breaks -= 1;
    }
    breaks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_told_apart() {
        let enc = |b: &[u8]| byte_order_mark(b).map(|m| (m.encoding, m.len));
        assert_eq!(enc(b"\xEF\xBB\xBFa"), Some(("UTF-8", 3)));
        assert_eq!(enc(b"\xFF\xFEa\x00"), Some(("UTF-16LE", 2)));
        assert_eq!(enc(b"\xFE\xFF\x00a"), Some(("UTF-16BE", 2)));
        assert_eq!(enc(b"\xFF\xFE\x00\x00a\x00\x00\x00"), Some(("UTF-32LE", 4)));
        assert_eq!(enc(b"\x00\x00\xFE\xFF"), Some(("UTF-32BE", 4)));
        assert_eq!(enc(b"\xFF"), None);
        assert_eq!(enc(b"id,name"), None);
        assert!(byte_order_mark(b"\xEF\xBB\xBF").unwrap().is_utf8());
        let e = byte_order_mark(b"\x00\x00\xFE\xFF").unwrap().unsupported(1);
        assert_eq!(e.code, codes::UNSUPPORTED_ENCODING);
        assert_eq!(e.location.length, 4);
        assert!(e.message.contains("iconv -f UTF-32BE"), "{}", e.message);
    }

    /// The obvious definition, one byte at a time.
    fn slow(bytes: &[u8], mut prev_cr: bool) -> u64 {
        let mut n = 0;
        for &b in bytes {
            n += u64::from(b == b'\r' || (b == b'\n' && !prev_cr));
            prev_cr = b == b'\r';
        }
        n
    }

    #[test]
    fn line_breaks_match_the_definition_across_any_split() {
        let text = b"a\r\nb\rc\n\r\r\n\nd\r".repeat(40);
        assert_eq!(count_line_breaks(&text, false), slow(&text, false));
        for cut in 0..=text.len() {
            let (a, b) = text.split_at(cut);
            let first = count_line_breaks(a, false);
            let second = count_line_breaks(b, a.last() == Some(&b'\r'));
            assert_eq!(first + second, slow(&text, false), "cut at {cut}");
        }
        assert_eq!(count_line_breaks(b"", true), 0);
        assert_eq!(count_line_breaks(b"\n", true), 0);
    }
}
