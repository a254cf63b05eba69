//! WebSocket framing (RFC 6455) for client connections, both ways.
//!
//! Server frames are never masked, so one encoded frame ([`WireFrame`]: header and payload in
//! one `Bytes`) is built once per fan-out and written as-is to every recipient's socket.
//! Client frames are read by [`FrameReader`]: masked frames only, fragmented messages
//! reassembled, control frames (ping, pong, close) checked, and a message over the size limit
//! refused as soon as its header announces it, before its payload is buffered.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::edge::{CLOSE_NOT_UTF8, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG};

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Longest payload a control frame may carry.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// One encoded, unmasked server frame: cheap to clone, shared by every recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFrame {
    bytes: Bytes,
    header: usize,
}

impl WireFrame {
    /// A final text frame carrying `text`.
    pub fn text(text: &str) -> WireFrame {
        WireFrame::encode(OP_TEXT, text.as_bytes())
    }

    /// A pong answering a ping with `payload` (at most 125 bytes: longer pings are refused
    /// by the reader).
    pub fn pong(payload: &[u8]) -> WireFrame {
        WireFrame::encode(OP_PONG, &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)])
    }

    /// A close frame with `code` and `reason` (cut to the 123 bytes a close frame has room for).
    pub fn close(code: u16, reason: &str) -> WireFrame {
        let reason = crate::connection::truncate_reason(reason);
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        WireFrame::encode(OP_CLOSE, &payload)
    }

    fn encode(opcode: u8, payload: &[u8]) -> WireFrame {
        let mut bytes = BytesMut::with_capacity(payload.len() + 10);
        bytes.put_u8(0x80 | opcode);
        match payload.len() {
            len @ 0..=125 => bytes.put_u8(len as u8),
            len @ 126..=0xFFFF => {
                bytes.put_u8(126);
                bytes.put_u16(len as u16);
            }
            len => {
                bytes.put_u8(127);
                bytes.put_u64(len as u64);
            }
        }
        let header = bytes.len();
        bytes.extend_from_slice(payload);
        WireFrame {
            bytes: bytes.freeze(),
            header,
        }
    }

    /// The frame as written to the socket.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The payload alone (the text of a text frame).
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.header..]
    }
}

/// Why a client's byte stream cannot be read as WebSocket frames; each maps to the close code
/// the node answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A message over the size limit (close 1009).
    #[error("message too long: over {limit} bytes")]
    TooBig {
        /// The limit in force.
        limit: usize,
    },
    /// A text message that is not UTF-8 (close 1007).
    #[error("text message is not valid utf-8")]
    NotUtf8,
    /// Anything else RFC 6455 forbids (close 1002).
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
}

impl FrameError {
    /// The WebSocket close code that answers this error.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooBig { .. } => CLOSE_TOO_BIG,
            FrameError::NotUtf8 => CLOSE_NOT_UTF8,
            FrameError::Protocol(_) => CLOSE_PROTOCOL_ERROR,
        }
    }
}

/// Reads client messages out of the bytes received so far: feed it with [`FrameReader::buffer`]
/// and take messages with [`FrameReader::next_message`] until it answers `Ok(None)`.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_message: usize,
    /// A fragmented message being reassembled: its opcode and the payload so far.
    partial: Option<(u8, BytesMut)>,
}

impl FrameReader {
    /// A reader that refuses messages over `max_message` bytes.
    pub fn new(max_message: usize) -> FrameReader {
        FrameReader {
            buf: BytesMut::new(),
            max_message,
            partial: None,
        }
    }

