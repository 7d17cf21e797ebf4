//! Lines on stdout and stderr that survive a reader that has gone away.
//!
//! `println!` and `eprintln!` panic when the write fails, for example with EPIPE after the reader of a
//! pipe exited (`pegan inspect MODEL | head -1`), and the panic ends the process with status 101.

use std::fmt::Arguments;
use std::io::{ErrorKind, Write};

/// Writes a formatted line to stdout, as [`write_stdout`] does.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::console::write_stdout(format_args!($($arg)*))
    };
}

/// Writes a formatted line to stderr, as [`write_stderr`] does.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::console::write_stderr(format_args!($($arg)*))
    };
}

pub(crate) use {errln, outln};

/// Writes `line` and a newline to stdout.
///
/// A closed pipe (EPIPE) is ignored, because the reader chose to stop reading and the command's files
/// are still written. Other errors, such as a full disk behind a redirection, are returned.
pub fn write_stdout(line: Arguments) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(line).and_then(|()| stdout.write_all(b"\n")).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(error).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

/// Writes `line` and a newline to stderr and ignores a failed write, because stderr is where errors
/// would be reported.
pub fn write_stderr(line: Arguments) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_fmt(line).and_then(|()| stderr.write_all(b"\n"));
}
