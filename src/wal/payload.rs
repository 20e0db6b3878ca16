//! walship's own records: the main data of records under resource manager
//! [`RM_WALSHIP_ID`](super::format::RM_WALSHIP_ID), and their kind in the
//! high nibble of `xl_info`.
//!
//! ```text
//! COMMIT     (info 0x00)  u32 n, then n times: u8 op (1 put, 2 delete),
//!                         u32 key length, key, [u32 value length, value]
//! CHECKPOINT (info 0x10)  u64 redo LSN
//! MESSAGE    (info 0x20)  opaque bytes (tests, benchmarks, keep-alive)
//! ROLES      (info 0x30)  the whole users file after a CREATE, ALTER or
//!                         DROP ROLE, as text (see `node::users`)
//! ```
//! All integers little-endian. A transaction's writes travel in its one
//! COMMIT record, so they are durable and visible together. A ROLES record
//! carries every role, not the change, so replaying it twice, or replaying
//! only the last of several, leaves the same roles.

use std::fmt;

use super::format::LeReader;
use super::lsn::Lsn;

const INFO_COMMIT: u8 = 0x00;
const INFO_CHECKPOINT: u8 = 0x10;
const INFO_MESSAGE: u8 = 0x20;
const INFO_ROLES: u8 = 0x30;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

/// One change to the key-value store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Put { key: &'a [u8], value: &'a [u8] },
    Delete { key: &'a [u8] },
}

/// A decoded walship record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Commit(Vec<Op<'a>>),
    Checkpoint {
        redo: Lsn,
    },
    Message(&'a [u8]),
    /// The users file's text.
    Roles(&'a [u8]),
}

/// Why a walship record's main data does not decode.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed walship record (kind {info:#04x}): {why}")]
pub struct PayloadError {
    pub info: u8,
    pub why: &'static str,
}

impl<'a> Payload<'a> {
    /// Appends the main data to `out`; returns the `xl_info` byte.
    pub fn encode(&self, out: &mut Vec<u8>) -> u8 {
        match self {
            Payload::Commit(ops) => {
                out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
                for op in ops {
                    match op {
                        Op::Put { key, value } => {
                            out.push(OP_PUT);
                            put_bytes(out, key);
                            put_bytes(out, value);
                        }
                        Op::Delete { key } => {
                            out.push(OP_DELETE);
                            put_bytes(out, key);
                        }
                    }
                }
                INFO_COMMIT
            }
            Payload::Checkpoint { redo } => {
                out.extend_from_slice(&redo.0.to_le_bytes());
                INFO_CHECKPOINT
            }
            Payload::Message(bytes) => {
                out.extend_from_slice(bytes);
                INFO_MESSAGE
            }
            Payload::Roles(text) => {
                out.extend_from_slice(text);
                INFO_ROLES
            }
        }
    }

    /// Decodes the main data of a record with this `xl_info`.
    pub fn decode(info: u8, data: &'a [u8]) -> Result<Payload<'a>, PayloadError> {
        let info = info & 0xF0;
        let err = |why| PayloadError { info, why };
        let mut r = LeReader::new(data);
        let payload = match info {
            INFO_COMMIT => {
                let n = r.u32().ok_or(err("truncated operation count"))?;
                let mut ops = Vec::with_capacity((n as usize).min(data.len() / 6));
                for _ in 0..n {
                    let op = match r.u8().ok_or(err("truncated operation"))? {
                        OP_PUT => Op::Put {
                            key: r.prefixed().ok_or(err("truncated key"))?,
                            value: r.prefixed().ok_or(err("truncated value"))?,
                        },
                        OP_DELETE => Op::Delete {
                            key: r.prefixed().ok_or(err("truncated key"))?,
                        },
                        _ => return Err(err("unknown operation")),
                    };
                    ops.push(op);
                }
                Payload::Commit(ops)
            }
            INFO_CHECKPOINT => Payload::Checkpoint {
                redo: Lsn(r.u64().ok_or(err("truncated redo LSN"))?),
            },
            INFO_MESSAGE => Payload::Message(r.rest()),
            INFO_ROLES => Payload::Roles(r.rest()),
            _ => return Err(err("unknown kind")),
        };
        if !r.is_done() {
            return Err(err("trailing bytes"));
        }
        Ok(payload)
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Shows at most 32 bytes of a key or value, escaped.
struct Short<'a>(&'a [u8]);

impl fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(32)];
        write!(f, "'{}", shown.escape_ascii())?;
        if shown.len() < self.0.len() {
            write!(f, "…")?;
        }
        write!(f, "'")
    }
}

impl fmt::Display for Payload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Commit(ops) => {
                write!(
                    f,
                    "COMMIT {} op{}",
                    ops.len(),
                    if ops.len() == 1 { "" } else { "s" }
                )?;
                for (i, op) in ops.iter().enumerate().take(4) {
                    f.write_str(if i == 0 { ": " } else { ", " })?;
                    match op {
                        Op::Put { key, value } => write!(f, "put {}={}", Short(key), Short(value))?,
                        Op::Delete { key } => write!(f, "delete {}", Short(key))?,
                    }
                }
                if ops.len() > 4 {
                    write!(f, ", …")?;
                }
                Ok(())
            }
            Payload::Checkpoint { redo } => write!(f, "CHECKPOINT redo {redo}"),
            Payload::Message(b) => write!(f, "MESSAGE {} bytes", b.len()),
            Payload::Roles(text) => {
                let roles = text
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
                    .count();
                write!(f, "ROLES {roles} role{}", if roles == 1 { "" } else { "s" })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let cases = [
            Payload::Commit(vec![
                Op::Put {
                    key: b"k1",
                    value: b"v1",
                },
                Op::Delete { key: b"k2" },
            ]),
            Payload::Commit(vec![]),
            Payload::Checkpoint {
                redo: Lsn(0x1000028),
            },
            Payload::Message(b"hello"),
            Payload::Roles(b"# header\nalice:superuser:\n"),
        ];
        for p in cases {
            let mut buf = Vec::new();
            let info = p.encode(&mut buf);
            assert_eq!(Payload::decode(info, &buf).unwrap(), p);
        }
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let mut buf = Vec::new();
        let info = Payload::Commit(vec![Op::Put {
            key: b"key",
            value: b"value",
        }])
        .encode(&mut buf);
        for cut in 0..buf.len() {
            assert!(Payload::decode(info, &buf[..cut]).is_err(), "cut at {cut}");
        }
        buf.push(0);
        assert!(Payload::decode(info, &buf).is_err());
        assert!(Payload::decode(0x70, b"").is_err());
        assert_eq!(
            Payload::Commit(vec![Op::Put {
                key: b"a\n",
                value: b"b"
            }])
            .to_string(),
            "COMMIT 1 op: put 'a\\n'='b'"
        );
        assert_eq!(
            Payload::Roles(b"# name:attributes:verifier\nalice:superuser:\nbob::\n").to_string(),
            "ROLES 2 roles"
        );
    }
}
