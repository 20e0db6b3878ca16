//! `walship.conf`: PostgreSQL-style settings (`name = value`, `#` comments,
//! single-quoted strings), their defaults, and which may change on SIGHUP.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

use crate::replication::conninfo::ConnInfo;
use crate::replication::syncrep::SyncStandbyNames;

/// How long a commit waits before it is acknowledged
/// (PostgreSQL's `synchronous_commit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncCommit {
    /// Acknowledge at once; the WAL writer flushes within `wal_writer_delay`.
    Off,
    /// Acknowledge once the commit's WAL is flushed locally.
    Local,
    /// As `local`, plus written by the synchronous standbys.
    RemoteWrite,
    /// As `local`, plus flushed by the synchronous standbys.
    On,
    /// As `on`, plus replayed by the synchronous standbys.
    RemoteApply,
}

impl SyncCommit {
    /// `remote_write`, `on` and `remote_apply`: the levels that wait for
    /// synchronous standbys, when there are any.
    pub fn waits_for_standbys(self) -> bool {
        matches!(
            self,
            SyncCommit::RemoteWrite | SyncCommit::On | SyncCommit::RemoteApply
        )
    }
}

impl FromStr for SyncCommit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "off" | "false" | "no" | "0" => SyncCommit::Off,
            "local" => SyncCommit::Local,
            "remote_write" => SyncCommit::RemoteWrite,
            "on" | "true" | "yes" | "1" => SyncCommit::On,
            "remote_apply" => SyncCommit::RemoteApply,
            _ => return Err("expected off, local, remote_write, on or remote_apply".into()),
        })
    }
}

impl fmt::Display for SyncCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncCommit::Off => "off",
            SyncCommit::Local => "local",
            SyncCommit::RemoteWrite => "remote_write",
            SyncCommit::On => "on",
            SyncCommit::RemoteApply => "remote_apply",
        })
    }
}

/// How clients prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// Anyone who can connect is who they say (sensible on loopback only).
    Trust,
    /// SCRAM-SHA-256 against the verifiers in `DIR/passwords`.
    ScramSha256,
}

impl FromStr for AuthMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "trust" => Ok(AuthMethod::Trust),
            "scram-sha-256" => Ok(AuthMethod::ScramSha256),
            _ => Err("expected trust or scram-sha-256".into()),
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMethod::Trust => "trust",
            AuthMethod::ScramSha256 => "scram-sha-256",
        })
    }
}

/// The longest `busy_poll`: beyond it a lone session would hold a CPU
/// for nothing.
const MAX_BUSY_POLL: Duration = Duration::from_millis(10);

/// Every setting of a node.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub listen_addresses: String,
    pub port: u16,
    pub max_connections: usize,
    /// How long a connection may take to start up and log in.
    pub authentication_timeout: Duration,
    pub authentication: AuthMethod,
    pub max_message_size: usize,
    /// How long a session polls its idle socket before it sleeps (zero:
    /// never polls); see `node::busy_poll`.
    pub busy_poll: Duration,
    pub synchronous_commit: SyncCommit,
    /// Sessions' defaults for `statement_timeout`, `lock_timeout` and
    /// `idle_in_transaction_session_timeout` (zero: none).
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    pub idle_in_transaction_session_timeout: Duration,
    pub wal_writer_delay: Duration,
    pub checkpoint_timeout: Duration,
    pub max_wal_size: u64,
    pub archive_mode: bool,
    pub node_name: String,
    pub wal_sender_timeout: Duration,
    /// A standby whose upstream has sent nothing this long reconnects
    /// (zero: never).
    pub wal_receiver_timeout: Duration,
    /// A primary that has heard from no standby this long refuses writes
    /// (zero: never).
    pub isolation_fence_timeout: Duration,
    /// Where the Prometheus metrics endpoint listens (`HOST:PORT`); empty:
    /// off.
    pub metrics_listen_address: String,
    pub max_wal_senders: usize,
    /// How a standby reaches its primary (libpq `key=value` or URI); empty
    /// on a primary.
    pub primary_conninfo: String,
    /// The physical slot a standby streams through; empty for none.
    pub primary_slot_name: String,
    /// The standbys whose confirmation a commit at `remote_write`, `on` or
    /// `remote_apply` waits for; empty: commits wait for none.
    pub synchronous_standby_names: SyncStandbyNames,
    /// WAL kept behind the insert position for standbys without a slot.
    pub wal_keep_size: u64,
    /// The most WAL a slot (or a connected standby) may hold back; `None`
    /// for no limit (`-1`).
    pub max_slot_wal_keep_size: Option<u64>,
    /// On a standby: a shell command that copies archived segment `%f` to
    /// `%p`, for WAL the primary no longer has.
    pub restore_command: String,
    /// Switch to a new segment when the current one has held WAL this long
    /// unarchived (zero: never), so the archive is never further behind.
    pub archive_timeout: Duration,
    /// The most WAL that may wait for the archiver (zero: no limit).
    pub archive_backlog_limit: u64,
    /// What happens beyond the limit.
    pub archive_backlog_policy: BacklogPolicy,
    /// The archive a promotion claims its epoch in (empty: none).
    pub archive_directory: String,
}

