//! The data messages inside a data frame: room commands, edge events, snapshots, their acks
//! and gap announcements, each field written explicitly under a named kind byte (see
//! [`super::kind`]).

use axum::extract::ws::Utf8Bytes;
use shard::ShardId;

use super::codec::{Reader, Writer};
use super::{PeerMsg, WireError, kind};
use crate::edge::{ConnId, EdgeEvent};
use crate::replication::{Answer, Change};
use crate::room::{MemberKey, RoomCommand, RoomSnapshot};

fn put_member(w: &mut Writer, member: &MemberKey) {
    w.str(member.node.as_str());
    w.varint(member.conn.0);
}

fn get_member(r: &mut Reader<'_>) -> Result<MemberKey, WireError> {
    Ok(MemberKey {
        node: r.node("member node")?,
        conn: ConnId(r.varint("member conn")?),
    })
}

fn put_room(w: &mut Writer, room: &RoomSnapshot) {
    w.str(room.room.as_str());
    w.varint(room.seq);
    w.varint(room.history.len() as u64);
    for (seq, frame) in &room.history {
        w.varint(*seq);
        w.str(frame);
    }
    w.varint(room.members.len() as u64);
    for (member, user) in &room.members {
        put_member(w, member);
        w.str(user);
    }
}

fn get_room(r: &mut Reader<'_>) -> Result<RoomSnapshot, WireError> {
    let room = r.room()?;
    let seq = r.varint("room seq")?;
    let count = r.count("room history", 2)?;
    let mut history = Vec::with_capacity(count);
    for _ in 0..count {
        history.push((r.varint("history seq")?, r.str("history frame")?.to_owned()));
    }
    let count = r.count("room members", 4)?;
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        members.push((get_member(r)?, r.str("member user")?.into()));
    }
    Ok(RoomSnapshot {
        room,
        seq,
        history,
        members,
    })
}

fn put_change(w: &mut Writer, change: &Change) {
    match change {
        Change::Whole(room) => {
            w.u8(kind::change::WHOLE);
            put_room(w, room);
        }
        Change::Message { seq, frame } => {
            w.u8(kind::change::MESSAGE);
            w.varint(*seq);
            w.str(frame.as_str());
        }
        Change::Joined { member, user } => {
            w.u8(kind::change::JOINED);
            put_member(w, member);
            w.str(user);
        }
        Change::Left { member } => {
            w.u8(kind::change::LEFT);
            put_member(w, member);
        }
        Change::NodeLeft { node } => {
            w.u8(kind::change::NODE_LEFT);
            w.str(node.as_str());
        }
        Change::Rested { seq } => {
            w.u8(kind::change::RESTED);
            w.varint(*seq);
        }
    }
}

fn get_change(r: &mut Reader<'_>) -> Result<Change, WireError> {
    Ok(match r.u8("change kind")? {
        kind::change::WHOLE => Change::Whole(get_room(r)?),
        kind::change::MESSAGE => Change::Message {
            seq: r.varint("message seq")?,
            frame: r.text("message frame")?,
        },
        kind::change::JOINED => Change::Joined {
            member: get_member(r)?,
            user: r.str("user")?.into(),
        },
        kind::change::LEFT => Change::Left {
            member: get_member(r)?,
        },
        kind::change::NODE_LEFT => Change::NodeLeft {
            node: r.node("node")?,
        },
        kind::change::RESTED => Change::Rested {
            seq: r.varint("rested seq")?,
        },
        other => {
            return Err(WireError::UnknownKind {
                what: "change",
                kind: other,
            });
        }
    })
}

