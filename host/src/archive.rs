//! ZIP intake: validate an uploaded archive and expand it, entry by entry,
//! into parts.
//!
//! An upload is spooled to local disk first; if it is a ZIP, [`expand`]
//! turns each file entry into a part that a format plugin parses later.
//! Archives are hostile input, so this module trusts none of their
//! metadata, and entry names are never used as file-system paths: the
//! caller stores parts under generated names through a [`PartSink`].
//!
//! # Policy
//!
//! **One bad entry rejects the whole upload.** An archive that carries an
//! unsafe entry was built by a broken or malicious tool; importing "the
//! rest" would hide that from the user. Every failure is an [`ArchiveError`]
//! whose [`Reason::code`] is stable.
//!
//! [`inspect`] reads the central directory and checks every entry's
//! metadata before any byte is decompressed, in this order:
//!
//! 1. Entry count: the count the end-of-central-directory record declares
//!    (ZIP64 too) is checked against [`ArchiveLimits::max_entries`] before
//!    the directory is parsed, so a huge directory costs nothing.
//! 2. Raw duplicate names (two entries with the same bytes as name).
//! 3. Per entry, in directory order: the name (see below), symlinks (Unix
//!    file type `S_IFLNK` in the external attributes), encryption
//!    (general-purpose flag bit 0 or 6, method 99 or an AES extra field, in
//!    the central or the local header), the method (only stored and deflate;
//!    others are rejected naming the method number), nested archives by
//!    extension (`zip jar war apk 7z rar gz tgz bz2 xz zst tar`), directory
//!    entries that declare content, and a local header that disagrees with
//!    the central directory about method or encryption.
//! 4. Names that collide after normalisation: Unicode NFC, case folding and
//!    removal of `./` segments and repeated `/` (`Data.csv`/`data.csv`,
//!    NFC/NFD `café.csv`, `a.csv`/`./a.csv`). The error names both entries.
//! 5. Layout: each entry's byte range, from its local header to the end of
//!    its compressed data, computed from the central directory. Ranges that
//!    overlap each other or run into the central directory (the overlapping
//!    "better zip bomb") and ranges outside the file are rejected.
//! 6. Declared sizes: per entry against [`ArchiveLimits::max_entry_bytes`]
//!    and [`ArchiveLimits::max_ratio`], summed against
//!    [`ArchiveLimits::max_total_bytes`]; a stored entry must declare as
//!    many bytes as it stores.
//! 7. An archive without a single file entry is rejected (`no-entries`).
//!
//! Names: rejected when empty, longer than
//! [`ArchiveLimits::max_name_bytes`], containing NUL, absolute (`/x`, `\x`,
//! `C:\x`, `C:/x`, `C:x`), containing a `..` component (with `/` or `\` as
//! separator), containing a backslash, naming nothing but `.` segments, or
//! deeper than [`ArchiveLimits::max_path_depth`]. `./a.csv` and `a/./b.csv`
//! are fine; [`EntryMeta::name`] is the normalised form (`a.csv`,
//! `a/b.csv`). Names that are only odd on some file systems (`CON`,
//! `a.csv:stream`, trailing dots) are accepted: names are never paths. When
//! an Info-ZIP Unicode Path extra field replaces the header's name, both
//! names must pass.
//!
//! Directory entries (name ending in `/`, no content) are checked like
//! files but skipped: they are not parts.
//!
//! [`expand`] then streams each file entry into the sink. The zip crate only
//! locates the raw compressed bytes (`by_index_raw`); inflating, CRC-32 and
//! every limit are ours. Expanded bytes are counted as they come out,
//! never trusting headers: an entry stops as soon as it exceeds its declared
//! size (`size-mismatch`, a lying header), the per-entry or total cap, or the
//! ratio of expanded bytes to compressed bytes consumed so far (enforced
//! once [`ArchiveLimits::ratio_floor_bytes`] came out, so tiny files never
//! trip it). The first bytes of each entry are sniffed for archive and
//! compressor signatures (ZIP, gzip, bzip2, xz, zstd, 7z, RAR, tar) before
//! the sink sees anything. At the end of an entry, its size must equal the
//! declared size and its CRC-32 the declared CRC. Streaming uses a few fixed
//! buffers (about 200 KiB with the inflater's window) whatever an entry
//! holds; the parsed central directory takes memory in proportion to its
//! own size, bounded by the entry count and the upload's size.
//!
//! The sink's `commit` is called only after an entry verified; on any
//! failure after `begin`, `abort` is called instead. Entries committed
//! before a later entry fails stay committed in the sink: on `Err` the
//! caller must treat the upload as failed and discard all its parts.
//!
//! Nothing here panics on any input: the zip crate has panicked on fuzzed
//! archives before, so its calls run under `catch_unwind` and a panic
//! becomes a `not-a-zip` or `corrupt-archive` error (the panic message
//! still reaches the panic hook).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::panic::{self, AssertUnwindSafe};

use unicode_normalization::UnicodeNormalization as _;
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

/// Limits on one archive. Each holds per upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Entries in the central directory, directories included. Default
    /// 10,000. Every entry costs metadata work and a part; real uploads have
    /// a handful, and this bounds work before any entry is looked at.
    pub max_entries: usize,
    /// Bytes one entry may expand to. Default 1 GiB: larger than any single
    /// file we expect to import, small enough to bound spool use per part.
    pub max_entry_bytes: u64,
    /// Bytes all entries together may expand to. Default 4 GiB: the spool
    /// budget one upload may claim.
    pub max_total_bytes: u64,
    /// Highest accepted ratio of expanded to compressed bytes, per entry.
    /// Default 100 (100:1). CSV and XML compress 5-20:1; zip bombs reach
    /// 1000:1 and more.
    pub max_ratio: u64,
    /// Expanded bytes an entry may produce before the ratio is enforced.
    /// Default 64 KiB, so small, highly repetitive files (a column of
    /// zeros) never trip the ratio.
    pub ratio_floor_bytes: u64,
    /// Bytes in one entry name. Default 1,024: names are shown to users and
    /// stored in the journal; no real file name comes near.
    pub max_name_bytes: usize,
    /// Path components in one entry name. Default 64: deeper paths only
    /// come from generated attacks on extractors.
    pub max_path_depth: usize,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_entries: 10_000,
            max_entry_bytes: 1 << 30,
            max_total_bytes: 4 << 30,
            max_ratio: 100,
            ratio_floor_bytes: 64 << 10,
            max_name_bytes: 1024,
            max_path_depth: 64,
        }
    }
}

/// How an entry's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Method 0: stored as is.
    Stored,
    /// Method 8: raw deflate.
    Deflated,
}

/// What the central directory says about one file entry, after checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    /// Position in the central directory, from 0.
    pub index: usize,
    /// The normalised name: `./` segments and repeated `/` removed. For
    /// display and records only, never a path.
    pub name: String,
    /// Bytes of compressed data, as declared.
    pub compressed_size: u64,
    /// Bytes of expanded data, as declared (verified by [`expand`]).
    pub declared_size: u64,
    /// CRC-32 of the expanded data, as declared (verified by [`expand`]).
    pub crc32: u32,
    /// How the bytes are stored.
    pub method: Method,
}

/// Where expanded bytes go. `commit` is called only after the entry's CRC-32
/// and size were verified; on any failure `abort` is called and nothing of
/// that entry may be used.
pub trait PartSink {
    type Part: std::io::Write;
    fn begin(&mut self, entry: &EntryMeta) -> std::io::Result<Self::Part>;
    fn commit(
        &mut self,
        entry: &EntryMeta,
        part: Self::Part,
        expanded_bytes: u64,
    ) -> std::io::Result<()>;
    fn abort(&mut self, entry: &EntryMeta, part: Self::Part);
}

/// Why an archive was rejected. Codes are stable (journal, API, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No readable ZIP structure (no end record, broken central directory,
    /// multi-disk, or the ZIP parser gave up).
    NotAZip,
    /// A structure inside an otherwise readable archive is broken (bad
    /// local header, local and central header disagree, directory entry
    /// with content).
    CorruptArchive,
    /// An entry's compressed data cannot be decoded.
    CorruptData,
    /// The archive holds no file entries.
    NoEntries,
    /// More entries than [`ArchiveLimits::max_entries`].
    TooManyEntries,
    /// An entry declares or expands to more than
    /// [`ArchiveLimits::max_entry_bytes`].
    EntryTooLarge,
    /// All entries declare or expand to more than
    /// [`ArchiveLimits::max_total_bytes`].
    TotalTooLarge,
    /// An entry declares or shows a ratio above [`ArchiveLimits::max_ratio`].
    RatioTooHigh,
    /// Two entries share bytes, or an entry runs into the central
    /// directory (overlapping zip bomb).
    OverlappingEntries,
    /// An entry's header or data lies outside the file.
    EntryOutOfBounds,
    /// Two entries have the same name byte for byte.
    DuplicateName,
    /// Two names are equal after NFC, case folding and path clean-up.
    NameCollision,
    AbsolutePath,
    ParentTraversal,
    BackslashInName,
    NulInName,
    EmptyName,
    /// The name has only `.` segments (`.`, `./`).
    DotName,
    NameTooLong,
    PathTooDeep,
    Symlink,
    /// An entry is itself an archive or compressed stream (by extension or
    /// by its first bytes).
    NestedArchive,
    Encrypted,
    /// A compression method other than stored (0) or deflate (8).
    UnsupportedMethod,
    CrcMismatch,
    /// Expanded size differs from the declared size.
    SizeMismatch,
    /// Reading the archive or writing a part failed (not the user's fault).
    Io,
}

impl Reason {
    /// Every reason, for exhaustive tests and documentation.
    pub const ALL: [Reason; 27] = [
        Reason::NotAZip,
        Reason::CorruptArchive,
        Reason::CorruptData,
        Reason::NoEntries,
        Reason::TooManyEntries,
        Reason::EntryTooLarge,
        Reason::TotalTooLarge,
        Reason::RatioTooHigh,
        Reason::OverlappingEntries,
        Reason::EntryOutOfBounds,
        Reason::DuplicateName,
        Reason::NameCollision,
        Reason::AbsolutePath,
        Reason::ParentTraversal,
        Reason::BackslashInName,
        Reason::NulInName,
        Reason::EmptyName,
        Reason::DotName,
        Reason::NameTooLong,
        Reason::PathTooDeep,
        Reason::Symlink,
        Reason::NestedArchive,
        Reason::Encrypted,
        Reason::UnsupportedMethod,
        Reason::CrcMismatch,
        Reason::SizeMismatch,
        Reason::Io,
    ];

