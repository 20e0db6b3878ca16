//! `walship demo`: a guided tour on loopback, in a temporary directory.
//!
//! It drives the real `walship` binary as an operator would — init a
//! primary, clone a synchronous standby with basebackup, start a
//! continuous archiver, write from a few clients while showing replication
//! and archiving, kill the primary with SIGKILL, promote the standby (the
//! fence command makes sure the old primary is dead), show that every
//! acknowledged write survived, restart the old primary and show it
//! fenced — narrating each step.
//!
//! Invariant: every process it starts is stopped, and the directory
//! removed, however the tour ends (see [`Tour`]'s `Drop`, and
//! [`stop_on_signals`] for SIGTERM, SIGINT and SIGHUP), unless the operator
//! asked to keep it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::replication::client::Client;
use crate::replication::conninfo::ConnInfo;
use crate::replication::status;

/// How long the clients write.
const WRITE_FOR: Duration = Duration::from_secs(4);
/// How many clients write at once.
const CLIENTS: usize = 4;
/// The role the demo's nodes are created with.
const USER: &str = "walship";

/// The pids of the processes the tour runs, for [`stop_on_signals`]; held
/// while one is started, so none escapes it.
static BACKGROUND: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Blocks SIGTERM, SIGINT and SIGHUP here (and so in every thread started
/// after; the processes the tour starts get an empty mask from `Command`),
/// and waits for them on a thread of its own: one stops the tour's
/// background processes, removes `dir` unless `keep`, and exits, as the
/// tour's own end would have. Without this a SIGTERM (a service manager, a
/// `timeout`) or the hangup of a closed terminal killed the tour alone and
/// left its servers running.
fn stop_on_signals(dir: PathBuf, keep: bool) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().context("could not block signals")?;
    std::thread::spawn(move || {
        let Ok(signal) = set.wait() else {
            return;
        };
        say(&format!(
            "\n{signal} received: stopping the tour's servers."
        ));
        // Held until the exit: the tour starts nothing more meanwhile.
        let running = BACKGROUND.lock().unwrap_or_else(|p| p.into_inner());
        clean_up(&running, &dir, keep);
        std::process::exit(128 + signal as i32);
    });
    Ok(())
}

