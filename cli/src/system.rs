//! `capsa system df` and `capsa system prune` (docker's): what images,
//! containers, named volumes and the build cache take of the disk, and
//! taking back what nothing uses.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Result;
use capsa_image::store::{ImageRecord, Store};
use capsa_shim::disk::usage;
use capsa_shim::paths::Roots;
use capsa_shim::record::{Record, Status};
use capsa_shim::{lifecycle, volumes, CodedError, EXIT_CAPSA_ERROR};
use clap::{Args, Subcommand};

use crate::format::{Fields, Format, Headers};
use crate::table;

#[derive(Args)]
pub struct SystemArgs {
    #[command(subcommand)]
    command: SystemCommand,
}

#[derive(Subcommand)]
enum SystemCommand {
    /// Disk use of images, containers, local volumes and the build cache.
    Df {
        /// table, table TEMPLATE, json or a template (fields: Type,
        /// TotalCount, Active, Size, Reclaimable).
        #[arg(long)]
        format: Option<String>,
    },
    /// Remove stopped containers, unused networks, dangling images and the
    /// build cache.
    Prune {
        /// Remove every image no container uses, not only unnamed ones.
        #[arg(short = 'a', long)]
        all: bool,
        /// Remove the named volumes no container uses too.
        #[arg(long)]
        volumes: bool,
        /// Do not ask for confirmation.
        #[arg(short = 'f', long)]
        force: bool,
    },
}

pub fn system(roots: &Roots, args: SystemArgs) -> Result<i32> {
    match args.command {
        SystemCommand::Df { format } => df(roots, format.as_deref()),
        SystemCommand::Prune {
            all,
            volumes,
            force,
        } => prune(roots, all, volumes, force),
    }
}

const DF_HEADERS: Headers = &[
    ("Type", "TYPE"),
    ("TotalCount", "TOTAL"),
    ("Active", "ACTIVE"),
    ("Size", "SIZE"),
    ("Reclaimable", "RECLAIMABLE"),
];
const DF_TABLE: &str = "{{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}";

/// What one kind of thing holds: how many, how many in use, their disk use
/// and what removing the unused ones would give back.
struct Row {
    kind: &'static str,
    total: usize,
    active: usize,
    size: u64,
    reclaimable: u64,
}

impl Row {
    fn fields(&self) -> Fields {
        let pct = match self.size {
            0 => 0,
            s => self.reclaimable * 100 / s,
        };
        vec![
            ("Type", self.kind.to_string()),
            ("TotalCount", self.total.to_string()),
            ("Active", self.active.to_string()),
            ("Size", table::size(self.size)),
            (
                "Reclaimable",
                format!("{} ({pct}%)", table::size(self.reclaimable)),
            ),
        ]
    }
}

/// The disk use of `images` together, and of those a container uses.
fn image_row(
    kind: &'static str,
    store: &Store,
    images: &[&ImageRecord],
    used: &HashSet<String>,
) -> Row {
    let paths = |only_used: bool| -> Vec<PathBuf> {
        images
            .iter()
            .filter(|r| !only_used || used.contains(&r.id))
            .flat_map(|r| store.paths_of(r))
            .collect()
    };
    let size = usage(paths(false));
    let kept = usage(paths(true));
    Row {
        kind,
        total: images.len(),
        active: images.iter().filter(|r| used.contains(&r.id)).count(),
        size,
        reclaimable: size.saturating_sub(kept),
    }
}

