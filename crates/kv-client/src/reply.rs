//! What a command answered, and how it is printed: as plain text for
//! people (the default), or as CSV or JSON for scripts (`--csv`,
//! `--json`), one record per command so that outputs line up with inputs.

use std::fmt::Write as _;

use crate::command::show;

/// One command's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The command was done (PUT, AUTH).
    Ok,
    /// The server answered a PING.
    Pong,
    /// The key holds no value.
    Nil,
    /// A value.
    Value(Vec<u8>),
    /// A number (DELETE: how many keys it removed).
    Int(i64),
    /// A list of keys.
    Keys(Vec<Vec<u8>>),
    /// Text for people (INFO, CLUSTER, what JOIN did).
    Text(String),
}

/// How replies are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// For people: values shown so that they read back at the prompt, one
    /// list item or text line per line.
    #[default]
    Plain,
    /// One CSV record (RFC 4180) per command: a value is a quoted field, a
    /// list one field per item, nil is `NULL`, an error `ERROR,"message"`.
    Csv,
    /// One JSON value per line (JSON Lines): a value is a string, nil is
    /// `null`, a list an array, a number a number, an error
    /// `{"error":"message"}`. Bytes that are not UTF-8 are written as
    /// `\u00XX`, one per byte.
    Json,
}

impl Reply {
    /// The reply in `format`, as the lines to print (several only for
    /// [`Format::Plain`]).
    pub fn render(&self, format: Format) -> Vec<String> {
        match format {
            Format::Plain => self.plain(),
            Format::Csv => vec![self.csv()],
            Format::Json => vec![self.json()],
        }
    }

    fn plain(&self) -> Vec<String> {
        match self {
            Reply::Ok => vec!["OK".into()],
            Reply::Pong => vec!["PONG".into()],
            Reply::Nil => vec!["(nil)".into()],
            Reply::Value(v) => vec![show(v)],
            Reply::Int(n) => vec![n.to_string()],
            Reply::Keys(ks) => ks.iter().map(|k| show(k)).collect(),
            Reply::Text(t) => t.lines().map(str::to_string).collect(),
        }
    }

    fn csv(&self) -> String {
        match self {
            Reply::Ok => "OK".into(),
            Reply::Pong => "PONG".into(),
            Reply::Nil => "NULL".into(),
            Reply::Value(v) => csv_field(v),
            Reply::Int(n) => n.to_string(),
            Reply::Keys(ks) => ks
                .iter()
                .map(|k| csv_field(k))
                .collect::<Vec<_>>()
                .join(","),
            Reply::Text(t) => csv_field(t.trim_end().as_bytes()),
        }
    }

    fn json(&self) -> String {
        match self {
            Reply::Ok => json_string(b"OK"),
            Reply::Pong => json_string(b"PONG"),
            Reply::Nil => "null".into(),
            Reply::Value(v) => json_string(v),
            Reply::Int(n) => n.to_string(),
            Reply::Keys(ks) => {
                let items: Vec<String> = ks.iter().map(|k| json_string(k)).collect();
                format!("[{}]", items.join(","))
            }
            Reply::Text(t) => json_string(t.trim_end().as_bytes()),
        }
    }
}

/// One item of a list (a key) as it is printed in `format`: a line of its
/// own for [`Format::Plain`], a field or array element otherwise (the
/// caller adds the separators), so that a long listing can be printed as
/// it arrives.
pub fn render_item(format: Format, item: &[u8]) -> String {
    match format {
        Format::Plain => show(item),
        Format::Csv => csv_field(item),
        Format::Json => json_string(item),
    }
}

/// An error as a record in `format`, so that scripts reading CSV or JSON
/// keep one record per command. `None` for [`Format::Plain`], where errors
/// go to standard error only.
pub fn render_error(format: Format, message: &str) -> Option<String> {
    match format {
        Format::Plain => None,
        Format::Csv => Some(format!("ERROR,{}", csv_field(message.as_bytes()))),
        Format::Json => Some(format!("{{\"error\":{}}}", json_string(message.as_bytes()))),
    }
}

/// A quoted CSV field: `"` doubled, everything else (commas, line breaks,
/// any byte) kept, as RFC 4180 allows inside quotes. Bytes that are not
/// UTF-8 are shown as U+FFFD, since the output is text.
fn csv_field(b: &[u8]) -> String {
    format!("\"{}\"", String::from_utf8_lossy(b).replace('"', "\"\""))
}

/// A JSON string. Valid UTF-8 is kept (escaped where JSON requires); each
/// byte of an invalid sequence becomes `\u00XX`, so nothing is dropped.
fn json_string(b: &[u8]) -> String {
    crate::command::quoted(
        b,
        |c| (c as u32) < 0x20,
        |out, byte| {
            let _ = write!(out, "\\u{byte:04x}");
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_is_what_the_prompt_always_printed() {
        assert_eq!(
            Reply::Value(b"a b".to_vec()).render(Format::Plain),
            ["\"a b\""]
        );
        assert_eq!(Reply::Nil.render(Format::Plain), ["(nil)"]);
        assert_eq!(
            Reply::Keys(vec![b"a".to_vec(), b"b".to_vec()]).render(Format::Plain),
            ["a", "b"]
        );
    }

    #[test]
    fn csv_quotes_and_doubles_quotes() {
        assert_eq!(
            Reply::Value(b"say \"hi\", x".to_vec()).render(Format::Csv),
            ["\"say \"\"hi\"\", x\""]
        );
        assert_eq!(Reply::Nil.render(Format::Csv), ["NULL"]);
        assert_eq!(
            Reply::Keys(vec![b"a".to_vec(), b"b,c".to_vec()]).render(Format::Csv),
            ["\"a\",\"b,c\""]
        );
        assert_eq!(
            render_error(Format::Csv, "no \"x\"").as_deref(),
            Some("ERROR,\"no \"\"x\"\"\"")
        );
    }

    #[test]
    fn json_escapes_control_characters_and_stray_bytes() {
        assert_eq!(
            Reply::Value(b"a\"\\\n\x01\xffz".to_vec()).render(Format::Json),
            ["\"a\\\"\\\\\\n\\u0001\\u00ffz\""]
        );
        assert_eq!(Reply::Nil.render(Format::Json), ["null"]);
        assert_eq!(Reply::Int(1).render(Format::Json), ["1"]);
        assert_eq!(
            Reply::Keys(vec![b"a".to_vec(), "é".as_bytes().to_vec()]).render(Format::Json),
            ["[\"a\",\"é\"]"]
        );
        assert_eq!(
            render_error(Format::Json, "bad").as_deref(),
            Some("{\"error\":\"bad\"}")
        );
        assert_eq!(render_error(Format::Plain, "bad"), None);
    }
}
