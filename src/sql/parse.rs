//! From SQL text to walship's statements, through sqlparser's PostgreSQL
//! dialect. Anything outside the `kv` subset is refused with the SQLSTATE
//! PostgreSQL would use and a message naming what is supported.

use sqlparser::ast::{
    self, AlterRoleOperation, AssignmentTarget, CastKind, ConflictTarget, DataType, FromTable,
    FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, ObjectName, ObjectType,
    OnConflictAction, OnInsert, Password, RoleOption, SelectItem, SetExpr, TableFactor,
    TableWithJoins, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::sqlstate::{code, PgError};
use crate::wal::Lsn;

pub use super::views::SystemView;

/// What walship supports, for error messages.
pub const SUPPORTED: &str = "walship supports INSERT, UPDATE, DELETE and SELECT on the table kv (key text primary key, value text), \
BEGIN/COMMIT/ROLLBACK, SET/SHOW, CHECKPOINT, CREATE/ALTER/DROP ROLE, WAIT FOR LSN, and the functions pg_current_wal_lsn(), \
pg_switch_wal(), pg_is_in_recovery(), pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), pg_promote(), walship_fence(), \
walship_store_checksum(), current_user, version() and current_setting()";

/// A value in a statement: a literal, or a parameter filled in at Bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Lit(String),
    /// `$n`, zero-based.
    Param(usize),
    Null,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnConflict {
    /// Plain INSERT: an existing key is a unique violation.
    Error,
    DoNothing,
    DoUpdate,
}

/// The columns a SELECT on kv returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Key,
    Value,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Projection {
    Columns(Vec<Column>),
    Count,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    All,
    Key(Expr),
    /// Lower and upper bounds, each with "inclusive".
    Range {
        lo: Option<(Expr, bool)>,
        hi: Option<(Expr, bool)>,
    },
    /// `key LIKE 'prefix%'`: the pattern.
    Like(Expr),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Select {
    pub projection: Projection,
    /// The output columns' names where an alias (`AS name`) gives them,
    /// in output order; `None` keeps the column's own name.
    pub names: Vec<Option<String>>,
    pub filter: Filter,
    pub descending: bool,
    pub limit: Option<Expr>,
    /// `FOR UPDATE` (or `FOR SHARE`, taken as strongly): in a transaction
    /// block the key is locked as a write would lock it.
    pub for_update: bool,
}

/// A function walship evaluates in a FROM-less SELECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Func {
    CurrentWalLsn,
    CurrentWalInsertLsn,
    CurrentWalFlushLsn,
    SwitchWal,
    IsInRecovery,
    LastWalReceiveLsn,
    LastWalReplayLsn,
    Version,
    /// `current_user`, `session_user`, `current_role`, `user`: the
    /// session's role (psql's `\password` asks it).
    CurrentUser,
    /// `walship_store_checksum()`: the store's applied LSN and checksum,
    /// so two nodes can be compared at the same LSN.
    StoreChecksum,
    /// `walship_fence(epoch)`: a newer epoch's order to stop writing.
    Fence(Expr),
    /// `pg_promote()`: promote this standby (waits for it).
    Promote,
    /// `current_setting(name [, missing_ok])`: with `missing_ok` true, an
    /// unknown name gives NULL, not an error.
    CurrentSetting {
        name: Expr,
        missing_ok: Option<Expr>,
    },
    Literal(Expr),
}

/// One item of a FROM-less SELECT, with its output column name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuncItem {
    pub name: String,
    pub func: Func,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Statement {
    Insert {
        rows: Vec<(Expr, Expr)>,
        on_conflict: OnConflict,
    },
    Update {
        key: Expr,
        value: Expr,
    },
    Delete {
        key: Expr,
    },
    Select(Select),
    Functions(Vec<FuncItem>),
    /// BEGIN / START TRANSACTION; `read_only` refuses the block's writes.
    Begin {
        read_only: bool,
    },
    /// COMMIT / END; `chain` begins a new block at once, like the last.
    Commit {
        chain: bool,
    },
    /// ROLLBACK / ABORT; `chain` as for COMMIT.
    Rollback {
        chain: bool,
    },
    /// `SET [LOCAL] name = value`; `local` lasts to the end of the
    /// transaction block.
    Set {
        name: String,
        value: Option<String>,
        local: bool,
    },
    Show {
        name: String,
    },
    /// Run a checkpoint now.
    Checkpoint,
    /// `RESET name`, or `RESET ALL` (`None`): back to the session's
    /// defaults (walship.conf's, or what the client sent at startup).
    Reset {
        name: Option<String>,
    },
    /// `DEALLOCATE [PREPARE] name`, or `DEALLOCATE ALL` (`None`).
    Deallocate {
        name: Option<String>,
    },
    /// `DISCARD ALL`: the session as it began (connection poolers send it
    /// between clients).
    DiscardAll,
    /// `SELECT cols | * FROM` a system view.
    View {
        view: SystemView,
        /// The columns asked for, in order; empty for `*`.
        columns: Vec<String>,
    },
    /// `WAIT FOR LSN 'X/X' [WITH (TIMEOUT '…')]`: wait until this node has
    /// replayed (a standby) or flushed (a primary) up to `lsn`.
    WaitForLsn {
        lsn: Lsn,
        timeout: Option<std::time::Duration>,
    },
    Role(RoleStatement),
}

/// CREATE, ALTER and DROP ROLE (USER is a synonym, as in PostgreSQL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoleStatement {
    Create {
        name: String,
        options: RoleOptions,
    },
    /// `name` is `None` for CURRENT_USER, SESSION_USER or CURRENT_ROLE.
    Alter {
        name: Option<String>,
        options: RoleOptions,
    },
    Drop {
        names: Vec<String>,
        if_exists: bool,
    },
}

/// The most parameters a statement may have: the protocol counts them in
/// an Int16.
const MAX_PARAMS: usize = 65535;

/// The words a role specification uses for the session's own role, as in
/// `ALTER ROLE CURRENT_USER` (so no role may be named one of them).
pub const SESSION_ROLE_WORDS: [&str; 3] = ["current_user", "session_user", "current_role"];

impl RoleStatement {
    /// The command's name, as PostgreSQL's messages give it.
    pub fn command(&self) -> &'static str {
        match self {
            RoleStatement::Create { .. } => "CREATE ROLE",
            RoleStatement::Alter { .. } => "ALTER ROLE",
            RoleStatement::Drop { .. } => "DROP ROLE",
        }
    }
}

/// For the log: the command and the roles it names (never a password).
impl std::fmt::Display for RoleStatement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoleStatement::Create { name, .. } => write!(f, "CREATE ROLE {name}"),
            RoleStatement::Alter { name, .. } => {
                write!(
                    f,
                    "ALTER ROLE {}",
                    name.as_deref().unwrap_or("CURRENT_USER")
                )
            }
            RoleStatement::Drop { names, .. } => write!(f, "DROP ROLE {}", names.join(", ")),
        }
    }
}

impl RoleStatement {
    /// The CommandComplete tag.
    pub fn tag(&self) -> &'static str {
        match self {
            RoleStatement::Create { .. } => "CREATE ROLE",
            RoleStatement::Alter { .. } => "ALTER ROLE",
            RoleStatement::Drop { .. } => "DROP ROLE",
        }
    }
}

/// The attributes a CREATE or ALTER ROLE sets; `None` leaves one as it is
/// (for CREATE: not a superuser, may not replicate, no password).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleOptions {
    pub superuser: Option<bool>,
    pub replication: Option<bool>,
    /// LOGIN or NOLOGIN. As in PostgreSQL, a role made by CREATE ROLE may
    /// not log in unless it says LOGIN; CREATE USER says LOGIN unless it
    /// says NOLOGIN.
    pub login: Option<bool>,
    /// `PASSWORD 'text'` (`Some(Some(text))`) or `PASSWORD NULL`
    /// (`Some(None)`); the text is a password or a SCRAM-SHA-256 verifier.
    pub password: Option<Option<String>>,
}

