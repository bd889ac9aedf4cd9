//! The same image and command behave the same in both isolation modes.
//!
//! KVM test-host boots run tests/parity.sh, two at a time: container mode
//! and VM mode, whose cases are split over two boots (VM mode needs real
//! KVM, which this machine's PVM /dev/kvm is not); then every case's
//! exit code, stdout and stderr (length and hash) must match across modes,
//! and each case must show the behaviour a docker user expects.

use std::collections::BTreeMap;

use capsa_kernel::test_host::{ExpectRan, TestHost};
use capsa_tests::capsa_bin;

type Results = BTreeMap<String, (String, String)>;

/// "@@ NAME rest" lines (and the preview lines after them) per mode.
fn parse(section: &str) -> Results {
    let mut out = Results::new();
    let mut last: Option<String> = None;
    for line in section.lines() {
        if let Some(rest) = line.strip_prefix("@@ ") {
            let (name, result) = rest.split_once(' ').unwrap_or((rest, ""));
            out.insert(name.to_string(), (result.to_string(), String::new()));
            last = Some(name.to_string());
        } else if let Some(name) = &last {
            if let Some(entry) = out.get_mut(name) {
                entry.1.push_str(line);
                entry.1.push('\n');
            }
        }
    }
    out
}

#[test]
fn both_modes_give_the_same_results() {
    capsa_tests::require_root();
    let capsa = capsa_bin();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/parity.sh");
    // An image whose /etc files are symlinks to nowhere, absolute and
    // relative, and which carries device nodes (made here: the test host
    // sees this machine's /var/tmp).
    let links_dir = tempfile::Builder::new()
        .prefix("capsa-parity-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let links = links_dir.path().join("links.tar");
    capsa_tests::demo_with_layer(
        &[
            ("run", None),
            (
                "etc/resolv.conf",
                Some("/run/systemd/resolve/stub-resolv.conf"),
            ),
            ("etc/hosts", Some("../../run/capsa-hosts")),
            ("etc/hostname", Some("/run/capsa-hostname")),
            // device nodes an image carries (tests/escapes.rs)
            ("mem", Some("dev:c:1:1")),
            ("disk", Some("dev:b:254:0")),
        ],
        "links:latest",
        &links,
    );
    let udp = capsa_tests::helpers_dir();
    // Test-host boots at once, each keeping mostly one of this machine's
    // two cores busy: VM mode's cases take about 2.5 times container
    // mode's (1160 s against 470 s), so they are split in two parts
    // (parity.sh's PART), one boot running VM part 1, the other container
    // mode then VM part 2 (one boot per mode took 1165 s; one after the
    // other, 1250–1340 s).
    let run_in = |mode: &str, part: &str| {
        let cmd = format!(
            "sh {script} {c} {mode} {l} {u} {part}; echo '#### done'",
            c = capsa.display(),
            l = links.display(),
            u = udp.path().display()
        );
        // Volumes on ext4 as well as tmpfs: user xattrs and stable directory
        // offsets are a disk file system's.
        let out = TestHost::new("/bin/sh")
            .scratch_disk(1024)
            .arg("-c")
            .arg(&cmd)
            // A run took 470–1160 s in a test host whose speed varies by
            // half and more from boot to boot. The limit catches a hang,
            // not a slow boot; a failing run's dump shows each case's time
            // (`at:`).
            .timeout(std::time::Duration::from_secs(1800))
            .output()
            .expect_ran();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            stdout.contains("#### done"),
            "{mode} mode (part {part}): the script did not finish:\n{stdout}\n{stderr}"
        );
        (stdout, stderr)
    };
    let ((container, c_err), (vm2, v2_err), (vm1, v1_err)) = std::thread::scope(|s| {
        let v1 = s.spawn(|| run_in("vm", "1"));
        let c = run_in("container", "all");
        let v2 = run_in("vm", "2");
        let v1 = v1.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        (c, v2, v1)
    });
    let clean = "containers=0 mounts=0 vmms=0 virtiofsd=0 net=0";
    let (mut v, v2) = (parse(&vm1), parse(&vm2));
    assert_eq!(
        v.get("leftovers").map(|r| r.0.as_str()),
        Some(clean),
        "vm mode, part 1:\n{vm1}\n{v1_err}"
    );
    v.extend(v2);
    let vm = format!("{vm1}{vm2}");
    let v_err = format!("{v1_err}{v2_err}");
    let stderr = format!("{c_err}{v_err}");
    let c = parse(&container);
    let ctx = format!("container mode:\n{container}\nvm mode:\n{vm}\nstderr:\n{stderr}");

    // The cases behave as docker's do (checked on container mode; the
    // comparison below carries it to VM mode).
    let expect = |name: &str, want: &str| {
        let got = &c
            .get(name)
            .unwrap_or_else(|| panic!("case {name} missing\n{ctx}"))
            .0;
        assert!(
            got.starts_with(want),
            "case {name}: {got}, want {want}…\n{ctx}"
        );
    };
    expect("echo", "code=0 out=12/");
    expect("exit-0", "code=0");
    expect("exit-1", "code=1");
    expect("exit-7", "code=7");
    expect("exit-127", "code=127");
    expect("stdin", "code=0 out=24/");
    expect("stdout-20mb", "code=0 out=20000000/");
    expect("read-only-root", "code=1");
    expect("oom", "code=137 out=0/");
    expect("tmp-gone-after-rm", "code=1");
    expect("exec", "code=4 out=8/");
    expect("exec-detached", "code=0");
    assert!(
        c["exec-detached"]
            .1
            .contains("rc=0|NoNewPrivs:\t1|Seccomp:\t2|/dev/null|"),
        "{ctx}"
    );
    expect("tty", "code=0 out=10/");
    expect("volume-ro", "code=1 out=15/");
    expect("write-big", "code=0 out=10/");
    expect("kernel-fs", "code=0 out=10/");
    assert!(
        c["space-back"].1.contains("written|given-back|sp|"),
        "{ctx}"
    );
    // Read-write volumes (#12): everything the container did is on the
    // host, with owners, modes, links and the file's content.
    expect("volume-rw", "code=0");
    assert!(
        c["volume-rw"].1.contains(
            "from-host|. 755 0:0 3|./d 755 1000:1000 2|./d/b 644 0:0 2|./hard 644 0:0 2|./out 640 1000:1000 1|./secret 600 0:0 1|./sym 777 0:0 1|out|d/b|"
        ),
        "{ctx}"
    );
    expect("volume-user", "code=1");
    assert!(
        c["volume-user"].1.contains("1000|1000:1000 644|")
            && c["volume-user"]
                .1
                .contains("can't open '/data/secret': Permission denied"),
        "{ctx}"
    );
    assert!(
        c["volume-host-change"]
            .1
            .contains("0|hello-from-host|seen|"),
        "{ctx}"
    );
    // Nothing outside a share can be named through it.
    expect("volume-escape", "code=0");
    let esc = &c["volume-escape"].1;
    assert!(
        !esc.contains("outside-secret")
            && esc.contains("no abs|no rel|no deep|no ../outside|no ../../run/outside|")
            && esc.contains("Invalid cross-device link"),
        "{ctx}"
    );
    expect("volume-disk", "code=0");
    assert!(
        c["volume-disk"].1.contains("resnet|tree-gone|resnet|f|"),
        "{ctx}"
    );
    // Eight volumes, two read-only (#12: VM mode once had a share per
    // volume, at most 6).
    expect("volume-many", "code=0");
    assert!(
        c["volume-many"].1.contains(
            "host0+ host1+ host2+ host3+ host4+ host5+ host6- host7- |inner|sub-ro|no-link|moved|"
        ),
        "{ctx}"
    );
    expect("storage-size", "code=0");
    assert!(
        c["storage-size"]
            .1
            .contains("out: rc=1|bounded|room-again|"),
        "{ctx}"
    );
    expect("volume-named", "code=0");
    assert!(c["volume-named"].1.contains("user 755|kept|pvol|"), "{ctx}");
    expect("volume-setuid", "code=0");
    assert!(c["volume-setuid"].1.contains("out: 1000|"), "{ctx}");
    // --userns=auto: root inside, capsa's first uid outside; exec'd
    // processes in the namespace with the container's confinement.
    assert!(
        c["userns"]
            .1
            .contains("out: 0|0 65536|0:0|copied-up|host-owner-mapped|"),
        "{ctx}"
    );
    assert!(
        c["userns-exec"].1.contains(
            "out: 0|0 65536|CapEff:\t00000000800405fb|NoNewPrivs:\t1|Seccomp:\t2|1000|CapEff:\t0000000000000000|"
        ),
        "{ctx}"
    );
    // -v's U (through --uidmap's range), noexec, nosuid and nocopy.
    expect("volume-options", "code=0");
    assert!(
        c["volume-options"]
            .1
            .contains("out: 1000:1000|wrote|no-exec|noexec nosuid end|host-owner-user|"),
        "{ctx}"
    );
    expect("exec-stdin", "code=0 out=5/");
    // Init's lines, then the exec'd process's: the same filter, NNP and
    // capabilities; `unshare -U` is refused (not 0).
    const SET: &str = "CapEff:\t00000000800405fb|NoNewPrivs:\t1|Seccomp:\t2|";
    let confined = &c["exec-confined"].1;
    assert!(
        confined.contains(&SET.repeat(2)) && !c["exec-confined"].0.starts_with("code=0 "),
        "{ctx}"
    );
    expect("cwd-created", "code=0");
    assert!(c["cwd-created"].1.contains("/new/deeper|0:0:755|"), "{ctx}");
    expect("cwd-through-file", "code=125 out=2/");
    expect("etc-links", "code=0");
    assert!(
        c["etc-links"]
            .1
            .contains("box|127.0.0.1\tlocalhost|::1\tlocalhost ip6-localhost ip6-loopback|127.0.1.1\tbox|box|1|"),
        "{ctx}"
    );
    // A terminal turns "\n" into "\r\n".
    expect("exec-tty", "code=5 out=10/");
    assert!(c["stop-term"].1.contains("3|ready|got-term"), "{ctx}");
    assert!(c["stop-kill"].1.contains("137"), "{ctx}");
    assert!(c["oom-reported"].1.contains("\"oom_killed\":true"), "{ctx}");
    assert!(
        c["monitor-killed"]
            .1
            .contains("7|\"exit_code\":7|\"status\":\"stopped\"|"),
        "{ctx}"
    );
    assert!(c["user"].1.contains("1000|1000|1000"), "{ctx}");
    assert!(
        c["limits"]
            .1
            .contains("1024|CapEff:\t00000000800405fb|NoNewPrivs:\t1|Seccomp:\t2"),
        "{ctx}"
    );

    // Networks (#11): a published port answers on loopback and on the
    // host's other address; names and aliases resolve on a user network;
    // networks are isolated; --ip, --mac-address, /etc files, egress.
    expect("net-publish", "code=0");
    assert!(
        c["net-publish"]
            .1
            .contains("served|served|80/tcp -> 0.0.0.0:8080|"),
        "{ctx}"
    );
    assert!(
        c["net-publish-udp"]
            .1
            .contains("echo:lo|echo:other|53/udp -> 0.0.0.0:5353|"),
        "{ctx}"
    );
    assert!(c["net-names"].1.contains("from-a|from-a|"), "{ctx}");
    assert!(c["net-isolated"].1.contains("out: unreachable|"), "{ctx}");
    // connect, disconnect, connect again: eth1 comes and goes (VM mode:
    // a spare NIC), with the network's address, route and DNS server.
    expect("net-connect", "code=0");
    assert!(
        c["net-connect"].1.contains(
            "eth0 eth1 lo 10.99.1|2|from-a|eth0 lo 1|unreachable|eth0 eth1 lo 10.99.1|2|from-a|"
        ),
        "{ctx}"
    );
    assert!(
        c["net-ip-mac"].1.contains(
            "02:42:0a:63:01:32|10.99.1.50/24|10.1.2.3\tdb|10.99.1.50\tbox|nameserver 10.99.1.1|1|"
        ),
        "{ctx}"
    );
    assert!(c["net-egress"].1.contains("sent|hi-host|"), "{ctx}");
    expect("net-crash", "code=0");
    assert!(
        c["pause"].1.contains("pz|1|exec=125|pz|back|pz|pz|")
            && c["pause"]
                .1
                .contains("container pz is paused: unpause it first"),
        "{ctx}"
    );
    assert!(
        c["stats-top"]
            .1
            .contains("st U / 96MiB 1 busy blk|UID CMD  |root sh -c while|"),
        "{ctx}"
    );
    assert!(
        c["restart"]
            .1
            .contains("rs|started 1|started 2|in|rs|said|said|start-a=3|sa|"),
        "{ctx}"
    );
    assert!(
        c["update"].1.contains("up|U / 128MiB|134217728 50|50|up|"),
        "{ctx}"
    );
    expect("ulimit", "code=0");
    assert!(
        c["ulimit"]
            .1
            .contains("out: unlimited unlimited|2048 4096|"),
        "{ctx}"
    );
    expect("mount-long", "code=0");
    assert!(
        c["mount-long"].1.contains("out: size=1024k|size=98304k|"),
        "{ctx}"
    );
    assert!(
        c["health"]
            .1
            .contains("out: unhealthy|healthy|hc|hc|unhealthy|timed-out|killed|hslow|"),
        "{ctx}"
    );
    assert!(c["cp"].1.contains("cp-in|cp-in|cp-out|cpy|"), "{ctx}");
    // A stopped container (VM mode: its VM booted again for each).
    assert!(
        c["cp-stopped"].1.contains(
            "plain 0 regular file|kept 1000 regular file|followed 0 regular file|link 0 symbolic link|\
             sha256:|made|cp-in|1000 regular file|0 symbolic link|vol|cp-in|cps|"
        ),
        "{ctx}"
    );
    // capsa build and compose (#14): the built image runs; compose's
    // processing service counted the data, reached dev by name, and down
    // left no container.
    expect("build", "code=0");
    assert!(c["build-run"].1.contains("built for parity|"), "{ctx}");
    expect("compose", "code=0");
    assert!(c["compose"].1.contains("0|3|notebook|notebook|0|"), "{ctx}");
    expect("syscalls", "code=0");
    assert!(
        c["syscalls"].1.contains(
            "quotactl_fd 1|migrate_pages 1|process_madvise 1|futex_waitv 1|set_mempolicy_home_node 1|cachestat 1|"
        ),
        "{ctx}"
    );
    expect("device-nodes", "code=0");
    assert!(
        c["device-nodes"]
            .1
            .contains("out: /mem refused|/disk refused|mknod refused|"),
        "{ctx}"
    );
    expect("restart-policy", "code=0");
    assert!(c["restart-policy"].1.contains("out: run|run|1 3|"), "{ctx}");
    expect("cgroup-ro", "code=0");
    assert!(c["cgroup-ro"].1.contains("out: kept|50|"), "{ctx}");
    expect("loopback", "code=0");
    assert!(c["loopback"].1.contains("out: hi|2|"), "{ctx}");
    expect("seccomp-file", "code=0");
    assert!(
        c["seccomp-file"].1.contains("vmsplice 1|futex_wake 38|"),
        "{ctx}"
    );
    expect("privileged", "code=0");
    assert!(c["privileged"].1.contains("Seccomp:\t0|mounted|"), "{ctx}");
    expect("compare", "code=0");
    assert!(
        c["compare"]
            .1
            .contains("\"same_output\":true|\"same_exit_code\":true|\"in_test_host\":true|1|6|"),
        "{ctx}"
    );
    assert!(
        c["hooks"].1.contains(
            "ran|createRuntime:creating prestart:creating poststart:running poststop:stopped |failing-prestart=1|state=1|"
        ),
        "{ctx}"
    );
    assert!(
        c["commit"].1.contains("sha256:|running|data|no-group|cm|"),
        "{ctx}"
    );
    expect("add-host", "code=0");
    assert!(
        c["add-host"].1.contains("10.1.2.3\tdb|fd00::1\tv6|"),
        "{ctx}"
    );

    let mut differ = Vec::new();
    for (name, (result, preview)) in &c {
        match v.get(name) {
            Some((vr, _)) if vr == result => {}
            Some((vr, vp)) => differ.push(format!(
                "{name}:\n  container {result}\n{preview}  vm        {vr}\n{vp}"
            )),
            None => differ.push(format!("{name}: missing in vm mode")),
        }
    }
    assert!(
        differ.is_empty(),
        "modes differ:\n{}\n\n{ctx}",
        differ.join("\n")
    );
    assert_eq!(
        c.get("leftovers").map(|r| r.0.as_str()),
        Some(clean),
        "{ctx}"
    );
}
