//! Roles managed in SQL: CREATE / ALTER / DROP ROLE on the primary (and
//! psql's `\password`), carried to standbys in the WAL and through crash
//! recovery, checked by logging in with the passwords they set.

mod common;

use std::process::Stdio;

use common::{pg_bin, Node};
use nix::sys::signal::Signal;

/// A verifier PostgreSQL 15 computed (`CREATE ROLE … PASSWORD
/// 'walship-interop'`, then `pg_authid.rolpassword`).
const PG_VERIFIER: &str = "SCRAM-SHA-256$4096:XSJORJwU9D/NPEt21MnF7Q==$ztK+lTIbk/9URivJyBydhhjghjAOCUcntEKcn2ZDNsI=:twk0O9N4z5a5tzt2E6nV9v8mmnTehRvii17mf8+DMko=";

fn connect(node: &Node, user: &str, password: &str) -> Result<postgres::Client, postgres::Error> {
    postgres::Client::connect(
        &format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=walship connect_timeout=10",
            node.port
        ),
        postgres::NoTls,
    )
}

fn message(e: &postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_string())
}

fn sqlstate(e: &postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// The first column of the first row `sql` returns.
fn one(client: &mut postgres::Client, sql: &str) -> String {
    client
        .simple_query(sql)
        .unwrap()
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql} returned no row"))
}

fn caught_up(primary: &mut postgres::Client, standby: &mut postgres::Client) {
    let lsn = one(primary, "SELECT pg_current_wal_lsn()");
    let status = one(
        standby,
        &format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '30s')"),
    );
    assert_eq!(status, "success");
}

