//! Reads a request body under its size caps: the raw body (413 naming the
//! limit, checked before and while reading) and, for `Content-Encoding: gzip`,
//! the decompressed body (a gzip bomb stops at the cap instead of growing memory).

use std::io::Read;

use actix_web::web;
use futures_util::StreamExt;

use super::error::IngestError;

/// How the body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

impl Encoding {
    /// From the `Content-Encoding` header.
    pub fn from_header(value: Option<&str>) -> Result<Self, IngestError> {
        match value.map(str::trim) {
            None | Some("") => Ok(Encoding::Identity),
            Some(v) if v.eq_ignore_ascii_case("identity") => Ok(Encoding::Identity),
            Some(v) if v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip") => Ok(Encoding::Gzip),
            Some(v) => Err(IngestError::UnsupportedEncoding(v.chars().take(64).collect())),
        }
    }
}

/// Reads the whole body, refusing it as soon as it passes `limit` bytes.
pub async fn read_capped(mut payload: web::Payload, content_length: Option<usize>, limit: usize) -> Result<Vec<u8>, IngestError> {
    if content_length.is_some_and(|n| n > limit) {
        return Err(IngestError::BodyTooLarge { limit });
    }
    let mut body = Vec::with_capacity(content_length.unwrap_or(8 * 1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| IngestError::IncompleteBody(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(IngestError::BodyTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Decompresses when needed, never holding more than `limit` bytes of output.
pub fn decode(body: Vec<u8>, encoding: Encoding, limit: usize) -> Result<Vec<u8>, IngestError> {
    match encoding {
        Encoding::Identity => Ok(body),
        Encoding::Gzip => {
            let mut out = Vec::with_capacity((body.len() * 4).min(limit));
            flate2::read::GzDecoder::new(body.as_slice())
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| IngestError::BadGzip(e.to_string()))?;
            if out.len() > limit {
                return Err(IngestError::DecompressedTooLarge { limit });
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_at_the_limit_passes_and_one_byte_over_is_413() {
        let exact = vec![b'a'; 1000];
        assert_eq!(decode(gzip(&exact), Encoding::Gzip, 1000).unwrap(), exact);
        let over = vec![b'a'; 1001];
        assert!(matches!(decode(gzip(&over), Encoding::Gzip, 1000), Err(IngestError::DecompressedTooLarge { limit: 1000 })));
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_cap() {
        // 64 MiB of zeros compresses to ~64 KiB; decoding stops after limit + 1 bytes.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 256 * 1024);
        assert!(matches!(decode(bomb, Encoding::Gzip, 1 << 20), Err(IngestError::DecompressedTooLarge { .. })));
    }

    #[test]
    fn not_gzip_is_400() {
        assert!(matches!(decode(b"plain".to_vec(), Encoding::Gzip, 100), Err(IngestError::BadGzip(_))));
    }

    #[test]
    fn encodings() {
        assert_eq!(Encoding::from_header(None).unwrap(), Encoding::Identity);
        assert_eq!(Encoding::from_header(Some("GZIP")).unwrap(), Encoding::Gzip);
        assert!(matches!(Encoding::from_header(Some("br")), Err(IngestError::UnsupportedEncoding(_))));
    }
}
