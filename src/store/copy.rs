//! `COPY … FROM STDIN (FORMAT binary)` encoding with postgres-protocol:
//! header, tuples (field count, then length-prefixed values), trailer.

use bytes::{BufMut, BytesMut};
use postgres_protocol::types;

/// Signature, flags and header-extension length of the binary COPY format.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The file trailer: a field count of -1.
pub const TRAILER: &[u8] = &[0xff, 0xff];

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
const TEXT_OID: u32 = 25;

/// Appends one tuple's fields to a buffer.
pub struct TupleWriter<'a> {
    buf: &'a mut BytesMut,
}

impl<'a> TupleWriter<'a> {
    /// Starts a tuple of `fields` fields.
    pub fn begin(buf: &'a mut BytesMut, fields: u16) -> Self {
        buf.put_i16(fields as i16);
        TupleWriter { buf }
    }

    pub fn null(&mut self) {
        self.buf.put_i32(-1);
    }

    pub fn bool(&mut self, v: bool) {
        self.buf.put_i32(1);
        types::bool_to_sql(v, self.buf);
    }

    pub fn i32(&mut self, v: i32) {
        self.buf.put_i32(4);
        types::int4_to_sql(v, self.buf);
    }

    pub fn i64(&mut self, v: i64) {
        self.buf.put_i32(8);
        types::int8_to_sql(v, self.buf);
    }

    pub fn f64(&mut self, v: f64) {
        self.buf.put_i32(8);
        types::float8_to_sql(v, self.buf);
    }

    pub fn uuid(&mut self, v: &uuid::Uuid) {
        self.buf.put_i32(16);
        types::uuid_to_sql(*v.as_bytes(), self.buf);
    }

    /// `timestamptz` from ms since the Unix epoch. Saturating: a time past
    /// what i64 µs hold becomes one PostgreSQL refuses (22008), never a panic.
    pub fn timestamp_ms(&mut self, ms: i64) {
        self.buf.put_i32(8);
        types::timestamp_to_sql(ms.saturating_mul(1000).saturating_sub(PG_EPOCH_OFFSET_US), self.buf);
    }

    pub fn text(&mut self, v: &str) {
        self.buf.put_i32(v.len() as i32);
        types::text_to_sql(v, self.buf);
    }

    /// `jsonb` from JSON text (binary jsonb is a version byte, then the text).
    pub fn jsonb(&mut self, json: &str) {
        self.buf.put_i32(json.len() as i32 + 1);
        self.buf.put_u8(1);
        self.buf.put_slice(json.as_bytes());
    }

    /// `text[]` (one dimension).
    pub fn text_array<'s>(&mut self, items: impl ExactSizeIterator<Item = &'s str>) {
        let len_at = self.buf.len();
        self.buf.put_i32(0);
        let dim = types::ArrayDimension { len: items.len() as i32, lower_bound: 1 };
        types::array_to_sql(
            Some(dim),
            TEXT_OID,
            items,
            |s, buf| {
                types::text_to_sql(s, buf);
                Ok(postgres_protocol::IsNull::No)
            },
            self.buf,
        )
        .expect("a text array of i32-sized length encodes");
        let len = (self.buf.len() - len_at - 4) as i32;
        self.buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_the_documented_signature() {
        assert_eq!(&HEADER[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(HEADER.len(), 19);
    }

    #[test]
    fn fields_are_length_prefixed() {
        let mut buf = BytesMut::new();
        let mut t = TupleWriter::begin(&mut buf, 4);
        t.i64(7);
        t.null();
        t.timestamp_ms(946_684_800_000);
        t.text_array(["a", "bc"].into_iter());
        assert_eq!(&buf[..2], &[0, 4]);
        assert_eq!(&buf[2..6], &8i32.to_be_bytes());
        assert_eq!(&buf[6..14], &7i64.to_be_bytes());
        assert_eq!(&buf[14..18], &(-1i32).to_be_bytes());
        assert_eq!(&buf[22..30], &0i64.to_be_bytes(), "2000-01-01 is 0 µs");
        let arr_len = i32::from_be_bytes(buf[30..34].try_into().unwrap()) as usize;
        assert_eq!(buf.len(), 34 + arr_len);
    }
}
