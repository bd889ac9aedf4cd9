//! Image commands: load, pull, images, rmi, tag, save.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Result};
use capsa_image::{PullOptions, Store};
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
    /// Allow plain HTTP and unverified TLS for this registry.
    #[arg(long)]
    insecure: bool,
    /// Registry user name (with --password or --password-stdin).
    #[arg(long, env = "CAPSA_REGISTRY_USER")]
    username: Option<String>,
    /// Registry password.
    #[arg(long, env = "CAPSA_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Read the registry password from stdin.
    #[arg(long, conflicts_with = "password")]
    password_stdin: bool,
    reference: String,
}

pub fn pull(roots: &Roots, args: PullArgs) -> Result<i32> {
    let store = Store::open(&roots.images())?;
    let mut password = args.password.clone();
    if args.password_stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        password = Some(s.trim_end_matches(['\n', '\r']).to_string());
    }
    let opts = PullOptions {
        username: args.username.clone(),
        password,
        insecure: args.insecure,
    };
    let img = store.pull(&args.reference, &opts)?;
    println!("{}", img.id);
    Ok(0)
}

/// Pulls `image` if it is not in the store and names a registry host, as
/// `docker run` does; otherwise leaves the not-found error to the caller.
/// An image that is in the store but damaged is an error here, saying
/// which blob is damaged and how to repair or remove the image.
pub fn ensure_local(store: &Store, image: &str) -> Result<()> {
    match store.get(image) {
        Ok(_) => return Ok(()),
        Err(e @ capsa_image::Error::Damaged { .. }) => return Err(e.into()),
        Err(_) => {}
    }
    let first = image.split('/').next().unwrap_or("");
    let names_registry =
        image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if names_registry {
        eprintln!("Unable to find image '{image}' locally; pulling it");
        store.pull(image, &PullOptions::default())?;
    }
    Ok(())
}

#[derive(Args)]
pub struct ImagesArgs {
    /// Only print image IDs.
    #[arg(short = 'q', long)]
    quiet: bool,
}

pub fn images(roots: &Roots, args: ImagesArgs) -> Result<i32> {
    let store = Store::open(&roots.images())?;
    let list = store.list()?;
    if args.quiet {
        for i in &list {
            println!("{}", table::short_id(&i.id));
        }
        return Ok(0);
    }
    let mut rows = Vec::new();
    for img in &list {
        let created = img
            .created
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .map(|t| table::ago(t.with_timezone(&chrono::Utc)))
            .unwrap_or_else(|| "N/A".into());
        let names = if img.names.is_empty() {
            vec!["<none>:<none>".to_string()]
        } else {
            img.names.clone()
        };
        for n in names {
            let (repo, tag) = match n.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
                _ => (n.clone(), "<none>".into()),
            };
            rows.push(vec![
                repo,
                tag,
                table::short_id(&img.id),
                created.clone(),
                table::size(img.size),
            ]);
        }
    }
    table::print(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows);
    Ok(0)
}

#[derive(Args)]
pub struct RmiArgs {
    /// Remove even if containers were made from it (they keep working).
    #[arg(short = 'f', long)]
    force: bool,
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
            // uses it.
            if !users.is_empty() && (!args.force || img.names.len() <= 1) {
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
            eprintln!("capsa: {e:#}");
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
