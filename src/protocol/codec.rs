//! Framing and encoding of protocol messages (PostgreSQL's
//! "Message Formats" chapter): reading the startup packet with a size
//! limit (the messages after it: [`super::reader`]), and building backend
//! messages.
//!
//! Nothing here trusts the peer: every length is checked before it is used,
//! and a malformed message is an error naming what was wrong, never a panic.

use std::io::{self, Read, Write};

use thiserror::Error;

use crate::sqlstate::PgError;

/// Protocol 3.0.
pub const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

#[derive(Debug, Error)]
pub enum ProtoError {
    #[error("connection closed by the client")]
    Closed,
    #[error("{}", crate::durable::io_cause(.0))]
    Io(#[from] io::Error),
    #[error("invalid message from the client: {0}")]
    Malformed(String),
    #[error("message of {len} bytes exceeds max_message_size ({max} bytes)")]
    TooLarge { len: usize, max: usize },
    /// A string in a well-framed message is not UTF-8: the session can
    /// go on, as PostgreSQL's does.
    #[error("invalid byte sequence for encoding \"UTF8\": 0x{0:02x}")]
    NotUtf8(u8),
}

/// The first packet of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Startup {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        key: i32,
    },
    /// A startup packet of protocol 3.`minor`.
    Start {
        params: Vec<(String, String)>,
        minor: u16,
    },
}

fn read_exact_or_closed(r: &mut impl Read, buf: &mut [u8]) -> Result<(), ProtoError> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ProtoError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// Reads the startup packet (or SSL / GSS / cancel request).
pub fn read_startup(r: &mut impl Read, max: usize) -> Result<Startup, ProtoError> {
    let mut len = [0u8; 4];
    read_exact_or_closed(r, &mut len)?;
    let len = i32::from_be_bytes(len);
    if !(8..=10_000).contains(&len) {
        return Err(ProtoError::Malformed(format!(
            "invalid startup packet length {len}"
        )));
    }
    let len = len as usize;
    if len > max {
        return Err(ProtoError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len - 4];
    read_exact_or_closed(r, &mut body)?;
    let mut c = Cursor::new(&body);
    let code = c.i32()?;
    match code {
        SSL_REQUEST => Ok(Startup::SslRequest),
        GSSENC_REQUEST => Ok(Startup::GssEncRequest),
        CANCEL_REQUEST => Ok(Startup::Cancel {
            pid: c.i32()?,
            key: c.i32()?,
        }),
        // 3.x: a later minor version is answered with
        // NegotiateProtocolVersion (3.0), as PostgreSQL does.
        v if v >> 16 == 3 => {
            let mut params = Vec::new();
            loop {
                let name = c.cstr()?;
                if name.is_empty() {
                    break;
                }
                let value = c.cstr()?;
                params.push((name, value));
            }
            Ok(Startup::Start {
                params,
                minor: (v & 0xFFFF) as u16,
            })
        }
        v => Err(ProtoError::Malformed(format!(
            "unsupported frontend protocol {}.{}: server supports 3.0",
            v >> 16,
            v & 0xFFFF
        ))),
    }
}

/// Reads fields off a message body, checking every length.
pub struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Malformed(format!(
                "message too short for its {what}"
            )));
        }
        let (h, t) = self.buf.split_at(n);
        self.buf = t;
        Ok(h)
    }

    pub fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1, "byte field")?[0])
    }

    pub fn i16(&mut self) -> Result<i16, ProtoError> {
        let b = self.take(2, "Int16 field")?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, ProtoError> {
        let b = self.take(4, "Int32 field")?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i64(&mut self) -> Result<i64, ProtoError> {
        let b = self.take(8, "Int64 field")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        self.take(n, "data")
    }

    /// A count field (Int16) that must not be negative.
    pub fn count16(&mut self) -> Result<usize, ProtoError> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| ProtoError::Malformed(format!("negative count {n}")))
    }

    /// A NUL-terminated UTF-8 string.
    pub fn cstr(&mut self) -> Result<String, ProtoError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| ProtoError::Malformed("string is not NUL-terminated".into()))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|e| ProtoError::NotUtf8(self.buf[e.valid_up_to()]))?
            .to_string();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Builds backend messages into one buffer, sent with [`Out::send`].
#[derive(Default)]
pub struct Out {
    buf: Vec<u8>,
}

