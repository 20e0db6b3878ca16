//! kill -9 of a process appending and flushing from several threads, many
//! times: every record whose flush returned is read back intact, the chain
//! of records stays whole, and the writer resumes exactly at the end.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::ops::ControlFlow;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use walship::wal::format::RM_WALSHIP_ID;
use walship::wal::reader::{walk, SegmentFiles, WalkEnd};
use walship::wal::segment::list_segments;
use walship::wal::{Decoder, Expect, Lsn, SegNo, SegmentSize, TimelineId, WalWriter, WriterConfig};

const CHILD_ENV: &str = "WALSHIP_CRASH_CHILD_DIR";
const THREADS: u32 = 4;

fn config(dir: &Path) -> WriterConfig {
    WriterConfig {
        dir: dir.to_path_buf(),
        seg_size: SegmentSize::from_mib(1).unwrap(),
        system_id: 7_400_000_000_000_000_001,
        timeline: TimelineId::FIRST,
        mark_ready: false,
    }
}

/// The child: appends records named `run.thread.seq` (padded to a size that
/// varies so records span pages and segments) and prints `ack NAME LSN`
/// after each flush returns, until it is killed.
#[test]
#[ignore = "run by crash_loop as a child process"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let run: u32 = std::env::var("WALSHIP_CRASH_RUN").unwrap().parse().unwrap();
    let (w, _) = WalWriter::open(config(Path::new(&dir)), None, &mut |_| {}).unwrap();
    let out = std::sync::Mutex::new(std::io::stdout());
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (w, out) = (&w, &out);
            s.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(run * 100 + t));
                for seq in 0.. {
                    let name = format!("{run}.{t}.{seq}");
                    let pad = if rng.gen_ratio(1, 20) {
                        rng.gen_range(1000..30000)
                    } else {
                        rng.gen_range(0..200)
                    };
                    let mut data = name.clone().into_bytes();
                    data.push(b'|');
                    data.extend((0..pad).map(|i| (i % 251) as u8));
                    let a = w.append(RM_WALSHIP_ID, 0x20, t, &data).unwrap();
                    w.flush(a.end).unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ack {name} {}", a.lsn).unwrap();
                    o.flush().unwrap();
                }
            });
        }
    });
}

fn expected_data(name: &str) -> Vec<u8> {
    // Rebuilt from the record itself: the name, '|', then the pad pattern.
    let mut data = name.as_bytes().to_vec();
    data.push(b'|');
    data
}

#[test]
fn crash_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut acked: HashMap<String, Lsn> = HashMap::new();
    let runs = 30;
    for run in 0..runs {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env("WALSHIP_CRASH_RUN", run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_ack, acking) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| {
                    let mut f = l.split(' ');
                    if f.next() != Some("ack") {
                        return None;
                    }
                    let _ = first_ack.send(());
                    Some((f.next()?.to_string(), f.next()?.parse::<Lsn>().ok()?))
                })
                .collect::<Vec<_>>()
        });
        // The kill comes at a random moment once the child is writing, so
        // that a slow start (or a slow disk) never leaves a run with
        // nothing acknowledged.
        acking
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("run {run}: the child acknowledged nothing in 60 s"));
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..250)));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
        let got = reader.join().unwrap();
        acked.extend(got);

        // Resume as the node would, then read everything back.
        let cfg = config(dir.path());
        let (w, resumed) = WalWriter::open(cfg.clone(), None, &mut |_| {}).unwrap();
        let records = read_records(&cfg);
        assert_eq!(
            records.len() as u64,
            resumed.records,
            "run {run}: resume and a fresh walk disagree"
        );
        let by_name: HashMap<&str, (Lsn, &Vec<u8>)> = records
            .iter()
            .map(|(lsn, data)| {
                let name =
                    std::str::from_utf8(&data[..data.iter().position(|&b| b == b'|').unwrap()])
                        .unwrap();
                (name, (*lsn, data))
            })
            .collect();
        for (name, lsn) in &acked {
            let Some((found, data)) = by_name.get(name.as_str()) else {
                panic!("run {run}: acknowledged record {name} at {lsn} is missing after kill -9");
            };
            assert_eq!(found, lsn, "run {run}: record {name} moved");
            let head = expected_data(name);
            assert_eq!(&data[..head.len()], &head[..]);
            assert!(
                data[head.len()..]
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == (i % 251) as u8),
                "{name} is corrupt"
            );
        }
        // The writer resumes right after the last valid record.
        if let Some((last, _)) = records.last() {
            assert_eq!(resumed.last_record, Some(*last));
        }
        let a = w
            .append(RM_WALSHIP_ID, 0x20, 0, format!("resume{run}|").as_bytes())
            .unwrap();
        w.flush(a.end).unwrap();
        assert_eq!(
            a.lsn, resumed.end,
            "run {run}: writer did not resume at the end of valid WAL"
        );
        acked.insert(format!("resume{run}"), a.lsn);
    }
    eprintln!(
        "{} acknowledged records survived {runs} kill -9s",
        acked.len()
    );
    assert!(
        acked.len() > runs * 4,
        "too few acknowledged records ({}) to mean anything",
        acked.len()
    );
}

fn read_records(cfg: &WriterConfig) -> Vec<(Lsn, Vec<u8>)> {
    let files = SegmentFiles {
        size: cfg.seg_size,
        files: list_segments(&cfg.dir, cfg.seg_size, cfg.timeline).unwrap(),
    };
    let mut decoder = Decoder::at_page_start(
        cfg.seg_size,
        SegNo(1).start_lsn(cfg.seg_size),
        Expect::default(),
    );
    let mut out = Vec::new();
    let end = walk(&files, &mut decoder, None, |r| {
        out.push((r.lsn, r.main_data().unwrap().to_vec()));
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(
        matches!(&end, WalkEnd::EndOfWal { end, .. } if end.is_clean()),
        "after resume the WAL must end cleanly: {end:?}"
    );
    out
}
