//! One client connection: startup, authentication, then the simple and
//! extended query protocols until the client leaves or the node stops.

use std::collections::HashMap;
use std::io::BufWriter;
use std::net::TcpStream;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::busy_poll::{self, BusyPoll};
use super::server::Node;
use crate::node::config::AuthMethod;
use crate::protocol::codec::{self, format_of, Cursor, Out, ProtoError, Startup};
use crate::protocol::reader::MessageReader;
use crate::protocol::scram::{ScramServer, ScramVerifier};
use crate::replication::walsender;
use crate::sql::exec::{oid, QueryResult, Session};
use crate::sql::parse::{self, Statement};
use crate::sqlstate::{code, PgError};

/// The largest SASL message a client not yet authenticated may send
/// (PostgreSQL allows tokens of 65535 bytes): whoever can connect must not
/// make the server hold max_message_size for them.
const AUTH_MESSAGE_MAX: usize = 64 << 10;

/// Startup parameters clients commonly send that are not settings.
const STARTUP_KEYS: &[&str] = &[
    "user",
    "database",
    "replication",
    "options",
    "application_name",
    "fallback_application_name",
];

type Reader = MessageReader<BusyPoll>;
/// An authenticated user and the startup parameters, or `None` when there is no session to run.
type Started = Option<(String, Vec<(String, String)>, bool)>;
type Writer = BufWriter<TcpStream>;

/// A prepared statement: `None` is the empty query.
struct Prepared {
    stmt: Option<Statement>,
    param_types: Vec<u32>,
}

/// A bound portal; its result is kept while a row limit suspends it.
struct Portal {
    stmt: Option<Statement>,
    params: Vec<Option<String>>,
    formats: Vec<i16>,
    result: Option<QueryResult>,
    sent: usize,
}

fn proto_to_pg(e: &ProtoError) -> PgError {
    match e {
        ProtoError::TooLarge { .. } => PgError::fatal(code::PROGRAM_LIMIT_EXCEEDED, e.to_string())
            .with_hint("raise max_message_size in walship.conf if such messages are intended"),
        ProtoError::NotUtf8(_) => PgError::new(code::CHARACTER_NOT_IN_REPERTOIRE, e.to_string())
            .with_hint("walship speaks UTF8 only: send text in UTF-8"),
        _ => PgError::fatal(code::PROTOCOL_VIOLATION, e.to_string()),
    }
}

/// A session's entry in the node's table, removed when this is dropped,
/// however the session ends (a panic too: its connection slot and its
/// socket are freed, not held until the node stops).
struct Registered<'a> {
    node: &'a Node,
    pid: i32,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.node.unregister(self.pid);
    }
}

/// Sends the connection's last word, an error: a failure to send it is
/// the connection's end anyway.
fn send_last_error(w: &mut Writer, e: PgError) {
    let mut out = Out::default();
    out.error(&e);
    let _ = out.send(w);
}

/// Whether reading failed because its deadline passed.
fn is_timeout(e: &ProtoError) -> bool {
    matches!(e, ProtoError::Io(e) if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ))
}

