//! `Store::commit`: a new image from a base image and one more layer (a
//! container's writable layer, for `capsa commit`). The layer tar came from
//! a container, so it is untrusted: it is unpacked with the same checks as
//! a pulled layer.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;

use flate2::write::GzEncoder;

use crate::digest::HashingReader;
use crate::error::{Error, IoContext, Result};
use crate::import::{OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST};
use crate::store::{stage_image, Image, ImageSummary, Staging, Store};

/// What `commit` writes beside the new layer.
pub struct CommitInfo<'a> {
    /// The new image's name, if any (`REPOSITORY[:TAG]`).
    pub name: Option<&'a str>,
    /// The history entry's `created_by` (the container's command, or the
    /// Dockerfile instruction).
    pub created_by: String,
    /// RFC 3339: the config's and the history entry's creation time.
    pub created: String,
    pub comment: Option<String>,
    pub author: Option<String>,
}

impl Store {
    /// Stores `base`'s layers plus `layer` (an uncompressed tar; none for
    /// a step that only changes the config) as a new image. Its config is
    /// `base`'s with the new layer, a creation time, a history entry and
    /// whatever `edit` changes in `config` (Cmd, Env, …).
    pub fn commit(
        &self,
        base: &Image,
        layer: Option<&Path>,
        info: CommitInfo<'_>,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<ImageSummary> {
        let mut st = Staging::new(self)?;
        let mut new_layer = None;
        if let Some(layer) = layer {
            let open = || File::open(layer).at("open", layer).map(BufReader::new);
            let (diff_id, _) = HashingReader::new(open()?).finish().at("read", layer)?;
            let mut blob = st.blob_writer()?;
            {
                let mut gz = GzEncoder::new(&mut blob, flate2::Compression::fast());
                io::copy(&mut open()?, &mut gz).at("compress", layer)?;
                gz.finish().at("compress", layer)?;
            }
            let (digest, size) = st.finish_blob("the new layer", blob, None)?;
            new_layer = Some((diff_id, digest, size));
        }

        let now = info.created.clone();
        let mut config = self.raw_config(base)?;
        config["created"] = now.clone().into();
        if let Some(a) = &info.author {
            config["author"] = a.clone().into();
        }
        let mut step = serde_json::json!({"created": now, "created_by": info.created_by});
        match &new_layer {
            Some((diff_id, _, _)) => {
                push(&mut config["rootfs"]["diff_ids"], diff_id.clone().into())
            }
            None => step["empty_layer"] = true.into(),
        }
        if let Some(c) = &info.comment {
            step["comment"] = c.clone().into();
        }
        if let Some(a) = &info.author {
            step["author"] = a.clone().into();
        }
        push(&mut config["history"], step);
        if !config["config"].is_object() {
            config["config"] = serde_json::json!({});
        }
        edit(&mut config["config"]);
        let config_bytes = crate::digest::canonical_json(&config);
        let parsed = crate::store::parse_config("the new config", &config_bytes)?;
        let (cfg_digest, cfg_size) = st.add_blob_bytes("config", &config_bytes, None)?;

        let mut layers: Vec<(String, String, u64)> = base
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.media_type.clone(), l.size))
            .collect();
        if let Some((_, digest, size)) = new_layer {
            layers.push((digest, OCI_LAYER_GZIP.to_string(), size));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": cfg_size},
            "layers": layers.iter().map(|(digest, media_type, size)| serde_json::json!({
                "mediaType": media_type, "digest": digest, "size": size,
            })).collect::<Vec<_>>(),
        });
        let (mdigest, _) =
            st.add_blob_bytes("manifest", &crate::digest::canonical_json(&manifest), None)?;
        let names = match info.name {
            Some(n) => {
                vec![crate::reference::canonical(&crate::reference::normalize(n)?).to_string()]
            }
            None => vec![],
        };
        let summary = stage_image(
            &mut st,
            names,
            &mdigest,
            OCI_MANIFEST,
            &cfg_digest,
            &parsed,
            layers,
        )?;
        st.commit()?;
        Ok(summary)
    }
}

impl Store {
    /// `base`'s config as stored, with the fields capsa's typed config
    /// lacks (docker's Healthcheck, Shell, OnBuild) kept; an image known
    /// only by its config (`scratch`) has no blob and gives that config.
    pub fn raw_config(&self, base: &Image) -> Result<serde_json::Value> {
        let stored = self
            .blob_path(&base.id)
            .ok()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        match stored {
            Some(v) => Ok(v),
            None => serde_json::to_value(&base.config)
                .map_err(|e| Error::BadConfig(format!("the base image's config: {e}"))),
        }
    }
}

fn push(list: &mut serde_json::Value, item: serde_json::Value) {
    match list.as_array_mut() {
        Some(a) => a.push(item),
        None => *list = serde_json::Value::Array(vec![item]),
    }
}