    /// Where received bytes go (appended; the socket reads into it directly).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Whether nothing is buffered at all, so an idle connection can give its buffer back.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.partial.is_none()
    }

    /// Lets go of the (empty) receive buffer's memory while the connection is idle.
    pub fn release(&mut self) {
        if self.is_idle() {
            self.buf = BytesMut::new();
        }
    }

    /// The next complete message from the bytes buffered so far: `Ok(None)` when more bytes
    /// are needed. This is the whole parser of client frames: everything a client sends goes
    /// through here.
    ///
    /// # Errors
    /// [`FrameError`] for a stream that is not valid client WebSocket framing; the connection
    /// must then be closed with [`FrameError::close_code`].
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        loop {
            let Some(frame) = self.next_frame()? else {
                return Ok(None);
            };
            if let Some(message) = self.assemble(frame)? {
                return Ok(Some(message));
            }
        }
    }

    /// One whole frame, unmasked, or `None` when it has not fully arrived.
    fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let buf = &self.buf[..];
        if buf.len() < 2 {
            return Ok(None);
        }
        let (first, second) = (buf[0], buf[1]);
        let fin = first & 0x80 != 0;
        if first & 0x70 != 0 {
            return Err(FrameError::Protocol(
                "reserved bits set (no extension agreed)",
            ));
        }
        let opcode = first & 0x0F;
        if second & 0x80 == 0 {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        let (len, mut header) = match second & 0x7F {
            126 => {
                let Some(ext) = buf.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([ext[0], ext[1]])), 4)
            }
            127 => {
                let Some(ext) = buf.get(2..10) else {
                    return Ok(None);
                };
                let mut be = [0u8; 8];
                be.copy_from_slice(ext);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(FrameError::Protocol("payload length with its top bit set"));
                }
                (len, 10)
            }
            len => (u64::from(len), 2),
        };
        let is_control = opcode & 0x8 != 0;
        if is_control && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
            return Err(FrameError::Protocol(
                "control frames must be whole and at most 125 bytes",
            ));
        }
        let so_far = match &self.partial {
            Some((_, payload)) if !is_control => payload.len() as u64,
            _ => 0,
        };
        // Refused on the header alone: an oversized payload is never buffered.
        if len.saturating_add(so_far) > self.max_message as u64 {
            return Err(FrameError::TooBig {
                limit: self.max_message,
            });
        }
        let len = len as usize; // at most max_message, a usize
        let Some(mask) = buf.get(header..header + 4) else {
            return Ok(None);
        };
        let mask = [mask[0], mask[1], mask[2], mask[3]];
        header += 4;
        if buf.len() < header + len {
            // Make room for the rest once, rather than growing step by step.
            self.buf.reserve(header + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(header);
        let mut payload = self.buf.split_to(len);
        unmask(&mut payload, mask);
        Ok(Some(Frame {
            fin,
            opcode,
            payload,
        }))
    }

    /// Fold one frame into the message being read; a message when it is complete.
    fn assemble(&mut self, frame: Frame) -> Result<Option<Message>, FrameError> {
        let Frame {
            fin,
            opcode,
            payload,
        } = frame;
        match opcode {
            OP_PING => Ok(Some(Message::Ping(payload.freeze()))),
            OP_PONG => Ok(Some(Message::Pong(payload.freeze()))),
            OP_CLOSE => close_message(payload.freeze()).map(Some),
            OP_TEXT | OP_BINARY => {
                if self.partial.is_some() {
                    return Err(FrameError::Protocol(
                        "a new message started inside a fragmented one",
                    ));
                }
                if fin {
                    data_message(opcode, payload.freeze()).map(Some)
                } else {
                    self.partial = Some((opcode, payload));
                    Ok(None)
                }
            }
            OP_CONTINUATION => {
                let Some((first, mut so_far)) = self.partial.take() else {
                    return Err(FrameError::Protocol(
                        "a continuation with nothing to continue",
                    ));
                };
                so_far.extend_from_slice(&payload);
                if fin {
                    data_message(first, so_far.freeze()).map(Some)
                } else {
                    self.partial = Some((first, so_far));
                    Ok(None)
                }
            }
            _ => Err(FrameError::Protocol("unknown opcode")),
        }
    }
}

struct Frame {
    fin: bool,
    opcode: u8,
    payload: BytesMut,
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i];
    }
}

fn data_message(opcode: u8, payload: Bytes) -> Result<Message, FrameError> {
    if opcode == OP_TEXT {
        Utf8Bytes::try_from(payload)
            .map(Message::Text)
            .map_err(|_| FrameError::NotUtf8)
    } else {
        Ok(Message::Binary(payload))
    }
}

fn close_message(payload: Bytes) -> Result<Message, FrameError> {
    match payload.len() {
        0 => Ok(Message::Close(None)),
        1 => Err(FrameError::Protocol("a close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let reason =
                Utf8Bytes::try_from(payload.slice(2..)).map_err(|_| FrameError::NotUtf8)?;
            Ok(Message::Close(Some(CloseFrame { code, reason })))
        }
    }
}

#[cfg(test)]
mod tests;