impl Statement {
    /// The number of parameters (`$n`) the statement uses.
    pub fn param_count(&self) -> usize {
        let mut max = 0;
        let mut see = |e: &Expr| {
            if let Expr::Param(i) = e {
                max = max.max(i + 1);
            }
        };
        match self {
            Statement::Insert { rows, .. } => rows.iter().for_each(|(k, v)| {
                see(k);
                see(v)
            }),
            Statement::Update { key, value } => {
                see(key);
                see(value)
            }
            Statement::Delete { key } => see(key),
            Statement::Select(s) => {
                match &s.filter {
                    Filter::All => {}
                    Filter::Key(e) | Filter::Like(e) => see(e),
                    Filter::Range { lo, hi } => {
                        lo.iter().chain(hi.iter()).for_each(|(e, _)| see(e));
                    }
                }
                s.limit.iter().for_each(&mut see);
            }
            Statement::Functions(items) => items.iter().for_each(|i| match &i.func {
                Func::CurrentSetting { name, missing_ok } => {
                    see(name);
                    missing_ok.iter().for_each(&mut see);
                }
                Func::Literal(e) | Func::Fence(e) => see(e),
                _ => {}
            }),
            _ => {}
        }
        max
    }
}

fn unsupported(what: impl std::fmt::Display) -> PgError {
    PgError::new(
        code::FEATURE_NOT_SUPPORTED,
        format!("{what} is not supported"),
    )
    .with_hint(SUPPORTED)
}

/// Parses one query string (which may hold several statements, as the
/// simple query protocol allows).
pub fn parse(sql: &str) -> Result<Vec<Statement>, PgError> {
    // Commands sqlparser does not know (CHECKPOINT, WAIT FOR LSN, and the
    // USER and ENCRYPTED forms of role commands) are parsed here, each
    // statement apart; a query without them goes to sqlparser whole, so
    // its error positions are the query's own. Most queries name none of
    // these words: they skip the extra tokenizing.
    let names = |word: &str| {
        sql.as_bytes()
            .windows(word.len())
            .any(|w| w.eq_ignore_ascii_case(word.as_bytes()))
    };
    // SHOW too: sqlparser's SHOW takes the words of the statements after
    // it for its name, so a string holding one is parsed a statement at
    // a time.
    if ![
        "checkpoint",
        "wait",
        "user",
        "encrypted",
        "abort",
        "reset",
        "deallocate",
        "show",
    ]
    .iter()
    .any(|w| names(w))
    {
        return parse_sql(sql);
    }
    let pieces = split_statements(sql);
    let own: Vec<_> = pieces.iter().map(|p| own_command(p)).collect();
    if own.iter().all(Option::is_none) && !(pieces.len() > 1 && names("show")) {
        return parse_sql(sql);
    }
    let mut statements = Vec::new();
    for (piece, own) in pieces.iter().zip(own) {
        match own {
            Some(statement) => statements.push(statement?),
            None => statements.extend(parse_sql(piece)?),
        }
    }
    Ok(statements)
}

/// CHECKPOINT, WAIT FOR LSN, ABORT, RESET, DEALLOCATE and CREATE / ALTER /
/// DROP USER, which sqlparser does not know, in one statement's text.
fn own_command(statement: &str) -> Option<Result<Statement, PgError>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, statement)
        .tokenize_with_location()
        .ok()?;
    // Keywords are matched in the tokens rendered without comments (so
    // that `-- why\nCHECKPOINT` is CHECKPOINT): CHECKPOINT and WAIT FOR
    // LSN hold nothing a rendering could change the meaning of.
    let plain = tokens
        .iter()
        .map(|t| match &t.token {
            Token::Whitespace(_) => " ".to_string(),
            other => other.to_string(),
        })
        .collect::<String>();
    let plain = plain.trim();
    if let Some(rest) = strip_words(plain, &["wait", "for", "lsn"]) {
        return Some(parse_wait_for_lsn(rest));
    }
    if plain.eq_ignore_ascii_case("checkpoint") {
        return Some(Ok(Statement::Checkpoint));
    }
    if let Some(rest) = strip_words(plain, &["reset"]) {
        return Some(name_or_all(rest).map(|name| Statement::Reset { name }));
    }
    if let Some(rest) = strip_words(plain, &["deallocate"]) {
        let rest = strip_words(rest, &["prepare"]).unwrap_or(rest);
        return Some(name_or_all(rest).map(|name| Statement::Deallocate { name }));
    }
    // ABORT is PostgreSQL's ROLLBACK, with the same words after it.
    if let Some(rest) = strip_words(plain, &["abort"]) {
        return Some(parse_sql(&format!("ROLLBACK {rest}")).and_then(|mut s| {
            s.pop()
                .ok_or_else(|| PgError::new(code::SYNTAX_ERROR, "syntax error"))
        }));
    }
    role_statement(statement, &tokens)
}

/// CREATE / ALTER / DROP ROLE in the forms sqlparser does not take:
/// `… USER name` for `… ROLE name` (but `… USER MAPPING` is another
/// command), and `ENCRYPTED PASSWORD` for `PASSWORD`. Rewritten in the
/// statement's own text, so a password's quotes and escapes stay exactly
/// as the client sent them.
fn role_statement(statement: &str, tokens: &[TokenWithSpan]) -> Option<Result<Statement, PgError>> {
    let mut offsets = Offsets::new(statement);
    let words: Vec<(usize, &Token)> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .map(|t| (offsets.of(t.span.start), &t.token))
        .collect();
    let keyword = |i: usize, k: &str| {
        matches!(words.get(i), Some((_, Token::Word(w)))
            if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k))
    };
    let is_role = ["create", "alter", "drop"].iter().any(|v| keyword(0, v))
        && (keyword(1, "role") || keyword(1, "user"))
        && !keyword(2, "mapping");
    if !is_role {
        return None;
    }
    // (start, length, replacement), in order.
    let mut edits = Vec::new();
    if keyword(1, "user") {
        edits.push((words[1].0, "user".len(), "ROLE"));
    }
    // From after the role's name (a role may be called "encrypted"); a
    // space for the word, so that its neighbours do not run together.
    for (i, (at, _)) in words.iter().enumerate().skip(3) {
        if keyword(i, "encrypted") && keyword(i + 1, "password") {
            edits.push((*at, "encrypted".len(), " "));
        }
    }
    if edits.is_empty() {
        return None;
    }
    let mut text = String::with_capacity(statement.len());
    let mut from = 0;
    for (start, len, with) in edits {
        text.push_str(&statement[from..start]);
        text.push_str(with);
        from = start + len;
    }
    text.push_str(&statement[from..]);
    let create_user = keyword(0, "create") && keyword(1, "user");
    Some(parse_sql(&text).and_then(|mut s| {
        let mut statement = s
            .pop()
            .ok_or_else(|| PgError::new(code::SYNTAX_ERROR, "syntax error"))?;
        // CREATE USER is CREATE ROLE with LOGIN unless it says otherwise.
        if let Statement::Role(RoleStatement::Create { options, .. }) = &mut statement {
            if create_user {
                options.login.get_or_insert(true);
            }
        }
        Ok(statement)
    }))
}

/// The statements of a query string, as slices of it: split at the
/// semicolons that end them (not those inside quotes or comments),
/// trimmed, empty ones left out. A query that does not tokenize is one
/// piece: sqlparser then says what is wrong with it.
fn split_statements(sql: &str) -> Vec<&str> {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location() else {
        return vec![sql.trim()];
    };
    let mut offsets = Offsets::new(sql);
    let mut pieces = Vec::new();
    let mut start = 0;
    for t in tokens.iter().filter(|t| t.token == Token::SemiColon) {
        let at = offsets.of(t.span.start);
        pieces.push(sql[start..at].trim());
        start = at + 1;
    }
    pieces.push(sql[start..].trim());
    pieces.retain(|p| !p.is_empty());
    pieces
}

/// Byte offsets in a text of the places its tokenizer gave (lines and
/// columns counting from 1, columns in characters, a line ending at each
/// `\n`), asked for in the order of the text: one pass over it in all, so
/// a query of many statements costs no more than its length.
struct Offsets<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    len: usize,
    /// Where the next character of `chars` is.
    at: Location,
}

