//! `--security-opt seccomp=FILE`: a profile in docker's and podman's JSON
//! format (rules chosen by the container's capabilities, architecture and
//! kernel through `includes`/`excludes`, architectures through `archMap`),
//! or in the OCI runtime spec's form, turned into the OCI profile the
//! container gets.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscallBuilder,
};
use serde::Deserialize;

use super::{bad, internal};
use crate::error::Result;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: LinuxSeccompAction,
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<Arch>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    flags: Vec<LinuxSeccompFilterFlag>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Vec<Arch>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    names: Vec<String>,
    /// The single-name form of old docker profiles.
    name: Option<String>,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    min_kernel: Option<String>,
}

/// The architecture names docker's profiles use for what capsa runs.
const OUR_ARCHES: &[&str] = &["amd64", "x86", "x32"];

impl Filter {
    /// Whether every condition holds (`includes`).
    fn all_hold(&self, caps: &[String], kernel: (u32, u32)) -> bool {
        self.caps.iter().all(|c| caps.contains(c))
            && (self.arches.is_empty()
                || self.arches.iter().any(|a| OUR_ARCHES.contains(&a.as_str())))
            && self
                .min_kernel
                .as_deref()
                .is_none_or(|k| kernel >= version(k))
    }

    /// Whether any condition holds (`excludes`).
    fn any_holds(&self, caps: &[String], kernel: (u32, u32)) -> bool {
        self.caps.iter().any(|c| caps.contains(c))
            || self.arches.iter().any(|a| OUR_ARCHES.contains(&a.as_str()))
            || self
                .min_kernel
                .as_deref()
                .is_some_and(|k| kernel >= version(k))
    }
}

/// "6.1.0-rc2" → (6, 1); what does not parse counts as 0.
fn version(s: &str) -> (u32, u32) {
    let mut parts = s.split(|c: char| !c.is_ascii_digit());
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (next(), next())
}

/// The running kernel's version: `minKernel` rules are chosen by it.
fn running_kernel() -> (u32, u32) {
    nix::sys::utsname::uname()
        .ok()
        .and_then(|u| u.release().to_str().map(version))
        .unwrap_or((0, 0))
}

/// The OCI profile `text` gives a container holding `caps` (`CAP_…`).
pub fn from_file(text: &str, caps: &[String]) -> Result<LinuxSeccomp> {
    let invalid = |e: String| {
        bad(format!(
            "--security-opt seccomp: the profile is not valid: {e}"
        ))
    };
    let p: Profile = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let kernel = running_kernel();
    let mut arches: Vec<Arch> = p.architectures.clone();
    for m in &p.arch_map {
        if m.architecture == Arch::ScmpArchX86_64 {
            arches.push(m.architecture);
            arches.extend(&m.sub_architectures);
        }
    }
    let mut rules = Vec::new();
    for r in p.syscalls {
        if !r.includes.all_hold(caps, kernel) || r.excludes.any_holds(caps, kernel) {
            continue;
        }
        let names: Vec<String> = r.names.into_iter().chain(r.name).collect();
        if names.is_empty() {
            return Err(invalid("a syscall rule names no syscall".into()));
        }
        // Docker's and podman's profiles are written for runc, which reads
        // a masked comparison's `value` as the mask and `valueTwo` as the
        // datum; youki's libcontainer reads them the other way round.
        let args = r
            .args
            .map(|args| {
                args.into_iter()
                    .map(|a| {
                        if a.op() != LinuxSeccompOperator::ScmpCmpMaskedEq {
                            return Ok(a);
                        }
                        LinuxSeccompArgBuilder::default()
                            .index(a.index())
                            .op(a.op())
                            .value(a.value_two().unwrap_or(0))
                            .value_two(a.value())
                            .build()
                            .map_err(internal)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        let mut rule = LinuxSyscallBuilder::default()
            .names(names)
            .action(r.action)
            .build()
            .map_err(internal)?;
        rule.set_errno_ret(r.errno_ret);
        rule.set_args(args);
        rules.push(rule);
    }
    let mut profile = LinuxSeccompBuilder::default()
        .default_action(p.default_action)
        .architectures(arches)
        .syscalls(rules)
        .build()
        .map_err(internal)?;
    profile.set_default_errno_ret(p.default_errno_ret);
    if !p.flags.is_empty() {
        profile.set_flags(Some(p.flags));
    }
    if profile.default_action() == LinuxSeccompAction::ScmpActNotify {
        return Err(invalid(
            "SCMP_ACT_NOTIFY needs a listener, which capsa has none of".into(),
        ));
    }
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn docker_format_rules_are_chosen_by_caps_arch_and_kernel() {
        let text = r#"{
          "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
          "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                      {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
          "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "kept"},
            {"name": "mount", "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["setns"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["arm_only"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
            {"names": ["future"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
          ]}"#;
        let names = |p: &LinuxSeccomp| -> Vec<String> {
            p.syscalls()
                .as_ref()
                .unwrap()
                .iter()
                .flat_map(|r| r.names().clone())
                .collect()
        };
        let plain = from_file(text, &caps(&["CAP_CHOWN"])).unwrap();
        assert_eq!(names(&plain), ["read", "write", "setns", "clone"]);
        assert_eq!(plain.default_errno_ret(), Some(38));
        assert_eq!(
            plain.architectures().as_ref().unwrap(),
            &[Arch::ScmpArchX86_64, Arch::ScmpArchX86]
        );
        let clone = plain.syscalls().as_ref().unwrap().last().unwrap();
        let arg = &clone.args().as_ref().unwrap()[0];
        assert_eq!((arg.value(), arg.value_two()), (0, Some(2114060288)));
        let admin = from_file(text, &caps(&["CAP_SYS_ADMIN"])).unwrap();
        assert_eq!(names(&admin), ["read", "write", "mount", "clone"]);
    }

    #[test]
    fn a_bad_profile_is_one_clear_error() {
        for (text, want) in [
            ("not json", "not valid"),
            (r#"{"syscalls": []}"#, "defaultAction"),
            (r#"{"defaultAction": "SCMP_ACT_BOGUS"}"#, "SCMP_ACT_BOGUS"),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}"#,
                "names no syscall",
            ),
            (r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#, "listener"),
        ] {
            let e = from_file(text, &[]).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains("--security-opt seccomp"),
                "{e}"
            );
        }
    }
}
