//! Tests of [`generate`](super::generate) as a whole, and the helpers the
//! other files' tests share (an image from a config, a root filesystem with
//! users and groups, a [`RunConfig`]).

use super::*;
use oci_spec::runtime::Capability;
use serde_json::{json, Value};
use std::fs;

use super::seccomp::{CLONE_NS_FLAGS, PERSONALITY_DENIED};

pub(super) fn image(config: Value) -> Image {
    let full = json!({
        "architecture": "amd64", "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": []}
    });
    Image::from_config(serde_json::from_value(full).unwrap())
}

pub(super) fn rootfs() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("etc")).unwrap();
    fs::write(
        d.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\nweb:x:33:33::/var/www:/bin/false\nnobody:x:65534:65534::/nonexistent:/bin/false\n",
    )
    .unwrap();
    fs::write(
        d.path().join("etc/group"),
        "root:x:0:\nuser:x:1000:\nwww:x:33:\naudio:x:29:user,web\nvideo:x:44:user\nstaff:x:50:\n",
    )
    .unwrap();
    d
}

pub(super) fn rc() -> RunConfig {
    RunConfig {
        container_id: "abcdef0123456789abcdef".into(),
        ..Default::default()
    }
}

pub(super) fn gen(img: &Image, rc: &RunConfig) -> Spec {
    let r = rootfs();
    generate(img, r.path(), &[r.path().into()], rc).unwrap()
}

pub(super) fn env_of(s: &Spec) -> Vec<String> {
    s.process().as_ref().unwrap().env().clone().unwrap()
}

#[test]
fn secure_defaults() {
    let img = image(json!({"Cmd": ["/bin/sh"]}));
    let s = gen(&img, &rc());
    let p = s.process().as_ref().unwrap();
    assert_eq!(p.args().as_ref().unwrap(), &vec!["/bin/sh".to_string()]);
    assert_eq!(p.no_new_privileges(), Some(true));
    assert_eq!(p.cwd(), Path::new("/"));
    assert_eq!(p.user().uid(), 0);
    assert_eq!(p.user().gid(), 0);
    let caps = p.capabilities().as_ref().unwrap();
    let bounding = caps.bounding().as_ref().unwrap();
    assert_eq!(bounding.len(), DEFAULT_CAPS.len());
    assert!(bounding.contains(&Capability::Chown));
    assert!(bounding.contains(&Capability::NetBindService));
    assert!(!bounding.contains(&Capability::SysAdmin));
    assert!(!bounding.contains(&Capability::SysPtrace));
    assert!(!bounding.contains(&Capability::SysResource));
    assert_eq!(caps.effective(), caps.bounding());
    assert_eq!(caps.permitted(), caps.bounding());
    assert!(caps.ambient().as_ref().is_none_or(|a| a.is_empty()));
    assert!(caps.inheritable().as_ref().is_none_or(|a| a.is_empty()));
    let rl = p.rlimits().as_ref().unwrap();
    assert_eq!(rl.len(), 1);
    assert_eq!(rl[0].hard(), 1024);
    assert_eq!(rl[0].soft(), 1024);

    assert_eq!(s.hostname().as_deref(), Some("abcdef012345"));
    let linux = s.linux().as_ref().unwrap();
    let ns: Vec<LinuxNamespaceType> = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    for t in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Cgroup,
    ] {
        assert!(ns.contains(&t), "missing namespace {t:?}");
    }
    assert!(!ns.contains(&LinuxNamespaceType::User));
    let masked = linux.masked_paths().as_ref().unwrap();
    for p in [
        "/proc/kcore",
        "/proc/keys",
        "/sys/firmware",
        "/proc/scsi",
        "/sys/devices/virtual/powercap",
    ] {
        assert!(masked.contains(&p.to_string()), "{p} not masked");
    }
    let ro = linux.readonly_paths().as_ref().unwrap();
    for p in [
        "/proc/sys",
        "/proc/sysrq-trigger",
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
    ] {
        assert!(ro.contains(&p.to_string()), "{p} not read-only");
    }
    let mounts = s.mounts().as_ref().unwrap();
    let dests: Vec<String> = mounts
        .iter()
        .map(|m| m.destination().display().to_string())
        .collect();
    for d in [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ] {
        assert!(dests.contains(&d.to_string()), "missing mount {d}");
    }
    let sys = mounts
        .iter()
        .find(|m| m.destination() == Path::new("/sys"))
        .unwrap();
    assert!(sys.options().as_ref().unwrap().contains(&"ro".to_string()));
    let root = s.root().as_ref().unwrap();
    assert_eq!(root.readonly(), Some(false));
    let res = linux.resources().as_ref().unwrap();
    let devs = res.devices().as_ref().unwrap();
    assert!(!devs[0].allow(), "first device rule must deny all");
    assert!(res.memory().is_none() && res.cpu().is_none() && res.pids().is_none());
    let env = env_of(&s);
    assert!(env.contains(&format!("PATH={DEFAULT_PATH}")));
    assert!(env.contains(&"HOSTNAME=abcdef012345".to_string()));
    assert!(env.contains(&"HOME=/root".to_string()));
    assert!(!env.iter().any(|e| e.starts_with("TERM=")));
    assert_eq!(p.terminal(), Some(false));
}

