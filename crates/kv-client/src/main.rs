//! The `kv-client` binary: an interactive prompt on a terminal, one command
//! per line from a pipe, or one command with `-c`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use kv_client::command::{self, Command};
use kv_client::import::ImportFormat;
use kv_client::monitor::Until;
use kv_client::reply::{render_error, render_item, Format, Reply};
use kv_client::{Client, ClientError};

mod tools;

/// Client for kv servers. Interactive on a terminal (type HELP); reads one
/// command per line when standard input is a pipe.
#[derive(Parser)]
#[command(name = "kv-client", version, about)]
struct Args {
    /// Server: a host name or address, host:port, an IPv6 address, or
    /// [IPv6]:port.
    #[arg(value_name = "HOST[:PORT]", default_value = "127.0.0.1")]
    server: String,
    /// Server port, when it is not given with the host [default: 8080].
    port: Option<u16>,
    /// Password for servers started with --requirepass.
    #[arg(short = 'a', long = "password")]
    password: Option<String>,
    /// Run this one command and exit (for example -c "GET foo").
    #[arg(short = 'c', long = "command")]
    command: Option<String>,
    /// Connect over TLS.
    #[arg(long)]
    tls: bool,
    /// CA certificate (PEM) that the server's certificate must be signed
    /// by, with --tls (default: the system's CA bundle).
    #[arg(long, value_name = "FILE", requires = "tls")]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM), with --tls, for servers that ask for one.
    #[arg(long, value_name = "FILE", requires_all = ["tls", "key"])]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires_all = ["tls", "cert"])]
    key: Option<PathBuf>,
    /// Name the server's certificate must hold, with --tls (default: the
    /// host connected to).
    #[arg(long, value_name = "HOST", requires = "tls")]
    sni: Option<String>,
    /// Print replies as CSV, one record per command (for scripts).
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// Print replies as JSON, one value per line (for scripts).
    #[arg(long)]
    json: bool,
    /// Print a line of figures (keys, memory, clients, requests, ops/s)
    /// every interval, as redis-cli --stat; stop with Ctrl-C.
    #[arg(long, conflicts_with_all = ["latency", "import", "command"])]
    stat: bool,
    /// Time round trips with PING (every 10 ms) and print min/avg/max, then
    /// a histogram on Ctrl-C, as redis-cli --latency.
    #[arg(long, conflicts_with_all = ["import", "command"])]
    latency: bool,
    /// Seconds between --stat lines.
    #[arg(short = 'i', long, value_name = "SECONDS", default_value_t = 1.0, value_parser = positive_seconds)]
    interval: f64,
    /// Stop --stat or --latency after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
    duration: Option<f64>,
    /// Import PUT and DELETE commands (one per line, as at the prompt) or
    /// CSV key,value records from FILE (- for standard input), pipelined,
    /// with a progress bar and a summary.
    #[arg(long, value_name = "FILE", conflicts_with = "command")]
    import: Option<String>,
    /// The import file's format [default: csv for a name ending in .csv, else commands].
    #[arg(long, value_name = "FORMAT", value_parser = ["commands", "csv"])]
    import_format: Option<String>,
}

/// A number of seconds above 0.
fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds above 0")),
    }
}

/// A connection that is made (again) when needed.
struct Session {
    addr: String,
    tls: Option<kv_client::TlsOptions>,
    password: Option<String>,
    client: Option<Client>,
}

impl Session {
    fn client(&mut self) -> Result<&mut Client, ClientError> {
        if self.client.is_none() {
            let mut c = Client::connect_with(&self.addr, self.tls.as_ref())?;
            if let Some(p) = &self.password {
                c.auth(p)?;
            }
            self.client = Some(c);
        }
        self.client.as_mut().ok_or_else(|| ClientError::Protocol {
            addr: self.addr.clone(),
            message: "no connection".into(),
        })
    }

    /// LIST printed page by page as the pages arrive, so that the first
    /// keys of a large store show at once and the client holds one page at
    /// a time. Returns how many keys were printed.
    fn stream_list(&mut self, prefix: &[u8], format: Format) -> Result<u64, ClientError> {
        let result = self.client().and_then(|c| print_pages(c, prefix, format));
        if matches!(&result, Err(e) if e.is_connection_error()) {
            self.client = None;
        }
        result
    }

    /// Runs a command; a broken connection is dropped so that the next
    /// command reconnects.
    fn run(&mut self, cmd: &Command) -> Result<Reply, ClientError> {
        let result = self.client().and_then(|c| command::execute(c, cmd));
        if matches!(&result, Err(e) if e.is_connection_error()) {
            self.client = None;
        }
        result
    }
}

fn main() -> ExitCode {
    let history = history_path();
    let args = match Args::from_arg_matches(&command(history.as_deref()).get_matches()) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let addr = match kv_client::addr::server_addr(&args.server, args.port) {
        Ok(a) => a,
        Err(e) => command(history.as_deref())
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit(),
    };
    let tls = args.tls.then_some(kv_client::TlsOptions {
        ca_cert: args.cacert,
        cert: args.cert,
        key: args.key,
        server_name: args.sni,
    });
    let mut s = Session {
        addr,
        tls,
        password: args.password,
        client: None,
    };
    let format = if args.csv {
        Format::Csv
    } else if args.json {
        Format::Json
    } else {
        Format::Plain
    };
    let until = Until::new(args.duration.map(Duration::from_secs_f64));
    if args.stat {
        return tools::stat(&mut s, Duration::from_secs_f64(args.interval), until);
    }
    if args.latency {
        return tools::latency(&mut s, until);
    }
    if let Some(file) = &args.import {
        let kind = match args.import_format.as_deref() {
            Some("csv") => ImportFormat::Csv,
            Some(_) => ImportFormat::Commands,
            None => ImportFormat::guess(file),
        };
        return tools::import_file(&mut s, file, kind);
    }
    if let Some(line) = args.command {
        return batch(&mut s, std::iter::once(Ok(line.into_bytes())), format);
    }
    if std::io::stdin().is_terminal() && format == Format::Plain {
        interactive(&mut s, history)
    } else {
        batch(&mut s, stdin_lines(), format)
    }
}

