//! Test certificates made with openssl: a CA, a server certificate it signs
//! for `localhost` only, and a second CA that signed nothing here.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Certs {
    /// The CA that signed the server certificate.
    pub ca: PathBuf,
    /// The server certificate (`DNS:localhost`) and its PKCS#8 key.
    pub server_crt: PathBuf,
    pub server_key: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl (apt install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Writes the certificates into `dir`.
pub fn make(dir: &Path) -> Certs {
    std::fs::create_dir_all(dir).unwrap();
    openssl(
        dir,
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=chronos test CA"],
    );
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    openssl(
        dir,
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.crt", "-days", "2", "-subj", "/CN=another CA"],
    );
    Certs { ca: dir.join("ca.crt"), server_crt: dir.join("server.crt"), server_key: dir.join("server.key"), other_ca: dir.join("other.crt") }
}