#[test]
fn workdir_hostname_network() {
    let img = image(json!({"Cmd": ["x"], "WorkingDir": "/srv"}));
    let s = gen(&img, &rc());
    assert_eq!(s.process().as_ref().unwrap().cwd(), Path::new("/srv"));
    let mut r = rc();
    r.workdir = Some("/tmp".into());
    r.hostname = Some("box".into());
    r.network = Network::Host;
    let s = gen(&img, &r);
    assert_eq!(s.process().as_ref().unwrap().cwd(), Path::new("/tmp"));
    assert_eq!(s.hostname().as_deref(), Some("box"));
    assert!(env_of(&s).contains(&"HOSTNAME=box".into()));
    let ns = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
    assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
    assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Uts));
    let mut r = rc();
    r.workdir = Some("relative".into());
    assert!(generate(&img, rootfs().path(), &[rootfs().path().into()], &r).is_err());
}

/// The JSON runtimes read: argument filters, resource limits, and no
/// field left to oci-spec's builder defaults.
#[test]
fn runtime_json_fields() {
    let mut r = rc();
    r.memory_bytes = Some(64 << 20);
    r.cpus = Some(0.25);
    r.pids_limit = Some(7);
    let j = serde_json::to_value(gen(&image(json!({"Cmd": ["x"]})), &r)).unwrap();

    let rules = j["linux"]["seccomp"]["syscalls"].as_array().unwrap();
    let rules_for = |name: &str, action: &str| -> Vec<&Value> {
        rules
            .iter()
            .filter(|r| r["names"] == json!([name]) && r["action"] == action)
            .collect()
    };
    for (name, masks) in [
        ("clone", CLONE_NS_FLAGS),
        ("personality", PERSONALITY_DENIED),
    ] {
        let found = rules_for(name, "SCMP_ACT_ERRNO");
        assert_eq!(found.len(), masks.len(), "{name}");
        for (rule, mask) in found.iter().zip(masks) {
            assert_eq!(
                **rule,
                json!({
                    "names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                    "args": [{"index": 0, "value": mask, "valueTwo": mask, "op": "SCMP_CMP_MASKED_EQ"}]
                })
            );
        }
    }
    // clone without namespace flags, in libcontainer's reading of
    // SCMP_CMP_MASKED_EQ (valueTwo the mask, value the datum)
    assert_eq!(
        *rules_for("clone", "SCMP_ACT_ALLOW")[0],
        json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 0, "valueTwo": 0x7e02_0000u64, "op": "SCMP_CMP_MASKED_EQ"}]})
    );
    assert_eq!(j["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(j["linux"]["seccomp"]["defaultErrnoRet"], 38);
    assert!(rules_for("clone3", "SCMP_ACT_ALLOW").is_empty());
    // all refused but chroot, which the default CAP_SYS_CHROOT opens
    assert_eq!(
        rules[1]["names"].as_array().unwrap().len(),
        DENIED_SYSCALLS.len() - 1
    );
    assert_eq!(
        j["linux"]["seccomp"]["architectures"],
        json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
    );

    let res = &j["linux"]["resources"];
    assert_eq!(res["memory"], json!({"limit": 64 << 20, "swap": 64 << 20}));
    assert_eq!(res["cpu"], json!({"quota": 25_000, "period": 100_000}));
    assert_eq!(res["pids"], json!({"limit": 7}));
    let devices = res["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 10);
    assert_eq!(devices[0], json!({"allow": false, "access": "rwm"}));
    assert_eq!(
        devices[1],
        json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"})
    );
    assert_eq!(
        devices[9],
        json!({"allow": true, "type": "c", "major": 136, "access": "rwm"})
    );

    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&j),
        [
            "annotations",
            "hostname",
            "linux",
            "mounts",
            "ociVersion",
            "process",
            "root"
        ]
    );
    assert_eq!(
        keys(&j["process"]),
        [
            "args",
            "capabilities",
            "cwd",
            "env",
            "noNewPrivileges",
            "rlimits",
            "terminal",
            "user"
        ]
    );
    assert_eq!(
        keys(&j["linux"]),
        [
            "maskedPaths",
            "namespaces",
            "readonlyPaths",
            "resources",
            "seccomp"
        ]
    );
    assert_eq!(keys(res), ["cpu", "devices", "memory", "pids"]);
    assert_eq!(j["ociVersion"], "1.0.2");
    assert_eq!(
        j["process"]["user"],
        json!({"uid": 0, "gid": 0, "additionalGids": [], "umask": 0o022})
    );
    let caps = &j["process"]["capabilities"];
    assert_eq!(caps["ambient"], json!([]));
    assert_eq!(caps["inheritable"], json!([]));
    assert_eq!(
        j["process"]["rlimits"],
        json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
    );
    assert_eq!(j["root"]["readonly"], false);
    assert_eq!(j["mounts"].as_array().unwrap().len(), 7);
}
