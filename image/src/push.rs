//! `Store::push`: an image of the store sent to an OCI distribution
//! registry with oci-client (the crate pull uses): each blob the registry
//! lacks is streamed from the store with a progress bar, blobs it has are
//! skipped, then the manifest exactly as stored (so the digest a pull of
//! it verifies is the one `capsa images --digests` would show).

use std::io::Read;

use indicatif::{MultiProgress, ProgressBar};
use oci_client::{Client, Reference, RegistryOperation};

use crate::error::{Error, Result};
use crate::pull::{registry_error, PullOptions};
use crate::store::{short_id, Store};

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSummary {
    /// Where the image went, as a pull would name it.
    pub reference: String,
    /// The manifest's digest.
    pub digest: String,
    /// Blobs sent, and blobs the registry had already.
    pub sent: usize,
    pub skipped: usize,
}

impl Store {
    /// Pushes image `name` to `remote` (default: `name` itself, which
    /// then names a registry, e.g. `localhost:5000/app:1`).
    pub fn push(
        &self,
        name: &str,
        remote: Option<&str>,
        opts: &PullOptions,
    ) -> Result<PushSummary> {
        let image = self.get(name)?;
        let (target, r) = crate::reference::for_registry(remote.unwrap_or(name))?;
        let (client, auth, rt) = self.connect(&r, opts)?;
        let manifest = std::fs::read(self.blob_path(&image.manifest_digest)?)
            .map_err(|e| Error::io("read the image's manifest", e))?;
        let mut blobs: Vec<(String, u64)> = vec![(image.id.clone(), 0)];
        blobs.extend(image.layers.iter().map(|l| (l.digest.clone(), l.size)));
        rt.block_on(async {
            client
                .auth(&r, &auth, RegistryOperation::Push)
                .await
                .map_err(|e| registry_error(&target, e))?;
            let multi = MultiProgress::with_draw_target(crate::store::progress_target());
            let style = crate::store::blob_bar_style();
            let (mut sent, mut skipped) = (0, 0);
            for (digest, size) in &blobs {
                let bar = multi.add(ProgressBar::new(*size));
                bar.set_style(style.clone());
                bar.set_prefix(short_id(digest).to_string());
                let there = client
                    .blob_exists(&r, digest)
                    .await
                    .map_err(|e| registry_error(&target, e))?;
                if there {
                    bar.finish_with_message("exists");
                    skipped += 1;
                    continue;
                }
                bar.set_message("pushing");
                self.push_blob(&client, &r, digest, &bar)
                    .await
                    .map_err(|e| registry_error(&target, e))?;
                bar.finish_with_message("pushed");
                sent += 1;
            }
            let media_type = http::HeaderValue::from_str(&image.manifest_media_type)
                .map_err(|e| Error::BadConfig(format!("the manifest's media type: {e}")))?;
            client
                .push_manifest_raw(&r, manifest.clone(), media_type)
                .await
                .map_err(|e| registry_error(&target, e))?;
            Ok(PushSummary {
                reference: target.clone(),
                digest: crate::digest::sha256_bytes(&manifest),
                sent,
                skipped,
            })
        })
    }

    /// Streams one blob from the store in chunks, counting them on `bar`.
    async fn push_blob(
        &self,
        client: &Client,
        r: &Reference,
        digest: &str,
        bar: &ProgressBar,
    ) -> std::result::Result<(), oci_client::errors::OciDistributionError> {
        use oci_client::errors::OciDistributionError as E;
        let path = self
            .blob_path(digest)
            .map_err(|e| E::GenericError(Some(e.to_string())))?;
        let file = std::fs::File::open(&path).map_err(E::IoError)?;
        let size = file.metadata().map_err(E::IoError)?.len();
        bar.set_length(size);
        let counter = bar.clone();
        let chunks = futures_util::stream::unfold(file, move |mut f| {
            let counter = counter.clone();
            async move {
                let mut buf = vec![0u8; 4 << 20];
                match f.read(&mut buf) {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        counter.inc(n as u64);
                        Some((Ok(bytes::Bytes::from(buf)), f))
                    }
                    Err(e) => Some((Err(E::IoError(e)), f)),
                }
            }
        });
        client
            .push_blob_stream(r, chunks, digest, Some(size))
            .await
            .map(|_| ())
    }
}

impl Store {
    /// docker's `login`: checks `user` and `password` against `registry`
    /// (an authenticated request the registry must accept), then stores
    /// them for pull and push.
    pub fn login(&self, registry: &str, user: &str, password: &str, insecure: bool) -> Result<()> {
        // Any repository: the registry answers the credentials, not it.
        let probe = format!("{registry}/capsa/login-check:latest");
        let r: Reference = probe.parse().map_err(|e| Error::InvalidReference {
            reference: registry.to_string(),
            reason: format!("{e}"),
        })?;
        let opts = PullOptions {
            username: Some(user.to_string()),
            password: Some(password.to_string()),
            insecure,
        };
        let (client, auth, rt) = self.connect(&r, &opts)?;
        rt.block_on(async {
            client.auth(&r, &auth, RegistryOperation::Pull).await?;
            let none = format!("sha256:{}", "0".repeat(64));
            client.blob_exists(&r, &none).await
        })
        .map_err(|e| registry_error(registry, e))?;
        crate::auth::Credentials::open(self.dir()).store(r.registry(), user, password)
    }

    /// docker's `logout`: forgets `registry`'s credentials; false if
    /// there were none.
    pub fn logout(&self, registry: &str) -> Result<bool> {
        crate::auth::Credentials::open(self.dir()).remove(registry)
    }
}
