//! Container mode on a pure cgroup v2 host. This machine is hybrid (v1
//! controllers), so the checks run inside the KVM test host, whose kernel
//! mounts only cgroup2. One test-host boot runs the whole script.

use capsa_kernel::test_host::{ExpectRan, TestHost};
use capsa_tests::capsa_bin;

#[test]
fn limits_oom_and_cleanup_work_on_pure_cgroup_v2() {
    capsa_tests::require_root();
    let capsa = capsa_bin();
    // /run is a tmpfs in the test host; overlayfs cannot use its overlay root
    // as an upper directory.
    let script = format!(
        r#"
set -u
B="{capsa} --root /run/capsa-v2"
grep -q cgroup2 /proc/mounts && ! grep -q ' cgroup ' /proc/mounts && echo "layout: v2-only"
$B load --demo >/dev/null || exit 90
$B run --rm --memory 16m demo sh -c 'a=$(head -c 67108864 /dev/zero | tr "\0" a); echo survived'
echo "oom: $?"
$B run --name hog --memory 16m demo sh -c 'a=$(head -c 67108864 /dev/zero | tr "\0" a)' >/dev/null 2>&1
$B inspect hog | grep -q '"oom_killed": true' && echo "oom reported"
$B rm hog >/dev/null
id=$($B run -d --cpus 0.5 --pids-limit 16 --memory 64m demo sh -c '(for i in $(seq 40); do sleep 30 & done) 2>/dev/null; sleep 30')
sleep 1
echo "cpu.max: $(cat /sys/fs/cgroup/capsa/$id/cpu.max)"
echo "memory.max: $(cat /sys/fs/cgroup/capsa/$id/memory.max)"
echo "pids.current<=16: $([ $(cat /sys/fs/cgroup/capsa/$id/pids.current) -le 16 ] && echo yes)"
$B rm -f $id >/dev/null
[ -e /sys/fs/cgroup/capsa/$id ] && echo "LEAK: cgroup $id" 
grep -q /run/capsa-v2 /proc/mounts && echo "LEAK: mount"
echo done
"#,
        capsa = capsa.display()
    );
    let out = TestHost::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .output()
        .expect_ran();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("layout: v2-only"),
        "test host is not v2-only\n{ctx}"
    );
    assert!(
        stdout.contains("oom: 137") && !stdout.contains("survived"),
        "{ctx}"
    );
    assert!(stdout.contains("oom reported"), "{ctx}");
    assert!(stdout.contains("cpu.max: 50000 100000"), "{ctx}");
    assert!(stdout.contains("memory.max: 67108864"), "{ctx}");
    assert!(stdout.contains("pids.current<=16: yes"), "{ctx}");
    assert!(!stdout.contains("LEAK"), "{ctx}");
    assert!(stdout.contains("done"), "{ctx}");
}
