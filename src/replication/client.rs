//! A small, blocking PostgreSQL frontend: enough of the protocol for a
//! replication client (walship's walreceiver, `walship receive`,
//! `walship basebackup`) and for `walship status` — startup, trust /
//! cleartext / MD5 / SCRAM-SHA-256 authentication, simple queries with
//! text results, and CopyBoth / CopyOut streams.
//!
//! Every error names the peer. A server that goes silent mid-message is a
//! timeout, never a hang; a malformed message is an error, never a panic.

use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use thiserror::Error;

use super::conninfo::ConnInfo;
use super::passfile;
use crate::protocol::codec::{Cursor, Out, ProtoError};
use crate::protocol::reader::MessageReader;
use crate::wal::Lsn;

/// The largest message accepted from a server.
const MAX_MESSAGE: usize = 64 << 20;
/// The read buffer: room for several of a walsender's largest XLogData
/// messages (128 kB), so that moving a partly read one to the front, to
/// keep it contiguous, is seldom and small next to the bytes read.
const READ_BUFFER: usize = 1 << 20;

/// How long a message already begun may take to arrive in full, unless
/// [`Client::set_message_timeout`] says otherwise.
const MID_MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// An ErrorResponse from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(d) = &self.detail {
            write!(f, "; {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

/// A replication slot, as READ_REPLICATION_SLOT shows it.
#[derive(Clone, Copy, Debug)]
pub struct SlotState {
    /// Where it keeps WAL from; `None` when it keeps none yet.
    pub restart_lsn: Option<Lsn>,
}

/// A replication slot that is not as a command needs it, found before the
/// command changes anything: a standby pointed at a missing slot would be
/// refused on every connection.
#[derive(Debug, Error)]
pub enum SlotProblem {
    #[error("{peer} has no replication slot \"{slot}\": add --create-slot to create it, or leave out --slot")]
    Missing { peer: String, slot: String },
    #[error("{peer} has no replication slot \"{slot}\", which this node keeps as its primary_slot_name: give --slot {slot} --create-slot to create it there, --slot NAME for another, or set primary_slot_name = '' in walship.conf to stream without one")]
    KeptMissing { peer: String, slot: String },
    #[error("{peer} has a replication slot \"{slot}\" already: leave out --create-slot to stream through it (or drop it there first)")]
    Exists { peer: String, slot: String },
}

/// The slot a command was given to stream through: `--slot NAME`, and
/// whether `--create-slot` asks to create it.
#[derive(Clone, Copy, Debug)]
pub struct SlotChoice<'a> {
    pub name: &'a str,
    pub create: bool,
}

#[derive(Debug, Error)]
pub enum ClientError {
    // The cause is part of the message (and deliberately not a `source`,
    // so a context chain does not print it twice).
    #[error(
        "could not connect to {peer}: {}{}",
        crate::durable::io_cause(cause),
        connect_hint(peer, cause)
    )]
    Connect { peer: String, cause: io::Error },
    #[error("connection to {peer} failed: {cause}")]
    Io { peer: String, cause: ProtoError },
    #[error("{peer} answered: {error}")]
    Server {
        peer: String,
        error: Box<ServerError>,
    },
    #[error("{peer} broke the protocol: {what}")]
    Protocol { peer: String, what: String },
    #[error("could not authenticate to {peer}: {what}")]
    Auth { peer: String, what: String },
    #[error("{peer} is not a walship node: {what}")]
    NotWalship { peer: String, what: String },
}

impl ClientError {
    /// A refusal of the role or its password (SQLSTATE class 28, or no
    /// password to give): trying again as the same role will not help.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            ClientError::Auth { .. } => true,
            ClientError::Server { error, .. } => error.code.starts_with("28"),
            _ => false,
        }
    }
}

/// The next step after a failed connection to `peer`, by what failed.
fn connect_hint(peer: &str, e: &io::Error) -> &'static str {
    match e.kind() {
        // libpq's default port, which a connection string without port=
        // gets, is not walship server's.
        io::ErrorKind::ConnectionRefused if peer.ends_with(":5432") => {
            "; is the server running, and listening on that address and port? (walship server listens on port 5433 unless told otherwise: add port=5433 to the connection string)"
        }
        io::ErrorKind::ConnectionRefused => {
            "; is the server running, and listening on that address and port?"
        }
        io::ErrorKind::TimedOut => "; is the host up, and the port open to this host?",
        io::ErrorKind::NotFound => {
            "; no such socket: is the server running, with its socket in that directory?"
        }
        _ => "",
    }
}