/// What a primary does when un-archived WAL exceeds `archive_backlog_limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BacklogPolicy {
    /// Refuse writes (SQLSTATE 53100) until the archiver catches up: the
    /// archive stays complete, the service stops.
    RefuseWrites,
    /// Give up the oldest un-archived segments (the archive gets a gap,
    /// alarmed loudly and repeatedly): the service goes on.
    AbandonArchive,
}

impl FromStr for BacklogPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "refuse_writes" => Ok(BacklogPolicy::RefuseWrites),
            "abandon_archive" => Ok(BacklogPolicy::AbandonArchive),
            _ => Err("expected refuse_writes or abandon_archive".into()),
        }
    }
}

impl fmt::Display for BacklogPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BacklogPolicy::RefuseWrites => "refuse_writes",
            BacklogPolicy::AbandonArchive => "abandon_archive",
        })
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen_addresses: "127.0.0.1".into(),
            port: 5433,
            max_connections: 100,
            authentication_timeout: Duration::from_secs(60),
            authentication: AuthMethod::Trust,
            max_message_size: 64 << 20,
            busy_poll: Duration::from_micros(50),
            synchronous_commit: SyncCommit::On,
            statement_timeout: Duration::ZERO,
            lock_timeout: Duration::ZERO,
            idle_in_transaction_session_timeout: Duration::ZERO,
            wal_writer_delay: Duration::from_millis(200),
            checkpoint_timeout: Duration::from_secs(300),
            max_wal_size: 1 << 30,
            archive_mode: false,
            node_name: "walship".into(),
            wal_sender_timeout: Duration::from_secs(60),
            wal_receiver_timeout: Duration::from_secs(60),
            isolation_fence_timeout: Duration::ZERO,
            metrics_listen_address: String::new(),
            max_wal_senders: 10,
            primary_conninfo: String::new(),
            primary_slot_name: String::new(),
            synchronous_standby_names: SyncStandbyNames::default(),
            wal_keep_size: 0,
            max_slot_wal_keep_size: None,
            restore_command: String::new(),
            archive_timeout: Duration::ZERO,
            archive_backlog_limit: 0,
            archive_backlog_policy: BacklogPolicy::RefuseWrites,
            archive_directory: String::new(),
        }
    }
}

/// One setting's documentation, for the generated `walship.conf`.
struct SettingDoc {
    name: &'static str,
    reload: bool,
    help: &'static str,
}

