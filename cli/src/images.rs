//! Image commands: load, pull, images, rmi, tag, save, commit.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Result};
use capsa_image::{ImageSummary, PullOptions, Store};
use capsa_shim::record::Record;
use capsa_shim::{CodedError, Roots, EXIT_CAPSA_ERROR};
use clap::Args;

use crate::table;

#[derive(Args)]
pub struct LoadArgs {
    /// OCI image layout (directory or tar) or `docker save` archive.
    #[arg(
        short = 'i',
        long = "input",
        value_name = "FILE",
        required_unless_present = "demo"
    )]
    input: Option<PathBuf>,
    /// Make the built-in demo image (busybox) without any network.
    #[arg(long, conflicts_with = "input")]
    demo: bool,
}

pub fn load(roots: &Roots, args: LoadArgs) -> Result<i32> {
    let store = Store::open(&roots.images())?;
    let loaded = match (&args.input, args.demo) {
        (_, true) => vec![store.load_demo()?],
        (Some(path), false) => store.load(path)?,
        (None, false) => unreachable!("clap requires --input or --demo"),
    };
    for img in loaded {
        if img.names.is_empty() {
            println!("Loaded image ID: {}", img.id);
        }
        for n in &img.names {
            println!("Loaded image: {n}");
        }
    }
    Ok(0)
}

#[derive(Args)]
pub struct PullArgs {
    #[command(flatten)]
    registry: RegistryArgs,
    reference: String,
}

/// How to reach a registry: pull's, push's and login's options.
#[derive(Args)]
struct RegistryArgs {
    /// Allow plain HTTP and unverified TLS for this registry.
    #[arg(long)]
    insecure: bool,
    /// Registry user name (with --password or --password-stdin; default:
    /// what `capsa login` stored).
    #[arg(short = 'u', long, env = "CAPSA_REGISTRY_USER")]
    username: Option<String>,
    /// Registry password.
    #[arg(
        short = 'p',
        long,
        env = "CAPSA_REGISTRY_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    /// Read the registry password from stdin.
    #[arg(long, conflicts_with = "password")]
    password_stdin: bool,
}

impl RegistryArgs {
    fn options(&self) -> Result<PullOptions> {
        let mut password = self.password.clone();
        if self.password_stdin {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            password = Some(s.trim_end_matches(['\n', '\r']).to_string());
        }
        Ok(PullOptions {
            username: self.username.clone(),
            password,
            insecure: self.insecure,
        })
    }
}

pub fn pull(roots: &Roots, args: PullArgs) -> Result<i32> {
    let store = Store::open(&roots.images())?;
    let img = store.pull(&args.reference, &args.registry.options()?)?;
    println!("{}", img.id);
    Ok(0)
}

#[derive(Args)]
pub struct PushArgs {
    #[command(flatten)]
    registry: RegistryArgs,
    /// The image (its name names the registry, e.g. localhost:5000/app:1).
    image: String,
    /// Where to push it instead (REGISTRY/REPOSITORY[:TAG]).
    remote: Option<String>,
}

/// docker's `push`: a progress bar per blob on stderr, then the digest.
pub fn push(roots: &Roots, args: PushArgs) -> Result<i32> {
    let store = Store::open(&roots.images())?;
    let opts = args.registry.options()?;
    let done = store.push(&args.image, args.remote.as_deref(), &opts)?;
    eprintln!(
        "{} blob(s) pushed, {} already in the registry",
        done.sent, done.skipped
    );
    println!("{}: digest: {}", done.reference, done.digest);
    Ok(0)
}

#[derive(Args)]
pub struct LoginArgs {
    #[command(flatten)]
    registry: RegistryArgs,
    /// The registry (host[:port]).
    server: String,
}

/// docker's `login`: the credentials are checked, then kept (0600) for
/// pull and push.
pub fn login(roots: &Roots, args: LoginArgs) -> Result<i32> {
    let store = Store::open(&roots.images())?;
    let opts = args.registry.options()?;
    let (Some(user), Some(password)) = (opts.username, opts.password) else {
        bail!(CodedError::new(
            EXIT_CAPSA_ERROR,
            "login: give --username and --password (or --password-stdin)".to_string()
        ));
    };
    store.login(&args.server, &user, &password, opts.insecure)?;
    println!("Login Succeeded");
    Ok(0)
}

#[derive(Args)]
pub struct LogoutArgs {
    /// The registry (host[:port]).
    server: String,
}