/// One result set of a simple query: column names and text (or, for
/// bytea columns, raw) values.
#[derive(Clone, Debug, Default)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<Vec<u8>>>>,
}

impl Rows {
    /// The text of column `col` in row `row`, if present and not NULL.
    pub fn text(&self, row: usize, col: &str) -> Option<String> {
        let i = self.columns.iter().position(|c| c == col)?;
        let v = self.rows.get(row)?.get(i)?.as_ref()?;
        Some(String::from_utf8_lossy(v).into_owned())
    }
}

/// A message of a copy stream.
#[derive(Debug)]
pub enum CopyMessage<'a> {
    /// Lent until the client's next read.
    Data(&'a [u8]),
    /// The server ended the copy (CopyDone).
    Done,
}

/// Ends a [`Client`]'s connection from another thread: a read or write
/// blocked on it returns at once, and every later one fails.
pub struct Interrupter(Conn);

impl Interrupter {
    pub fn interrupt(&self) {
        // A socket already closed is as good as interrupted.
        let _ = self.0.shutdown();
    }
}

impl std::fmt::Debug for Interrupter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interrupter")
    }
}

/// A TCP connection, or a unix-domain socket when the host is a
/// directory (as libpq reads `host=/var/run/postgresql`).
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        }
    }

    fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(Some(d)),
            Conn::Unix(s) => s.set_read_timeout(Some(d)),
        }
    }
}

impl io::Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Conn::Tcp(s) => s.as_fd(),
            Conn::Unix(s) => s.as_fd(),
        }
    }
}

/// How long connecting may take, the startup and login included, as
/// libpq's `connect_timeout` bounds them (10 s when unset).
fn connect_timeout(info: &ConnInfo) -> Duration {
    Duration::from_secs(info.connect_timeout.unwrap_or(10).max(1))
}

/// Opens the transport `info` names.
fn open(info: &ConnInfo) -> io::Result<Conn> {
    if info.host.starts_with('/') {
        let path = std::path::Path::new(&info.host).join(format!(".s.PGSQL.{}", info.port));
        return Ok(Conn::Unix(UnixStream::connect(path)?));
    }
    let addr = (info.host.as_str(), info.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other("the host name resolved to no address"))?;
    let stream = TcpStream::connect_timeout(&addr, connect_timeout(info))?;
    stream.set_nodelay(true)?;
    Ok(Conn::Tcp(stream))
}

/// A connection to a PostgreSQL-protocol server.
pub struct Client {
    peer: String,
    r: MessageReader<Conn>,
    w: BufWriter<Conn>,
    /// ParameterStatus values the server sent.
    pub parameters: HashMap<String, String>,
    /// How long a message already begun may take to arrive in full.
    message_timeout: Duration,
}