impl<'a> Offsets<'a> {
    fn new(text: &'a str) -> Offsets<'a> {
        Offsets {
            chars: text.char_indices().peekable(),
            len: text.len(),
            at: Location { line: 1, column: 1 },
        }
    }

    /// The byte offset of `place`, which is not before the last one asked.
    fn of(&mut self, place: Location) -> usize {
        while (self.at.line, self.at.column) < (place.line, place.column) {
            match self.chars.next() {
                Some((_, '\n')) => {
                    self.at = Location {
                        line: self.at.line + 1,
                        column: 1,
                    }
                }
                Some(_) => self.at.column += 1,
                None => return self.len,
            }
        }
        self.chars.peek().map_or(self.len, |&(i, _)| i)
    }
}

/// Parses statements sqlparser knows.
fn parse_sql(sql: &str) -> Result<Vec<Statement>, PgError> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| {
        // PostgreSQL commands the parser does not know are unsupported
        // here, not misspelt.
        match postgres_command(sql) {
            Some(command) => unsupported(command),
            None => PgError::new(
                code::SYNTAX_ERROR,
                format!("syntax error: {}", strip_parser_prefix(&e.to_string())),
            ),
        }
    })?;
    statements.into_iter().map(convert).collect()
}

/// The command `sql` begins with, upper-cased, when it is one of
/// PostgreSQL's that walship does not support.
fn postgres_command(sql: &str) -> Option<String> {
    const COMMANDS: &[&str] = &[
        "ABORT",
        "ALTER",
        "ANALYZE",
        "CALL",
        "CLOSE",
        "CLUSTER",
        "COMMENT",
        "COPY",
        "CREATE",
        "DEALLOCATE",
        "DECLARE",
        "DISCARD",
        "DO",
        "DROP",
        "EXECUTE",
        "EXPLAIN",
        "FETCH",
        "GRANT",
        "IMPORT",
        "LISTEN",
        "LOAD",
        "LOCK",
        "MERGE",
        "MOVE",
        "NOTIFY",
        "PREPARE",
        "REASSIGN",
        "REFRESH",
        "REINDEX",
        "RELEASE",
        "RESET",
        "REVOKE",
        "SAVEPOINT",
        "SECURITY",
        "TRUNCATE",
        "UNLISTEN",
        "VACUUM",
    ];
    let word = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()?
        .to_ascii_uppercase();
    // CREATE, ALTER and DROP ROLE are supported: an error in one is a
    // syntax error.
    if strip_words(sql, &[&word, "role"]).is_some() {
        return None;
    }
    COMMANDS.contains(&word.as_str()).then_some(word)
}

/// `s` without the leading words `words` (any case, any spacing).
fn strip_words<'a>(s: &'a str, words: &[&str]) -> Option<&'a str> {
    let mut rest = s;
    for w in words {
        let t = rest.trim_start();
        let head = t.get(..w.len())?;
        if !head.eq_ignore_ascii_case(w) || t[w.len()..].starts_with(|c: char| c.is_alphanumeric())
        {
            return None;
        }
        rest = &t[w.len()..];
    }
    Some(rest)
}

/// The object of RESET or DEALLOCATE: `ALL` (`None`) or a name.
fn name_or_all(rest: &str) -> Result<Option<String>, PgError> {
    match rest.trim() {
        "" => Err(PgError::new(
            code::SYNTAX_ERROR,
            "syntax error at end of input",
        )),
        n if n.eq_ignore_ascii_case("all") => Ok(None),
        n => Ok(Some(folded(n))),
    }
}

/// A name as PostgreSQL reads it from text: quoted, exactly what it says;
/// else in lower case (as [`ident_name`] reads a parsed one).
fn folded(name: &str) -> String {
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => name.to_ascii_lowercase(),
    }
}

/// The rest of `WAIT FOR LSN`: `'X/X' [WITH (TIMEOUT 'duration' | ms)]`.
fn parse_wait_for_lsn(rest: &str) -> Result<Statement, PgError> {
    let syntax = || {
        PgError::new(
            code::SYNTAX_ERROR,
            "syntax error: expected WAIT FOR LSN 'X/X' [WITH (TIMEOUT '10s')]",
        )
    };
    let rest = rest.trim().trim_end_matches(';').trim();
    let quoted = |s: &str| -> Option<(String, usize)> {
        let body = s.strip_prefix('\'')?;
        let end = body.find('\'')?;
        Some((body[..end].to_string(), end + 2))
    };
    let (lsn_text, used) = quoted(rest).ok_or_else(syntax)?;
    let lsn: Lsn = lsn_text.parse().map_err(|e| {
        PgError::new(
            code::INVALID_TEXT_REPRESENTATION,
            format!("invalid input syntax for type pg_lsn: \"{lsn_text}\" ({e})"),
        )
    })?;
    let rest = rest[used..].trim();
    if rest.is_empty() {
        return Ok(Statement::WaitForLsn { lsn, timeout: None });
    }
    let inner = strip_words(rest, &["with"])
        .map(str::trim)
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.trim_end().strip_suffix(')'))
        .ok_or_else(syntax)?;
    let value = strip_words(inner.trim(), &["timeout"])
        .ok_or_else(syntax)?
        .trim();
    let text = match quoted(value) {
        Some((t, _)) => t,
        None => value.to_string(),
    };
    let timeout = match text.parse::<u64>() {
        Ok(ms) => std::time::Duration::from_millis(ms),
        Err(_) => humantime::parse_duration(&text).map_err(|e| {
            PgError::new(
                code::INVALID_PARAMETER_VALUE,
                format!("invalid TIMEOUT \"{text}\": {e} (give milliseconds or a duration such as '5s')"),
            )
        })?,
    };
    Ok(Statement::WaitForLsn {
        lsn,
        timeout: Some(timeout),
    })
}

fn strip_parser_prefix(msg: &str) -> &str {
    msg.strip_prefix("sql parser error: ").unwrap_or(msg)
}

