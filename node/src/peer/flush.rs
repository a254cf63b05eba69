//! A wait for several peers to handle what was queued for them (a hand-off's old owner waits
//! for the edges of the shard's rooms).

use std::sync::Arc;

use shard::NodeName;

use super::link::{PeerLink, Sent};

/// Messages queued for several peers up to one moment; see [`super::Peers::sent_to`] and
/// [`super::Peers::sent_for_rooms`].
#[derive(Debug)]
pub struct Flush(pub(super) Vec<(Arc<PeerLink>, Sent)>);

impl Flush {
    /// Resolves once every peer has handled (or bounced) its part. A peer that stays
    /// unreachable keeps it waiting: callers bound the wait.
    pub async fn delivered(&self) {
        for (link, mark) in &self.0 {
            link.delivered(*mark).await;
        }
    }

    /// The peers that have not handled their part yet.
    pub fn waiting(&self) -> Vec<NodeName> {
        self.0
            .iter()
            .filter(|(link, mark)| !link.is_delivered(*mark))
            .map(|(link, _)| link.peer.clone())
            .collect()
    }
}
