//! capsa itself as a child process, with this process's state root: how
//! `compose` and `compare` drive containers, through the same commands
//! (and so the same checks and messages) a user would type.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Result;
use capsa_shim::{CodedError, Roots, EXIT_CAPSA_ERROR};

pub struct Capsa<'a> {
    pub roots: &'a Roots,
}

impl Capsa<'_> {
    pub fn cmd<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let exe = capsa_container::self_exe::path().unwrap_or_else(|_| PathBuf::from("capsa"));
        let mut c = Command::new(exe);
        if self.roots.lib != Path::new(Roots::DEFAULT_LIB) {
            c.arg("--root").arg(&self.roots.lib);
        }
        c.args(args);
        c
    }

    /// Runs it with our stdio (none with `quiet`); its exit code.
    pub fn status<S: AsRef<OsStr>>(&self, args: &[S], quiet: bool) -> Result<i32> {
        let mut c = self.cmd(args);
        if quiet {
            c.stdout(Stdio::null()).stderr(Stdio::null());
        }
        Ok(c.status()?.code().unwrap_or(EXIT_CAPSA_ERROR))
    }

    /// Runs it, its stdout dropped and its stderr ours; fails with its exit
    /// code (it said why).
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<()> {
        let out = self.cmd(args).stdout(Stdio::null()).status()?;
        match out.code() {
            Some(0) => Ok(()),
            code => Err(CodedError::new(code.unwrap_or(EXIT_CAPSA_ERROR), String::new()).into()),
        }
    }

    /// Runs it with no stdin: its exit code, stdout and stderr.
    pub fn out<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<(i32, String, String)> {
        let o = self.cmd(args).stdin(Stdio::null()).output()?;
        Ok((
            o.status.code().unwrap_or(EXIT_CAPSA_ERROR),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ))
    }

    /// Its stdout, or an error with its exit code and stderr.
    pub fn stdout(&self, args: &[&str]) -> Result<String> {
        let (code, out, err) = self.out(args)?;
        if code != 0 {
            let msg = format!("capsa {}: {}", args.join(" "), err.trim());
            return Err(CodedError::new(code, msg).into());
        }
        Ok(out)
    }
}