const DOCS: &[SettingDoc] = &[
    SettingDoc {
        name: "listen_addresses",
        reload: false,
        help: "comma-separated addresses to listen on; '*' for all (then use scram-sha-256)",
    },
    SettingDoc {
        name: "port",
        reload: false,
        help: "TCP port",
    },
    SettingDoc {
        name: "max_connections",
        reload: false,
        help: "client sessions at once (at most 1000)",
    },
    SettingDoc {
        name: "authentication_timeout",
        reload: true,
        help: "a connection that has not finished its startup and login this long after it was accepted is closed (1s to 10min)",
    },
    SettingDoc {
        name: "authentication",
        reload: true,
        help: "trust or scram-sha-256 (verifiers in DIR/users)",
    },
    SettingDoc {
        name: "max_message_size",
        reload: true,
        help: "largest protocol message a client may send",
    },
    SettingDoc {
        name: "busy_poll",
        reload: true,
        help: "a session that alone has been receiving for 10ms polls its socket this long before it sleeps, to take a lone client's next message without a CPU wake-up (0: never, at most 10ms; new connections)",
    },
    SettingDoc {
        name: "synchronous_commit",
        reload: true,
        help: "off, local, remote_write, on or remote_apply",
    },
    SettingDoc {
        name: "statement_timeout",
        reload: true,
        help: "sessions' default: a statement still waiting (for a row lock, WAIT FOR LSN) this long is stopped; as in PostgreSQL, a commit's wait for synchronous standbys is not (0: never; a session may SET its own)",
    },
    SettingDoc {
        name: "lock_timeout",
        reload: true,
        help: "sessions' default: a wait for a row lock this long fails with 55P03 (0: never; a session may SET its own)",
    },
    SettingDoc {
        name: "idle_in_transaction_session_timeout",
        reload: true,
        help: "sessions' default: a session idle this long in a transaction block it began is ended, freeing its row locks (0: never; a session may SET its own)",
    },
    SettingDoc {
        name: "wal_writer_delay",
        reload: true,
        help: "with synchronous_commit = off, WAL is flushed at least this often",
    },
    SettingDoc {
        name: "checkpoint_timeout",
        reload: true,
        help: "time between automatic checkpoints",
    },
    SettingDoc {
        name: "max_wal_size",
        reload: true,
        help: "WAL written since the last checkpoint that triggers the next one",
    },
    SettingDoc {
        name: "archive_mode",
        reload: false,
        help: "on: mark completed segments .ready and keep them until archived",
    },
    SettingDoc {
        name: "archive_timeout",
        reload: true,
        help: "switch segments when the current one has waited this long to be archived (0: never)",
    },
    SettingDoc {
        name: "archive_backlog_limit",
        reload: true,
        help: "the most WAL that may wait for the archiver, measured every second (0: no limit)",
    },
    SettingDoc {
        name: "archive_backlog_policy",
        reload: true,
        help: "past the limit: refuse_writes (SQLSTATE 53100) or abandon_archive (a gap in the archive, loudly alarmed)",
    },
    SettingDoc {
        name: "archive_directory",
        reload: true,
        help: "the archive a promotion claims its epoch in (ADIR/epoch.N, created exclusively), so two promoters cannot both win",
    },
    SettingDoc {
        name: "node_name",
        reload: true,
        help: "this node's name (application_name when it streams from a primary)",
    },
    SettingDoc {
        name: "wal_sender_timeout",
        reload: true,
        help: "end a replication connection whose standby has been silent this long (0: never)",
    },
    SettingDoc {
        name: "wal_receiver_timeout",
        reload: true,
        help: "a standby whose upstream has sent nothing this long (not even a keepalive, or the rest of a message it began) drops the connection and reconnects, so a hung primary or a black-holed network is noticed (0: never; a message begun may then take 60s)",
    },
    SettingDoc {
        name: "isolation_fence_timeout",
        reload: true,
        help: "a primary that has heard from no standby this long refuses writes (SQLSTATE 25006) until one reports again, so a primary cut off by a partition stops taking writes a promotion would lose (0: off)",
    },
    SettingDoc {
        name: "metrics_listen_address",
        reload: false,
        help: "HOST:PORT of the Prometheus metrics endpoint (GET /metrics), e.g. '127.0.0.1:9187'; empty: off",
    },
    SettingDoc {
        name: "max_wal_senders",
        reload: false,
        help: "replication connections at once",
    },
    SettingDoc {
        name: "synchronous_standby_names",
        reload: true,
        help: "standbys a commit waits for: 's1', 'FIRST 1 (s1, s2)', 'ANY 2 (s1, s2, s3)' or '*'; empty: none",
    },
    SettingDoc {
        name: "wal_keep_size",
        reload: true,
        help: "WAL kept for standbys without a slot, behind the current position",
    },
    SettingDoc {
        name: "max_slot_wal_keep_size",
        reload: true,
        help: "the most WAL a slot or connected standby may hold back (-1: no limit); past it the slot is invalidated, loudly",
    },
    SettingDoc {
        name: "primary_conninfo",
        reload: true,
        help: "on a standby (standby.signal present): how to reach the primary, e.g. 'host=10.0.0.1 port=5433 user=rep'",
    },
    SettingDoc {
        name: "restore_command",
        reload: true,
        help: "on a standby: shell command copying archived segment %f to %p, used when the primary no longer has the WAL (%r: the segment of the last restartpoint, %%: a %); at the archive's end it also fetches newer timelines' history files, to follow a promotion",
    },
    SettingDoc {
        name: "primary_slot_name",
        reload: true,
        help: "on a standby: the primary's replication slot to stream through",
    },
];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{file}:{line}: unrecognized configuration parameter \"{name}\"")]
    Unknown {
        file: String,
        line: usize,
        name: String,
    },
    #[error("{file}:{line}: invalid value for parameter \"{name}\": \"{value}\": {why}")]
    Value {
        file: String,
        line: usize,
        name: String,
        value: String,
        why: String,
    },
    #[error("{file}:{line}: syntax error: {why}")]
    Syntax {
        file: String,
        line: usize,
        why: String,
    },
    #[error("could not read {file}: {why}")]
    Read { file: String, why: String },
    #[error("{0}")]
    Write(String),
}

/// `text` (a settings file) with every line that sets one of `names` made
/// a comment that says `by` replaced it, without its value: the last line
/// of a setting wins anyway, and a value such as a `primary_conninfo`
/// holding a password that has since changed should not linger.
pub fn retire_settings(text: &str, names: &[&str], by: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for raw in text.lines() {
        match split_line(raw) {
            Ok(Some((name, _))) if names.contains(&name.as_str()) => {
                out.push_str(&format!("# {name} = ... (replaced by {by}, below)\n"));
            }
            _ => {
                out.push_str(raw);
                out.push('\n');
            }
        }
    }
    out
}

