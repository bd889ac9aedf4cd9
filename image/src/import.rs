//! `Store::load`: OCI image layouts (directory or tar) and `docker save`
//! archives (auto-detected), all through one staging area.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::digest::hex_of;
use crate::error::{Error, IoContext, Result};
use crate::store::{clean_names, parse_config, stage_image, ImageSummary, Staging, Store};
use crate::unpack::{sniff, Compression};

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// A content descriptor, tolerant of both OCI and docker media types.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Desc {
    #[serde(default)]
    pub media_type: Option<String>,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// A manifest or an index (whichever fields are present).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestDoc {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Desc>,
    #[serde(default)]
    pub layers: Option<Vec<Desc>>,
    #[serde(default)]
    pub manifests: Option<Vec<Desc>>,
}

impl ManifestDoc {
    pub(crate) fn parse(what: &str, data: &[u8]) -> Result<ManifestDoc> {
        serde_json::from_slice(data)
            .map_err(|e| Error::BadConfig(format!("{what} is not valid JSON: {e}")))
    }
    pub(crate) fn is_index(&self) -> bool {
        self.manifests.is_some()
            || matches!(
                self.media_type.as_deref(),
                Some(OCI_INDEX) | Some(DOCKER_LIST)
            )
    }
}

/// Picks the linux/amd64 entry of an index (or its only entry without platform).
pub(crate) fn pick_platform(manifests: &[Desc]) -> Option<&Desc> {
    manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .or_else(|| {
            if manifests.len() == 1 && manifests[0].platform.is_none() {
                manifests.first()
            } else {
                None
            }
        })
}

/// Media type of a layer blob from its first bytes.
pub(crate) fn layer_media_type(path: &Path) -> Result<&'static str> {
    Ok(match sniff(path)? {
        Compression::None => OCI_LAYER,
        Compression::Gzip => OCI_LAYER_GZIP,
        Compression::Zstd => OCI_LAYER_ZSTD,
    })
}

/// Joins an archive-relative path to `base`, refusing `..` and absolute paths.
fn inside(base: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(Error::BadConfig(format!(
            "archive refers to {rel:?}, outside the archive"
        )));
    }
    Ok(base.join(p))
}

impl Store {
    /// Imports every image in an OCI image layout (directory or tar, also
    /// gzip/zstd-compressed) or a `docker save` archive. Names come from the
    /// `io.containerd.image.name` / `org.opencontainers.image.ref.name`
    /// annotations or from `RepoTags`. Nothing is left in the store if any
    /// part fails.
    pub fn load(&self, path: &Path) -> Result<Vec<ImageSummary>> {
        let meta = fs::metadata(path)
            .map_err(|e| Error::io(format!("cannot read image archive {}", path.display()), e))?;
        let mut st = Staging::new(self)?;
        let src = if meta.is_dir() {
            path.to_path_buf()
        } else {
            let dest = st.work_dir().join("archive");
            extract_archive(path, &dest)?;
            dest
        };
        let out = if src.join("oci-layout").is_file() || src.join("index.json").is_file() {
            load_oci_layout(&mut st, &src)?
        } else if src.join("manifest.json").is_file() {
            load_docker_save(&mut st, &src)?
        } else {
            return Err(Error::Unsupported(format!(
                "{} is neither an OCI image layout (oci-layout, index.json) nor a `docker save` archive (manifest.json)",
                path.display()
            )));
        };
        if out.is_empty() {
            return Err(Error::BadConfig(format!(
                "{} contains no image",
                path.display()
            )));
        }
        st.commit()?;
        Ok(out)
    }
}

fn extract_archive(path: &Path, dest: &Path) -> Result<()> {
    let f = BufReader::new(File::open(path).at("open", path)?);
    let reader: Box<dyn Read> = match sniff(path)? {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(f).at("open zstd", path)?)
        }
    };
    fs::create_dir_all(dest).at("create", dest)?;
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(false);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    ar.unpack(dest).map_err(|e| {
        Error::BadConfig(format!(
            "image archive {} is unreadable or truncated: {e}",
            path.display()
        ))
    })
}

fn read_json_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(format!("read {what} {}", path.display()), e))
}

fn load_oci_layout(st: &mut Staging<'_>, dir: &Path) -> Result<Vec<ImageSummary>> {
    let data = read_json_file(&dir.join("index.json"), "OCI layout index")?;
    let index = ManifestDoc::parse("index.json of the OCI layout", &data)?;
    let entries = index.manifests.unwrap_or_default();
    let mut out = Vec::new();
    for entry in &entries {
        let mut names = Vec::new();
        if let Some(a) = &entry.annotations {
            if let Some(n) = a.get("io.containerd.image.name") {
                names.push(n.clone());
            } else if let Some(n) = a.get("org.opencontainers.image.ref.name") {
                // A bare tag ("latest", as `skopeo copy … oci:DIR:latest`
                // writes) names no repository: load the image unnamed.
                if n.contains(':') || n.contains('/') {
                    names.push(n.clone());
                } else {
                    tracing::warn!(
                        "image reference {n:?} in {} is only a tag; loading the image without a name (name it with `capsa tag`)",
                        dir.display()
                    );
                }
            }
        }
        let names = clean_names(names);
        out.push(load_oci_manifest(st, dir, entry, names, 0)?);
    }
    Ok(out)
}

