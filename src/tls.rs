//! The optional HTTPS listener: `http.tls_cert` and `http.tls_key` (PEM),
//! served with OpenSSL (already linked for PostgreSQL and Kafka TLS, so no
//! second TLS stack), and picked up again when either file changes: a renewed
//! certificate (certbot, cert-manager, a deploy hook) counts for the next
//! handshake without a restart. A file that does not load keeps the previous
//! certificate and says why in the log.
//!
//! How: the acceptor's server-name callback, which OpenSSL calls for every
//! ClientHello (with or without SNI), switches the connection to the context
//! of the certificate loaded last.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::watch::modified;

use arc_swap::ArcSwap;
use openssl::ssl::{SslAcceptor, SslAcceptorBuilder, SslContext, SslMethod};

/// The certificate and key files, and the context loaded from them last.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<SslContext>,
    /// Modification times of (cert, key) when `current` was loaded.
    loaded_at: std::sync::Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

/// An OpenSSL context for `cert` (the chain, leaf first) and `key`, checked to
/// belong together; errors name the setting.
pub fn load_context(cert: &Path, key: &Path) -> Result<SslContext, String> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(|e| format!("OpenSSL: {e}"))?;
    b.set_certificate_chain_file(cert).map_err(|e| format!("http.tls_cert: {} is not a PEM certificate chain: {e}", cert.display()))?;
    let pem = std::fs::read(key).map_err(|e| format!("http.tls_key: cannot read {}: {e}", key.display()))?;
    let pkey = openssl::pkey::PKey::private_key_from_pem(&pem).map_err(|_| format!("http.tls_key: {} is not a PEM private key", key.display()))?;
    let mismatch = |_| format!("http.tls_key: {} is not the key of the certificate in {}", key.display(), cert.display());
    b.set_private_key(&pkey).map_err(mismatch)?;
    b.check_private_key().map_err(mismatch)?;
    Ok(b.build().into_context())
}

impl CertStore {
    /// Loads the files once (an error stops chronosd at start).
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<CertStore>, String> {
        let stamps = (modified(cert), modified(key));
        let context = load_context(cert, key)?;
        Ok(Arc::new(CertStore {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(context),
            loaded_at: std::sync::Mutex::new(stamps),
        }))
    }

    /// The acceptor actix-web listens with: every handshake uses the context loaded last.
    pub fn acceptor(self: &Arc<Self>) -> Result<SslAcceptorBuilder, String> {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(|e| format!("OpenSSL: {e}"))?;
        // The pair loaded by `open` (the callback below switches every
        // handshake to the context loaded last, chain included).
        let current = self.current.load();
        if let (Some(cert), Some(key)) = (current.certificate(), current.private_key()) {
            b.set_certificate(cert).map_err(|e| format!("http.tls_cert: {e}"))?;
            b.set_private_key(key).map_err(|e| format!("http.tls_key: {e}"))?;
        }
        let store = self.clone();
        b.set_servername_callback(move |ssl, _alert| {
            let context = store.current.load();
            ssl.set_ssl_context(&context).map_err(|_| openssl::ssl::SniError::ALERT_FATAL)
        });
        Ok(b)
    }

    /// Loads the files again if either changed since the last load. `Ok(true)`:
    /// a new certificate is in use; `Err`: it did not load (the old one stays).
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let stamps = (modified(&self.cert), modified(&self.key));
        let mut loaded = self.loaded_at.lock().unwrap_or_else(|e| e.into_inner());
        if *loaded == stamps {
            return Ok(false);
        }
        // Remember the attempt either way, so a bad file is reported once per change.
        *loaded = stamps;
        let context = load_context(&self.cert, &self.key)?;
        self.current.store(Arc::new(context));
        Ok(true)
    }

    /// Checks the files every `every` on a thread of its own, for the life of the process.
    pub fn watch(self: &Arc<Self>, every: Duration, reloads: prometheus::IntCounterVec) {
        let store = self.clone();
        let spawned = std::thread::Builder::new().name("tls-reload".into()).spawn(move || loop {
            std::thread::sleep(every);
            match store.reload_if_changed() {
                Ok(false) => {}
                Ok(true) => {
                    reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(cert = %store.cert.display(), "Loaded the changed TLS certificate; new connections use it.");
                }
                Err(e) => {
                    reloads.with_label_values(&["failed"]).inc();
                    tracing::error!("{e}; still serving the previous certificate.");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "Cannot start the TLS reload thread; certificate changes need a restart.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        use openssl::asn1::Asn1Time;
        use openssl::hash::MessageDigest;
        use openssl::pkey::PKey;
        use openssl::rsa::Rsa;
        use openssl::x509::{X509NameBuilder, X509};
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut subject = X509NameBuilder::new().unwrap();
        subject.append_entry_by_text("CN", name).unwrap();
        let subject = subject.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&subject).unwrap();
        b.set_issuer_name(&subject).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let (cert, keyfile) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, b.build().to_pem().unwrap()).unwrap();
        std::fs::write(&keyfile, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        (cert, keyfile)
    }

    #[test]
    fn a_bad_pair_is_named_and_a_changed_pair_loads_while_a_broken_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (a_crt, a_key) = self_signed(dir.path(), "a");
        let (_, b_key) = self_signed(dir.path(), "b");
        let err = load_context(&a_crt, &b_key).unwrap_err();
        assert!(err.starts_with("http.tls_key:") && err.contains("is not the key of the certificate"), "{err}");
        let err = load_context(&a_key, &a_key).unwrap_err();
        assert!(err.starts_with("http.tls_cert:"), "{err}");

        let store = CertStore::open(&a_crt, &a_key).unwrap();
        assert_eq!(store.reload_if_changed(), Ok(false), "nothing changed");
        let before = Arc::as_ptr(&store.current.load_full());
        // A half-written key: reported, the old context stays.
        std::fs::write(&a_key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        filetime_bump(&a_key);
        assert!(store.reload_if_changed().unwrap_err().starts_with("http.tls_key:"));
        assert_eq!(Arc::as_ptr(&store.current.load_full()), before);
        // The renewed pair: loaded.
        let (c_crt, c_key) = self_signed(dir.path(), "c");
        std::fs::copy(&c_crt, &a_crt).unwrap();
        std::fs::copy(&c_key, &a_key).unwrap();
        filetime_bump(&a_crt);
        assert_eq!(store.reload_if_changed(), Ok(true));
        assert_ne!(Arc::as_ptr(&store.current.load_full()), before);
    }

    /// Moves a file's modification time forward (file systems with coarse clocks).
    fn filetime_bump(path: &Path) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        let later = modified(path).unwrap() + Duration::from_secs(2);
        f.set_modified(later).unwrap();
    }
}
