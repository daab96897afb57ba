//! The archive's location, through `object_store`: a local directory
//! (`file://`) or an object store (`s3://…`). Uploads go to a temporary
//! name, are read back and compared, then renamed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Bytes per upload part.
const PART: usize = 8 << 20;

/// An opened archive location.
pub struct Target {
    store: Box<dyn ObjectStore>,
    prefix: ObjectPath,
    /// The directory, for a `file://` archive (fsync).
    local: Option<PathBuf>,
    pub url: url::Url,
}

impl Target {
    pub fn open(url: &url::Url) -> Result<Target> {
        let (store, prefix) = object_store::parse_url(url).with_context(|| format!("opening the archive at {url}"))?;
        let local = (url.scheme() == "file").then(|| url.to_file_path().ok()).flatten();
        if let Some(dir) = &local {
            std::fs::create_dir_all(dir).with_context(|| format!("creating the archive directory {}", dir.display()))?;
        }
        Ok(Target { store, prefix, local, url: url.clone() })
    }

    /// The full object path of `name` (relative to the archive's root).
    fn path(&self, name: &str) -> ObjectPath {
        name.split('/').fold(self.prefix.clone(), |p, part| p.child(part))
    }

    /// Where `name` is, for messages.
    pub fn display(&self, name: &str) -> String {
        match &self.local {
            Some(dir) => dir.join(name).display().to_string(),
            None => format!("{}/{name}", self.url.as_str().trim_end_matches('/')),
        }
    }

    /// Uploads `file` as `name.tmp`, makes it durable, reads it back and
    /// compares size and checksum with `sha256`, then renames it to `name`.
    /// `after` is called between the steps (failpoints).
    pub async fn put_verified(&self, file: &Path, name: &str, sha256: &str, bytes: u64, after: impl Fn(&str)) -> Result<()> {
        let tmp = self.path(&format!("{name}.tmp"));
        let mut upload = WriteMultipart::new_with_chunk_size(self.store.put_multipart(&tmp).await?, PART);
        let mut f = std::fs::File::open(file)?;
        let mut buf = vec![0u8; PART];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)?;
            if n == 0 {
                break;
            }
            upload.wait_for_capacity(2).await?;
            upload.write(&buf[..n]);
        }
        upload.finish().await.with_context(|| format!("uploading {}", self.display(name)))?;
        after("upload");
        if let Some(dir) = &self.local {
            sync_file_and_dir(&dir.join(format!("{name}.tmp")))?;
        }
        after("fsync");
        let (got_sha, got_bytes) = self.sha256_of(&tmp).await?;
        if got_sha != sha256 || got_bytes != bytes {
            anyhow::bail!(
                "{}: read back {got_bytes} bytes with sha256 {got_sha}, wrote {bytes} bytes with sha256 {sha256}",
                self.display(&format!("{name}.tmp"))
            );
        }
        after("verify");
        let dst = self.path(name);
        self.store.rename(&tmp, &dst).await.with_context(|| format!("renaming to {}", self.display(name)))?;
        if let Some(dir) = &self.local {
            sync_file_and_dir(&dir.join(name))?;
        }
        after("rename");
        Ok(())
    }

    /// Writes a small object whole (a manifest).
    pub async fn put_small(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(name);
        self.store.put(&path, PutPayload::from(bytes)).await.with_context(|| format!("writing {}", self.display(name)))?;
        if let Some(dir) = &self.local {
            sync_file_and_dir(&dir.join(name))?;
        }
        Ok(())
    }

    pub async fn get_small(&self, name: &str) -> Result<Vec<u8>> {
        let r = self.store.get(&self.path(name)).await.with_context(|| format!("reading {}", self.display(name)))?;
        Ok(r.bytes().await?.to_vec())
    }

    /// The checksum (hex) and size of an object, streamed.
    async fn sha256_of(&self, path: &ObjectPath) -> Result<(String, u64)> {
        let mut stream = self.store.get(path).await?.into_stream();
        let (mut hasher, mut bytes) = (Sha256::new(), 0u64);
        while let Some(chunk) = stream.try_next().await? {
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
        }
        Ok((super::file::hex(&hasher.finalize()), bytes))
    }

    /// Downloads `name` into a temporary file (streamed) and returns it.
    pub async fn download(&self, name: &str, into: &Path) -> Result<tempfile::NamedTempFile> {
        let tmp = tempfile::Builder::new().suffix(".parquet").tempfile_in(into)?;
        let mut out = tokio::fs::File::create(tmp.path()).await?;
        let mut stream = self.store.get(&self.path(name)).await.with_context(|| format!("reading {}", self.display(name)))?.into_stream();
        while let Some(chunk) = stream.try_next().await? {
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        Ok(tmp)
    }

    /// Every object under the archive's root, as names relative to it.
    pub async fn list(&self) -> Result<Vec<String>> {
        let mut stream = self.store.list(Some(&self.prefix));
        let mut names = Vec::new();
        let prefix = format!("{}/", self.prefix.as_ref());
        while let Some(meta) = stream.try_next().await? {
            let full = meta.location.as_ref();
            names.push(full.strip_prefix(&prefix).unwrap_or(full).to_string());
        }
        Ok(names)
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        self.store.delete(&self.path(name)).await.with_context(|| format!("deleting {}", self.display(name)))
    }
}

/// fsync a file and the directory that names it.
fn sync_file_and_dir(path: &Path) -> Result<()> {
    std::fs::File::open(path)?.sync_all().with_context(|| format!("fsync {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
