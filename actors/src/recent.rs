//! A value read from the store and reused for a short while: the webhook directory and the
//! workflow triggers are asked for every notification, and a copy a couple of seconds old
//! is good enough once changes made through this daemon clear it at once.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The copy and when it was read.
type Slot<T> = Arc<Mutex<Option<(Instant, Arc<T>)>>>;

pub struct Recent<T> {
    ttl: Duration,
    slot: Slot<T>,
}

// Derived `Clone` would demand `T: Clone`; the copy is shared, not cloned.
impl<T> Clone for Recent<T> {
    fn clone(&self) -> Self {
        Recent { ttl: self.ttl, slot: self.slot.clone() }
    }
}

impl<T> Recent<T> {
    pub fn new(ttl: Duration) -> Self {
        Recent { ttl, slot: Arc::default() }
    }

    /// The next read goes to the store.
    pub fn invalidate(&self) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The copy if it is younger than the TTL, else a fresh one from `load`. Two callers
    /// racing past an expired copy both load; the later write wins, and both are current.
    pub async fn get_or_load<E, Fut>(&self, load: impl FnOnce() -> Fut) -> Result<Arc<T>, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some((at, value)) = self.slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(value.clone());
        }
        let value = Arc::new(load().await?);
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), value.clone()));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn reuses_the_copy_until_invalidated_or_expired() {
        let counter = AtomicU32::new(0);
        let loads = &counter;
        let load = || async move { Ok::<_, ()>(loads.fetch_add(1, Ordering::SeqCst) + 1) };
        let recent = Recent::new(Duration::from_secs(60));
        assert_eq!(recent.get_or_load(load).await, Ok(Arc::new(1)));
        assert_eq!(recent.get_or_load(load).await, Ok(Arc::new(1)));
        recent.clone().invalidate();
        assert_eq!(recent.get_or_load(load).await, Ok(Arc::new(2)));

        let expired = Recent::new(Duration::ZERO);
        assert_eq!(expired.get_or_load(load).await, Ok(Arc::new(3)));
        assert_eq!(expired.get_or_load(load).await, Ok(Arc::new(4)));
        assert_eq!(expired.get_or_load(|| async { Err::<u32, _>("down") }).await, Err("down"));
    }
}
