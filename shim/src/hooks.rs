//! OCI hooks that run on the host for a VM-mode bundle, as Kata runs them:
//! createRuntime and prestart once the container is created in the guest,
//! poststart after it starts, poststop after it is deleted. The spec sent
//! to the guest keeps only createContainer and startContainer, which the
//! agent's libcontainer runs in the container's namespaces in the guest.
//! (Container mode: libcontainer runs them all on the host, as runc.)

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{Hook, Hooks, Spec};

/// The hooks that run on the host, by the spec's name for them.
pub enum HostHooks {
    CreateRuntime,
    Prestart,
    Poststart,
    Poststop,
}

impl HostHooks {
    fn of(&self, hooks: &Hooks) -> Vec<Hook> {
        let list = match self {
            HostHooks::CreateRuntime => hooks.create_runtime(),
            #[allow(deprecated)]
            HostHooks::Prestart => hooks.prestart(),
            HostHooks::Poststart => hooks.poststart(),
            HostHooks::Poststop => hooks.poststop(),
        };
        list.clone().unwrap_or_default()
    }

    fn name(&self) -> &'static str {
        match self {
            HostHooks::CreateRuntime => "createRuntime",
            HostHooks::Prestart => "prestart",
            HostHooks::Poststart => "poststart",
            HostHooks::Poststop => "poststop",
        }
    }
}

/// The spec for the guest: without the hooks the host runs.
pub fn guest_only(spec: &mut Spec) {
    let guest = spec.hooks().clone().and_then(|h| {
        let (create, start) = (h.create_container().clone(), h.start_container().clone());
        (create.is_some() || start.is_some()).then(|| {
            let mut guest = Hooks::default();
            guest.set_create_container(create);
            guest.set_start_container(start);
            guest
        })
    });
    spec.set_hooks(guest);
}

/// Runs `which` of `spec`'s hooks in order, each given `state` (the
/// runtime spec's state JSON) on its stdin. The first that fails (exit
/// status, or past its timeout: killed) is the error, as with runc.
pub fn run(spec: &Spec, which: HostHooks, state: &serde_json::Value) -> Result<()> {
    let Some(hooks) = spec.hooks() else {
        return Ok(());
    };
    let input = serde_json::to_vec(state)?;
    for (n, hook) in which.of(hooks).iter().enumerate() {
        let what = format!("{} hook #{n} ({})", which.name(), hook.path().display());
        run_one(hook, &input).with_context(|| format!("error running {what}"))?;
    }
    Ok(())
}

fn run_one(hook: &Hook, input: &[u8]) -> Result<()> {
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((argv0, rest)) = args.split_first() {
            cmd.arg0(argv0).args(rest);
        }
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // A hook that does not read its input must not fail the write.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let deadline = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            let said = child
                .stderr
                .take()
                .map(|e| std::io::read_to_string(e).unwrap_or_default())
                .unwrap_or_default();
            bail!("{status}: {}", said.trim());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {} s", hook.timeout().unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The state a hook reads: the runtime spec's State.
pub fn state(
    spec: &Spec,
    id: &str,
    status: &str,
    pid: i32,
    bundle: &std::path::Path,
) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": spec.version(),
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": spec.annotations().clone().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{HookBuilder, HooksBuilder, SpecBuilder};

    fn hook(script: &str) -> Hook {
        HookBuilder::default()
            .path("/bin/sh")
            .args(vec!["sh".into(), "-c".into(), script.into()])
            .env(vec!["WHO=hook".into()])
            .build()
            .unwrap()
    }

    #[test]
    fn hooks_read_the_state_and_fail_the_operation() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("seen");
        let spec = SpecBuilder::default()
            .hooks(
                HooksBuilder::default()
                    .create_runtime(vec![hook(&format!(
                        "cat > {}; echo $WHO >> {}",
                        out.display(),
                        out.display()
                    ))])
                    .poststart(vec![hook("echo broken >&2; exit 3")])
                    .create_container(vec![hook("true")])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let st = state(&spec, "c1", "created", 42, dir.path());
        run(&spec, HostHooks::CreateRuntime, &st).unwrap();
        let seen = std::fs::read_to_string(&out).unwrap();
        assert!(
            seen.contains(r#""id":"c1""#) && seen.contains(r#""status":"created""#),
            "{seen}"
        );
        assert!(seen.ends_with("hook\n"), "the hook's own env: {seen}");
        let e = run(&spec, HostHooks::Poststart, &st).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("error running poststart hook #0") && e.contains("broken"),
            "{e}"
        );

        let mut guest = spec.clone();
        guest_only(&mut guest);
        let h = guest.hooks().as_ref().unwrap();
        assert!(h.create_runtime().is_none() && h.poststart().is_none());
        assert_eq!(h.create_container().as_ref().map(Vec::len), Some(1));
    }
}
