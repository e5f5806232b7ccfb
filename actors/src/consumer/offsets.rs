//! Which offset of a partition is safe to commit while records finish out of order.

use std::collections::BTreeSet;

/// Tracks records received but not done; the committable position is the lowest of them,
/// or one past the highest received when none is pending. A rebalance or crash therefore
/// never skips an unfinished record, however far other keys have run ahead.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    pending: BTreeSet<i64>,
    next: Option<i64>,
}

impl OffsetTracker {
    /// A record entered the partition actor.
    pub fn received(&mut self, offset: i64) {
        self.pending.insert(offset);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// A record is done (processed or dead-lettered).
    pub fn done(&mut self, offset: i64) {
        self.pending.remove(&offset);
    }

    /// Records received and not yet done.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The offset to commit (Kafka semantics: the next record to read), if anything arrived.
    pub fn committable(&self) -> Option<i64> {
        self.pending.first().copied().or(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_below_the_oldest_unfinished_record() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.committable(), None);
        for o in 10..15 {
            t.received(o);
        }
        assert_eq!(t.committable(), Some(10));
        t.done(11);
        t.done(13);
        assert_eq!(t.committable(), Some(10), "10 is still running");
        t.done(10);
        assert_eq!(t.committable(), Some(12));
        t.done(12);
        t.done(14);
        assert_eq!(t.committable(), Some(15));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        let mut t = OffsetTracker::default();
        t.received(3);
        t.received(7);
        t.done(3);
        assert_eq!(t.committable(), Some(7));
        t.done(7);
        assert_eq!(t.committable(), Some(8));
    }
}
