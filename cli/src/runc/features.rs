//! `features`: what capsa supports, as `runc features` prints it.

use anyhow::Result;
use serde_json::json;

/// What capsa supports, in the shape of `runc features` (runc 1.1+).
pub fn features_json() -> serde_json::Value {
    let caps: Vec<String> = capsa_image::spec::ALL_CAPS
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
            "iversion", "lazytime", "loud", "mand", "noatime", "nodev", "nodiratime",
            "noexec", "noiversion", "nolazytime", "nomand", "norelatime", "nostrictatime",
            "nosuid", "nosymfollow", "private", "rbind", "relatime", "remount", "ro",
            "rprivate", "rshared", "rslave", "runbindable", "rw", "shared", "silent",
            "slave", "strictatime", "suid", "symfollow", "sync", "tmpcopyup", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": [
                    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE",
                    "SCMP_ACT_TRAP"
                ],
                "operators": [
                    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"
                ],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.capsa.isolation": "container|vm (default container)",
            "io.capsa.kernel": "vm isolation: path of the guest kernel to boot",
            "io.capsa.hooks": "supported in container isolation only (a VM's guest cannot run host binaries)",
            "org.opencontainers.runc.checkpoint.enabled": "false"
        }
    })
}

pub fn features() -> Result<i32> {
    println!("{}", serde_json::to_string_pretty(&features_json())?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsa_image::oci_spec::runtime::Capability;

    #[test]
    fn capability_names_parse() {
        for c in capsa_image::spec::ALL_CAPS {
            let _: Capability =
                serde_json::from_value(json!(format!("CAP_{c}"))).unwrap_or_else(|_| panic!("{c}"));
        }
    }
}
