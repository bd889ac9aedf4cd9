//! `Store::save`: an OCI image-layout tar (`oci-layout`, `index.json`,
//! `blobs/sha256/*`) that `skopeo copy oci-archive:`, `podman load` and
//! `ctr image import` accept. Its single index entry is annotated with
//! `org.opencontainers.image.ref.name` (the name as capsa shows it) and
//! `io.containerd.image.name` (fully qualified, as containerd wants it).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::json;

use crate::digest::canonical_json;
use crate::error::{Error, IoContext, Result};
use crate::import::OCI_INDEX;
use crate::reference::fully_qualified;
use crate::store::Store;

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

impl Store {
    /// Writes the image `name` (a name or id) to `out` as an OCI archive.
    /// The file appears atomically: it is written next to `out` and renamed.
    pub fn save(&self, name: &str, out: &Path) -> Result<()> {
        let img = self.get(name)?;
        let manifest = self.read_blob(&img.manifest_digest)?;
        // One index entry only: podman and skopeo refuse an archive with
        // several ("more than one image in oci, choose an image"), so like
        // `docker save NAME` the archive carries the name it was saved by
        // (or, saved by id, the image's first name).
        let chosen = crate::reference::normalize(name)
            .ok()
            .map(|n| crate::reference::canonical(&n).to_string())
            .filter(|n| img.names.contains(n))
            .or_else(|| img.names.first().cloned());
        let mut entry = json!({
            "mediaType": img.manifest_media_type,
            "digest": img.manifest_digest,
            "size": manifest.len(),
        });
        if let Some(n) = &chosen {
            entry["annotations"] = json!({
                "org.opencontainers.image.ref.name": n,
                "io.containerd.image.name": fully_qualified(n),
            });
        }
        let entries = vec![entry];
        let index = canonical_json(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": entries,
        }));

        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".capsa-save-")
            .tempfile_in(dir)
            .at("create a temporary file in", dir)?;
        let mut b = tar::Builder::new(BufWriter::new(tmp));
        let io = |e: std::io::Error| Error::io(format!("write {}", out.display()), e);
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o644, layout.len() as u64),
            "oci-layout",
            &layout[..],
        )
        .map_err(io)?;
        for d in ["blobs/", "blobs/sha256/"] {
            b.append_data(&mut header(tar::EntryType::Directory, 0o755, 0), d, &[][..])
                .map_err(io)?;
        }
        let mut blobs = vec![img.manifest_digest.clone(), img.id.clone()];
        blobs.extend(img.layers.iter().map(|l| l.digest.clone()));
        let mut seen = std::collections::HashSet::new();
        for d in blobs.into_iter().filter(|d| seen.insert(d.clone())) {
            let path = self.blob_path(&d)?;
            let f = File::open(&path).map_err(|e| {
                Error::io(
                    format!(
                        "read blob {d}: the store is damaged; remove the image and load it again"
                    ),
                    e,
                )
            })?;
            let len = f.metadata().at("stat", &path)?.len();
            let mut h = header(tar::EntryType::Regular, 0o644, len);
            b.append_data(&mut h, format!("blobs/sha256/{}", &d["sha256:".len()..]), f)
                .map_err(io)?;
        }
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o644, index.len() as u64),
            "index.json",
            &index[..],
        )
        .map_err(io)?;
        let mut w = b.into_inner().map_err(io)?;
        w.flush().map_err(io)?;
        let tmp = w.into_inner().map_err(|e| io(e.into_error()))?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(out).map_err(|e| io(e.error))?;
        let _ = fs::set_permissions(out, std::os::unix::fs::PermissionsExt::from_mode(0o644));
        Ok(())
    }
}
