//! `Store::pull`: fetch an image from an OCI distribution registry with
//! oci-client, verifying every blob, into the same staging area as `load`.
//!
//! - Manifest lists / OCI indexes: the linux/amd64 entry is used.
//! - Layers: gzip, zstd or uncompressed tars (sniffed), each digest checked
//!   while it streams to disk and again by the store.
//! - Auth: anonymous, HTTP basic, or bearer tokens (oci-client answers the
//!   registry's challenge with the given username/password).
//! - Plain HTTP only with `insecure`, or for `localhost` / `127.0.0.1` / `::1`.
//! - One progress bar per layer on stderr, hidden when stderr is not a tty.

use std::io::Write;

use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::digest::hex_of;
use crate::error::{Error, Result};
use crate::import::{
    layer_media_type, pick_platform, ManifestDoc, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX,
    OCI_LAYER_GZIP, OCI_MANIFEST,
};
use crate::store::{parse_config, short_id, stage_image, ImageSummary, Staging, Store};

/// Options of [`Store::pull`].
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registry user (basic auth, or to obtain a bearer token).
    pub username: Option<String>,
    pub password: Option<String>,
    /// Allow plain HTTP to this registry (always allowed for localhost).
    pub insecure: bool,
}

fn is_local(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

pub(crate) fn registry_error(reference: &str, e: OciDistributionError) -> Error {
    let text = e.to_string();
    let hint = match &e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => {
            "; check the registry username and password"
        }
        OciDistributionError::RequestError(re) if re.is_connect() => {
            "; cannot connect: is the registry running, and does it speak HTTPS? (use --insecure for a plain-HTTP registry)"
        }
        OciDistributionError::RequestError(_) => {
            "; is the registry reachable, and does it speak HTTPS? (use --insecure for a plain-HTTP registry)"
        }
        OciDistributionError::RegistryError { .. }
            if text.contains("manifest unknown") || text.contains("name unknown") =>
        {
            "; the image or tag does not exist in the registry"
        }
        _ => "",
    };
    let mut reason = text;
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        reason.push_str(&format!(": {s}"));
        src = s.source();
    }
    Error::Registry {
        reference: reference.to_string(),
        reason: format!("{reason}{hint}"),
    }
}

const MANIFEST_TYPES: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];

impl Store {
    /// A client for `r`'s registry (plain HTTP only when asked or local),
    /// the credentials to give it (`opts`', else those `capsa login`
    /// stored), and the runtime to drive it on.
    pub(crate) fn connect(
        &self,
        r: &Reference,
        opts: &PullOptions,
    ) -> Result<(Client, RegistryAuth, tokio::runtime::Runtime)> {
        let registry = r.resolve_registry().to_string();
        let protocol = if opts.insecure || is_local(&registry) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        // reqwest is built without a default crypto provider; ring is ours.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::new(ClientConfig {
            protocol,
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(30)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            // A blob goes up in one streamed PUT, not a PATCH per chunk.
            use_monolithic_push: true,
            ..Default::default()
        });
        let stored = || crate::auth::Credentials::open(self.dir()).lookup(r.registry());
        let auth = match (&opts.username, &opts.password) {
            (Some(u), p) => RegistryAuth::Basic(u.clone(), p.clone().unwrap_or_default()),
            (None, _) => match stored() {
                Some((u, p)) => RegistryAuth::Basic(u, p),
                None => RegistryAuth::Anonymous,
            },
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the registry client", e))?;
        Ok((client, auth, rt))
    }

    /// docker's "Unable to find image locally": an image not in the store
    /// whose name names a registry (`localhost:5000/x`, `host.tld/x`) is
    /// pulled; other missing names are left for the caller's lookup to
    /// report.
    pub fn ensure_local(&self, image: &str) -> Result<()> {
        match self.get(image) {
            Ok(_) => return Ok(()),
            Err(e @ Error::Damaged { .. }) => return Err(e),
            Err(_) => {}
        }
        let first = image.split('/').next().unwrap_or("");
        let names_registry = image.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        if names_registry {
            eprintln!("Unable to find image '{image}' locally; pulling it");
            self.pull(image, &PullOptions::default())?;
        }
        Ok(())
    }

    /// Pulls `reference` (e.g. `localhost:5000/demo:t`, `busybox`) and
    /// stores it under that name (`:latest` added when untagged). Blobs
    /// already in the store are not downloaded again.
    pub fn pull(&self, reference: &str, opts: &PullOptions) -> Result<ImageSummary> {
        let (name, r) = crate::reference::for_registry(reference)?;
        let (client, auth, rt) = self.connect(&r, opts)?;
        let mut st = Staging::new(self)?;
        let summary = rt.block_on(pull_into(&mut st, &client, &r, &auth, &name))?;
        st.commit()?;
        Ok(summary)
    }
}

async fn fetch_manifest(
    client: &Client,
    r: &Reference,
    auth: &RegistryAuth,
    name: &str,
) -> Result<(Vec<u8>, String)> {
    let (body, digest) = client
        .pull_manifest_raw(r, auth, MANIFEST_TYPES)
        .await
        .map_err(|e| registry_error(name, e))?;
    let actual = crate::digest::sha256_bytes(&body);
    if let Some(expected) = r.digest() {
        crate::digest::verify(&format!("manifest of {name}"), expected, &actual)?;
    }
    crate::digest::verify(&format!("manifest of {name}"), &digest, &actual)?;
    Ok((body.to_vec(), actual))
}

