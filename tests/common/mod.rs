//! Helpers shared by the integration tests: the walship binary, and
//! PostgreSQL 15 clusters each test starts and stops itself.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// PostgreSQL 15's binaries, where Debian puts them.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The path of a PostgreSQL 15 program; tests that need one fail with the
/// install hint when it is missing.
pub fn pg_bin(name: &str) -> PathBuf {
    let p = PathBuf::from(PG_BIN).join(name);
    assert!(
        p.exists(),
        "{} is missing: PostgreSQL 15 is required for interop tests (apt-get install postgresql-15)",
        p.display()
    );
    p
}

/// Polls `f` every 20 ms until it holds; fails the test, naming `what`,
/// after 30 s (generous: a test machine's disk can stall for seconds).
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs the real `walship` binary.
pub fn walship(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(args)
        .output()
        .expect("run walship")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command that runs as the `postgres` user when we are root
/// (PostgreSQL refuses to run as root), as ourselves otherwise.
pub fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn check(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temporary PostgreSQL 15 cluster listening only on a unix socket in its
/// own directory; stopped and removed on drop.
pub struct PgCluster {
    pub root: tempfile::TempDir,
    pub data: PathBuf,
    running: bool,
}

impl PgCluster {
    /// initdb with the given WAL segment size (MiB).
    pub fn init(wal_segsize_mib: u32) -> PgCluster {
        let root = tempfile::Builder::new()
            .prefix("walship-pg-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        if is_root() {
            let out = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(root.path())
                .output()
                .expect("chown");
            check("chown", out);
        }
        let data = root.path().join("data");
        let out = pg_command(&pg_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .arg(format!("--wal-segsize={wal_segsize_mib}"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .expect("run initdb");
        check("initdb", out);
        PgCluster {
            root,
            data,
            running: false,
        }
    }

    /// A standby of `primary` made with pg_basebackup, with
    /// `standby.signal` and `conf` appended to its postgresql.auto.conf;
    /// not started.
    pub fn standby_of(primary: &PgCluster, conf: &str) -> PgCluster {
        let root = tempfile::Builder::new()
            .prefix("walship-pg-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        if is_root() {
            let out = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(root.path())
                .output()
                .expect("chown");
            check("chown", out);
        }
        let data = root.path().join("data");
        let out = pg_command(&pg_bin("pg_basebackup"))
            .arg("-h")
            .arg(primary.socket_dir())
            .args(["-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("run pg_basebackup");
        check("pg_basebackup", out);
        let auto = data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        text.push_str(conf);
        text.push('\n');
        let out = pg_command(Path::new("/bin/sh"))
            .arg("-c")
            .arg(format!(
                "printf '%s' \"$1\" > {} && touch {}",
                auto.display(),
                data.join("standby.signal").display()
            ))
            .arg("sh")
            .arg(&text)
            .output()
            .expect("write standby configuration");
        check("write standby configuration", out);
        PgCluster {
            root,
            data,
            running: false,
        }
    }

    pub fn socket_dir(&self) -> &Path {
        self.root.path()
    }

    pub fn start(&mut self) {
        let opts = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off -c max_wal_size=64MB -c wal_keep_size=64MB",
            self.socket_dir().display()
        );
        let out = pg_command(&pg_bin("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-l"])
            .arg(self.root.path().join("log"))
            .args(["-o", &opts, "start"])
            .output()
            .expect("run pg_ctl start");
        check("pg_ctl start", out);
        self.running = true;
    }

    pub fn stop(&mut self) {
        if self.running {
            let out = pg_command(&pg_bin("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-m", "fast", "stop"])
                .output()
                .expect("run pg_ctl stop");
            self.running = false;
            check("pg_ctl stop", out);
        }
    }

    /// Runs SQL with psql; returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let out = pg_command(&pg_bin("psql"))
            .arg("-h")
            .arg(self.socket_dir())
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        check("psql", out).trim().to_string()
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.data.join("pg_wal")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = pg_command(&pg_bin("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-m", "immediate", "stop"])
                .output();
        }
    }
}

/// A mixed workload: DDL, inserts, updates, deletes, a large row, TOAST,
/// an index, segment switches and a checkpoint.
pub fn mixed_workload(pg: &PgCluster) {
    pg.psql("CREATE TABLE t (id int primary key, v text)");
    pg.psql("INSERT INTO t SELECT g, repeat('x', g % 200) FROM generate_series(1, 5000) g");
    pg.psql("SELECT pg_switch_wal()");
    pg.psql("UPDATE t SET v = v || 'y' WHERE id % 3 = 0");
    pg.psql("DELETE FROM t WHERE id % 7 = 0");
    pg.psql("INSERT INTO t VALUES (100000, repeat(md5('a'), 5000))");
    pg.psql("CREATE INDEX ON t (v)");
    pg.psql("CHECKPOINT");
    pg.psql("BEGIN; INSERT INTO t VALUES (100001, 'rolled back'); ROLLBACK");
    pg.psql("SELECT pg_switch_wal()");
    pg.psql("INSERT INTO t SELECT g, 'z' FROM generate_series(200000, 201000) g");
}

/// Counts the record lines pg_waldump prints walking the segments of `dir`
/// from its first to its last.
pub fn pg_waldump_records(dir: &Path) -> usize {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read WAL directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    let out = Command::new(pg_bin("pg_waldump"))
        .arg("--path")
        .arg(dir)
        .arg(names.first().expect("a segment"))
        .arg(names.last().expect("a segment"))
        .output()
        .expect("run pg_waldump");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("rmgr:"))
        .count()
}

/// A walship node the test runs: `walship init` in a temp dir, then
/// `walship server` on an ephemeral loopback port. Killed on drop.
pub struct Node {
    pub root: tempfile::TempDir,
    pub dir: PathBuf,
    pub port: u16,
    child: Option<std::process::Child>,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    /// The thread copying the running server's stderr into `log`.
    log_reader: Option<std::thread::JoinHandle<()>>,
    /// Restart on the port of the first start (see [`Node::keep_port`]).
    keep_port: bool,
}

impl Node {
    /// A new data directory (1 MiB segments) with `conf` appended to
    /// walship.conf; not started.
    pub fn init(conf: &str) -> Node {
        Node::init_with(conf, &[])
    }

    pub fn init_with(conf: &str, init_args: &[&str]) -> Node {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("data");
        let mut args = vec![
            "init",
            "-D",
            dir.to_str().unwrap(),
            "--wal-segsize",
            "1",
            "-U",
            "tester",
        ];
        args.extend_from_slice(init_args);
        let out = walship(&args);
        check("walship init", out);
        if !conf.is_empty() {
            let path = dir.join("walship.conf");
            let mut text = std::fs::read_to_string(&path).unwrap();
            text.push_str(conf);
            text.push('\n');
            std::fs::write(&path, text).unwrap();
        }
        Node {
            root,
            dir,
            port: 0,
            child: None,
            log: Default::default(),
            log_reader: None,
            keep_port: false,
        }
    }

    /// A standby of `primary`, cloned with `walship basebackup` (1 MiB
    /// segments, as the primary's); not started.
    pub fn basebackup(primary: &Node, name: &str, extra: &[&str]) -> Node {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("data");
        let from = format!("host=127.0.0.1 port={} user=tester", primary.port);
        let mut args = vec![
            "basebackup",
            "--from",
            &from,
            "-D",
            dir.to_str().unwrap(),
            "--node-name",
            name,
        ];
        args.extend_from_slice(extra);
        check("walship basebackup", walship(&args));
        Node {
            root,
            dir,
            port: 0,
            child: None,
            log: Default::default(),
            log_reader: None,
            keep_port: false,
        }
    }

    /// Makes `walship restore` from `adir` this node's restore_command.
    pub fn restore_from(&self, adir: &Path) {
        self.configure(&format!(
            "restore_command = '{} restore --archive {} %f %p'",
            env!("CARGO_BIN_EXE_walship"),
            adir.display()
        ));
    }

    /// Writes a row and ends the segment, `n` times.
    pub fn complete_segments(&self, n: usize, tag: &str) {
        let mut c = self.client();
        for i in 0..n {
            c.execute("INSERT INTO kv VALUES ($1, 'v')", &[&format!("{tag}-{i}")])
                .unwrap();
            c.batch_execute("SELECT pg_switch_wal()").unwrap();
        }
    }

    /// A copy of this (stopped) node's data directory, as a node of its
    /// own; not started.
    pub fn copy(&self) -> Node {
        assert!(self.child.is_none(), "copy a stopped node");
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&self.dir)
            .arg(&dir)
            .status()
            .expect("run cp");
        assert!(status.success(), "cp -a {} failed", self.dir.display());
        Node {
            root,
            dir,
            port: 0,
            child: None,
            log: Default::default(),
            log_reader: None,
            keep_port: false,
        }
    }

    /// Runs one query (simple protocol) and returns the first column of
    /// its first row.
    pub fn query_one(&self, sql: &str) -> String {
        let rows = self
            .client()
            .simple_query(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}\n{}", self.log()));
        rows.iter()
            .find_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{sql} returned no row"))
    }

    /// The first column of every row `sql` returns (NULL as "").
    pub fn query_column(&self, sql: &str) -> Vec<String> {
        self.client()
            .simple_query(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}\n{}", self.log()))
            .iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => {
                    Some(r.get(0).unwrap_or_default().to_string())
                }
                _ => None,
            })
            .collect()
    }

    /// From now on, restarts listen on the port the node has now, so its
    /// standbys' primary_conninfo stays right.
    pub fn keep_port(&mut self) -> &mut Node {
        self.keep_port = true;
        self
    }

    /// Starts the server and waits until it listens.
    pub fn start(&mut self) -> &mut Node {
        self.start_with(&[])
    }

    /// Starts the server with extra arguments.
    pub fn start_with(&mut self, extra: &[&str]) -> &mut Node {
        self.start_env(extra, &[])
    }

    /// Starts the server with extra arguments and environment variables.
    pub fn start_env(&mut self, extra: &[&str], env: &[(&str, &str)]) -> &mut Node {
        use std::io::BufRead;
        assert!(self.child.is_none(), "already running");
        let listen = format!("127.0.0.1:{}", if self.keep_port { self.port } else { 0 });
        let mut child = Command::new(env!("CARGO_BIN_EXE_walship"))
            .args([
                "server",
                "-D",
                self.dir.to_str().unwrap(),
                "--listen",
                &listen,
            ])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start walship server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        self.log_reader = Some(std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("listening") {
                    if let Some(port) = line.rsplit("127.0.0.1:").next().and_then(|p| {
                        p.trim_end_matches(|c: char| !c.is_ascii_digit())
                            .parse::<u16>()
                            .ok()
                    }) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(port);
                        }
                    }
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        }));
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(port) => self.port = port,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "walship server did not start:\n{}",
                    self.log.lock().unwrap()
                );
            }
        }
        self.child = Some(child);
        self
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=tester dbname=walship connect_timeout=10",
            self.port
        )
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.conninfo(), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to walship: {e}\n{}", self.log.lock().unwrap()))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// kill -9, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.drain_log();
    }

    /// Lets the log reader take the last lines an exited server wrote (up
    /// to 5 s: a child the server started may still hold its stderr).
    fn drain_log(&mut self) {
        if let Some(reader) = self.log_reader.take() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !reader.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Sends SIGHUP and waits until the server has reloaded walship.conf
    /// once more (a check of the log alone could find an earlier reload).
    pub fn reload(&self) {
        let reloads = |node: &Node| node.log().matches("reloaded walship.conf").count();
        let before = reloads(self);
        self.signal(nix::sys::signal::Signal::SIGHUP);
        wait_until("walship.conf to be reloaded", || reloads(self) > before);
    }

    /// Appends a line to walship.conf.
    pub fn configure(&self, line: &str) {
        let path = self.dir.join("walship.conf");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(line);
        text.push('\n');
        std::fs::write(&path, text).unwrap();
    }

    /// SIGTERM; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
        let status = c.wait().unwrap();
        self.drain_log();
        status
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to 30 s for the server's log to contain `pattern`.
    pub fn wait_log(&self, pattern: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if self.log().contains(pattern) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A tmpfs mounted over a directory, lazily unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount's syntax: "4m") over `dir`; `None`
    /// when this machine does not allow it (not root).
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status();
        mounted
            .is_ok_and(|s| s.success())
            .then(|| Tmpfs(dir.to_path_buf()))
    }

    /// Remounts with other options ("size=16m", "ro", "rw").
    pub fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {options} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A command's standard error, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `walship archive --archive ADIR -D node.dir EXTRA...`.
pub fn archive(adir: &Path, node: &Node, extra: &[&str]) -> Output {
    let mut args = vec![
        "archive",
        "--archive",
        adir.to_str().unwrap(),
        "-D",
        node.dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    walship(&args)
}

/// `walship restore --archive ADIR NAME DEST --prefetch DEPTH`.
pub fn restore(adir: &Path, name: &str, dest: &Path, prefetch: usize) -> Output {
    walship(&[
        "restore",
        "--prefetch",
        &prefetch.to_string(),
        "--archive",
        adir.to_str().unwrap(),
        name,
        dest.to_str().unwrap(),
    ])
}

/// The names in `dir` ending with `suffix`, sorted; none if it is missing.
pub fn file_names(dir: &Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A `walship` process running in the background (an archiver daemon);
/// killed if the test ends — or fails — while it runs.
pub struct Background(std::process::Child);

impl Background {
    /// Starts `walship ARGS`, its standard error to `stderr`.
    pub fn walship(args: &[&str], stderr: std::process::Stdio) -> Background {
        let child = Command::new(env!("CARGO_BIN_EXE_walship"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start walship");
        Background(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits up to 30 s for it to exit by itself; its exit status.
    pub fn wait_exit(mut self) -> std::process::ExitStatus {
        let mut status = None;
        wait_until("walship to exit", || {
            status = self.0.try_wait().expect("wait for walship");
            status.is_some()
        });
        status.unwrap()
    }

    /// Stops it with SIGTERM; its exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).expect("SIGTERM");
        self.0.wait().expect("wait for walship")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP proxy on 127.0.0.1 the test controls: it forwards to a target
/// port until [`Proxy::cut`] drops every connection and refuses new ones
/// (a partition), and [`Proxy::heal`] lets them through again.
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, s) = (cut.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    }
                };
                if c.load(Ordering::Acquire) {
                    continue; // dropped: the partition refuses it
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let (c, s) = (c.clone(), s.clone());
                    std::thread::spawn(move || pump(from, to, &c, &s));
                }
            }
        });
        Proxy { port, cut, stop }
    }

    /// Partitions: drops every connection, refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.cut();
    }
}

