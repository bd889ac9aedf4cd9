//! `capsa build`: a Dockerfile made into an image in the store. Each RUN
//! step runs as an ordinary capsa container from the image so far, and its
//! writable layer becomes the step's layer (the same diff `commit` takes);
//! COPY and ADD write their layer from the build context; the other
//! instructions change the config. Every step's result is kept as an
//! unnamed image and found again by a cache key made of its parent, the
//! instruction and what it reads, as docker's builder does.

mod context;
mod dockerfile;
mod words;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use capsa_image::spec::{Network, RunConfig};
use capsa_image::{CommitInfo, Image, Store};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::commit::insert;
use crate::lifecycle::{self, CreateRequest, Isolation};
use crate::paths::Roots;
use crate::{CodedError, EXIT_CAPSA_ERROR};
use context::{Placement, Tree};
use dockerfile::{Cmd, Op, Step};

/// What `capsa build` was asked for.
pub struct BuildRequest {
    pub context: PathBuf,
    /// Default: `Dockerfile` in the context.
    pub dockerfile: Option<PathBuf>,
    pub tags: Vec<String>,
    /// `--build-arg K=V` (or `K`: the value from capsa's environment).
    pub build_args: Vec<(String, Option<String>)>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub isolation: Isolation,
    pub network: Network,
    /// SOURCE_DATE_EPOCH: every timestamp in the image, at most this.
    pub source_date_epoch: Option<i64>,
    pub platform: Option<String>,
    /// `-q`: no progress and no step output, only the image ID.
    pub quiet: bool,
    /// `--label KEY=VALUE`: labels of the image made, beyond the
    /// Dockerfile's.
    pub labels: Vec<(String, String)>,
}

fn refuse(msg: String) -> anyhow::Error {
    CodedError::new(EXIT_CAPSA_ERROR, msg).into()
}

/// Builds the image; returns its ID. Progress goes to stderr, the steps'
/// output to stdout and stderr as they run.
pub fn build(roots: &Roots, store: &Store, req: BuildRequest) -> Result<String> {
    if let Some(p) = &req.platform {
        dockerfile::check_platform(p).map_err(|e| refuse(format!("{e:#}")))?;
    }
    for t in &req.tags {
        capsa_image::reference::normalize(t).map_err(|e| refuse(format!("-t {t}: {e}")))?;
    }
    let file = req
        .dockerfile
        .clone()
        .unwrap_or_else(|| req.context.join("Dockerfile"));
    let text = fs::read_to_string(&file)
        .map_err(|e| refuse(format!("reading the Dockerfile {}: {e}", file.display())))?;
    let df = dockerfile::parse(&text).map_err(|e| refuse(format!("{e:#}")))?;
    if !req.context.is_dir() {
        bail!(refuse(format!(
            "the build context {} is not a directory",
            req.context.display()
        )));
    }
    let tree = Tree::context(&req.context)?;

    let mut b = Builder {
        roots,
        store,
        req: &req,
        tree,
        globals: Vec::new(),
        stages: Vec::new(),
        used_args: Vec::new(),
        total: df.stages.iter().map(|s| s.steps.len() + 1).sum(),
        done: 0,
    };
    for a in &df.global_args {
        let Op::Arg(text) = &a.op else { continue };
        let declared = b.declare_args(text, &[], a)?;
        b.globals.extend(declared);
    }
    let last = match &req.target {
        Some(t) => df
            .stages
            .iter()
            .position(|s| matches!(&s.from.op, Op::From { name: Some(n), .. } if n.eq_ignore_ascii_case(t)))
            .ok_or_else(|| refuse(format!("--target {t}: no stage of that name in the Dockerfile")))?,
        None => df.stages.len() - 1,
    };
    let mut image = None;
    for stage in &df.stages[..=last] {
        image = Some(b.stage(stage)?);
    }
    let mut image = image.expect("a Dockerfile has a stage");
    if !req.labels.is_empty() {
        // One more config step, as a LABEL at the end of the Dockerfile
        // (cached like one).
        let mut st = State {
            image,
            shell: Vec::new(),
            args: Vec::new(),
            cmd_set: false,
        };
        let text: Vec<String> = req.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        b.commit(
            &mut st,
            format!("LABEL {}", text.join(" ")),
            String::new(),
            None,
            None,
            |c| {
                for (k, v) in &req.labels {
                    insert(c, "Labels", k, json!(v));
                }
            },
        )?;
        image = st.image;
    }
    let unused: Vec<&str> = req
        .build_args
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !b.used_args.iter().any(|u| u == k))
        .collect();
    if !unused.is_empty() && !req.quiet {
        eprintln!(
            "[Warning] build-args not consumed by the Dockerfile: {}",
            unused.join(", ")
        );
    }
    for t in &req.tags {
        store.tag(&image.id, t)?;
        b.say(format_args!("Successfully tagged {t}"));
    }
    Ok(image.id.clone())
}