/// Appends `name = value` lines to the settings file at `path`, under a
/// comment saying who added them, and retires the earlier lines of those
/// settings ([`retire_settings`]). The result is parsed before it replaces
/// the file, atomically: a bad value never reaches the disk.
pub fn append_settings(
    path: &Path,
    who: &str,
    lines: &[(&str, String)],
) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        file: path.display().to_string(),
        why: e.to_string(),
    })?;
    let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let names: Vec<&str> = lines.iter().map(|(n, _)| *n).collect();
    let mut text = retire_settings(&text, &names, &format!("{who} at {when}"));
    text.push_str(&format!("\n# Added by {who} at {when}\n"));
    for (name, value) in lines {
        text.push_str(&format!("{name} = {}\n", quote(value)));
    }
    Settings::parse(&text, &path.display().to_string())?;
    crate::durable::replace_file(path, text.as_bytes())
        .map_err(|e| ConfigError::Write(e.to_string()))
}

impl Settings {
    /// How many connections may have a thread at once, those still
    /// starting up included: twice the sessions and walsenders allowed,
    /// as PostgreSQL's postmaster allows twice its backends as children.
    /// Beyond it a connection is refused as it is accepted, so a flood of
    /// connections that never log in cannot use up the node's threads.
    /// Whatever the settings, these threads and the walsenders' second
    /// threads stay below [`THREAD_BUDGET`].
    pub fn max_connection_threads(&self) -> usize {
        (2 * (self.max_connections + self.max_wal_senders))
            .min(THREAD_BUDGET - self.max_wal_senders)
    }

    /// Every setting's name and what it does, as `walship.conf` lists
    /// them (for `SHOW ALL`).
    pub fn documented() -> impl Iterator<Item = (&'static str, &'static str)> {
        DOCS.iter().map(|d| (d.name, d.help))
    }