/// Serves one connection to its end. Errors are logged here.
pub fn serve(node: Arc<Node>, stream: TcpStream) {
    let backend_start = walsender::pg_now();
    let peer_addr = stream.peer_addr().ok();
    let peer = peer_addr.map_or_else(|| "unknown".into(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = MessageReader::with_capacity(
        16 << 10,
        BusyPoll::new(stream, node.settings().busy_poll, &busy_poll::SESSIONS),
    );
    let mut writer = BufWriter::with_capacity(16 << 10, write_half);
    // Every line about this connection names the client, from the first
    // (a failed login says who tried).
    let connection = tracing::info_span!("connection", peer = %peer);
    let _in_connection = connection.enter();
    // A client gets authentication_timeout in all to start up and log in,
    // as in PostgreSQL: one that sends nothing, or a byte now and then,
    // does not hold a thread for ever.
    let deadline = std::time::Instant::now() + node.settings().authentication_timeout;
    let _ = reader.get_ref().set_deadline(Some(deadline));
    let started = startup(&node, &mut reader, &mut writer);
    let _ = reader.get_ref().set_deadline(None);
    match started {
        Ok(Some((user, params, replication))) => {
            let span = tracing::info_span!("session", user = %user);
            let _enter = span.enter();
            let (pid, key) = node.register(&writer, replication);
            let registered = Registered { node: &node, pid };
            let result = if replication {
                greet(
                    &node,
                    &Session::new(node.clone(), &params),
                    &mut writer,
                    pid,
                    key,
                )
                .and_then(|()| {
                    let application_name = params
                        .iter()
                        .find(|(k, _)| k == "application_name")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    let who = walsender::Peer {
                        pid,
                        usename: user.clone(),
                        application_name,
                        client_addr: peer_addr.map_or_else(|| peer.clone(), |a| a.ip().to_string()),
                        client_port: peer_addr.map_or(0, |a| a.port()),
                        backend_start,
                    };
                    walsender::serve(&*node, &who, &mut reader, &mut writer)
                })
            } else {
                run(&node, &mut reader, &mut writer, pid, key, &params)
            };
            drop(registered);
            match result {
                Ok(()) | Err(ProtoError::Closed) => debug!("session ended"),
                Err(ProtoError::Io(e)) => {
                    debug!("connection lost: {}", crate::durable::io_cause(&e))
                }
                Err(e) => {
                    warn!("ending session: {e}");
                    send_last_error(
                        &mut writer,
                        PgError {
                            fatal: true,
                            ..proto_to_pg(&e)
                        },
                    );
                }
            }
        }
        Ok(None) => {}
        Err(e) if is_timeout(&e) => {
            info!("closing a connection that did not log in within authentication_timeout");
            send_last_error(
                &mut writer,
                PgError::fatal(
                    code::QUERY_CANCELED,
                    "canceling authentication due to timeout",
                ),
            );
        }
        Err(e) => {
            if !matches!(e, ProtoError::Closed) {
                info!("connection refused during startup: {e}");
                send_last_error(
                    &mut writer,
                    PgError {
                        fatal: true,
                        ..proto_to_pg(&e)
                    },
                );
            }
        }
    }
}

/// The startup exchange. Returns the authenticated user and the startup
/// parameters, or `None` when the connection was a cancel request or was
/// refused (the refusal already sent).
fn startup(node: &Node, r: &mut Reader, w: &mut Writer) -> Result<Started, ProtoError> {
    let max = node.settings().max_message_size;
    let mut out = Out::default();
    let params = loop {
        match codec::read_startup(r, max)? {
            Startup::SslRequest | Startup::GssEncRequest => {
                out.raw_byte(b'N');
                out.send(w)?;
            }
            Startup::Cancel { pid, key } => {
                node.cancel(pid, key);
                return Ok(None);
            }
            Startup::Start { params, minor } => {
                // A newer minor version, or protocol options: say what
                // this server speaks (3.0, none), as PostgreSQL 15 does,
                // and go on.
                let options: Vec<&str> = params
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .filter(|k| k.starts_with("_pq_."))
                    .collect();
                if minor > 0 || !options.is_empty() {
                    out.negotiate_protocol_version(&options);
                    out.send(w)?;
                }
                break params;
            }
        }
    };
    let refuse = |w: &mut Writer, e: PgError| -> Result<Started, ProtoError> {
        let mut out = Out::default();
        out.error(&e);
        out.send(w)?;
        Ok(None)
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(user) = get("user").filter(|u| !u.is_empty()) else {
        return refuse(
            w,
            PgError::fatal(
                code::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            ),
        );
    };
    if let Some((name, _)) = params.iter().find(|(n, _)| {
        !STARTUP_KEYS.contains(&n.as_str())
            && !n.starts_with("_pq_.")
            && Session::startup_param_known(n).is_none()
    }) {
        return refuse(
            w,
            PgError::fatal(
                code::UNDEFINED_OBJECT,
                format!("unrecognized configuration parameter \"{name}\""),
            ),
        );
    }
    let replication = match get("replication")
        .map(|v| v.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("false" | "off" | "no" | "0") => false,
        Some("true" | "on" | "yes" | "1") => true,
        Some("database") => {
            return refuse(
                w,
                PgError::fatal(
                    code::FEATURE_NOT_SUPPORTED,
                    "logical replication connections are not supported",
                )
                .with_hint("walship ships WAL physically: connect with replication=true"),
            )
        }
        Some(other) => {
            return refuse(
                w,
                PgError::fatal(
                    code::INVALID_PARAMETER_VALUE,
                    format!("invalid value for parameter \"replication\": \"{other}\""),
                ),
            )
        }
    };
    if node.is_shutting_down() {
        return refuse(
            w,
            PgError::fatal("57P03", "the database system is shutting down"),
        );
    }
    let settings = node.settings();
    if node.session_count() >= settings.max_connections {
        return refuse(
            w,
            PgError::fatal(
                code::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already",
            )
            .with_hint(format!("max_connections is {}", settings.max_connections)),
        );
    }
    let role = node.user(&user);
    match settings.authentication {
        AuthMethod::Trust => {}
        AuthMethod::ScramSha256 => {
            let failed = || {
                PgError::fatal(
                    code::INVALID_PASSWORD,
                    format!("password authentication failed for user \"{user}\""),
                )
            };
            // A role that does not exist, or has no password, goes through
            // the same exchange and fails at the same step, with the same
            // message, as a wrong password: nobody learns which roles exist.
            let verifier = role.as_ref().and_then(|r| r.verifier.clone());
            let cannot = match (&role, &verifier) {
                (None, _) => Some("role does not exist"),
                (Some(_), None) => Some("role has no password"),
                _ => None,
            };
            let mut scram = ScramServer::new(
                verifier.unwrap_or_else(|| ScramVerifier::mock(&user, &node.mock_auth_nonce)),
            );
            out.auth_sasl(&["SCRAM-SHA-256"]);
            out.send(w)?;
            let (tag, body) = r.read_message(AUTH_MESSAGE_MAX.min(max))?;
            if tag != b'p' {
                return Err(ProtoError::Malformed(format!(
                    "expected a SASL initial response, got message type '{}'",
                    tag as char
                )));
            }
            let mut c = Cursor::new(body);
            let mechanism = c.cstr()?;
            let len = c.i32()?;
            let data = if len < 0 {
                &[][..]
            } else {
                c.bytes(len as usize)?
            };
            if mechanism != "SCRAM-SHA-256" {
                return refuse(w, PgError::fatal(code::PROTOCOL_VIOLATION, format!("client selected an invalid SASL authentication mechanism \"{mechanism}\"")));
            }
            let server_first = match scram.client_first(data) {
                Ok(s) => s,
                Err(e) => {
                    return refuse(w, PgError::fatal(code::PROTOCOL_VIOLATION, e.to_string()))
                }
            };
            out.auth(11, server_first.as_bytes());
            out.send(w)?;
            let (tag, body) = r.read_message(AUTH_MESSAGE_MAX.min(max))?;
            if tag != b'p' {
                return Err(ProtoError::Malformed("expected a SASL response".into()));
            }
            match (scram.client_final(body), cannot) {
                (Ok(server_final), None) => out.auth(12, server_final.as_bytes()),
                (Ok(_), Some(why)) => {
                    warn!(user = %user, "password authentication failed: {why}");
                    return refuse(w, failed());
                }
                (Err(e), why) => {
                    let why = why.map_or_else(|| e.to_string(), str::to_string);
                    warn!(user = %user, "password authentication failed: {why}");
                    return refuse(w, failed());
                }
            }
        }
    }
    let Some(role) = role else {
        warn!(user = %user, "authentication failed: role does not exist");
        return refuse(
            w,
            PgError::fatal(
                code::INVALID_AUTHORIZATION,
                format!("role \"{user}\" does not exist"),
            ),
        );
    };
    // After authentication, as PostgreSQL checks it: only a role that
    // proved who it is learns that it may not log in.
    if !role.login {
        warn!(user = %user, "authentication failed: the role has NOLOGIN");
        return refuse(
            w,
            PgError::fatal(
                code::INVALID_AUTHORIZATION,
                format!("role \"{user}\" is not permitted to log in"),
            )
            .with_hint("a superuser can allow it with ALTER ROLE ... LOGIN"),
        );
    }
    if replication {
        if !(role.replication || role.superuser) {
            return refuse(
                w,
                PgError::fatal(code::INVALID_AUTHORIZATION, format!("role \"{user}\" may not start a walsender"))
                    .with_hint("only superusers and roles with the replication attribute (DIR/users) may replicate"),
            );
        }
        if node.walsender_count() >= settings.max_wal_senders {
            return refuse(
                w,
                PgError::fatal(
                    code::TOO_MANY_CONNECTIONS,
                    "number of requested standby connections exceeds max_wal_senders",
                )
                .with_hint(format!("max_wal_senders is {}", settings.max_wal_senders)),
            );
        }
    }
    out.auth(0, &[]);
    out.send(w)?;
    Ok(Some((user, params, replication)))
}

fn send_result(
    out: &mut Out,
    result: &QueryResult,
    formats: &[i16],
    from: usize,
    max_rows: usize,
    describe: bool,
) -> usize {
    if from == 0 {
        for notice in &result.notices {
            out.notice(notice);
        }
    }
    if describe {
        if let Some(cols) = &result.columns {
            let cols: Vec<(String, u32)> =
                cols.iter().map(|c| (c.name.clone(), c.type_oid)).collect();
            out.row_description(&cols, formats);
        }
    }
    let types: Vec<u32> = result
        .columns
        .iter()
        .flatten()
        .map(|c| c.type_oid)
        .collect();
    let rows = &result.rows[from.min(result.rows.len())..];
    let n = if max_rows == 0 {
        rows.len()
    } else {
        rows.len().min(max_rows)
    };
    for row in &rows[..n] {
        let encoded: Vec<Option<Vec<u8>>> = row
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_ref().map(|v| {
                    if format_of(formats, i) == 1 {
                        v.to_binary(types.get(i).copied().unwrap_or(oid::TEXT))
                    } else {
                        v.to_text().into_bytes()
                    }
                })
            })
            .collect();
        out.data_row(encoded.iter().map(|v| v.as_deref()));
    }
    n
}

/// The session proper, after authentication.
fn run(
    node: &Arc<Node>,
    r: &mut Reader,
    w: &mut Writer,
    pid: i32,
    key: i32,
    params: &[(String, String)],
) -> Result<(), ProtoError> {
    let mut session = Session::new(node.clone(), params);
    if let Some(flag) = node.cancel_flag(pid) {
        session.set_cancel_flag(flag);
    }
    // The settings sent as startup parameters, then those of `options`
    // (libpq's PGOPTIONS: `-c name=value` or `--name=value`), each made as
    // a SET makes it: one that SET refuses ends the session.
    let from_startup = params
        .iter()
        .filter(|(k, _)| Session::startup_param_known(k).is_some())
        .cloned();
    let from_options = params
        .iter()
        .find(|(k, _)| k == "options")
        .map(|(_, options)| parse_options(options))
        .unwrap_or_default();
    for (name, value) in from_startup.chain(from_options) {
        let set = Statement::Set {
            name: name.to_ascii_lowercase(),
            value: Some(value),
            local: false,
        };
        if let Err(e) = session.execute(&set, &[]) {
            let mut out = Out::default();
            out.error(&PgError { fatal: true, ..e });
            out.send(w)?;
            return Ok(());
        }
    }
    session.mark_baseline();
    greet(node, &session, w, pid, key)?;
    let mut out = Out::default();
    let mut statements: HashMap<String, Prepared> = HashMap::new();
    let mut portals: HashMap<String, Portal> = HashMap::new();
    // After an error in an extended-protocol batch, skip until Sync.
    let mut skipping = false;
    // Whether the message just handled ends with ReadyForQuery.
    let mut ready_sent = true;
    loop {
        // (A reload of max_message_size applies from the message after.)
        let max = session.conf().max_message_size;
        // A client idle in a transaction block it began holds its row
        // locks: idle_in_transaction_session_timeout bounds that. Its
        // clock runs from ReadyForQuery, as PostgreSQL's: not between the
        // messages of a batch.
        let idle_limit = if ready_sent {
            session.idle_in_block_timeout()
        } else {
            None
        };
        if let Some(deadline) = idle_limit.and_then(|l| std::time::Instant::now().checked_add(l)) {
            let _ = r.get_ref().set_deadline(Some(deadline));
        }
        // After an Execute, the next message's type: whether Sync follows
        // (the usual Parse/Bind/Execute/Sync in one write) decides how the
        // statement commits, so it is waited for (a client sends Sync or
        // Flush before it waits for output, so this cannot hang a
        // well-behaved one).
        let read = r.next_message(max).and_then(|tag| {
            let next = if tag == b'E' {
                Some(r.peek_next_type()?)
            } else {
                None
            };
            Ok((tag, next == Some(b'S')))
        });
        if idle_limit.is_some() {
            let _ = r.get_ref().set_deadline(None);
        }
        let (tag, sync_follows) = match read {
            Ok(read) => read,
            Err(e) => {
                session.abandon();
                if idle_limit.is_some() && is_timeout(&e) {
                    info!("ending a session idle in a transaction block past idle_in_transaction_session_timeout");
                    send_last_error(
                        w,
                        PgError::fatal(
                            code::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                            "terminating connection due to idle-in-transaction timeout",
                        ),
                    );
                    return Ok(());
                }
                if node.is_shutting_down() {
                    send_last_error(
                        w,
                        PgError::fatal(
                            code::ADMIN_SHUTDOWN,
                            "terminating connection due to administrator command",
                        ),
                    );
                    return Ok(());
                }
                return Err(e);
            }
        };
        ready_sent = matches!(tag, b'Q' | b'S');
        session.use_settings(node.settings());
        let body = r.body();
        session.forget_cancel();
        let mut c = Cursor::new(body);
        if skipping && !matches!(tag, b'S' | b'X') {
            continue;
        }
        let step: Result<(), PgError> = match tag {
            b'Q' => match c.cstr() {
                Ok(sql) => {
                    simple_query(&mut session, &mut out, &sql, &mut statements, &mut portals);
                    out.ready(session.status());
                    Ok(())
                }
                Err(e) => {
                    // Not UTF-8: an error, and the session goes on.
                    let e = proto_to_pg(&e);
                    if !e.fatal {
                        session.fail_transaction();
                        out.error(&e);
                        out.ready(session.status());
                        out.send(w)?;
                        continue;
                    }
                    Err(e)
                }
            },
            b'P' => (|| {
                let name = c.cstr()?;
                let sql = c.cstr()?;
                let n = c.count16()?;
                let mut declared = Vec::with_capacity(n);
                for _ in 0..n {
                    declared.push(c.i32()? as u32);
                }
                Ok::<_, ProtoError>((name, sql, declared))
            })()
            .map_err(|e| proto_to_pg(&e))
            .and_then(|(name, sql, declared)| {
                let mut parsed = parse::parse(&sql)?;
                if parsed.len() > 1 {
                    return Err(PgError::new(
                        code::SYNTAX_ERROR,
                        "cannot insert multiple commands into a prepared statement",
                    ));
                }
                let stmt = parsed.pop();
                let mut param_types = stmt.as_ref().map(Session::param_types).unwrap_or_default();
                for (i, t) in declared.iter().enumerate() {
                    if *t != 0 && i < param_types.len() {
                        param_types[i] = *t;
                    }
                }
                if !name.is_empty() && statements.contains_key(&name) {
                    return Err(PgError::new(
                        "42P05",
                        format!("prepared statement \"{name}\" already exists"),
                    ));
                }
                statements.insert(name, Prepared { stmt, param_types });
                out.parse_complete();
                Ok(())
            }),
            b'B' => bind(&mut c, &statements, &mut portals).map(|()| out.bind_complete()),
            b'D' => (|| {
                let kind = c.u8().map_err(|e| proto_to_pg(&e))?;
                let name = c.cstr().map_err(|e| proto_to_pg(&e))?;
                match kind {
                    b'S' => {
                        let p = statements.get(&name).ok_or_else(|| {
                            PgError::new(
                                code::INVALID_SQL_STATEMENT_NAME,
                                format!("prepared statement \"{name}\" does not exist"),
                            )
                        })?;
                        out.parameter_description(&p.param_types);
                        describe_rows(&session, &mut out, p.stmt.as_ref(), &[]);
                        Ok(())
                    }
                    b'P' => {
                        let p = portals.get(&name).ok_or_else(|| {
                            PgError::new(
                                code::INVALID_CURSOR_NAME,
                                format!("portal \"{name}\" does not exist"),
                            )
                        })?;
                        describe_rows(&session, &mut out, p.stmt.as_ref(), &p.formats);
                        Ok(())
                    }
                    // An error, not the session's end, as PostgreSQL has it.
                    _ => Err(PgError::new(
                        code::PROTOCOL_VIOLATION,
                        format!("invalid Describe target '{}'", kind as char),
                    )),
                }
            })(),
            b'E' => (|| {
                let name = c.cstr().map_err(|e| proto_to_pg(&e))?;
                let max_rows = c.i32().map_err(|e| proto_to_pg(&e))?.max(0) as usize;
                let portal = portals.get_mut(&name).ok_or_else(|| {
                    PgError::new(
                        code::INVALID_CURSOR_NAME,
                        format!("portal \"{name}\" does not exist"),
                    )
                })?;
                let Some(stmt) = &portal.stmt else {
                    out.empty_query();
                    return Ok(());
                };
                if portal.result.is_none() {
                    // The statements of a batch, up to its Sync, are one
                    // implicit transaction, as PostgreSQL makes them: a
                    // later failure undoes this one. A statement whose Sync
                    // is already here is alone in its batch, and commits as
                    // it runs.
                    let controls_blocks = matches!(
                        stmt,
                        Statement::Begin { .. }
                            | Statement::Commit { .. }
                            | Statement::Rollback { .. }
                    );
                    if !sync_follows && !controls_blocks {
                        session.begin_implicit();
                    }
                    if *stmt == Statement::DiscardAll {
                        // It would close the portal running it.
                        return Err(PgError::new(
                            code::FEATURE_NOT_SUPPORTED,
                            "DISCARD ALL is run as a simple query here",
                        )
                        .with_hint(
                            "send it with the simple query protocol, as connection poolers do",
                        ));
                    }
                    // An error fails the transaction where every step's
                    // error does, below.
                    portal.result = Some(
                        session
                            .execute(stmt, &portal.params)
                            .and_then(|r| deallocate(stmt, &mut statements).map(|()| r))?,
                    );
                }
                let Some(res) = &portal.result else {
                    return Ok(());
                };
                let n = send_result(&mut out, res, &portal.formats, portal.sent, max_rows, false);
                portal.sent += n;
                // As PostgreSQL: a limit reached is a suspended portal, even
                // with no row left (the next Execute then ends it).
                if max_rows > 0 && (portal.sent < res.rows.len() || n == max_rows) {
                    out.portal_suspended();
                } else if max_rows > 0 && res.tag.starts_with("SELECT ") {
                    // The rows of this Execute, as PostgreSQL counts them.
                    out.command_complete(&format!("SELECT {n}"));
                } else {
                    out.command_complete(&res.tag);
                }
                Ok(())
            })(),
            b'C' => (|| {
                let kind = c.u8().map_err(|e| proto_to_pg(&e))?;
                let name = c.cstr().map_err(|e| proto_to_pg(&e))?;
                match kind {
                    b'S' => {
                        statements.remove(&name);
                    }
                    b'P' => {
                        portals.remove(&name);
                    }
                    // An error, not the session's end, as for Describe.
                    _ => {
                        return Err(PgError::new(
                            code::PROTOCOL_VIOLATION,
                            format!("invalid Close target '{}'", kind as char),
                        ))
                    }
                }
                out.close_complete();
                Ok(())
            })(),
            b'S' => {
                skipping = false;
                end_implicit(&mut session, &mut out);
                portals.retain(|name, _| !name.is_empty());
                if session.status() == b'I' {
                    portals.clear();
                }
                out.ready(session.status());
                Ok(())
            }
            b'H' => Ok(()),
            b'X' => {
                session.abandon();
                return Ok(());
            }
            // COPY data outside COPY: ignored, as PostgreSQL does.
            b'd' | b'c' | b'f' => Ok(()),
            // A FunctionCall is a cycle of its own, like a query: an
            // error, then ReadyForQuery.
            b'F' => {
                session.fail_transaction();
                out.error(
                    &PgError::new(
                        code::FEATURE_NOT_SUPPORTED,
                        "fastpath function calls are not supported",
                    )
                    .with_hint("call functions with SELECT"),
                );
                out.ready(session.status());
                Ok(())
            }
            b'p' => Err(PgError::fatal(
                code::PROTOCOL_VIOLATION,
                "unexpected password message",
            )),
            other => Err(PgError::fatal(
                code::PROTOCOL_VIOLATION,
                format!("invalid frontend message type {}", other),
            )),
        };
        if let Err(e) = step {
            out.error(&e);
            if e.fatal {
                let _ = out.send(w);
                session.abandon();
                return Ok(());
            }
            // Any error fails the transaction, as in PostgreSQL: a failed
            // Parse or Bind in a batch undoes what ran before it, up to
            // the Sync.
            session.fail_transaction();
            if tag != b'Q' {
                skipping = true;
            }
        }
        if matches!(tag, b'Q' | b'S' | b'H' | b'F') || out.len() > 64 << 10 {
            out.send(w)?;
        }
    }
}

/// The settings in a startup `options` string: `-c name=value`,
/// `-cname=value` or `--name=value`, separated by spaces.
fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let setting = match word {
            "-c" => words.next(),
            w => w.strip_prefix("--").or_else(|| w.strip_prefix("-c")),
        };
        if let Some((name, value)) = setting.and_then(|s| s.split_once('=')) {
            out.push((name.replace('-', "_"), value.to_string()));
        }
    }
    out
}