    /// Stable kebab-case code.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::NotAZip => "not-a-zip",
            Reason::CorruptArchive => "corrupt-archive",
            Reason::CorruptData => "corrupt-data",
            Reason::NoEntries => "no-entries",
            Reason::TooManyEntries => "too-many-entries",
            Reason::EntryTooLarge => "entry-too-large",
            Reason::TotalTooLarge => "total-too-large",
            Reason::RatioTooHigh => "ratio-too-high",
            Reason::OverlappingEntries => "overlapping-entries",
            Reason::EntryOutOfBounds => "entry-out-of-bounds",
            Reason::DuplicateName => "duplicate-name",
            Reason::NameCollision => "name-collision",
            Reason::AbsolutePath => "absolute-path",
            Reason::ParentTraversal => "parent-traversal",
            Reason::BackslashInName => "backslash-in-name",
            Reason::NulInName => "nul-in-name",
            Reason::EmptyName => "empty-name",
            Reason::DotName => "dot-name",
            Reason::NameTooLong => "name-too-long",
            Reason::PathTooDeep => "path-too-deep",
            Reason::Symlink => "symlink",
            Reason::NestedArchive => "nested-archive",
            Reason::Encrypted => "encrypted",
            Reason::UnsupportedMethod => "unsupported-method",
            Reason::CrcMismatch => "crc-mismatch",
            Reason::SizeMismatch => "size-mismatch",
            Reason::Io => "io",
        }
    }

    /// What is wrong, in words for the uploader.
    pub fn summary(&self) -> &'static str {
        match self {
            Reason::NotAZip => "the file is not a readable ZIP archive",
            Reason::CorruptArchive => "the archive's structure is corrupt",
            Reason::CorruptData => "the entry's compressed data is corrupt or truncated",
            Reason::NoEntries => "the archive contains no files",
            Reason::TooManyEntries => "the archive has more entries than allowed",
            Reason::EntryTooLarge => "the entry expands beyond the per-file size limit",
            Reason::TotalTooLarge => "the archive expands beyond the per-upload size limit",
            Reason::RatioTooHigh => {
                "the entry's compression ratio is implausibly high (zip bomb protection)"
            }
            Reason::OverlappingEntries => {
                "entries share the same bytes inside the archive (zip bomb technique)"
            }
            Reason::EntryOutOfBounds => {
                "the entry's data lies outside the file (truncated or corrupt archive)"
            }
            Reason::DuplicateName => "two entries have the same name",
            Reason::NameCollision => {
                "two entry names differ only in letter case, Unicode form or redundant path segments"
            }
            Reason::AbsolutePath => "the entry name is an absolute path",
            Reason::ParentTraversal => "the entry name contains a `..` path component",
            Reason::BackslashInName => "the entry name contains a backslash",
            Reason::NulInName => "the entry name contains a NUL byte",
            Reason::EmptyName => "the entry name is empty",
            Reason::DotName => "the entry name consists only of `.` segments",
            Reason::NameTooLong => "the entry name is too long",
            Reason::PathTooDeep => "the entry name has too many folder levels",
            Reason::Symlink => "the entry is a symbolic link",
            Reason::NestedArchive => "the entry is itself an archive or compressed file",
            Reason::Encrypted => "the entry is encrypted",
            Reason::UnsupportedMethod => "the entry uses an unsupported compression method",
            Reason::CrcMismatch => "the entry's content does not match its checksum",
            Reason::SizeMismatch => "the entry's content size differs from the size it declares",
            Reason::Io => "the server could not read the archive or store its content",
        }
    }

    /// What the uploader should do about it.
    pub fn advice(&self) -> &'static str {
        match self {
            Reason::NotAZip => {
                "upload a complete .zip file made with a standard ZIP tool, or upload the file \
                 without a .zip name if it is not an archive"
            }
            Reason::CorruptArchive | Reason::CorruptData | Reason::EntryOutOfBounds => {
                "upload the file again; if this persists, re-create the archive with a standard \
                 ZIP tool"
            }
            Reason::CrcMismatch | Reason::SizeMismatch => {
                "upload the file again; if this persists, the archive is damaged or was \
                 tampered with: re-create it with a standard ZIP tool"
            }
            Reason::NoEntries => "add the files to import to the archive",
            Reason::TooManyEntries => {
                "split the upload into several archives with fewer files each"
            }
            Reason::EntryTooLarge => "split the file into smaller files",
            Reason::TotalTooLarge => "split the upload into several smaller archives",
            Reason::RatioTooHigh => "upload the file uncompressed, or split it into smaller files",
            Reason::OverlappingEntries => "re-create the archive with a standard ZIP tool",
            Reason::DuplicateName | Reason::NameCollision => {
                "remove or rename one of the two entries and re-create the archive"
            }
            Reason::AbsolutePath | Reason::ParentTraversal => {
                "re-create the archive from inside the folder to import, so that every path is \
                 relative and stays inside it"
            }
            Reason::BackslashInName => {
                "re-create the archive with a tool that uses `/` as the folder separator"
            }
            Reason::NulInName | Reason::EmptyName | Reason::DotName => {
                "remove or rename the entry and re-create the archive"
            }
            Reason::NameTooLong | Reason::PathTooDeep => {
                "shorten the name or flatten the folder structure, then re-create the archive"
            }
            Reason::Symlink => {
                "re-create the archive without symlinks (store the files themselves)"
            }
            Reason::NestedArchive => {
                "extract the inner archive and put its files into the upload directly"
            }
            Reason::Encrypted => "re-create the archive without a password",
            Reason::UnsupportedMethod => {
                "re-create the archive with the standard Deflate method or without compression"
            }
            Reason::Io => "retry the upload later; if this persists, contact the operator",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejected or failed archive.
#[derive(Debug, thiserror::Error)]
pub struct ArchiveError {
    /// The offending entry's name as stored (before normalisation), escaped
    /// for display; `None` when the archive as a whole failed.
    pub entry: Option<String>,
    /// The offending entry's position in the central directory, from 0.
    pub index: Option<usize>,
    pub reason: Reason,
    /// Specifics: sizes, offsets, the other entry, the method.
    pub detail: String,
    /// The I/O error behind an `io`, `corrupt-data` or `not-a-zip` failure.
    #[source]
    pub source: Option<io::Error>,
}

impl ArchiveError {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        ArchiveError {
            entry: None,
            index: None,
            reason,
            detail: detail.into(),
            source: None,
        }
    }

    /// Attributes the error to an entry (`name` as stored, unescaped).
    fn at(mut self, index: usize, name: &str) -> Self {
        self.index = Some(index);
        self.entry = Some(escape_name(name));
        self
    }

    fn caused_by(mut self, source: io::Error) -> Self {
        self.source = Some(source);
        self
    }

    /// Stable kebab-case code of [`Self::reason`].
    pub fn code(&self) -> &'static str {
        self.reason.code()
    }
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            Reason::Io => f.write_str("ZIP upload could not be expanded")?,
            _ => f.write_str("ZIP upload rejected")?,
        }
        write!(f, " ({}): ", self.reason.code())?;
        // Users count from 1; `index` counts from 0.
        match (&self.entry, self.index) {
            (Some(name), Some(index)) => write!(f, "entry {} \"{name}\": ", index + 1)?,
            (Some(name), None) => write!(f, "entry \"{name}\": ")?,
            _ => {}
        }
        f.write_str(self.reason.summary())?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        write!(f, ". What to do: {}.", self.reason.advice())
    }
}

/// Reads the central directory and checks every entry's metadata before any
/// decompression. Returns the file entries (directories skipped) in
/// directory order.
///
/// `archive` is read through an internal buffer; seeking must be cheap.
pub fn inspect<R: Read + Seek>(
    archive: R,
    limits: &ArchiveLimits,
) -> Result<Vec<EntryMeta>, ArchiveError> {
    let mut reader = BufReader::new(archive);
    let entries = scan(&mut reader, limits)?;
    Ok(entries
        .into_iter()
        .filter(|e| !e.is_dir)
        .map(|e| e.meta)
        .collect())
}

/// [`inspect`], then streams each file entry through the limits into the
/// sink. Returns the committed entries in directory order. On `Err`, parts
/// committed earlier in this call must be discarded by the caller.
pub fn expand<R: Read + Seek, S: PartSink>(
    archive: R,
    limits: &ArchiveLimits,
    sink: &mut S,
) -> Result<Vec<EntryMeta>, ArchiveError> {
    let mut reader = BufReader::new(archive);
    let entries = scan(&mut reader, limits)?;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let mut committed = Vec::new();
    for entry in entries.iter().filter(|e| !e.is_dir) {
        // `scan` checked the entry's compressed bytes lie inside the file,
        // outside every other entry; read exactly those.
        reader
            .seek(SeekFrom::Start(entry.data_start))
            .map_err(|e| read_failed(e).at(entry.meta.index, &entry.original))?;
        let raw = (&mut reader).take(entry.data_end - entry.data_start);
        let expanded = stream_entry(raw, entry, limits, total, &mut buf, sink)?;
        total += expanded;
        committed.push(entry.meta.clone());
    }
    tracing::debug!(
        parts = committed.len(),
        expanded_bytes = total,
        "zip archive expanded"
    );
    Ok(committed)
}

// ---------------------------------------------------------------------------
// Scanning: everything that can be checked without decompressing.

/// ZIP record signatures and sizes (APPNOTE 4.3).
const SIG_LOCAL: u32 = 0x0403_4b50;
const SIG_CENTRAL: u32 = 0x0201_4b50;
const SIG_EOCD: u32 = 0x0605_4b50;
const SIG_EOCD64_LOCATOR: u32 = 0x0706_4b50;
const SIG_EOCD64: u32 = 0x0606_4b50;
const LOCAL_HEADER_LEN: u64 = 30;
const CENTRAL_HEADER_LEN: usize = 46;
const EOCD_LEN: usize = 22;
const EOCD64_LEN: usize = 56;
const EOCD64_LOCATOR_LEN: u64 = 20;
const MAX_COMMENT_LEN: usize = 0xFFFF;

const FLAG_ENCRYPTED: u16 = 1;
const FLAG_STRONG_ENCRYPTION: u16 = 1 << 6;
const METHOD_STORED: u16 = 0;
const METHOD_DEFLATED: u16 = 8;
const METHOD_AES: u16 = 99;
const EXTRA_AES: u16 = 0x9901;

const S_IFMT: u32 = 0o170_000;
const S_IFLNK: u32 = 0o120_000;

/// Extensions of archive and compressed formats (lower case).
const NESTED_EXTENSIONS: [&str; 12] = [
    "zip", "jar", "war", "apk", "7z", "rar", "gz", "tgz", "bz2", "xz", "zst", "tar",
];

/// Bytes per read and write while streaming.
const CHUNK: usize = 64 << 10;
/// Compressed bytes buffered ahead of the inflater.
const INPUT_BUF: usize = 32 << 10;
/// Bytes sniffed for signatures before the sink sees anything (tar's
/// `ustar` sits at offset 257).
const SNIFF_LEN: usize = 262;

/// An entry that passed every metadata check.
#[derive(Debug)]
struct Scanned {
    meta: EntryMeta,
    /// The name as stored (decoded), for messages.
    original: String,
    is_dir: bool,
    header_start: u64,
    data_start: u64,
    data_end: u64,
    /// `meta.name` after NFC and case folding.
    collision_key: String,
}

/// What the zip crate's central-directory parse says about one entry.
struct View {
    name_raw: Vec<u8>,
    name: String,
    header_start: u64,
    central_header_start: u64,
    compressed_size: u64,
    size: u64,
    crc32: u32,
    is_symlink: bool,
}

struct Directory {
    entries: Vec<View>,
    has_duplicates: bool,
    cd_start: u64,
}

fn scan<R: Read + Seek>(
    reader: &mut R,
    limits: &ArchiveLimits,
) -> Result<Vec<Scanned>, ArchiveError> {
    let file_len = reader.seek(SeekFrom::End(0)).map_err(read_failed)?;
    if let Some(declared) = declared_entry_count(reader, file_len).map_err(read_failed)?
        && declared > limits.max_entries as u64
    {
        return Err(too_many_entries(declared, limits));
    }

    let dir = read_directory(reader, limits)?;
    tracing::debug!(
        entries = dir.entries.len(),
        bytes = file_len,
        "zip central directory read"
    );
    if dir.has_duplicates {
        return Err(duplicate_error(reader, dir.cd_start, file_len, limits));
    }

    let mut scanned = Vec::with_capacity(dir.entries.len());
    for (index, view) in dir.entries.into_iter().enumerate() {
        let name = view.name.clone();
        let entry = check_entry(reader, index, view, file_len, limits).map_err(|e| {
            if e.index.is_none() {
                e.at(index, &name)
            } else {
                e
            }
        })?;
        tracing::debug!(
            index,
            name = %escape_name(&entry.meta.name),
            directory = entry.is_dir,
            method = ?entry.meta.method,
            compressed = entry.meta.compressed_size,
            declared = entry.meta.declared_size,
            "zip entry checked"
        );
        scanned.push(entry);
    }
    check_collisions(&scanned)?;
    check_layout(&scanned, dir.cd_start, file_len)?;
    check_sizes(&scanned, limits)?;
    if scanned.iter().all(|e| e.is_dir) {
        return Err(ArchiveError::new(
            Reason::NoEntries,
            format!("{} entries, none of them a file", scanned.len()),
        ));
    }
    Ok(scanned)
}

/// Parses the central directory with the zip crate, under `catch_unwind`.
fn read_directory<R: Read + Seek>(
    reader: &mut R,
    limits: &ArchiveLimits,
) -> Result<Directory, ArchiveError> {
    let parse = || -> Result<Directory, ArchiveError> {
        let zip = ZipArchive::new(&mut *reader).map_err(|e| zip_error(e, Reason::NotAZip))?;
        if zip.len() > limits.max_entries {
            return Err(too_many_entries(zip.len() as u64, limits));
        }
        let mut entries = Vec::with_capacity(zip.len());
        for index in 0..zip.len() {
            let entry = zip
                .by_index_data(index)
                .map_err(|e| zip_error(e, Reason::CorruptArchive))?;
            let name = match entry.name() {
                Ok(name) => name.into_owned(),
                Err(_) => String::from_utf8_lossy(entry.name_raw()).into_owned(),
            };
            entries.push(View {
                name_raw: entry.name_raw().to_vec(),
                name,
                header_start: entry.header_start(),
                central_header_start: entry.central_header_start(),
                compressed_size: entry.compressed_size(),
                size: entry.size(),
                crc32: entry.crc32(),
                is_symlink: entry.is_symlink(),
            });
        }
        Ok(Directory {
            entries,
            has_duplicates: zip.has_duplicate_names(),
            cd_start: zip.central_directory_start(),
        })
    };
    guard_zip(parse)
}

