//! Secrets in the configuration: a value that never prints, and the rule for
//! settings that take a secret either inline (or from the environment) or from
//! a file (systemd `LoadCredential=`, Docker secrets).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer};

/// A password or key. `Debug` and `Display` print `<redacted>`; the value is
/// read with [`Secret::expose`] where a client library needs it, nowhere else.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the client that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Reads a secret file: the whole file less its trailing line break. `key`
/// names the setting in errors (the path is shown, the content never).
pub fn read_file(key: &str, path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(format!("{key}: {} is empty", path.display()));
    }
    Ok(Secret(value.to_string()))
}

/// The one value of a setting given inline (`<key>`, or its environment
/// override) or as a file (`<key>_file`): the file's content when only it is
/// set, an error when both are.
pub fn resolve(key: &str, inline: &mut Option<Secret>, file: Option<&Path>) -> Result<(), String> {
    let Some(path) = file else { return Ok(()) };
    if inline.is_some() {
        return Err(format!("{key}_file: {key} is set too; give one of them"));
    }
    *inline = Some(read_file(&format!("{key}_file"), path)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2-hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(<redacted>)");
        assert_eq!(s.expose(), "hunter2-hunter2");
    }

    #[test]
    fn a_file_gives_its_content_less_the_line_break_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret value\r\n").unwrap();
        let mut v = None;
        resolve("kafka.sasl_password", &mut v, Some(&path)).unwrap();
        assert_eq!(v.as_ref().map(Secret::expose), Some("s3cret value"));
        let err = resolve("kafka.sasl_password", &mut v, Some(&path)).unwrap_err();
        assert_eq!(err, "kafka.sasl_password_file: kafka.sasl_password is set too; give one of them");
        std::fs::write(&path, "\n").unwrap();
        let err = resolve("kafka.sasl_password", &mut None, Some(&path)).unwrap_err();
        assert_eq!(err, format!("kafka.sasl_password_file: {} is empty", path.display()));
        let missing = dir.path().join("missing");
        let err = resolve("k", &mut None, Some(&missing)).unwrap_err();
        assert!(err.starts_with(&format!("k_file: cannot read {}: ", missing.display())), "{err}");
        let mut untouched = None;
        resolve("k", &mut untouched, None).unwrap();
        assert!(untouched.is_none());
    }
}