    /// Reads `walship.conf`: defaults, overridden by each line in order.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: path.display().to_string(),
            why: e.to_string(),
        })?;
        Settings::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<Settings, ConfigError> {
        let mut s = Settings::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let Some((name, value)) = split_line(raw).map_err(|why| ConfigError::Syntax {
                file: file.into(),
                line,
                why,
            })?
            else {
                continue;
            };
            s.set(&name, &value).map_err(|e| match e {
                SetError::Unknown => ConfigError::Unknown {
                    file: file.into(),
                    line,
                    name: name.clone(),
                },
                SetError::Value(why) => ConfigError::Value {
                    file: file.into(),
                    line,
                    name: name.clone(),
                    value: value.clone(),
                    why,
                },
            })?;
        }
        Ok(s)
    }

    /// Sets one setting by name.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), SetError> {
        match name {
            "listen_addresses" => self.listen_addresses = value.to_string(),
            "port" => self.port = parse_num(value, 1, 65535).map_err(SetError::Value)?,
            "max_connections" => {
                self.max_connections = parse_num(value, 1, MAX_BACKENDS).map_err(SetError::Value)?
            }
            "authentication" => self.authentication = value.parse().map_err(SetError::Value)?,
            "authentication_timeout" => {
                let d = parse_duration(value).map_err(SetError::Value)?;
                if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&d) {
                    return Err(SetError::Value("expected from 1s to 10min".into()));
                }
                self.authentication_timeout = d
            }
            "max_message_size" => {
                let size = parse_size(value).map_err(SetError::Value)?;
                // Below a page, startup packets and ordinary queries would
                // be refused.
                if size < 8192 {
                    return Err(SetError::Value("expected at least 8kB".into()));
                }
                self.max_message_size = size as usize
            }
            "busy_poll" => {
                let d = parse_duration(value).map_err(|_| {
                    SetError::Value("expected a duration such as 50us or 1ms, or 0 for off".into())
                })?;
                if d > MAX_BUSY_POLL {
                    return Err(SetError::Value(format!(
                        "{value} is too long: a session polls at most 10ms (the default, 50us, covers a client's next message; 0 turns polling off)"
                    )));
                }
                self.busy_poll = d
            }
            "synchronous_commit" => {
                self.synchronous_commit = value.parse().map_err(SetError::Value)?
            }
            "statement_timeout" | "lock_timeout" | "idle_in_transaction_session_timeout" => {
                let d = parse_timeout(value).map_err(|bad| {
                    SetError::Value(format!(
                        "{}; expected milliseconds, or a time with a unit (us, ms, s, min, h, d); 0 for none",
                        bad.message(name, value)
                    ))
                })?;
                *self.session_timeout_mut(name) = d
            }
            "wal_writer_delay" => {
                self.wal_writer_delay = parse_duration(value).map_err(SetError::Value)?
            }
            "checkpoint_timeout" => {
                self.checkpoint_timeout = parse_duration(value).map_err(SetError::Value)?
            }
            "max_wal_size" => self.max_wal_size = parse_size(value).map_err(SetError::Value)?,
            "archive_mode" => self.archive_mode = parse_bool(value).map_err(SetError::Value)?,
            "node_name" => self.node_name = value.to_string(),
            "wal_sender_timeout" => {
                self.wal_sender_timeout = parse_duration(value).map_err(SetError::Value)?
            }
            "wal_receiver_timeout" => {
                self.wal_receiver_timeout = parse_duration(value).map_err(SetError::Value)?
            }
            "isolation_fence_timeout" => {
                self.isolation_fence_timeout = parse_duration(value).map_err(SetError::Value)?
            }
            "metrics_listen_address" => self.metrics_listen_address = value.to_string(),
            "max_wal_senders" => {
                self.max_wal_senders = parse_num(value, 0, MAX_BACKENDS).map_err(SetError::Value)?
            }
            "primary_conninfo" => {
                ConnInfo::parse(value).map_err(|e| SetError::Value(e.to_string()))?;
                self.primary_conninfo = value.to_string()
            }
            "primary_slot_name" => self.primary_slot_name = value.to_string(),
            "restore_command" => self.restore_command = value.to_string(),
            "archive_directory" => self.archive_directory = value.to_string(),
            "archive_timeout" => {
                self.archive_timeout = parse_duration(value).map_err(SetError::Value)?
            }
            "archive_backlog_limit" => {
                self.archive_backlog_limit = parse_size(value).map_err(SetError::Value)?
            }
            "archive_backlog_policy" => {
                self.archive_backlog_policy = value.parse().map_err(SetError::Value)?
            }
            "wal_keep_size" => self.wal_keep_size = parse_size(value).map_err(SetError::Value)?,
            "max_slot_wal_keep_size" => {
                self.max_slot_wal_keep_size = match value.trim() {
                    "-1" => None,
                    v => Some(parse_size(v).map_err(SetError::Value)?),
                }
            }
            "synchronous_standby_names" => {
                self.synchronous_standby_names =
                    SyncStandbyNames::parse(value).map_err(SetError::Value)?
            }
            _ => return Err(SetError::Unknown),
        }
        Ok(())
    }

    /// The settings that differ from `other` but cannot change without a
    /// restart.
    pub fn restart_only_changes(&self, other: &Settings) -> Vec<&'static str> {
        DOCS.iter()
            .filter(|d| !d.reload && self.show(d.name) != other.show(d.name))
            .map(|d| d.name)
            .collect()
    }

    /// These settings, but with every restart-only setting as in `running`
    /// (what a reload may apply).
    pub fn reloadable_from(self, running: &Settings) -> Settings {
        Settings {
            listen_addresses: running.listen_addresses.clone(),
            port: running.port,
            max_connections: running.max_connections,
            archive_mode: running.archive_mode,
            max_wal_senders: running.max_wal_senders,
            metrics_listen_address: running.metrics_listen_address.clone(),
            ..self
        }
    }

    /// Sessions' default for the timeout setting `name`, if it is one.
    pub fn session_timeout(&self, name: &str) -> Option<Duration> {
        match name {
            "statement_timeout" => Some(self.statement_timeout),
            "lock_timeout" => Some(self.lock_timeout),
            "idle_in_transaction_session_timeout" => Some(self.idle_in_transaction_session_timeout),
            _ => None,
        }
    }

    fn session_timeout_mut(&mut self, name: &str) -> &mut Duration {
        match name {
            "statement_timeout" => &mut self.statement_timeout,
            "lock_timeout" => &mut self.lock_timeout,
            _ => &mut self.idle_in_transaction_session_timeout,
        }
    }

    /// The value of a setting as `SHOW` prints it.
    pub fn show(&self, name: &str) -> Option<String> {
        Some(match name {
            "listen_addresses" => self.listen_addresses.clone(),
            "port" => self.port.to_string(),
            "max_connections" => self.max_connections.to_string(),
            "authentication" => self.authentication.to_string(),
            "authentication_timeout" => format_duration(self.authentication_timeout),
            "max_message_size" => format_size(self.max_message_size as u64),
            "busy_poll" => format_duration(self.busy_poll),
            "synchronous_commit" => self.synchronous_commit.to_string(),
            "statement_timeout" | "lock_timeout" | "idle_in_transaction_session_timeout" => {
                format_timeout(self.session_timeout(name)?)
            }
            "wal_writer_delay" => format_duration(self.wal_writer_delay),
            "checkpoint_timeout" => format_duration(self.checkpoint_timeout),
            "max_wal_size" => format_size(self.max_wal_size),
            "archive_mode" => if self.archive_mode { "on" } else { "off" }.into(),
            "node_name" => self.node_name.clone(),
            "wal_sender_timeout" => format_duration(self.wal_sender_timeout),
            "wal_receiver_timeout" => format_duration(self.wal_receiver_timeout),
            "isolation_fence_timeout" => format_duration(self.isolation_fence_timeout),
            "metrics_listen_address" => self.metrics_listen_address.clone(),
            "max_wal_senders" => self.max_wal_senders.to_string(),
            "primary_conninfo" => match ConnInfo::parse(&self.primary_conninfo) {
                // Never show a password.
                Ok(c) if !self.primary_conninfo.is_empty() => c.to_string(),
                _ => String::new(),
            },
            "primary_slot_name" => self.primary_slot_name.clone(),
            "restore_command" => self.restore_command.clone(),
            "archive_directory" => self.archive_directory.clone(),
            "archive_timeout" => format_duration(self.archive_timeout),
            "archive_backlog_limit" => format_size(self.archive_backlog_limit),
            "archive_backlog_policy" => self.archive_backlog_policy.to_string(),
            "synchronous_standby_names" => self.synchronous_standby_names.written.clone(),
            "wal_keep_size" => format_size(self.wal_keep_size),
            "max_slot_wal_keep_size" => match self.max_slot_wal_keep_size {
                None => "-1".into(),
                Some(v) => format_size(v),
            },
            _ => return None,
        })
    }

    /// The text of a new `walship.conf`: every setting, its default
    /// commented out, as PostgreSQL's `postgresql.conf` lists them.
    pub fn default_file(overrides: &[(&str, String)]) -> String {
        let defaults = Settings::default();
        let mut out = String::from(
            "# walship.conf: settings of one walship node.\n\
             # `name = value`; strings in single quotes; durations as 200ms, 30s, 5min;\n\
             # sizes as 64kB, 16MB, 1GB. Settings marked (reload) change on SIGHUP;\n\
             # the others need a restart.\n\n",
        );
        for doc in DOCS {
            let value = defaults.show(doc.name).unwrap_or_default();
            let over = overrides.iter().find(|(n, _)| *n == doc.name);
            let reload = if doc.reload { " (reload)" } else { "" };
            match over {
                Some((_, v)) => out.push_str(&format!(
                    "{} = {}\t# {}{reload}\n",
                    doc.name,
                    quote(v),
                    doc.help
                )),
                None => out.push_str(&format!(
                    "#{} = {}\t# {}{reload}\n",
                    doc.name,
                    quote(&value),
                    doc.help
                )),
            }
        }
        out
    }
}