pub fn logout(roots: &Roots, args: LogoutArgs) -> Result<i32> {
    let store = Store::open(&roots.images())?;
    if store.logout(&args.server)? {
        println!("Removed login credentials for {}", args.server);
        Ok(0)
    } else {
        bail!(CodedError::new(
            EXIT_CAPSA_ERROR,
            format!("not logged in to {}", args.server)
        ))
    }
}

#[derive(Args)]
pub struct ImagesArgs {
    /// Only print image IDs.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Also list the unnamed images `capsa build` keeps as its cache.
    #[arg(short = 'a', long)]
    all: bool,
    /// table, table TEMPLATE, json or a template (docker's fields:
    /// Repository, Tag, ID, CreatedSince, CreatedAt, Size).
    #[arg(long)]
    format: Option<String>,
    /// Only this repository's images (with a tag, only that one), as
    /// docker's `images REPOSITORY[:TAG]`.
    #[arg(value_name = "REPOSITORY[:TAG]")]
    reference: Option<String>,
    /// docker's filters: dangling=true|false, label=KEY[=VALUE],
    /// reference=PATTERN (a glob on REPOSITORY, or REPOSITORY:TAG when it
    /// has a tag), before=IMAGE, since=IMAGE. The values of one key are
    /// alternatives; different keys must all match.
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
    filter: Vec<String>,
}

/// One `images --filter`.
enum ImageFilter {
    Dangling(bool),
    Label(String, Option<String>),
    Reference(glob::Pattern, bool),
    /// Created before (true) or after (false) this time.
    Created(chrono::DateTime<chrono::FixedOffset>, bool),
}

impl ImageFilter {
    fn parse(store: &Store, f: &str) -> Result<(String, ImageFilter)> {
        let bad =
            |why: String| CodedError::new(EXIT_CAPSA_ERROR, format!("invalid filter {f:?}: {why}"));
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| bad("give KEY=VALUE".into()))?;
        let filter = match k {
            "dangling" => ImageFilter::Dangling(
                v.parse()
                    .map_err(|_| bad("dangling is true or false".into()))?,
            ),
            "label" => match v.split_once('=') {
                Some((k, v)) => ImageFilter::Label(k.into(), Some(v.into())),
                None => ImageFilter::Label(v.into(), None),
            },
            "reference" => {
                let last = v.rsplit('/').next().unwrap_or(v);
                let pattern = glob::Pattern::new(v).map_err(|e| bad(e.to_string()))?;
                ImageFilter::Reference(pattern, last.contains(':'))
            }
            "before" | "since" => {
                let other = store.get(v).map_err(|e| bad(format!("{e:#}")))?;
                let created = other
                    .record
                    .created
                    .as_deref()
                    .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
                    .ok_or_else(|| bad(format!("{v} has no creation time")))?;
                ImageFilter::Created(created, k == "before")
            }
            _ => {
                return Err(
                    bad("the keys are dangling, label, reference, before, since".into()).into(),
                )
            }
        };
        Ok((k.to_string(), filter))
    }

    /// Whether `img` passes; a reference filter also narrows its names.
    fn keeps(&self, store: &Store, img: &ImageSummary, names: &mut Vec<String>) -> bool {
        match self {
            ImageFilter::Dangling(want) => img.names.is_empty() == *want,
            ImageFilter::Label(key, value) => {
                let labels = store
                    .get(&img.id)
                    .ok()
                    .and_then(|i| i.config.config().as_ref()?.labels().clone())
                    .unwrap_or_default();
                match value {
                    Some(v) => labels.get(key) == Some(v),
                    None => labels.contains_key(key),
                }
            }
            ImageFilter::Reference(pattern, with_tag) => {
                names.retain(|n| {
                    let n = capsa_image::reference::canonical(n);
                    let (repo, _) = repo_and_tag(n);
                    pattern.matches(if *with_tag { n } else { &repo })
                });
                !names.is_empty()
            }
            ImageFilter::Created(at, before) => img
                .created
                .as_deref()
                .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
                .is_some_and(|c| if *before { c < *at } else { c > *at }),
        }
    }
}

/// Applies `--filter`s to the list: keys all apply, the values of one
/// key are alternatives (as for `ps`).
fn apply_filters(store: &Store, given: &[String], list: &mut Vec<ImageSummary>) -> Result<()> {
    let mut keys: Vec<(String, Vec<ImageFilter>)> = Vec::new();
    for f in given {
        let (k, filter) = ImageFilter::parse(store, f)?;
        match keys.iter_mut().find(|(key, _)| *key == k) {
            Some((_, fs)) => fs.push(filter),
            None => keys.push((k, vec![filter])),
        }
    }
    list.retain_mut(|img| {
        keys.iter().all(|(_, alternatives)| {
            let before = img.names.clone();
            let mut kept = Vec::new();
            let mut any = false;
            for f in alternatives {
                let mut names = before.clone();
                if f.keeps(store, img, &mut names) {
                    any = true;
                    kept.extend(names);
                }
            }
            img.names = before.into_iter().filter(|n| kept.contains(n)).collect();
            any
        })
    });
    Ok(())
}

