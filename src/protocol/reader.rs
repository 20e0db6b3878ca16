//! Reading protocol messages (a type byte, then a length that counts
//! itself) off a stream, each lent in place from one buffer.
//!
//! A reader that gave every message its own zero-filled `Vec` and copied it
//! out of a `BufReader` touched each byte of a WAL stream twice more than
//! the kernel's copy into user space; for a receiver those two passes were
//! a tenth of its CPU. Here a message is read straight into the buffer and
//! its body borrowed from there until the next message is asked for.
//!
//! Invariants: `start + lent <= end <= buf.len()`; `buf[start..end]` holds
//! bytes read and not yet consumed, of which the first `lent` are the
//! message last handed out.

use std::io::{self, Read};

use super::codec::ProtoError;

/// Type byte and length.
const HEADER: usize = 5;

/// See the module documentation.
pub struct MessageReader<R> {
    inner: R,
    /// The buffer's size between large messages.
    capacity: usize,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    lent: usize,
}

impl<R: Read> MessageReader<R> {
    /// A reader whose buffer starts at `capacity` bytes and grows to hold
    /// the largest message read.
    pub fn with_capacity(capacity: usize, inner: R) -> Self {
        let capacity = capacity.max(HEADER);
        MessageReader {
            inner,
            capacity,
            buf: vec![0; capacity],
            start: 0,
            end: 0,
            lent: 0,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Bytes read off the stream and not yet handed out.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start + self.lent..self.end]
    }