fn convert(stmt: ast::Statement) -> Result<Statement, PgError> {
    match stmt {
        ast::Statement::Insert(insert) => convert_insert(insert),
        ast::Statement::Update {
            table,
            assignments,
            from,
            selection,
            returning,
            or,
        } => {
            check_table(&table)?;
            if from.is_some() || returning.is_some() || or.is_some() {
                return Err(unsupported("UPDATE … FROM / RETURNING"));
            }
            let [assignment] = &assignments[..] else {
                return Err(unsupported("UPDATE of anything but SET value = …"));
            };
            let AssignmentTarget::ColumnName(col) = &assignment.target else {
                return Err(unsupported("tuple assignment"));
            };
            match column(col)? {
                Column::Value => {}
                Column::Key => {
                    return Err(unsupported(
                        "changing a key with UPDATE (DELETE and INSERT instead)",
                    ))
                }
            }
            let value = expr(&assignment.value)?;
            let key = key_equals(selection.as_ref(), "UPDATE")?;
            Ok(Statement::Update { key, value })
        }
        ast::Statement::Delete(delete) => {
            let tables = match &delete.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            let [table] = &tables[..] else {
                return Err(unsupported("DELETE from several tables"));
            };
            check_table(table)?;
            if delete.using.is_some() || delete.returning.is_some() || delete.limit.is_some() {
                return Err(unsupported("DELETE … USING / RETURNING / LIMIT"));
            }
            let key = key_equals(delete.selection.as_ref(), "DELETE")?;
            Ok(Statement::Delete { key })
        }
        ast::Statement::Query(query) => convert_query(*query),
        ast::Statement::Discard {
            object_type: ast::DiscardObject::ALL,
        } => Ok(Statement::DiscardAll),
        ast::Statement::StartTransaction { modes, .. } => {
            let mut read_only = false;
            for mode in modes {
                match mode {
                    ast::TransactionMode::AccessMode(access) => {
                        read_only = access == ast::TransactionAccessMode::ReadOnly;
                    }
                    ast::TransactionMode::IsolationLevel(
                        ast::TransactionIsolationLevel::ReadCommitted
                        | ast::TransactionIsolationLevel::ReadUncommitted,
                    ) => {}
                    ast::TransactionMode::IsolationLevel(level) => {
                        return Err(PgError::new(
                            code::FEATURE_NOT_SUPPORTED,
                            format!("isolation level {level} is not supported"),
                        )
                        .with_hint("walship runs every transaction at READ COMMITTED"))
                    }
                }
            }
            Ok(Statement::Begin { read_only })
        }
        ast::Statement::Commit { chain, .. } => Ok(Statement::Commit { chain }),
        ast::Statement::Rollback {
            savepoint: None,
            chain,
        } => Ok(Statement::Rollback { chain }),
        ast::Statement::Rollback { .. } => Err(unsupported("ROLLBACK TO SAVEPOINT")),
        ast::Statement::SetVariable {
            local,
            variables,
            value,
            ..
        } => {
            let name = match variables {
                ast::OneOrManyWithParens::One(n) => object_name(&n),
                ast::OneOrManyWithParens::Many(_) => {
                    return Err(unsupported("SET of several variables"))
                }
            };
            let value = match &value[..] {
                [one] => Some(setting_value(one)?),
                _ => return Err(unsupported("SET with a list of values")),
            };
            Ok(Statement::Set { name, value, local })
        }
        ast::Statement::SetTimeZone { local, .. } => Ok(Statement::Set {
            name: "timezone".into(),
            value: None,
            local,
        }),
        ast::Statement::ShowVariable { variable } => Ok(Statement::Show {
            name: variable
                .iter()
                .map(|i| i.value.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(" "),
        }),
        ast::Statement::CreateRole {
            names,
            login,
            inherit,
            bypassrls,
            password,
            superuser,
            create_db,
            create_role,
            replication,
            connection_limit,
            valid_until,
            in_role,
            in_group,
            role,
            user,
            admin,
            ..
        } => {
            let [name] = &names[..] else {
                return Err(PgError::new(
                    code::SYNTAX_ERROR,
                    "CREATE ROLE creates one role at a time",
                ));
            };
            for (clause, roles) in [
                ("IN ROLE", in_role),
                ("IN GROUP", in_group),
                ("ROLE", role),
                ("USER", user),
                ("ADMIN", admin),
            ] {
                if !roles.is_empty() {
                    return Err(role_unsupported(clause));
                }
            }
            let options = [
                login.map(RoleOption::Login),
                inherit.map(RoleOption::Inherit),
                bypassrls.map(RoleOption::BypassRLS),
                password.map(RoleOption::Password),
                superuser.map(RoleOption::SuperUser),
                create_db.map(RoleOption::CreateDB),
                create_role.map(RoleOption::CreateRole),
                replication.map(RoleOption::Replication),
                connection_limit.map(RoleOption::ConnectionLimit),
                valid_until.map(RoleOption::ValidUntil),
            ];
            Ok(Statement::Role(RoleStatement::Create {
                name: role_name(name)?,
                options: role_options(options.into_iter().flatten())?,
            }))
        }
        ast::Statement::AlterRole { name, operation } => match operation {
            AlterRoleOperation::WithOptions { options } => {
                let current = name.quote_style.is_none()
                    && SESSION_ROLE_WORDS
                        .iter()
                        .any(|c| name.value.eq_ignore_ascii_case(c));
                Ok(Statement::Role(RoleStatement::Alter {
                    name: (!current).then(|| ident_name(&name)),
                    options: role_options(options)?,
                }))
            }
            AlterRoleOperation::RenameRole { .. } => Err(role_unsupported("RENAME")),
            _ => Err(role_unsupported("SET and RESET")),
        },
        ast::Statement::Drop {
            object_type: ObjectType::Role,
            cascade: true,
            ..
        } => Err(PgError::new(
            code::SYNTAX_ERROR,
            "DROP ROLE takes no CASCADE: a role owns nothing",
        )),
        ast::Statement::Drop {
            object_type: ObjectType::Role,
            if_exists,
            names,
            ..
        } => Ok(Statement::Role(RoleStatement::Drop {
            names: names.iter().map(role_name).collect::<Result<_, _>>()?,
            if_exists,
        })),
        other => {
            let text = other.to_string();
            let verb: String = text
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            Err(unsupported(verb))
        }
    }
}

fn role_unsupported(what: &str) -> PgError {
    PgError::new(
        code::FEATURE_NOT_SUPPORTED,
        format!("{what} is not supported on roles"),
    )
    .with_hint("a walship role has SUPERUSER, REPLICATION, LOGIN and PASSWORD")
}

/// A role's name as PostgreSQL folds it: ASCII letters to lower case,
/// unless quoted.
fn ident_name(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

fn role_name(name: &ObjectName) -> Result<String, PgError> {
    match &name.0[..] {
        [ident] => Ok(ident_name(ident)),
        _ => Err(PgError::new(
            code::SYNTAX_ERROR,
            format!("\"{name}\" is not a role name"),
        )),
    }
}

fn role_options(options: impl IntoIterator<Item = RoleOption>) -> Result<RoleOptions, PgError> {
    let mut out = RoleOptions::default();
    // Each option at most once, as PostgreSQL has it.
    fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), PgError> {
        match slot.replace(value) {
            None => Ok(()),
            Some(_) => Err(PgError::new(
                code::SYNTAX_ERROR,
                "conflicting or redundant options",
            )),
        }
    }
    let mut inherit = None;
    for option in options {
        match option {
            RoleOption::Login(on) => once(&mut out.login, on)?,
            // Every role inherits: there are no role memberships.
            RoleOption::Inherit(true) => once(&mut inherit, ())?,
            RoleOption::SuperUser(on) => once(&mut out.superuser, on)?,
            RoleOption::Replication(on) => once(&mut out.replication, on)?,
            RoleOption::Password(Password::NullPassword) => once(&mut out.password, None)?,
            RoleOption::Password(Password::Password(ast::Expr::Value(
                Value::SingleQuotedString(text)
                | Value::EscapedStringLiteral(text)
                | Value::DollarQuotedString(ast::DollarQuotedString { value: text, .. }),
            ))) => once(&mut out.password, Some(text))?,
            RoleOption::Password(Password::Password(_)) => {
                return Err(PgError::new(
                    code::SYNTAX_ERROR,
                    "PASSWORD takes a string literal or NULL",
                ))
            }
            other => return Err(role_unsupported(&other.to_string())),
        }
    }
    Ok(out)
}

fn setting_value(e: &ast::Expr) -> Result<String, PgError> {
    match e {
        ast::Expr::Value(Value::SingleQuotedString(s)) => Ok(s.clone()),
        ast::Expr::Value(Value::Number(n, _)) => Ok(n.clone()),
        ast::Expr::Value(Value::Boolean(b)) => Ok(if *b { "on" } else { "off" }.into()),
        ast::Expr::Identifier(i) => Ok(i.value.clone()),
        ast::Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => Ok(format!("-{}", setting_value(expr)?)),
        other => Err(PgError::new(
            code::SYNTAX_ERROR,
            format!("invalid value for SET: {other}"),
        )),
    }
}

fn object_name(n: &ObjectName) -> String {
    n.0.last()
        .map(|i| i.value.to_ascii_lowercase())
        .unwrap_or_default()
}

fn check_table_name(name: &ObjectName) -> Result<(), PgError> {
    // As PostgreSQL folds names: unquoted ones to lower case; a quoted
    // one is exactly what it says ("KV" is not kv).
    let parts: Vec<String> = name.0.iter().map(ident_name).collect();
    match &parts[..] {
        [t] if t == "kv" => Ok(()),
        [s, t] if (s == "public") && t == "kv" => Ok(()),
        _ => Err(PgError::new(
            code::UNDEFINED_TABLE,
            format!("relation \"{}\" does not exist", parts.join(".")),
        )
        .with_hint("walship has one table: kv (key text primary key, value text)")),
    }
}

fn check_table(t: &TableWithJoins) -> Result<(), PgError> {
    // psql's \d, \l and \du read PostgreSQL's catalogs (with joins):
    // say that, not that a join is unsupported.
    let relations = std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation));
    for relation in relations {
        if let TableFactor::Table { name, .. } = relation {
            let parts: Vec<String> = name
                .0
                .iter()
                .map(|i| i.value.to_ascii_lowercase())
                .collect();
            let first = parts
                .first()
                .filter(|_| SystemView::from_name(&parts).is_none());
            let catalog = first.is_some_and(|s| {
                s == "pg_catalog"
                    || s == "information_schema"
                    || (name.0.len() == 1 && s.starts_with("pg_"))
            });
            if catalog {
                return Err(PgError::new(
                    code::FEATURE_NOT_SUPPORTED,
                    format!("walship has no system catalog \"{name}\": it is not PostgreSQL, and psql's \\d, \\l and \\du read such catalogs"),
                )
                .with_hint("the one table is kv (key text primary key, value text); SELECT current_user, SHOW ALL and the views pg_stat_replication, pg_replication_slots, pg_stat_wal_receiver and pg_stat_archiver say the rest"));
            }
        }
    }
    if !t.joins.is_empty() {
        return Err(unsupported("JOIN"));
    }
    match &t.relation {
        TableFactor::Table {
            name, args: None, ..
        } => check_table_name(name),
        other => Err(unsupported(format!("FROM {other}"))),
    }
}

