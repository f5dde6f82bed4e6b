//! The crate's one error type. Every variant names what it was working on:
//! the disk image or host file (path), the partition (label) or the layout
//! field, so that `cairn build` / `cairn inspect` can print it as is.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while writing or reading a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A layout size is unusable on its own (zero, not sector aligned, too
    /// small for FAT32, ...).
    #[error("disk layout: {field} = {value} bytes: {reason}")]
    InvalidSize {
        /// The `Layout` field, e.g. `esp_size`.
        field: &'static str,
        /// Its value in bytes.
        value: u64,
        /// Why it cannot be used.
        reason: String,
    },

    /// The partitions, laid out in order, run past the end of the disk.
    #[error(
        "disk layout: partition {partition} ({size} bytes at byte {offset}) does not fit a \
         {disk_size}-byte disk (the backup GPT needs the last 33 sectors): the disk must be at \
         least {required} bytes"
    )]
    DoesNotFit {
        /// Label of the first partition that does not fit.
        partition: &'static str,
        /// Its byte offset on the disk.
        offset: u64,
        /// Its size in bytes.
        size: u64,
        /// The disk size asked for.
        disk_size: u64,
        /// The smallest disk that holds every partition.
        required: u64,
    },

    /// A root slot image is larger than its partition.
    #[error(
        "slot image {path} is {size} bytes, larger than partition {partition} ({capacity} bytes)"
    )]
    SlotTooLarge {
        /// `cairn-a` or `cairn-b`.
        partition: &'static str,
        /// The image file.
        path: PathBuf,
        /// The image's size.
        size: u64,
        /// The partition's size.
        capacity: u64,
    },

    /// A path given for a file in the ESP cannot be used.
    #[error("ESP file {path:?}: {reason}")]
    EspPath {
        /// The path as given in `DiskSpec::esp_files`.
        path: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The ESP has no room left for a file.
    #[error(
        "ESP file {path}: the {esp_size}-byte EFI system partition is full ({needed} bytes of \
         files in total); raise layout.esp_size"
    )]
    EspFull {
        /// The file being written when space ran out.
        path: String,
        /// The ESP's size.
        esp_size: u64,
        /// The total size of all ESP files.
        needed: u64,
    },

    /// The FAT library failed on a file, directory or the volume (`path`
    /// is `/` for the volume itself).
    #[error("{image}: ESP {path}: {source}")]
    Fat {
        /// The disk image.
        image: PathBuf,
        /// Path inside the ESP.
        path: String,
        /// What fatfs reported.
        source: io::Error,
    },

    /// An I/O error on a host file.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "writing partition cairn-a of".
        action: String,
        /// The host file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// An input file (slot image or ESP source) is the image being written.
    #[error("{path} is both an input and the disk image being written")]
    InputIsOutput {
        /// The file.
        path: PathBuf,
    },

    /// The GPT could not be written or read.
    #[error("{path}: GPT: {source}")]
    Gpt {
        /// The disk image.
        path: PathBuf,
        /// What the `gpt` crate reported.
        source: gpt::GptError,
    },

    /// The image has no usable GPT or not what `inspect` needs.
    #[error("{path}: {reason}")]
    NotADisk {
        /// The file inspected.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
}

impl DiskError {
    pub(crate) fn io(
        action: impl Into<String>,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> Self {
        DiskError::Io {
            action: action.into(),
            path: path.into(),
            source,
        }
    }
}
