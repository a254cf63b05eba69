//! The bytes a client writes on `/ws`, as the node's own WebSocket reader takes them: any bytes,
//! arriving in any pieces, give messages no larger than the limit or an error, never a panic;
//! every text message then goes through the client frame parser.
#![no_main]

use axum::extract::ws::Message;
use libfuzzer_sys::fuzz_target;
use node::protocol::parse_client_frame;
use node::ws::frame::FrameReader;

/// A small message limit, so inputs reach the over-limit path.
const MAX_MESSAGE: usize = 512;

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the rest arrives: in pieces of 1 to 256 bytes.
    let Some((&piece, bytes)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece) + 1;
    let mut reader = FrameReader::new(MAX_MESSAGE);
    for chunk in bytes.chunks(piece) {
        reader.buffer().extend_from_slice(chunk);
        loop {
            match reader.next_message() {
                Ok(Some(message)) => {
                    let len = match &message {
                        Message::Text(text) => {
                            let _ = parse_client_frame(text.as_str(), 64);
                            text.len()
                        }
                        Message::Binary(payload) => payload.len(),
                        _ => 0,
                    };
                    assert!(len <= MAX_MESSAGE, "a {len}-byte message past the limit");
                }
                Ok(None) => break,
                // The connection would be closed: nothing after an error is read.
                Err(_) => return,
            }
        }
    }
});