fn system_view(t: &TableWithJoins) -> Option<SystemView> {
    match &t.relation {
        TableFactor::Table {
            name, args: None, ..
        } if t.joins.is_empty() => {
            let parts: Vec<String> = name
                .0
                .iter()
                .map(|i| i.value.to_ascii_lowercase())
                .collect();
            SystemView::from_name(&parts)
        }
        _ => None,
    }
}

fn view_columns(view: SystemView, items: &[SelectItem]) -> Result<Vec<String>, PgError> {
    let mut out = Vec::new();
    for item in items {
        let e = match item {
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                out.extend(view.columns().iter().map(|(n, _)| n.to_string()));
                continue;
            }
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        };
        let name = match e {
            ast::Expr::Identifier(i) => i.value.to_ascii_lowercase(),
            ast::Expr::CompoundIdentifier(parts) => parts
                .last()
                .map(|i| i.value.to_ascii_lowercase())
                .unwrap_or_default(),
            other => {
                return Err(unsupported(format!(
                    "selecting {other} from {}",
                    view.name()
                )))
            }
        };
        if !view.columns().iter().any(|(n, _)| *n == name) {
            return Err(PgError::new(
                code::UNDEFINED_COLUMN,
                format!("column \"{name}\" does not exist in {}", view.name()),
            ));
        }
        out.push(name);
    }
    Ok(out)
}

/// A column's name, folded as PostgreSQL folds it (`"KEY"` is no column).
fn column(name: &ObjectName) -> Result<Column, PgError> {
    column_ident(&name.0.last().map(ident_name).unwrap_or_default())
}

fn column_ident(name: &str) -> Result<Column, PgError> {
    match name {
        "key" => Ok(Column::Key),
        "value" => Ok(Column::Value),
        _ => Err(PgError::new(
            code::UNDEFINED_COLUMN,
            format!("column \"{name}\" does not exist"),
        )
        .with_hint("kv has the columns key and value")),
    }
}

fn column_of(e: &ast::Expr) -> Option<Column> {
    match e {
        ast::Expr::Identifier(i) => column_ident(&ident_name(i)).ok(),
        ast::Expr::CompoundIdentifier(parts) => {
            parts.last().and_then(|i| column_ident(&ident_name(i)).ok())
        }
        _ => None,
    }
}

/// A value expression: a literal, `$n`, NULL, or one of those cast to text.
fn expr(e: &ast::Expr) -> Result<Expr, PgError> {
    match e {
        ast::Expr::Value(v) => match v {
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::DollarQuotedString(ast::DollarQuotedString { value: s, .. }) => {
                Ok(Expr::Lit(s.clone()))
            }
            Value::Number(n, _) => Ok(Expr::Lit(n.clone())),
            Value::Boolean(b) => Ok(Expr::Lit(b.to_string())),
            Value::Null => Ok(Expr::Null),
            Value::Placeholder(p) => {
                let n: usize = p
                    .strip_prefix('$')
                    .and_then(|d| d.parse().ok())
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| {
                        PgError::new(code::SYNTAX_ERROR, format!("invalid parameter {p}"))
                    })?;
                // The protocol carries at most 65535 parameters (an Int16
                // count); a larger number must not size anything.
                if n > MAX_PARAMS {
                    return Err(PgError::new(
                        code::UNDEFINED_PARAMETER,
                        format!("there is no parameter {p}"),
                    )
                    .with_hint(format!("a statement has at most {MAX_PARAMS} parameters")));
                }
                Ok(Expr::Param(n - 1))
            }
            other => Err(unsupported(format!("the value {other}"))),
        },
        ast::Expr::Cast {
            expr: inner,
            data_type,
            kind: CastKind::DoubleColon | CastKind::Cast,
            ..
        } => match data_type {
            DataType::Text
            | DataType::Varchar(_)
            | DataType::String(_)
            | DataType::CharacterVarying(_) => expr(inner),
            DataType::Custom(n, _) if object_name(n) == "pg_lsn" => expr(inner),
            other => Err(unsupported(format!("a cast to {other}"))),
        },
        ast::Expr::Nested(inner) => expr(inner),
        ast::Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr: inner,
        } => match expr(inner)? {
            Expr::Lit(n) if n.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
                Ok(Expr::Lit(format!("-{n}")))
            }
            _ => Err(unsupported(format!("the expression {e}"))),
        },
        // A name that is no column of kv is an error in PostgreSQL too.
        ast::Expr::Identifier(ident)
            if !matches!(ident.value.to_ascii_lowercase().as_str(), "key" | "value") =>
        {
            Err(PgError::new(
                code::UNDEFINED_COLUMN,
                format!("column \"{}\" does not exist", ident.value),
            )
            .with_hint("kv has two columns: key and value"))
        }
        other => Err(unsupported(format!("the expression {other}"))),
    }
}

fn key_equals(selection: Option<&ast::Expr>, verb: &str) -> Result<Expr, PgError> {
    if let Some(ast::Expr::BinaryOp {
        left,
        op: ast::BinaryOperator::Eq,
        right,
    }) = selection
    {
        if column_of(left) == Some(Column::Key) {
            return expr(right);
        }
        if column_of(right) == Some(Column::Key) {
            return expr(left);
        }
    }
    Err(unsupported(format!("{verb} other than by WHERE key = …")))
}

fn convert_insert(insert: ast::Insert) -> Result<Statement, PgError> {
    let ast::TableObject::TableName(table) = &insert.table else {
        return Err(unsupported("INSERT INTO a table function"));
    };
    check_table_name(table)?;
    if insert.returning.is_some() {
        return Err(unsupported("INSERT … RETURNING"));
    }
    let order: Vec<Column> = if insert.columns.is_empty() {
        vec![Column::Key, Column::Value]
    } else {
        insert
            .columns
            .iter()
            .map(|c| column_ident(&ident_name(c)))
            .collect::<Result<_, _>>()?
    };
    let key_at = order
        .iter()
        .position(|c| *c == Column::Key)
        .ok_or_else(|| {
            PgError::new(
                code::NOT_NULL_VIOLATION,
                "null value in column \"key\" of relation \"kv\" violates not-null constraint",
            )
        })?;
    let value_at = order.iter().position(|c| *c == Column::Value);
    let Some(source) = insert.source else {
        return Err(unsupported("INSERT without VALUES"));
    };
    let SetExpr::Values(values) = *source.body else {
        return Err(unsupported("INSERT … SELECT"));
    };
    let mut rows = Vec::with_capacity(values.rows.len());
    let width = values.rows.first().map_or(0, Vec::len);
    for row in &values.rows {
        if row.len() != width {
            return Err(PgError::new(
                code::SYNTAX_ERROR,
                "VALUES lists must all be the same length",
            ));
        }
        if row.len() > order.len() {
            return Err(PgError::new(
                code::SYNTAX_ERROR,
                "INSERT has more expressions than target columns",
            ));
        }
        // Fewer values than columns named is an error; with no column
        // list, the columns left out get their defaults.
        if row.len() < order.len() && !insert.columns.is_empty() {
            return Err(PgError::new(
                code::SYNTAX_ERROR,
                "INSERT has more target columns than expressions",
            ));
        }
        // A column left out, or given as DEFAULT, gets its default: NULL,
        // which the key refuses and the value cannot hold (both said when
        // the row is resolved), as PostgreSQL would say of NOT NULL.
        let at = |i: Option<usize>| -> Result<Expr, PgError> {
            match i.and_then(|i| row.get(i)) {
                None => Ok(Expr::Null),
                Some(ast::Expr::Identifier(w))
                    if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("default") =>
                {
                    Ok(Expr::Null)
                }
                Some(e) => expr(e),
            }
        };
        rows.push((at(Some(key_at))?, at(value_at)?));
    }
    let on_conflict = match insert.on {
        None => OnConflict::Error,
        Some(OnInsert::OnConflict(oc)) => {
            match &oc.conflict_target {
                None => {}
                Some(ConflictTarget::Columns(cols))
                    if cols.len() == 1 && cols[0].value.eq_ignore_ascii_case("key") => {}
                Some(_) => return Err(unsupported("ON CONFLICT on anything but (key)")),
            }
            match oc.action {
                OnConflictAction::DoNothing => OnConflict::DoNothing,
                OnConflictAction::DoUpdate(du) => {
                    let ok = du.selection.is_none()
                        && du.assignments.len() == 1
                        && matches!(&du.assignments[0].target, AssignmentTarget::ColumnName(c) if column(c).ok() == Some(Column::Value))
                        && matches!(&du.assignments[0].value, ast::Expr::CompoundIdentifier(p)
                            if p.len() == 2 && p[0].value.eq_ignore_ascii_case("excluded") && p[1].value.eq_ignore_ascii_case("value"));
                    if !ok {
                        return Err(unsupported(
                            "ON CONFLICT DO UPDATE other than SET value = excluded.value",
                        ));
                    }
                    OnConflict::DoUpdate
                }
            }
        }
        Some(OnInsert::DuplicateKeyUpdate(_)) => {
            return Err(unsupported("ON DUPLICATE KEY UPDATE"))
        }
        Some(other) => return Err(unsupported(other)),
    };
    Ok(Statement::Insert { rows, on_conflict })
}