/// What `images REPOSITORY[:TAG]` keeps: a repository (any tag) or one
/// name, both in the store's normal form.
enum Wanted {
    All,
    Repository(String),
    Name(String),
}

impl Wanted {
    fn parse(reference: Option<&str>) -> Result<Wanted> {
        let Some(r) = reference else {
            return Ok(Wanted::All);
        };
        let name = capsa_image::reference::normalize(r)?;
        let name = capsa_image::reference::canonical(&name).to_string();
        let last = r.rsplit('/').next().unwrap_or(r);
        Ok(if last.contains(':') || last.contains('@') {
            Wanted::Name(name)
        } else {
            Wanted::Repository(name.trim_end_matches(":latest").to_string())
        })
    }

    fn keeps(&self, name: &str) -> bool {
        let name = capsa_image::reference::canonical(name);
        match self {
            Wanted::All => true,
            Wanted::Name(n) => n == name,
            Wanted::Repository(r) => repo_and_tag(name).0 == *r,
        }
    }
}

/// A stored name's REPOSITORY and TAG columns.
fn repo_and_tag(name: &str) -> (String, String) {
    match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
        _ => (name.to_string(), "<none>".into()),
    }
}

const IMAGES_HEADERS: crate::format::Headers = &[
    ("Repository", "REPOSITORY"),
    ("Tag", "TAG"),
    ("ID", "IMAGE ID"),
    ("CreatedSince", "CREATED"),
    ("CreatedAt", "CREATED AT"),
    ("Size", "SIZE"),
];
const IMAGES_TABLE: &str = "{{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}";

pub fn images(roots: &Roots, args: ImagesArgs) -> Result<i32> {
    let store = Store::open(&roots.images())?;
    let mut list = store.list()?;
    if !args.all {
        let cache = capsa_shim::build::cached_images(&store);
        list.retain(|i| !i.names.is_empty() || !cache.contains(&i.id));
    }
    apply_filters(&store, &args.filter, &mut list)?;
    let wanted = Wanted::parse(args.reference.as_deref())?;
    if !matches!(wanted, Wanted::All) {
        for img in &mut list {
            img.names.retain(|n| wanted.keeps(n));
        }
        list.retain(|i| !i.names.is_empty());
    }
    if args.quiet {
        for i in &list {
            println!("{}", table::short_id(&i.id));
        }
        return Ok(0);
    }
    let mut rows: Vec<crate::format::Fields> = Vec::new();
    for img in &list {
        let created = created_fields(img.created.as_deref());
        let names = if img.names.is_empty() {
            vec!["<none>:<none>".to_string()]
        } else {
            img.names.clone()
        };
        for n in names {
            let (repo, tag) = repo_and_tag(&n);
            rows.push(vec![
                ("Repository", repo),
                ("Tag", tag),
                ("ID", table::short_id(&img.id)),
                created[0].clone(),
                created[1].clone(),
                ("Size", table::size(img.size)),
            ]);
        }
    }
    crate::format::Format::parse(args.format.as_deref(), IMAGES_TABLE, IMAGES_HEADERS)
        .print(&rows)?;
    Ok(0)
}

#[derive(Args)]
pub struct HistoryArgs {
    /// The image (name or ID).
    image: String,
    /// Do not shorten IDs and commands.
    #[arg(long)]
    no_trunc: bool,
    /// Only print the image ID (its top row).
    #[arg(short = 'q', long)]
    quiet: bool,
    /// table, table TEMPLATE, json, or a template such as '{{.CreatedBy}}'.
    /// Fields: ID, CreatedSince, CreatedAt, CreatedBy, Size, Comment.
    #[arg(long)]
    format: Option<String>,
}

const HISTORY_HEADERS: crate::format::Headers = &[
    ("ID", "IMAGE"),
    ("CreatedSince", "CREATED"),
    ("CreatedAt", "CREATED AT"),
    ("CreatedBy", "CREATED BY"),
    ("Size", "SIZE"),
    ("Comment", "COMMENT"),
];
const HISTORY_TABLE: &str = "{{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}";

