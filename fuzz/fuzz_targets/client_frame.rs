//! A client's text frame, as `node::protocol` parses it: any bytes must give an op or a refusal,
//! never a panic; an op read back from its own JSON is the same op.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node::protocol::{ClientOp, parse_client_frame};

/// The node's default `--max-message-bytes` is larger; a small limit also exercises `too_large`.
const MAX_TEXT_BYTES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client_frame(frame, MAX_TEXT_BYTES) {
        Ok(op) => {
            let again = parse_client_frame(&to_json(&op), MAX_TEXT_BYTES);
            assert_eq!(again.ok(), Some(op));
        }
        Err(refusal) => {
            let _ = refusal.to_frame();
        }
    }
});

/// The op as a client would write it.
fn to_json(op: &ClientOp) -> String {
    let (room, since, text, cid) = match op {
        ClientOp::Join { room, since } => (Some(room.as_str()), *since, None, None),
        ClientOp::Leave { room } => (Some(room.as_str()), None, None, None),
        ClientOp::Send { room, text, cid } => (Some(room.as_str()), None, Some(text), cid.as_ref()),
        ClientOp::Ping { cid } => (None, None, None, cid.as_ref()),
    };
    serde_json::json!({"op": op.name(), "room": room, "since": since, "text": text, "cid": cid})
        .to_string()
}