fn convert_query(query: ast::Query) -> Result<Statement, PgError> {
    if query.with.is_some() || query.offset.is_some() || query.fetch.is_some() {
        return Err(unsupported("WITH / OFFSET / FETCH"));
    }
    if query
        .locks
        .iter()
        .any(|l| l.of.is_some() || l.nonblock.is_some())
    {
        return Err(unsupported("FOR UPDATE OF / NOWAIT / SKIP LOCKED"));
    }
    let for_update = !query.locks.is_empty();
    let SetExpr::Select(select) = *query.body else {
        return Err(unsupported("UNION, VALUES or a parenthesized query"));
    };
    let select = *select;
    if select.distinct.is_some()
        || select.having.is_some()
        || !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty())
    {
        return Err(unsupported("DISTINCT / GROUP BY / HAVING"));
    }
    if select.from.is_empty() {
        if query.order_by.is_some() || select.selection.is_some() || for_update {
            return Err(unsupported("WHERE, ORDER BY or FOR UPDATE without FROM"));
        }
        return select
            .projection
            .iter()
            .map(func_item)
            .collect::<Result<_, _>>()
            .map(Statement::Functions);
    }
    let [table] = &select.from[..] else {
        return Err(unsupported("SELECT from several tables"));
    };
    if let Some(view) = system_view(table) {
        if select.selection.is_some() || query.order_by.is_some() || query.limit.is_some() {
            return Err(unsupported(format!(
                "WHERE, ORDER BY or LIMIT on {}",
                view.name()
            )));
        }
        return view_columns(view, &select.projection)
            .map(|columns| Statement::View { view, columns });
    }
    check_table(table)?;
    let projection = projection(&select.projection)?;
    let names = select
        .projection
        .iter()
        .flat_map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => vec![Some(ident_name(alias))],
            SelectItem::UnnamedExpr(_) => vec![None],
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => vec![None, None],
        })
        .collect();
    let filter = match &select.selection {
        None => Filter::All,
        Some(e) => filter(e)?,
    };
    let descending = match &query.order_by {
        None => false,
        Some(ob) => match &ob.exprs[..] {
            [o] if column_of(&o.expr) == Some(Column::Key) => o.asc == Some(false),
            _ => return Err(unsupported("ORDER BY anything but key")),
        },
    };
    let limit = query.limit.as_ref().map(expr).transpose()?;
    if for_update && !matches!(filter, Filter::Key(_)) {
        return Err(unsupported("FOR UPDATE except on a SELECT by key"));
    }
    Ok(Statement::Select(Select {
        projection,
        names,
        filter,
        descending,
        limit,
        for_update,
    }))
}

fn projection(items: &[SelectItem]) -> Result<Projection, PgError> {
    let mut cols = Vec::new();
    for item in items {
        let e = match item {
            SelectItem::Wildcard(_) => {
                cols.extend([Column::Key, Column::Value]);
                continue;
            }
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            SelectItem::QualifiedWildcard(..) => {
                cols.extend([Column::Key, Column::Value]);
                continue;
            }
        };
        if let ast::Expr::Function(f) = e {
            if object_name(&f.name) == "count" && items.len() == 1 {
                return Ok(Projection::Count);
            }
        }
        match column_of(e) {
            Some(c) => cols.push(c),
            None => return Err(unsupported(format!("selecting {e}"))),
        }
    }
    Ok(Projection::Columns(cols))
}

fn filter(e: &ast::Expr) -> Result<Filter, PgError> {
    use ast::BinaryOperator as B;
    match e {
        ast::Expr::BinaryOp {
            left,
            op: B::Eq,
            right,
        } if column_of(left) == Some(Column::Key) => Ok(Filter::Key(expr(right)?)),
        ast::Expr::BinaryOp {
            left,
            op: B::Eq,
            right,
        } if column_of(right) == Some(Column::Key) => Ok(Filter::Key(expr(left)?)),
        ast::Expr::Like {
            negated: false,
            any: false,
            expr: col,
            pattern,
            escape_char: None,
        } if column_of(col) == Some(Column::Key) => Ok(Filter::Like(expr(pattern)?)),
        ast::Expr::Between {
            expr: col,
            negated: false,
            low,
            high,
        } if column_of(col) == Some(Column::Key) => Ok(Filter::Range {
            lo: Some((expr(low)?, true)),
            hi: Some((expr(high)?, true)),
        }),
        ast::Expr::BinaryOp {
            left,
            op: B::And,
            right,
        } => {
            let (a, b) = (bound(left)?, bound(right)?);
            let mut lo = None;
            let mut hi = None;
            for (is_lo, v) in [a, b] {
                let slot = if is_lo { &mut lo } else { &mut hi };
                if slot.is_some() {
                    return Err(unsupported("two lower or two upper bounds on key"));
                }
                *slot = Some(v);
            }
            Ok(Filter::Range { lo, hi })
        }
        ast::Expr::Nested(inner) => filter(inner),
        other => match bound(other) {
            Ok((true, v)) => Ok(Filter::Range {
                lo: Some(v),
                hi: None,
            }),
            Ok((false, v)) => Ok(Filter::Range {
                lo: None,
                hi: Some(v),
            }),
            Err(_) => Err(unsupported(format!(
                "WHERE {other} (use key = …, key >= … AND key < …, or key LIKE 'prefix%')"
            ))),
        },
    }
}

/// `key >= x` and friends: (is a lower bound, (value, inclusive)).
fn bound(e: &ast::Expr) -> Result<(bool, (Expr, bool)), PgError> {
    use ast::BinaryOperator as B;
    if let ast::Expr::BinaryOp { left, op, right } = e {
        let (flip, other) = if column_of(left) == Some(Column::Key) {
            (false, right)
        } else if column_of(right) == Some(Column::Key) {
            (true, left)
        } else {
            return Err(unsupported(format!("WHERE {e}")));
        };
        let (lower, inclusive) = match op {
            B::Gt => (true, false),
            B::GtEq => (true, true),
            B::Lt => (false, false),
            B::LtEq => (false, true),
            _ => return Err(unsupported(format!("WHERE {e}"))),
        };
        return Ok((lower != flip, (expr(other)?, inclusive)));
    }
    Err(unsupported(format!("WHERE {e}")))
}

