//! Reading the test host's console: did its kernel crash, and how?
//!
//! The test host boots with `quiet`, so its console normally carries only
//! the init's `capsa-test-host:` lines and qemu's own messages. A kernel
//! crash switches the console to verbose and prints a recognisable report;
//! [`find_crash`] finds the first one and picks out its signature (kind,
//! first line, task, kernel RIP), which is what a stress run counts and
//! what an error message leads with.

use std::fmt;

/// What kind of kernel crash the console shows (by its first sign).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashKind {
    /// `Kernel panic - not syncing: …` with nothing before it.
    Panic,
    /// `traps: PANIC: double fault, error_code: …` (or a `double fault`
    /// oops banner).
    DoubleFault,
    /// An oops banner (`Oops: 0002 [#1] …`, `general protection fault, …:
    /// 0000 [#1] …`, `invalid opcode: 0000 [#1] …`).
    Oops,
    /// `BUG: …` (`BUG: kernel NULL pointer dereference`, `BUG: unable to
    /// handle page fault`, `BUG: scheduling while atomic`, `kernel BUG at …`).
    Bug,
}

impl CrashKind {
    /// How the kind reads in a message: "kernel panic", "double fault", …
    pub fn describe(self) -> &'static str {
        match self {
            CrashKind::Panic => "kernel panic",
            CrashKind::DoubleFault => "double fault",
            CrashKind::Oops => "kernel oops",
            CrashKind::Bug => "kernel BUG",
        }
    }
}

impl fmt::Display for CrashKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The first kernel crash on a console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crash {
    pub kind: CrashKind,
    /// The first line that showed it, without a printk timestamp.
    pub line: String,
    /// Its index among the console's lines.
    pub line_index: usize,
    /// The task that was running (`Comm:` of the report), if shown.
    pub comm: Option<String>,
    /// The kernel RIP of the report (`RIP: 0010:…`), if shown.
    pub rip: Option<String>,
    /// The `Kernel panic - not syncing: …` line, if the kernel went on to
    /// panic (always set for [`CrashKind::Panic`]).
    pub panic: Option<String>,
}

impl Crash {
    /// One line for counting and grouping crashes: the kind, the first
    /// line, and where (task and RIP) when the report says.
    pub fn signature(&self) -> String {
        let line = match self.kind {
            CrashKind::Panic => self.line.strip_prefix(PANIC_PREFIX).unwrap_or(&self.line),
            _ => &self.line,
        };
        let mut s = format!("{} — {line}", self.kind);
        if let Some(comm) = &self.comm {
            s.push_str(&format!(" [task {comm}]"));
        }
        if let Some(rip) = &self.rip {
            s.push_str(&format!(" [RIP {rip}]"));
        }
        if let Some(panic) = &self.panic {
            if self.kind != CrashKind::Panic {
                s.push_str(&format!("; then {panic}"));
            }
        }
        s
    }
}

/// How many lines after the first sign of a crash to look for its task,
/// RIP and panic line.
const REPORT_LINES: usize = 80;

/// The first kernel crash on `console`, if any.
pub fn find_crash(console: &[u8]) -> Option<Crash> {
    let text = String::from_utf8_lossy(console);
    let lines: Vec<&str> = text.lines().map(clean).collect();
    let (line_index, kind) = lines
        .iter()
        .enumerate()
        .find_map(|(i, l)| crash_line(l).map(|k| (i, k)))?;
    let report = &lines[line_index..lines.len().min(line_index + REPORT_LINES)];
    let comm = report.iter().find_map(|l| comm_of(l));
    let rip = report.iter().find_map(|l| {
        l.split_once("RIP: 0010:")
            .map(|(_, r)| r.trim().to_string())
    });
    // A panic can come much later than the oops that caused it.
    let panic = lines[line_index..]
        .iter()
        .find(|l| l.contains(PANIC))
        .map(|l| l[l.find(PANIC).unwrap_or(0)..].trim().to_string());
    Some(Crash {
        kind,
        line: lines[line_index].trim().to_string(),
        line_index,
        comm,
        rip,
        panic,
    })
}