fn require_scram(node: &Node) {
    node.configure("authentication = scram-sha-256");
    node.signal(Signal::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while connect(node, "tester", "wrong").is_ok() {
        assert!(std::time::Instant::now() < deadline, "{}", node.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn roles_changed_in_sql_reach_standbys_and_survive_a_crash() {
    let mut primary = Node::init("");
    primary.start();
    let mut standby = Node::basebackup(&primary, "s1", &[]);
    standby.start();
    let mut c = primary.client();
    c.batch_execute("ALTER ROLE tester PASSWORD 's3cret'")
        .unwrap();
    c.batch_execute("CREATE ROLE app LOGIN PASSWORD 'first'")
        .unwrap();
    c.batch_execute("CREATE USER repl WITH REPLICATION")
        .unwrap();
    // A verifier made by PostgreSQL is taken as it is.
    c.batch_execute(&format!("ALTER USER app PASSWORD '{PG_VERIFIER}'"))
        .unwrap();
    let e = c.batch_execute("CREATE ROLE app").unwrap_err();
    assert_eq!(sqlstate(&e), "42710");
    // A transaction block's role changes are made at COMMIT, together;
    // a ROLLBACK undoes them; rows and roles do not mix in one block.
    c.batch_execute("BEGIN; CREATE ROLE other; ALTER ROLE other PASSWORD 'o'; ROLLBACK")
        .unwrap();
    c.batch_execute("DROP ROLE IF EXISTS other; CREATE ROLE other; DROP ROLE other")
        .unwrap();
    let e = c
        .batch_execute("BEGIN; CREATE ROLE other; INSERT INTO kv VALUES ('k', 'v')")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    c.batch_execute("ROLLBACK").unwrap();
    caught_up(&mut c, &mut standby.client());
    assert_eq!(
        std::fs::read_to_string(standby.dir.join("users")).unwrap(),
        std::fs::read_to_string(primary.dir.join("users")).unwrap()
    );
    assert!(standby.log().contains("replayed a role change"));

    require_scram(&primary);
    require_scram(&standby);
    for node in [&primary, &standby] {
        let mut app = connect(node, "app", "walship-interop").unwrap();
        assert_eq!(one(&mut app, "SHOW is_superuser"), "off");
        assert_eq!(
            sqlstate(&connect(node, "app", "first").err().unwrap()),
            "28P01"
        );
        let mut tester = connect(node, "tester", "s3cret").unwrap();
        assert_eq!(one(&mut tester, "SHOW is_superuser"), "on");
    }
    // A standby takes no role changes; a role that is not a superuser may
    // change its own password and nothing else.
    let mut on_standby = connect(&standby, "tester", "s3cret").unwrap();
    let e = on_standby.batch_execute("CREATE ROLE x").unwrap_err();
    assert_eq!(sqlstate(&e), "25006");
    let mut app = connect(&primary, "app", "walship-interop").unwrap();
    let e = app.batch_execute("CREATE ROLE x").unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    for refused in [
        "ALTER ROLE app SUPERUSER",
        "CHECKPOINT",
        "SELECT pg_switch_wal()",
        "SELECT walship_fence(9)",
    ] {
        let e = app.batch_execute(refused).unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{refused}");
    }
    let mut app_on_standby = connect(&standby, "app", "walship-interop").unwrap();
    let e = app_on_standby
        .batch_execute("SELECT pg_promote()")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    app.batch_execute("ALTER ROLE app PASSWORD 'second'")
        .unwrap();
    let mut c = connect(&primary, "tester", "s3cret").unwrap();
    c.batch_execute("DROP ROLE repl").unwrap();
    caught_up(&mut c, &mut on_standby);
    for node in [&primary, &standby] {
        connect(node, "app", "second").unwrap();
        assert_eq!(
            sqlstate(&connect(node, "repl", "x").err().unwrap()),
            "28P01"
        );
    }

    // A crash after a role change's record is durable and before its
    // users file is written: recovery replays the record.
    let before = primary.dir.join("users.before");
    std::fs::copy(primary.dir.join("users"), &before).unwrap();
    c.batch_execute("ALTER ROLE app PASSWORD 'third'").unwrap();
    primary.kill9();
    std::fs::rename(&before, primary.dir.join("users")).unwrap();
    primary.start();
    connect(&primary, "app", "third").unwrap();
    assert!(connect(&primary, "app", "second").is_err());
}

#[test]
fn a_role_with_nologin_may_not_connect_until_a_superuser_allows_it() {
    let mut primary = Node::init("");
    primary.start();
    let mut standby = Node::basebackup(&primary, "s1", &[]);
    standby.start();
    let mut c = primary.client();
    c.batch_execute(
        // CREATE ROLE means NOLOGIN unless it says LOGIN, as in
        // PostgreSQL; CREATE USER means LOGIN.
        "ALTER ROLE tester PASSWORD 's3cret'; CREATE ROLE app REPLICATION PASSWORD 'pw'; \
         CREATE USER reader PASSWORD 'r'",
    )
    .unwrap();
    // Some superuser keeps the right to log in, or nobody could manage
    // roles again.
    let e = c.batch_execute("ALTER ROLE tester NOLOGIN").unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert!(
        message(&e).contains("no superuser that may log in"),
        "{e:?}"
    );
    caught_up(&mut c, &mut standby.client());
    assert!(std::fs::read_to_string(standby.dir.join("users"))
        .unwrap()
        .contains("\napp:replication,nologin:SCRAM-SHA-256$"));

    require_scram(&primary);
    require_scram(&standby);
    for node in [&primary, &standby] {
        // A wrong password is told nothing about NOLOGIN.
        assert_eq!(
            sqlstate(&connect(node, "app", "wrong").err().unwrap()),
            "28P01"
        );
        let e = connect(node, "app", "pw").err().unwrap();
        assert_eq!(sqlstate(&e), "28000");
        assert_eq!(message(&e), "role \"app\" is not permitted to log in");
        connect(node, "reader", "r").unwrap();
    }
    // Replication connections too.
    let waldir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(pg_bin("pg_receivewal"))
        .args([
            "-d",
            &format!("host=127.0.0.1 port={} user=app password=pw", primary.port),
        ])
        .arg("-D")
        .arg(waldir.path())
        .arg("--no-loop")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("not permitted to log in"), "{stderr}");

    let mut c = connect(&primary, "tester", "s3cret").unwrap();
    c.batch_execute("ALTER ROLE app LOGIN").unwrap();
    caught_up(&mut c, &mut connect(&standby, "tester", "s3cret").unwrap());
    for node in [&primary, &standby] {
        let mut app = connect(node, "app", "pw").unwrap();
        // A role that is not a superuser may not change its own login.
        if node.port == primary.port {
            let e = app.batch_execute("ALTER ROLE app NOLOGIN").unwrap_err();
            assert_eq!(sqlstate(&e), "42501");
        }
    }
}

#[test]
fn psql_password_sets_a_password_walship_accepts() {
    let mut node = Node::init("");
    node.start();
    node.client()
        .batch_execute("CREATE ROLE app LOGIN")
        .unwrap();
    // psql reads the new password from the terminal, or from its stdin
    // when it has none (setsid: no controlling terminal). Without a name,
    // \password asks for the session's role and changes its password.
    let mut psql = std::process::Command::new("setsid")
        .arg("-w")
        .arg(pg_bin("psql"))
        .args(["-X", "-h", "127.0.0.1", "-p", &node.port.to_string()])
        .args(["-U", "app", "-d", "walship", "-c", "\\password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    psql.stdin
        .take()
        .unwrap()
        .write_all(b"from-psql\nfrom-psql\n")
        .unwrap();
    let out = psql.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let users = std::fs::read_to_string(node.dir.join("users")).unwrap();
    assert!(!users.contains("from-psql"), "{users}");
    require_scram(&node);
    connect(&node, "app", "from-psql").unwrap();
}

#[test]
fn a_non_ascii_password_set_in_sql_is_the_one_psql_logs_in_with() {
    let mut node = Node::init("");
    node.start();
    // U+2168 (ROMAN NUMERAL NINE) and U+00A0 (NO-BREAK SPACE): SASLprep,
    // which libpq applies before it proves a password, turns them into
    // "IX" and a space, so the server must hash the same prepared text.
    let password = "\u{2168}\u{a0}caf\u{e9}";
    node.client()
        .batch_execute(&format!("CREATE ROLE app LOGIN PASSWORD '{password}'"))
        .unwrap();
    require_scram(&node);
    let psql = |password: &str| {
        std::process::Command::new(pg_bin("psql"))
            .args([
                "-X",
                "-w",
                "-At",
                "-h",
                "127.0.0.1",
                "-p",
                &node.port.to_string(),
            ])
            .args(["-U", "app", "-d", "walship", "-c", "SELECT current_user"])
            .env("PGPASSWORD", password)
            .output()
            .unwrap()
    };
    let out = psql(password);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app");
    // The prepared form is the same password; another one is not.
    assert!(psql("IX caf\u{e9}").status.success());
    let wrong = psql("IX cafe");
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}

#[test]
fn a_hand_edit_reloaded_on_the_primary_reaches_standbys_and_survives_a_crash() {
    let mut primary = Node::init("");
    primary.start();
    let mut standby = Node::basebackup(&primary, "s1", &[]);
    standby.start();
    let mut c = primary.client();
    // A role change after the last checkpoint: crash recovery replays it.
    c.batch_execute("CREATE ROLE mallory LOGIN SUPERUSER PASSWORD 'm'")
        .unwrap();
    caught_up(&mut c, &mut standby.client());
    let users = primary.dir.join("users");
    let text = std::fs::read_to_string(&users).unwrap();
    let edited: String = text
        .lines()
        .filter(|l| !l.starts_with("mallory:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(edited, text);
    std::fs::write(&users, &edited).unwrap();
    primary.signal(Signal::SIGHUP);
    assert!(primary.wait_log("edited by hand"), "{}", primary.log());
    caught_up(&mut c, &mut standby.client());
    assert!(!std::fs::read_to_string(standby.dir.join("users"))
        .unwrap()
        .contains("mallory"));
    // Reloading the same file again changes nothing and logs nothing.
    primary.reload();
    assert_eq!(primary.log().matches("edited by hand").count(), 1);
    primary.kill9();
    primary.start();
    assert!(!std::fs::read_to_string(&users).unwrap().contains("mallory"));
    require_scram(&primary);
    assert_eq!(
        sqlstate(&connect(&primary, "mallory", "m").err().unwrap()),
        "28P01"
    );
}

/// The salt a node offers `user` in its SCRAM server-first message.
fn offered_salt(node: &Node, user: &str) -> String {
    use std::io::{Read, Write};
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for part in ["user", user, "database", "walship", ""] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend(body);
    let first = b"n,,n=,r=abcdefghijklmnop";
    let mut sasl = b"SCRAM-SHA-256\0".to_vec();
    sasl.extend_from_slice(&(first.len() as i32).to_be_bytes());
    sasl.extend_from_slice(first);
    out.push(b'p');
    out.extend_from_slice(&((sasl.len() + 4) as i32).to_be_bytes());
    out.extend(sasl);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(&out).unwrap();
    let mut header = [0u8; 5];
    loop {
        s.read_exact(&mut header).unwrap();
        let len = i32::from_be_bytes(header[1..].try_into().unwrap()) as usize - 4;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        assert_eq!(header[0], b'R', "{}", String::from_utf8_lossy(&body));
        // AuthenticationSASLContinue: r=…,s=SALT,i=…
        if body[..4] == 11i32.to_be_bytes() {
            let text = String::from_utf8(body[4..].to_vec()).unwrap();
            return text
                .split(',')
                .find_map(|f| f.strip_prefix("s="))
                .unwrap()
                .to_string();
        }
    }
}

#[test]
fn a_missing_role_is_offered_the_same_salt_by_every_node_and_after_a_restart() {
    let mut primary = Node::init("");
    primary.start();
    let mut standby = Node::basebackup(&primary, "s1", &[]);
    standby.start();
    primary
        .client()
        .batch_execute("ALTER ROLE tester PASSWORD 'pw'")
        .unwrap();
    caught_up(&mut primary.client(), &mut standby.client());
    require_scram(&primary);
    require_scram(&standby);
    // A real role's salt is its verifier's, on every node; a missing
    // role's must not differ in any way a client can see.
    for user in ["tester", "nobody"] {
        let salt = offered_salt(&primary, user);
        assert_eq!(offered_salt(&standby, user), salt, "{user}");
        assert_eq!(offered_salt(&primary, user), salt, "{user}");
    }
    assert_ne!(
        offered_salt(&primary, "nobody"),
        offered_salt(&primary, "nobody2")
    );
    let before = offered_salt(&primary, "nobody");
    primary.stop();
    primary.start();
    assert_eq!(offered_salt(&primary, "nobody"), before);
    // Another system has another secret.
    let mut other = Node::init("authentication = scram-sha-256");
    other.start();
    assert_ne!(offered_salt(&other, "nobody"), before);
}

#[test]
fn switching_to_passwords_with_no_superuser_password_is_said_loudly() {
    let mut node = Node::init("authentication = scram-sha-256");
    node.start();
    assert!(
        node.wait_log("no superuser has a password in"),
        "{}",
        node.log()
    );
    let pwfile = node.root.path().join("pw");
    std::fs::write(&pwfile, "secret\n").unwrap();
    let mut with_password = Node::init_with(
        "authentication = scram-sha-256",
        &["--pwfile", pwfile.to_str().unwrap()],
    );
    with_password.start();
    connect(&with_password, "tester", "secret").unwrap();
    assert!(!with_password.log().contains("no superuser has a password"));
}