fn func_item(item: &SelectItem) -> Result<FuncItem, PgError> {
    let (e, alias) = match item {
        SelectItem::UnnamedExpr(e) => (e, None),
        SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
        _ => return Err(unsupported("* without FROM")),
    };
    let (name, func) = match e {
        ast::Expr::Function(f) => {
            let name = object_name(&f.name);
            let args: Vec<&ast::Expr> = match &f.args {
                FunctionArguments::None => vec![],
                FunctionArguments::List(l) => l
                    .args
                    .iter()
                    .map(|a| match a {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e),
                        _ => Err(unsupported(format!("the arguments of {name}()"))),
                    })
                    .collect::<Result<_, _>>()?,
                FunctionArguments::Subquery(_) => return Err(unsupported("subqueries")),
            };
            let no_args = |func: Func| {
                if args.is_empty() {
                    Ok(func)
                } else {
                    Err(PgError::new(
                        code::UNDEFINED_FUNCTION,
                        format!("function {name} takes no arguments"),
                    ))
                }
            };
            let func =
                match name.as_str() {
                    "pg_current_wal_lsn" => no_args(Func::CurrentWalLsn)?,
                    "pg_current_wal_insert_lsn" => no_args(Func::CurrentWalInsertLsn)?,
                    "pg_current_wal_flush_lsn" => no_args(Func::CurrentWalFlushLsn)?,
                    "pg_switch_wal" => no_args(Func::SwitchWal)?,
                    "pg_is_in_recovery" => no_args(Func::IsInRecovery)?,
                    "pg_last_wal_receive_lsn" => no_args(Func::LastWalReceiveLsn)?,
                    "pg_last_wal_replay_lsn" => no_args(Func::LastWalReplayLsn)?,
                    "version" => no_args(Func::Version)?,
                    "current_user" | "session_user" | "current_role" | "user" => {
                        no_args(Func::CurrentUser)?
                    }
                    "walship_store_checksum" => no_args(Func::StoreChecksum)?,
                    "pg_promote" => Func::Promote,
                    "walship_fence" => match &args[..] {
                        [a] => Func::Fence(expr(a)?),
                        _ => {
                            return Err(PgError::new(
                                code::UNDEFINED_FUNCTION,
                                "walship_fence takes one argument: the new epoch",
                            ))
                        }
                    },
                    "current_setting" => match &args[..] {
                        [a] => Func::CurrentSetting {
                            name: expr(a)?,
                            missing_ok: None,
                        },
                        [a, b] => Func::CurrentSetting {
                            name: expr(a)?,
                            missing_ok: Some(expr(b)?),
                        },
                        _ => return Err(PgError::new(
                            code::UNDEFINED_FUNCTION,
                            "current_setting takes a setting's name and, optionally, missing_ok",
                        )),
                    },
                    _ => {
                        return Err(PgError::new(
                            code::UNDEFINED_FUNCTION,
                            format!("function {name}() does not exist"),
                        )
                        .with_hint(SUPPORTED))
                    }
                };
            (name, func)
        }
        other => ("?column?".to_string(), Func::Literal(expr(other)?)),
    };
    Ok(FuncItem {
        name: alias.unwrap_or(name),
        func,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Statement {
        let mut v = parse(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    fn lit(s: &str) -> Expr {
        Expr::Lit(s.into())
    }

    #[test]
    fn the_supported_subset_parses() {
        assert_eq!(
            one("INSERT INTO kv VALUES ('a', 'b'), ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
            Statement::Insert { rows: vec![(lit("a"), lit("b")), (Expr::Param(0), Expr::Param(1))], on_conflict: OnConflict::DoUpdate }
        );
        assert_eq!(
            one("insert into kv (value, key) values ('v', 'k') on conflict do nothing"),
            Statement::Insert {
                rows: vec![(lit("k"), lit("v"))],
                on_conflict: OnConflict::DoNothing
            }
        );
        assert_eq!(
            one("UPDATE kv SET value = 'x' WHERE key = 'k'"),
            Statement::Update {
                key: lit("k"),
                value: lit("x")
            }
        );
        assert_eq!(
            one("DELETE FROM kv WHERE key = $1"),
            Statement::Delete {
                key: Expr::Param(0)
            }
        );
        assert_eq!(
            one("SELECT value FROM kv WHERE key = :k::text"
                .replace(":k", "'7'")
                .as_str()),
            Statement::Select(Select {
                projection: Projection::Columns(vec![Column::Value]),
                names: vec![None],
                filter: Filter::Key(lit("7")),
                descending: false,
                limit: None,
                for_update: false
            })
        );
        assert_eq!(
            one("SELECT key, value FROM kv WHERE key >= 'a' AND key < 'b' ORDER BY key DESC LIMIT 10"),
            Statement::Select(Select {
                projection: Projection::Columns(vec![Column::Key, Column::Value]),
                names: vec![None, None],
                filter: Filter::Range { lo: Some((lit("a"), true)), hi: Some((lit("b"), false)) },
                descending: true,
                limit: Some(lit("10")),
                for_update: false,
            })
        );
        assert!(matches!(
            one("SELECT count(*) AS n FROM kv WHERE key LIKE 'p%'"),
            Statement::Select(Select {
                projection: Projection::Count,
                filter: Filter::Like(_),
                names,
                ..
            }) if names == [Some("n".to_string())]
        ));
        let e = parse("SELECT value FROM \"KV\"").unwrap_err();
        assert_eq!(e.code, code::UNDEFINED_TABLE, "{e:?}");
        assert_eq!(one("BEGIN"), Statement::Begin { read_only: false });
        assert_eq!(
            one("START TRANSACTION ISOLATION LEVEL READ COMMITTED, READ ONLY"),
            Statement::Begin { read_only: true }
        );
        let e = parse("BEGIN ISOLATION LEVEL SERIALIZABLE").unwrap_err();
        assert_eq!(e.code, code::FEATURE_NOT_SUPPORTED, "{e:?}");
        assert_eq!(one("abort"), Statement::Rollback { chain: false });
        assert_eq!(
            one("ABORT WORK AND CHAIN"),
            Statement::Rollback { chain: true }
        );
        assert_eq!(one("END"), Statement::Commit { chain: false });
        assert_eq!(one(" checkpoint; "), Statement::Checkpoint);
        // Commands of walship's own mix with the rest in one query string;
        // a semicolon in a quoted value does not split it.
        let mixed = parse("INSERT INTO kv VALUES ('a;b', 'x'); CHECKPOINT; SELECT count(*) FROM kv; WAIT FOR LSN '0/10' WITH (TIMEOUT '1s');")
            .unwrap();
        assert_eq!(mixed.len(), 4, "{mixed:?}");
        assert!(matches!(&mixed[0], Statement::Insert { .. }), "{mixed:?}");
        assert_eq!(mixed[1], Statement::Checkpoint);
        assert!(
            matches!(&mixed[3], Statement::WaitForLsn { .. }),
            "{mixed:?}"
        );
        assert_eq!(
            parse("-- before a switch\nCHECKPOINT; /* then */ SELECT 1").unwrap()[0],
            Statement::Checkpoint
        );
        let e = parse("CHECKPOINT; VACUUM kv").unwrap_err();
        assert_eq!(e.code, code::FEATURE_NOT_SUPPORTED, "{e:?}");
        assert_eq!(one("commit"), Statement::Commit { chain: false });
        assert_eq!(one("COMMIT AND CHAIN"), Statement::Commit { chain: true });
        assert_eq!(
            one("SET synchronous_commit = off"),
            Statement::Set {
                name: "synchronous_commit".into(),
                value: Some("off".into()),
                local: false,
            }
        );
        assert_eq!(
            one("SET synchronous_commit TO 'local'"),
            Statement::Set {
                name: "synchronous_commit".into(),
                value: Some("local".into()),
                local: false,
            }
        );
        assert_eq!(
            one("SHOW synchronous_commit"),
            Statement::Show {
                name: "synchronous_commit".into()
            }
        );
        assert!(
            matches!(one("SELECT pg_current_wal_lsn()"), Statement::Functions(f) if f[0].func == Func::CurrentWalLsn)
        );
        assert!(matches!(one("SELECT 1"), Statement::Functions(_)));
        assert_eq!(
            parse("BEGIN; INSERT INTO kv VALUES ('a','b'); COMMIT")
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn everything_else_is_refused_with_the_right_sqlstate() {
        let code = |sql: &str| parse(sql).unwrap_err().code;
        assert_eq!(code("SELECT * FROM users"), "42P01");
        assert_eq!(code("SELECT nope FROM kv"), "0A000");
        assert_eq!(code("CREATE TABLE t (a int)"), "0A000");
        assert_eq!(code("UPDATE kv SET value = 'x'"), "0A000");
        assert_eq!(code("SELEC 1"), "42601");
        // PostgreSQL commands the SQL parser does not know.
        for sql in [
            "VACUUM",
            "vacuum analyze kv",
            "COPY kv FROM STDIN",
            "LISTEN x",
        ] {
            let e = parse(sql).unwrap_err();
            assert_eq!(e.code, "0A000", "{sql}: {}", e.message);
            assert!(e.message.ends_with("is not supported"), "{}", e.message);
        }
        assert_eq!(
            code("SELECT * FROM kv k JOIN kv j ON k.key = j.key"),
            "0A000"
        );
        assert_eq!(code("SELECT nosuch()"), "42883");
        assert_eq!(
            code("INSERT INTO kv (key, nope) VALUES ('a', 'b')"),
            "42703"
        );
        let e = parse("DROP TABLE kv").unwrap_err();
        assert!(e
            .hint
            .unwrap()
            .contains("INSERT, UPDATE, DELETE and SELECT"));
    }

    #[test]
    fn roles_are_created_altered_and_dropped_as_in_postgresql() {
        let role = |sql: &str| match one(sql) {
            Statement::Role(r) => r,
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(
            role("CREATE ROLE App WITH LOGIN REPLICATION PASSWORD 'pw'"),
            RoleStatement::Create {
                name: "app".into(),
                options: RoleOptions {
                    superuser: None,
                    replication: Some(true),
                    login: Some(true),
                    password: Some(Some("pw".into())),
                },
            }
        );
        // psql's \password, and the USER synonyms.
        assert_eq!(
            role("ALTER USER \"Bob\" PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b'"),
            RoleStatement::Alter {
                name: Some("Bob".into()),
                options: RoleOptions {
                    password: Some(Some("SCRAM-SHA-256$4096:c2FsdA==$a:b".into())),
                    ..Default::default()
                },
            }
        );
        assert_eq!(
            role("create user carol superuser"),
            role("CREATE ROLE carol SUPERUSER LOGIN")
        );
        assert_eq!(
            role("CREATE USER carol NOLOGIN"),
            role("CREATE ROLE carol NOLOGIN")
        );
        assert_eq!(
            role("ALTER ROLE carol NOSUPERUSER NOLOGIN PASSWORD NULL"),
            RoleStatement::Alter {
                name: Some("carol".into()),
                options: RoleOptions {
                    superuser: Some(false),
                    replication: None,
                    login: Some(false),
                    password: Some(None),
                },
            }
        );
        assert_eq!(
            role("DROP USER IF EXISTS a, B"),
            RoleStatement::Drop {
                names: vec!["a".into(), "b".into()],
                if_exists: true,
            }
        );
        let refused = |sql: &str| parse(sql).unwrap_err();
        for sql in [
            "CREATE ROLE a CREATEDB",
            "CREATE ROLE a CONNECTION LIMIT 3",
            "CREATE ROLE a IN ROLE b",
            "ALTER ROLE a RENAME TO b",
            "ALTER ROLE a SET work_mem = 1",
            "CREATE USER MAPPING FOR a SERVER s",
        ] {
            assert_eq!(refused(sql).code, "0A000", "{sql}");
        }
        assert_eq!(refused("ALTER ROLE a PASSWORD $1").code, "42601");
        assert_eq!(refused("ALTER USER a").code, "42601");
        assert_eq!(refused("ALTER ROLE a SUPERUSER NOSUPERUSER").code, "42601");
        assert_eq!(refused("CREATE ROLE a LOGIN NOLOGIN").code, "42601");
        assert_eq!(refused("DROP ROLE a CASCADE").code, "42601");
        // A password's quotes and escapes are the client's: nothing in it
        // is read as an option, even where a statement is rewritten.
        for (sql, password) in [
            (
                "ALTER USER app PASSWORD 'x'' SUPERUSER --'",
                "x' SUPERUSER --",
            ),
            (
                "ALTER USER app PASSWORD E'x\\' SUPERUSER --'",
                "x' SUPERUSER --",
            ),
            ("-- rotate\nCREATE USER app PASSWORD 'a;b'", "a;b"),
            ("ALTER ROLE app ENCRYPTED PASSWORD 'e'", "e"),
            ("CREATE USER app INHERIT ENCRYPTED PASSWORD $$d'$$", "d'"),
            ("CREATE ROLE encrypted PASSWORD 'f'", "f"),
            ("ALTER USER encrypted ENCRYPTED PASSWORD 'g'", "g"),
            ("ALTER ROLE app/**/ENCRYPTED/**/PASSWORD 'h'", "h"),
        ] {
            let options = match role(sql) {
                RoleStatement::Alter { options, .. } | RoleStatement::Create { options, .. } => {
                    options
                }
                other => panic!("{other:?}"),
            };
            assert_eq!(options.superuser, None, "{sql}");
            assert_eq!(options.password, Some(Some(password.into())), "{sql}");
        }
        assert_eq!(
            role("ALTER ROLE CURRENT_USER PASSWORD 'pw'"),
            RoleStatement::Alter {
                name: None,
                options: password("pw"),
            }
        );
        assert_eq!(
            role("ALTER ROLE \"current_user\" PASSWORD 'pw'"),
            RoleStatement::Alter {
                name: Some("current_user".into()),
                options: password("pw"),
            }
        );
        assert!(matches!(
            one("SELECT CURRENT_USER"),
            Statement::Functions(items) if items[0].func == Func::CurrentUser
        ));
    }

    fn password(text: &str) -> RoleOptions {
        RoleOptions {
            password: Some(Some(text.into())),
            ..Default::default()
        }
    }

    #[test]
    fn statements_split_around_our_own_commands_keep_their_text() {
        let statements = parse("INSERT INTO kv VALUES ('a;''b', E'c\\'d'); CHECKPOINT").unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(
            statements[0],
            Statement::Insert {
                rows: vec![(lit("a;'b"), lit("c'd"))],
                on_conflict: OnConflict::Error,
            }
        );
        assert_eq!(statements[1], Statement::Checkpoint);
        assert_eq!(
            parse("/* é */ CHECKPOINT -- now\n;\n  CHECKPOINT").unwrap(),
            vec![Statement::Checkpoint, Statement::Checkpoint]
        );
    }

    #[test]
    fn psql_catalog_queries_are_told_there_are_no_catalogs() {
        for sql in [
            "SELECT c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
            "SELECT datname FROM pg_database",
            "SELECT * FROM information_schema.tables",
        ] {
            let e = parse(sql).unwrap_err();
            assert_eq!(e.code, "0A000", "{sql}");
            assert!(e.message.contains("no system catalog"), "{sql}: {}", e.message);
        }
        assert_eq!(parse("SELECT * FROM other").unwrap_err().code, "42P01");
        assert_eq!(parse("SELECT bogus").unwrap_err().code, "42703");
    }

    /// Where PostgreSQL sees one statement, so must walship: a query string
    /// quoted with dollar quotes, nested comments or identifiers holding
    /// `$` must not become several statements (a role change among them).
    #[test]
    fn quotes_and_comments_hide_semicolons_as_postgresql_lexes_them() {
        let select = |sql: &str| {
            let statements = parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert!(
                matches!(statements[..], [Statement::Select(_)]),
                "{sql}: {statements:?}"
            );
        };
        // A tagged dollar quote whose text ends in `$`.
        select("SELECT key FROM kv WHERE key >= $q$x$$q$ AND key < $q$ AND key < 'z'; ALTER ROLE CURRENT_USER PASSWORD 'pwned'; --$q$");
        select("SELECT value FROM kv WHERE key = $t$a$$t$");
        select("SELECT value FROM kv WHERE key = $$a;b$$");
        select(
            "SELECT value FROM kv /* a /* nested */ ; ALTER ROLE x SUPERUSER; */ WHERE key = 'k'",
        );
        select("SELECT value FROM kv WHERE key = E'\\\\'';ALTER ROLE x SUPERUSER;'");
        select("SELECT value FROM kv WHERE key = 'a'';ALTER ROLE x SUPERUSER;'");
        // A backslash escapes nothing in a standard string
        // (standard_conforming_strings is on): PostgreSQL sees two
        // statements here, and so does walship.
        assert_eq!(parse("SELECT '\\'; CHECKPOINT").unwrap().len(), 2);
    }
}