async fn fetch_blob(
    st: &mut Staging<'_>,
    client: &Client,
    r: &Reference,
    digest: &str,
    what: &str,
    bar: &ProgressBar,
    name: &str,
) -> Result<(String, u64)> {
    hex_of(digest)?;
    let mut stream = client
        .pull_blob_stream(r, digest)
        .await
        .map_err(|e| registry_error(name, e))?;
    if let Some(len) = stream.content_length {
        bar.set_length(len);
    }
    let mut w = st.blob_writer()?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if e.to_string().to_lowercase().contains("digest") {
                Error::DigestMismatch {
                    what: what.to_string(),
                    expected: digest.to_string(),
                    actual: e.to_string(),
                }
            } else {
                Error::Registry {
                    reference: name.to_string(),
                    reason: format!("download of {what} failed: {e}"),
                }
            }
        })?;
        w.write_all(&chunk)
            .map_err(|e| Error::io(format!("write {what}"), e))?;
        bar.inc(chunk.len() as u64);
    }
    st.finish_blob(what, w, Some(digest))
}

async fn pull_into(
    st: &mut Staging<'_>,
    client: &Client,
    r: &Reference,
    auth: &RegistryAuth,
    name: &str,
) -> Result<ImageSummary> {
    client
        .auth(r, auth, RegistryOperation::Pull)
        .await
        .map_err(|e| registry_error(name, e))?;
    let (mut body, mut mdigest) = fetch_manifest(client, r, auth, name).await?;
    let mut doc = ManifestDoc::parse(&format!("manifest of {name}"), &body)?;
    if doc.is_index() {
        let manifests = doc.manifests.clone().unwrap_or_default();
        let pick = pick_platform(&manifests).ok_or_else(|| {
            Error::Unsupported(format!(
                "{name} has no linux/amd64 image in its manifest list"
            ))
        })?;
        let by_digest = r.clone_with_digest(pick.digest.clone());
        let (b, d) = fetch_manifest(client, &by_digest, auth, name).await?;
        crate::digest::verify(
            &format!("manifest of {name} (linux/amd64)"),
            &pick.digest,
            &d,
        )?;
        body = b;
        mdigest = d;
        doc = ManifestDoc::parse(&format!("manifest of {name}"), &body)?;
        if doc.is_index() {
            return Err(Error::BadConfig(format!(
                "{name}: nested manifest lists are not supported"
            )));
        }
    }
    let media_type = doc
        .media_type
        .clone()
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    st.add_blob_bytes(&format!("manifest of {name}"), &body, Some(&mdigest))?;
    let cfg = doc
        .config
        .clone()
        .ok_or_else(|| Error::BadConfig(format!("manifest of {name} has no config")))?;

    let multi = MultiProgress::with_draw_target(crate::store::progress_target());
    let style = crate::store::blob_bar_style();
    let hidden = ProgressBar::hidden();

    let cfg_what = format!("image config {}", cfg.digest);
    let cfg_digest = if st.has_blob(&cfg.digest) {
        cfg.digest.clone()
    } else {
        fetch_blob(st, client, r, &cfg.digest, &cfg_what, &hidden, name)
            .await?
            .0
    };
    let cfg_data = std::fs::read(st.blob_path(&cfg_digest)?)
        .map_err(|e| Error::io(format!("read {cfg_what}"), e))?;
    crate::digest::verify(
        &cfg_what,
        &cfg_digest,
        &crate::digest::sha256_bytes(&cfg_data),
    )?;
    let config = parse_config(&cfg_digest, &cfg_data)?;

    let layer_descs = doc.layers.clone().unwrap_or_default();
    let bars: Vec<ProgressBar> = layer_descs
        .iter()
        .map(|l| {
            let b = multi.add(ProgressBar::new(l.size));
            b.set_style(style.clone());
            b.set_prefix(short_id(&l.digest).to_string());
            b.set_message("waiting");
            b
        })
        .collect();
    let mut layers = Vec::new();
    for (l, bar) in layer_descs.iter().zip(&bars) {
        if l.media_type
            .as_deref()
            .is_some_and(|m| m.contains("nondistributable") || m.contains("foreign"))
        {
            return Err(Error::Unsupported(format!(
                "layer {} has media type {}, which capsa does not fetch",
                l.digest,
                l.media_type.as_deref().unwrap_or_default()
            )));
        }
        let what = format!("layer {}", l.digest);
        let (d, size) = if st.has_blob(&l.digest) {
            bar.finish_with_message("exists");
            let p = st.blob_path(&l.digest)?;
            let size = std::fs::metadata(&p)
                .map_err(|e| Error::io("stat blob", e))?
                .len();
            (l.digest.clone(), size)
        } else {
            bar.set_message("downloading");
            let res = fetch_blob(st, client, r, &l.digest, &what, bar, name).await?;
            bar.finish_with_message("done");
            res
        };
        let mt = match l.media_type.clone() {
            Some(m) => m,
            None => layer_media_type(&st.blob_path(&d)?)
                .unwrap_or(OCI_LAYER_GZIP)
                .to_string(),
        };
        layers.push((d, mt, size));
    }
    let stored_name = crate::reference::canonical(name).to_string();
    stage_image(
        st,
        vec![stored_name],
        &mdigest,
        &media_type,
        &cfg_digest,
        &config,
        layers,
    )
}