/// Runs zip crate calls that may panic on malformed input; a panic means
/// the input is not a ZIP it can read.
fn guard_zip<T>(call: impl FnOnce() -> Result<T, ArchiveError>) -> Result<T, ArchiveError> {
    panic::catch_unwind(AssertUnwindSafe(call))
        .unwrap_or_else(|_| Err(zip_panicked(Reason::NotAZip)))
}

fn zip_error(error: ZipError, reason: Reason) -> ArchiveError {
    match error {
        ZipError::Io(e) if is_io_failure(&e) => read_failed(e),
        ZipError::Io(e) => ArchiveError::new(reason, e.to_string()).caused_by(e),
        other => ArchiveError::new(reason, other.to_string()),
    }
}

/// Whether an error is the storage's fault rather than the content's: short
/// reads and decoder complaints are the content's.
fn is_io_failure(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
    )
}

fn zip_panicked(reason: Reason) -> ArchiveError {
    ArchiveError::new(reason, "the ZIP parser failed on this input")
}

fn read_failed(e: io::Error) -> ArchiveError {
    ArchiveError::new(Reason::Io, format!("reading the archive: {e}")).caused_by(e)
}

fn too_many_entries(count: u64, limits: &ArchiveLimits) -> ArchiveError {
    ArchiveError::new(
        Reason::TooManyEntries,
        format!("{count} entries, the limit is {}", limits.max_entries),
    )
}

/// The entry count the last end-of-central-directory record declares (the
/// ZIP64 one if it defers to it), or `None` without such a record. Cheap:
/// reads at most the last 64 KiB and two small records.
fn declared_entry_count<R: Read + Seek>(reader: &mut R, file_len: u64) -> io::Result<Option<u64>> {
    let tail_len = file_len.min((EOCD_LEN + MAX_COMMENT_LEN) as u64);
    let tail_start = file_len - tail_len;
    let mut tail = vec![0u8; tail_len as usize];
    read_at(reader, tail_start, &mut tail)?;
    let Some(last) = tail.len().checked_sub(EOCD_LEN) else {
        return Ok(None);
    };
    // The last record whose comment fits in the file, as the zip crate
    // tries first.
    let Some(p) = (0..=last).rev().find(|&p| {
        le32(&tail, p) == SIG_EOCD && p + EOCD_LEN + usize::from(le16(&tail, p + 20)) <= tail.len()
    }) else {
        return Ok(None);
    };
    let on_disk = le16(&tail, p + 8);
    let total = le16(&tail, p + 10);
    let eocd_pos = tail_start + p as u64;
    let mut count = u64::from(on_disk.max(total));
    let mut cd_size = u64::from(le32(&tail, p + 12));
    let mut cd_offset = u64::from(le32(&tail, p + 16));
    // Where the central directory must end at the latest.
    let mut cd_limit = eocd_pos;
    if on_disk == 0xFFFF || total == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        // ZIP64: the locator sits right before the end record.
        if let Some(locator_pos) = eocd_pos.checked_sub(EOCD64_LOCATOR_LEN) {
            let mut locator = [0u8; EOCD64_LOCATOR_LEN as usize];
            read_at(reader, locator_pos, &mut locator)?;
            let record_pos = le64(&locator, 8);
            if le32(&locator, 0) == SIG_EOCD64_LOCATOR
                && record_pos
                    .checked_add(EOCD64_LEN as u64)
                    .is_some_and(|end| end <= file_len)
            {
                let mut record = [0u8; EOCD64_LEN];
                read_at(reader, record_pos, &mut record)?;
                if le32(&record, 0) == SIG_EOCD64 {
                    count = le64(&record, 24).max(le64(&record, 32));
                    cd_size = le64(&record, 40);
                    cd_offset = le64(&record, 48);
                    cd_limit = record_pos;
                }
            }
        }
    }
    // A record whose directory cannot precede it, or cannot hold the count
    // it claims (46 bytes per header), is corrupt: leave the verdict to the
    // parser, whose work the real headers bound, and to the count check
    // after it.
    if cd_offset.saturating_add(cd_size) > cd_limit
        || count.saturating_mul(CENTRAL_HEADER_LEN as u64) > cd_size
    {
        return Ok(None);
    }
    Ok(Some(count))
}

/// Walks the central directory to name the first pair of entries with the
/// same raw name (the zip crate keeps only the last of each).
fn duplicate_error<R: Read + Seek>(
    reader: &mut R,
    cd_start: u64,
    file_len: u64,
    limits: &ArchiveLimits,
) -> ArchiveError {
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut pos = cd_start;
    for index in 0..=limits.max_entries {
        let Ok(header) = read_central(reader, pos, file_len) else {
            break;
        };
        if let Some(&first) = seen.get(&header.name) {
            let name = decode_name(&header.name);
            return ArchiveError::new(
                Reason::DuplicateName,
                format!("entry {} has the same name", first + 1),
            )
            .at(index, &name);
        }
        pos = header.next;
        seen.insert(header.name, index);
    }
    ArchiveError::new(
        Reason::DuplicateName,
        "the central directory lists a name more than once",
    )
}

/// The parts of a central-directory header the zip crate does not expose
/// independently of its cargo features.
struct CentralHeader {
    flags: u16,
    method: u16,
    external_attributes: u32,
    name: Vec<u8>,
    has_aes_extra: bool,
    /// Where the next header starts.
    next: u64,
}

fn read_central<R: Read + Seek>(
    reader: &mut R,
    pos: u64,
    file_len: u64,
) -> Result<CentralHeader, ArchiveError> {
    let corrupt = |what: &str| {
        ArchiveError::new(
            Reason::CorruptArchive,
            format!("central directory header at byte {pos}: {what}"),
        )
    };
    let fixed_end = pos.checked_add(CENTRAL_HEADER_LEN as u64);
    if fixed_end.is_none_or(|end| end > file_len) {
        return Err(corrupt("beyond the end of the file"));
    }
    let mut h = [0u8; CENTRAL_HEADER_LEN];
    read_at(reader, pos, &mut h).map_err(read_failed)?;
    if le32(&h, 0) != SIG_CENTRAL {
        return Err(corrupt("bad signature"));
    }
    let name_len = usize::from(le16(&h, 28));
    let extra_len = usize::from(le16(&h, 30));
    let comment_len = u64::from(le16(&h, 32));
    let var_len = name_len + extra_len;
    let next = pos + (CENTRAL_HEADER_LEN + var_len) as u64 + comment_len;
    if next > file_len {
        return Err(corrupt("beyond the end of the file"));
    }
    // At most 128 KiB: both lengths are u16.
    let mut var = vec![0u8; var_len];
    reader.read_exact(&mut var).map_err(read_failed)?;
    let extra = var.split_off(name_len);
    Ok(CentralHeader {
        flags: le16(&h, 8),
        method: le16(&h, 10),
        external_attributes: le32(&h, 38),
        name: var,
        has_aes_extra: has_extra_field(&extra, EXTRA_AES),
        next,
    })
}

/// Whether an extra-field block holds a field with this id.
fn has_extra_field(mut extra: &[u8], id: u16) -> bool {
    while extra.len() >= 4 {
        if le16(extra, 0) == id {
            return true;
        }
        let skip = 4 + usize::from(le16(extra, 2));
        extra = extra.get(skip..).unwrap_or_default();
    }
    false
}

struct LocalHeader {
    flags: u16,
    method: u16,
    data_start: u64,
}

fn read_local<R: Read + Seek>(
    reader: &mut R,
    pos: u64,
    file_len: u64,
) -> Result<LocalHeader, ArchiveError> {
    if pos
        .checked_add(LOCAL_HEADER_LEN)
        .is_none_or(|end| end > file_len)
    {
        return Err(ArchiveError::new(
            Reason::EntryOutOfBounds,
            format!("local header at byte {pos}, the file has {file_len} bytes"),
        ));
    }
    let mut h = [0u8; LOCAL_HEADER_LEN as usize];
    read_at(reader, pos, &mut h).map_err(read_failed)?;
    if le32(&h, 0) != SIG_LOCAL {
        return Err(ArchiveError::new(
            Reason::CorruptArchive,
            format!("no local header at byte {pos}"),
        ));
    }
    Ok(LocalHeader {
        flags: le16(&h, 6),
        method: le16(&h, 8),
        // Cannot overflow: pos + 30 fits and the lengths are u16.
        data_start: pos + LOCAL_HEADER_LEN + u64::from(le16(&h, 26)) + u64::from(le16(&h, 28)),
    })
}

/// Checks everything about one entry that needs no other entry.
fn check_entry<R: Read + Seek>(
    reader: &mut R,
    index: usize,
    view: View,
    file_len: u64,
    limits: &ArchiveLimits,
) -> Result<Scanned, ArchiveError> {
    let fail =
        |reason: Reason, detail: String| ArchiveError::new(reason, detail).at(index, &view.name);
    let name = check_name(&view.name_raw, &view.name, limits).map_err(|(r, d)| fail(r, d))?;

    let central = read_central(reader, view.central_header_start, file_len)?;
    if central.name != view.name_raw {
        // A Unicode Path extra field replaced the header's name; tools that
        // ignore that field see the header's, so it must be safe too.
        check_name(&central.name, &decode_name(&central.name), limits)
            .map_err(|(r, d)| fail(r, format!("{d}, in the header's own name")))?;
    }

    let is_dir = view.name_raw.last() == Some(&b'/');
    let unix_type = (central.external_attributes >> 16) & S_IFMT;
    if view.is_symlink || unix_type == S_IFLNK {
        return Err(fail(
            Reason::Symlink,
            format!("Unix mode {:o}", central.external_attributes >> 16),
        ));
    }
    if central.flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION) != 0
        || central.method == METHOD_AES
        || central.has_aes_extra
    {
        return Err(fail(
            Reason::Encrypted,
            format!(
                "flags {:#06x}, method {}",
                central.flags,
                method_label(central.method)
            ),
        ));
    }
    let method = match central.method {
        METHOD_STORED => Method::Stored,
        METHOD_DEFLATED => Method::Deflated,
        other => {
            return Err(fail(Reason::UnsupportedMethod, method_label(other)));
        }
    };
    if is_dir && view.size > 0 {
        return Err(fail(
            Reason::CorruptArchive,
            format!("a directory entry declares {} bytes of content", view.size),
        ));
    }
    if !is_dir && let Some(ext) = nested_extension(&name.display) {
        return Err(fail(
            Reason::NestedArchive,
            format!("the name ends in .{ext}"),
        ));
    }

    let local = read_local(reader, view.header_start, file_len)?;
    if local.flags & FLAG_ENCRYPTED != 0 {
        return Err(fail(
            Reason::Encrypted,
            "the local header is flagged as encrypted".into(),
        ));
    }
    if local.method != central.method {
        return Err(fail(
            Reason::CorruptArchive,
            format!(
                "the local header says method {}, the central directory {}",
                method_label(local.method),
                method_label(central.method)
            ),
        ));
    }
    let data_end = local.data_start.checked_add(view.compressed_size);
    if data_end.is_none_or(|end| end > file_len) {
        return Err(fail(
            Reason::EntryOutOfBounds,
            format!(
                "{} bytes of data from byte {}, the file has {file_len} bytes",
                view.compressed_size, local.data_start
            ),
        ));
    }

    Ok(Scanned {
        collision_key: collision_key(&name.display),
        meta: EntryMeta {
            index,
            name: name.display,
            compressed_size: view.compressed_size,
            declared_size: view.size,
            crc32: view.crc32,
            method,
        },
        original: view.name,
        is_dir,
        header_start: view.header_start,
        data_start: local.data_start,
        data_end: data_end.unwrap_or(file_len),
    })
}

fn method_label(method: u16) -> String {
    format!("{method} ({})", CompressionMethod::name_from_u16(method))
}

/// A name that passed the checks.
#[derive(Debug, PartialEq, Eq)]
struct CleanName {
    /// Components joined by `/`, without `.` and empty segments.
    display: String,
}