/// docker's `history`: the steps that made the image, newest first, each
/// with the size of the layer it added (the config's history, its
/// non-empty entries matched to the layers from the bottom up, as docker
/// does). Only the top row has an ID: capsa keeps no parent images.
pub fn history(roots: &Roots, args: HistoryArgs) -> Result<i32> {
    let store = Store::open(&roots.images())?;
    let img = store
        .get(&args.image)
        .map_err(|e| capsa_shim::CodedError::new(capsa_shim::EXIT_CAPSA_ERROR, e.to_string()))?;
    let id = if args.no_trunc {
        img.id.clone()
    } else {
        table::short_id(&img.id)
    };
    if args.quiet {
        println!("{id}");
        return Ok(0);
    }
    let mut layers = img.layers.iter();
    let mut steps: Vec<(Option<&str>, Option<&str>, u64, &str)> = Vec::new();
    let history = img.config.history().clone().unwrap_or_default();
    for h in &history {
        let size = if h.empty_layer().unwrap_or(false) {
            0
        } else {
            layers.next().map(|l| l.unpacked_size).unwrap_or(0)
        };
        steps.push((
            h.created().as_deref(),
            h.created_by().as_deref(),
            size,
            h.comment().as_deref().unwrap_or(""),
        ));
    }
    // Layers the history does not account for (an image without one).
    for l in layers {
        steps.push((None, None, l.unpacked_size, ""));
    }
    let rows: Vec<crate::format::Fields> = steps
        .iter()
        .rev()
        .enumerate()
        .map(|(i, (created, by, size, comment))| {
            let [created_since, created_at] = created_fields(*created);
            let by = by.unwrap_or("");
            let by = if args.no_trunc || by.chars().count() <= 45 {
                by.to_string()
            } else {
                format!("{}…", by.chars().take(44).collect::<String>())
            };
            vec![
                (
                    "ID",
                    if i == 0 {
                        id.clone()
                    } else {
                        "<missing>".into()
                    },
                ),
                created_since,
                created_at,
                ("CreatedBy", by),
                ("Size", table::size(*size)),
                ("Comment", comment.to_string()),
            ]
        })
        .collect();
    crate::format::Format::parse(args.format.as_deref(), HISTORY_TABLE, HISTORY_HEADERS)
        .print(&rows)?;
    Ok(0)
}

/// docker's CreatedSince ("2 years ago", "N/A") and CreatedAt (RFC 3339)
/// of an image's or a step's creation time.
fn created_fields(created: Option<&str>) -> [(&'static str, String); 2] {
    let at = created.and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok());
    [
        (
            "CreatedSince",
            at.map(|t| table::ago(t.with_timezone(&chrono::Utc)))
                .unwrap_or_else(|| "N/A".into()),
        ),
        ("CreatedAt", at.map(|t| t.to_rfc3339()).unwrap_or_default()),
    ]
}

