//! A session's socket reader that polls briefly before it sleeps.
//!
//! On a virtual machine an idle CPU that must be woken for a new message
//! costs tens of microseconds: more than the whole server-side work of a
//! point read. A client in a tight request loop sends its next message a few
//! microseconds after it reads the answer, so the session first polls the
//! socket without blocking for up to the `busy_poll` setting, and only then
//! sleeps in `recv`. Linux offers the same for network cards
//! (`SO_BUSY_POLL`), but not on loopback.
//!
//! Polling pays only where a CPU would otherwise sit idle, and a server
//! cannot see the CPUs its clients need. So a session polls only when it
//! has been the only one of its [`PollGate`] to receive anything for
//! [`QUIET`] (a lone client in a request loop), and stops the moment
//! another session is at work (between reading a message and waiting for
//! the next). With several clients busy every session sleeps in `recv` as
//! before: polling there took CPU from the clients on the same machine,
//! and cost 8 pgbench clients 10-20 % of their reads. A walsender's reader
//! is a session like any other here: a standby's replies count as another
//! session talking, so while WAL streams to standbys that reply often, a
//! lone client's session seldom polls (the walsender then needs the CPU).

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};

/// How long a session must have been the only one receiving before it
/// may poll.
const QUIET: Duration = Duration::from_millis(10);

/// `last_switch` before any switch.
const NEVER: u64 = u64::MAX;

/// `last_reader` before any session received; session ids start above it.
const NONE: usize = 0;

/// The sessions that decide together whether one of them may poll.
///
/// Invariants: `working` counts the open [`BusyPoll`]s not inside `read`;
/// `polling` is set while one session polls; `last_reader` is the id of the session that
/// last received bytes, and `last_switch` when (in [`now_ns`]) a session
/// received bytes after another had, or [`NEVER`].
pub struct PollGate {
    working: AtomicUsize,
    polling: AtomicBool,
    next_id: AtomicUsize,
    last_reader: AtomicUsize,
    last_switch: AtomicU64,
}

/// The gate of the node's client sessions.
pub static SESSIONS: PollGate = PollGate::new();

impl PollGate {
    const fn new() -> PollGate {
        PollGate {
            working: AtomicUsize::new(0),
            polling: AtomicBool::new(false),
            next_id: AtomicUsize::new(NONE + 1),
            last_reader: AtomicUsize::new(NONE),
            last_switch: AtomicU64::new(NEVER),
        }
    }

    fn others_working(&self) -> bool {
        self.working.load(Ordering::Relaxed) > 0
    }

    /// Records that session `id` received bytes: a switch when another
    /// session received last.
    fn received(&self, id: usize) {
        if self.last_reader.load(Ordering::Relaxed) != id
            && !matches!(self.last_reader.swap(id, Ordering::Relaxed), n if n == id || n == NONE)
        {
            self.last_switch.store(now_ns(), Ordering::Relaxed);
        }
    }

    /// True when session `id` received last, and no other for [`QUIET`].
    fn one_talking(&self, id: usize) -> bool {
        let last = self.last_switch.load(Ordering::Relaxed);
        self.last_reader.load(Ordering::Relaxed) == id
            && (last == NEVER || now_ns().saturating_sub(last) >= QUIET.as_nanos() as u64)
    }
}

/// Nanoseconds since the first call in this process.
fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Reads a session's socket, polling for up to `window` before blocking.
pub struct BusyPoll {
    stream: TcpStream,
    window: Duration,
    gate: &'static PollGate,
    id: usize,
    /// When reading must have ended (a login's `authentication_timeout`):
    /// a read after it fails with `TimedOut`, and a blocking read waits at
    /// most until it, however the bytes trickle in.
    deadline: std::cell::Cell<Option<Instant>>,
    /// Whether a blocking read gave the socket a read timeout, which
    /// lifting the deadline must take off again.
    timeout_set: std::cell::Cell<bool>,
}

impl BusyPoll {
    /// A reader of `stream`, at work (it counts against others' polling)
    /// until it is inside `read` or dropped.
    pub fn new(stream: TcpStream, window: Duration, gate: &'static PollGate) -> BusyPoll {
        gate.working.fetch_add(1, Ordering::Relaxed);
        BusyPoll {
            stream,
            window,
            gate,
            id: gate.next_id.fetch_add(1, Ordering::Relaxed),
            deadline: std::cell::Cell::new(None),
            timeout_set: std::cell::Cell::new(false),
        }
    }

    /// Sets (or, with `None`, lifts) the time by which reading must end.
    pub fn set_deadline(&self, deadline: Option<Instant>) -> io::Result<()> {
        self.deadline.set(deadline);
        // A read that found its bytes waiting set no timeout: nothing to
        // take off (a system call spared per message in a block).
        if deadline.is_none() && self.timeout_set.get() {
            self.stream.set_read_timeout(None)?;
            self.timeout_set.set(false);
        }
        Ok(())
    }