impl Out {
    /// Starts a message; returns where its length goes.
    fn begin(&mut self, tag: u8) -> usize {
        self.buf.push(tag);
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as i32;
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn cstr(&mut self, s: &str) {
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }

    fn i16(&mut self, v: i16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything built so far and flushes the socket.
    pub fn send(&mut self, w: &mut impl Write) -> io::Result<()> {
        if !self.buf.is_empty() {
            w.write_all(&self.buf)?;
            self.buf.clear();
        }
        w.flush()
    }

    /// A raw single byte (the answer to SSLRequest).
    pub fn raw_byte(&mut self, b: u8) {
        self.buf.push(b);
    }

    /// NegotiateProtocolVersion: this server speaks 3.0, and not the
    /// protocol options (`_pq_.*`) named. The version goes whole, as
    /// PostgreSQL sends it (libpq 18 reads it so).
    pub fn negotiate_protocol_version(&mut self, unknown_options: &[&str]) {
        let at = self.begin(b'v');
        self.i32(PROTOCOL_3_0);
        self.i32(unknown_options.len() as i32);
        for option in unknown_options {
            self.cstr(option);
        }
        self.end(at);
    }

    /// Authentication request `code` with optional data.
    pub fn auth(&mut self, code: i32, data: &[u8]) {
        let at = self.begin(b'R');
        self.i32(code);
        self.buf.extend_from_slice(data);
        self.end(at);
    }

    pub fn auth_sasl(&mut self, mechanisms: &[&str]) {
        let at = self.begin(b'R');
        self.i32(10);
        for m in mechanisms {
            self.cstr(m);
        }
        self.buf.push(0);
        self.end(at);
    }

    pub fn parameter_status(&mut self, name: &str, value: &str) {
        let at = self.begin(b'S');
        self.cstr(name);
        self.cstr(value);
        self.end(at);
    }

    pub fn backend_key(&mut self, pid: i32, key: i32) {
        let at = self.begin(b'K');
        self.i32(pid);
        self.i32(key);
        self.end(at);
    }

    pub fn ready(&mut self, status: u8) {
        let at = self.begin(b'Z');
        self.buf.push(status);
        self.end(at);
    }

    /// RowDescription; `formats` as the portal asked (0 text, 1 binary).
    pub fn row_description(&mut self, columns: &[(String, u32)], formats: &[i16]) {
        let at = self.begin(b'T');
        self.i16(columns.len() as i16);
        for (i, (name, type_oid)) in columns.iter().enumerate() {
            self.cstr(name);
            self.i32(0);
            self.i16(0);
            self.i32(*type_oid as i32);
            let size: i16 = match *type_oid {
                16 => 1,
                20 | 1184 | 3220 => 8,
                23 | 26 | 28 => 4,
                _ => -1,
            };
            self.i16(size);
            self.i32(-1);
            self.i16(format_of(formats, i));
        }
        self.end(at);
    }

    /// DataRow of already-encoded values (`None` is NULL).
    pub fn data_row<'a>(&mut self, values: impl ExactSizeIterator<Item = Option<&'a [u8]>>) {
        let at = self.begin(b'D');
        self.i16(values.len() as i16);
        for v in values {
            match v {
                None => self.i32(-1),
                Some(b) => {
                    self.i32(b.len() as i32);
                    self.buf.extend_from_slice(b);
                }
            }
        }
        self.end(at);
    }

    pub fn command_complete(&mut self, tag: &str) {
        let at = self.begin(b'C');
        self.cstr(tag);
        self.end(at);
    }

    pub fn empty_query(&mut self) {
        let at = self.begin(b'I');
        self.end(at);
    }

    pub fn parse_complete(&mut self) {
        let at = self.begin(b'1');
        self.end(at);
    }

    pub fn bind_complete(&mut self) {
        let at = self.begin(b'2');
        self.end(at);
    }

    pub fn close_complete(&mut self) {
        let at = self.begin(b'3');
        self.end(at);
    }

    pub fn no_data(&mut self) {
        let at = self.begin(b'n');
        self.end(at);
    }

    pub fn portal_suspended(&mut self) {
        let at = self.begin(b's');
        self.end(at);
    }

    pub fn parameter_description(&mut self, types: &[u32]) {
        let at = self.begin(b't');
        self.i16(types.len() as i16);
        for t in types {
            self.i32(*t as i32);
        }
        self.end(at);
    }

    /// ErrorResponse, severity FATAL or ERROR.
    pub fn error(&mut self, e: &PgError) {
        let severity = if e.fatal { "FATAL" } else { "ERROR" };
        self.report(b'E', severity, e);
    }

    /// NoticeResponse: severity NOTICE for a SQLSTATE of class 00
    /// (successful completion: "role does not exist, skipping"), WARNING
    /// for any other, as PostgreSQL reports them.
    pub fn notice(&mut self, e: &PgError) {
        let severity = if e.code.starts_with("00") {
            "NOTICE"
        } else {
            "WARNING"
        };
        self.report(b'N', severity, e);
    }

    fn report(&mut self, tag: u8, severity: &str, e: &PgError) {
        let at = self.begin(tag);
        for (field, value) in [
            (b'S', Some(severity)),
            (b'V', Some(severity)),
            (b'C', Some(e.code)),
            (b'M', Some(e.message.as_str())),
            (b'D', e.detail.as_deref()),
            (b'H', e.hint.as_deref()),
        ] {
            if let Some(v) = value {
                self.buf.push(field);
                self.cstr(v);
            }
        }
        self.buf.push(0);
        self.end(at);
    }

    /// CopyBothResponse / CopyOutResponse header for `tag` (`W` / `H`),
    /// binary, no columns.
    pub fn copy_response(&mut self, tag: u8) {
        let at = self.begin(tag);
        self.buf.push(0);
        self.i16(0);
        self.end(at);
    }

    /// CopyData carrying `payload`.
    pub fn copy_data(&mut self, payload: &[u8]) {
        let at = self.begin(b'd');
        self.buf.extend_from_slice(payload);
        self.end(at);
    }

    pub fn copy_done(&mut self) {
        let at = self.begin(b'c');
        self.end(at);
    }

    /// Writes everything built so far without flushing the socket.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    // Frontend messages, for walship's own clients.

    /// The startup packet of protocol 3.0 (it has no type byte).
    pub fn startup(&mut self, params: &[(&str, String)]) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.i32(PROTOCOL_3_0);
        for (name, value) in params {
            self.cstr(name);
            self.cstr(value);
        }
        self.buf.push(0);
        self.end(at);
    }