struct Builder<'a> {
    roots: &'a Roots,
    store: &'a Store,
    req: &'a BuildRequest,
    tree: Tree,
    /// ARGs declared before the first FROM, with their values.
    globals: Vec<(String, String)>,
    /// Each finished stage: its name and image.
    stages: Vec<(Option<String>, Image)>,
    used_args: Vec<String>,
    total: usize,
    done: usize,
}

/// A stage being built.
struct State {
    image: Image,
    shell: Vec<String>,
    args: Vec<(String, String)>,
    /// CMD was set in this stage (an ENTRYPOINT then keeps it).
    cmd_set: bool,
}

impl State {
    /// The variables instructions expand: ARGs, then ENV (ENV wins).
    fn vars(&self) -> Vec<(String, String)> {
        let mut v = self.args.clone();
        v.extend(env_of(&self.image).into_iter().filter_map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        }));
        v
    }
}

fn env_of(image: &Image) -> Vec<String> {
    image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default()
}

impl Builder<'_> {
    fn progress(&mut self, step: &Step) {
        self.done += 1;
        let (n, total) = (self.done, self.total);
        self.say(format_args!("STEP {n}/{total}: {}", step.text));
    }

    /// Progress, on stderr unless `-q`.
    fn say(&self, msg: std::fmt::Arguments<'_>) {
        if !self.req.quiet {
            eprintln!("{msg}");
        }
    }

    fn fail(step: &Step, e: impl std::fmt::Display) -> anyhow::Error {
        refuse(format!("Dockerfile line {}: {e}", step.line))
    }

    /// `ARG NAME[=default] …`: the values in scope after it.
    fn declare_args(
        &mut self,
        text: &str,
        vars: &[(String, String)],
        step: &Step,
    ) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (name, default) in words::pairs(text, vars).map_err(|e| Self::fail(step, e))? {
            let given = self.req.build_args.iter().rev().find(|(k, _)| *k == name);
            let value = match given {
                Some((_, Some(v))) => Some(v.clone()),
                Some((_, None)) => std::env::var(&name).ok(),
                None => None,
            }
            .or(default)
            .or_else(|| {
                self.globals
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            });
            if given.is_some() {
                self.used_args.push(name.clone());
            }
            if let Some(v) = value {
                out.push((name, v));
            }
        }
        Ok(out)
    }

    fn stage(&mut self, stage: &dockerfile::Stage) -> Result<Image> {
        self.progress(&stage.from);
        let Op::From { image, name } = &stage.from.op else {
            unreachable!()
        };
        let wanted =
            words::expand(image, &self.globals[..]).map_err(|e| Self::fail(&stage.from, e))?;
        let base = self
            .image_for(&wanted)
            .map_err(|e| Self::fail(&stage.from, format!("{e:#}")))?;
        let mut st = State {
            image: base,
            shell: vec!["/bin/sh".into(), "-c".into()],
            args: Vec::new(),
            cmd_set: false,
        };
        for step in &stage.steps {
            self.progress(step);
            self.step(&mut st, step)?;
        }
        self.stages.push((name.clone(), st.image.clone()));
        Ok(st.image)
    }

    /// FROM's or COPY --from's image: an earlier stage (by name or
    /// number), `scratch`, or an image (pulled if it names a registry).
    fn image_for(&self, wanted: &str) -> Result<Image> {
        if let Some((_, img)) = self
            .stages
            .iter()
            .enumerate()
            .find(|(i, (n, _))| {
                n.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(wanted))
                    || i.to_string() == wanted
            })
            .map(|(_, s)| s)
        {
            return Ok(img.clone());
        }
        if wanted == "scratch" {
            return Ok(scratch());
        }
        self.store.ensure_local(wanted)?;
        Ok(self.store.get(wanted)?)
    }

    fn step(&mut self, st: &mut State, step: &Step) -> Result<()> {
        let vars = st.vars();
        let ex = |s: &str| words::expand(s, &vars[..]).map_err(|e| Self::fail(step, e));
        let pairs = |s: &str| words::pairs(s, &vars[..]).map_err(|e| Self::fail(step, e));
        match &step.op {
            Op::From { .. } => unreachable!("FROM starts a stage"),
            Op::Arg(text) => {
                let declared = self.declare_args(text, &vars, step)?;
                st.args.extend(declared);
            }
            Op::Env(text) => {
                let mut set = Vec::new();
                for (k, v) in pairs(text)? {
                    let v = v.ok_or_else(|| Self::fail(step, format!("ENV {k}: give a value")))?;
                    set.push((k, v));
                }
                self.config_step(st, step, format!("{set:?}"), |c| {
                    let mut env: Vec<Value> = c["Env"].as_array().cloned().unwrap_or_default();
                    for (k, v) in &set {
                        env.retain(|e| {
                            let name = e.as_str().and_then(|e| e.split_once('='));
                            name.is_none_or(|(n, _)| n != k)
                        });
                        env.push(json!(format!("{k}={v}")));
                    }
                    c["Env"] = Value::Array(env);
                })?;
            }
            Op::Label(text) => {
                let set = pairs(text)?;
                self.config_step(st, step, format!("{set:?}"), |c| {
                    for (k, v) in &set {
                        insert(c, "Labels", k, json!(v.clone().unwrap_or_default()));
                    }
                })?;
            }
            Op::Run(cmd) => self
                .run(st, cmd)
                .map_err(|e| Self::fail(step, format!("{e:#}")))?,
            Op::Cmd(cmd) => {
                let argv = cmd.argv(&st.shell);
                st.cmd_set = true;
                self.config_step(st, step, format!("{argv:?}"), |c| c["Cmd"] = json!(argv))?;
            }
            Op::Entrypoint(cmd) => {
                let argv = cmd.argv(&st.shell);
                let keep_cmd = st.cmd_set;
                self.config_step(st, step, format!("{argv:?} {keep_cmd}"), |c| {
                    c["Entrypoint"] = json!(argv);
                    // docker: an ENTRYPOINT drops the CMD the base image gave.
                    if !keep_cmd {
                        c["Cmd"] = Value::Null;
                    }
                })?;
            }
            Op::Copy(copy) => self.copy(st, step, copy, &vars)?,
            Op::Workdir(dir) => {
                // Config only, as podman's: the directory is made by the
                // next step that writes into it, or when a container starts.
                let dir = ex(dir)?;
                let dir = Path::new(&workdir_of(&st.image))
                    .join(dir)
                    .display()
                    .to_string();
                self.config_step(st, step, dir.clone(), |c| c["WorkingDir"] = json!(dir))?;
            }
            Op::User(u) => {
                let u = ex(u)?;
                self.config_step(st, step, u.clone(), |c| c["User"] = json!(u))?;
            }
            Op::Expose(ports) => {
                let mut ps = Vec::new();
                for p in ports {
                    for p in words::words(p, &vars[..]).map_err(|e| Self::fail(step, e))? {
                        let (num, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                        if num.parse::<u16>().is_err() && !num.contains('-') {
                            bail!(Self::fail(step, format!("EXPOSE {p}: not a port")));
                        }
                        ps.push(format!("{num}/{}", proto.to_ascii_lowercase()));
                    }
                }
                self.config_step(st, step, format!("{ps:?}"), |c| {
                    for p in &ps {
                        insert(c, "ExposedPorts", p, json!({}));
                    }
                })?;
            }
            Op::Volume(vs) => {
                let vs = vs.iter().map(|v| ex(v)).collect::<Result<Vec<_>>>()?;
                self.config_step(st, step, format!("{vs:?}"), |c| {
                    for v in &vs {
                        insert(c, "Volumes", v, json!({}));
                    }
                })?;
            }
            Op::StopSignal(s) => {
                let s = ex(s)?;
                if lifecycle::parse_signal(&s).is_none() {
                    bail!(Self::fail(step, format!("STOPSIGNAL {s}: not a signal")));
                }
                self.config_step(st, step, s.clone(), |c| c["StopSignal"] = json!(s))?;
            }
            Op::Shell(sh) => {
                st.shell = sh.clone();
                let sh = sh.clone();
                self.config_step(st, step, format!("{sh:?}"), |c| c["Shell"] = json!(sh))?;
            }
            Op::Healthcheck { flags, test } => {
                let hc = healthcheck(flags, test.as_ref()).map_err(|e| Self::fail(step, e))?;
                self.config_step(st, step, hc.to_string(), |c| c["Healthcheck"] = hc)?;
            }
            Op::Maintainer(m) => {
                let m = ex(m)?;
                self.commit(st, nop(step), m.clone(), None, Some(m), |_| {})?;
            }
        }
        Ok(())
    }

    /// A step that only changes the config: its history line is the
    /// instruction as written (as podman's), its cache key the values it
    /// sets once variables are expanded.
    fn config_step(
        &mut self,
        st: &mut State,
        step: &Step,
        expanded: String,
        edit: impl FnOnce(&mut Value),
    ) -> Result<()> {
        self.commit(st, nop(step), expanded, None, None, edit)
    }

    fn run(&mut self, st: &mut State, cmd: &Cmd) -> Result<()> {
        let argv = cmd.argv(&st.shell);
        // Build args reach RUN as environment variables; ENV wins.
        let env_names: Vec<String> = env_of(&st.image)
            .iter()
            .filter_map(|e| e.split_once('=').map(|(k, _)| k.to_string()))
            .collect();
        let args: Vec<String> = st
            .args
            .iter()
            .filter(|(k, _)| !env_names.contains(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let created_by = match cmd {
            Cmd::Shell(_) => argv.join(" "),
            Cmd::Exec(_) => format!("RUN {}", json!(argv)),
        };
        let key_extra = args.join("\n");
        self.commit(
            st,
            created_by,
            key_extra,
            Some(Layer::Run { argv, env: args }),
            None,
            |_| {},
        )
    }

    fn copy(
        &mut self,
        st: &mut State,
        step: &Step,
        c: &dockerfile::Copy,
        vars: &[(String, String)],
    ) -> Result<()> {
        let ex = |s: &str| words::expand(s, vars).map_err(|e| Self::fail(step, e));
        let dest = ex(&c.dest)?;
        let cur = workdir_of(&st.image);
        let mut abs = Path::new(&cur).join(&dest).display().to_string();
        // docker: a destination that is a directory in the image is one,
        // written with or without the trailing slash.
        let is_dir = dest.ends_with('/') || dir_in_image(self.store, &st.image, &abs)?;
        if is_dir && !abs.ends_with('/') {
            abs.push('/');
        }
        let owner = match &c.chown {
            Some(u) => {
                let u = ex(u)?;
                let layers = self.store.layer_dirs(&st.image)?;
                let r = capsa_image::spec::resolve_user(&layers, &u)
                    .map_err(|e| Self::fail(step, format!("--chown={u}: {e}")))?;
                (r.uid, r.gid)
            }
            None => (0, 0),
        };
        let mode = match &c.chmod {
            Some(m) => Some(
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| {
                        Self::fail(step, format!("--chmod={m}: give an octal mode such as 755"))
                    })?,
            ),
            None => None,
        };
        let place = Placement {
            dest: abs.clone(),
            owner,
            mode,
            unpack_archives: c.add,
            clamp_mtime: self.req.source_date_epoch.map(|e| e.max(0) as u64),
        };
        let srcs = c.src.iter().map(|s| ex(s)).collect::<Result<Vec<_>>>()?;
        let word = if c.add { "ADD" } else { "COPY" };
        match &c.from {
            None => {
                let mut found = Vec::new();
                for s in &srcs {
                    found.extend(
                        self.tree
                            .sources(s)
                            .map_err(|e| Self::fail(step, format!("{e:#}")))?,
                    );
                }
                let digest = context::digest(&self.tree, &found, &place)?;
                let created_by = format!("/bin/sh -c #(nop) {word} dir:{digest} in {abs}");
                self.commit(
                    st,
                    created_by,
                    format!("{:?}", (owner, mode)),
                    Some(Layer::Copy {
                        from: None,
                        found,
                        place,
                    }),
                    None,
                    |_| {},
                )
            }
            Some(from) => {
                let from = ex(from)?;
                let img = self
                    .image_for(&from)
                    .map_err(|e| Self::fail(step, format!("--from={from}: {e:#}")))?;
                let created_by = format!(
                    "/bin/sh -c #(nop) {word} --from={} {} in {abs}",
                    img.id,
                    srcs.join(" ")
                );
                let layer = Layer::Copy {
                    from: Some(Box::new((img, srcs))),
                    found: vec![],
                    place,
                };
                self.commit(
                    st,
                    created_by,
                    format!("{:?}", (owner, mode)),
                    Some(layer),
                    None,
                    |_| {},
                )
            }
        }
    }

    /// One step's image: found in the cache, or made (running the step's
    /// layer maker) and then remembered.
    fn commit(
        &mut self,
        st: &mut State,
        created_by: String,
        key_extra: String,
        layer: Option<Layer>,
        author: Option<String>,
        edit: impl FnOnce(&mut Value),
    ) -> Result<()> {
        let key = {
            let mut h = Sha256::new();
            for part in [
                st.image.id.as_str(),
                &created_by,
                &key_extra,
                &format!("{:?}", self.req.source_date_epoch),
            ] {
                h.update(part.as_bytes());
                h.update([0]);
            }
            hex::encode(h.finalize())
        };
        let cache = cache_dir(self.store);
        if !self.req.no_cache {
            if let Some(img) = fs::read_to_string(cache.join(&key))
                .ok()
                .and_then(|id| self.store.get(id.trim()).ok())
            {
                self.say(format_args!("--> Using cache {}", img.id));
                st.image = img;
                return Ok(());
            }
        }
        let dir = build_tmp(self.store).context("making room for the step's layer")?;
        let tar = dir.path().join("layer.tar");
        let made = match layer {
            None => false,
            Some(l) => {
                self.make_layer(st, l, &tar)?;
                true
            }
        };
        let created = match self.req.source_date_epoch {
            Some(e) => chrono::DateTime::from_timestamp(e, 0)
                .ok_or_else(|| refuse(format!("SOURCE_DATE_EPOCH {e} is out of range")))?,
            None => chrono::Utc::now(),
        }
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let summary = self.store.commit(
            &st.image,
            made.then_some(tar.as_path()),
            CommitInfo {
                name: None,
                created_by,
                created,
                comment: None,
                author,
            },
            edit,
        )?;
        fs::create_dir_all(&cache)?;
        let tmp = cache.join(format!(".{key}.tmp"));
        fs::write(&tmp, &summary.id)?;
        fs::rename(&tmp, cache.join(&key))?;
        st.image = self.store.get(&summary.id)?;
        self.say(format_args!("--> {}", capsa_image::short_id(&st.image.id)));
        Ok(())
    }

    fn make_layer(&self, st: &State, layer: Layer, tar: &Path) -> Result<()> {
        let clamp = self.req.source_date_epoch.map(|e| e.max(0) as u64);
        match layer {
            Layer::Copy {
                from: None,
                found,
                place,
            } => {
                context::write_layer(&self.tree, &found, &place, fs::File::create(tar)?)?;
            }
            Layer::Copy {
                from: Some(from),
                place,
                ..
            } => {
                let (img, srcs) = *from;
                copy_from_image(self.store, &img, &srcs, &place, tar)?;
            }
            Layer::Run { argv, env } => {
                let raw = tar.with_extension("raw");
                run_step(self.roots, self.store, self.req, st, argv, env, &raw)?;
                normalize_layer(&raw, tar, clamp)?;
            }
        }
        Ok(())
    }
}

/// The history line of a step that runs nothing.
fn nop(step: &Step) -> String {
    format!("/bin/sh -c #(nop) {}", step.full)
}

/// How a step makes its layer.
enum Layer {
    Copy {
        /// `--from`: that image's files, by these source names.
        from: Option<Box<(Image, Vec<String>)>>,
        /// From the context: these paths.
        found: Vec<PathBuf>,
        place: Placement,
    },
    Run {
        argv: Vec<String>,
        env: Vec<String>,
    },
}

/// Runs a RUN step as a container of the image so far and writes its
/// writable layer to `out`. The container is removed on every path.
fn run_step(
    roots: &Roots,
    store: &Store,
    req: &BuildRequest,
    st: &State,
    argv: Vec<String>,
    env: Vec<String>,
    out: &Path,
) -> Result<()> {
    let shown = argv.join(" ");
    let run = RunConfig {
        container_id: capsa_network::random_id()?,
        args: Some(argv),
        entrypoint: Some(vec![]),
        env,
        network: req.network.clone(),
        ..RunConfig::default()
    };
    let rec = lifecycle::create(
        roots,
        store,
        CreateRequest {
            name: None,
            image: st.image.id.clone(),
            run,
            isolation: req.isolation,
            auto_remove: false,
            log: Default::default(),
            storage_size: None,
            restart: Default::default(),
            interactive: false,
            kernel: None,
            network: None,
            network_of: None,
            labels: Default::default(),
            // A build runs no healthcheck, as docker's.
            health: crate::health::HealthFlags {
                none: true,
                ..Default::default()
            },
            stop_signal: None,
            stop_timeout: None,
            userns: Default::default(),
        },
    )?;
    let result = (|| -> Result<()> {
        // The monitor writes the layer once the process has exited, before
        // it tears the container down (VM mode: the guest's agent writes it).
        let mut rec = rec.clone();
        rec.layer_on_exit = Some(out.to_path_buf());
        rec.save(roots)?;
        let code = supervise_in_child(roots, &rec.id, req.quiet)?;
        if code != 0 {
            bail!(refuse(format!(
                "the command '{shown}' returned a non-zero code: {code}"
            )));
        }
        if !out.exists() {
            bail!("the step's layer was not written (see above)");
        }
        Ok(())
    })();
    if let Err(e) = lifecycle::remove(roots, &rec.id, true) {
        tracing::warn!("removing the build container {}: {e:#}", rec.id);
    }
    result
}

/// Runs the container's monitor in a child process and waits for it:
/// the monitor's keeper takes over signals and the process's role, so it
/// cannot be this (long-lived) builder. Ctrl-C stops the step's container
/// (the monitor passes it on) and the builder cleans up.
fn supervise_in_child(roots: &Roots, id: &str, quiet: bool) -> Result<i32> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    use nix::sys::wait::{waitpid, WaitStatus};
    if !crate::monitor::keeper::can_fork() {
        bail!("capsa build: internal error: more than one thread before a RUN step");
    }
    // SAFETY: setting a disposition (ignore or default) runs no handler.
    let ignore = |h| unsafe {
        let _ = signal(Signal::SIGINT, h);
        let _ = signal(Signal::SIGTERM, h);
    };
    // SAFETY: single-threaded (checked above); the child only runs the
    // monitor and exits.
    match unsafe { nix::unistd::fork() }.context("forking the step's monitor")? {
        nix::unistd::ForkResult::Child => {
            // The step's output goes to stderr (stdout is the image ID's),
            // or nowhere with -q.
            let null = std::fs::OpenOptions::new().write(true).open("/dev/null");
            let to = match (&null, quiet) {
                (Ok(f), true) => std::os::fd::AsRawFd::as_raw_fd(f),
                _ => 2,
            };
            // SAFETY: plain descriptor duplication onto stdout (and stderr).
            unsafe {
                libc::dup2(to, 1);
                if quiet {
                    libc::dup2(to, 2);
                }
            }
            let code = match crate::monitor::supervise(roots, id, crate::monitor::Mode::Foreground)
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("capsa: {e:#}");
                    125
                }
            };
            let _ = std::io::stdout().flush();
            std::process::exit(code);
        }
        nix::unistd::ForkResult::Parent { child } => {
            ignore(SigHandler::SigIgn);
            let status = loop {
                match waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other,
                }
            };
            ignore(SigHandler::SigDfl);
            match status.context("waiting for the step's container")? {
                WaitStatus::Exited(_, code) => Ok(code),
                WaitStatus::Signaled(_, sig, _) => Ok(128 + sig as i32),
                other => Err(anyhow!("the step's monitor ended oddly: {other:?}")),
            }
        }
    }
}

