//! A connection's way out: frames go straight into its socket from whichever task delivers
//! them, and wait in a bounded queue only when the socket is full.
//!
//! [`Outbox::push`] takes an encoded frame (shared by every recipient of a fan-out) and, when
//! nothing is waiting before it, writes it with a non-blocking `try_write`: one system call,
//! no task wake-up. What the socket does not take (all of it, or the rest of a partly written
//! frame) is queued, and the connection's writer task ([`Outbox::run`]) is woken to finish
//! the queue, coalescing it into vectored writes as the socket drains. Every write, direct or
//! from the queue, happens under the queue's lock with the queue as the single source of
//! order, so frames reach the client in the order they were pushed. A queue at capacity
//! refuses the frame: the edge then closes that connection alone as a slow consumer.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::edge::{CloseReason, ConnControl};
use crate::lock::lock;
use crate::ws::frame::WireFrame;
use crate::ws::socket::shutdown_write;

/// Frames given to one vectored write at most.
const MAX_SLICES: usize = 64;

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Written to the socket whole, right away.
    Written,
    /// Queued (behind others, or because the socket was full); the writer finishes it.
    Queued,
    /// The queue is full: the connection does not keep up.
    Full,
    /// The connection is closing or its socket failed: the frame was dropped.
    Closed,
}

/// One connection's outgoing frames.
#[derive(Debug)]
pub struct Outbox {
    /// The client's socket; `None` only for an outbox that just queues (unit tests of the edge).
    socket: Option<Arc<TcpStream>>,
    queue: Mutex<Queue>,
    /// Wakes the writer task when something was queued.
    wake: Notify,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<WireFrame>,
    /// Bytes of the front frame already written: it is finished before anything else goes out.
    written: usize,
    /// No more frames are taken (the connection is closing, or its socket failed).
    closed: bool,
}

impl Outbox {
    /// An outbox writing to `socket`, queueing at most `capacity` frames the socket could not
    /// take yet.
    pub fn new(socket: Arc<TcpStream>, capacity: usize) -> Outbox {
        Outbox {
            socket: Some(socket),
            queue: Mutex::default(),
            wake: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// An outbox with no socket: it only queues, for whoever takes the frames (unit tests of
    /// what gets delivered, and the simulation's clients, see [`crate::connection::Session`]).
    pub fn detached(capacity: usize) -> Outbox {
        Outbox {
            socket: None,
            queue: Mutex::default(),
            wake: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// Write `frame` now if nothing waits before it and the socket takes it, else queue it.
    pub fn push(&self, frame: &WireFrame) -> Pushed {
        let mut queue = lock(&self.queue);
        if queue.closed {
            return Pushed::Closed;
        }
        if queue.frames.is_empty()
            && let Some(socket) = &self.socket
        {
            let bytes = frame.bytes();
            match socket.try_write(bytes) {
                Ok(n) if n == bytes.len() => return Pushed::Written,
                Ok(n) => queue.written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    // The reader sees the broken socket too and ends the connection.
                    queue.closed = true;
                    return Pushed::Closed;
                }
            }
        } else if queue.frames.len() >= self.capacity {
            return Pushed::Full;
        }
        queue.frames.push_back(frame.clone());
        drop(queue);
        self.wake.notify_one();
        Pushed::Queued
    }

    /// Frames waiting for the socket.
    pub fn queued(&self) -> usize {
        lock(&self.queue).frames.len()
    }

    /// Take the queued frames' texts (what a detached outbox was given).
    pub fn take_queued(&self) -> Vec<String> {
        let mut queue = lock(&self.queue);
        queue.written = 0;
        queue
            .frames
            .drain(..)
            .map(|frame| String::from_utf8_lossy(frame.payload()).into_owned())
            .collect()
    }

    /// The writer: finish what the socket could not take at once, until the connection is
    /// closed; then send the close frame (after what is queued, when the reason says flush),
    /// half-close the socket, all within `close_timeout` once closing starts.
    pub async fn run(&self, control: &ConnControl, close_timeout: Duration) {
        let Some(socket) = &self.socket else { return };
        loop {
            tokio::select! {
                biased;
                () = control.closed() => break,
                () = self.wake.notified() => {}
            }
            tokio::select! {
                biased;
                () = control.closed() => break,
                drained = self.drain(socket) => if drained.is_err() {
                    lock(&self.queue).closed = true;
                    return;
                },
            }
        }
        let reason = control.reason().unwrap_or(CloseReason {
            code: 1000,
            reason: String::new(),
            flush: true,
        });
        {
            let mut queue = lock(&self.queue);
            queue.closed = true;
            if !reason.flush {
                // Only a frame already started must be finished: the stream would break.
                let started = usize::from(queue.written > 0);
                queue.frames.truncate(started);
            }
            queue
                .frames
                .push_back(WireFrame::close(reason.code, &reason.reason));
        }
        let closing = async {
            if self.drain(socket).await.is_ok() {
                let _ = shutdown_write(socket);
            }
        };
        let _ = tokio::time::timeout(close_timeout, closing).await;
    }

    /// Write the queue out, waiting for the socket as needed; returns once it is empty.
    async fn drain(&self, socket: &TcpStream) -> io::Result<()> {
        loop {
            {
                let mut queue = lock(&self.queue);
                loop {
                    if queue.frames.is_empty() {
                        return Ok(());
                    }
                    let written = queue.written;
                    let slices: Vec<IoSlice<'_>> = queue
                        .frames
                        .iter()
                        .take(MAX_SLICES)
                        .enumerate()
                        .map(|(i, frame)| {
                            let skip = if i == 0 { written } else { 0 };
                            IoSlice::new(&frame.bytes()[skip..])
                        })
                        .collect();
                    let result = socket.try_write_vectored(&slices);
                    drop(slices);
                    match result {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => queue.advance(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            socket.writable().await?;
        }
    }
}

impl Queue {
    /// `n` more bytes went out: drop the frames they finished.
    fn advance(&mut self, mut n: usize) {
        while let Some(front) = self.frames.front() {
            let left = front.bytes().len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.written = 0;
            self.frames.pop_front();
        }
    }
}

#[cfg(test)]
mod tests;
