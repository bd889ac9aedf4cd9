//! The one message a monitor sends the command that started it: the
//! container (or exec'd process) exists, or why it does not. One JSON line
//! on the ready pipe; end of file without it means the monitor died first.

use std::io::{BufRead, BufReader, Read, Write};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::CodedError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ready", rename_all = "snake_case")]
pub enum Ready {
    /// It exists. `pid`: set by a monitor that only ran a namespace
    /// operation for a multi-threaded caller: the container's (or exec'd
    /// process's) PID, which the caller now owns; that monitor exits.
    Ok { pid: Option<i32> },
    /// It could not be made: the exit code to end with, and why.
    Failed { code: i32, message: String },
}

impl Ready {
    /// The failure `err` stands for: its exit code if it carries one.
    pub fn failed(err: &anyhow::Error) -> Ready {
        Ready::Failed {
            code: CodedError::code_of(err),
            message: format!("{err:#}"),
        }
    }

    pub fn send(&self, w: &mut impl Write) -> Result<()> {
        let mut line = serde_json::to_vec(self)?;
        line.push(b'\n');
        w.write_all(&line).context("writing to the ready pipe")?;
        Ok(())
    }

    /// Reads the message; `None` if the pipe closed without one.
    pub fn receive(r: impl Read) -> Result<Option<Ready>> {
        let mut line = String::new();
        BufReader::new(r)
            .read_line(&mut line)
            .context("reading the ready pipe")?;
        if line.is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .with_context(|| format!("the monitor sent {:?}", line.trim_end()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_eof_is_no_message() {
        let err = anyhow::Error::from(CodedError::new(127, "sh: not found"))
            .context("failed to start container web");
        for m in [
            Ready::Ok { pid: None },
            Ready::Ok { pid: Some(42) },
            Ready::failed(&err),
            Ready::failed(&anyhow::anyhow!("two\nlines")),
        ] {
            let mut buf = Vec::new();
            m.send(&mut buf).unwrap();
            assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1, "one line");
            assert_eq!(Ready::receive(&buf[..]).unwrap(), Some(m));
        }
        assert_eq!(
            Ready::failed(&err),
            Ready::Failed {
                code: 127,
                message: "failed to start container web: sh: not found".into()
            }
        );
        assert_eq!(Ready::receive(&b""[..]).unwrap(), None);
        assert!(Ready::receive(&b"ok\n"[..]).is_err());
    }
}
