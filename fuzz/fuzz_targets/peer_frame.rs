//! A binary message received on a peer link, as `node::peer::wire` decodes it (the versioned
//! encoding of `docs/peer-links.md`): any bytes must give a frame or an error, never a panic or
//! a huge allocation; a decoded frame re-encodes to bytes that decode to the same encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node::peer::wire::PeerFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = PeerFrame::decode(data) {
        let bytes = frame.encode();
        let again = PeerFrame::decode(&bytes).expect("an encoded frame decodes");
        assert_eq!(again.encode(), bytes);
    }
});