/// Checks one entry name. `raw` is the stored bytes, `decoded` their text.
fn check_name(
    raw: &[u8],
    decoded: &str,
    limits: &ArchiveLimits,
) -> Result<CleanName, (Reason, String)> {
    if raw.is_empty() {
        return Err((Reason::EmptyName, "0 bytes".into()));
    }
    if raw.len() > limits.max_name_bytes {
        return Err((
            Reason::NameTooLong,
            format!(
                "{} bytes, the limit is {}",
                raw.len(),
                limits.max_name_bytes
            ),
        ));
    }
    if let Some(at) = raw.iter().position(|&b| b == 0) {
        return Err((Reason::NulInName, format!("at byte {at}")));
    }
    let bytes = decoded.as_bytes();
    let drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if decoded.starts_with('/') || decoded.starts_with('\\') || drive {
        return Err((
            Reason::AbsolutePath,
            "starts with a root or drive letter".into(),
        ));
    }
    // `\` counts as a separator here: Windows extractors treat it as one.
    if decoded.split(['/', '\\']).any(|part| part == "..") {
        return Err((
            Reason::ParentTraversal,
            "could write outside the target folder".into(),
        ));
    }
    if decoded.contains('\\') {
        return Err((
            Reason::BackslashInName,
            "`\\` is not a ZIP path separator".into(),
        ));
    }
    let parts: Vec<&str> = decoded
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    if parts.is_empty() {
        return Err((
            Reason::DotName,
            "names nothing but the current folder".into(),
        ));
    }
    if parts.len() > limits.max_path_depth {
        return Err((
            Reason::PathTooDeep,
            format!(
                "{} levels, the limit is {}",
                parts.len(),
                limits.max_path_depth
            ),
        ));
    }
    Ok(CleanName {
        display: parts.join("/"),
    })
}

/// Stored name bytes as text for checks and messages. Lossy is enough:
/// path syntax (`/`, `\`, `.`, `:`) is ASCII in every ZIP name encoding.
fn decode_name(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// The key two names collide under: NFC, then case folding (approximated by
/// upper- then lower-casing, which also maps `ß` to `ss`), then NFC again.
fn collision_key(name: &str) -> String {
    let folded: String = name
        .nfc()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect();
    folded.nfc().collect()
}

fn nested_extension(name: &str) -> Option<&'static str> {
    let last = name.rsplit('/').next().unwrap_or(name);
    let (_, ext) = last.rsplit_once('.')?;
    let ext = ext.to_ascii_lowercase();
    NESTED_EXTENSIONS
        .iter()
        .copied()
        .find(|&known| known == ext)
}

fn check_collisions(entries: &[Scanned]) -> Result<(), ArchiveError> {
    let mut seen: HashMap<&str, &Scanned> = HashMap::new();
    for entry in entries.iter().filter(|e| !e.is_dir) {
        if let Some(first) = seen.insert(&entry.collision_key, entry) {
            return Err(ArchiveError::new(
                Reason::NameCollision,
                format!(
                    "collides with entry {} \"{}\"",
                    first.meta.index + 1,
                    escape_name(&first.original)
                ),
            )
            .at(entry.meta.index, &entry.original));
        }
    }
    Ok(())
}

/// Rejects entries whose bytes (local header through compressed data)
/// overlap another entry's or the central directory.
fn check_layout(entries: &[Scanned], cd_start: u64, file_len: u64) -> Result<(), ArchiveError> {
    let mut ranges: Vec<(u64, u64, usize)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.header_start, e.data_end, i))
        .collect();
    ranges.sort_unstable();
    // Sorted by start, any overlap shows between neighbours.
    for pair in ranges.windows(2) {
        let ((a_start, a_end, a), (b_start, b_end, b)) = (pair[0], pair[1]);
        if b_start < a_end {
            let (a, b) = (&entries[a], &entries[b]);
            return Err(ArchiveError::new(
                Reason::OverlappingEntries,
                format!(
                    "bytes {b_start}..{b_end} overlap entry {} \"{}\" at bytes {a_start}..{a_end}",
                    a.meta.index + 1,
                    escape_name(&a.original)
                ),
            )
            .at(b.meta.index, &b.original));
        }
    }
    if let Some(e) = entries.iter().find(|e| e.data_end > cd_start) {
        return Err(ArchiveError::new(
            Reason::OverlappingEntries,
            format!(
                "data ends at byte {}, the central directory starts at byte {cd_start} \
                 (file: {file_len} bytes)",
                e.data_end
            ),
        )
        .at(e.meta.index, &e.original));
    }
    Ok(())
}

/// Declared sizes against the limits, before any decompression.
fn check_sizes(entries: &[Scanned], limits: &ArchiveLimits) -> Result<(), ArchiveError> {
    let mut total = 0u64;
    for e in entries.iter().filter(|e| !e.is_dir) {
        let m = &e.meta;
        let fail = |reason: Reason, detail: String| {
            ArchiveError::new(reason, detail).at(m.index, &e.original)
        };
        if m.declared_size > limits.max_entry_bytes {
            return Err(fail(
                Reason::EntryTooLarge,
                format!(
                    "declares {} bytes, the limit is {}",
                    m.declared_size, limits.max_entry_bytes
                ),
            ));
        }
        if m.method == Method::Stored && m.compressed_size != m.declared_size {
            return Err(fail(
                Reason::SizeMismatch,
                format!(
                    "stores {} bytes uncompressed but declares {}",
                    m.compressed_size, m.declared_size
                ),
            ));
        }
        if ratio_exceeded(m.declared_size, m.compressed_size, limits) {
            return Err(fail(
                Reason::RatioTooHigh,
                format!(
                    "declares {} bytes from {} compressed, the limit is {}:1",
                    m.declared_size, m.compressed_size, limits.max_ratio
                ),
            ));
        }
        total = total.saturating_add(m.declared_size);
        if total > limits.max_total_bytes {
            return Err(ArchiveError::new(
                Reason::TotalTooLarge,
                format!(
                    "entries up to {} declare {total} bytes, the limit is {}",
                    m.index + 1,
                    limits.max_total_bytes
                ),
            ));
        }
    }
    Ok(())
}

fn ratio_exceeded(expanded: u64, compressed: u64, limits: &ArchiveLimits) -> bool {
    expanded > limits.ratio_floor_bytes
        && expanded > compressed.max(1).saturating_mul(limits.max_ratio)
}

// ---------------------------------------------------------------------------
// Streaming.

/// The expanded bytes of one entry.
enum Source<R: Read> {
    Stored { inner: R, read: u64 },
    Deflated(flate2::bufread::DeflateDecoder<BufReader<R>>),
}

impl<R: Read> Source<R> {
    fn new(raw: R, method: Method) -> Self {
        match method {
            Method::Stored => Source::Stored {
                inner: raw,
                read: 0,
            },
            Method::Deflated => Source::Deflated(flate2::bufread::DeflateDecoder::new(
                BufReader::with_capacity(INPUT_BUF, raw),
            )),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let result = match self {
                Source::Stored { inner, read } => inner.read(buf).inspect(|&n| *read += n as u64),
                Source::Deflated(decoder) => decoder.read(buf),
            };
            match result {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Compressed bytes consumed so far (not merely buffered).
    fn consumed(&self) -> u64 {
        match self {
            Source::Stored { read, .. } => *read,
            Source::Deflated(decoder) => decoder.total_in(),
        }
    }
}

/// Counts one entry's expanded bytes against its declaration and the limits.
struct Meter<'a> {
    limits: &'a ArchiveLimits,
    declared: u64,
    /// Bytes earlier entries expanded to.
    total_before: u64,
    expanded: u64,
    crc: crc32fast::Hasher,
}

impl Meter<'_> {
    /// Accounts for `bytes` just produced, `consumed` compressed bytes in.
    /// Called before the bytes go anywhere, so no cap is ever overshot.
    fn account(&mut self, bytes: &[u8], consumed: u64) -> Result<(), (Reason, String)> {
        self.expanded += bytes.len() as u64;
        self.crc.update(bytes);
        let expanded = self.expanded;
        let limits = self.limits;
        // A lying header first: it explains every other symptom.
        if expanded > self.declared {
            return Err((
                Reason::SizeMismatch,
                format!("expands past the {} bytes it declares", self.declared),
            ));
        }
        if expanded > limits.max_entry_bytes {
            return Err((
                Reason::EntryTooLarge,
                format!(
                    "expanded past the limit of {} bytes",
                    limits.max_entry_bytes
                ),
            ));
        }
        if self.total_before.saturating_add(expanded) > limits.max_total_bytes {
            return Err((
                Reason::TotalTooLarge,
                format!(
                    "the upload expanded past the limit of {} bytes",
                    limits.max_total_bytes
                ),
            ));
        }
        if ratio_exceeded(expanded, consumed, limits) {
            return Err((
                Reason::RatioTooHigh,
                format!(
                    "{expanded} bytes came out of {consumed} compressed, the limit is {}:1",
                    limits.max_ratio
                ),
            ));
        }
        Ok(())
    }

    fn finish(self, expected_crc: u32) -> Result<u64, (Reason, String)> {
        if self.expanded != self.declared {
            return Err((
                Reason::SizeMismatch,
                format!(
                    "expanded to {} bytes, declares {}",
                    self.expanded, self.declared
                ),
            ));
        }
        crate::faults::point("zip.before-crc-check");
        let crc = self.crc.finalize();
        if crc != expected_crc {
            return Err((
                Reason::CrcMismatch,
                format!("computed {crc:08x}, declared {expected_crc:08x}"),
            ));
        }
        Ok(self.expanded)
    }
}

/// Expands one entry into the sink. `buf` is the reusable I/O buffer.
fn stream_entry<R: Read, S: PartSink>(
    raw: R,
    entry: &Scanned,
    limits: &ArchiveLimits,
    total_before: u64,
    buf: &mut [u8],
    sink: &mut S,
) -> Result<u64, ArchiveError> {
    let meta = &entry.meta;
    let fail = |reason: Reason, detail: String| {
        ArchiveError::new(reason, detail).at(meta.index, &entry.original)
    };
    // Some writers store an empty file as deflate with no bytes at all,
    // which is not a valid deflate stream; nothing to inflate is nothing.
    let method = match meta.compressed_size {
        0 => Method::Stored,
        _ => meta.method,
    };
    let mut source = Source::new(raw, method);
    let mut meter = Meter {
        limits,
        declared: meta.declared_size,
        total_before,
        expanded: 0,
        crc: crc32fast::Hasher::new(),
    };

    // Sniff before `begin`, so a nested archive never reaches the sink.
    let mut head = 0;
    while head < SNIFF_LEN {
        let n = source
            .read(&mut buf[head..SNIFF_LEN])
            .map_err(|e| read_error(e).at(meta.index, &entry.original))?;
        if n == 0 {
            break;
        }
        meter
            .account(&buf[head..head + n], source.consumed())
            .map_err(|(r, d)| fail(r, d))?;
        head += n;
    }
    if let Some(format) = archive_signature(&buf[..head]) {
        return Err(fail(
            Reason::NestedArchive,
            format!("the content starts with a {format} signature"),
        ));
    }

    let mut part = sink.begin(meta).map_err(|e| {
        ArchiveError::new(Reason::Io, format!("starting a part: {e}"))
            .caused_by(e)
            .at(meta.index, &entry.original)
    })?;
    let pumped = pump(&mut source, &mut part, &mut meter, buf, head);
    let verified = pumped.and_then(|()| {
        meter
            .finish(meta.crc32)
            .map_err(|(r, d)| ArchiveError::new(r, d))
    });
    let expanded = match verified {
        Ok(expanded) => expanded,
        Err(e) => {
            sink.abort(meta, part);
            tracing::debug!(index = meta.index, code = e.code(), "zip entry aborted");
            return Err(e.at(meta.index, &entry.original));
        }
    };
    sink.commit(meta, part, expanded).map_err(|e| {
        ArchiveError::new(Reason::Io, format!("committing the part: {e}"))
            .caused_by(e)
            .at(meta.index, &entry.original)
    })?;
    tracing::debug!(
        index = meta.index,
        name = %escape_name(&meta.name),
        expanded,
        consumed = source.consumed(),
        "zip entry expanded"
    );
    Ok(expanded)
}

/// Writes the sniffed head, then the rest of the entry, into `part`.
fn pump<R: Read, W: Write>(
    source: &mut Source<R>,
    part: &mut W,
    meter: &mut Meter<'_>,
    buf: &mut [u8],
    head: usize,
) -> Result<(), ArchiveError> {
    let write_failed =
        |e: io::Error| ArchiveError::new(Reason::Io, format!("writing the part: {e}")).caused_by(e);
    part.write_all(&buf[..head]).map_err(write_failed)?;
    loop {
        let n = source.read(buf).map_err(read_error)?;
        if n == 0 {
            return Ok(());
        }
        meter
            .account(&buf[..n], source.consumed())
            .map_err(|(r, d)| ArchiveError::new(r, d))?;
        part.write_all(&buf[..n]).map_err(write_failed)?;
    }
}

/// An error while reading an entry's expanded bytes.
fn read_error(e: io::Error) -> ArchiveError {
    if is_io_failure(&e) {
        read_failed(e)
    } else {
        ArchiveError::new(Reason::CorruptData, e.to_string()).caused_by(e)
    }
}

/// Whether `head`, a file's first bytes, is the start of a ZIP archive.
pub fn is_zip(head: &[u8]) -> bool {
    archive_signature(head) == Some("ZIP")
}

/// The archive or compressor format whose signature `head` starts with.
fn archive_signature(head: &[u8]) -> Option<&'static str> {
    const SIGNATURES: [(&[u8], &str); 9] = [
        (b"PK\x03\x04", "ZIP"),
        (b"PK\x05\x06", "ZIP"),
        (b"PK\x07\x08", "ZIP"),
        (b"\x1f\x8b\x08", "gzip"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"7z\xbc\xaf\x27\x1c", "7z"),
        (b"Rar!\x1a\x07", "RAR"),
        (b"BZh", "bzip2"),
    ];
    for (magic, format) in SIGNATURES {
        if head.starts_with(magic) {
            // "BZh" alone is ordinary text; bzip2 follows it with 1-9.
            if format == "bzip2" && !head.get(3).is_some_and(|b| (b'1'..=b'9').contains(b)) {
                continue;
            }
            return Some(format);
        }
    }
    if head.get(257..262) == Some(b"ustar") {
        return Some("tar");
    }
    None
}