/// A RUN step's layer, rewritten with no timestamp after
/// SOURCE_DATE_EPOCH (when given), so the same files give the same bytes.
fn normalize_layer(raw: &Path, out: &Path, clamp: Option<u64>) -> Result<()> {
    let mut ar = tar::Archive::new(fs::File::open(raw)?);
    let mut b = tar::Builder::new(fs::File::create(out)?);
    for e in ar.entries()? {
        let mut e = e?;
        let path = e.path()?.into_owned();
        let mut h = e.header().clone();
        if let Some(t) = clamp {
            h.set_mtime(h.mtime().unwrap_or(0).min(t));
        }
        match h.entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = e.link_name()?.unwrap_or_default().into_owned();
                b.append_link(&mut h, &path, target)?;
            }
            _ => b.append_data(&mut h, &path, &mut e)?,
        }
    }
    b.into_inner()?.flush()?;
    Ok(())
}

/// COPY --from: the other image's root is mounted read-only in a child's
/// own mount namespace (gone with the child on any path) and the layer is
/// written from it.
fn copy_from_image(
    store: &Store,
    img: &Image,
    srcs: &[String],
    place: &Placement,
    out: &Path,
) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    use nix::sys::wait::{waitpid, WaitStatus};
    let layers = store.layer_dirs(img)?;
    let root = build_tmp(store)?;
    if !crate::monitor::keeper::can_fork() {
        bail!("capsa build: internal error: more than one thread before COPY --from");
    }
    // SAFETY: single-threaded (checked above); the child exits.
    match unsafe { nix::unistd::fork() }.context("forking for COPY --from")? {
        nix::unistd::ForkResult::Child => {
            let r = (|| -> Result<()> {
                capsa_container::rootfs::private_mount_namespace()?;
                let ro = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
                match layers.len() {
                    0 => {}
                    1 => {
                        mount(
                            Some(&layers[0]),
                            root.path(),
                            None::<&str>,
                            MsFlags::MS_BIND,
                            None::<&str>,
                        )?;
                        mount(
                            None::<&str>,
                            root.path(),
                            None::<&str>,
                            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | ro,
                            None::<&str>,
                        )?;
                    }
                    _ => {
                        let lower: Vec<String> = layers
                            .iter()
                            .rev()
                            .map(|l| l.display().to_string())
                            .collect();
                        let opts = format!("lowerdir={}", lower.join(":"));
                        mount(
                            Some("overlay"),
                            root.path(),
                            Some("overlay"),
                            ro,
                            Some(opts.as_str()),
                        )?;
                    }
                }
                let tree = Tree::all(root.path())?;
                let mut found = Vec::new();
                for s in srcs {
                    found.extend(tree.sources(s)?);
                }
                context::write_layer(&tree, &found, place, fs::File::create(out)?)
            })();
            if let Err(e) = &r {
                eprintln!("capsa: COPY --from: {e:#}");
            }
            std::process::exit(i32::from(r.is_err()));
        }
        nix::unistd::ForkResult::Parent { child } => match waitpid(child, None)? {
            WaitStatus::Exited(_, 0) => Ok(()),
            _ => Err(refuse("COPY --from failed (see above)".into())),
        },
    }
}

