//! One way to take the node's plain mutexes. A panic while one is held leaves plain maps and
//! queues behind, still consistent enough to use, so a poisoned lock is taken anyway rather
//! than turning one panic into a node that panics on every message.

use std::sync::{Mutex, MutexGuard};

/// Lock `mutex`, poisoned or not.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
