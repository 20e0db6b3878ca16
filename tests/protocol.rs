//! Bad input on the wire: malformed, oversized and unexpected messages get
//! a clear error (and close that connection when PostgreSQL would), and the
//! server goes on serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{wait_until, Node};

fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut pkt = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    pkt.extend(body);
    pkt
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Sends `bytes`, returns whatever the server answers until it closes (end
/// `bytes` with a Terminate where the session would go on) or goes quiet
/// for 30 s (generous: a reply may wait for a stalled disk).
fn exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// The SQLSTATE of the first ErrorResponse in a byte stream.
fn sqlstate(bytes: &[u8]) -> Option<String> {
    let mut i = 0;
    while i + 5 <= bytes.len() {
        let tag = bytes[i];
        let len = i32::from_be_bytes(bytes[i + 1..i + 5].try_into().unwrap()) as usize;
        let body = bytes.get(i + 5..i + 1 + len)?;
        if tag == b'E' {
            let mut fields = body.split(|&b| b == 0);
            return fields
                .find(|f| f.first() == Some(&b'C'))
                .map(|f| String::from_utf8_lossy(&f[1..]).into_owned());
        }
        i += 1 + len;
    }
    None
}

#[test]
fn settings_sent_as_startup_parameters_are_made_as_set_makes_them() {
    let mut node = Node::init("");
    node.start();
    let mut login = startup_packet(&[("user", "tester"), ("synchronous_commit", "off")]);
    login.extend(msg(b'Q', b"SHOW synchronous_commit\0"));
    login.extend(msg(b'X', b""));
    let answer = exchange(node.port, &login);
    assert_eq!(sqlstate(&answer), None);
    assert!(
        answer.windows(3).any(|w| w == b"off"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let latin1 = startup_packet(&[("user", "tester"), ("client_encoding", "LATIN1")]);
    assert_eq!(
        sqlstate(&exchange(node.port, &latin1)).as_deref(),
        Some("0A000")
    );
}

/// A login, then `messages`, then Terminate.
fn login_then(messages: Vec<Vec<u8>>) -> Vec<u8> {
    let mut s = startup_packet(&[("user", "tester")]);
    for m in messages {
        s.extend(m);
    }
    s.extend(msg(b'X', b""));
    s
}

/// Whether `bytes` holds a DataRow of one column whose text is `value`.
fn has_row(bytes: &[u8], value: &[u8]) -> bool {
    let mut row = vec![b'D'];
    row.extend_from_slice(&(4 + 2 + 4 + value.len() as i32).to_be_bytes());
    row.extend_from_slice(&[0, 1]);
    row.extend_from_slice(&(value.len() as i32).to_be_bytes());
    row.extend_from_slice(value);
    bytes.windows(row.len()).any(|w| w == row)
}

#[test]
fn protocol_errors_a_session_survives_in_postgresqls_way() {
    let mut node = Node::init("");
    node.start();
    // Protocol 3.1 with an option: NegotiateProtocolVersion (3.0, the
    // option unknown), then the session as usual.
    let mut body = 196_609i32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0tester\0_pq_.frob\0on\0\0");
    let mut s = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    s.extend(body);
    s.extend(msg(b'Q', b"SELECT pg_is_in_recovery()\0"));
    s.extend(msg(b'X', b""));
    let answer = exchange(node.port, &s);
    let negotiate = [
        &msg(b'v', b"")[..1],
        &22i32.to_be_bytes(),
        &[0, 3, 0, 0, 0, 0, 0, 1],
        b"_pq_.frob\0",
    ]
    .concat();
    assert!(
        answer.windows(negotiate.len()).any(|w| w == negotiate),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(has_row(&answer, b"f"));
    // A bad Describe is an error up to Sync; COPY data outside COPY is
    // ignored; a FunctionCall is refused; the session goes on each time.
    let s = login_then(vec![
        msg(b'D', b"X\0"),
        msg(b'S', b""),
        msg(b'd', b"stray"),
        msg(b'F', &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
        msg(b'Q', b"SELECT pg_is_in_recovery()\0"),
    ]);
    let answer = exchange(node.port, &s);
    assert_eq!(sqlstate(&answer).as_deref(), Some("08P01"));
    assert!(
        answer.windows(6).any(|w| w == b"C0A000"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        has_row(&answer, b"f"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // Fetched two rows at a time, the last Execute's tag counts its own
    // row; a negative LIMIT is PostgreSQL's 2201W.
    node.client()
        .batch_execute("INSERT INTO kv VALUES ('a', '1'), ('b', '2'), ('c', '3')")
        .unwrap();
    // The three keys, `limit` rows per Execute, twice.
    let fetching = |limit: u8| {
        vec![
            msg(b'P', b"\0SELECT key FROM kv ORDER BY key\0\0\0"),
            msg(b'B', b"\0\0\0\0\0\0\0\0"),
            msg(b'E', &[0, 0, 0, 0, limit]),
            msg(b'E', &[0, 0, 0, 0, limit]),
            msg(b'S', b""),
        ]
    };
    let mut messages = fetching(2);
    messages.push(msg(b'Q', b"SELECT key FROM kv LIMIT -1\0"));
    let answer = exchange(node.port, &login_then(messages));
    assert!(
        answer.windows(9).any(|w| w == b"SELECT 1\0"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(sqlstate(&answer).as_deref(), Some("2201W"));

    // A limit reached exactly suspends the portal (the next Execute ends
    // it with no row), as PostgreSQL does.
    let answer = exchange(node.port, &login_then(fetching(3)));
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.windows(5).any(|w| w == b"s\0\0\0\x04"), "{text}");
    assert!(text.contains("SELECT 0"), "{text}");

    // Bind: a format code other than 0 or 1, a negative length other than
    // -1 (NULL), bytes after its end; errors, and the session goes on.
    for (bind, want) in [
        (msg(b'B', b"\0\0\0\x01\0\x07\0\0\0\0"), "22023"),
        (msg(b'B', b"\0\0\0\0\0\0\0\0junk"), "08P01"),
    ] {
        let s = login_then(vec![
            msg(b'P', b"\0SELECT key FROM kv\0\0\0"),
            bind,
            msg(b'S', b""),
            msg(b'Q', b"SELECT pg_is_in_recovery()\0"),
        ]);
        let answer = exchange(node.port, &s);
        assert_eq!(sqlstate(&answer).as_deref(), Some(want));
        assert!(has_row(&answer, b"f"));
    }
    let s = login_then(vec![
        msg(b'P', b"\0SELECT value FROM kv WHERE key = $1\0\0\0"),
        msg(b'B', b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0"),
        msg(b'S', b""),
    ]);
    assert_eq!(sqlstate(&exchange(node.port, &s)).as_deref(), Some("08P01"));

    // A FunctionCall in a block fails the block, as any error does.
    let s = login_then(vec![
        msg(b'Q', b"BEGIN\0"),
        msg(b'F', &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
        msg(b'Q', b"SELECT pg_is_in_recovery()\0"),
    ]);
    let answer = exchange(node.port, &s);
    assert!(
        answer.windows(6).any(|w| w == b"C25P02"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // COMMIT in an implicit block: it commits, with PostgreSQL's warning.
    let s = login_then(vec![msg(
        b'Q',
        b"INSERT INTO kv VALUES ('w', '1'); COMMIT\0",
    )]);
    let answer = exchange(node.port, &s);
    assert!(
        answer.windows(6).any(|w| w == b"C25P01"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        node.query_one("SELECT count(*) FROM kv WHERE key = 'w'"),
        "1"
    );
}

#[test]
fn text_that_is_not_utf8_is_an_error_and_the_session_goes_on() {
    let mut node = Node::init("");
    node.start();
    let mut session = startup_packet(&[("user", "tester")]);
    session.extend(msg(b'Q', b"SELECT value FROM kv WHERE key = '\xff'\0"));
    session.extend(msg(b'Q', b"SELECT pg_is_in_recovery()\0"));
    session.extend(msg(b'X', b""));
    let answer = exchange(node.port, &session);
    assert_eq!(sqlstate(&answer).as_deref(), Some("22021"));
    // The second query's row: pg_is_in_recovery() is false.
    assert!(
        answer.windows(7).any(|w| w == b"D\0\0\0\x0b\0\x01"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[test]
fn an_extended_protocol_batch_is_one_transaction_up_to_its_sync() {
    let mut node = Node::init("");
    node.start();
    node.client()
        .batch_execute("INSERT INTO kv VALUES ('taken', 'v')")
        .unwrap();
    let execute = |sql: &str| {
        let mut m = msg(b'P', format!("\0{sql}\0\0\0").as_bytes());
        m.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        m.extend(msg(b'E', b"\0\0\0\0\0"));
        m
    };
    let mut batch = startup_packet(&[("user", "tester")]);
    batch.extend(execute("INSERT INTO kv VALUES ('xb1', '1')"));
    batch.extend(execute("INSERT INTO kv VALUES ('taken', 'dup')"));
    batch.extend(msg(b'S', b""));
    batch.extend(msg(b'X', b""));
    let answer = exchange(node.port, &batch);
    assert_eq!(sqlstate(&answer).as_deref(), Some("23505"));
    // The first insert went with the second.
    assert_eq!(
        node.query_one("SELECT count(*) FROM kv WHERE key = 'xb1'"),
        "0"
    );
    // Each batch of its own commits as it runs.
    let mut alone = startup_packet(&[("user", "tester")]);
    alone.extend(execute("INSERT INTO kv VALUES ('xb2', '1')"));
    alone.extend(msg(b'S', b""));
    alone.extend(execute("INSERT INTO kv VALUES ('taken', 'dup')"));
    alone.extend(msg(b'S', b""));
    alone.extend(msg(b'X', b""));
    assert_eq!(
        sqlstate(&exchange(node.port, &alone)).as_deref(),
        Some("23505")
    );
    assert_eq!(
        node.query_one("SELECT count(*) FROM kv WHERE key = 'xb2'"),
        "1"
    );
    // Any error in the batch undoes it: a bad Parse, a Bind to a statement
    // that does not exist, an Execute of a portal that does not.
    for (i, bad) in [
        msg(b'P', b"\0INSERT INTO\0\0\0"),
        msg(b'B', b"\0nope\0\0\0\0\0\0\0"),
        msg(b'E', b"nope\0\0\0\0\0"),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("xe{i}");
        let mut batch = startup_packet(&[("user", "tester")]);
        batch.extend(execute(&format!("INSERT INTO kv VALUES ('{key}', '1')")));
        batch.extend(bad);
        batch.extend(msg(b'S', b""));
        batch.extend(msg(b'X', b""));
        assert!(sqlstate(&exchange(node.port, &batch)).is_some());
        assert_eq!(
            node.query_one(&format!("SELECT count(*) FROM kv WHERE key = '{key}'")),
            "0",
            "{key}"
        );
    }
}

#[test]
fn malformed_input_never_takes_the_server_down() {
    let mut node = Node::init("max_message_size = 64kB");
    node.start();
    let port = node.port;
    let login = startup_packet(&[("user", "tester"), ("database", "x")]);

    // Garbage instead of a startup packet.
    let r = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(sqlstate(&r).as_deref(), Some("08P01"), "{r:?}");
    // A startup packet that claims to be huge.
    assert_eq!(
        sqlstate(&exchange(port, &[0x7f, 0, 0, 0, 0, 3, 0, 0])).as_deref(),
        Some("08P01")
    );
    // Unknown startup parameter, no user.
    assert_eq!(
        sqlstate(&exchange(
            port,
            &startup_packet(&[("user", "tester"), ("frobnicate", "1")])
        ))
        .as_deref(),
        Some("42704")
    );
    assert_eq!(
        sqlstate(&exchange(port, &startup_packet(&[("database", "x")]))).as_deref(),
        Some("28000")
    );
    // After login: an oversized message, a negative length, an unknown type,
    // a Bind to a statement that does not exist, a truncated Parse.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            [&[b'Q'][..], &(1_000_000i32).to_be_bytes()].concat(),
            "54000",
        ),
        (vec![b'Q', 0xff, 0xff, 0xff, 0xf0], "08P01"),
        (vec![b'!', 0, 0, 0, 4], "08P01"),
        (
            [msg(b'B', b"\0nope\0\0\0\0\0\0\0"), msg(b'S', b"")].concat(),
            "26000",
        ),
        (
            [
                &[b'P'][..],
                &9i32.to_be_bytes(),
                b"\0SEL\0",
                &msg(b'S', b""),
            ]
            .concat(),
            "08P01",
        ),
        (
            // A parameter number far past the protocol's 65535: refused,
            // not taken as the size of anything.
            [
                msg(
                    b'P',
                    b"\0SELECT value FROM kv WHERE key = $4294967297\0\0\0",
                ),
                msg(b'S', b""),
            ]
            .concat(),
            "42P02",
        ),
        (
            // Three parameter formats for one parameter.
            [
                msg(b'P', b"\0SELECT value FROM kv WHERE key = $1\0\0\0"),
                msg(b'B', b"\0\0\0\x03\0\0\0\0\0\0\0\x01\0\0\0\x01a\0\0"),
                msg(b'S', b""),
            ]
            .concat(),
            "08P01",
        ),
        (
            // A zero byte in a text parameter: no text holds one.
            [
                msg(b'P', b"\0SELECT value FROM kv WHERE key = $1\0\0\0"),
                msg(b'B', b"\0\0\0\0\0\x01\0\0\0\x03a\0b\0\0"),
                msg(b'S', b""),
            ]
            .concat(),
            "22021",
        ),
        (
            // Close of something that is neither a statement nor a portal.
            [msg(b'C', b"Zx\0"), msg(b'S', b"")].concat(),
            "08P01",
        ),
        (
            // Not UTF-8: PostgreSQL's error, and no protocol violation.
            [&[b'Q'][..], &9i32.to_be_bytes(), b"\xff\xfe\xfd\0\0"].concat(),
            "22021",
        ),
    ];
    for (m, want) in cases {
        let mut bytes = login.clone();
        bytes.extend_from_slice(&m);
        bytes.extend(msg(b'X', b""));
        let r = exchange(port, &bytes);
        assert_eq!(sqlstate(&r).as_deref(), Some(want), "for {m:?}");
    }
    // A SSLRequest is declined with 'N' and the session continues.
    let mut ssl = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    ssl.extend_from_slice(&login);
    ssl.extend(msg(b'X', b""));
    let r = exchange(port, &ssl);
    assert_eq!(r.first(), Some(&b'N'));
    // The server still serves.
    let mut c = node.client();
    c.batch_execute("INSERT INTO kv VALUES ('still', 'alive')")
        .unwrap();
    assert!(
        node.log().matches("panicked").next().is_none(),
        "{}",
        node.log()
    );
}

#[test]
fn connections_that_never_log_in_are_bounded_and_closed_after_authentication_timeout() {
    let mut node =
        Node::init("max_connections = 2\nmax_wal_senders = 0\nauthentication_timeout = 1s");
    node.start();
    let port = node.port;
    // Twice max_connections plus max_wal_senders may be open or starting.
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The next is refused as it is accepted, before it says anything.
    assert_eq!(sqlstate(&exchange(port, b"")).as_deref(), Some("53300"));
    // Those that said nothing are told, then closed, after 1 s.
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut said = Vec::new();
        let _ = s.read_to_end(&mut said);
        assert_eq!(sqlstate(&said).as_deref(), Some("57014"), "{said:?}");
    }
    // Their slots are freed just after their sockets close.
    wait_until("a slot to come free", || {
        postgres::Client::connect(&node.conninfo(), postgres::NoTls).is_ok()
    });
    assert!(node.wait_log("did not log in within authentication_timeout"));
    // The timeout is for the whole login: a byte now and then does not
    // stretch it.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let began = std::time::Instant::now();
    let mut said = Vec::new();
    for b in startup_packet(&[("user", "tester")]) {
        if slow.write_all(&[b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        slow.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        let got = slow.read(&mut buf);
        slow.set_nonblocking(false).unwrap();
        if let Ok(n) = got {
            said.extend_from_slice(&buf[..n]);
            break;
        }
    }
    assert_eq!(sqlstate(&said).as_deref(), Some("57014"), "{said:?}");
    // Well before the whole packet could have been sent (about 10 s).
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "{:?}",
        began.elapsed()
    );
    assert!(!node.log().contains("panicked"), "{}", node.log());
}

#[test]
fn a_standby_whose_connection_is_reset_is_no_protocol_violation() {
    let mut node = Node::init("");
    node.start();
    let lsn = node.query_one("SELECT pg_current_wal_lsn()");
    let mut s = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    let mut bytes = startup_packet(&[("user", "tester"), ("replication", "true")]);
    bytes.extend(msg(b'Q', format!("START_REPLICATION {lsn}\0").as_bytes()));
    s.write_all(&bytes).unwrap();
    wait_until("the walsender to stream", || {
        node.query_column("SELECT state FROM pg_stat_replication") == ["streaming"]
    });
    // Gone without a goodbye: a reset, as from a host that lost its state.
    nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .unwrap();
    drop(s);
    node.client()
        .batch_execute("INSERT INTO kv VALUES ('after', 'reset')")
        .unwrap();
    wait_until("the walsender to end", || {
        node.query_column("SELECT state FROM pg_stat_replication")
            .is_empty()
    });
    assert!(
        !node.log().contains("terminating walsender"),
        "{}",
        node.log()
    );
}

#[test]
fn a_malformed_standby_status_update_ends_the_walsender() {
    let mut node = Node::init("");
    node.start();
    let lsn = node.query_one("SELECT pg_current_wal_lsn()");
    let mut s = startup_packet(&[("user", "tester"), ("replication", "true")]);
    s.extend(msg(b'Q', format!("START_REPLICATION {lsn}\0").as_bytes()));
    // A status update cut short after its first field.
    s.extend(msg(b'd', &[b'r', 0, 0, 0, 0, 0, 0, 0, 1]));
    let r = exchange(node.port, &s);
    assert_eq!(sqlstate(&r).as_deref(), Some("08P01"), "{r:?}");
    // FATAL, as in PostgreSQL: the connection ends, no ReadyForQuery.
    assert!(!r.ends_with(&[b'Z', 0, 0, 0, 5, b'I']), "{r:?}");
    // The walsender is gone with its client, its slot in max_wal_senders
    // free again. It unregisters after the error reaches the client, so
    // this waits for it rather than racing it.
    let mut client = node.client();
    wait_until("the walsender to leave pg_stat_replication", || {
        client
            .simple_query("SELECT pid FROM pg_stat_replication")
            .unwrap()
            .iter()
            .all(|m| !matches!(m, postgres::SimpleQueryMessage::Row(_)))
    });
}