/// Why one setting could not be set.
#[derive(Debug, PartialEq, Eq)]
pub enum SetError {
    Unknown,
    Value(String),
}

fn quote(v: &str) -> String {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "''"))
    }
}

/// Splits `name = value # comment` (the `=` is optional, as in
/// PostgreSQL); `None` for blank and comment lines.
fn split_line(raw: &str) -> Result<Option<(String, String)>, String> {
    let line = raw.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(line.len());
    if name_end == 0 {
        return Err(format!(
            "expected a setting name at \"{}\"",
            line.trim_end()
        ));
    }
    let name = line[..name_end].to_ascii_lowercase();
    let mut rest = line[name_end..].trim_start();
    if let Some(r) = rest.strip_prefix('=') {
        rest = r.trim_start();
    }
    let value = if let Some(r) = rest.strip_prefix('\'') {
        let mut value = String::new();
        let mut chars = r.chars().peekable();
        loop {
            match chars.next() {
                None => return Err(format!("unterminated quoted string for \"{name}\"")),
                Some('\'') if chars.peek() == Some(&'\'') => {
                    chars.next();
                    value.push('\'');
                }
                Some('\'') => break,
                Some(c) => value.push(c),
            }
        }
        let tail: String = chars.collect();
        let tail = tail.trim_start();
        if !(tail.is_empty() || tail.starts_with('#')) {
            return Err(format!(
                "unexpected \"{tail}\" after the value of \"{name}\""
            ));
        }
        value
    } else {
        let end = rest.find('#').unwrap_or(rest.len());
        let value = rest[..end].trim();
        if value.is_empty() {
            return Err(format!("missing value for \"{name}\""));
        }
        value.to_string()
    };
    Ok(Some((name, value)))
}

/// The most connections of a kind: walship serves each with a thread (a
/// walsender with two).
const MAX_BACKENDS: u64 = 1000;

/// The most threads connections may have at once, those still starting up
/// included: below the 4096 that the log's per-thread span registry can
/// number, with room for the node's own threads.
const THREAD_BUDGET: usize = 3500;

/// A whole number from `min` to `max`.
fn parse_num<T: TryFrom<u64>>(v: &str, min: u64, max: u64) -> Result<T, String> {
    v.parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("expected a whole number from {min} to {max}"))
}

