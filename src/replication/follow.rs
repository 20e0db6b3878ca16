//! `walship follow`: point a standby at another upstream — the new primary
//! after a failover — checking first that it can follow it.
//!
//! Invariants: `walship.conf` changes only after the new upstream answered
//! as the same system, in an epoch no lower than the standby's own (a
//! fenced old primary is refused); the change is appended (the last value
//! of a setting wins), so the file keeps its history; a running standby is
//! told with SIGHUP and crosses the timeline switch by itself.

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::client::{Client, ClientError, SlotChoice, SlotProblem};
use super::conninfo::{is_local_host, ConnInfo};
use crate::durable::{self, DirLock, FileError};
use crate::fence::EpochFile;
use crate::meta::MetaError;
use crate::node::config::{self, ConfigError, Settings};
use crate::node::control::ControlFile;
use crate::node::datadir::DataDir;
use crate::wal::name::history_file_name;
use crate::wal::TimelineId;

#[derive(Debug, Error)]
pub enum FollowError {
    #[error("{} is not a standby (no standby.signal); make a former primary a standby with walship rejoin", .0.display())]
    NotStandby(PathBuf),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(
        "{peer} belongs to system {theirs}, this standby to system {ours}: it cannot follow it"
    )]
    OtherSystem {
        peer: String,
        theirs: String,
        ours: u64,
    },
    #[error("{peer} is in epoch {theirs}, older than this standby's epoch {ours}: it is probably a fenced old primary; follow the current primary")]
    OlderEpoch {
        peer: String,
        theirs: u64,
        ours: u64,
    },
    #[error("{peer} is a fenced old primary (fenced by epoch {by}): follow the current primary")]
    Fenced { peer: String, by: String },
    #[error("{peer} did not say {what}")]
    Unanswered { peer: String, what: &'static str },
    #[error("{peer} is this standby itself ({}): give its upstream's address", dir.display())]
    Itself { peer: String, dir: PathBuf },
    #[error(transparent)]
    DataDir(#[from] crate::node::datadir::DataDirError),
    #[error(transparent)]
    Slot(#[from] SlotProblem),
    #[error("everything else is done, but the replication slot \"{slot}\" could not be created on {peer}: {cause}; run the same command again")]
    SlotNotCreated {
        peer: String,
        slot: String,
        cause: ClientError,
    },
}

/// What `walship follow` did.
#[derive(Debug)]
pub struct Followed {
    /// The new upstream, as `host:port`.
    pub peer: String,
    pub epoch: u64,
    pub timeline: TimelineId,
    /// The pid told to reload, when the standby is running.
    pub signalled: Option<i32>,
}

/// An upstream that answered as this node's system, in an epoch no lower
/// than the node's own; its replication connection is still open.
pub(crate) struct Upstream {
    pub client: Client,
    /// How this node reaches it (`application_name` = its node name).
    pub info: ConnInfo,
    pub peer: String,
    pub timeline: TimelineId,
    pub epoch: u64,
    /// Its timeline's history file (TIMELINE_HISTORY), fetched once; empty
    /// on timeline 1, which has none.
    pub history: Vec<u8>,
    /// The node's `primary_slot_name`, if it has one: kept when no
    /// `--slot` is given.
    pub kept_slot: Option<String>,
}

impl Upstream {
    /// Refuses, before anything changes, a slot the node could not stream
    /// through: `slot` (which `--create-slot` is to make), else the
    /// `primary_slot_name` it keeps, which the new upstream must have too,
    /// or the standby would retry "slot does not exist" for ever.
    pub(crate) fn check_slot(&mut self, slot: Option<SlotChoice<'_>>) -> Result<(), FollowError> {
        match (slot, self.kept_slot.clone()) {
            (Some(slot), _) => self.client.check_slot(slot, false),
            (None, Some(kept)) => self.client.check_slot(
                SlotChoice {
                    name: &kept,
                    create: false,
                },
                true,
            ),
            (None, None) => Ok(()),
        }
    }

    /// Creates the slot `--create-slot` asked for: the last change, so
    /// that a command that fails before it leaves no slot holding WAL on
    /// the upstream, and one that fails at it is finished by running it
    /// again.
    pub(crate) fn create_slot(&mut self, slot: Option<SlotChoice<'_>>) -> Result<(), FollowError> {
        match slot {
            Some(slot) if slot.create => {
                self.client
                    .create_slot(slot.name)
                    .map_err(|cause| FollowError::SlotNotCreated {
                        peer: self.peer.clone(),
                        slot: slot.name.to_string(),
                        cause,
                    })
            }
            _ => Ok(()),
        }
    }
}

/// Connects to `from` for the node in `dir` and checks it may follow it.
pub(crate) fn check_upstream(dir: &Path, from: &ConnInfo) -> Result<Upstream, FollowError> {
    let data = DataDir::new(dir);
    let settings = Settings::load(&data.conf())?;
    let control = ControlFile::read(&data.control())?;
    let ours = EpochFile::read(&data.epoch())?;
    let mut info = from.clone();
    info.application_name = Some(settings.node_name.clone());
    let mut client = Client::connect(&info, Some("true"))?;
    let peer = client.peer().to_string();
    let unanswered = |what| FollowError::Unanswered {
        peer: peer.clone(),
        what,
    };
    let ident = client.query("IDENTIFY_SYSTEM")?;
    let system = ident
        .text(0, "systemid")
        .ok_or_else(|| unanswered("its system identifier"))?;
    if system != control.system_id.to_string() {
        return Err(FollowError::OtherSystem {
            peer,
            theirs: system,
            ours: control.system_id,
        });
    }
    let timeline = ident
        .text(0, "timeline")
        .and_then(|t| t.parse::<TimelineId>().ok())
        .ok_or_else(|| unanswered("its timeline"))?;
    let epoch = client
        .show("epoch")?
        .and_then(|e| e.parse::<u64>().ok())
        .ok_or_else(|| unanswered("its epoch"))?;
    if epoch < ours.epoch.0 {
        return Err(FollowError::OlderEpoch {
            peer,
            theirs: epoch,
            ours: ours.epoch.0,
        });
    }
    let fenced_by = client.show("fenced_by")?;
    if let Some(by) = fenced_by.filter(|b| !b.is_empty()) {
        return Err(FollowError::Fenced { peer, by });
    }
    let history = if timeline > TimelineId::FIRST {
        client.timeline_history(timeline)?
    } else {
        Vec::new()
    };
    Ok(Upstream {
        client,
        info,
        peer,
        timeline,
        epoch,
        history,
        kept_slot: Some(settings.primary_slot_name).filter(|s| !s.is_empty()),
    })
}

/// Appends `primary_conninfo` (and `primary_slot_name`) for `upstream` to
/// the node's walship.conf, saying `who` did; first keeps the upstream's
/// timeline history in `wal/`, as the walreceiver does when it streams, so
/// that a promotion of this node before it ever streamed still takes a
/// timeline above the upstream's, never one of its numbers.
pub(crate) fn point_at(
    dir: &Path,
    upstream: &Upstream,
    slot: Option<&str>,
    who: &str,
) -> Result<(), FollowError> {
    if upstream.timeline > TimelineId::FIRST {
        // Replaced whatever is there: the upstream's history is the one
        // this node follows (as the walreceiver replaces it).
        let path = DataDir::new(dir)
            .wal()
            .join(history_file_name(upstream.timeline));
        durable::replace_file(&path, &upstream.history)?;
    }
    let mut lines = vec![("primary_conninfo", upstream.info.to_conninfo_string())];
    if let Some(slot) = slot {
        lines.push(("primary_slot_name", slot.to_string()));
    }
    config::append_settings(&DataDir::new(dir).conf(), who, &lines)?;
    Ok(())
}

/// Points the standby in `dir` at `from` (optionally through `slot`,
/// which `--create-slot` creates as the last step).
pub fn follow(
    dir: &Path,
    from: &ConnInfo,
    slot: Option<SlotChoice<'_>>,
) -> Result<Followed, FollowError> {
    DataDir::new(dir).check()?;
    if !DataDir::new(dir).standby_signal().exists() {
        return Err(FollowError::NotStandby(dir.to_path_buf()));
    }
    let mut upstream = check_upstream(dir, from)?;
    upstream.check_slot(slot)?;
    // A data directory path names one node only on this host: compared
    // for an upstream reached on loopback or a local socket alone.
    let theirs = is_local_host(&from.host)
        .then(|| upstream.client.show("data_directory").ok().flatten())
        .flatten()
        .and_then(|t| std::fs::canonicalize(t).ok());
    if theirs.is_some() && theirs == std::fs::canonicalize(dir).ok() {
        return Err(FollowError::Itself {
            peer: upstream.peer,
            dir: dir.to_path_buf(),
        });
    }
    point_at(dir, &upstream, slot.map(|s| s.name), "walship follow")?;
    upstream.create_slot(slot)?;
    let Upstream {
        client,
        peer,
        timeline,
        epoch,
        ..
    } = upstream;
    client.close();
    let signalled = DirLock::holder(dir)?.and_then(|pid| pid.parse::<i32>().ok());
    if let Some(pid) = signalled {
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::SIGHUP).map_err(|e| {
            FileError::new(
                "signal the standby (SIGHUP) that holds",
                dir,
                std::io::Error::from(e),
            )
        })?;
    }
    Ok(Followed {
        peer,
        epoch,
        timeline,
        signalled,
    })
}
