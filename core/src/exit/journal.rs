//! Replay protection that survives restarts: an exit serves each stream
//! once, whatever relays store and hand out again.
//!
//! Several relay implementations keep ephemeral events for minutes and
//! hand them to every new subscription, so an exit that restarts would see
//! the `CONNECT`s it already served and dial the backend again (a `POST`
//! would run twice). Two rules stop that:
//! - a `CONNECT` created before the exit started, less [`CLOCK_SKEW`], is
//!   never served (the subscription starts there too);
//! - every `CONNECT` served is written down (author, stream key, time) in a
//!   journal file in the exit's state directory before the backend is
//!   dialled, and one already written down is never served again, across
//!   restarts included. Entries older than the replay window are dropped
//!   when the journal is opened.
//!
//! Without a state directory the journal lives in memory only and just the
//! first rule protects a restart.
//!
//! Several instances of one exit key (`super::instances`) may share a state
//! directory: each writes its own file, `served-<exit hex>.<instance>.log`,
//! and reads every `served-<exit hex>*.log` at start, so a restarted
//! instance (new id) still knows what the one before it served. Files of
//! other instances not written to within the replay window are removed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nostr::PublicKey;

use crate::sync::lock;

/// How far before the exit's start a `CONNECT`'s `created_at` may lie
/// (clocks of entry and exit disagree a little), in seconds.
pub const CLOCK_SKEW: u64 = 5;
/// Journal entries kept in memory before old ones are pruned.
const MAX_ENTRIES: usize = 65_536;

/// What the journal says of a `CONNECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New: serve it (it is now written down).
    Fresh,
    /// Served before (by this process or an earlier one): never again.
    Served,
    /// Created before the exit started (less [`CLOCK_SKEW`]): a replay.
    BeforeStart,
}

/// The journal of served streams (see the module documentation).
#[derive(Debug)]
pub struct Journal {
    started_at: u64,
    /// How long entries matter, in seconds (the replay window, plus skew).
    keep: u64,
    served: Mutex<HashMap<(PublicKey, String), u64>>,
    file: Option<Mutex<File>>,
    path: Option<PathBuf>,
}

impl Journal {
    /// Opens (or creates) the journal of instance `instance` of the exit
    /// `exit` in `dir`, keeping entries younger than `window` (read from
    /// every instance's file); `None` keeps it in memory. A journal that
    /// cannot be written is logged and kept in memory.
    pub fn open(dir: Option<&Path>, exit: &PublicKey, instance: &str, window: Duration) -> Self {
        let now = nostr::Timestamp::now().as_secs();
        let keep = window.as_secs() + CLOCK_SKEW;
        let mut journal = Self {
            started_at: now,
            keep,
            served: Mutex::default(),
            file: None,
            path: None,
        };
        let Some(dir) = dir else {
            return journal;
        };
        let prefix = format!("served-{}", exit.to_hex());
        let path = dir.join(format!("{prefix}.{instance}.log"));
        match journal.load(dir, &prefix, &path, now) {
            Ok(file) => {
                log::info!(
                    "exit journal {}: {} streams served in the last {keep} s",
                    path.display(),
                    lock(&journal.served).len()
                );
                journal.file = Some(Mutex::new(file));
                journal.path = Some(path);
            }
            Err(e) => log::warn!(
                "exit journal {}: {e}; served streams are remembered in memory only",
                path.display()
            ),
        }
        journal
    }

    /// Reads the entries still young enough and writes them back alone.
    fn load(&self, dir: &Path, prefix: &str, path: &Path, now: u64) -> std::io::Result<File> {
        std::fs::create_dir_all(dir)?;
        let mut served = lock(&self.served);
        let files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".log"))
            })
            .collect();
        for file in files {
            let Ok(f) = File::open(&file) else { continue };
            let stale = f
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > self.keep);
            for line in BufReader::new(f).lines() {
                let line = line?;
                let mut parts = line.split(' ');
                let (Some(t), Some(author), Some(key)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let (Ok(t), Ok(author)) = (t.parse::<u64>(), PublicKey::from_hex(author)) else {
                    continue;
                };
                if t + self.keep >= now {
                    served.insert((author, key.to_string()), t);
                }
            }
            if stale && file != path {
                if let Err(e) = std::fs::remove_file(&file) {
                    log::debug!("exit journal {}: not removed: {e}", file.display());
                }
            }
        }
        let tmp = path.with_extension("log.tmp");
        {
            let mut out = File::create(&tmp)?;
            for ((author, key), t) in served.iter() {
                writeln!(out, "{t} {} {key}", author.to_hex())?;
            }
            out.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        OpenOptions::new().append(true).open(path)
    }

    /// When the exit started (Unix seconds).
    pub fn started_at(&self) -> u64 {
        self.started_at
    }

    /// The `since` of the exit's subscription (Unix seconds).
    pub fn since(&self) -> u64 {
        self.started_at.saturating_sub(CLOCK_SKEW)
    }

    /// The journal file, if there is one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Judges a `CONNECT` of stream `key` from `author` created at
    /// `created_at` (Unix seconds); a fresh one is written down before
    /// this returns.
    pub fn admit(&self, author: &PublicKey, key: &str, created_at: u64) -> Verdict {
        if created_at < self.since() {
            return Verdict::BeforeStart;
        }
        let now = nostr::Timestamp::now().as_secs();
        {
            let mut served = lock(&self.served);
            let id = (*author, key.to_string());
            if served.contains_key(&id) {
                return Verdict::Served;
            }
            if served.len() >= MAX_ENTRIES {
                let keep = self.keep;
                served.retain(|_, t| *t + keep >= now);
            }
            served.insert(id, created_at);
        }
        if let Some(file) = &self.file {
            let line = format!("{created_at} {} {key}\n", author.to_hex());
            if let Err(e) = lock(file).write_all(line.as_bytes()) {
                log::warn!("exit journal: cannot write: {e}");
            }
        }
        Verdict::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_served_once_across_restarts() {
        let dir = std::env::temp_dir().join(format!("nws-journal-{}", uuid::Uuid::new_v4()));
        let exit = nostr::Keys::generate().public_key();
        let entry = nostr::Keys::generate().public_key();
        let now = nostr::Timestamp::now().as_secs();
        let window = Duration::from_secs(60);
        let j = Journal::open(Some(&dir), &exit, "i1", window);
        assert_eq!(j.admit(&entry, "a", now), Verdict::Fresh);
        assert_eq!(j.admit(&entry, "a", now), Verdict::Served);
        assert_eq!(j.admit(&entry, "b", now - 60), Verdict::BeforeStart);
        drop(j);
        // A restart (another instance id): what the first process served
        // stays served.
        let j = Journal::open(Some(&dir), &exit, "i2", window);
        assert!(j.path().is_some());
        assert_eq!(j.admit(&entry, "a", now), Verdict::Served);
        assert_eq!(j.admit(&entry, "c", now), Verdict::Fresh);
        let other = nostr::Keys::generate().public_key();
        assert_eq!(j.admit(&other, "a", now), Verdict::Fresh);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn without_a_directory_it_remembers_in_memory() {
        let exit = nostr::Keys::generate().public_key();
        let entry = nostr::Keys::generate().public_key();
        let j = Journal::open(None, &exit, "i1", Duration::from_secs(60));
        let now = nostr::Timestamp::now().as_secs();
        assert_eq!(j.admit(&entry, "a", now), Verdict::Fresh);
        assert_eq!(j.admit(&entry, "a", now + 1), Verdict::Served);
        assert_eq!(j.since(), j.started_at() - CLOCK_SKEW);
    }
}
