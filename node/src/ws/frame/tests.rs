//! The client frame reader against hand-built frames, and the server frames against a
//! reference decoder (tungstenite's).

use super::*;

const LIMIT: usize = 1024;

/// A masked client frame, as a browser would send it.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn reader_with(bytes: &[u8]) -> FrameReader {
    let mut reader = FrameReader::new(LIMIT);
    reader.buffer().extend_from_slice(bytes);
    reader
}

fn text(message: Option<Message>) -> String {
    match message {
        Some(Message::Text(text)) => text.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

#[test]
fn a_masked_text_frame_reads_as_its_text() {
    let mut reader = reader_with(&client_frame(true, OP_TEXT, br#"{"op":"ping"}"#));
    assert_eq!(
        text(reader.next_message().expect("valid")),
        r#"{"op":"ping"}"#
    );
    assert_eq!(reader.next_message(), Ok(None));
    assert!(reader.is_idle());
}

#[test]
fn a_frame_arriving_byte_by_byte_reads_once_whole() {
    let payload = "x".repeat(300); // a 16-bit length
    let bytes = client_frame(true, OP_TEXT, payload.as_bytes());
    let mut reader = FrameReader::new(LIMIT);
    for (i, byte) in bytes.iter().enumerate() {
        reader.buffer().put_u8(*byte);
        let got = reader.next_message().expect("valid so far");
        if i + 1 < bytes.len() {
            assert_eq!(got, None, "nothing before the last byte");
        } else {
            assert_eq!(text(got), payload);
        }
    }
}

#[test]
fn two_frames_in_one_read_are_two_messages_in_order() {
    let mut bytes = client_frame(true, OP_TEXT, b"one");
    bytes.extend(client_frame(true, OP_TEXT, b"two"));
    let mut reader = reader_with(&bytes);
    assert_eq!(text(reader.next_message().expect("valid")), "one");
    assert_eq!(text(reader.next_message().expect("valid")), "two");
    assert_eq!(reader.next_message(), Ok(None));
}

#[test]
fn a_fragmented_message_is_reassembled_around_a_ping_between_its_fragments() {
    let mut bytes = client_frame(false, OP_TEXT, b"hel");
    bytes.extend(client_frame(true, OP_PING, b"p"));
    bytes.extend(client_frame(false, OP_CONTINUATION, b"lo "));
    bytes.extend(client_frame(true, OP_CONTINUATION, b"world"));
    let mut reader = reader_with(&bytes);
    assert_eq!(
        reader.next_message(),
        Ok(Some(Message::Ping(Bytes::from_static(b"p"))))
    );
    assert_eq!(text(reader.next_message().expect("valid")), "hello world");
    assert!(reader.is_idle());
}

#[test]
fn a_message_over_the_limit_is_refused_from_its_header_alone() {
    let mut header = client_frame(true, OP_TEXT, &vec![b'a'; LIMIT + 1]);
    header.truncate(8); // the payload has not arrived (and never needs to)
    let mut reader = reader_with(&header);
    let refused = reader.next_message();
    assert_eq!(refused, Err(FrameError::TooBig { limit: LIMIT }));
    assert_eq!(FrameError::TooBig { limit: LIMIT }.close_code(), 1009);
}

#[test]
fn fragments_adding_up_past_the_limit_are_refused() {
    let half = vec![b'a'; LIMIT / 2 + 1];
    let mut bytes = client_frame(false, OP_TEXT, &half);
    bytes.extend(client_frame(true, OP_CONTINUATION, &half));
    let mut reader = reader_with(&bytes);
    assert_eq!(
        reader.next_message(),
        Err(FrameError::TooBig { limit: LIMIT })
    );
}

#[test]
fn a_64_bit_length_far_past_any_limit_is_refused_without_allocating() {
    let mut bytes = vec![0x81, 0x80 | 127];
    bytes.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    let mut reader = reader_with(&bytes);
    assert_eq!(
        reader.next_message(),
        Err(FrameError::TooBig { limit: LIMIT })
    );
    let mut top_bit = vec![0x81, 0x80 | 127];
    top_bit.extend_from_slice(&u64::MAX.to_be_bytes());
    let error = reader_with(&top_bit).next_message().expect_err("invalid");
    assert_eq!(error.close_code(), 1002);
}

#[test]
fn malformed_frames_are_protocol_errors() {
    let unmasked = vec![0x81, 0x02, b'h', b'i'];
    let reserved = {
        let mut f = client_frame(true, OP_TEXT, b"hi");
        f[0] |= 0x40;
        f
    };
    let unknown_opcode = client_frame(true, 0x3, b"");
    let stray_continuation = client_frame(true, OP_CONTINUATION, b"x");
    let fragmented_ping = client_frame(false, OP_PING, b"");
    let long_ping = client_frame(true, OP_PING, &[0; 126]);
    let one_byte_close = client_frame(true, OP_CLOSE, &[3]);
    let mut interleaved = client_frame(false, OP_TEXT, b"a");
    interleaved.extend(client_frame(true, OP_TEXT, b"b"));
    for bytes in [
        unmasked,
        reserved,
        unknown_opcode,
        stray_continuation,
        fragmented_ping,
        long_ping,
        one_byte_close,
        interleaved,
    ] {
        let mut reader = reader_with(&bytes);
        let error = loop {
            match reader.next_message() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("{bytes:?} was accepted"),
                Err(error) => break error,
            }
        };
        assert_eq!(error.close_code(), 1002, "{bytes:?}: {error}");
    }
}

#[test]
fn text_that_is_not_utf8_is_refused_with_1007() {
    let mut reader = reader_with(&client_frame(true, OP_TEXT, &[0xff, 0xfe]));
    let error = reader.next_message().expect_err("invalid utf-8");
    assert_eq!(error, FrameError::NotUtf8);
    assert_eq!(error.close_code(), 1007);
}

#[test]
fn close_frames_carry_their_code_and_reason_or_nothing() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    let mut bytes = client_frame(true, OP_CLOSE, &payload);
    bytes.extend(client_frame(true, OP_CLOSE, b""));
    let mut reader = reader_with(&bytes);
    match reader.next_message() {
        Ok(Some(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, 1000);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected a close with a code, got {other:?}"),
    }
    assert_eq!(reader.next_message(), Ok(Some(Message::Close(None))));
}

#[test]
fn binary_and_pong_frames_are_told_apart() {
    let mut bytes = client_frame(true, OP_BINARY, &[1, 2, 3]);
    bytes.extend(client_frame(true, OP_PONG, b"p"));
    let mut reader = reader_with(&bytes);
    assert_eq!(
        reader.next_message(),
        Ok(Some(Message::Binary(Bytes::from_static(&[1, 2, 3]))))
    );
    assert_eq!(
        reader.next_message(),
        Ok(Some(Message::Pong(Bytes::from_static(b"p"))))
    );
}

#[test]
fn server_frames_decode_as_a_reference_client_reads_them() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame as Reference, FrameHeader};
    let decode = |frame: &WireFrame| {
        let mut cursor = std::io::Cursor::new(frame.bytes().to_vec());
        let (header, len) = FrameHeader::parse(&mut cursor)
            .expect("parses")
            .expect("complete");
        let start = cursor.position() as usize;
        let payload = frame.bytes()[start..].to_vec();
        assert_eq!(
            payload.len() as u64,
            len,
            "the whole payload, nothing after"
        );
        assert!(header.is_final && header.mask.is_none());
        (
            header.opcode,
            Reference::from_payload(header, payload.into()),
        )
    };
    for len in [0, 125, 126, 65_535, 65_536] {
        let text = "y".repeat(len);
        let frame = WireFrame::text(&text);
        let (opcode, decoded) = decode(&frame);
        assert_eq!(opcode, OpCode::Data(Data::Text));
        assert_eq!(decoded.payload(), text.as_bytes());
        assert_eq!(frame.payload(), text.as_bytes());
    }
    let (opcode, decoded) = decode(&WireFrame::close(1013, "slow consumer"));
    assert_eq!(opcode, OpCode::Control(Control::Close));
    assert_eq!(&decoded.payload()[..2], &1013u16.to_be_bytes());
    assert_eq!(&decoded.payload()[2..], b"slow consumer");
    let (opcode, _) = decode(&WireFrame::pong(b"p"));
    assert_eq!(opcode, OpCode::Control(Control::Pong));
}
