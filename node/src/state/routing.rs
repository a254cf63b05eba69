//! Routing: an edge sends a room operation to the owner its table names. An owner that is
//! receiving the room's shard buffers it until the snapshot arrives; one that handed the shard
//! away forwards it to the new owner. A forward counts hops, so two nodes whose tables
//! disagree for a moment cannot bounce a command forever: past [`MAX_HOPS`] the sender gets
//! `room_unavailable`. Every path ends in a delivery or an error frame to the sender.

use shard::{AssignmentTable, NodeName, RoomId};

use super::NodeState;
use crate::edge::EdgeEvent;
use crate::peer::wire::PeerMsg;
use crate::protocol::{self, ErrorCode};
use crate::room::{MemberKey, RoomCommand};
use crate::rooms::{Refused, RouteError};

/// Forwards a command may take before it is answered with `room_unavailable`.
pub const MAX_HOPS: u8 = 4;

impl NodeState {
    /// Send a room operation from a local client to the room's owner.
    ///
    /// # Errors
    /// [`RouteError`] when the owner cannot take it; the caller answers the client.
    pub async fn route(&self, room: &RoomId, command: RoomCommand) -> Result<(), RouteError> {
        self.route_by(&self.table(), room, command).await
    }

    /// Send a room operation from a local client to the owner `table` names, even when a newer
    /// table has replaced it since. A connection's route fence decides whether a command may go
    /// with the table it read; were the command routed by a newer one, it could go straight to
    /// a new owner while the fence let it through as going where the connection's earlier
    /// commands went, and overtake them. (Going to the old owner instead is safe: it forwards.)
    ///
    /// # Errors
    /// [`RouteError`] when the owner cannot take it; the caller answers the client.
    pub async fn route_by(
        &self,
        table: &AssignmentTable,
        room: &RoomId,
        command: RoomCommand,
    ) -> Result<(), RouteError> {
        match table.owner_of_room(room) {
            None => Err(RouteError::Unavailable),
            Some(owner) if owner == self.me() => {
                let Some(command) = self.buffer_if_incoming(room, command) else {
                    return Ok(());
                };
                match self.rooms.send(room, command).await {
                    Ok(()) => Ok(()),
                    Err(Refused {
                        error: RouteError::Moved,
                        command,
                    }) => {
                        self.forward(room.clone(), command, 0);
                        Ok(())
                    }
                    Err(refused) => Err(refused.error),
                }
            }
            Some(owner) => self
                .send_command(owner, room.clone(), command, 0)
                .map_err(|_| RouteError::Unavailable),
        }
    }

    /// A command as its owner receives it from a peer; errors are answered to the member.
    pub(super) fn accept_as_owner(&self, room: RoomId, command: RoomCommand, hops: u8) {
        let table = self.table();
        if table.owner_of_room(&room) != Some(self.me()) {
            return self.forward(room, command, hops);
        }
        let Some(command) = self.buffer_if_incoming(&room, command) else {
            return;
        };
        match self.rooms.try_send(&room, command) {
            Ok(()) => {}
            Err(Refused {
                error: RouteError::Moved,
                command,
            }) => self.forward(room, command, hops),
            Err(Refused { error, command }) => self.answer_error(&command, error, &room),
        }
    }

    /// Send `command` on to the owner the current table names.
    pub(super) fn forward(&self, room: RoomId, command: RoomCommand, hops: u8) {
        let table = self.table();
        let refused = match table.owner_of_room(&room) {
            Some(owner) if owner != self.me() && hops < MAX_HOPS => {
                self.send_command(owner, room.clone(), command, hops + 1)
            }
            _ => Err(command),
        };
        if let Err(command) = refused {
            self.answer_error(&command, RouteError::Unavailable, &room);
        }
    }

    /// Queue `command` for `owner`; the command comes back when it cannot be sent.
    pub(super) fn send_command(
        &self,
        owner: &NodeName,
        room: RoomId,
        command: RoomCommand,
        hops: u8,
    ) -> Result<(), RoomCommand> {
        let Some(peers) = &self.peers else {
            return Err(command);
        };
        let epoch = self.table().epoch;
        let msg = PeerMsg::Command {
            room,
            command,
            hops,
            epoch,
        };
        match peers.send(owner, msg) {
            Ok(())
            | Err(
                PeerMsg::Event(_)
                | PeerMsg::Snapshot { .. }
                | PeerMsg::SnapshotAck { .. }
                | PeerMsg::Gap { .. }
                | PeerMsg::Replicate { .. }
                | PeerMsg::Replicated { .. }
                | PeerMsg::CaughtUp { .. }
                | PeerMsg::AckNow
                | PeerMsg::SendCopy { .. },
            ) => Ok(()),
            Err(PeerMsg::Command { command, .. }) => Err(command),
        }
    }

    /// Deliver an event to `node`'s edge: here, or over the link.
    pub(super) fn deliver(&self, node: &NodeName, event: EdgeEvent) {
        if node == self.me() {
            self.hub.deliver(event);
        } else if let Some(peers) = &self.peers
            && let Err(PeerMsg::Event(event)) = peers.send(node, PeerMsg::Event(event))
        {
            self.gap(peers, node, &event);
        }
    }

    /// Answer the member behind `command` with an error frame (nothing when there is none).
    pub(super) fn answer_error(&self, command: &RoomCommand, error: RouteError, room: &RoomId) {
        let Some(member) = command.member() else {
            return;
        };
        let code = match error {
            RouteError::Overloaded => ErrorCode::Overloaded,
            RouteError::Unavailable | RouteError::Moved => ErrorCode::RoomUnavailable,
        };
        tracing::debug!(node = %self.me(), %room, ?error, to = %member.node, conn = member.conn.0, "a request is answered with an error");
        let frame = protocol::error_frame(code, &error.to_string(), command.cid(), Some(room));
        self.deliver_to_member(member, frame);
        if member.node == *self.me() {
            self.metrics.error(code);
        }
    }

    /// A request whose outcome this node cannot know (it may have reached the owner): its
    /// connection is sent away, and the client's re-join with `since` shows whether it got
    /// in. The edge closes the connection on the `reconnect` frame.
    pub(super) fn answer_unknown(&self, command: &RoomCommand, room: &RoomId) {
        let Some(member) = command.member() else {
            return;
        };
        tracing::debug!(node = %self.me(), %room, to = %member.node, conn = member.conn.0, "a request's outcome is unknown: its connection re-joins");
        self.metrics.lost_request_reconnects.inc();
        let frame = protocol::reconnect_frame(crate::edge::MISSED_REQUEST_REASON, Some(0));
        self.deliver_to_member(member, frame);
    }

    pub(super) fn deliver_to_member(&self, member: &MemberKey, frame: String) {
        self.deliver(
            &member.node,
            EdgeEvent::ToConn {
                conn: member.conn,
                frame: frame.into(),
            },
        );
    }
}
