//! capsa's OCI image store: load, pull, save, layer unpacking and runtime
//! spec generation.
//!
//! # API
//!
//! ```text
//! Store::open(root)                    -> Store              images live under <root>/images
//! Store::load(path)                    -> Vec<ImageSummary>  OCI layout dir/tar (also .gz/.zst) or `docker save` tar
//! Store::load_demo()                   -> ImageSummary       "demo:latest" from /bin/busybox, offline, deterministic
//! Store::load_demo_from(busybox)       -> ImageSummary       same, from another busybox binary
//! Store::pull(reference, &PullOptions) -> ImageSummary       registry pull (linux/amd64), PullOptions{username,password,insecure}
//! Store::list()                        -> Vec<ImageSummary>  in the order images were added
//! Store::get(name_or_id)               -> Image              "demo", "demo:latest", "localhost:5000/x:t", full id or id prefix
//! Store::tag(src, new_name)                                  the name moves if another image had it
//! Store::remove(name_or_id)            -> Vec<String>        "Untagged: …" / "Deleted: …" lines (docker's)
//! Store::save(name_or_id, out)                               OCI image-layout tar, one index entry
//! Store::layer_dirs(&image)            -> Vec<PathBuf>       unpacked layers, LOWEST first (reverse for lowerdir=)
//! Store::rootfs_image(&image, fmt)     -> PathBuf            flattened read-only ext4/erofs image for vm mode
//! spec::generate(&image, rootfs, &layers, &RunConfig) -> oci_spec::runtime::Spec
//! ```
//!
//! [`Image`] (id = config digest, names, manifest digest, created, size,
//! layers, parsed config) serializes to JSON for `capsa inspect`.
//!
//! Errors ([`Error`]): `NotFound`, `Ambiguous` (id prefix),
//! `InvalidReference`, `DigestMismatch`, `CorruptLayer` (truncated or
//! unreadable layer tar, path escapes), `BadConfig` (malformed
//! manifest/config/layout, missing blob), `Unsupported` (other platform,
//! unknown format), `InvalidRunConfig` (bad `capsa run` options),
//! `Registry` and `Io`. Each message says what the user can do.
//!
//! Every blob is verified (sha256) before it is committed; every import is
//! staged in a temporary directory in the store and committed atomically
//! (see [`store`] for the on-disk layout). Layers are unpacked once per
//! diff_id, with OCI whiteouts turned into overlayfs whiteouts, so
//! [`Store::layer_dirs`] can be used directly as overlayfs lower dirs.
//!
//! All functions are synchronous; [`Store::pull`] runs a private tokio
//! runtime. Errors are [`Error`], whose messages say what to do.

pub mod auth;
mod commit;
mod demo;
mod digest;
mod error;
mod import;
mod pull;
mod push;

pub mod reference;
mod rootfs;
mod save;

pub mod spec;
pub mod store;
mod unpack;

#[cfg(test)]
mod tests;

pub use commit::CommitInfo;
pub use demo::{BUSYBOX, DEMO_NAME};
pub use error::{Error, Result};

pub use pull::PullOptions;
pub use push::PushSummary;
pub use rootfs::{filesystem_image_of, RootfsFormat};
pub use store::{short_id, Image, ImageRecord, ImageSummary, Layer, Store};

/// Re-exported so callers use the same oci-spec version.
pub use oci_spec;