/// Whether `path` is a directory in `image`, as its layers' overlay
/// would show it: the topmost layer that has the path decides (a whiteout
/// there deletes it).
fn dir_in_image(store: &Store, image: &Image, path: &str) -> Result<bool> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return Ok(true);
    }
    for layer in store.layer_dirs(image)?.iter().rev() {
        if let Ok(m) = fs::symlink_metadata(layer.join(rel)) {
            let whiteout = m.file_type().is_char_device() && m.rdev() == 0;
            return Ok(m.is_dir() && !whiteout);
        }
    }
    Ok(false)
}

fn workdir_of(image: &Image) -> String {
    image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.working_dir().clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into())
}

/// The image `FROM scratch` starts with: no layers, an empty config.
fn scratch() -> Image {
    let config: capsa_image::oci_spec::image::ImageConfiguration = serde_json::from_value(json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }))
    .expect("a valid empty config");
    Image::from_config(config)
}

/// A scratch directory for one step, in the store's file system (its
/// layers can be large) but not in the store's `tmp`, whose reaping would
/// take it from a step that runs long; removed when dropped.
fn build_tmp(store: &Store) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(store.dir())
}

/// The cache: step key → the image that step made.
fn cache_dir(store: &Store) -> PathBuf {
    store.dir().join("build-cache")
}