/// Copies bytes one way until either side closes or the proxy cuts.
fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    cut: &std::sync::atomic::AtomicBool,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    from.set_read_timeout(Some(std::time::Duration::from_millis(20)))
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    while !cut.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Cut while it read: what was read is lost, as on a wire.
                if cut.load(Ordering::Acquire) || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// A proxy that passes the server's messages whole and, once `stall` is
/// set, passes `then` more on each connection open then — and, with
/// `half`, the first half of the next — and holds the rest back: a stream
/// cut off between the parts of a record, or in the middle of a message.
/// Connections opened later pass everything.
pub struct MessageProxy {
    pub port: u16,
    pub stall: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl MessageProxy {
    pub fn start(target: u16, then: usize, half: bool) -> MessageProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stall = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stalling = stall.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut from_client, &mut to_server));
                let (mut from_server, mut to_client) = (server, client);
                let stall = stalling.clone();
                let opened_stalled = stall.load(Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut passed = 0;
                    loop {
                        let mut message = vec![0u8; 5];
                        if from_server.read_exact(&mut message).is_err() {
                            return;
                        }
                        let len = u32::from_be_bytes(message[1..5].try_into().unwrap()) as usize;
                        message.resize(1 + len.max(4), 0);
                        if from_server.read_exact(&mut message[5..]).is_err() {
                            return;
                        }
                        if stall.load(Ordering::SeqCst) && !opened_stalled {
                            if passed >= then {
                                if half {
                                    let _ = to_client.write_all(&message[..message.len() / 2]);
                                }
                                std::thread::sleep(std::time::Duration::from_secs(3600));
                            }
                            passed += 1;
                        }
                        if to_client.write_all(&message).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        MessageProxy { port, stall }
    }
}

/// The name of the 1 MiB segment on timeline 1 that holds `lsn` (`X/X`).
pub fn segment_of(lsn: &str) -> String {
    let (hi, lo) = lsn.split_once('/').unwrap();
    let lsn = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    let segno = lsn >> 20;
    format!("00000001{:08X}{:08X}", segno / 4096, segno % 4096)
}

/// Inserts 300 kB values into `node` (a primary on timeline 1), at least
/// `at_least` of them, until one runs on from a segment into the next;
/// returns the name of that next segment, now the current one.
pub fn write_until_a_record_crosses_segments(node: &Node, at_least: usize) -> String {
    let mut c = node.client();
    let big = "v".repeat(300_000);
    for i in 0..100 {
        c.execute(
            "INSERT INTO kv VALUES ($1, $2)",
            &[&format!("big-{i}"), &big],
        )
        .unwrap();
        let current = segment_of(&node.query_one("SELECT pg_current_wal_lsn()"));
        // XLP_FIRST_IS_CONTRECORD on the current segment's first page.
        let first_page = std::fs::read(node.dir.join("wal").join(&current)).unwrap();
        if i + 1 >= at_least && first_page[2] & 1 == 1 {
            return current;
        }
    }
    panic!("no record ran on into a new segment");
}
