//! The replication protocol's commands (PostgreSQL's `repl_gram.y`), sent
//! as simple queries on a `replication=true` connection. Not SQL, so not
//! for sqlparser: a small tokenizer and a parser for the physical subset.

use crate::sqlstate::{code, PgError};
use crate::wal::{Lsn, TimelineId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationCommand {
    IdentifySystem,
    Show(String),
    TimelineHistory(TimelineId),
    CreateSlot {
        name: String,
        reserve_wal: bool,
        temporary: bool,
    },
    ReadSlot(String),
    DropSlot(String),
    StartReplication {
        slot: Option<String>,
        start: Lsn,
        timeline: Option<TimelineId>,
    },
    /// A consistent copy of the node (its options, such as LABEL or
    /// PROGRESS, are accepted and ignored: walship always checkpoints at
    /// once and always reports sizes).
    BaseBackup,
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    /// An unquoted word, lower-cased.
    Word(String),
    /// A "quoted" identifier, as written.
    Quoted(String),
    Open,
    Close,
    Comma,
}

fn syntax(msg: impl Into<String>) -> PgError {
    PgError::new(code::SYNTAX_ERROR, msg)
}

fn tokenize(s: &str) -> Result<Vec<Token>, PgError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() || c == ';' => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Token::Open);
            }
            ')' => {
                chars.next();
                out.push(Token::Close);
            }
            ',' => {
                chars.next();
                out.push(Token::Comma);
            }
            '"' => {
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err(syntax("unterminated quoted identifier")),
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            word.push('"');
                        }
                        Some('"') => break,
                        Some(c) => word.push(c),
                    }
                }
                out.push(Token::Quoted(word));
            }
            '\'' => {
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err(syntax("unterminated quoted string")),
                        Some('\'') => break,
                        Some(c) => word.push(c),
                    }
                }
                out.push(Token::Quoted(word));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "();,\"".contains(c) {
                        break;
                    }
                    word.push(c.to_ascii_lowercase());
                    chars.next();
                }
                out.push(Token::Word(word));
            }
        }
    }
    Ok(out)
}

struct Tokens {
    tokens: std::vec::IntoIter<Token>,
    peeked: Option<Token>,
}

impl Tokens {
    fn next(&mut self) -> Option<Token> {
        self.peeked.take().or_else(|| self.tokens.next())
    }
    fn peek(&mut self) -> Option<&Token> {
        if self.peeked.is_none() {
            self.peeked = self.tokens.next();
        }
        self.peeked.as_ref()
    }
    fn eat_word(&mut self, w: &str) -> bool {
        if matches!(self.peek(), Some(Token::Word(x)) if x == w) {
            self.next();
            true
        } else {
            false
        }
    }
    fn ident(&mut self, what: &str) -> Result<String, PgError> {
        match self.next() {
            Some(Token::Word(w)) | Some(Token::Quoted(w)) => Ok(w),
            _ => Err(syntax(format!("expected {what}"))),
        }
    }
    fn word(&mut self, what: &str) -> Result<String, PgError> {
        match self.next() {
            Some(Token::Word(w)) => Ok(w),
            _ => Err(syntax(format!("expected {what}"))),
        }
    }
    fn end(&mut self) -> Result<(), PgError> {
        match self.next() {
            None => Ok(()),
            Some(t) => Err(syntax(format!(
                "unexpected {t:?} at the end of the command"
            ))),
        }
    }
}

fn lsn(word: &str) -> Result<Lsn, PgError> {
    word.to_ascii_uppercase()
        .parse()
        .map_err(|_| syntax(format!("invalid LSN \"{word}\": expected X/X")))
}

fn timeline(word: &str) -> Result<TimelineId, PgError> {
    word.parse()
        .map_err(|e| PgError::new(code::INVALID_PARAMETER_VALUE, format!("{e}")))
}