impl Client {
    /// Connects and authenticates. `replication` is the startup
    /// parameter's value (`"true"` for a physical replication connection).
    pub fn connect(info: &ConnInfo, replication: Option<&str>) -> Result<Client, ClientError> {
        let peer = format!("{}:{}", info.host, info.port);
        let connect_err = |cause| ClientError::Connect {
            peer: peer.clone(),
            cause,
        };
        let stream = open(info).map_err(connect_err)?;
        // A server that accepts the connection but never answers (a hung
        // host) is given up on after connect_timeout, as libpq does.
        let timeout = connect_timeout(info);
        stream.set_read_timeout(timeout).map_err(connect_err)?;
        let r = MessageReader::with_capacity(READ_BUFFER, stream.try_clone().map_err(connect_err)?);
        let w = BufWriter::with_capacity(64 << 10, stream);
        let mut client = Client {
            peer: peer.clone(),
            r,
            w,
            parameters: HashMap::new(),
            message_timeout: MID_MESSAGE_TIMEOUT,
        };
        let user = info
            .user
            .clone()
            .or_else(|| std::env::var("PGUSER").ok())
            .or_else(|| super::conninfo::os_user().map(|u| u.name))
            .unwrap_or_else(|| "postgres".into());
        let mut params = vec![("user", user.clone())];
        let database = info.dbname.clone().unwrap_or_else(|| user.clone());
        params.push(("database", database.clone()));
        if let Some(app) = &info.application_name {
            params.push(("application_name", app.clone()));
        }
        if let Some(rep) = replication {
            params.push(("replication", rep.to_string()));
        }
        let mut out = Out::default();
        out.startup(&params);
        // An empty password= is none, as libpq takes it.
        let password = info.password.clone().filter(|p| !p.is_empty()).or_else(|| {
            passfile::lookup(&passfile::Target {
                host: &info.host,
                port: info.port,
                // As libpq's replication clients match it.
                database: match (&info.dbname, replication) {
                    (None, Some(_)) => "replication",
                    _ => &database,
                },
                user: &user,
                passfile: info.passfile.as_deref(),
            })
        });
        let login = client.send(&mut out).and_then(|()| {
            client.authenticate(&user, password.as_deref(), info.passfile.as_deref())
        });
        match login {
            Err(ClientError::Io {
                cause: ProtoError::Io(e),
                ..
            }) if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
            {
                return Err(connect_err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "timed out: no answer to the startup within {} s (connect_timeout)",
                        timeout.as_secs()
                    ),
                )))
            }
            other => other?,
        }
        client
            .r
            .get_ref()
            .set_read_timeout(MID_MESSAGE_TIMEOUT)
            .map_err(|e| client.io(e))?;
        Ok(client)
    }

    /// How long a message the server has begun may take to arrive in full
    /// (zero: the default, 60 s): a walreceiver gives `wal_receiver_timeout`,
    /// so an upstream that goes silent in the middle of a message is given
    /// up on as soon as one that goes silent between messages.
    pub fn set_message_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let timeout = if timeout.is_zero() {
            MID_MESSAGE_TIMEOUT
        } else {
            timeout
        };
        if timeout != self.message_timeout {
            self.r
                .get_ref()
                .set_read_timeout(timeout)
                .map_err(|e| self.io(e))?;
            self.message_timeout = timeout;
        }
        Ok(())
    }

    /// The peer, `host:port`, for messages.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    fn io(&self, cause: impl Into<ProtoError>) -> ClientError {
        ClientError::Io {
            peer: self.peer.clone(),
            cause: cause.into(),
        }
    }

    fn protocol(&self, what: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            peer: self.peer.clone(),
            what: what.into(),
        }
    }

    fn send(&mut self, out: &mut Out) -> Result<(), ClientError> {
        out.send(&mut self.w).map_err(|e| self.io(e))
    }

    /// Reads the next message that is not a notice or a parameter
    /// status, and returns its type ([`MessageReader::body`] lends its
    /// body); an ErrorResponse becomes [`ClientError::Server`].
    fn next_message(&mut self) -> Result<u8, ClientError> {
        loop {
            let tag = self.r.next_message(MAX_MESSAGE).map_err(|e| match e {
                ProtoError::Closed => self.io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )),
                ProtoError::Io(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "timed out: the server sent part of a message, then nothing for {} ms",
                            self.message_timeout.as_millis()
                        ),
                    ))
                }
                e => self.io(e),
            })?;
            match tag {
                // NoticeResponse and ParameterStatus may come at any time.
                b'N' => continue,
                b'S' => {
                    let mut c = Cursor::new(self.r.body());
                    let name = c.cstr().map_err(|e| self.io(e))?;
                    let value = c.cstr().map_err(|e| self.io(e))?;
                    self.parameters.insert(name, value);
                }
                b'E' => {
                    return Err(ClientError::Server {
                        peer: self.peer.clone(),
                        error: Box::new(parse_error(self.r.body())),
                    })
                }
                _ => return Ok(tag),
            }
        }
    }

    /// [`Client::next_message`], with the body copied out.
    fn read(&mut self) -> Result<(u8, Vec<u8>), ClientError> {
        let tag = self.next_message()?;
        Ok((tag, self.r.body().to_vec()))
    }

    /// `passfile` is only for the hint when a password is needed and none
    /// was found.
    fn authenticate(
        &mut self,
        user: &str,
        password: Option<&str>,
        passfile: Option<&str>,
    ) -> Result<(), ClientError> {
        let auth_err = |peer: &str, what: &str| ClientError::Auth {
            peer: peer.to_string(),
            what: what.to_string(),
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self.read()?;
            match tag {
                b'R' => {
                    let mut c = Cursor::new(&body);
                    let code = c.i32().map_err(|e| self.io(e))?;
                    let rest = &body[4..];
                    let need_password = || {
                        password.ok_or_else(|| {
                            let file = passfile::password_file(passfile).map_or_else(
                                || "~/.pgpass".to_string(),
                                |p| p.display().to_string(),
                            );
                            let which = if passfile.is_some_and(|p| !p.is_empty()) {
                                "the connection string's passfile="
                            } else {
                                "PGPASSFILE names another"
                            };
                            auth_err(&self.peer, &format!("the server asks for a password; set PGPASSWORD, add a line host:port:database:user:password for this server to {file} (mode 0600; {which}), or give password= in the connection string"))
                        })
                    };
                    let mut out = Out::default();
                    match code {
                        0 => {}
                        3 => {
                            let mut pw = need_password()?.as_bytes().to_vec();
                            pw.push(0);
                            out.password(&pw);
                        }
                        5 => {
                            let salt: [u8; 4] = rest
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| self.protocol("MD5 request without a salt"))?;
                            let mut hash =
                                md5_hash(user.as_bytes(), need_password()?.as_bytes(), salt)
                                    .into_bytes();
                            hash.push(0);
                            out.password(&hash);
                        }
                        10 => {
                            let offered = String::from_utf8_lossy(rest);
                            if !offered.split('\0').any(|m| m == SCRAM_SHA_256) {
                                return Err(auth_err(
                                    &self.peer,
                                    &format!("the server offers no SASL mechanism walship supports ({offered})"),
                                ));
                            }
                            let s = ScramSha256::new(
                                need_password()?.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            out.sasl_initial(SCRAM_SHA_256, s.message());
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| self.protocol("SASL continue before SASL began"))?;
                            s.update(rest)
                                .map_err(|e| auth_err(&self.peer, &e.to_string()))?;
                            out.password(s.message());
                        }
                        12 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| self.protocol("SASL final before SASL began"))?;
                            s.finish(rest).map_err(|e| {
                                auth_err(
                                    &self.peer,
                                    &format!("the server's SCRAM proof is wrong: {e}"),
                                )
                            })?;
                        }
                        other => {
                            return Err(auth_err(
                                &self.peer,
                                &format!("unsupported authentication method (code {other})"),
                            ))
                        }
                    }
                    if !out.is_empty() {
                        self.send(&mut out)?;
                    }
                }
                b'K' => {}
                b'Z' => return Ok(()),
                other => {
                    return Err(self.protocol(format!(
                        "unexpected message type '{}' during startup",
                        other as char
                    )))
                }
            }
        }
    }

    /// Runs a simple query and returns its (last) result set.
    pub fn query(&mut self, sql: &str) -> Result<Rows, ClientError> {
        let mut out = Out::default();
        out.query(sql);
        self.send(&mut out)?;
        let mut rows = Rows::default();
        let mut failed = None;
        loop {
            let (tag, body) = match self.read() {
                Ok(m) => m,
                Err(e @ ClientError::Server { .. }) => {
                    failed = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match tag {
                b'T' => rows = self.row_description(&body)?,
                b'D' => {
                    let row = self.data_row(&body)?;
                    rows.rows.push(row);
                }
                b'C' | b'I' => {}
                b'Z' => return failed.map_or(Ok(rows), Err),
                other => {
                    return Err(self.protocol(format!(
                        "unexpected message type '{}' in a query's result",
                        other as char
                    )))
                }
            }
        }
    }

    fn row_description(&self, body: &[u8]) -> Result<Rows, ClientError> {
        let mut c = Cursor::new(body);
        let n = c.count16().map_err(|e| self.io(e))?;
        let mut columns = Vec::with_capacity(n);
        for _ in 0..n {
            columns.push(c.cstr().map_err(|e| self.io(e))?);
            c.bytes(18).map_err(|e| self.io(e))?;
        }
        Ok(Rows {
            columns,
            rows: Vec::new(),
        })
    }

    fn data_row(&self, body: &[u8]) -> Result<Vec<Option<Vec<u8>>>, ClientError> {
        let mut c = Cursor::new(body);
        let n = c.count16().map_err(|e| self.io(e))?;
        let mut row = Vec::with_capacity(n);
        for _ in 0..n {
            let len = c.i32().map_err(|e| self.io(e))?;
            row.push(if len < 0 {
                None
            } else {
                Some(c.bytes(len as usize).map_err(|e| self.io(e))?.to_vec())
            });
        }
        Ok(row)
    }

    /// The value of setting `name` (`SHOW name`); `None` when the answer
    /// has no value.
    pub fn show(&mut self, name: &str) -> Result<Option<String>, ClientError> {
        Ok(self.query(&format!("SHOW {name}"))?.text(0, name))
    }

    /// The epoch that fenced this walship node (`SHOW fenced_by`), `None`
    /// when none did. A server without the setting is not walship (a
    /// PostgreSQL one answers 42704): refused, `hint` saying what to use
    /// instead.
    pub fn walship_fenced_by(&mut self, hint: &str) -> Result<Option<String>, ClientError> {
        match self.show("fenced_by") {
            Err(ClientError::Server { peer, error }) if error.code == "42704" => {
                Err(ClientError::NotWalship {
                    peer,
                    what: format!("{}; {hint}", error.message),
                })
            }
            other => Ok(other?.filter(|by| !by.is_empty())),
        }
    }

    /// Whether the server is a standby (`pg_is_in_recovery()`).
    pub fn in_recovery(&mut self) -> Result<bool, ClientError> {
        let rows = self.query("SELECT pg_is_in_recovery()")?;
        Ok(rows.text(0, "pg_is_in_recovery").is_some_and(|v| v == "t"))
    }

    /// Creates physical slot `name`, keeping WAL from now on (RESERVE_WAL).
    pub fn create_slot(&mut self, name: &str) -> Result<(), ClientError> {
        self.query(&format!(
            "CREATE_REPLICATION_SLOT \"{name}\" PHYSICAL RESERVE_WAL"
        ))?;
        Ok(())
    }

    /// Refuses, before a command changes anything, a slot that is not as
    /// it needs: `slot` must exist, unless `--create-slot` is to make it,
    /// when it must not. `kept`: the name is the node's
    /// `primary_slot_name`, not `--slot`.
    pub fn check_slot<E: From<ClientError> + From<SlotProblem>>(
        &mut self,
        slot: SlotChoice<'_>,
        kept: bool,
    ) -> Result<(), E> {
        let exists = self.read_slot(slot.name)?.is_some();
        let (peer, name) = (self.peer.clone(), slot.name.to_string());
        match (exists, slot.create) {
            (true, false) | (false, true) => Ok(()),
            (false, false) if kept => Err(SlotProblem::KeptMissing { peer, slot: name }.into()),
            (false, false) => Err(SlotProblem::Missing { peer, slot: name }.into()),
            (true, true) => Err(SlotProblem::Exists { peer, slot: name }.into()),
        }
    }

    /// Slot `name` as READ_REPLICATION_SLOT shows it: `None` when the
    /// server has no such slot (it answers with nulls).
    pub fn read_slot(&mut self, name: &str) -> Result<Option<SlotState>, ClientError> {
        let rows = self.query(&format!("READ_REPLICATION_SLOT \"{name}\""))?;
        Ok(rows.text(0, "slot_type").map(|_| SlotState {
            restart_lsn: rows.text(0, "restart_lsn").and_then(|t| t.parse().ok()),
        }))
    }

    /// The content of timeline `tli`'s history file (TIMELINE_HISTORY).
    pub fn timeline_history(
        &mut self,
        tli: impl std::fmt::Display,
    ) -> Result<Vec<u8>, ClientError> {
        let rows = self.query(&format!("TIMELINE_HISTORY {tli}"))?;
        Ok(rows
            .rows
            .first()
            .and_then(|r| r.get(1).cloned().flatten())
            .unwrap_or_default())
    }

    /// Sends a command that starts a copy (START_REPLICATION: CopyBoth;
    /// BASE_BACKUP: result sets, then CopyOut). Result sets that come
    /// before the copy are returned.
    pub fn start_copy(&mut self, sql: &str) -> Result<Vec<Rows>, ClientError> {
        let mut out = Out::default();
        out.query(sql);
        self.send(&mut out)?;
        let mut sets = Vec::new();
        loop {
            let (tag, body) = match self.read() {
                Ok(m) => m,
                Err(e @ ClientError::Server { .. }) => {
                    // Let the ReadyForQuery after the error go by.
                    while let Ok((tag, _)) = self.read() {
                        if tag == b'Z' {
                            break;
                        }
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            match tag {
                b'T' => sets.push(self.row_description(&body)?),
                b'D' => {
                    let row = self.data_row(&body)?;
                    match sets.last_mut() {
                        Some(s) => s.rows.push(row),
                        None => return Err(self.protocol("a data row before its description")),
                    }
                }
                b'C' => {}
                b'W' | b'H' => return Ok(sets),
                b'Z' => return Err(self.protocol("the command ended without starting a copy")),
                other => {
                    return Err(self.protocol(format!(
                        "unexpected message type '{}' before a copy",
                        other as char
                    )))
                }
            }
        }
    }

    /// Waits up to `timeout` for the next copy message; `None` when none
    /// came in time.
    pub fn recv_copy(&mut self, timeout: Duration) -> Result<Option<CopyMessage<'_>>, ClientError> {
        if self.r.buffered().is_empty() && !self.wait_readable(timeout)? {
            return Ok(None);
        }
        match self.next_message()? {
            b'd' => Ok(Some(CopyMessage::Data(self.r.body()))),
            b'c' => Ok(Some(CopyMessage::Done)),
            other => Err(self.protocol(format!(
                "unexpected message type '{}' in a copy stream",
                other as char
            ))),
        }
    }

    /// A handle that ends this connection from another thread.
    pub fn interrupter(&self) -> io::Result<Interrupter> {
        self.r.get_ref().try_clone().map(Interrupter)
    }

    /// True when a whole message may be read without waiting on the network.
    pub fn has_buffered(&self) -> bool {
        self.r.buffered().len() >= 5
    }

    fn wait_readable(&mut self, timeout: Duration) -> Result<bool, ClientError> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let fd = self.r.get_ref().as_fd();
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match nix::poll::poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(self.io(io::Error::from(e))),
        }
    }

    /// Sends one CopyData message (buffered until [`Client::flush`]).
    pub fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        let mut out = Out::default();
        out.copy_data(payload);
        out.write_to(&mut self.w).map_err(|e| self.io(e))
    }

    /// A standby status update ('r'): what is written, flushed (fsynced)
    /// and applied here; sent at once.
    /// A standby status update; with `reply_requested` the upstream answers
    /// at once with a keepalive (a ping, when it has been silent).
    pub fn send_status(
        &mut self,
        write: crate::wal::Lsn,
        flush: crate::wal::Lsn,
        apply: crate::wal::Lsn,
        reply_requested: bool,
    ) -> Result<(), ClientError> {
        let mut msg = Vec::with_capacity(34);
        msg.push(b'r');
        for lsn in [write, flush, apply] {
            msg.extend_from_slice(&lsn.0.to_be_bytes());
        }
        msg.extend_from_slice(&super::walsender::pg_now().to_be_bytes());
        msg.push(reply_requested.into());
        self.send_copy_data(&msg)?;
        self.flush()
    }

    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.w.flush().map_err(|e| self.io(e))
    }

    /// Ends our side of a copy (after the server's CopyDone, or to stop
    /// streaming) and reads what follows up to ReadyForQuery: the result
    /// sets are returned (START_REPLICATION's end-of-timeline set).
    pub fn end_copy(&mut self) -> Result<Vec<Rows>, ClientError> {
        let mut out = Out::default();
        out.copy_done();
        self.send(&mut out)?;
        self.result_sets()
    }

    /// Reads the messages after a CopyOut the server ended, up to
    /// ReadyForQuery; returns the result sets among them (BASE_BACKUP's
    /// end position).
    pub fn finish_copy_out(&mut self) -> Result<Vec<Rows>, ClientError> {
        self.result_sets()
    }

    fn result_sets(&mut self) -> Result<Vec<Rows>, ClientError> {
        let mut sets = Vec::new();
        loop {
            let (tag, body) = self.read()?;
            match tag {
                b'd' | b'c' => {}
                b'T' => sets.push(self.row_description(&body)?),
                b'D' => {
                    let row = self.data_row(&body)?;
                    if let Some(s) = sets.last_mut() {
                        s.rows.push(row);
                    }
                }
                b'C' => {}
                b'Z' => return Ok(sets),
                other => {
                    return Err(self.protocol(format!(
                        "unexpected message type '{}' after a copy",
                        other as char
                    )))
                }
            }
        }
    }

    /// Says goodbye (Terminate) and closes.
    pub fn close(mut self) {
        let mut out = Out::default();
        out.terminate();
        let _ = self.send(&mut out);
    }
}

/// Parses an ErrorResponse body.
pub fn parse_error(body: &[u8]) -> ServerError {
    let mut e = ServerError {
        severity: "ERROR".into(),
        code: "XX000".into(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let value = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'S' => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_to_libpqs_default_port_points_at_walships() {
        let refused = || io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(connect_hint("127.0.0.1:5432", &refused()).contains("add port=5433"));
        let other = connect_hint("127.0.0.1:6000", &refused());
        assert!(other.contains("is the server running") && !other.contains("5433"));
    }
}
