//! docker's `commit`: a container's writable layer as one more layer on
//! its image, with the container's settings (command, environment,
//! working directory) and `--change` instructions in the new config. The
//! layer is written by `Backend::diff` (on the host, or by the guest's
//! agent in VM mode, a stopped container's VM booted again for it) and
//! stored like a pulled layer, with its checks.

use std::io::Write;

use anyhow::{bail, Context, Result};
use capsa_image::{CommitInfo, ImageSummary, Store};
use serde_json::{json, Value};

use crate::backends::backend_for;
use crate::paths::{ContainerPaths, Roots};
use crate::record::{Isolation, Record, Status};
use crate::{CodedError, EXIT_CAPSA_ERROR};

/// What `capsa commit` was asked for besides the container.
#[derive(Default)]
pub struct CommitRequest {
    /// `REPOSITORY[:TAG]` for the new image.
    pub name: Option<String>,
    pub author: Option<String>,
    pub message: Option<String>,
    /// Dockerfile instructions for the config (`-c 'CMD ["x"]'`).
    pub changes: Vec<String>,
}

fn refuse(msg: String) -> anyhow::Error {
    CodedError::new(EXIT_CAPSA_ERROR, msg).into()
}

pub fn commit(roots: &Roots, store: &Store, key: &str, req: CommitRequest) -> Result<ImageSummary> {
    let rec = Record::find(roots, key).map_err(|e| refuse(format!("{e:#}")))?;
    // Refused before any work: bad changes, then what the container is.
    let changes = req
        .changes
        .iter()
        .map(|c| Change::parse(c))
        .collect::<Result<Vec<_>>>()?;
    if let Some(name) = &req.name {
        capsa_image::reference::normalize(name).map_err(|e| refuse(e.to_string()))?;
    }
    if let Some(why) = &rec.damaged {
        bail!(refuse(format!(
            "container {} is damaged ({why})",
            rec.short_id()
        )));
    }
    if rec.bundle.is_some() {
        bail!(refuse(format!(
            "container {} was made from an engine's bundle: its root is the engine's, not a layer on an image",
            rec.id
        )));
    }
    // A stopped VM-mode container's layer is on a disk only a guest reads:
    // its VM is booted again for the guest to write the layer.
    let mut stopped_vm = None;
    if rec.isolation == Isolation::Vm {
        match rec.status() {
            Status::Running => {}
            Status::Paused => bail!(refuse(format!(
                "container {} is paused, and with it its VM, which writes the layer: unpause it first",
                rec.name
            ))),
            _ => {
                let held = crate::lifecycle::hold(roots, &rec.id)?;
                // Unless it was started meanwhile: then its VM runs.
                if !matches!(held.rec.status(), Status::Running) {
                    drop(held.all);
                    stopped_vm = Some(crate::lifecycle::boot_stopped_vm(
                        roots, store, &rec, held.busy,
                    )?);
                }
            }
        }
    }
    let base = store
        .get(&rec.image_id)
        .map_err(|e| refuse(format!("container {}: its image: {e}", rec.name)))?;
    let paths = ContainerPaths::new(roots, &rec.id);
    let spec = oci_spec::runtime::Spec::load(paths.config())?;

    let mut layer =
        tempfile::NamedTempFile::new_in(&paths.dir).context("making room for the layer")?;
    backend_for(roots, rec.isolation)?
        .diff(&rec, layer.as_file_mut())
        .with_context(|| format!("writing the layer of container {}", rec.name))?;
    layer.as_file_mut().flush()?;
    if let Some(vm) = stopped_vm {
        vm.finish()?;
    }

    let process = spec.process().as_ref();
    let env: Vec<String> = process
        .and_then(|p| p.env().clone())
        .unwrap_or_default()
        .into_iter()
        // Set per container at run time, as docker's HOSTNAME is.
        .filter(|e| !e.starts_with("HOSTNAME="))
        .collect();
    let cwd = process.map(|p| p.cwd().display().to_string());
    let entrypoint: Vec<String> = base
        .config
        .config()
        .as_ref()
        .and_then(|c| c.entrypoint().clone())
        .unwrap_or_default();
    // The command the container ran, less the image's entrypoint.
    let cmd = rec
        .command
        .strip_prefix(entrypoint.as_slice())
        .unwrap_or(&rec.command)
        .to_vec();
    let summary = store.commit(
        &base,
        Some(layer.path()),
        CommitInfo {
            name: req.name.as_deref(),
            created_by: rec.command.join(" "),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            comment: req.message,
            author: req.author,
        },
        |config| {
            config["Env"] = json!(env);
            config["Cmd"] = json!(cmd);
            if let Some(cwd) = cwd {
                config["WorkingDir"] = json!(cwd);
            }
            for c in &changes {
                c.apply(config);
            }
        },
    )?;
    crate::events::emit(roots, &rec, "commit", &[]);
    Ok(summary)
}