/// What follows authentication: the parameters a PostgreSQL 15 server
/// reports, the cancel key, and ReadyForQuery.
fn greet(
    node: &Node,
    session: &Session,
    w: &mut Writer,
    pid: i32,
    key: i32,
) -> Result<(), ProtoError> {
    let mut out = Out::default();
    for (name, value) in node.startup_parameters(session) {
        out.parameter_status(&name, &value);
    }
    out.backend_key(pid, key);
    out.ready(session.status());
    out.send(w)?;
    Ok(())
}

fn describe_rows(session: &Session, out: &mut Out, stmt: Option<&Statement>, formats: &[i16]) {
    match stmt.and_then(|s| session.describe(s)) {
        Some(cols) => {
            let cols: Vec<(String, u32)> = cols.into_iter().map(|c| (c.name, c.type_oid)).collect();
            out.row_description(&cols, formats);
        }
        None => out.no_data(),
    }
}

fn bind(
    c: &mut Cursor<'_>,
    statements: &HashMap<String, Prepared>,
    portals: &mut HashMap<String, Portal>,
) -> Result<(), PgError> {
    let pe = |e: ProtoError| proto_to_pg(&e);
    let portal = c.cstr().map_err(pe)?;
    let name = c.cstr().map_err(pe)?;
    let prepared = statements.get(&name).ok_or_else(|| {
        PgError::new(
            code::INVALID_SQL_STATEMENT_NAME,
            format!("prepared statement \"{name}\" does not exist"),
        )
    })?;
    let nfmt = c.count16().map_err(pe)?;
    let mut param_formats = Vec::with_capacity(nfmt);
    for _ in 0..nfmt {
        param_formats.push(c.i16().map_err(pe)?);
    }
    if let Some(f) = param_formats.iter().find(|f| !matches!(f, 0 | 1)) {
        return Err(PgError::new(
            code::INVALID_PARAMETER_VALUE,
            format!("unsupported format code: {f}"),
        ));
    }
    let n = c.count16().map_err(pe)?;
    if nfmt > 1 && nfmt != n {
        return Err(PgError::new(
            code::PROTOCOL_VIOLATION,
            format!("bind message has {nfmt} parameter formats but {n} parameters"),
        ));
    }
    if n != prepared.param_types.len() {
        return Err(PgError::new(
            code::PROTOCOL_VIOLATION,
            format!("bind message supplies {n} parameters, but prepared statement \"{name}\" requires {}", prepared.param_types.len()),
        ));
    }
    let mut params = Vec::with_capacity(n);
    for i in 0..n {
        let len = c.i32().map_err(pe)?;
        if len == -1 {
            params.push(None);
            continue;
        }
        if len < 0 {
            return Err(PgError::new(
                code::PROTOCOL_VIOLATION,
                format!("invalid length {len} of parameter ${}", i + 1),
            ));
        }
        let raw = c.bytes(len as usize).map_err(pe)?;
        let binary = format_of(&param_formats, i) == 1;
        params.push(Some(decode_param(raw, binary, prepared.param_types[i], i)?));
    }
    let nres = c.count16().map_err(pe)?;
    let mut formats = Vec::with_capacity(nres);
    for _ in 0..nres {
        formats.push(c.i16().map_err(pe)?);
    }
    if let Some(f) = formats.iter().find(|f| !matches!(f, 0 | 1)) {
        return Err(PgError::new(
            code::INVALID_PARAMETER_VALUE,
            format!("unsupported format code: {f}"),
        ));
    }
    if !c.is_empty() {
        return Err(PgError::new(
            code::PROTOCOL_VIOLATION,
            "invalid message format: bytes after the end of Bind",
        ));
    }
    portals.insert(
        portal,
        Portal {
            stmt: prepared.stmt.clone(),
            params,
            formats,
            result: None,
            sent: 0,
        },
    );
    Ok(())
}

