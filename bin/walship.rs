//! The `walship` command: argument parsing only; the work is in the library.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use walship::dump::{self, DumpMode, DumpOptions, DumpOutcome};
use walship::wal::Lsn;

/// A PostgreSQL-style physical WAL-shipping replication toolkit.
#[derive(Parser)]
#[command(name = "walship", version, about, long_about = None, max_term_width = 100, disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Dump(DumpArgs),
}

const DUMP_EXAMPLES: &str = "\
Examples:
  walship dump data/wal/000000010000000000000001
  walship dump --verify data/wal
  walship dump --stats --start 0/1000028 --end 0/2000000 data/wal
  walship dump --verify /var/lib/postgresql/15/main/pg_wal";

/// Print, verify or summarize the records of WAL segments (pg_waldump's job).
///
/// Reads segment files written by walship or by PostgreSQL 15, checks every
/// page header, prev-link and CRC on the way, and stops at the end of valid
/// WAL, saying where and why. Exits 0 when the WAL simply ends (zeros where the
/// next record would begin), 1 when a record or page in the middle of the WAL
/// is damaged or a segment file has the wrong size.
#[derive(Args)]
#[command(after_help = DUMP_EXAMPLES)]
struct DumpArgs {
    /// Walk silently and print a one-line summary.
    #[arg(long, conflicts_with = "stats")]
    verify: bool,
    /// Print per resource manager record counts and bytes.
    #[arg(long)]
    stats: bool,
    /// Begin with the first record at or after this LSN (X/X).
    #[arg(long, value_name = "LSN")]
    start: Option<Lsn>,
    /// Stop before the first record at or after this LSN (X/X).
    #[arg(long, value_name = "LSN")]
    end: Option<Lsn>,
    /// Segment files, or directories holding them.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walship: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Dump(args) => run_dump(args),
    }
}

fn run_dump(args: DumpArgs) -> anyhow::Result<ExitCode> {
    let opts = DumpOptions {
        paths: args.paths,
        start: args.start,
        end: args.end,
        mode: if args.verify {
            DumpMode::Verify
        } else if args.stats {
            DumpMode::Stats
        } else {
            DumpMode::Records
        },
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let outcome = dump::run(&opts, &mut out).context("walship dump failed")?;
    out.flush().context("could not write to standard output")?;
    Ok(match outcome {
        DumpOutcome::Clean { message, .. } => {
            if opts.mode == DumpMode::Records {
                eprintln!("walship dump: {message}");
            }
            ExitCode::SUCCESS
        }
        DumpOutcome::Damaged { message } => {
            eprintln!("walship dump: error: {message}");
            ExitCode::from(1)
        }
    })
}

#[cfg(test)]
mod man {
    //! The man pages in `man/` are generated from the definitions above plus
    //! the hand-written sections here. `WALSHIP_BLESS=1 cargo test --bin
    //! walship` rewrites them; otherwise the test fails when they are stale.

    use clap::CommandFactory;

    const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
Operational failure: damaged WAL, a missing or unreadable file. One line on
standard error says what and where (file, LSN).
.TP
\fB2\fR
Usage error.
"#;

    fn page_for(cmd: &clap::Command, name: &str, extra: &str, see_also: &str) -> String {
        let mut buf = Vec::new();
        let name: &'static str = Box::leak(name.to_string().into_boxed_str());
        let cmd = cmd.clone().name(name);
        clap_mangen::Man::new(cmd)
            .render(&mut buf)
            .expect("render to memory");
        let mut page = String::from_utf8(buf).expect("man page is UTF-8");
        page.push_str(extra);
        page.push_str(EXIT_STATUS);
        page.push_str(&format!(".SH \"SEE ALSO\"\n{see_also}\n"));
        page
    }

    fn pages() -> Vec<(String, String)> {
        let root = super::Cli::command();
        let mut pages = vec![(
            "walship.1".to_string(),
            page_for(
                &root,
                "walship",
                "",
                r"\fBwalship-dump\fR(1), \fBpg_waldump\fR(1)",
            ),
        )];
        for sub in root.get_subcommands() {
            let name = format!("walship-{}", sub.get_name());
            let extra = match sub.get_name() {
                "dump" => DUMP_EXTRA,
                _ => "",
            };
            let see_also = r"\fBwalship\fR(1), \fBpg_waldump\fR(1)";
            pages.push((format!("{name}.1"), page_for(sub, &name, extra, see_also)));
        }
        pages
    }

    const DUMP_EXTRA: &str = r#".SH OUTPUT
One line per record, as \fBpg_waldump\fR(1) prints them: resource manager,
total length, transaction id, LSN, previous record's LSN and a description.
walship's own records show as \fBwalship\fR (resource manager 200, which
PostgreSQL's pg_waldump shows as \fBcustom200\fR). The last line, on standard
error, says where and why the WAL ended.
"#;

    #[test]
    fn man_pages_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
        let bless = std::env::var_os("WALSHIP_BLESS").is_some();
        for (file, page) in pages() {
            let path = dir.join(&file);
            if bless {
                std::fs::create_dir_all(&dir).expect("create man/");
                std::fs::write(&path, &page).expect("write man page");
                continue;
            }
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == page,
                "man/{file} is stale: run `WALSHIP_BLESS=1 cargo test --bin walship` and commit it"
            );
        }
    }
}