fn blob_in(dir: &Path, digest: &str) -> Result<PathBuf> {
    Ok(dir.join("blobs/sha256").join(hex_of(digest)?))
}

fn load_oci_manifest(
    st: &mut Staging<'_>,
    dir: &Path,
    desc: &Desc,
    names: Vec<String>,
    depth: u32,
) -> Result<ImageSummary> {
    let what = format!("manifest {}", desc.digest);
    let (digest, _) = st.add_blob_file(&what, &blob_in(dir, &desc.digest)?, Some(&desc.digest))?;
    let data = fs::read(st.blob_path(&digest)?).at("read", dir)?;
    let doc = ManifestDoc::parse(&what, &data)?;
    if doc.is_index() {
        if depth > 2 {
            return Err(Error::BadConfig("image indexes nested too deeply".into()));
        }
        let manifests = doc.manifests.unwrap_or_default();
        let pick = pick_platform(&manifests).ok_or_else(|| {
            Error::Unsupported(format!("index {} has no linux/amd64 image", desc.digest))
        })?;
        return load_oci_manifest(st, dir, &pick.clone(), names, depth + 1);
    }
    let media_type = doc
        .media_type
        .clone()
        .or_else(|| desc.media_type.clone())
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    let cfg = doc
        .config
        .ok_or_else(|| Error::BadConfig(format!("{what} has no config")))?;
    let (cfg_digest, _) = st.add_blob_file(
        &format!("image config {}", cfg.digest),
        &blob_in(dir, &cfg.digest)?,
        Some(&cfg.digest),
    )?;
    let cfg_data = fs::read(st.blob_path(&cfg_digest)?).at("read", dir)?;
    let config = parse_config(&cfg_digest, &cfg_data)?;
    let mut layers = Vec::new();
    for l in doc.layers.unwrap_or_default() {
        let (d, size) = st.add_blob_file(
            &format!("layer {}", l.digest),
            &blob_in(dir, &l.digest)?,
            Some(&l.digest),
        )?;
        let mt = l.media_type.unwrap_or_else(|| OCI_LAYER_GZIP.to_string());
        if mt.contains("nondistributable") || mt.contains("foreign") {
            return Err(Error::Unsupported(format!("layer media type {mt}")));
        }
        layers.push((d, mt, size));
    }
    stage_image(
        st,
        names,
        &digest,
        &media_type,
        &cfg_digest,
        &config,
        layers,
    )
}

#[derive(Debug, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// The digest a `docker save` file name implies, if any
/// (`<hex>.json`, `<hex>/layer.tar`, `blobs/sha256/<hex>`).
fn implied_digest(rel: &str) -> Option<String> {
    let candidates = [rel.strip_suffix(".json"), rel.strip_prefix("blobs/sha256/")];
    candidates
        .into_iter()
        .flatten()
        .map(|h| format!("sha256:{h}"))
        .find(|d| hex_of(d).is_ok())
}

fn load_docker_save(st: &mut Staging<'_>, dir: &Path) -> Result<Vec<ImageSummary>> {
    let data = read_json_file(&dir.join("manifest.json"), "docker save manifest")?;
    let entries: Vec<DockerEntry> = serde_json::from_slice(&data).map_err(|e| {
        Error::BadConfig(format!(
            "manifest.json of the docker archive is malformed: {e}"
        ))
    })?;
    let mut out = Vec::new();
    for e in entries {
        let cfg_path = inside(dir, &e.config)?;
        let expected = implied_digest(&e.config);
        let (cfg_digest, cfg_size) = st.add_blob_file(
            &format!("image config {}", e.config),
            &cfg_path,
            expected.as_deref(),
        )?;
        let cfg_data = fs::read(st.blob_path(&cfg_digest)?).at("read", &cfg_path)?;
        let config = parse_config(&cfg_digest, &cfg_data)?;
        let mut layers = Vec::new();
        for rel in &e.layers {
            let p = inside(dir, rel)?;
            let expected = rel
                .strip_prefix("blobs/sha256/")
                .map(|h| format!("sha256:{h}"));
            let (d, size) = st.add_blob_file(&format!("layer {rel}"), &p, expected.as_deref())?;
            let mt = layer_media_type(&st.blob_path(&d)?)?;
            layers.push((d, mt.to_string(), size));
        }
        // docker save has no manifest of its own in the legacy format: make
        // an OCI manifest so the image can be saved and pushed again.
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": cfg_size},
            "layers": layers.iter().map(|(d, mt, s)| serde_json::json!({
                "mediaType": mt, "digest": d, "size": s
            })).collect::<Vec<_>>(),
        });
        let mbytes = crate::digest::canonical_json(&manifest);
        let (mdigest, _) = st.add_blob_bytes("generated manifest", &mbytes, None)?;
        let names = clean_names(e.repo_tags.unwrap_or_default());
        out.push(stage_image(
            st,
            names,
            &mdigest,
            OCI_MANIFEST,
            &cfg_digest,
            &config,
            layers,
        )?);
    }
    Ok(out)
}