/// Parses one replication command.
pub fn parse(text: &str) -> Result<ReplicationCommand, PgError> {
    let mut t = Tokens {
        tokens: tokenize(text)?.into_iter(),
        peeked: None,
    };
    let verb = t.word("a replication command")?;
    let cmd = match verb.as_str() {
        "identify_system" => ReplicationCommand::IdentifySystem,
        "show" => {
            let mut name = t.ident("a parameter name")?;
            name.make_ascii_lowercase();
            ReplicationCommand::Show(name)
        }
        "timeline_history" => ReplicationCommand::TimelineHistory(timeline(&t.word("a timeline")?)?),
        "create_replication_slot" => {
            let name = t.ident("a slot name")?;
            let temporary = t.eat_word("temporary");
            match t.word("PHYSICAL or LOGICAL")?.as_str() {
                "physical" => {}
                "logical" => {
                    return Err(PgError::new(code::FEATURE_NOT_SUPPORTED, "logical replication slots are not supported")
                        .with_hint("walship ships WAL physically; create a PHYSICAL slot"))
                }
                other => return Err(syntax(format!("expected PHYSICAL, got \"{other}\""))),
            }
            let mut reserve_wal = false;
            if t.eat_word("reserve_wal") {
                reserve_wal = true;
            } else if matches!(t.peek(), Some(Token::Open)) {
                t.next();
                loop {
                    match t.next() {
                        Some(Token::Close) => break,
                        Some(Token::Comma) => {}
                        Some(Token::Word(w)) if w == "reserve_wal" => {
                            reserve_wal = match t.peek() {
                                Some(Token::Word(v)) if matches!(v.as_str(), "true" | "on" | "1") => {
                                    t.next();
                                    true
                                }
                                Some(Token::Word(v)) if matches!(v.as_str(), "false" | "off" | "0") => {
                                    t.next();
                                    false
                                }
                                _ => true,
                            }
                        }
                        Some(Token::Word(w)) => {
                            return Err(syntax(format!("unrecognized option \"{w}\" of CREATE_REPLICATION_SLOT")))
                        }
                        _ => return Err(syntax("unterminated option list")),
                    }
                }
            }
            ReplicationCommand::CreateSlot { name, reserve_wal, temporary }
        }
        "read_replication_slot" => ReplicationCommand::ReadSlot(t.ident("a slot name")?),
        "drop_replication_slot" => {
            let name = t.ident("a slot name")?;
            t.eat_word("wait");
            ReplicationCommand::DropSlot(name)
        }
        "start_replication" => {
            let slot = if t.eat_word("slot") { Some(t.ident("a slot name")?) } else { None };
            if t.eat_word("logical") {
                return Err(PgError::new(code::FEATURE_NOT_SUPPORTED, "logical replication is not supported"));
            }
            t.eat_word("physical");
            let start = lsn(&t.word("a start LSN")?)?;
            let timeline = if t.eat_word("timeline") { Some(timeline(&t.word("a timeline")?)?) } else { None };
            ReplicationCommand::StartReplication { slot, start, timeline }
        }
        "base_backup" => {
            if matches!(t.peek(), Some(Token::Open)) {
                while !matches!(t.next(), Some(Token::Close) | None) {}
            }
            ReplicationCommand::BaseBackup
        }
        other => {
            return Err(PgError::new(
                code::FEATURE_NOT_SUPPORTED,
                format!("replication command \"{}\" is not supported", other.to_ascii_uppercase()),
            )
            .with_hint("walship's walsender supports IDENTIFY_SYSTEM, SHOW, TIMELINE_HISTORY, CREATE/READ/DROP_REPLICATION_SLOT, START_REPLICATION and BASE_BACKUP"))
        }
    };
    t.end()?;
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_pg_receivewal_and_walreceiver_send() {
        assert_eq!(
            parse("IDENTIFY_SYSTEM").unwrap(),
            ReplicationCommand::IdentifySystem
        );
        assert_eq!(
            parse("SHOW wal_segment_size").unwrap(),
            ReplicationCommand::Show("wal_segment_size".into())
        );
        assert_eq!(
            parse("CREATE_REPLICATION_SLOT \"s1\" PHYSICAL (RESERVE_WAL)").unwrap(),
            ReplicationCommand::CreateSlot {
                name: "s1".into(),
                reserve_wal: true,
                temporary: false
            }
        );
        assert_eq!(
            parse("CREATE_REPLICATION_SLOT s2 PHYSICAL RESERVE_WAL;").unwrap(),
            ReplicationCommand::CreateSlot {
                name: "s2".into(),
                reserve_wal: true,
                temporary: false
            }
        );
        assert_eq!(
            parse("READ_REPLICATION_SLOT s1").unwrap(),
            ReplicationCommand::ReadSlot("s1".into())
        );
        assert_eq!(
            parse("DROP_REPLICATION_SLOT \"s1\" WAIT").unwrap(),
            ReplicationCommand::DropSlot("s1".into())
        );
        assert_eq!(
            parse("START_REPLICATION SLOT \"s1\" 0/1000000 TIMELINE 1").unwrap(),
            ReplicationCommand::StartReplication {
                slot: Some("s1".into()),
                start: Lsn(0x1000000),
                timeline: Some(TimelineId::FIRST)
            }
        );
        assert_eq!(
            parse("START_REPLICATION PHYSICAL 1/ab").unwrap(),
            ReplicationCommand::StartReplication {
                slot: None,
                start: Lsn(0x1_0000_00AB),
                timeline: None
            }
        );
        assert_eq!(
            parse("TIMELINE_HISTORY 2").unwrap(),
            ReplicationCommand::TimelineHistory(TimelineId::new(2).unwrap())
        );
        assert_eq!(
            parse("BASE_BACKUP (LABEL 'x', PROGRESS, CHECKPOINT 'fast')").unwrap(),
            ReplicationCommand::BaseBackup
        );
    }

    #[test]
    fn rejects_what_it_does_not_support() {
        assert_eq!(parse("UPLOAD_MANIFEST").unwrap_err().code, "0A000");
        assert_eq!(parse("START_REPLICATION 0/zz").unwrap_err().code, "42601");
        assert_eq!(
            parse("START_REPLICATION SLOT s LOGICAL 0/0")
                .unwrap_err()
                .code,
            "0A000"
        );
        assert_eq!(parse("TIMELINE_HISTORY 0").unwrap_err().code, "22023");
        assert!(parse("IDENTIFY_SYSTEM extra").is_err());
        assert!(parse("").is_err());
    }
}
