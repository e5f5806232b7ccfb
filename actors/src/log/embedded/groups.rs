//! Committed offsets of the consumer groups, kept in memory and persisted to
//! `_groups/{group}.json` by write-temp, fsync, rename, fsync-directory, so that a crash
//! leaves either the old or the new file, never a torn one.
//!
//! Every group file is loaded when the log opens, running member or not: retention keeps
//! every record some group has not durably committed past (see [`Groups::floors`]).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::log::TopicPartition;

#[derive(Serialize, Deserialize)]
struct GroupFile {
    group: String,
    offsets: Vec<CommittedOffset>,
}

#[derive(Serialize, Deserialize)]
struct CommittedOffset {
    topic: String,
    partition: i32,
    offset: i64,
}

/// The group's positions: the next offset to deliver, per partition.
pub(crate) struct GroupOffsets {
    group: String,
    path: PathBuf,
    offsets: Mutex<BTreeMap<TopicPartition, i64>>,
    /// What the file on disk says: retention goes by this, never by commits a crash could undo.
    persisted: Mutex<BTreeMap<TopicPartition, i64>>,
    dirty: AtomicBool,
    /// Serialises writers of the temp file; whoever holds it writes the newest snapshot.
    persisting: Mutex<()>,
}

impl GroupOffsets {
    /// Reads the group's file under `groups_dir`, or starts empty if there is none.
    pub(crate) fn load(groups_dir: &Path, group: &str) -> Result<Self, Error> {
        let path = groups_dir.join(format!("{group}.json"));
        let mut offsets = BTreeMap::new();
        match fs::read(&path) {
            Ok(bytes) => {
                let file: GroupFile = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::io(&path, io::Error::new(io::ErrorKind::InvalidData, e)))?;
                for entry in file.offsets {
                    offsets.insert(TopicPartition::new(entry.topic, entry.partition), entry.offset);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
        Ok(Self {
            group: group.to_owned(),
            path,
            persisted: Mutex::new(offsets.clone()),
            offsets: Mutex::new(offsets),
            dirty: AtomicBool::new(false),
            persisting: Mutex::new(()),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn get(&self, tp: &TopicPartition) -> Option<i64> {
        self.lock().get(tp).copied()
    }

    /// Records `next_offset` unless the group is already further along.
    pub(crate) fn commit(&self, tp: &TopicPartition, next_offset: i64) {
        if next_offset < 0 {
            return;
        }
        let mut offsets = self.lock();
        match offsets.get_mut(tp) {
            Some(current) if *current >= next_offset => return,
            Some(current) => *current = next_offset,
            None => {
                offsets.insert(tp.clone(), next_offset);
            }
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// Moves a position to exactly `offset`, backwards too (the log lost what it pointed past).
    pub(crate) fn reset(&self, tp: &TopicPartition, offset: i64) {
        self.lock().insert(tp.clone(), offset);
        self.dirty.store(true, Ordering::Release);
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Writes the current offsets to disk (blocking: fsync). On failure the group stays
    /// dirty so that the next flush retries.
    pub(crate) fn persist(&self) -> Result<(), Error> {
        let _writer = self.persisting.lock().unwrap_or_else(PoisonError::into_inner);
        // Cleared before the snapshot: a commit racing with this write marks it dirty again.
        self.dirty.store(false, Ordering::Release);
        let snapshot = self.lock().clone();
        let file = GroupFile {
            group: self.group.clone(),
            offsets: snapshot
                .iter()
                .map(|(tp, offset)| CommittedOffset {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: *offset,
                })
                .collect(),
        };
        let result = self.write_file(&file);
        match result {
            Ok(()) => *self.persisted.lock().unwrap_or_else(PoisonError::into_inner) = snapshot,
            Err(_) => self.dirty.store(true, Ordering::Release),
        }
        result
    }

    fn write_file(&self, file: &GroupFile) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(file)
            .map_err(|e| Error::io(&self.path, io::Error::new(io::ErrorKind::InvalidData, e)))?;
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> io::Result<()> {
            let mut out = File::create(&tmp)?;
            out.write_all(&json)?;
            out.sync_all()
        };
        write().map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<TopicPartition, i64>> {
        self.offsets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every group of the log directory, loaded once and shared by their members and retention.
pub(crate) struct Groups {
    dir: PathBuf,
    loaded: Mutex<HashMap<String, Arc<GroupOffsets>>>,
}

impl Groups {
    /// Loads every `{group}.json` under `dir`: an unreadable one fails, as retention could
    /// not know what that group still needs.
    pub(crate) fn load_all(dir: &Path) -> Result<Self, Error> {
        let mut loaded = HashMap::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name();
            let Some(group) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
            loaded.insert(group.to_owned(), Arc::new(GroupOffsets::load(dir, group)?));
        }
        Ok(Self { dir: dir.to_owned(), loaded: Mutex::new(loaded) })
    }

    /// The group's offsets, loaded (or started empty) on first use.
    pub(crate) fn get(&self, group: &str) -> Result<Arc<GroupOffsets>, Error> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(offsets) = loaded.get(group) {
            return Ok(Arc::clone(offsets));
        }
        let offsets = Arc::new(GroupOffsets::load(&self.dir, group)?);
        loaded.insert(group.to_owned(), Arc::clone(&offsets));
        Ok(offsets)
    }

    /// Per partition, the lowest durably committed offset of any group that has one there,
    /// with that group's name: records from it on are still needed.
    pub(crate) fn floors(&self) -> HashMap<TopicPartition, (i64, String)> {
        let groups: Vec<Arc<GroupOffsets>> =
            self.loaded.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        let mut floors: HashMap<TopicPartition, (i64, String)> = HashMap::new();
        for group in groups {
            for (tp, offset) in group.persisted.lock().unwrap_or_else(PoisonError::into_inner).iter() {
                let lower = floors.get(tp).is_none_or(|(floor, _)| offset < floor);
                if lower {
                    floors.insert(tp.clone(), (*offset, group.group.clone()));
                }
            }
        }
        floors
    }
}

/// Makes entries created or renamed in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}