fn df(roots: &Roots, format: Option<&str>) -> Result<i32> {
    let store = Store::open(&roots.images())?;
    let containers = Record::list(roots)?;
    let used: HashSet<String> = containers.iter().map(|c| c.image_id.clone()).collect();
    let records = store.records()?;
    let cache = capsa_shim::build::cached_images(&store);
    let (cached, images): (Vec<&ImageRecord>, Vec<&ImageRecord>) = records
        .iter()
        .partition(|r| r.names.is_empty() && cache.contains(&r.id));

    let running = |c: &Record| c.status() != Status::Stopped;
    let dir_of = |c: &Record| roots.container(&c.id);

    let vols = volumes::list(roots)?;
    let vol_dir =
        |v: &volumes::Volume| v.mountpoint.parent().unwrap_or(&v.mountpoint).to_path_buf();
    let vol_used: Vec<bool> = vols
        .iter()
        .map(|v| volumes::users(roots, &v.name).is_ok_and(|u| !u.is_empty()))
        .collect();
    let vol_paths = |unused_only: bool| -> Vec<PathBuf> {
        vols.iter()
            .zip(&vol_used)
            .filter(|(_, u)| !unused_only || !**u)
            .map(|(v, _)| vol_dir(v))
            .collect()
    };

    let rows = [
        image_row("Images", &store, &images, &used),
        Row {
            kind: "Containers",
            total: containers.len(),
            active: containers.iter().filter(|c| running(c)).count(),
            size: usage(containers.iter().map(dir_of)),
            reclaimable: usage(containers.iter().filter(|c| !running(c)).map(dir_of)),
        },
        Row {
            kind: "Local Volumes",
            total: vols.len(),
            active: vol_used.iter().filter(|u| **u).count(),
            size: usage(vol_paths(false)),
            reclaimable: usage(vol_paths(true)),
        },
        image_row("Build Cache", &store, &cached, &used),
    ];
    let rows: Vec<Fields> = rows.iter().map(Row::fields).collect();
    Format::parse(format, DF_TABLE, DF_HEADERS).print(&rows)?;
    Ok(0)
}

/// Everything under capsa's roots that prune can free, for the total.
fn disk_in_use(roots: &Roots) -> u64 {
    usage([roots.images()])
}

fn prune(roots: &Roots, all: bool, with_volumes: bool, force: bool) -> Result<i32> {
    if !force {
        let mut what = vec![
            "all stopped containers",
            "all networks not used by at least one container",
        ];
        if with_volumes {
            what.push("all volumes not used by at least one container");
        }
        what.push(match all {
            true => "all images without at least one container associated to them",
            false => "all dangling images",
        });
        what.push("all build cache");
        eprintln!("WARNING! This will remove:");
        for w in what {
            eprintln!("  - {w}");
        }
        eprint!("\nAre you sure you want to continue? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(CodedError::new(EXIT_CAPSA_ERROR, "nothing removed").into());
        }
    }
    let before = disk_in_use(roots);

    let mut removed = Vec::new();
    for c in Record::list(roots)? {
        if c.status() == Status::Stopped && lifecycle::remove(roots, &c.id, false).is_ok() {
            removed.push(c.id);
        }
    }
    section("Deleted Containers", &removed);
    section("Deleted Networks", &crate::networks::prune(roots)?);
    if with_volumes {
        section("Deleted Volumes", &volumes::prune(roots)?);
    }

    let store = Store::open(&roots.images())?;
    capsa_shim::build::clear_cache(&store)?;
    let mut lines = Vec::new();
    {
        // Held while users are checked and images removed (as rmi does).
        let _lock = capsa_shim::record::lock_containers(roots)?;
        let used: HashSet<String> = Record::list(roots)?
            .into_iter()
            .map(|c| c.image_id)
            .collect();
        for r in store.records()? {
            if !used.contains(&r.id) && (all || r.names.is_empty()) {
                // By ID: every name goes with it.
                lines.extend(store.remove(&r.id)?);
            }
        }
    }
    section("Deleted Images", &lines);

    let freed = before.saturating_sub(disk_in_use(roots));
    println!("Total reclaimed space: {}", table::size(freed));
    Ok(0)
}

/// docker's listing of what one kind of prune removed (nothing when empty).
fn section(title: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    println!("{title}:");
    for i in items {
        println!("{i}");
    }
    println!();
}