/// One `--change`: a Dockerfile instruction that sets a config field.
#[derive(Debug, PartialEq)]
enum Change {
    Cmd(Vec<String>),
    Entrypoint(Vec<String>),
    Env(String, String),
    Workdir(String),
    User(String),
    Label(String, String),
    Expose(String),
    Volume(String),
    StopSignal(String),
}

impl Change {
    fn parse(line: &str) -> Result<Change> {
        let line = line.trim();
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let bad = |why: &str| refuse(format!("--change {line:?}: {why}"));
        if rest.is_empty() {
            bail!(bad("the instruction needs a value"));
        }
        // KEY=VALUE, or docker's older `KEY VALUE`.
        let pair = || -> Result<(String, String)> {
            let (k, v) = rest
                .split_once('=')
                .or_else(|| rest.split_once(char::is_whitespace))
                .ok_or_else(|| bad("write KEY=VALUE"))?;
            Ok((k.trim().to_string(), unquote(v.trim())))
        };
        Ok(match word.to_ascii_uppercase().as_str() {
            "CMD" => Change::Cmd(command(rest)),
            "ENTRYPOINT" => Change::Entrypoint(command(rest)),
            "ENV" => {
                let (k, v) = pair()?;
                Change::Env(k, v)
            }
            "LABEL" => {
                let (k, v) = pair()?;
                Change::Label(unquote(&k), v)
            }
            "WORKDIR" => Change::Workdir(rest.to_string()),
            "USER" => Change::User(rest.to_string()),
            "EXPOSE" if rest.split_whitespace().count() == 1 => Change::Expose(if rest
                .contains('/')
            {
                rest.to_string()
            } else {
                format!("{rest}/tcp")
            }),
            "VOLUME" => Change::Volume(rest.to_string()),
            "STOPSIGNAL" => Change::StopSignal(rest.to_string()),
            _ => bail!(bad(
                "commit can change CMD, ENTRYPOINT, ENV, LABEL, WORKDIR, USER, EXPOSE (one port), VOLUME and STOPSIGNAL"
            )),
        })
    }

    fn apply(&self, config: &mut Value) {
        let mut set = |key: &str, v: Value| config[key] = v;
        match self {
            Change::Cmd(c) => set("Cmd", json!(c)),
            Change::Entrypoint(e) => set("Entrypoint", json!(e)),
            Change::Workdir(w) => set("WorkingDir", json!(w)),
            Change::User(u) => set("User", json!(u)),
            Change::StopSignal(s) => set("StopSignal", json!(s)),
            Change::Env(k, v) => {
                let mut env: Vec<Value> = config["Env"].as_array().cloned().unwrap_or_default();
                env.retain(|e| {
                    e.as_str()
                        .and_then(|e| e.split_once('='))
                        .is_none_or(|(n, _)| n != k)
                });
                env.push(json!(format!("{k}={v}")));
                config["Env"] = Value::Array(env);
            }
            Change::Label(k, v) => insert(config, "Labels", k, json!(v)),
            Change::Expose(p) => insert(config, "ExposedPorts", p, json!({})),
            Change::Volume(p) => insert(config, "Volumes", p, json!({})),
        }
    }
}

/// Sets `config[map][key]`, making the map if the config has none.
pub(crate) fn insert(config: &mut Value, map: &str, key: &str, v: Value) {
    if !config[map].is_object() {
        config[map] = json!({});
    }
    config[map][key] = v;
}

/// A JSON array is the exec form; anything else is the shell form.
fn command(rest: &str) -> Vec<String> {
    serde_json::from_str(rest)
        .unwrap_or_else(|_| vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
}

fn unquote(s: &str) -> String {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_parse_as_dockerfile_instructions() {
        let p = |s: &str| Change::parse(s).unwrap();
        assert_eq!(
            p(r#"CMD ["python", "-m", "http.server"]"#),
            Change::Cmd(vec!["python".into(), "-m".into(), "http.server".into()])
        );
        assert_eq!(
            p("cmd echo hi"),
            Change::Cmd(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(p("ENV A=b c"), Change::Env("A".into(), "b c".into()));
        assert_eq!(p("ENV A b"), Change::Env("A".into(), "b".into()));
        assert_eq!(
            p(r#"LABEL "team"="ml""#),
            Change::Label("team".into(), "ml".into())
        );
        assert_eq!(p("EXPOSE 8888"), Change::Expose("8888/tcp".into()));
        for bad in ["RUN make", "CMD", "ENV A", "EXPOSE 1 2", "ONBUILD X"] {
            assert!(Change::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn changes_edit_the_config() {
        let mut c = json!({"Env": ["PATH=/bin", "A=1"], "Labels": null});
        for s in ["ENV A=2", "LABEL x=y", "WORKDIR /w", "EXPOSE 53/udp"] {
            Change::parse(s).unwrap().apply(&mut c);
        }
        assert_eq!(c["Env"], json!(["PATH=/bin", "A=2"]));
        assert_eq!(c["Labels"], json!({"x": "y"}));
        assert_eq!(c["WorkingDir"], "/w");
        assert_eq!(c["ExposedPorts"], json!({"53/udp": {}}));
    }
}
