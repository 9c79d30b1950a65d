//! Logging set-up. Log lines are structured (identity, grant, task, serial as fields)
//! and never carry key material.
//!
//! Fields often hold user-supplied text (grant names, purposes, policy messages). The
//! JSON format escapes it; the text format writes fields as they are, so a newline in a
//! purpose would forge a second log line (threat 28). Text lines therefore go through
//! [`Escaping`], which writes control characters inside a line as escapes.

use std::io::{self, Write};

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::cli::LogFormat;

/// Installs the global subscriber; `RUST_LOG` overrides the default `info` level.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(fmt::layer().json().with_writer(std::io::stderr)).init(),
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(false)
                    .with_writer(|| Escaping(std::io::stderr())),
            )
            .init(),
    }
}

/// Escapes every control character of a log line but its final newline. The text
/// formatter hands over one whole line per write.
pub struct Escaping<W: Write>(pub W);

/// `line` with control characters (but a trailing newline) written as `\n`, `\r`,
/// `\t` or `\x..`.
pub fn escape_line(line: &[u8]) -> Vec<u8> {
    let (body, end) = match line.split_last() {
        Some((b'\n', body)) => (body, &b"\n"[..]),
        _ => (line, &b""[..]),
    };
    let mut out = Vec::with_capacity(line.len());
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.extend_from_slice(end);
    out
}

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(&escape_line(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threat_28_user_text_cannot_forge_a_text_log_line() {
        let line = b"INFO grant waiting purpose=fix\nERROR forged line\x1b[31m\n";
        let out = String::from_utf8(escape_line(line)).unwrap();
        assert_eq!(out, "INFO grant waiting purpose=fix\\nERROR forged line\\x1b[31m\n");
        assert_eq!(out.matches('\n').count(), 1);
        assert_eq!(escape_line(b"plain"), b"plain");
    }

    #[test]
    fn the_text_writer_escapes_what_the_formatter_writes() {
        let mut w = Escaping(Vec::new());
        w.write_all(b"a\rb\n").unwrap();
        assert_eq!(w.0, b"a\\rb\n");
    }
}