/// The images the build cache holds (each step's result), which `capsa
/// images` lists only with `-a` unless they have a name.
pub fn cached_images(store: &Store) -> std::collections::HashSet<String> {
    fs::read_dir(cache_dir(store))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

/// Forgets every cached step (`capsa system prune`); the images they named
/// are then unnamed images like any other.
pub fn clear_cache(store: &Store) -> Result<()> {
    for e in fs::read_dir(cache_dir(store))
        .into_iter()
        .flatten()
        .flatten()
    {
        fs::remove_file(e.path())?;
    }
    Ok(())
}

/// HEALTHCHECK's config entry, as docker stores it (durations in ns).
fn healthcheck(flags: &[(String, String)], test: Option<&Cmd>) -> Result<Value> {
    let Some(test) = test else {
        return Ok(json!({"Test": ["NONE"]}));
    };
    let test: Vec<String> = match test {
        Cmd::Exec(v) => std::iter::once("CMD".to_string())
            .chain(v.iter().cloned())
            .collect(),
        Cmd::Shell(s) => vec!["CMD-SHELL".into(), s.clone()],
    };
    let mut hc = json!({"Test": test});
    for (k, v) in flags {
        let field = match k.as_str() {
            "interval" => "Interval",
            "timeout" => "Timeout",
            "start-period" => "StartPeriod",
            "start-interval" => "StartInterval",
            "retries" => {
                let n: u64 = v.parse().map_err(|_| anyhow!("--retries={v}: not a number"))?;
                hc["Retries"] = json!(n);
                continue;
            }
            other => bail!("HEALTHCHECK --{other} is not an option (interval, timeout, start-period, start-interval, retries)"),
        };
        hc[field] = json!(go_duration(v)
            .ok_or_else(|| anyhow!("--{k}={v}: not a duration such as 30s or 1m30s"))?);
    }
    Ok(hc)
}

/// Go's duration syntax (`1m30s`, `500ms`) in nanoseconds, as Dockerfile
/// and compose healthchecks write durations.
pub fn go_duration(s: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[u..];
        total += num * unit;
    }
    Some(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_healthchecks_as_docker_stores_them() {
        assert_eq!(go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(go_duration("500ms"), Some(500_000_000));
        assert_eq!(go_duration("5"), None);
        let hc = healthcheck(
            &[
                ("interval".into(), "5s".into()),
                ("retries".into(), "3".into()),
            ],
            Some(&Cmd::Shell("curl -f localhost".into())),
        )
        .unwrap();
        assert_eq!(
            hc,
            json!({"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 5_000_000_000u64, "Retries": 3})
        );
        assert!(healthcheck(&[("bogus".into(), "1".into())], None).is_ok());
        assert!(healthcheck(
            &[("bogus".into(), "1".into())],
            Some(&Cmd::Exec(vec!["x".into()]))
        )
        .is_err());
    }
}