const PANIC: &str = "Kernel panic - not syncing";
const PANIC_PREFIX: &str = "Kernel panic - not syncing: ";

/// Strips a carriage return and a printk timestamp (`[   12.345678] `).
fn clean(line: &str) -> &str {
    let line = line.trim_end_matches('\r');
    let trimmed = line.trim_start();
    if let Some(rest) = trimmed.strip_prefix('[') {
        if let Some((stamp, after)) = rest.split_once(']') {
            if !stamp.is_empty() && stamp.trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
                return after.trim_start();
            }
        }
    }
    line
}

/// Whether a console line is the first sign of a kernel crash.
fn crash_line(line: &str) -> Option<CrashKind> {
    // qemu's own messages and the init's come on the same stream.
    if line.starts_with("qemu-system") || line.starts_with("capsa-test-host:") {
        return None;
    }
    if line.contains("PANIC: double fault") {
        return Some(CrashKind::DoubleFault);
    }
    if line.contains(PANIC) {
        return Some(CrashKind::Panic);
    }
    if let Some(name) = oops_banner(line) {
        return Some(if name.contains("double fault") {
            CrashKind::DoubleFault
        } else {
            CrashKind::Oops
        });
    }
    if line.starts_with("BUG: ") || line.contains(": BUG: ") || line.contains("kernel BUG at ") {
        return Some(CrashKind::Bug);
    }
    None
}

/// The name part of an x86 die() banner, `NAME: 0000 [#1] PREEMPT SMP`
/// (Oops, general protection fault, invalid opcode, double fault, …).
/// A user-space fault report (`traps: prog[12] general protection fault
/// ip:… in prog[400000+1000]`) has no `[#N]` and does not match.
fn oops_banner(line: &str) -> Option<&str> {
    let at = line.find(" [#")?;
    let after = &line[at + 3..];
    let digits = after.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || after.as_bytes().get(digits) != Some(&b']') {
        return None;
    }
    let (name, code) = line[..at].rsplit_once(": ")?;
    (code.len() == 4 && code.bytes().all(|b| b.is_ascii_hexdigit())).then_some(name)
}