/// A parameter's value as text, from the text or binary format of its type.
fn decode_param(raw: &[u8], binary: bool, type_oid: u32, i: usize) -> Result<String, PgError> {
    let bad = || {
        PgError::new(
            code::INVALID_TEXT_REPRESENTATION,
            format!("invalid binary value for parameter ${}", i + 1),
        )
    };
    if binary {
        match type_oid {
            oid::INT8 => Ok(i64::from_be_bytes(raw.try_into().map_err(|_| bad())?).to_string()),
            oid::INT4 => Ok(i32::from_be_bytes(raw.try_into().map_err(|_| bad())?).to_string()),
            21 => Ok(i16::from_be_bytes(raw.try_into().map_err(|_| bad())?).to_string()),
            oid::BOOL => Ok(if raw == [1] { "true" } else { "false" }.into()),
            _ => String::from_utf8(raw.to_vec()).map_err(|_| bad()),
        }
    } else if let Some(at) = raw.iter().position(|&b| b == 0) {
        // A text value never holds a zero byte (PostgreSQL's text cannot).
        Err(PgError::new(
            code::CHARACTER_NOT_IN_REPERTOIRE,
            format!(
                "invalid byte sequence for encoding \"UTF8\": 0x00 at byte {at} of parameter ${}",
                i + 1
            ),
        ))
    } else {
        String::from_utf8(raw.to_vec()).map_err(|_| {
            PgError::new(
                code::CHARACTER_NOT_IN_REPERTOIRE,
                format!(
                    "invalid byte sequence for encoding \"UTF8\" in parameter ${}",
                    i + 1
                ),
            )
        })
    }
}

