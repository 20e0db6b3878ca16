//! Physical replication slots: `DIR/slots/NAME`, each holding the LSN from
//! which its consumer still needs WAL (`restart_lsn`). A segment is removed
//! only when every slot is past it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::durable::{self, FileError, IoContext};
use crate::meta::{MetaError, MetaKind};
use crate::sqlstate::{code, PgError};
use crate::wal::format::LeReader;
use crate::wal::Lsn;

const KIND: MetaKind = MetaKind {
    what: "replication slot",
    magic: 0x4c53_5357, // "WSSL"
    version: 1,
};

/// One slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// WAL from here on is kept; `None` until the slot reserves WAL or its
    /// consumer first reports a position.
    pub restart_lsn: Option<Lsn>,
    /// Whether a walsender is streaming from it now.
    pub active: bool,
    /// Invalidated for holding more than `max_slot_wal_keep_size`: it
    /// keeps nothing and cannot be streamed from.
    pub lost: bool,
}

/// Every slot of a node, persisted in one directory.
pub struct Slots {
    dir: PathBuf,
    slots: BTreeMap<String, Slot>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Slots {
    /// Loads the slots in `dir` (created if missing).
    pub fn load(dir: &Path) -> Result<Slots, MetaError> {
        if !dir.exists() {
            durable::create_dir(dir)?;
        }
        let mut slots = BTreeMap::new();
        for entry in std::fs::read_dir(dir).at("read directory", dir)? {
            let entry = entry.at("read directory", dir)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !valid_name(&name) {
                continue;
            }
            let body = KIND.read(&entry.path())?;
            let mut f = LeReader::new(&body);
            let restart = f.u64().ok_or_else(|| MetaError::Damaged {
                path: entry.path(),
                what: KIND.what,
            })?;
            let lost = f.u8().is_some_and(|b| b == 1);
            slots.insert(
                name,
                Slot {
                    restart_lsn: (restart != 0).then_some(Lsn(restart)),
                    active: false,
                    lost,
                },
            );
        }
        Ok(Slots {
            dir: dir.to_path_buf(),
            slots,
        })
    }

    fn persist(&self, name: &str, slot: &Slot) -> Result<(), MetaError> {
        let mut body = slot
            .restart_lsn
            .unwrap_or(Lsn::INVALID)
            .0
            .to_le_bytes()
            .to_vec();
        body.push(u8::from(slot.lost));
        KIND.write(&self.dir.join(name), &body)
    }

    /// Every slot, by name.
    pub fn list(&self) -> impl Iterator<Item = (&String, &Slot)> {
        self.slots.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Slot> {
        self.slots.get(name)
    }

    pub fn create(&mut self, name: &str, restart_lsn: Option<Lsn>) -> Result<(), PgError> {
        if !valid_name(name) {
            return Err(PgError::new(code::INVALID_PARAMETER_VALUE, format!("replication slot name \"{name}\" contains invalid characters"))
                .with_hint("Replication slot names may only contain lower case letters, numbers, and the underscore character."));
        }
        if self.slots.contains_key(name) {
            return Err(PgError::new(
                "42710",
                format!("replication slot \"{name}\" already exists"),
            ));
        }
        let slot = Slot {
            restart_lsn,
            active: false,
            lost: false,
        };
        self.persist(name, &slot).map_err(io_error)?;
        self.slots.insert(name.to_string(), slot);
        Ok(())
    }

    pub fn drop_slot(&mut self, name: &str) -> Result<(), PgError> {
        match self.slots.get(name) {
            None => Err(not_found(name)),
            Some(s) if s.active => Err(PgError::new(
                "55006",
                format!("replication slot \"{name}\" is active"),
            )),
            Some(_) => {
                durable::remove_file(&self.dir.join(name))
                    .map_err(|e: FileError| io_error(e.into()))?;
                self.slots.remove(name);
                Ok(())
            }
        }
    }

    /// Fails unless the slot exists, is idle and still holds its WAL.
    pub fn check_usable(&self, name: &str) -> Result<(), PgError> {
        match self.slots.get(name) {
            None => Err(not_found(name)),
            Some(s) if s.active => Err(PgError::new(
                "55006",
                format!("replication slot \"{name}\" is active for another walsender"),
            )),
            Some(s) if s.lost => Err(PgError::new(
                code::OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("can no longer get changes from replication slot \"{name}\""),
            )
            .with_detail("This slot has been invalidated because it exceeded the maximum reserved size (max_slot_wal_keep_size).")
            .with_hint("drop the slot and rebuild the standby with walship basebackup, or restore the missing WAL from the archive")),
            Some(_) => Ok(()),
        }
    }

    /// Marks a slot in use by a walsender; fails unless it is usable.
    pub fn acquire(&mut self, name: &str) -> Result<(), PgError> {
        self.check_usable(name)?;
        if let Some(s) = self.slots.get_mut(name) {
            s.active = true;
        }
        Ok(())
    }

    pub fn release(&mut self, name: &str) {
        if let Some(s) = self.slots.get_mut(name) {
            s.active = false;
        }
    }

    /// Moves a slot's restart point forward (never back) and persists it.
    pub fn advance(&mut self, name: &str, lsn: Lsn) -> Result<(), MetaError> {
        let Some(slot) = self.slots.get_mut(name) else {
            return Ok(());
        };
        if slot.lost || slot.restart_lsn.is_some_and(|r| r >= lsn) {
            return Ok(());
        }
        // Persist first: WAL is removed on the strength of the in-memory value.
        let moved = Slot {
            restart_lsn: Some(lsn),
            ..slot.clone()
        };
        self.persist(name, &moved)?;
        self.slots.insert(name.to_string(), moved);
        Ok(())
    }

    /// The oldest LSN any slot still needs.
    pub fn oldest_needed(&self) -> Option<Lsn> {
        self.slots
            .values()
            .filter(|s| !s.lost)
            .filter_map(|s| s.restart_lsn)
            .min()
    }

    /// Invalidates every slot that holds WAL from before `limit`; returns
    /// their names with what they held. Persisted before WAL goes.
    pub fn invalidate_before(&mut self, limit: Lsn) -> Result<Vec<(String, Lsn)>, MetaError> {
        let doomed: Vec<(String, Lsn)> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.lost)
            .filter_map(|(n, s)| Some((n.clone(), s.restart_lsn.filter(|r| *r < limit)?)))
            .collect();
        for (name, _) in &doomed {
            if let Some(slot) = self.slots.get(name) {
                let lost = Slot {
                    restart_lsn: None,
                    lost: true,
                    ..slot.clone()
                };
                self.persist(name, &lost)?;
                self.slots.insert(name.clone(), lost);
            }
        }
        Ok(doomed)
    }
}

fn not_found(name: &str) -> PgError {
    PgError::new(
        code::UNDEFINED_OBJECT,
        format!("replication slot \"{name}\" does not exist"),
    )
}

fn io_error(e: MetaError) -> PgError {
    PgError::new(code::IO_ERROR, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_persist_and_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slots");
        let mut s = Slots::load(&path).unwrap();
        s.create("s1", Some(Lsn(100))).unwrap();
        assert_eq!(s.create("s1", None).unwrap_err().code, "42710");
        assert_eq!(s.create("Bad-Name", None).unwrap_err().code, "22023");
        s.advance("s1", Lsn(200)).unwrap();
        s.advance("s1", Lsn(150)).unwrap();
        let again = Slots::load(&path).unwrap();
        assert_eq!(again.get("s1").unwrap().restart_lsn, Some(Lsn(200)));
        assert_eq!(again.oldest_needed(), Some(Lsn(200)));
        s.acquire("s1").unwrap();
        assert_eq!(s.drop_slot("s1").unwrap_err().code, "55006");
        s.release("s1");
        s.create("s2", Some(Lsn(50))).unwrap();
        assert_eq!(s.oldest_needed(), Some(Lsn(50)));
        assert_eq!(
            s.invalidate_before(Lsn(100)).unwrap(),
            vec![("s2".to_string(), Lsn(50))]
        );
        assert_eq!(s.oldest_needed(), Some(Lsn(200)));
        let again = Slots::load(&path).unwrap();
        assert!(again.get("s2").unwrap().lost);
        assert_eq!(s.acquire("s2").unwrap_err().code, "55000");
        s.drop_slot("s1").unwrap();
        assert!(Slots::load(&path).unwrap().get("s1").is_none());
        assert_eq!(s.drop_slot("s1").unwrap_err().code, "42704");
    }
}