/// The lines of standard input without their line endings (`\n` or
/// `\r\n`), as bytes: a piped line may hold bytes that are not UTF-8 (a
/// binary value, text in another encoding), and they are sent as they are,
/// as redis-cli does.
fn stdin_lines() -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
    let mut input = std::io::stdin().lock();
    std::iter::from_fn(move || {
        let mut line = Vec::new();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                Some(Ok(line))
            }
            Err(e) => Some(Err(e)),
        }
    })
}

/// One result per line on stdout, errors on stderr; non-zero exit if any
/// command failed or the input could not be read.
fn batch(
    s: &mut Session,
    lines: impl Iterator<Item = std::io::Result<Vec<u8>>>,
    format: Format,
) -> ExitCode {
    let mut failed = false;
    let stdout = std::io::stdout();
    for (n, line) in lines.enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("kv-client: cannot read line {} of the input: {e}", n + 1);
                failed = true;
                break;
            }
        };
        let cmd = match command::parse(&line) {
            Ok(Some(Command::Quit)) => break,
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                report_error(format, &e);
                failed = true;
                continue;
            }
        };
        if let Command::List(prefix) = &cmd {
            if let Err(e) = s.stream_list(prefix, format) {
                report_error(format, &e.to_string());
                failed = true;
            }
            continue;
        }
        match s.run(&cmd) {
            Ok(out) => {
                let mut o = stdout.lock();
                for l in out.render(format) {
                    let _ = writeln!(o, "{l}");
                }
            }
            Err(e) => {
                report_error(format, &e.to_string());
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Keys are fetched this many at a time.
const LIST_PAGE: u32 = 1000;

/// Prints every key starting with `prefix` in `format`, a page at a time.
/// An error after some keys leaves them printed and the record unclosed.
fn print_pages(c: &mut Client, prefix: &[u8], format: Format) -> Result<u64, ClientError> {
    let stdout = std::io::stdout();
    let mut printed = 0u64;
    let mut after: Option<Vec<u8>> = None;
    if format == Format::Json {
        print!("[");
    }
    loop {
        let (keys, next) = c.list(prefix, after.as_deref(), LIST_PAGE)?;
        let mut o = stdout.lock();
        for k in &keys {
            let item = render_item(format, k);
            let _ = match (format, printed) {
                (Format::Plain, _) => writeln!(o, "{item}"),
                (_, 0) => write!(o, "{item}"),
                _ => write!(o, ",{item}"),
            };
            printed += 1;
        }
        let _ = o.flush();
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    match format {
        Format::Plain => {}
        Format::Csv => println!(),
        Format::Json => println!("]"),
    }
    Ok(printed)
}

/// An error on standard error, and as a record on standard output for
/// CSV and JSON, so that scripts keep one record per command.
fn report_error(format: Format, message: &str) {
    eprintln!("(error) {message}");
    if let Some(record) = render_error(format, message) {
        println!("{record}");
    }
}

/// The command line's definition, with where the history is kept (which
/// depends on `HOME`) at the end of `--help`.
fn command(history: Option<&Path>) -> clap::Command {
    let kept = match history {
        Some(h) => format!("The prompt's history is kept in {}.", h.display()),
        None => "The prompt's history is not kept: HOME is not set.".to_string(),
    };
    Args::command().after_help(kept)
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".kv_client_history"))
}

fn interactive(s: &mut Session, history: Option<PathBuf>) -> ExitCode {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kv-client: cannot start line editing ({e}); reading plain lines");
            return batch(s, stdin_lines(), Format::Plain);
        }
    };
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    match s.client() {
        Ok(_) => println!("connected to {}; type HELP for commands", s.addr),
        Err(e) => println!("{e}; commands will retry the connection"),
    }
    loop {
        let prompt = if s.client.is_some() {
            format!("kv {}> ", s.addr)
        } else {
            format!("kv {} (disconnected)> ", s.addr)
        };
        let line = match editor.readline(&prompt) {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        };
        let _ = editor.add_history_entry(line.as_str());
        match command::parse(&line) {
            Ok(None) => {}
            Ok(Some(Command::Quit)) => break,
            Ok(Some(Command::Help)) => println!("{}", command::HELP),
            Ok(Some(Command::List(prefix))) => match s.stream_list(&prefix, Format::Plain) {
                Ok(0) => println!("(empty)"),
                Ok(_) => {}
                Err(e) => println!("(error) {e}"),
            },
            Ok(Some(cmd)) => match s.run(&cmd).map(|r| r.render(Format::Plain)) {
                Ok(out) if out.is_empty() => println!("(empty)"),
                Ok(out) => out.iter().for_each(|l| println!("{l}")),
                Err(e) => println!("(error) {e}"),
            },
            Err(e) => println!("(error) {e}"),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    ExitCode::SUCCESS
}
