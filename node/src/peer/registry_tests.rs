//! The link registry follows the table and nothing else: names alone (a member's node in a
//! message, a departed node) cannot grow it, and what was queued for a node that left is
//! handed back to be answered.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use shard::{AssignmentTable, NodeInfo, NodeName};

use super::wire::PeerMsg;
use super::{PeerHandler, PeerSettings, Peers};
use crate::edge::{ConnId, EdgeEvent};

fn name(n: &str) -> NodeName {
    NodeName::new(n).expect("valid node name")
}

/// Records what is bounced.
#[derive(Debug, Default)]
struct Bounces(Mutex<Vec<NodeName>>);

impl PeerHandler for Bounces {
    fn on_message(&self, _from: &NodeName, _msg: PeerMsg) {}

    fn on_bounce(&self, to: &NodeName, _msg: &PeerMsg) {
        self.0.lock().expect("lock").push(to.clone());
    }

    fn on_restart(&self, _peer: &NodeName) {}
}

/// A table naming `nodes` (this node, `node-z`, sorts last: it dials nobody).
fn table(epoch: u64, nodes: &[&str]) -> AssignmentTable {
    let nodes: BTreeMap<NodeName, NodeInfo> = nodes
        .iter()
        .map(|n| (name(n), NodeInfo::new("127.0.0.1:9")))
        .collect();
    let owners = vec![Some(name("node-z")); 4];
    let mut table = AssignmentTable::with_owners(owners, nodes).expect("valid table");
    table.epoch = epoch;
    table
}

/// Follow `table` as a node applying it does: links to its nodes first, then the others go.
fn follow(peers: &Arc<Peers>, table: &AssignmentTable) {
    peers.admit(table);
    peers.retire(table);
}

fn event() -> PeerMsg {
    PeerMsg::Event(EdgeEvent::ToConn {
        conn: ConnId(1),
        frame: "{}".into(),
    })
}

#[tokio::test]
async fn links_exist_only_for_the_tables_nodes_and_departed_ones_bounce_their_outbox() {
    let peers = Peers::new(PeerSettings {
        me: name("node-z"),
        secret: Arc::from(&b"s"[..]),
        max_unacked: 8,
    });
    let bounces = Arc::new(Bounces::default());
    let handler: Arc<dyn PeerHandler> = bounces.clone();
    peers.set_handler(Arc::downgrade(&handler));
    follow(&peers, &table(1, &["node-a", "node-b", "node-z"]));
    assert_eq!(peers.link_count(), 2, "one link per other node");
    // Names that arrive in messages do not add links: the message comes back instead.
    for n in 0..1000 {
        assert!(peers.send(&name(&format!("ghost-{n}")), event()).is_err());
        assert!(!peers.mark_gap(&name(&format!("ghost-{n}")), None));
    }
    assert_eq!(peers.link_count(), 2);
    // node-a leaves with two messages queued: its link goes, and they are bounced.
    peers.send(&name("node-a"), event()).expect("queued");
    peers.send(&name("node-a"), event()).expect("queued");
    follow(&peers, &table(2, &["node-b", "node-z"]));
    assert_eq!(peers.link_count(), 1);
    assert_eq!(
        *bounces.0.lock().expect("lock"),
        [name("node-a"), name("node-a")]
    );
    assert!(
        peers.send(&name("node-a"), event()).is_err(),
        "nothing is queued for a departed node"
    );
    assert_eq!(peers.pending(), 0);
    peers.close();
}

#[tokio::test]
async fn a_departed_node_that_comes_back_first_hears_what_it_missed() {
    let peers = Peers::new(PeerSettings {
        me: name("node-z"),
        secret: Arc::from(&b"s"[..]),
        max_unacked: 8,
    });
    let room = |n: &str| shard::RoomId::new(n).expect("room");
    follow(&peers, &table(1, &["node-a", "node-z"]));
    let broadcast = |r: &str| {
        PeerMsg::Event(EdgeEvent::Broadcast {
            room: room(r),
            frame: "{}".into(),
            skip: None,
            is_msg: true,
        })
    };
    peers
        .send(&name("node-a"), broadcast("lobby"))
        .expect("queued");
    // node-a drops out of the table (a pause, a lost readiness probe) with "lobby"'s event
    // unacknowledged; meanwhile an owner that still counts its members has one for "hall".
    follow(&peers, &table(2, &["node-z"]));
    assert!(!peers.mark_gap(&name("node-a"), Some(room("hall"))));
    // Nothing is noted for a name that never had a link.
    assert!(!peers.mark_gap(&name("ghost"), Some(room("hall"))));
    follow(&peers, &table(3, &["node-a", "node-z"]));
    let outbox = peers.link(&name("node-a")).expect("link again").outbox();
    match outbox.first().map(|m| &**m) {
        Some(PeerMsg::Gap { rooms, all }) => {
            assert!(!*all);
            assert_eq!(rooms, &[room("hall"), room("lobby")]);
        }
        other => panic!("the gap goes first, got {other:?}"),
    }
    let ghost_back = table(4, &["node-a", "ghost", "node-z"]);
    follow(&peers, &ghost_back);
    assert!(
        peers
            .link(&name("ghost"))
            .expect("link")
            .outbox()
            .is_empty(),
        "a node never seen before has nothing to hear"
    );
    peers.close();
}