    /// A blocking read, within the deadline if there is one.
    fn read_blocking(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(d) = self.deadline.get() {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            self.timeout_set.set(true);
        }
        self.stream.read(buf)
    }

    /// Polls without blocking until data arrives, the window closes or
    /// another session starts work. `None` when nothing came or polling was
    /// not allowed.
    fn poll(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let gate = self.gate;
        if self.window.is_zero()
            || gate.others_working()
            || !gate.one_talking(self.id)
            || gate
                .polling
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        let fd = self.stream.as_raw_fd();
        let began = Instant::now();
        let got = loop {
            match recv(fd, buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => break Some(Ok(n)),
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => break Some(Err(io::Error::from(e))),
            }
            if gate.others_working() || began.elapsed() >= self.window {
                break None;
            }
            std::hint::spin_loop();
        };
        gate.polling.store(false, Ordering::Release);
        got
    }
}

impl Read for BusyPoll {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.gate.working.fetch_sub(1, Ordering::Relaxed);
        let got = match self.poll(buf) {
            Some(got) => got,
            None => self.read_blocking(buf),
        };
        self.gate.working.fetch_add(1, Ordering::Relaxed);
        if matches!(got, Ok(n) if n > 0) {
            self.gate.received(self.id);
        }
        got
    }
}

impl Drop for BusyPoll {
    fn drop(&mut self) {
        self.gate.working.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn gate() -> &'static PollGate {
        Box::leak(Box::new(PollGate::new()))
    }

    /// What `read` does, without its blocking fallback.
    fn poll_in_read(r: &mut BusyPoll, buf: &mut [u8]) -> Option<io::Result<usize>> {
        r.gate.working.fetch_sub(1, Ordering::Relaxed);
        let got = r.poll(buf);
        r.gate.working.fetch_add(1, Ordering::Relaxed);
        got
    }

    #[test]
    fn reads_what_arrives_within_and_after_the_window() {
        let (mut client, server) = pair();
        let mut r = BusyPoll::new(server, Duration::from_micros(50), gate());
        let mut buf = [0u8; 16];
        client.write_all(b"now").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"now");
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            client.write_all(b"later").unwrap();
            client
        });
        assert_eq!(r.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"later");
        drop(late.join().unwrap());
        assert_eq!(r.read(&mut buf).unwrap(), 0, "end of stream");
    }

    #[test]
    fn the_gate_counts_sessions_at_work_and_lets_one_poll() {
        let gate = gate();
        let (_c1, s1) = pair();
        let (mut c2, s2) = pair();
        let working = BusyPoll::new(s1, Duration::from_millis(1), gate);
        let mut idle = BusyPoll::new(s2, Duration::from_secs(60), gate);
        assert_eq!(gate.working.load(Ordering::Relaxed), 2);
        gate.received(idle.id);
        // Another session is at work: no polling, though data is there.
        c2.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let mut buf = [0u8; 4];
        assert!(poll_in_read(&mut idle, &mut buf).is_none());
        drop(working);
        // Alone now: the poll finds it.
        assert_eq!(poll_in_read(&mut idle, &mut buf).unwrap().unwrap(), 1);
        assert!(!gate.polling.load(Ordering::Relaxed));
        // Only one session polls at a time.
        gate.polling.store(true, Ordering::Relaxed);
        c2.write_all(b"y").unwrap();
        assert!(poll_in_read(&mut idle, &mut buf).is_none());
        gate.polling.store(false, Ordering::Relaxed);
        drop(idle);
        assert_eq!(gate.working.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn no_session_polls_while_several_are_talking() {
        let gate = gate();
        let (mut c1, s1) = pair();
        let (mut c2, s2) = pair();
        let mut one = BusyPoll::new(s1, Duration::from_secs(60), gate);
        let mut two = BusyPoll::new(s2, Duration::from_secs(60), gate);
        let mut buf = [0u8; 4];
        for (c, r) in [(&mut c1, &mut one), (&mut c2, &mut two)] {
            c.write_all(b"q").unwrap();
            assert_eq!(r.read(&mut buf).unwrap(), 1);
        }
        assert_ne!(gate.last_switch.load(Ordering::Relaxed), NEVER);
        drop(one);
        // Data is there and no one else is at work, but another session
        // has just spoken: no polling.
        c2.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        gate.received(usize::MAX);
        assert!(poll_in_read(&mut two, &mut buf).is_none());
        // Once only this session has spoken for QUIET, it may.
        gate.received(two.id);
        assert!(poll_in_read(&mut two, &mut buf).is_none());
        std::thread::sleep(QUIET);
        assert_eq!(poll_in_read(&mut two, &mut buf).unwrap().unwrap(), 1);
    }
}