/// A boolean as PostgreSQL reads one (its `parse_bool`): true, yes, false
/// and no or any prefix of them, on, off (or "of"), 1, 0; any case,
/// surrounding blanks ignored.
pub(crate) fn parse_bool(v: &str) -> Result<bool, String> {
    let v = v.trim().to_ascii_lowercase();
    let prefix_of = |word: &str| !v.is_empty() && word.starts_with(v.as_str());
    if prefix_of("true") || prefix_of("yes") || v == "on" || v == "1" {
        Ok(true)
    } else if prefix_of("false") || prefix_of("no") || v == "off" || v == "of" || v == "0" {
        Ok(false)
    } else {
        Err("expected on or off".into())
    }
}

/// Durations as humantime takes them (`200ms`, `30s`, `5min`, `1h`). Its
/// own messages list units PostgreSQL has no use for (weeks, years), so a
/// failure gets one message of ours.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v)
        .map_err(|_| "expected a duration with a unit, such as 200ms, 30s, 5min or 1h".to_string())
}

/// The longest timeout PostgreSQL takes: `INT_MAX` milliseconds.
const MAX_TIMEOUT_MS: f64 = i32::MAX as f64;

/// Why a timeout setting's value was refused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BadTimeout {
    /// Not a number with one of PostgreSQL's time units.
    NotATime,
    /// Milliseconds outside 0 .. `INT_MAX`.
    OutOfRange(f64),
}

impl BadTimeout {
    /// PostgreSQL's words for it, about the setting `name` set to `value`.
    pub fn message(self, name: &str, value: &str) -> String {
        match self {
            BadTimeout::NotATime => format!("invalid value for parameter \"{name}\": \"{value}\""),
            BadTimeout::OutOfRange(ms) => format!(
                "{ms} ms is outside the valid range for parameter \"{name}\" (0 .. {})",
                i32::MAX
            ),
        }
    }
}

/// What PostgreSQL says of the units a timeout takes.
pub const TIMEOUT_UNITS_HINT: &str =
    "Valid units for this parameter are \"us\", \"ms\", \"s\", \"min\", \"h\", and \"d\".";

/// A timeout as PostgreSQL reads one: a number (a fraction or an exponent
/// too), then optionally one of its units (`us`, `ms`, `s`, `min`, `h`,
/// `d`; none is milliseconds), rounded to whole milliseconds, from 0 to
/// `INT_MAX`.
pub fn parse_timeout(v: &str) -> Result<Duration, BadTimeout> {
    let v = v.trim();
    // No unit begins with the exponent's `e`.
    let split = v
        .find(|c: char| c.is_ascii_alphabetic() && !matches!(c, 'e' | 'E'))
        .unwrap_or(v.len());
    let (number, unit) = (v[..split].trim(), v[split..].trim());
    let number: f64 = number.parse().map_err(|_| BadTimeout::NotATime)?;
    let per_unit = match unit {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1e3,
        "min" => 6e4,
        "h" => 3.6e6,
        "d" => 8.64e7,
        _ => return Err(BadTimeout::NotATime),
    };
    let ms = (number * per_unit).round_ties_even();
    if !ms.is_finite() {
        return Err(BadTimeout::NotATime);
    }
    if !(0.0..=MAX_TIMEOUT_MS).contains(&ms) {
        return Err(BadTimeout::OutOfRange(ms));
    }
    Ok(Duration::from_millis(ms as u64))
}

/// A timeout as PostgreSQL's SHOW prints one: `0`, or the largest unit
/// that divides it exactly.
pub fn format_timeout(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0".into();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("min", 60_000),
        ("s", 1000),
    ] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Sizes with PostgreSQL's units (`B`, `kB`, `MB`, `GB`, `TB`); a bare
/// number is bytes.
pub fn parse_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num: u64 = num
        .parse()
        .map_err(|_| "expected a size such as 64kB, 16MB or 1GB".to_string())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit \"{other}\": valid units are B, kB, MB, GB and TB"
            ))
        }
    };
    num.checked_mul(mult)
        .ok_or_else(|| "size too large".to_string())
}

fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("TB", 40), ("GB", 30), ("MB", 20), ("kB", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_and_print_as_postgresql_does() {
        let ms = Duration::from_millis;
        for (text, read) in [
            ("0", Ok(ms(0))),
            ("1500", Ok(ms(1500))),
            ("2s", Ok(ms(2000))),
            (" 2 min ", Ok(ms(120_000))),
            ("1.5", Ok(ms(2))),
            ("1e3", Ok(ms(1000))),
            ("100us", Ok(ms(0))),
            ("1.5s", Ok(ms(1500))),
            ("2147483647", Ok(ms(2_147_483_647))),
            ("2147483648", Err(BadTimeout::OutOfRange(2_147_483_648.0))),
            ("-1", Err(BadTimeout::OutOfRange(-1.0))),
            ("10000000000000000000s", Err(BadTimeout::OutOfRange(1e22))),
            ("soon", Err(BadTimeout::NotATime)),
            ("1h30min", Err(BadTimeout::NotATime)),
            ("5m", Err(BadTimeout::NotATime)),
            ("nan", Err(BadTimeout::NotATime)),
            ("inf", Err(BadTimeout::NotATime)),
        ] {
            assert_eq!(parse_timeout(text), read, "{text}");
        }
        assert_eq!(
            BadTimeout::OutOfRange(-1.0).message("statement_timeout", "-1"),
            "-1 ms is outside the valid range for parameter \"statement_timeout\" (0 .. 2147483647)"
        );
        for (d, shown) in [
            (ms(0), "0"),
            (ms(1500), "1500ms"),
            (ms(90_000), "90s"),
            (ms(120_000), "2min"),
            (ms(86_400_000), "1d"),
        ] {
            assert_eq!(format_timeout(d), shown);
        }
    }

    #[test]
    fn parses_postgres_style_lines() {
        let s = Settings::parse(
            "# comment\n\nport = 6000\nsynchronous_commit off  # trailing\nnode_name = 'it''s'\nmax_wal_size=64MB\ncheckpoint_timeout = 30s\n",
            "walship.conf",
        )
        .unwrap();
        assert_eq!(s.port, 6000);
        assert_eq!(s.synchronous_commit, SyncCommit::Off);
        assert_eq!(s.node_name, "it's");
        assert_eq!(s.max_wal_size, 64 << 20);
        assert_eq!(s.checkpoint_timeout, Duration::from_secs(30));
    }

    #[test]
    fn errors_name_the_line_and_setting() {
        let e = Settings::parse("port = 1\nbogus = 2\n", "c").unwrap_err();
        assert_eq!(
            e.to_string(),
            "c:2: unrecognized configuration parameter \"bogus\""
        );
        let e = Settings::parse("port = lots\n", "c").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c:1: invalid value for parameter \"port\""),
            "{e}"
        );
        for (line, why) in [
            ("port = 99999", "expected a whole number from 1 to 65535"),
            (
                "max_connections = 0",
                "expected a whole number from 1 to 1000",
            ),
            (
                "max_connections = 5000",
                "expected a whole number from 1 to 1000",
            ),
            ("authentication_timeout = 0s", "expected from 1s to 10min"),
            ("max_message_size = 1", "expected at least 8kB"),
            (
                "checkpoint_timeout = 5x",
                "expected a duration with a unit, such as 200ms",
            ),
            (
                "checkpoint_timeout = 300",
                "expected a duration with a unit",
            ),
            ("busy_poll = 1s", "a session polls at most 10ms"),
        ] {
            let e = Settings::parse(line, "c").unwrap_err().to_string();
            assert!(e.contains(why), "{line}: {e}");
        }
        assert!(Settings::parse("max_wal_senders = 0\n", "c").is_ok());
        assert!(Settings::parse("busy_poll = 0\nbusy_poll = 10ms\n", "c").is_ok());
        assert!(Settings::parse("node_name = 'open\n", "c").is_err());
        assert!(Settings::parse("max_wal_size = 1XB\n", "c").is_err());
    }

    #[test]
    fn a_reload_keeps_every_restart_only_setting() {
        let running = Settings::default();
        let mut changed = Settings::default();
        for doc in DOCS.iter().filter(|d| !d.reload) {
            let value = match doc.name {
                "listen_addresses" => "0.0.0.0",
                "archive_mode" => "on",
                _ => "7",
            };
            changed.set(doc.name, value).unwrap();
        }
        assert_eq!(
            changed.restart_only_changes(&running).len(),
            DOCS.iter().filter(|d| !d.reload).count()
        );
        assert!(changed
            .reloadable_from(&running)
            .restart_only_changes(&running)
            .is_empty());
    }

    #[test]
    fn the_default_file_parses_to_the_defaults() {
        let text = Settings::default_file(&[("node_name", "n1".into())]);
        let s = Settings::parse(&text, "walship.conf").unwrap();
        assert_eq!(
            s,
            Settings {
                node_name: "n1".into(),
                ..Settings::default()
            }
        );
        for doc in DOCS {
            assert!(
                text.contains(&format!("{} = ", doc.name)),
                "{} missing",
                doc.name
            );
            assert!(Settings::default().show(doc.name).is_some());
        }
    }

    #[test]
    fn appended_settings_retire_the_earlier_lines_and_their_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("walship.conf");
        std::fs::write(
            &path,
            "#primary_conninfo = ''\nprimary_conninfo = 'host=a password=old'\nport = 5433\n",
        )
        .unwrap();
        append_settings(
            &path,
            "walship follow",
            &[("primary_conninfo", "host=b password=new".into())],
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("old"), "{text}");
        assert!(
            text.starts_with(
                "#primary_conninfo = ''\n# primary_conninfo = ... (replaced by walship follow at "
            ),
            "{text}"
        );
        assert!(text.contains("port = 5433\n"), "{text}");
        let s = Settings::load(&path).unwrap();
        assert_eq!(s.primary_conninfo, "host=b password=new");
    }
}