// ---------------------------------------------------------------------------
// Small helpers.

fn read_at<R: Read + Seek>(reader: &mut R, pos: u64, buf: &mut [u8]) -> io::Result<()> {
    reader.seek(SeekFrom::Start(pos))?;
    reader.read_exact(buf)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// Characters shown in messages at most, so a 64 KiB name cannot flood a
/// log line.
const MAX_DISPLAY_CHARS: usize = 200;

/// A name made safe to show: control and bidi-override characters escaped,
/// long names cut.
fn escape_name(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if i == MAX_DISPLAY_CHARS {
            out.push_str(&format!("…({} bytes)", name.len()));
            break;
        }
        match c {
            '\0' => out.push_str("\\0"),
            '"' => out.push_str("\\\""),
            c if c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Cursor;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    // ---- fixtures -------------------------------------------------------

    fn corpus(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/corpora")
            .join(rel)
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Begin(usize),
        Commit(usize, u64),
        Abort(usize),
    }

    /// Keeps parts in memory and records every call.
    #[derive(Default)]
    struct MemSink {
        events: Vec<Event>,
        committed: Vec<(String, Vec<u8>)>,
        fail_begin: bool,
        /// Bytes a part accepts before writes fail.
        write_budget: Option<usize>,
        /// Most bytes any part (committed or not) ever held.
        largest_part: usize,
    }

    struct MemPart {
        bytes: Vec<u8>,
        budget: Option<usize>,
    }

    impl Write for MemPart {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self
                .budget
                .is_some_and(|budget| self.bytes.len() + buf.len() > budget)
            {
                return Err(io::Error::other("disk full"));
            }
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl PartSink for MemSink {
        type Part = MemPart;

        fn begin(&mut self, entry: &EntryMeta) -> io::Result<MemPart> {
            self.events.push(Event::Begin(entry.index));
            if self.fail_begin {
                return Err(io::Error::other("no space for a part"));
            }
            Ok(MemPart {
                bytes: Vec::new(),
                budget: self.write_budget,
            })
        }

        fn commit(&mut self, entry: &EntryMeta, part: MemPart, expanded: u64) -> io::Result<()> {
            assert_eq!(part.bytes.len() as u64, expanded);
            self.largest_part = self.largest_part.max(part.bytes.len());
            self.events.push(Event::Commit(entry.index, expanded));
            self.committed.push((entry.name.clone(), part.bytes));
            Ok(())
        }

        fn abort(&mut self, entry: &EntryMeta, part: MemPart) {
            self.largest_part = self.largest_part.max(part.bytes.len());
            self.events.push(Event::Abort(entry.index));
        }
    }

    impl MemSink {
        fn aborted(&self) -> bool {
            self.events.iter().any(|e| matches!(e, Event::Abort(_)))
        }

        fn commits(&self) -> usize {
            self.events
                .iter()
                .filter(|e| matches!(e, Event::Commit(..)))
                .count()
        }
    }

    fn expand_bytes(
        bytes: &[u8],
        limits: &ArchiveLimits,
    ) -> (Result<Vec<EntryMeta>, ArchiveError>, MemSink) {
        let mut sink = MemSink::default();
        let result = expand(Cursor::new(bytes), limits, &mut sink);
        (result, sink)
    }

    fn expand_file(
        rel: &str,
        limits: &ArchiveLimits,
    ) -> (Result<Vec<EntryMeta>, ArchiveError>, MemSink) {
        let file = File::open(corpus(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let mut sink = MemSink::default();
        let result = expand(file, limits, &mut sink);
        (result, sink)
    }

    fn code<T>(result: &Result<T, ArchiveError>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    /// One entry of a hand-built archive; every field can lie.
    #[derive(Clone)]
    struct Raw {
        name: Vec<u8>,
        method: u16,
        flags: u16,
        data: Vec<u8>,
        crc: u32,
        size: u64,
        compressed_size: Option<u64>,
        made_by: u16,
        external: u32,
        central_extra: Vec<u8>,
        offset: Option<u64>,
        local_method: Option<u16>,
        local_flags: Option<u16>,
    }

    impl Raw {
        fn stored(name: &str, content: &[u8]) -> Raw {
            Raw {
                name: name.as_bytes().to_vec(),
                method: METHOD_STORED,
                flags: 0,
                data: content.to_vec(),
                crc: crc32fast::hash(content),
                size: content.len() as u64,
                compressed_size: None,
                made_by: (3 << 8) | 20,
                external: 0o100_644 << 16,
                central_extra: Vec::new(),
                offset: None,
                local_method: None,
                local_flags: None,
            }
        }

        fn deflated(name: &str, content: &[u8]) -> Raw {
            let mut encoder =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(content).unwrap();
            Raw {
                method: METHOD_DEFLATED,
                data: encoder.finish().unwrap(),
                ..Raw::stored(name, content)
            }
        }

        fn with(mut self, change: impl FnOnce(&mut Raw)) -> Raw {
            change(&mut self);
            self
        }
    }

    fn push16(out: &mut Vec<u8>, v: u16) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    fn push32(out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// A ZIP with these entries; `declared_count` overrides the end record's.
    fn build_with(entries: &[Raw], declared_count: Option<u16>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut offsets = Vec::new();
        for e in entries {
            offsets.push(out.len() as u64);
            push32(&mut out, SIG_LOCAL);
            push16(&mut out, 20);
            push16(&mut out, e.local_flags.unwrap_or(e.flags));
            push16(&mut out, e.local_method.unwrap_or(e.method));
            push16(&mut out, 0);
            push16(&mut out, 0x21);
            push32(&mut out, e.crc);
            push32(
                &mut out,
                e.compressed_size.unwrap_or(e.data.len() as u64) as u32,
            );
            push32(&mut out, e.size as u32);
            push16(&mut out, e.name.len() as u16);
            push16(&mut out, 0);
            out.extend_from_slice(&e.name);
            out.extend_from_slice(&e.data);
        }
        let cd_start = out.len();
        for (e, offset) in entries.iter().zip(offsets) {
            push32(&mut out, SIG_CENTRAL);
            push16(&mut out, e.made_by);
            push16(&mut out, 20);
            push16(&mut out, e.flags);
            push16(&mut out, e.method);
            push16(&mut out, 0);
            push16(&mut out, 0x21);
            push32(&mut out, e.crc);
            push32(
                &mut out,
                e.compressed_size.unwrap_or(e.data.len() as u64) as u32,
            );
            push32(&mut out, e.size as u32);
            push16(&mut out, e.name.len() as u16);
            push16(&mut out, e.central_extra.len() as u16);
            push16(&mut out, 0);
            push16(&mut out, 0);
            push16(&mut out, 0);
            push32(&mut out, e.external);
            push32(&mut out, e.offset.unwrap_or(offset) as u32);
            out.extend_from_slice(&e.name);
            out.extend_from_slice(&e.central_extra);
        }
        let cd_len = out.len() - cd_start;
        let count = declared_count.unwrap_or(entries.len() as u16);
        push32(&mut out, SIG_EOCD);
        push16(&mut out, 0);
        push16(&mut out, 0);
        push16(&mut out, count);
        push16(&mut out, count);
        push32(&mut out, cd_len as u32);
        push32(&mut out, cd_start as u32);
        push16(&mut out, 0);
        out
    }

    fn build(entries: &[Raw]) -> Vec<u8> {
        build_with(entries, None)
    }

    /// Deterministic incompressible bytes (xorshift).
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    fn csv_rows(rows: usize) -> Vec<u8> {
        let mut out = b"id,square,name\n".to_vec();
        for i in 0..rows {
            out.extend_from_slice(format!("{i},{},name-{}\n", i * i, i % 97).as_bytes());
        }
        out
    }

    // ---- good archives --------------------------------------------------

    #[test]
    fn zip_writer_archive_expands_to_the_exact_content() {
        use zip::write::SimpleFileOptions;
        let deflated = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        let big = csv_rows(20_000);
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        writer.add_directory("data/", stored).unwrap();
        writer.start_file("data/rows.csv", deflated).unwrap();
        writer.write_all(&big).unwrap();
        writer.start_file("notes.txt", stored).unwrap();
        writer.write_all(b"plain text\n").unwrap();
        writer.start_file("empty.csv", deflated).unwrap();
        let bytes = writer.finish().unwrap().into_inner();

        let limits = ArchiveLimits::default();
        let listed = inspect(Cursor::new(&bytes), &limits).unwrap();
        let names: Vec<&str> = listed.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["data/rows.csv", "notes.txt", "empty.csv"]);
        assert_eq!(listed[0].method, Method::Deflated);
        assert_eq!(listed[0].declared_size, big.len() as u64);
        assert_eq!(listed[1].method, Method::Stored);

        let (result, sink) = expand_bytes(&bytes, &limits);
        assert_eq!(result.unwrap(), listed);
        assert_eq!(
            sink.events,
            [
                Event::Begin(1),
                Event::Commit(1, big.len() as u64),
                Event::Begin(2),
                Event::Commit(2, 11),
                Event::Begin(3),
                Event::Commit(3, 0),
            ]
        );
        assert_eq!(sink.committed[0], ("data/rows.csv".to_owned(), big));
        assert_eq!(sink.committed[1].1, b"plain text\n");
        assert!(sink.committed[2].1.is_empty());
    }

    #[test]
    fn benign_dot_segments_are_normalised() {
        let bytes = build(&[
            Raw::stored("./a.csv", b"a\n"),
            Raw::deflated("a/./b.csv", b"b\n"),
            Raw::stored("c//d.csv", b"d\n"),
            Raw::stored("e/", b""),
        ]);
        let (result, sink) = expand_bytes(&bytes, &ArchiveLimits::default());
        let names: Vec<String> = result.unwrap().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["a.csv", "a/b.csv", "c/d.csv"]);
        assert_eq!(sink.committed[1], ("a/b.csv".to_owned(), b"b\n".to_vec()));
    }

    #[test]
    fn empty_deflate_entry_without_bytes_is_empty() {
        let bytes = build(&[Raw::stored("empty.csv", b"").with(|e| e.method = METHOD_DEFLATED)]);
        let (result, sink) = expand_bytes(&bytes, &ArchiveLimits::default());
        assert_eq!(result.unwrap()[0].method, Method::Deflated);
        assert_eq!(sink.events, [Event::Begin(0), Event::Commit(0, 0)]);
    }

    #[test]
    fn leading_garbage_is_tolerated() {
        let mut bytes = b"#!/bin/sh\nexit 0\n".to_vec();
        bytes.extend(build(&[Raw::deflated("a.csv", b"1,2\n")]));
        let (result, sink) = expand_bytes(&bytes, &ArchiveLimits::default());
        assert_eq!(code(&result), "ok");
        assert_eq!(sink.committed[0].1, b"1,2\n");
    }

    // ---- names ----------------------------------------------------------

    #[test]
    fn name_rules() {
        let limits = ArchiveLimits {
            max_name_bytes: 32,
            max_path_depth: 3,
            ..ArchiveLimits::default()
        };
        let cases: &[(&[u8], Result<&str, Reason>)] = &[
            (b"a.csv", Ok("a.csv")),
            (b"./a.csv", Ok("a.csv")),
            (b"a/./b.csv", Ok("a/b.csv")),
            (b"a//b.csv", Ok("a/b.csv")),
            (b"dir/", Ok("dir")),
            (b"a/b/c.csv", Ok("a/b/c.csv")),
            (b"CON", Ok("CON")),
            (b"file.csv:stream", Ok("file.csv:stream")),
            (b"...", Ok("...")),
            (b"a..b", Ok("a..b")),
            (b"", Err(Reason::EmptyName)),
            (b".", Err(Reason::DotName)),
            (b"./", Err(Reason::DotName)),
            (b"./.", Err(Reason::DotName)),
            (b"..", Err(Reason::ParentTraversal)),
            (b"../x", Err(Reason::ParentTraversal)),
            (b"a/../b", Err(Reason::ParentTraversal)),
            (b"a/..", Err(Reason::ParentTraversal)),
            (b"..\\x", Err(Reason::ParentTraversal)),
            (b"/etc/passwd", Err(Reason::AbsolutePath)),
            (b"//server/share", Err(Reason::AbsolutePath)),
            (b"\\\\server\\share", Err(Reason::AbsolutePath)),
            (b"C:\\x", Err(Reason::AbsolutePath)),
            (b"C:/x", Err(Reason::AbsolutePath)),
            (b"c:x", Err(Reason::AbsolutePath)),
            (b"dir\\file.csv", Err(Reason::BackslashInName)),
            (b"a\0b", Err(Reason::NulInName)),
            (b"a/b/c/d.csv", Err(Reason::PathTooDeep)),
            (&[b'x'; 33], Err(Reason::NameTooLong)),
        ];
        for (raw, expected) in cases {
            let decoded = decode_name(raw);
            let got = check_name(raw, &decoded, &limits)
                .map(|clean| clean.display)
                .map_err(|(reason, _)| reason);
            assert_eq!(
                got,
                expected.map(str::to_owned),
                "name {:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn collision_keys_fold_case_and_unicode_form() {
        assert_eq!(collision_key("Data.CSV"), collision_key("data.csv"));
        assert_eq!(
            collision_key("cafe\u{301}.csv"),
            collision_key("caf\u{e9}.csv")
        );
        assert_eq!(
            collision_key("Stra\u{df}e.csv"),
            collision_key("STRASSE.csv")
        );
        assert_ne!(collision_key("a.csv"), collision_key("b.csv"));
    }

    #[test]
    fn escaped_names_are_safe_to_print() {
        assert_eq!(escape_name("a\0b"), "a\\0b");
        assert_eq!(escape_name("x\u{1b}[31m"), "x\\u{1b}[31m");
        assert_eq!(escape_name("evil\u{202e}vsc.exe"), "evil\\u{202e}vsc.exe");
        assert_eq!(escape_name("say \"hi\""), "say \\\"hi\\\"");
        assert_eq!(escape_name("..\\x"), "..\\x");
        let long = escape_name(&"é".repeat(1000));
        assert!(long.ends_with("…(2000 bytes)"), "{long}");
        assert!(long.chars().count() < MAX_DISPLAY_CHARS + 20);
    }

    // ---- crafted hostile archives --------------------------------------

    /// `(archive, expected code, expected failing index)`; the sink must
    /// never see a byte of these (all fail before decompression).
    #[test]
    fn crafted_metadata_attacks_are_rejected_before_decompression() {
        let ok = || Raw::stored("ok.csv", b"1\n");
        let upath = {
            // Info-ZIP Unicode Path field: version 1, CRC of the header name.
            let mut field = Vec::new();
            push16(&mut field, 0x7075);
            push16(&mut field, (5 + "good.csv".len()) as u16);
            field.push(1);
            push32(&mut field, crc32fast::hash(b"../evil.csv"));
            field.extend_from_slice(b"good.csv");
            field
        };
        let aes_extra = vec![0x01, 0x99, 7, 0, 2, 0, b'A', b'E', 3, 8, 0];
        let cases: Vec<(&str, Vec<u8>, &str, Option<usize>)> = vec![
            (
                "symlink",
                build(&[
                    ok(),
                    Raw::stored("link", b"/etc").with(|e| e.external = 0o120_777 << 16),
                ]),
                "symlink",
                Some(1),
            ),
            (
                "encrypted flag",
                build(&[Raw::stored("a.csv", b"xx").with(|e| e.flags = FLAG_ENCRYPTED)]),
                "encrypted",
                Some(0),
            ),
            (
                "AES method 99",
                build(&[Raw::stored("a.csv", b"xx").with(|e| {
                    e.method = METHOD_AES;
                    e.central_extra = aes_extra.clone();
                })]),
                "encrypted",
                Some(0),
            ),
            (
                "AES extra field only",
                build(&[Raw::stored("a.csv", b"xx").with(|e| e.central_extra = aes_extra.clone())]),
                "encrypted",
                Some(0),
            ),
            (
                "encrypted in the local header only",
                build(
                    &[Raw::stored("a.csv", b"xx").with(|e| e.local_flags = Some(FLAG_ENCRYPTED))],
                ),
                "encrypted",
                Some(0),
            ),
            (
                "bzip2",
                build(&[Raw::stored("a.csv", b"xx").with(|e| e.method = 12)]),
                "unsupported-method",
                Some(0),
            ),
            (
                "local method differs",
                build(&[
                    Raw::stored("a.csv", b"xx").with(|e| e.local_method = Some(METHOD_DEFLATED))
                ]),
                "corrupt-archive",
                Some(0),
            ),
            (
                "nested by extension",
                build(&[ok(), Raw::stored("inner.ZIP", b"not really")]),
                "nested-archive",
                Some(1),
            ),
            (
                "nested tarball by extension",
                build(&[Raw::stored("dump.tar.gz", b"x")]),
                "nested-archive",
                Some(0),
            ),
            (
                "raw duplicate",
                build(&[Raw::stored("a.csv", b"1"), ok(), Raw::stored("a.csv", b"2")]),
                "duplicate-name",
                Some(2),
            ),
            (
                "dot-segment collision",
                build(&[Raw::stored("a.csv", b"1"), Raw::stored("./a.csv", b"2")]),
                "name-collision",
                Some(1),
            ),
            (
                "case-folding collision",
                build(&[
                    Raw::stored("Straße.csv", b"1"),
                    Raw::stored("STRASSE.CSV", b"2"),
                ]),
                "name-collision",
                Some(1),
            ),
            (
                "Unicode Path hides a traversal",
                build(
                    &[Raw::stored("../evil.csv", b"x").with(|e| e.central_extra = upath.clone())],
                ),
                "parent-traversal",
                Some(0),
            ),
            (
                "two entries share one local header",
                build(&[
                    ok(),
                    ok().with(|e| {
                        e.name = b"other.csv".to_vec();
                        e.offset = Some(0);
                    }),
                ]),
                "overlapping-entries",
                Some(1),
            ),
            (
                "local header past the end",
                build(&[ok().with(|e| e.offset = Some(1 << 20))]),
                "entry-out-of-bounds",
                Some(0),
            ),
            (
                "data past the end",
                build(&[ok().with(|e| {
                    e.compressed_size = Some(1 << 20);
                    e.size = 1 << 20;
                })]),
                "entry-out-of-bounds",
                Some(0),
            ),
            (
                "data runs into the central directory",
                build(&[ok().with(|e| {
                    e.compressed_size = Some(40);
                    e.size = 40;
                })]),
                "overlapping-entries",
                Some(0),
            ),
            (
                "stored entry declares another size",
                build(&[ok().with(|e| e.size = 100)]),
                "size-mismatch",
                Some(0),
            ),
            (
                "directory with content",
                build(&[ok(), Raw::stored("dir/", b"x")]),
                "corrupt-archive",
                Some(1),
            ),
            (
                "only directories",
                build(&[Raw::stored("a/", b""), Raw::stored("a/b/", b"")]),
                "no-entries",
                None,
            ),
            (
                // Not believed for the count check; the parser then fails.
                "end record claims more entries than its directory holds",
                build_with(&[ok()], Some(60_000)),
                "not-a-zip",
                None,
            ),
        ];
        for (what, bytes, expected, index) in cases {
            let (result, sink) = expand_bytes(&bytes, &ArchiveLimits::default());
            assert_eq!(code(&result), expected, "{what}: {result:?}");
            assert_eq!(result.unwrap_err().index, index, "{what}");
            assert!(sink.events.is_empty(), "{what}: {:?}", sink.events);
        }
    }

    #[test]
    fn unsupported_methods_are_named() {
        let bytes = build(&[Raw::stored("a.csv", b"xx").with(|e| e.method = 14)]);
        let err = inspect(Cursor::new(&bytes), &ArchiveLimits::default()).unwrap_err();
        assert_eq!(err.reason, Reason::UnsupportedMethod);
        assert_eq!(err.detail, "14 (Lzma)");
    }

    #[test]
    fn entry_count_is_enforced() {
        let entries: Vec<Raw> = (0..5)
            .map(|i| Raw::stored(&format!("{i}.csv"), b"x"))
            .collect();
        let bytes = build(&entries);
        let limits = |max_entries| ArchiveLimits {
            max_entries,
            ..ArchiveLimits::default()
        };
        assert_eq!(code(&inspect(Cursor::new(&bytes), &limits(5))), "ok");
        let err = inspect(Cursor::new(&bytes), &limits(4)).unwrap_err();
        assert_eq!(err.reason, Reason::TooManyEntries);
        assert_eq!(err.detail, "5 entries, the limit is 4");
    }

    /// Moves the end of an archive from `build` to ZIP64 records.
    fn with_zip64_end(bytes: &[u8]) -> Vec<u8> {
        let eocd = bytes.len() - EOCD_LEN;
        let count = u64::from(le16(bytes, eocd + 10));
        let cd_size = u64::from(le32(bytes, eocd + 12));
        let cd_offset = u64::from(le32(bytes, eocd + 16));
        let mut out = bytes[..eocd].to_vec();
        let record_pos = out.len() as u64;
        push32(&mut out, SIG_EOCD64);
        out.extend_from_slice(&44u64.to_le_bytes());
        push16(&mut out, 45);
        push16(&mut out, 45);
        push32(&mut out, 0);
        push32(&mut out, 0);
        for v in [count, count, cd_size, cd_offset] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        push32(&mut out, SIG_EOCD64_LOCATOR);
        push32(&mut out, 0);
        out.extend_from_slice(&record_pos.to_le_bytes());
        push32(&mut out, 1);
        push32(&mut out, SIG_EOCD);
        push16(&mut out, 0);
        push16(&mut out, 0);
        push16(&mut out, 0xFFFF);
        push16(&mut out, 0xFFFF);
        push32(&mut out, 0xFFFF_FFFF);
        push32(&mut out, 0xFFFF_FFFF);
        push16(&mut out, 0);
        out
    }

    #[test]
    fn entry_count_is_read_before_the_directory() {
        let entries: Vec<Raw> = (0..3)
            .map(|i| Raw::stored(&format!("{i}.csv"), b"x"))
            .collect();
        let plain = build(&entries);
        let zip64 = with_zip64_end(&plain);
        for bytes in [&plain, &zip64] {
            let mut reader = Cursor::new(bytes);
            let len = bytes.len() as u64;
            assert_eq!(declared_entry_count(&mut reader, len).unwrap(), Some(3));
        }
        let (result, sink) = expand_bytes(&zip64, &ArchiveLimits::default());
        assert_eq!(result.unwrap().len(), 3);
        assert_eq!(sink.commits(), 3);
        let two = ArchiveLimits {
            max_entries: 2,
            ..ArchiveLimits::default()
        };
        assert_eq!(code(&expand_bytes(&zip64, &two).0), "too-many-entries");
        // Records that contradict themselves are left to the parser.
        let lying = build_with(&entries, Some(60_000));
        let len = lying.len() as u64;
        assert_eq!(
            declared_entry_count(&mut Cursor::new(&lying), len).unwrap(),
            None
        );
        assert_eq!(
            declared_entry_count(&mut Cursor::new(b"PK"), 2).unwrap(),
            None
        );
    }

    #[test]
    fn declared_sizes_are_checked_before_decompression() {
        let rows = csv_rows(2000);
        let bytes = build(&[Raw::deflated("a.csv", &rows), Raw::deflated("b.csv", &rows)]);
        let default = ArchiveLimits::default;
        let cases = [
            (
                ArchiveLimits {
                    max_entry_bytes: 1000,
                    ..default()
                },
                "entry-too-large",
            ),
            (
                ArchiveLimits {
                    max_total_bytes: rows.len() as u64 * 2 - 1,
                    ..default()
                },
                "total-too-large",
            ),
            (
                ArchiveLimits {
                    max_ratio: 1,
                    ratio_floor_bytes: 0,
                    ..default()
                },
                "ratio-too-high",
            ),
        ];
        for (limits, expected) in cases {
            let (result, sink) = expand_bytes(&bytes, &limits);
            assert_eq!(code(&result), expected);
            assert!(sink.events.is_empty());
        }
        let (result, _) = expand_bytes(&bytes, &ArchiveLimits::default());
        assert_eq!(code(&result), "ok");
    }

    #[test]
    fn nested_archives_are_found_by_content() {
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        let cases: [(&[u8], Option<&str>); 8] = [
            (b"PK\x03\x04rest", Some("ZIP")),
            (b"\x1f\x8b\x08\x00", Some("gzip")),
            (b"BZh91AY&SY", Some("bzip2")),
            (b"\xfd7zXZ\x00\x00", Some("xz")),
            (b"\x28\xb5\x2f\xfd", Some("zstd")),
            (b"7z\xbc\xaf\x27\x1c", Some("7z")),
            (&tar, Some("tar")),
            (b"BZh is how the text starts", None),
        ];
        for (content, format) in cases {
            let bytes = build(&[Raw::deflated("data.bin", content)]);
            let (result, sink) = expand_bytes(&bytes, &ArchiveLimits::default());
            match format {
                Some(format) => {
                    let err = result.unwrap_err();
                    assert_eq!(err.reason, Reason::NestedArchive, "{format}");
                    assert!(err.detail.contains(format), "{}", err.detail);
                    // Sniffed before `begin`: the sink never saw the entry.
                    assert!(sink.events.is_empty());
                }
                None => assert_eq!(sink.committed[0].1, content),
            }
        }
    }

    #[test]
    fn streaming_failures_abort_the_part() {
        let content = csv_rows(100);
        let good = Raw::deflated("good.csv", b"fine\n");
        let truncated = {
            let mut e = Raw::deflated("cut.csv", &content);
            e.data.truncate(e.data.len() / 2);
            e
        };
        let cases: [(&str, Raw, &str); 5] = [
            (
                "wrong CRC",
                Raw::deflated("bad.csv", &content).with(|e| e.crc ^= 1),
                "crc-mismatch",
            ),
            (
                "declares more than it holds",
                Raw::deflated("bad.csv", &content).with(|e| e.size += 1),
                "size-mismatch",
            ),
            (
                "declares less than it holds",
                Raw::deflated("bad.csv", &content).with(|e| e.size -= 1),
                "size-mismatch",
            ),
            ("truncated deflate stream", truncated, "corrupt-data"),
            (
                "garbage instead of deflate",
                Raw::stored("bad.csv", &noise(2000, 7)).with(|e| e.method = METHOD_DEFLATED),
                "corrupt-data",
            ),
        ];
        for (what, bad, expected) in cases {
            let bytes = build(&[good.clone(), bad]);
            let (result, sink) = expand_bytes(&bytes, &ArchiveLimits::default());
            let err = result.unwrap_err();
            assert_eq!(err.code(), expected, "{what}: {err}");
            assert_eq!(err.index, Some(1), "{what}");
            // The good entry was committed; the bad one never was.
            assert_eq!(
                sink.events[..2],
                [Event::Begin(0), Event::Commit(0, 5)],
                "{what}"
            );
            assert!(
                !sink.events[2..]
                    .iter()
                    .any(|e| matches!(e, Event::Commit(..))),
                "{what}: {:?}",
                sink.events
            );
            if sink.events.len() > 2 {
                assert_eq!(
                    sink.events[2..],
                    [Event::Begin(1), Event::Abort(1)],
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn streaming_ratio_trips_on_a_bomb_prefix() {
        // 2 MiB of zeros, then 2 MiB of noise: about 2:1 overall, so the
        // declared sizes pass, but the zeros inflate at ~1000:1.
        let mut content = vec![0u8; 2 << 20];
        content.extend(noise(2 << 20, 99));
        let bytes = build(&[Raw::deflated("prefix-bomb.csv", &content)]);
        let limits = ArchiveLimits::default();
        assert_eq!(code(&inspect(Cursor::new(&bytes), &limits)), "ok");
        let (result, sink) = expand_bytes(&bytes, &limits);
        let err = result.unwrap_err();
        assert_eq!(err.reason, Reason::RatioTooHigh, "{err}");
        assert_eq!(sink.events, [Event::Begin(0), Event::Abort(0)]);
        // Stopped long before the zeros ran out.
        assert!(sink.largest_part < 1 << 20, "{}", sink.largest_part);
    }

    #[test]
    fn streaming_caps_hold_even_when_headers_are_believed() {
        // Scan the real 256 MiB CSV bomb with limits it passes, then stream
        // it with tight ones: the caps stop it within one chunk.
        let mut file =
            BufReader::new(File::open(corpus("handmade-hostile/zip/csv_bomb_256MiB.zip")).unwrap());
        let permissive = ArchiveLimits {
            max_ratio: 1000,
            ..ArchiveLimits::default()
        };
        let entries = scan(&mut file, &permissive).unwrap();
        let entry = &entries[0];
        let tight = |change: fn(&mut ArchiveLimits)| {
            let mut limits = permissive.clone();
            change(&mut limits);
            limits
        };
        let cases: [(ArchiveLimits, u64, Reason); 3] = [
            (
                tight(|l| l.max_entry_bytes = 8 << 20),
                0,
                Reason::EntryTooLarge,
            ),
            (
                tight(|l| l.max_total_bytes = 4 << 30),
                (4 << 30) - (3 << 20),
                Reason::TotalTooLarge,
            ),
            (tight(|l| l.max_ratio = 100), 0, Reason::RatioTooHigh),
        ];
        for (limits, total_before, expected) in cases {
            let mut zip = ZipArchive::new(&mut file).unwrap();
            let raw = zip.by_index_raw(0).unwrap();
            let mut sink = MemSink::default();
            let mut buf = vec![0u8; CHUNK];
            let err =
                stream_entry(raw, entry, &limits, total_before, &mut buf, &mut sink).unwrap_err();
            assert_eq!(err.reason, expected, "{err}");
            assert_eq!(sink.events, [Event::Begin(0), Event::Abort(0)]);
            assert!(sink.largest_part <= 8 << 20, "{}", sink.largest_part);
        }
    }

    #[test]
    fn sink_failures_are_io_errors() {
        let bytes = build(&[Raw::deflated("a.csv", &csv_rows(1000))]);
        let mut sink = MemSink {
            fail_begin: true,
            ..MemSink::default()
        };
        let err = expand(Cursor::new(&bytes), &ArchiveLimits::default(), &mut sink).unwrap_err();
        assert_eq!(err.reason, Reason::Io);
        assert!(err.source.is_some());

        let mut sink = MemSink {
            write_budget: Some(1000),
            ..MemSink::default()
        };
        let err = expand(Cursor::new(&bytes), &ArchiveLimits::default(), &mut sink).unwrap_err();
        assert_eq!(err.reason, Reason::Io);
        assert!(err.detail.contains("disk full"), "{}", err.detail);
        assert_eq!(sink.events, [Event::Begin(0), Event::Abort(0)]);
    }

    #[test]
    fn zip_crate_panics_become_errors() {
        let err = guard_zip::<()>(|| panic!("simulated parser bug")).unwrap_err();
        assert_eq!(err.reason, Reason::NotAZip);
    }

    #[test]
    fn errors_say_what_where_why_and_what_to_do() {
        let bytes = build(&[
            Raw::stored("ok.csv", b"1\n"),
            Raw::stored("link\u{1b}", b"/etc").with(|e| e.external = 0o120_777 << 16),
        ]);
        let err = inspect(Cursor::new(&bytes), &ArchiveLimits::default()).unwrap_err();
        assert_eq!(err.entry.as_deref(), Some("link\\u{1b}"));
        assert_eq!(
            err.to_string(),
            "ZIP upload rejected (symlink): entry 2 \"link\\u{1b}\": the entry is a symbolic \
             link (Unix mode 120777). What to do: re-create the archive without symlinks \
             (store the files themselves)."
        );
        let err = inspect(Cursor::new(b"id,name\n1,a\n"), &ArchiveLimits::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("ZIP upload rejected (not-a-zip): the file is not a readable"),
            "{text}"
        );
        assert!(
            text.contains("What to do: upload a complete .zip file"),
            "{text}"
        );
    }

    #[test]
    fn reason_codes_are_unique_kebab_case() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let code = reason.code();
            assert!(seen.insert(code), "{code} twice");
            assert!(
                code.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                "{code}"
            );
            assert!(!reason.summary().is_empty() && !reason.advice().is_empty());
        }
    }

    #[test]
    fn default_limits() {
        let limits = ArchiveLimits::default();
        assert_eq!(limits.max_entries, 10_000);
        assert_eq!(limits.max_entry_bytes, 1 << 30);
        assert_eq!(limits.max_total_bytes, 4 << 30);
        assert_eq!(limits.max_ratio, 100);
        assert_eq!(limits.ratio_floor_bytes, 64 << 10);
        assert_eq!(limits.max_name_bytes, 1024);
        assert_eq!(limits.max_path_depth, 64);
    }

    // ---- corpora --------------------------------------------------------

    /// handmade-hostile/zip: every file with its documented outcome.
    #[test]
    fn handmade_hostile_corpus() {
        let cases: &[(&str, &str, Option<usize>)] = &[
            ("slip_dotdot.zip", "parent-traversal", Some(1)),
            ("slip_absolute.zip", "absolute-path", Some(1)),
            ("slip_backslash.zip", "parent-traversal", Some(1)),
            ("slip_dot_segments.zip", "parent-traversal", Some(2)),
            ("slip_symlink_absolute.zip", "symlink", Some(1)),
            ("slip_symlink_relative.zip", "symlink", Some(1)),
            ("name_nul_byte.zip", "nul-in-name", Some(1)),
            ("empty_and_dot_names.zip", "empty-name", Some(0)),
            ("windows_reserved_names.zip", "ok", None),
            ("duplicate_names.zip", "duplicate-name", Some(1)),
            ("case_collision.zip", "name-collision", Some(1)),
            ("unicode_nfc_nfd_collision.zip", "name-collision", Some(1)),
            ("lying_uncompressed_size.zip", "size-mismatch", Some(0)),
            ("crc_mismatch.zip", "crc-mismatch", Some(0)),
            ("truncated_no_eocd.zip", "not-a-zip", None),
            ("not_a_zip.zip", "not-a-zip", None),
            ("empty_file.zip", "not-a-zip", None),
            ("nested_zip_3_levels.zip", "nested-archive", Some(0)),
            ("many_entries_5000.zip", "ok", None),
            ("deep_and_long_paths.zip", "path-too-deep", Some(0)),
            ("csv_bomb_256MiB.zip", "ratio-too-high", Some(0)),
            ("csv_giant_field_64MiB.zip", "ratio-too-high", Some(0)),
            (
                "csv_unterminated_quote_32MiB.zip",
                "ratio-too-high",
                Some(0),
            ),
        ];
        let listed = std::fs::read_dir(corpus("handmade-hostile/zip"))
            .unwrap()
            .count();
        assert_eq!(listed, cases.len(), "a corpus file has no expectation");
        for &(file, expected, index) in cases {
            let (result, sink) = expand_file(
                &format!("handmade-hostile/zip/{file}"),
                &ArchiveLimits::default(),
            );
            assert_eq!(code(&result), expected, "{file}: {result:?}");
            if let Err(err) = &result {
                assert_eq!(err.index, index, "{file}: {err}");
            }
            // Only crc_mismatch gets as far as the sink, and it is aborted.
            if file == "crc_mismatch.zip" {
                assert_eq!(sink.events, [Event::Begin(0), Event::Abort(0)]);
            } else if result.is_err() {
                assert!(sink.events.is_empty(), "{file}: {:?}", sink.events);
            }
        }
    }

    #[test]
    fn handmade_hostile_details() {
        // slip_backslash: the drive-letter entry would be absolute on its own.
        let (result, _) = expand_file(
            "handmade-hostile/zip/slip_backslash.zip",
            &ArchiveLimits::default(),
        );
        assert_eq!(
            result.unwrap_err().entry.as_deref(),
            Some("..\\..\\..\\..\\..\\Temp\\zipslip_win_evil.csv")
        );

        // windows_reserved_names: names are never paths, so all are parts.
        let (result, sink) = expand_file(
            "handmade-hostile/zip/windows_reserved_names.zip",
            &ArchiveLimits::default(),
        );
        assert_eq!(result.unwrap().len(), 8);
        assert!(
            sink.committed
                .iter()
                .any(|(name, _)| name == "file.csv:hidden_stream")
        );

        // many_entries_5000: fine by default, rejected up front below 5000.
        let (result, sink) = expand_file(
            "handmade-hostile/zip/many_entries_5000.zip",
            &ArchiveLimits::default(),
        );
        assert_eq!(result.unwrap().len(), 5000);
        assert_eq!(sink.commits(), 5000);
        let lower = ArchiveLimits {
            max_entries: 4999,
            ..ArchiveLimits::default()
        };
        let (result, sink) = expand_file("handmade-hostile/zip/many_entries_5000.zip", &lower);
        assert_eq!(code(&result), "too-many-entries");
        assert!(sink.events.is_empty());

        // The collision names both entries.
        let (result, _) = expand_file(
            "handmade-hostile/zip/case_collision.zip",
            &ArchiveLimits::default(),
        );
        let err = result.unwrap_err();
        assert_eq!(err.entry.as_deref(), Some("data.csv"));
        assert!(
            err.detail.contains("entry 1 \"Data.csv\""),
            "{}",
            err.detail
        );

        // lying_uncompressed_size: stopped after the sniffed head, long
        // before the 10 MiB the stream holds.
        let (result, sink) = expand_file(
            "handmade-hostile/zip/lying_uncompressed_size.zip",
            &ArchiveLimits::default(),
        );
        assert!(
            result
                .unwrap_err()
                .detail
                .contains("expands past the 10 bytes")
        );
        assert!(sink.events.is_empty());

        // Believing its header, the CSV bomb still cannot pass the total cap.
        let limits = ArchiveLimits {
            max_ratio: 1000,
            max_total_bytes: 64 << 20,
            ..ArchiveLimits::default()
        };
        let (result, _) = expand_file("handmade-hostile/zip/csv_bomb_256MiB.zip", &limits);
        assert_eq!(code(&result), "total-too-large");
    }

    /// handmade-hostile/{csv,xml}: the plugin fixtures shipped as one-entry
    /// ZIPs. As uploads, the very repetitive ones exceed 100:1 and stop at
    /// the ZIP stage; the others reach the plugins intact.
    #[test]
    fn handmade_plugin_fixture_zips() {
        let cases = [
            ("csv/long_line_no_newline_4MiB.csv.zip", "ratio-too-high"),
            ("csv/wide_header_65536_cols.csv.zip", "ok"),
            ("xml/deep_nesting_100k.xml.zip", "ratio-too-high"),
            ("xml/huge_element_name_1MiB.xml.zip", "ratio-too-high"),
            ("xml/many_attributes_20k.xml.zip", "ok"),
            ("xml/many_namespace_decls_20k.xml.zip", "ok"),
            ("xml/unclosed_deep_nesting_100k.xml.zip", "ratio-too-high"),
        ];
        for (file, expected) in cases {
            let (result, sink) = expand_file(
                &format!("handmade-hostile/{file}"),
                &ArchiveLimits::default(),
            );
            assert_eq!(code(&result), expected, "{file}: {result:?}");
            if let Ok(parts) = result {
                assert_eq!(parts.len(), 1);
                assert_eq!(sink.committed[0].1.len() as u64, parts[0].declared_size);
            }
        }
    }

    /// fifield-zipbomb: the overlapping bombs are rejected as overlapping,
    /// the bzip2 one for its method (checked first), and the
    /// non-overlapping control for its ratio (~1016:1).
    #[test]
    fn fifield_zipbomb_corpus() {
        let cases = [
            ("overlap.zip", "overlapping-entries"),
            ("zbsm.zip", "overlapping-entries"),
            ("zbsm.extra.zip", "overlapping-entries"),
            ("zbbz2.zip", "unsupported-method"),
            ("no_overlap.zip", "ratio-too-high"),
        ];
        for (file, expected) in cases {
            let (result, sink) = expand_file(
                &format!("fifield-zipbomb/{file}"),
                &ArchiveLimits::default(),
            );
            assert_eq!(code(&result), expected, "{file}: {result:?}");
            assert!(sink.events.is_empty(), "{file}");
        }
        let err = expand_file("fifield-zipbomb/zbbz2.zip", &ArchiveLimits::default())
            .0
            .unwrap_err();
        assert_eq!(err.detail, "12 (Bzip2)");
        // The control really is laid out without overlap: with the ratio
        // allowed, it passes every metadata check.
        let relaxed = ArchiveLimits {
            max_ratio: 2000,
            ..ArchiveLimits::default()
        };
        let file = File::open(corpus("fifield-zipbomb/no_overlap.zip")).unwrap();
        assert_eq!(inspect(file, &relaxed).unwrap().len(), 100);
    }

    /// zip2-testdata, outcome per file with default limits:
    ///
    /// | file | outcome | why |
    /// |---|---|---|
    /// | aes_archive.zip | encrypted | AES (method 99) |
    /// | chinese.zip | ok | 1 part, CP437-decoded name |
    /// | comment_garbage.zip | no-entries | opens with 0 entries |
    /// | data_descriptor.zip | ok | sizes from the central directory |
    /// | deflate64_issue_25.zip | not-a-zip | comment runs past the file |
    /// | extended_timestamp.zip | ok | 2 parts |
    /// | extended_timestamp_bad.zip | not-a-zip | empty timestamp field |
    /// | files_and_dirs.zip | ok | 1 part, 2 directories skipped |
    /// | ignore_encryption_flag.zip | encrypted | flag bit 0 set |
    /// | invalid_cde_..._greater_offset.zip | not-a-zip | broken end record |
    /// | invalid_cde_..._smaller_offset.zip | no-entries | opens with 0 entries |
    /// | invalid_offset.zip | not-a-zip | CD offset outside the file |
    /// | invalid_offset2.zip | not-a-zip | corrupt end record |
    /// | linux-7z.zip | ok | 1 empty part |
    /// | mimetype.zip | ok | 1 part |
    /// | misaligned_comment.zip | no-entries | opens with 0 entries |
    /// | non_utf8.zip | ok | 2 parts, CP437 names |
    /// | ntfs.zip | ok | 2 parts |
    /// | ppmd.zip | unsupported-method | 98 (Ppmd) |
    /// | raw_deflate64_index_out_of_bounds.zip | nul-in-name | binary name (also deflate64) |
    /// | symlink.zip | symlink | mode 120755 |
    /// | windows-7zip.zip | ok | 1 empty part |
    /// | xz.zip | unsupported-method | 95 (Xz) |
    /// | zip64_demo.zip | ok | leading junk, ZIP64 |
    /// | zip64_magic_in_filename_1..4.zip | nul-in-name | signatures and NULs in names |
    /// | zip64_magic_in_filename_5.zip | nul-in-name | second entry |
    ///
    /// Python's zipfile calls `_3` multi-disk; the zip crate finds the real
    /// end record behind the fake one and reads its NUL-named entry.
    #[test]
    fn zip2_testdata_corpus() {
        let cases: &[(&str, &str, usize)] = &[
            ("aes_archive.zip", "encrypted", 0),
            ("chinese.zip", "ok", 1),
            ("comment_garbage.zip", "no-entries", 0),
            ("data_descriptor.zip", "ok", 1),
            ("deflate64_issue_25.zip", "not-a-zip", 0),
            ("extended_timestamp.zip", "ok", 2),
            ("extended_timestamp_bad.zip", "not-a-zip", 0),
            ("files_and_dirs.zip", "ok", 1),
            ("ignore_encryption_flag.zip", "encrypted", 0),
            (
                "invalid_cde_number_of_files_allocation_greater_offset.zip",
                "not-a-zip",
                0,
            ),
            (
                "invalid_cde_number_of_files_allocation_smaller_offset.zip",
                "no-entries",
                0,
            ),
            ("invalid_offset.zip", "not-a-zip", 0),
            ("invalid_offset2.zip", "not-a-zip", 0),
            ("linux-7z.zip", "ok", 1),
            ("mimetype.zip", "ok", 1),
            ("misaligned_comment.zip", "no-entries", 0),
            ("non_utf8.zip", "ok", 2),
            ("ntfs.zip", "ok", 2),
            ("ppmd.zip", "unsupported-method", 0),
            ("raw_deflate64_index_out_of_bounds.zip", "nul-in-name", 0),
            ("symlink.zip", "symlink", 0),
            ("windows-7zip.zip", "ok", 1),
            ("xz.zip", "unsupported-method", 0),
            ("zip64_demo.zip", "ok", 1),
            ("zip64_magic_in_filename_1.zip", "nul-in-name", 0),
            ("zip64_magic_in_filename_2.zip", "nul-in-name", 0),
            ("zip64_magic_in_filename_3.zip", "nul-in-name", 0),
            ("zip64_magic_in_filename_4.zip", "nul-in-name", 0),
            ("zip64_magic_in_filename_5.zip", "nul-in-name", 0),
        ];
        let listed = std::fs::read_dir(corpus("zip2-testdata"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "zip")
            })
            .count();
        assert_eq!(listed, cases.len(), "a corpus file has no expectation");
        for &(file, expected, parts) in cases {
            let (result, sink) =
                expand_file(&format!("zip2-testdata/{file}"), &ArchiveLimits::default());
            assert_eq!(code(&result), expected, "{file}: {result:?}");
            assert_eq!(sink.commits(), parts, "{file}");
            assert!(!sink.aborted(), "{file}");
        }
        let (_, sink) = expand_file("zip2-testdata/mimetype.zip", &ArchiveLimits::default());
        assert_eq!(
            sink.committed[0].1,
            b"application/vnd.oasis.opendocument.text"
        );
    }

    /// zip2-fuzz-seeds: all 951 AFL seeds end in Ok or an ArchiveError,
    /// quickly, with small limits.
    #[test]
    fn zip2_fuzz_seeds_never_panic_or_hang() {
        let limits = ArchiveLimits {
            max_entries: 100,
            max_entry_bytes: 1 << 20,
            max_total_bytes: 4 << 20,
            ..ArchiveLimits::default()
        };
        let mut seeds: Vec<PathBuf> = std::fs::read_dir(corpus("zip2-fuzz-seeds"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "bin"))
            .collect();
        seeds.sort();
        assert_eq!(seeds.len(), 951);
        let mut outcomes: HashMap<&'static str, usize> = HashMap::new();
        let started = Instant::now();
        for seed in &seeds {
            let bytes = std::fs::read(seed).unwrap();
            let one = Instant::now();
            let (result, sink) = expand_bytes(&bytes, &limits);
            assert!(one.elapsed() < Duration::from_secs(2), "{}", seed.display());
            *outcomes.entry(code(&result)).or_default() += 1;
            if result.is_ok() {
                assert!(!sink.aborted(), "{}", seed.display());
            }
            // Every begun part ended in a commit or an abort.
            let begun = sink
                .events
                .iter()
                .filter(|e| matches!(e, Event::Begin(_)))
                .count();
            assert_eq!(begun, sink.events.len() - begun, "{}", seed.display());
            assert!(sink.largest_part <= 1 << 20);
        }
        assert!(started.elapsed() < Duration::from_secs(60));
        // Each seed is refused for its own reason; a zip crate upgrade may
        // move seeds between reasons (review the change), never to a panic.
        let mut outcomes: Vec<_> = outcomes.into_iter().collect();
        outcomes.sort();
        assert_eq!(
            outcomes,
            [
                ("duplicate-name", 1),
                ("empty-name", 2),
                ("no-entries", 587),
                ("not-a-zip", 351),
                ("nul-in-name", 10)
            ]
        );
    }

    /// The seeds barely reach the decoder (none opens with a readable file
    /// entry), so flip every bit and cut at every length of small valid
    /// archives too: no panic, no hang, every begun part ended.
    #[test]
    fn mutated_archives_never_panic_or_leak_parts() {
        let limits = ArchiveLimits {
            max_entry_bytes: 1 << 20,
            max_total_bytes: 2 << 20,
            ..ArchiveLimits::default()
        };
        let bases = [
            build(&[
                Raw::deflated("a.csv", &csv_rows(40)),
                Raw::stored("b/c.txt", b"hello"),
                Raw::stored("d/", b""),
            ]),
            with_zip64_end(&build(&[Raw::deflated("z.csv", &csv_rows(10))])),
        ];
        let started = Instant::now();
        let mut runs = 0;
        let mut ok = 0;
        for base in &bases {
            assert_eq!(code(&expand_bytes(base, &limits).0), "ok");
            let mut variants: Vec<Vec<u8>> = (0..base.len()).map(|n| base[..n].to_vec()).collect();
            for pos in 0..base.len() {
                for bit in 0..8 {
                    let mut v = base.clone();
                    v[pos] ^= 1 << bit;
                    variants.push(v);
                }
            }
            for variant in variants {
                let (result, sink) = expand_bytes(&variant, &limits);
                runs += 1;
                ok += usize::from(result.is_ok());
                let begun = sink
                    .events
                    .iter()
                    .filter(|e| matches!(e, Event::Begin(_)))
                    .count();
                assert_eq!(begun * 2, sink.events.len(), "{:?}", sink.events);
                if let Ok(parts) = result {
                    assert_eq!(parts.len(), sink.commits());
                    for ((_, bytes), meta) in sink.committed.iter().zip(&parts) {
                        assert_eq!(crc32fast::hash(bytes), meta.crc32);
                    }
                }
            }
        }
        assert!(runs > 5000 && ok > 0, "{runs} runs, {ok} ok");
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}