/// The simple query protocol: every statement of the string in turn. As in
/// PostgreSQL, the statements of a string of several that are outside a
/// transaction block run as one implicit transaction: from the string's
/// start, or from a COMMIT or ROLLBACK that ends a block, to the string's
/// end; a BEGIN makes it explicit, the statements before it included.
fn simple_query(
    session: &mut Session,
    out: &mut Out,
    sql: &str,
    statements: &mut HashMap<String, Prepared>,
    portals: &mut HashMap<String, Portal>,
) {
    let parsed = match parse::parse(sql) {
        Ok(s) => s,
        Err(e) => {
            session.fail_transaction();
            out.error(&e);
            return;
        }
    };
    if parsed.is_empty() {
        out.empty_query();
        return;
    }
    let several = parsed.len() > 1;
    if several {
        session.begin_implicit();
    }
    for (i, stmt) in parsed.iter().enumerate() {
        // The session first (a failed block refuses even DEALLOCATE), then
        // the connection's prepared statements.
        let ran = session
            .execute(stmt, &[])
            .and_then(|r| deallocate(stmt, statements).map(|()| r))
            .inspect(|_| {
                if *stmt == Statement::DiscardAll {
                    statements.clear();
                    portals.clear();
                }
            });
        match ran {
            Ok(result) => {
                send_result(out, &result, &[], 0, 0, true);
                out.command_complete(&result.tag);
                let ends_block =
                    matches!(stmt, Statement::Commit { .. } | Statement::Rollback { .. });
                if several && ends_block && i + 1 < parsed.len() {
                    session.begin_implicit();
                }
            }
            Err(e) => {
                session.fail_transaction();
                out.error(&e);
                // A failed implicit block is rolled back; an explicit one
                // stays open, failed, for the client's ROLLBACK.
                let _ = session.end_implicit();
                return;
            }
        }
    }
    end_implicit(session, out);
}

/// DEALLOCATE drops a prepared statement of this connection's (all, for
/// DEALLOCATE ALL); one that does not exist is PostgreSQL's 26000.
fn deallocate(stmt: &Statement, statements: &mut HashMap<String, Prepared>) -> Result<(), PgError> {
    match stmt {
        Statement::Deallocate { name: Some(name) } => {
            statements.remove(name).map(drop).ok_or_else(|| {
                PgError::new(
                    code::INVALID_SQL_STATEMENT_NAME,
                    format!("prepared statement \"{name}\" does not exist"),
                )
            })
        }
        Statement::Deallocate { name: None } => {
            statements.clear();
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Ends the session's implicit block, if any, telling the client of the
/// commit's notices or its error.
fn end_implicit(session: &mut Session, out: &mut Out) {
    match session.end_implicit() {
        Ok(notices) => {
            for n in &notices {
                out.notice(n);
            }
        }
        Err(e) => out.error(&e),
    }
}