pub(super) fn put_msg(w: &mut Writer, msg: &PeerMsg) {
    match msg {
        PeerMsg::Command {
            room,
            command,
            hops,
            epoch,
        } => {
            w.u8(kind::msg::COMMAND);
            w.str(room.as_str());
            w.u8(*hops);
            w.varint(*epoch);
            put_command(w, command);
        }
        PeerMsg::Event(event) => {
            w.u8(kind::msg::EVENT);
            put_event(w, event);
        }
        PeerMsg::Snapshot {
            shard,
            epoch,
            floor,
            rooms,
        } => {
            w.u8(kind::msg::SNAPSHOT);
            w.varint(u64::from(shard.0));
            w.varint(*epoch);
            w.varint(*floor);
            w.varint(rooms.len() as u64);
            for room in rooms {
                put_room(w, room);
            }
        }
        PeerMsg::Replicate {
            shard,
            epoch,
            room,
            rid,
            change,
        } => {
            w.u8(kind::msg::REPLICATE);
            w.varint(u64::from(shard.0));
            w.varint(*epoch);
            w.str(room.as_str());
            w.varint(*rid);
            put_change(w, change);
        }
        PeerMsg::Replicated {
            shard,
            room,
            rid,
            answer,
        } => {
            w.u8(kind::msg::REPLICATED);
            w.varint(u64::from(shard.0));
            w.str(room.as_str());
            w.varint(*rid);
            w.u8(match answer {
                Answer::Held => kind::answer::HELD,
                Answer::Fenced => kind::answer::FENCED,
                Answer::NoCopy => kind::answer::NO_COPY,
            });
        }
        PeerMsg::AckNow => w.u8(kind::msg::ACK_NOW),
        PeerMsg::SendCopy { shard, epoch } => {
            w.u8(kind::msg::SEND_COPY);
            w.varint(u64::from(shard.0));
            w.varint(*epoch);
        }
        PeerMsg::CaughtUp {
            shard,
            epoch,
            floor,
            resting,
        } => {
            w.u8(kind::msg::CAUGHT_UP);
            w.varint(u64::from(shard.0));
            w.varint(*epoch);
            w.varint(*floor);
            w.varint(resting.len() as u64);
            for (room, seq) in resting {
                w.str(room.as_str());
                w.varint(*seq);
            }
        }
        PeerMsg::SnapshotAck { shard, epoch } => {
            w.u8(kind::msg::SNAPSHOT_ACK);
            w.varint(u64::from(shard.0));
            w.varint(*epoch);
        }
        PeerMsg::Gap { rooms, all } => {
            w.u8(kind::msg::GAP);
            w.bool(*all);
            w.varint(rooms.len() as u64);
            for room in rooms {
                w.str(room.as_str());
            }
        }
    }
}

fn get_shard(r: &mut Reader<'_>) -> Result<ShardId, WireError> {
    let shard = r.varint("shard")?;
    u32::try_from(shard)
        .map(ShardId)
        .map_err(|_| WireError::Invalid {
            what: "shard",
            reason: format!("{shard} is out of range"),
        })
}

pub(super) fn get_msg(r: &mut Reader<'_>) -> Result<PeerMsg, WireError> {
    Ok(match r.u8("message kind")? {
        kind::msg::COMMAND => PeerMsg::Command {
            room: r.room()?,
            hops: r.u8("hops")?,
            epoch: r.varint("epoch")?,
            command: get_command(r)?,
        },
        kind::msg::EVENT => PeerMsg::Event(get_event(r)?),
        kind::msg::SNAPSHOT => {
            let shard = get_shard(r)?;
            let epoch = r.varint("epoch")?;
            let floor = r.varint("shard floor")?;
            // A room takes at least 5 bytes: name (2), seq, history and member counts.
            let count = r.count("snapshot rooms", 5)?;
            let mut rooms = Vec::with_capacity(count);
            for _ in 0..count {
                rooms.push(get_room(r)?);
            }
            PeerMsg::Snapshot {
                shard,
                epoch,
                floor,
                rooms,
            }
        }
        kind::msg::REPLICATE => PeerMsg::Replicate {
            shard: get_shard(r)?,
            epoch: r.varint("epoch")?,
            room: r.room()?,
            rid: r.varint("rid")?,
            change: get_change(r)?,
        },
        kind::msg::REPLICATED => PeerMsg::Replicated {
            shard: get_shard(r)?,
            room: r.room()?,
            rid: r.varint("rid")?,
            answer: match r.u8("answer")? {
                kind::answer::HELD => Answer::Held,
                kind::answer::FENCED => Answer::Fenced,
                kind::answer::NO_COPY => Answer::NoCopy,
                other => {
                    return Err(WireError::UnknownKind {
                        what: "answer",
                        kind: other,
                    });
                }
            },
        },
        kind::msg::CAUGHT_UP => {
            let shard = get_shard(r)?;
            let epoch = r.varint("epoch")?;
            let floor = r.varint("shard floor")?;
            // A resting room takes at least 3 bytes: its name (2) and its seq.
            let count = r.count("resting rooms", 3)?;
            let mut resting = Vec::with_capacity(count);
            for _ in 0..count {
                resting.push((r.room()?, r.varint("resting seq")?));
            }
            PeerMsg::CaughtUp {
                shard,
                epoch,
                floor,
                resting,
            }
        }
        kind::msg::ACK_NOW => PeerMsg::AckNow,
        kind::msg::SEND_COPY => PeerMsg::SendCopy {
            shard: get_shard(r)?,
            epoch: r.varint("epoch")?,
        },
        kind::msg::SNAPSHOT_ACK => PeerMsg::SnapshotAck {
            shard: get_shard(r)?,
            epoch: r.varint("epoch")?,
        },
        kind::msg::GAP => {
            let all = r.bool("gap all")?;
            let count = r.count("gap rooms", 2)?;
            let mut rooms = Vec::with_capacity(count);
            for _ in 0..count {
                rooms.push(r.room()?);
            }
            PeerMsg::Gap { rooms, all }
        }
        other => {
            return Err(WireError::UnknownKind {
                what: "message",
                kind: other,
            });
        }
    })
}

