//! The rooms' pacer: one thread that hands each room's users their send orders on time.
//!
//! Every room offers `--rate` messages per second, evenly spaced, its ticks staggered across
//! the period so the nodes see a steady stream, and each tick goes to the room's next user in
//! turn. After a stall the pacer catches up (a burst), and the late orders carry the time they
//! were due, so the stall shows in the latency rather than hiding in it.
//!
//! Why a thread of its own rather than a tokio interval per room: tokio's timer counts whole
//! milliseconds and fires on the first millisecond after a deadline, so with intervals every
//! message left 0 to 1 ms after it was due (0.75 ms at the median, 1.76 ms at p99 with the
//! hop to the user's task, measured at 3,000 msg/s), and that lateness of the bench's own was
//! counted in the latency it reports. `std::thread::sleep` wakes within tens of microseconds.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::client::{SendOrder, Shared};

/// Longest sleep between looks at the stop signal.
const STOP_CHECK: Duration = Duration::from_millis(10);

/// When each room's next message is due, earliest first.
#[derive(Debug)]
pub struct Schedule {
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    period: Duration,
    until: Instant,
}

impl Schedule {
    /// Rooms `0..rooms`, each ticking every `period` from `start` plus its share of one period,
    /// until (not including) `until`.
    pub fn new(rooms: usize, period: Duration, start: Instant, until: Instant) -> Schedule {
        let spread = rooms.max(1) as f64;
        let due = (0..rooms)
            .map(|room| Reverse((start + period.mul_f64(room as f64 / spread), room)))
            .collect();
        Schedule { due, period, until }
    }

    /// The next room whose message is due, and when; `None` once every room is past `until`.
    pub fn next(&mut self) -> Option<(usize, Instant)> {
        let Reverse((due, room)) = self.due.pop()?;
        if due >= self.until {
            // The earliest is past the end, so every other one is too.
            self.due.clear();
            return None;
        }
        self.due.push(Reverse((due + self.period, room)));
        Some((room, due))
    }
}

/// Pace `rooms` (each room's users' order queues) on this thread until `until` or the stop
/// signal. Returns how many measured orders found the user's queue full.
pub fn pace(
    shared: &Arc<Shared>,
    mut rooms: Vec<Vec<mpsc::Sender<SendOrder>>>,
    period: Duration,
    start: Instant,
    until: Instant,
) -> u64 {
    let measure_from = shared.measure_from_us.load(Ordering::Relaxed);
    let mut schedule = Schedule::new(rooms.len(), period, start, until);
    let mut turn = vec![0usize; rooms.len()];
    let mut not_sent = 0;
    while let Some((room, due)) = schedule.next() {
        if !wait_until(due, shared) {
            break;
        }
        let users = &mut rooms[room];
        if users.is_empty() {
            continue;
        }
        let order = SendOrder {
            scheduled_us: shared.us_at(due),
        };
        let at = turn[room] % users.len();
        turn[room] = turn[room].wrapping_add(1);
        match users[at].try_send(order) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if order.scheduled_us >= measure_from {
                    not_sent += 1;
                }
            }
            // The user is gone for good: the room goes on with the others.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                users.swap_remove(at);
            }
        }
    }
    not_sent
}

/// Sleep until `due`; false if the run was stopped first.
fn wait_until(due: Instant, shared: &Shared) -> bool {
    loop {
        if shared.stop.is_cancelled() {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(STOP_CHECK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_tick_in_due_order_staggered_across_one_period() {
        let start = Instant::now();
        let period = Duration::from_millis(100);
        let mut schedule = Schedule::new(4, period, start, start + Duration::from_millis(250));
        let mut ticks = Vec::new();
        while let Some((room, due)) = schedule.next() {
            ticks.push((room, (due - start).as_millis()));
        }
        assert_eq!(
            ticks,
            vec![
                (0, 0),
                (1, 25),
                (2, 50),
                (3, 75),
                (0, 100),
                (1, 125),
                (2, 150),
                (3, 175),
                (0, 200),
                (1, 225),
            ]
        );
        assert_eq!(schedule.next(), None, "it stays over once over");
    }

    #[test]
    fn no_rooms_or_an_end_before_the_start_gives_nothing() {
        let start = Instant::now();
        let period = Duration::from_millis(10);
        assert_eq!(Schedule::new(0, period, start, start + period).next(), None);
        assert_eq!(Schedule::new(3, period, start, start).next(), None);
    }
}