    /// A simple Query.
    pub fn query(&mut self, sql: &str) {
        let at = self.begin(b'Q');
        self.cstr(sql);
        self.end(at);
    }

    /// A password or SASL response message carrying `data` as is.
    pub fn password(&mut self, data: &[u8]) {
        let at = self.begin(b'p');
        self.buf.extend_from_slice(data);
        self.end(at);
    }

    /// SASLInitialResponse.
    pub fn sasl_initial(&mut self, mechanism: &str, data: &[u8]) {
        let at = self.begin(b'p');
        self.cstr(mechanism);
        self.i32(data.len() as i32);
        self.buf.extend_from_slice(data);
        self.end(at);
    }

    pub fn terminate(&mut self) {
        let at = self.begin(b'X');
        self.end(at);
    }
}

/// The format code for result column `i`: none given means text; one
/// applies to all columns.
pub fn format_of(formats: &[i16], i: usize) -> i16 {
    match formats.len() {
        0 => 0,
        1 => formats[0],
        _ => formats.get(i).copied().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_packets() {
        let mut pkt = Vec::new();
        let body: Vec<u8> = [
            &PROTOCOL_3_0.to_be_bytes()[..],
            b"user\0alice\0database\0db\0\0",
        ]
        .concat();
        pkt.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        pkt.extend_from_slice(&body);
        assert_eq!(
            read_startup(&mut &pkt[..], 1 << 20).unwrap(),
            Startup::Start {
                params: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "db".into())
                ],
                minor: 0,
            }
        );
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(
            read_startup(&mut &ssl[..], 1 << 20).unwrap(),
            Startup::SslRequest
        );
        assert!(read_startup(&mut &[0u8, 0, 0, 3][..], 1 << 20).is_err());
        assert!(matches!(
            read_startup(&mut &[0u8, 0][..], 1 << 20),
            Err(ProtoError::Closed)
        ));
        let bad = [0, 0, 0, 12, 0, 2, 0, 0, b'x', 0, 0, 0];
        assert!(read_startup(&mut &bad[..], 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("unsupported frontend protocol 2.0"));
    }

    #[test]
    fn cursors_check_every_length() {
        let mut c = Cursor::new(b"abc");
        assert!(c.cstr().is_err());
        let mut c = Cursor::new(&[0xff, 0xff]);
        assert!(c.count16().is_err());
    }
}