fn put_command(w: &mut Writer, command: &RoomCommand) {
    match command {
        RoomCommand::Join {
            member,
            user,
            since,
        } => {
            w.u8(kind::command::JOIN);
            put_member(w, member);
            w.str(user);
            w.option(*since, Writer::varint);
        }
        RoomCommand::Leave { member, reply } => {
            w.u8(kind::command::LEAVE);
            put_member(w, member);
            w.bool(*reply);
        }
        RoomCommand::Post {
            member,
            user,
            text,
            cid,
        } => {
            w.u8(kind::command::POST);
            put_member(w, member);
            w.str(user);
            w.str(text);
            w.option(cid.as_deref(), Writer::str);
        }
        RoomCommand::DropNode { node } => {
            w.u8(kind::command::DROP_NODE);
            w.str(node.as_str());
        }
    }
}

fn get_command(r: &mut Reader<'_>) -> Result<RoomCommand, WireError> {
    Ok(match r.u8("command kind")? {
        kind::command::JOIN => RoomCommand::Join {
            member: get_member(r)?,
            user: r.str("user")?.into(),
            since: r.option("since", |r| r.varint("since"))?,
        },
        kind::command::LEAVE => RoomCommand::Leave {
            member: get_member(r)?,
            reply: r.bool("reply")?,
        },
        kind::command::POST => RoomCommand::Post {
            member: get_member(r)?,
            user: r.str("user")?.into(),
            text: r.str("text")?.to_owned(),
            cid: r.option("cid", |r| r.str("cid").map(str::to_owned))?,
        },
        kind::command::DROP_NODE => RoomCommand::DropNode {
            node: r.node("node")?,
        },
        other => {
            return Err(WireError::UnknownKind {
                what: "command",
                kind: other,
            });
        }
    })
}

/// An edge event: the one place that knows [`EdgeEvent`]'s fields on the wire (client frames
/// cross as their raw bytes).
fn put_event(w: &mut Writer, event: &EdgeEvent) {
    let frame = |w: &mut Writer, frame: &Utf8Bytes| w.str(frame.as_str());
    match event {
        EdgeEvent::Joined {
            room,
            conn,
            frame: f,
        } => {
            w.u8(kind::event::JOINED);
            w.str(room.as_str());
            w.varint(conn.0);
            frame(w, f);
        }
        EdgeEvent::Left {
            room,
            conn,
            frame: f,
        } => {
            w.u8(kind::event::LEFT);
            w.str(room.as_str());
            w.varint(conn.0);
            w.option(f.as_ref(), frame);
        }
        EdgeEvent::ToConn { conn, frame: f } => {
            w.u8(kind::event::TO_CONN);
            w.varint(conn.0);
            frame(w, f);
        }
        EdgeEvent::Broadcast {
            room,
            frame: f,
            skip,
            is_msg,
        } => {
            w.u8(kind::event::BROADCAST);
            w.str(room.as_str());
            frame(w, f);
            w.option(skip.map(|c| c.0), Writer::varint);
            w.bool(*is_msg);
        }
    }
}

/// The twin of [`put_event`]; frames are slices of the received message.
fn get_event(r: &mut Reader<'_>) -> Result<EdgeEvent, WireError> {
    Ok(match r.u8("event kind")? {
        kind::event::JOINED => EdgeEvent::Joined {
            room: r.room()?,
            conn: ConnId(r.varint("conn")?),
            frame: r.text("frame")?,
        },
        kind::event::LEFT => EdgeEvent::Left {
            room: r.room()?,
            conn: ConnId(r.varint("conn")?),
            frame: r.option("frame", |r| r.text("frame"))?,
        },
        kind::event::TO_CONN => EdgeEvent::ToConn {
            conn: ConnId(r.varint("conn")?),
            frame: r.text("frame")?,
        },
        kind::event::BROADCAST => EdgeEvent::Broadcast {
            room: r.room()?,
            frame: r.text("frame")?,
            skip: r.option("skip", |r| r.varint("skip").map(ConnId))?,
            is_msg: r.bool("is_msg")?,
        },
        other => {
            return Err(WireError::UnknownKind {
                what: "event",
                kind: other,
            });
        }
    })
}
