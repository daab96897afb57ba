//! Reads a request body under its caps: its size (413 naming the limit,
//! checked before and while reading), its time (408 once the deadline passes)
//! and, for `Content-Encoding: gzip`, the decompressed size (a gzip bomb stops
//! at the cap instead of growing memory).

use std::io::Read;
use std::time::Duration;

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

/// Memory reserved for a body before its bytes arrive: a client's
/// `Content-Length` is only a claim, so the buffer grows with what is received.
pub const FIRST_BUFFER_BYTES: usize = 8 * 1024;

/// Reads the whole body, refusing it as soon as it passes `limit` bytes or
/// takes longer than `deadline`.
pub async fn read_capped(payload: web::Payload, content_length: Option<usize>, limit: usize, deadline: Duration) -> Result<Vec<u8>, IngestError> {
    if content_length.is_some_and(|n| n > limit) {
        return Err(IngestError::BodyTooLarge { limit });
    }
    tokio::time::timeout(deadline, read_all(payload, content_length, limit))
        .await
        .map_err(|_| IngestError::BodyTimeout { secs: deadline.as_secs().max(1) })?
}

async fn read_all(mut payload: web::Payload, content_length: Option<usize>, limit: usize) -> Result<Vec<u8>, IngestError> {
    let mut body = Vec::with_capacity(FIRST_BUFFER_BYTES.min(limit).min(content_length.unwrap_or(usize::MAX)));
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

    /// A request body of `chunks`, then its end or (`stall`) nothing more.
    async fn payload(chunks: Vec<&'static [u8]>, stall: bool) -> web::Payload {
        use actix_web::FromRequest;
        use futures_util::stream;
        let items = stream::iter(chunks.into_iter().map(|c| Ok(bytes::Bytes::from_static(c))));
        type Boxed = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, actix_web::error::PayloadError>>>>;
        let stream: Boxed = if stall { Box::pin(items.chain(stream::pending())) } else { Box::pin(items) };
        let (req, _) = actix_web::test::TestRequest::default().to_http_parts();
        web::Payload::from_request(&req, &mut actix_web::dev::Payload::from(stream)).await.unwrap()
    }

    #[actix_rt::test]
    async fn a_claimed_length_reserves_no_more_than_a_small_buffer() {
        let body = read_capped(payload(vec![b"0123456789"], false).await, Some(200_000), 256 * 1024, Duration::from_secs(5)).await.unwrap();
        assert_eq!(body, b"0123456789");
        assert!(body.capacity() <= FIRST_BUFFER_BYTES, "reserved {} bytes for a 10-byte body", body.capacity());
    }

    #[actix_rt::test]
    async fn a_body_at_the_limit_passes_and_one_byte_over_is_413() {
        let ok = read_capped(payload(vec![b"01234", b"56789"], false).await, None, 10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(ok.len(), 10);
        let over = read_capped(payload(vec![b"01234", b"567890"], false).await, None, 10, Duration::from_secs(5)).await;
        assert!(matches!(over, Err(IngestError::BodyTooLarge { limit: 10 })), "{over:?}");
    }

    #[actix_rt::test]
    async fn a_stalled_body_is_408_at_the_deadline() {
        let read = read_capped(payload(vec![b"012"], true).await, Some(100), 1000, Duration::from_millis(200)).await;
        assert!(matches!(read, Err(IngestError::BodyTimeout { secs: 1 })), "{read:?}");
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