/// Stops the processes `pids` (SIGTERM, then SIGKILL for one still there
/// after 10 s), reaps them, and removes `dir` unless `keep`: how the tour
/// ends, whatever ends it.
fn clean_up(pids: &[u32], dir: &Path, keep: bool) {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;
    let pids: Vec<Pid> = pids.iter().map(|&p| Pid::from_raw(p as i32)).collect();
    for &pid in &pids {
        let _ = kill(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for &pid in &pids {
        while !matches!(
            waitpid(pid, Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_)
        ) {
            if Instant::now() > deadline {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if !keep {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// One running `walship` process of the tour.
struct Process {
    name: &'static str,
    child: Child,
}

/// The tour's directory and processes; stops them all on drop.
struct Tour {
    exe: PathBuf,
    dir: PathBuf,
    keep: bool,
    processes: Vec<Process>,
}

impl Drop for Tour {
    fn drop(&mut self) {
        let pids: Vec<u32> = self.processes.iter().map(|p| p.child.id()).collect();
        clean_up(&pids, &self.dir, self.keep);
    }
}

fn say(text: &str) {
    println!("{text}");
    let _ = std::io::stdout().flush();
}

fn step(n: usize, text: &str) {
    say(&format!("\n{n}. {text}"));
}

/// Two different ports on 127.0.0.1 nobody listens on right now (both
/// held until both are chosen, so they differ).
fn free_ports() -> anyhow::Result<(u16, u16)> {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").context("could not find a free port");
    let (a, b) = (bind()?, bind()?);
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

fn conninfo(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user={USER} dbname=walship connect_timeout=2")
}

fn connect(port: u16) -> anyhow::Result<Client> {
    let info = ConnInfo::parse(&conninfo(port))?;
    Ok(Client::connect(&info, None)?)
}

/// The first column of the first row of `sql`'s answer.
fn query_one(port: u16, sql: &str) -> anyhow::Result<String> {
    let rows = connect(port)?.query(sql)?;
    let col = rows.columns.first().cloned().unwrap_or_default();
    Ok(rows.text(0, &col).unwrap_or_default())
}

fn append_conf(dir: &Path, lines: &[(&str, String)]) -> anyhow::Result<()> {
    crate::node::config::append_settings(&dir.join("walship.conf"), "walship demo", lines)?;
    Ok(())
}

impl Tour {
    /// Runs `walship ARGS` to completion; its output, or an error with it.
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let child = {
            let mut running = BACKGROUND.lock().unwrap_or_else(|p| p.into_inner());
            let child = Command::new(&self.exe)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("could not run {}", self.exe.display()))?;
            running.push(child.id());
            child
        };
        let pid = child.id();
        let out = child
            .wait_with_output()
            .with_context(|| format!("could not run {}", self.exe.display()))?;
        BACKGROUND
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&p| p != pid);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("walship {} failed ({}): {text}", args.join(" "), out.status);
        }
        Ok(text)
    }

    /// Starts `walship ARGS` in the background, its log in DIR/NAME.log.
    fn spawn(&mut self, name: &'static str, args: &[&str]) -> anyhow::Result<u32> {
        let log_path = self.dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut running = BACKGROUND.lock().unwrap_or_else(|p| p.into_inner());
        let child = Command::new(&self.exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("could not start walship {}", args.join(" ")))?;
        let pid = child.id();
        running.push(pid);
        drop(running);
        self.processes.push(Process { name, child });
        Ok(pid)
    }

    /// Starts a server and waits until it answers.
    fn start_server(&mut self, name: &'static str, dir: &Path, port: u16) -> anyhow::Result<u32> {
        let pid = self.spawn(name, &["server", "-D", &dir.to_string_lossy()])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while connect(port).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "{name} did not start within 30 s; its log is {}",
                    self.dir.join(format!("{name}.log")).display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pid)
    }

    /// SIGKILLs the process called `name` and reaps it.
    fn kill9(&mut self, name: &str) -> anyhow::Result<()> {
        let i = self
            .processes
            .iter()
            .position(|p| p.name == name)
            .context("no such process")?;
        let mut p = self.processes.remove(i);
        p.child.kill()?;
        p.child.wait()?;
        Ok(())
    }
}

/// Runs the tour. `keep`: leave the directory (logs, data directories,
/// archive) for exploring; every process is stopped either way.
pub fn run(keep: Option<PathBuf>) -> anyhow::Result<()> {
    let began = Instant::now();
    let exe = std::env::current_exe().context("cannot find the walship binary")?;
    let dir = match &keep {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("walship-demo-{}", std::process::id())),
    };
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} is not empty: choose a new directory", dir.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    stop_on_signals(dir.clone(), keep.is_some())?;
    let mut tour = Tour {
        exe,
        dir: dir.clone(),
        keep: keep.is_some(),
        processes: Vec::new(),
    };
    let d = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (primary, standby, archive) = (d("primary"), d("standby"), d("archive"));
    let (p1, p2) = free_ports()?;
    say(&format!(
        "walship demo: a primary, a synchronous standby, an archive and a failover, all on \
         127.0.0.1, in {}.",
        dir.display()
    ));

    step(1, "A new primary: `walship init` makes a data directory with a new system identifier, epoch 1, timeline 1.");
    tour.run(&[
        "init",
        "-D",
        &primary,
        "-U",
        USER,
        "--wal-segsize",
        "1",
        "--node-name",
        "primary",
    ])?;
    append_conf(
        Path::new(&primary),
        &[
            ("port", p1.to_string()),
            ("archive_mode", "on".into()),
            ("archive_timeout", "1s".into()),
            ("archive_directory", archive.clone()),
            ("synchronous_standby_names", "s1".into()),
        ],
    )?;
    let old_pid = tour.start_server("primary", Path::new(&primary), p1)?;
    say(&format!("   The primary listens on 127.0.0.1:{p1} (pid {old_pid}). It archives, and commits wait for standby s1 (synchronous_standby_names = 's1')."));

    step(
        2,
        "A standby: `walship basebackup` clones the running primary over the replication protocol.",
    );
    let from = conninfo(p1);
    tour.run(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        &standby,
        "--node-name",
        "s1",
        "--slot",
        "s1",
        "--create-slot",
    ])?;
    // The copied walship.conf names s1 as the synchronous standby; once
    // promoted, s1 has no standby of its own and must not wait for one.
    append_conf(
        Path::new(&standby),
        &[
            ("port", p2.to_string()),
            ("synchronous_standby_names", String::new()),
        ],
    )?;
    tour.start_server("standby", Path::new(&standby), p2)?;
    say(&format!("   Standby s1 listens on 127.0.0.1:{p2}, streams from the primary through slot s1, and replays as it goes."));

    step(3, "An archiver: `walship archive --follow` ships each completed WAL segment, verified, within a second.");
    tour.spawn(
        "archiver",
        &["archive", "--archive", &archive, "-D", &primary, "--follow"],
    )?;

    step(4, &format!("{CLIENTS} clients write for {} seconds; every commit returns only once s1 has flushed it.", WRITE_FOR.as_secs()));
    let acked = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failures = std::thread::scope(|s| -> anyhow::Result<Vec<String>> {
        let writers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (acked, stop) = (&acked, &stop);
                s.spawn(move || -> Result<(), String> {
                    let mut client = connect(p1).map_err(|e| e.to_string())?;
                    let mut i = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        client
                            .query(&format!("INSERT INTO kv VALUES ('client{c}-{i:06}', 'written by client {c}')"))
                            .map_err(|e| e.to_string())?;
                        acked.fetch_add(1, Ordering::AcqRel);
                        i += 1;
                    }
                    Ok(())
                })
            })
            .collect();
        let until = Instant::now() + WRITE_FOR;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_secs(1));
            say(&format!(
                "   {:>6} commits acknowledged | {}",
                acked.load(Ordering::Acquire),
                replication_line(p1)
            ));
        }
        stop.store(true, Ordering::Release);
        Ok(writers
            .into_iter()
            .filter_map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("a writer panicked".into()))
                    .err()
            })
            .collect())
    })?;
    if let Some(f) = failures.first() {
        bail!("a client's write failed: {f}");
    }
    let acked = acked.load(Ordering::Acquire);
    let lsn = query_one(p1, "SELECT pg_current_wal_flush_lsn()")?;
    query_one(p2, &format!("WAIT FOR LSN '{lsn}' WITH (TIMEOUT '10s')"))?;
    say(&format!(
        "   {acked} commits acknowledged. The standby has replayed to {lsn}: {} rows there too.",
        query_one(p2, "SELECT count(*) FROM kv")?
    ));
    say(&indent(&status::fetch(&ConnInfo::parse(&from)?)?.to_text()));

    step(5, "The primary crashes: SIGKILL, no goodbye to anyone.");
    tour.kill9("primary")?;
    say(&format!(
        "   pid {old_pid} is gone; clients now get \"connection refused\"."
    ));

    step(6, "Promotion: `walship promote` fences the old primary first, so there are never two primaries.");
    say("   It cannot reach the dead primary to fence it over the protocol, so the fence command must");
    say("   prove it is down (in production: power it off through IPMI, or cut its network).");
    let fence = format!("! kill -0 {old_pid} 2>/dev/null");
    say(&format!(
        "   $ walship promote -D {standby} --fence-command '{fence}' --wait"
    ));
    let began_promote = Instant::now();
    let out = tour.run(&[
        "promote",
        "-D",
        &standby,
        "--fence-command",
        &fence,
        "--wait",
    ])?;
    say(&indent(out.trim_end()));
    query_one(
        p2,
        "INSERT INTO kv VALUES ('after-failover', 'the new primary takes writes')",
    )?;
    say(&format!(
        "   The new primary took its first write {} ms after `walship promote` began.",
        began_promote.elapsed().as_millis()
    ));
    let rows: u64 = query_one(p2, "SELECT count(*) FROM kv WHERE key LIKE 'client%'")?.parse()?;
    say(&format!(
        "   Every acknowledged commit survived the crash: {rows} of {acked} rows are on the new primary."
    ));
    if rows < acked {
        bail!(
            "{} acknowledged commits are missing on the new primary",
            acked - rows
        );
    }

    step(7, "The old primary comes back, as crashed machines do.");
    tour.start_server("old-primary", Path::new(&primary), p1)?;
    say("   It reads the archive's epoch as it starts, sees epoch 2 > its own 1, and fences itself:");
    match connect(p1)?.query("INSERT INTO kv VALUES ('split', 'brain')") {
        Ok(_) => bail!("the old primary took a write after the promotion"),
        Err(e) => say(&format!("   INSERT on the old primary -> {e}")),
    }
    say(&indent(&status::fetch(&ConnInfo::parse(&from)?)?.to_text()));

    step(8, "Cleaning up: every process stopped.");
    drop(tour);
    match keep {
        Some(d) => say(&format!(
            "   Kept {} (data directories, archive, logs) for you to explore.",
            d.display()
        )),
        None => say(&format!("   Removed {}.", dir.display())),
    }
    say(&format!(
        "\nThe tour took {:.1} s. Next: README.md's runbook, and `man -l man/walship.1`.",
        began.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// One line on standby s1 and the archiver, from the primary's views.
fn replication_line(port: u16) -> String {
    let line = || -> anyhow::Result<String> {
        let mut c = connect(port)?;
        let r = c.query("SELECT application_name, sync_state, sent_lsn, flush_lsn, replay_lsn, replay_lag_bytes FROM pg_stat_replication")?;
        let a = c.query("SELECT last_archived_wal FROM pg_stat_archiver")?;
        let t = |col: &str| r.text(0, col).unwrap_or_else(|| "-".into());
        Ok(format!(
            "{} ({}): sent {}, flushed {}, replayed {} ({} bytes behind) | last archived: {}",
            t("application_name"),
            t("sync_state"),
            t("sent_lsn"),
            t("flush_lsn"),
            t("replay_lsn"),
            t("replay_lag_bytes"),
            a.text(0, "last_archived_wal")
                .unwrap_or_else(|| "nothing yet".into())
        ))
    };
    line().unwrap_or_else(|e| format!("(status unavailable: {e})"))
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("   | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