/// The task of a report line `CPU: 1 PID: 345 Comm: vcpu0 Not tainted …`.
fn comm_of(line: &str) -> Option<String> {
    let (_, rest) = line.split_once(" Comm: ")?;
    let end = [" Not tainted", " Tainted:"]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or_else(|| rest.find(' ').unwrap_or(rest.len()));
    Some(rest[..end].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The double fault of issue 16 (abridged from a real console).
    const DOUBLE_FAULT: &str = "\
capsa-test-host: warning: something harmless\r
[  812.345678] traps: PANIC: double fault, error_code: 0x0\r
[  812.345690] double fault: 0000 [#1] PREEMPT SMP NOPTI\r
[  812.345700] CPU: 1 PID: 4242 Comm: vcpu0 Not tainted 6.1.0 #1\r
[  812.345710] RIP: 0010:exc_page_fault+0x1a/0x190\r
[  812.345720] Code: 00 00 00 00 41 57 41 56\r
[  812.345730] Kernel panic - not syncing: Fatal exception in interrupt\r
";

    #[test]
    fn double_fault() {
        let c = find_crash(DOUBLE_FAULT.as_bytes()).expect("a crash");
        assert_eq!(c.kind, CrashKind::DoubleFault);
        assert_eq!(c.line, "traps: PANIC: double fault, error_code: 0x0");
        assert_eq!(c.line_index, 1);
        assert_eq!(c.comm.as_deref(), Some("vcpu0"));
        assert_eq!(c.rip.as_deref(), Some("exc_page_fault+0x1a/0x190"));
        assert_eq!(
            c.panic.as_deref(),
            Some("Kernel panic - not syncing: Fatal exception in interrupt")
        );
        assert_eq!(
            c.signature(),
            "double fault — traps: PANIC: double fault, error_code: 0x0 [task vcpu0] \
             [RIP exc_page_fault+0x1a/0x190]; then Kernel panic - not syncing: Fatal exception in interrupt"
        );
    }

    #[test]
    fn plain_panic() {
        let console =
            "Kernel panic - not syncing: Out of memory: system-wide panic_on_oom is enabled\n\
                       CPU: 0 PID: 77 Comm: dd Not tainted 6.1.0 #1\n";
        let c = find_crash(console.as_bytes()).unwrap();
        assert_eq!(c.kind, CrashKind::Panic);
        assert_eq!(c.panic.as_deref(), Some(c.line.as_str()));
        assert_eq!(c.comm.as_deref(), Some("dd"));
        assert_eq!(c.rip, None);
        assert_eq!(
            c.signature(),
            "kernel panic — Out of memory: system-wide panic_on_oom is enabled [task dd]"
        );

        let init =
            "[    3.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009\n";
        let c = find_crash(init.as_bytes()).unwrap();
        assert_eq!(c.kind, CrashKind::Panic);
        assert_eq!(
            c.line,
            "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009"
        );
    }

    #[test]
    fn null_pointer_oops() {
        let console = "\
BUG: kernel NULL pointer dereference, address: 0000000000000008
#PF: supervisor read access in kernel mode
#PF: error_code(0x0000) - not-present page
Oops: 0000 [#1] PREEMPT SMP NOPTI
CPU: 0 PID: 311 Comm: capsa-vmm Tainted: G        W          6.1.0 #1
RIP: 0010:futex_wake+0x5c/0x180
RSP: 0018:ffffc90000a3fd30 EFLAGS: 00010246
";
        let c = find_crash(console.as_bytes()).unwrap();
        assert_eq!(c.kind, CrashKind::Bug);
        assert_eq!(
            c.line,
            "BUG: kernel NULL pointer dereference, address: 0000000000000008"
        );
        assert_eq!(c.comm.as_deref(), Some("capsa-vmm"));
        assert_eq!(c.rip.as_deref(), Some("futex_wake+0x5c/0x180"));
        assert_eq!(c.panic, None);
    }

    #[test]
    fn oops_banners() {
        for (line, kind) in [
            ("Oops: 0002 [#1] SMP", CrashKind::Oops),
            (
                "general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] PREEMPT SMP",
                CrashKind::Oops,
            ),
            ("general protection fault: 0000 [#2] SMP", CrashKind::Oops),
            ("invalid opcode: 0000 [#1] PREEMPT SMP NOPTI", CrashKind::Oops),
            ("double fault: 0000 [#1] SMP", CrashKind::DoubleFault),
            ("kernel BUG at mm/slub.c:427!", CrashKind::Bug),
            ("watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [vcpu0:99]", CrashKind::Bug),
        ] {
            let c = find_crash(format!("[   5.000001] {line}\r\n").as_bytes())
                .unwrap_or_else(|| panic!("not found: {line}"));
            assert_eq!(c.kind, kind, "{line}");
            assert_eq!(c.line, line);
        }
    }

    #[test]
    fn clean_consoles_have_no_crash() {
        for console in [
            "",
            "capsa-test-host: warning: no cgroup2 at /sys/fs/cgroup\n",
            // A user-space fault report (shown with loglevel=7).
            "traps: a.out[123] general protection fault ip:401136 sp:7ffd9a0 error:0 in a.out[401000+1000]\n\
             a.out[124]: segfault at 0 ip 0000000000401136 sp 00007ffd error 6 in a.out[401000+1000]\n",
            // qemu's messages, and a warning that is not a crash.
            "qemu-system-x86_64: warning: TCG doesn't support requested feature: CPUID.01H:ECX.vmx [bit 5]\n\
             WARNING: CPU: 0 PID: 1 at arch/x86/kvm/x86.c:10000 kvm_arch_vcpu_ioctl_run+0x1/0x2\n\
             rcu: INFO: rcu_preempt self-detected stall on CPU\n\
             kvm [311]: vcpu0, guest rIP: 0xffffffff81000000 unhandled rdmsr: 0xc0011029\n",
            "the command printed BUG: on its own\n",
        ] {
            assert_eq!(find_crash(console.as_bytes()), None, "{console}");
        }
    }
}
