//! Measures capsa-vmm's time from exec to the first KVM_RUN, and its
//! resident memory outside guest memory. Works on any /dev/kvm, including a
//! PVM host (pass --allow-pvm through): the VM is stopped right after the
//! first KVM_RUN returns, so the guest never needs to get anywhere.
//!
//!     cargo build --release -p capsa-vmm --example first_run
//!     target/release/examples/first_run [RUNS] -- target/release/capsa-vmm \
//!         --kernel VMLINUX --allow-pvm
//!
//! Prints each run and the median.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use capsa_vmm::cpu::monotonic_ns;

fn field(text: &str, key: &str) -> Option<u128> {
    let i = text.find(key)? + key.len();
    let digits: String = text[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sep = args
        .iter()
        .position(|a| a == "--")
        .expect("usage: first_run [RUNS] -- CAPSA_VMM ARGS...");
    let runs: usize = args[..sep].first().map_or(10, |r| r.parse().expect("RUNS"));
    let (vmm, vmm_args) = args[sep + 1..].split_first().expect("capsa-vmm path");
    let mut times = Vec::new();
    let mut rss = Vec::new();
    let mut anons = Vec::new();
    for i in 0..runs {
        let t0 = monotonic_ns();
        let mut child = Command::new(vmm)
            .args(vmm_args)
            .args([
                "--report-first-run",
                "--exit-after-first-run",
                "--serial",
                "none",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .expect("running capsa-vmm");
        // On a PVM host the first KVM_RUN itself lasts seconds (the guest is
        // emulated until its first exit): once it has begun, SIGTERM ends
        // the VM, and capsa-vmm still reports its memory on the way out.
        let mut err = String::new();
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        for line in lines.by_ref() {
            let line = line.expect("reading capsa-vmm's stderr");
            err.push_str(&line);
            err.push('\n');
            if line.contains("monotonic_ns=") {
                std::thread::sleep(Duration::from_millis(50));
                // SAFETY: signalling our own child, which has not been reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                break;
            }
        }
        for line in lines {
            err.push_str(&line.expect("reading capsa-vmm's stderr"));
            err.push('\n');
        }
        let status = child.wait().expect("waiting for capsa-vmm");
        let Some(t1) = field(&err, "monotonic_ns=") else {
            eprintln!("run {i}: no first-KVM_RUN report; capsa-vmm said:\n{err}");
            std::process::exit(1);
        };
        let us = (t1 - t0) as f64 / 1000.0;
        let vmm_kib = field(&err, "rss_vmm_kib=").unwrap_or(0);
        let total = field(&err, "rss_total_kib=").unwrap_or(0);
        let anon = field(&err, "rss_vmm_anon_kib=").unwrap_or(0);
        println!(
            "run {i}: exec -> first KVM_RUN {us:.0} us; RSS total {total} KiB, VMM (without guest memory) {vmm_kib} KiB of which anonymous {anon} KiB; exit {:?}",
            status.code()
        );
        times.push(us);
        rss.push(vmm_kib);
        anons.push(anon);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rss.sort();
    anons.sort();
    println!(
        "median over {runs} runs: exec -> first KVM_RUN {:.0} us; VMM RSS without guest memory {} KiB ({:.2} MiB), of which anonymous {} KiB (the rest is shared file-backed text: capsa-vmm, libc, ld.so)",
        times[runs / 2],
        rss[runs / 2],
        rss[runs / 2] as f64 / 1024.0,
        anons[runs / 2]
    );
}
