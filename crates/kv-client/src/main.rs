//! The `kv-client` binary: an interactive prompt on a terminal, one command
//! per line from a pipe, or one command with `-c`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use kv_client::command::{self, Command};
use kv_client::{Client, ClientError};

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

    /// Runs a command; a broken connection is dropped so that the next
    /// command reconnects.
    fn run(&mut self, cmd: &Command) -> Result<Vec<String>, ClientError> {
        let result = self.client().and_then(|c| command::run(c, cmd));
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
    if let Some(line) = args.command {
        return batch(&mut s, std::iter::once(Ok(line.into_bytes())));
    }
    if std::io::stdin().is_terminal() {
        interactive(&mut s, history)
    } else {
        batch(&mut s, stdin_lines())
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
fn batch(s: &mut Session, lines: impl Iterator<Item = std::io::Result<Vec<u8>>>) -> ExitCode {
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
                eprintln!("(error) {e}");
                failed = true;
                continue;
            }
        };
        match s.run(&cmd) {
            Ok(out) => {
                let mut o = stdout.lock();
                for l in out {
                    let _ = writeln!(o, "{l}");
                }
            }
            Err(e) => {
                eprintln!("(error) {e}");
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
            return batch(s, stdin_lines());
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
            Ok(Some(cmd)) => match s.run(&cmd) {
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
