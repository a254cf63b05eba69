//! The primitives peer frames are written in: bytes, LEB128 varints, length-prefixed byte
//! strings, optional values. The reader works over the received [`Bytes`] so that a client
//! frame's text is a slice of the message, not a copy, and checks every length against the
//! bytes present before it allocates anything.

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use shard::{NodeName, RoomId};

use super::WireError;

/// A varint takes at most this many bytes (64 bits, 7 per byte).
const MAX_VARINT_BYTES: usize = 10;

/// Writes the fields of one frame, in order.
#[derive(Debug, Default)]
pub(super) struct Writer {
    pub(super) buf: Vec<u8>,
}

impl Writer {
    pub(super) fn u8(&mut self, value: u8) {
        self.buf.push(value);
    }

    pub(super) fn bool(&mut self, value: bool) {
        self.buf.push(u8::from(value));
    }

    pub(super) fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            // Truncation intended: the low 7 bits, with the continuation bit set.
            self.buf.push((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        self.buf.push(value as u8);
    }

    pub(super) fn bytes(&mut self, value: &[u8]) {
        self.varint(value.len() as u64);
        self.buf.extend_from_slice(value);
    }

    pub(super) fn str(&mut self, value: &str) {
        self.bytes(value.as_bytes());
    }

    /// `0` for none, `1` then the value for some.
    pub(super) fn option<T>(&mut self, value: Option<T>, put: impl FnOnce(&mut Self, T)) {
        match value {
            None => self.u8(0),
            Some(value) => {
                self.u8(1);
                put(self, value);
            }
        }
    }
}

/// Reads the fields of one frame from the received message, in order.
#[derive(Debug)]
pub(super) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a Bytes) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], WireError> {
        let left = self.left();
        let len =
            usize::try_from(len)
                .ok()
                .filter(|len| *len <= left)
                .ok_or(WireError::Truncated {
                    what,
                    needed: len,
                    left,
                })?;
        let bytes = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(bytes)
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    pub(super) fn bool(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(WireError::Invalid {
                what,
                reason: format!("{other} is not a boolean"),
            }),
        }
    }

    pub(super) fn varint(&mut self, what: &'static str) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..MAX_VARINT_BYTES {
            let byte = self.u8(what)?;
            let bits = u64::from(byte & 0x7f);
            if i == MAX_VARINT_BYTES - 1 && bits > 1 {
                return Err(WireError::BadVarint { what });
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::BadVarint { what })
    }

    /// A length-prefixed byte string, as a slice of the received message.
    pub(super) fn bytes(&mut self, what: &'static str) -> Result<Bytes, WireError> {
        let len = self.varint(what)?;
        let slice = self.take(len, what)?;
        Ok(self.buf.slice_ref(slice))
    }

    /// A length-prefixed UTF-8 string, borrowed from the received message.
    pub(super) fn str(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        let len = self.varint(what)?;
        let slice = self.take(len, what)?;
        std::str::from_utf8(slice).map_err(|_| WireError::BadUtf8 { what })
    }

    /// A client frame's text, as a slice of the received message (validated once, not copied).
    pub(super) fn text(&mut self, what: &'static str) -> Result<Utf8Bytes, WireError> {
        Utf8Bytes::try_from(self.bytes(what)?).map_err(|_| WireError::BadUtf8 { what })
    }

    pub(super) fn room(&mut self) -> Result<RoomId, WireError> {
        let name = self.str("room")?;
        RoomId::new(name).map_err(|e| WireError::Invalid {
            what: "room",
            reason: e.to_string(),
        })
    }

    pub(super) fn node(&mut self, what: &'static str) -> Result<NodeName, WireError> {
        let name = self.str(what)?;
        NodeName::new(name).map_err(|e| WireError::Invalid {
            what,
            reason: e.to_string(),
        })
    }

    pub(super) fn option<T>(
        &mut self,
        what: &'static str,
        get: impl FnOnce(&mut Self) -> Result<T, WireError>,
    ) -> Result<Option<T>, WireError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => get(self).map(Some),
            other => Err(WireError::Invalid {
                what,
                reason: format!("{other} is not an option tag"),
            }),
        }
    }

    /// A count of items that take at least `min_item_bytes` each: a count the remaining bytes
    /// cannot hold is refused here, before anything is allocated for it.
    pub(super) fn count(
        &mut self,
        what: &'static str,
        min_item_bytes: usize,
    ) -> Result<usize, WireError> {
        let count = self.varint(what)?;
        let left = self.left();
        usize::try_from(count)
            .ok()
            .filter(|count| count.saturating_mul(min_item_bytes) <= left)
            .ok_or(WireError::Truncated {
                what,
                needed: count.saturating_mul(min_item_bytes as u64),
                left,
            })
    }

    /// The frame must end here.
    pub(super) fn finish(&self) -> Result<(), WireError> {
        match self.left() {
            0 => Ok(()),
            extra => Err(WireError::Trailing(extra)),
        }
    }
}
