//! Bulk import (`kv-client --import FILE`): PUT and DELETE commands, one
//! per line as typed at the prompt, or CSV records `key,value`, sent in
//! pipelined batches. Each failed record is reported with its line, and
//! the import goes on; a lost connection stops it.

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use kv_proto::native::{Request, Response};

use crate::command::{self, Command};
use crate::{Client, ClientError};

/// Requests sent before their replies are read.
const BATCH: usize = 512;

/// What the input holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportFormat {
    /// One command per line, as at the prompt: `PUT key value` or
    /// `DELETE key`, with the prompt's quoting. Blank lines and lines
    /// starting with `#` are skipped.
    Commands,
    /// CSV (RFC 4180) records of two fields, `key,value`. A first record
    /// `key,value` (any case) is taken as a header and skipped.
    Csv,
}

impl ImportFormat {
    /// CSV for a file name ending in `.csv` (any case), else commands.
    pub fn guess(path: &str) -> ImportFormat {
        if path.to_ascii_lowercase().ends_with(".csv") {
            ImportFormat::Csv
        } else {
            ImportFormat::Commands
        }
    }
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Keys written.
    pub puts: u64,
    /// Keys deleted (whether or not they existed).
    pub deletes: u64,
    /// Records that failed: unreadable, or refused by the server.
    pub errors: u64,
    /// How long it took.
    pub elapsed: Duration,
}

impl ImportSummary {
    /// `imported 1000 records in 0.05 s (20000 records/s): 1000 PUT, 0 DELETE, 0 errors`.
    pub fn line(&self) -> String {
        let done = self.puts + self.deletes;
        let secs = self.elapsed.as_secs_f64();
        format!(
            "imported {done} records in {secs:.2} s ({:.0} records/s): {} PUT, {} DELETE, {} errors",
            done as f64 / secs.max(1e-6),
            self.puts,
            self.deletes,
            self.errors
        )
    }
}

/// A batch of requests waiting to be sent, each with its input line.
struct Batch<'a, E: FnMut(String)> {
    client: &'a mut Client,
    pending: Vec<(u64, Request)>,
    summary: ImportSummary,
    on_error: E,
}

impl<E: FnMut(String)> Batch<'_, E> {
    fn push(&mut self, line: u64, req: Request) -> Result<(), ClientError> {
        self.pending.push((line, req));
        if self.pending.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn fail(&mut self, line: u64, why: impl std::fmt::Display) {
        self.summary.errors += 1;
        (self.on_error)(format!("line {line}: {why}"));
    }

    fn flush(&mut self) -> Result<(), ClientError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let reqs: Vec<Request> = pending.iter().map(|(_, r)| r.clone()).collect();
        let replies = self.client.pipeline(&reqs)?;
        for ((line, _), reply) in pending.iter().zip(replies) {
            match reply {
                Response::Ok => self.summary.puts += 1,
                Response::Deleted { .. } => self.summary.deletes += 1,
                Response::Error { message, .. } => self.fail(*line, message),
                other => self.fail(*line, format!("unexpected reply {other:?}")),
            }
        }
        Ok(())
    }
}

/// Imports `input` through `client`. `on_error` is told of each record
/// that failed, with its line. Returns what was done, and the error that
/// stopped the import early, if one did (a lost connection, an unreadable
/// input).
pub fn import<R: Read>(
    client: &mut Client,
    input: R,
    format: ImportFormat,
    on_error: impl FnMut(String),
) -> (ImportSummary, Option<ClientError>) {
    let start = Instant::now();
    let mut batch = Batch {
        client,
        pending: Vec::with_capacity(BATCH),
        summary: ImportSummary::default(),
        on_error,
    };
    let stopped = match format {
        ImportFormat::Commands => commands(&mut batch, input),
        ImportFormat::Csv => csv_records(&mut batch, input),
    }
    .and_then(|()| batch.flush())
    .err();
    batch.summary.elapsed = start.elapsed();
    (batch.summary, stopped)
}

fn unreadable(e: impl std::fmt::Display) -> ClientError {
    ClientError::NotSent(format!("cannot read the input: {e}"))
}

fn commands<R: Read, E: FnMut(String)>(b: &mut Batch<'_, E>, input: R) -> Result<(), ClientError> {
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    for n in 1.. {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(unreadable)? == 0 {
            return Ok(());
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if line.trim_ascii_start().starts_with(b"#") {
            continue;
        }
        match command::parse(&line) {
            Ok(None) => {}
            Ok(Some(Command::Put(key, value))) => b.push(n, Request::Put { key, value })?,
            Ok(Some(Command::Delete(key))) => b.push(n, Request::Delete { key })?,
            Ok(Some(_)) => b.fail(n, "only PUT and DELETE can be imported"),
            Err(e) => b.fail(n, e),
        }
    }
    Ok(())
}

fn csv_records<R: Read, E: FnMut(String)>(
    b: &mut Batch<'_, E>,
    input: R,
) -> Result<(), ClientError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(input);
    let mut record = csv::ByteRecord::new();
    let mut first = true;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) if e.is_io_error() => return Err(unreadable(e)),
            Err(e) => {
                let line = e.position().map_or(0, csv::Position::line);
                b.fail(line, e);
                continue;
            }
        }
        let line = record.position().map_or(0, csv::Position::line);
        let header = first
            && record.len() == 2
            && record[0].eq_ignore_ascii_case(b"key")
            && record[1].eq_ignore_ascii_case(b"value");
        first = false;
        if header {
            continue;
        }
        if record.len() != 2 {
            b.fail(
                line,
                format!("expected 2 fields (key,value), found {}", record.len()),
            );
            continue;
        }
        let req = Request::Put {
            key: record[0].to_vec(),
            value: record[1].to_vec(),
        };
        b.push(line, req)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_guessed_from_the_file_name() {
        assert_eq!(ImportFormat::guess("data.CSV"), ImportFormat::Csv);
        assert_eq!(ImportFormat::guess("cmds.txt"), ImportFormat::Commands);
        assert_eq!(ImportFormat::guess("-"), ImportFormat::Commands);
    }

    #[test]
    fn the_summary_line_has_the_rate() {
        let s = ImportSummary {
            puts: 900,
            deletes: 100,
            errors: 2,
            elapsed: Duration::from_millis(500),
        };
        assert_eq!(
            s.line(),
            "imported 1000 records in 0.50 s (2000 records/s): 900 PUT, 100 DELETE, 2 errors"
        );
    }
}