#[derive(Args)]
pub struct RmiArgs {
    /// Accepted for docker's command line: an image containers were made
    /// from stays (their roots are built from its layers), with or
    /// without it; only one of its other names can be removed.
    #[arg(short = 'f', long)]
    _force: bool,
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn rmi(roots: &Roots, args: RmiArgs) -> Result<i32> {
    let store = Store::open(&roots.images())?;
    // Held while the users are checked and the image removed, so no
    // container can be created from it in between (see lifecycle::create).
    let _lock = capsa_shim::record::lock_containers(roots)?;
    let containers = Record::list(roots)?;
    let mut failed = false;
    for name in &args.images {
        let result = (|| -> Result<()> {
            // The record only: a damaged image (its config unreadable) can
            // be removed too.
            let img = store.record(name)?;
            let users: Vec<String> = containers
                .iter()
                .filter(|c| c.image_id == img.id)
                .map(|c| match c.damaged {
                    Some(_) => format!("{} (damaged)", c.short_id()),
                    None => c.name.clone(),
                })
                .collect();
            // A container's root filesystem is built from the image's layers,
            // so the image must stay while any container (even a stopped one)
            // uses it, -f or not; one of its other names may go (docker
            // untags it).
            if !users.is_empty() && img.untag_only(name).is_none() {
                bail!(CodedError::new(
                    EXIT_CAPSA_ERROR,
                    format!(
                        "image {name} is used by container(s) {}: remove them first (capsa rm)",
                        users.join(", ")
                    )
                ));
            }
            for removed in store.remove(name)? {
                println!("{removed}");
            }
            Ok(())
        })();
        if let Err(e) = result {
            crate::say_error(format!("{e:#}"));
            failed = true;
        }
    }
    Ok(if failed { 1 } else { 0 })
}

#[derive(Args)]
pub struct TagArgs {
    source: String,
    target: String,
}

pub fn tag(roots: &Roots, args: TagArgs) -> Result<i32> {
    Store::open(&roots.images())?.tag(&args.source, &args.target)?;
    Ok(0)
}

#[derive(Args)]
pub struct CommitArgs {
    /// The new image's author.
    #[arg(short = 'a', long)]
    author: Option<String>,
    /// A Dockerfile instruction for the new config (CMD, ENTRYPOINT, ENV,
    /// LABEL, WORKDIR, USER, EXPOSE, VOLUME, STOPSIGNAL); repeatable.
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    changes: Vec<String>,
    /// The history entry's comment.
    #[arg(short = 'm', long)]
    message: Option<String>,
    container: String,
    /// REPOSITORY[:TAG] for the new image (default: none, as docker's).
    name: Option<String>,
}

/// docker's `commit`: prints the new image's ID.
pub fn commit(roots: &Roots, args: CommitArgs) -> Result<i32> {
    let store = Store::open(&roots.images())?;
    let req = capsa_shim::commit::CommitRequest {
        name: args.name,
        author: args.author,
        message: args.message,
        changes: args.changes,
    };
    let image = capsa_shim::commit::commit(roots, &store, &args.container, req)?;
    println!("{}", image.id);
    Ok(0)
}

#[derive(Args)]
pub struct BuildArgs {
    /// Name the image REPOSITORY[:TAG]; repeatable.
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// A value for an ARG: KEY=VALUE, or KEY to take capsa's environment's.
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    build_args: Vec<String>,
    /// Build up to this stage.
    #[arg(long)]
    target: Option<String>,
    /// Run every step again instead of reusing earlier results.
    #[arg(long)]
    no_cache: bool,
    /// Where RUN steps run: container (namespaces) or vm (a microVM each).
    #[arg(long, default_value = "container")]
    isolation: capsa_shim::Isolation,
    /// RUN steps' network: none (the default, as `capsa run`'s) or host.
    #[arg(long, default_value = "none")]
    network: String,
    /// linux/amd64 (the only platform capsa builds for).
    #[arg(long)]
    platform: Option<String>,
    /// Timestamps in the image no later than this (seconds since 1970):
    /// the same context then gives the same image ID. Default: the
    /// SOURCE_DATE_EPOCH environment variable.
    #[arg(long, value_name = "SECONDS")]
    source_date_epoch: Option<i64>,
    /// Print only the image ID: no progress, no step output.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// A label of the image, KEY=VALUE (KEY alone: an empty value);
    /// repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// The directory COPY and ADD read from.
    context: PathBuf,
}

/// docker's `build`: progress on stderr, the image ID on stdout.
pub fn build(roots: &Roots, args: BuildArgs) -> Result<i32> {
    let refuse = |m: String| CodedError::new(EXIT_CAPSA_ERROR, m);
    let network = match args.network.as_str() {
        "none" => capsa_image::spec::Network::None,
        "host" => capsa_image::spec::Network::Host,
        other => bail!(refuse(format!(
            "--network {other}: RUN steps run with --network none or host"
        ))),
    };
    let epoch =
        match args.source_date_epoch {
            Some(e) => Some(e),
            None => match std::env::var("SOURCE_DATE_EPOCH") {
                Ok(v) if !v.is_empty() => Some(v.trim().parse().map_err(|_| {
                    refuse(format!("SOURCE_DATE_EPOCH={v}: give seconds since 1970"))
                })?),
                _ => None,
            },
        };
    // KEY=VALUE, or KEY alone.
    let key_value = |a: &String| match a.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (a.clone(), None),
    };
    let build_args = args.build_args.iter().map(key_value).collect();
    let store = Store::open(&roots.images())?;
    let req = capsa_shim::build::BuildRequest {
        context: args.context,
        dockerfile: args.file,
        tags: args.tags,
        build_args,
        target: args.target,
        no_cache: args.no_cache,
        isolation: args.isolation,
        network,
        source_date_epoch: epoch,
        platform: args.platform,
        quiet: args.quiet,
        labels: args
            .labels
            .iter()
            .map(key_value)
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect(),
    };
    let id = capsa_shim::build::build(roots, &store, req)?;
    println!("{id}");
    Ok(0)
}

#[derive(Args)]
pub struct SaveArgs {
    /// Output file (an OCI image-layout tar).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    image: String,
}

pub fn save(roots: &Roots, args: SaveArgs) -> Result<i32> {
    Store::open(&roots.images())?.save(&args.image, &args.output)?;
    Ok(0)
}