    /// Reads the next message, of at most `max` bytes (its length field),
    /// and returns its type; [`MessageReader::body`] then lends its body.
    /// [`ProtoError::Closed`] when the stream ends between messages.
    pub fn next_message(&mut self, max: usize) -> Result<u8, ProtoError> {
        self.start += self.lent;
        self.lent = 0;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // A buffer grown for one large message does not stay grown.
            if self.buf.len() > self.capacity {
                self.buf.truncate(self.capacity);
                self.buf.shrink_to_fit();
            }
        }
        self.fill(HEADER)?;
        let head = &self.buf[self.start..self.start + HEADER];
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if len < 4 {
            return Err(ProtoError::Malformed(format!(
                "invalid message length {len}"
            )));
        }
        let len = len as usize;
        if len > max {
            return Err(ProtoError::TooLarge { len, max });
        }
        self.fill(1 + len)?;
        self.lent = 1 + len;
        Ok(self.buf[self.start])
    }

    /// Waits until the type byte of the message after the one read last
    /// has arrived, and returns it; the message stays unread
    /// ([`MessageReader::buffered`] starts with it).
    pub fn peek_next_type(&mut self) -> Result<u8, ProtoError> {
        self.fill(self.lent + 1)?;
        Ok(self.buf[self.start + self.lent])
    }

    /// [`MessageReader::next_message`] and [`MessageReader::body`] at once.
    pub fn read_message(&mut self, max: usize) -> Result<(u8, &[u8]), ProtoError> {
        let tag = self.next_message(max)?;
        Ok((tag, self.body()))
    }

    /// The body of the message [`MessageReader::next_message`] read last.
    pub fn body(&self) -> &[u8] {
        &self.buf[(self.start + HEADER).min(self.start + self.lent)..self.start + self.lent]
    }

    /// Reads until `want` bytes from `start` are in the buffer, making
    /// room first: the bytes held move to the front, and the buffer grows
    /// (doubling, up to `want`) only as bytes arrive, so that a length
    /// field alone, from a peer that sends nothing after it, commits no
    /// memory.
    fn fill(&mut self, want: usize) -> Result<(), ProtoError> {
        if self.start + want > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end - self.start < want {
            if self.end == self.buf.len() {
                let grown = (self.buf.len() * 2).min(self.start + want);
                self.buf.resize(grown, 0);
            }
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) if self.end == self.start => return Err(ProtoError::Closed),
                Ok(0) => {
                    return Err(ProtoError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection ended in the middle of a message",
                    )))
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Reads bytes not framed as messages (the startup packet, which has no
/// type byte): what is buffered first, then the stream's.
impl<R: Read> Read for MessageReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.start += self.lent;
        self.lent = 0;
        let n = (self.end - self.start).min(out.len());
        if n == 0 {
            return self.inner.read(out);
        }
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Hands out its bytes a few at a time, as a socket may.
    struct Trickle(Vec<u8>, usize);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(n)
        }
    }

    #[test]
    fn messages_of_every_size_come_whole_however_the_bytes_arrive() {
        let bodies: Vec<Vec<u8>> = (0..200usize)
            .map(|i| (0..(i * 37) % 3000).map(|b| (b + i) as u8).collect())
            .collect();
        let stream: Vec<u8> = bodies
            .iter()
            .enumerate()
            .flat_map(|(i, b)| message(b'a' + (i % 26) as u8, b))
            .collect();
        for chunk in [1, 7, 512, 1 << 20] {
            let mut r = MessageReader::with_capacity(64, Trickle(stream.clone(), chunk));
            for (i, b) in bodies.iter().enumerate() {
                assert_eq!(r.next_message(1 << 20).unwrap(), b'a' + (i % 26) as u8);
                assert_eq!(r.body(), &b[..], "message {i}, chunks of {chunk}");
            }
            assert!(matches!(r.next_message(1 << 20), Err(ProtoError::Closed)));
        }
    }

    /// A peer that has sent nothing more.
    struct Silent;

    impl Read for Silent {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::WouldBlock))
        }
    }

    #[test]
    fn a_length_alone_does_not_grow_the_buffer_and_a_large_message_does_not_keep_it() {
        let mut r = MessageReader::with_capacity(64, Silent);
        r.buf[..5].copy_from_slice(&[b'p', 0x04, 0, 0, 0]);
        r.end = 5;
        assert!(matches!(r.next_message(1 << 30), Err(ProtoError::Io(_))));
        assert_eq!(r.buf.len(), 64, "no room made for bytes that did not come");
        let mut bytes = message(b'd', &vec![7; 10_000]);
        bytes.extend(message(b'd', b"small"));
        let mut r = MessageReader::with_capacity(64, Trickle(bytes, 4096));
        assert_eq!(r.next_message(1 << 20).unwrap(), b'd');
        assert_eq!(r.body().len(), 10_000);
        assert_eq!(r.next_message(1 << 20).unwrap(), b'd');
        assert_eq!(r.body(), b"small");
        r.next_message(1 << 20).unwrap_err();
        assert_eq!(r.buf.len(), 64);
    }

    #[test]
    fn bad_lengths_and_cut_messages_are_errors() {
        let mut r = MessageReader::with_capacity(16, &[b'Q', 0, 0, 0, 3][..]);
        assert!(matches!(r.next_message(100), Err(ProtoError::Malformed(_))));
        let big = message(b'Q', &[0; 100]);
        let mut r = MessageReader::with_capacity(16, &big[..]);
        assert!(matches!(
            r.next_message(50),
            Err(ProtoError::TooLarge { len: 104, max: 50 })
        ));
        let mut r = MessageReader::with_capacity(16, &big[..50]);
        match r.next_message(1000) {
            Err(ProtoError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("expected a cut message, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn unframed_reads_take_the_buffered_bytes_first() {
        let mut bytes = message(b'd', b"one");
        bytes.extend_from_slice(b"raw");
        let mut r = MessageReader::with_capacity(64, &bytes[..]);
        assert_eq!(r.read_message(100).unwrap(), (b'd', &b"one"[..]));
        let mut raw = Vec::new();
        r.read_to_end(&mut raw).unwrap();
        assert_eq!(raw, b"raw");
    }

    #[test]
    fn what_is_buffered_excludes_the_message_handed_out() {
        let mut bytes = message(b'd', b"one");
        bytes.extend(message(b'd', b"two"));
        let mut r = MessageReader::with_capacity(64, &bytes[..]);
        assert_eq!(r.next_message(100).unwrap(), b'd');
        assert_eq!(r.buffered().len(), 8);
        assert_eq!(r.next_message(100).unwrap(), b'd');
        assert_eq!(r.body(), b"two");
        assert!(r.buffered().is_empty());
    }
}
