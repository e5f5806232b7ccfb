//! A value read from the store and reused for a short while: the webhook directory and the
//! workflow triggers are asked for every notification, and a copy a couple of seconds old
//! is good enough once changes made through this daemon clear it at once.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The copy, when it was read, and how many invalidations there have been.
struct Held<T> {
    value: Option<(Instant, Arc<T>)>,
    generation: u64,
}

pub struct Recent<T> {
    ttl: Duration,
    copy: Arc<Mutex<Held<T>>>,
    /// Held by the one caller reading a fresh copy: every notification in flight asks, and
    /// without it all of them would go to the store together the moment the copy expires
    /// (a thousand queries queued on the pool instead of one).
    loading: Arc<tokio::sync::Mutex<()>>,
}

// Derived `Clone` would demand `T: Clone`; the copy is shared, not cloned.
impl<T> Clone for Recent<T> {
    fn clone(&self) -> Self {
        Recent { ttl: self.ttl, copy: self.copy.clone(), loading: self.loading.clone() }
    }
}

impl<T> Recent<T> {
    pub fn new(ttl: Duration) -> Self {
        Recent { ttl, copy: Arc::new(Mutex::new(Held { value: None, generation: 0 })), loading: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held<T>> {
        self.copy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next read goes to the store; a read already under way is not kept.
    pub fn invalidate(&self) {
        let mut copy = self.lock();
        copy.value = None;
        copy.generation += 1;
    }

    fn fresh(&self) -> Option<Arc<T>> {
        self.lock().value.as_ref().filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, value)| value.clone())
    }

    /// The copy if it is younger than the TTL, else a fresh one from `load`, read by one
    /// caller while the others wait for it. A failed read answers its caller only; the
    /// next waiter tries for itself.
    pub async fn get_or_load<E, Fut>(&self, load: impl FnOnce() -> Fut) -> Result<Arc<T>, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some(value) = self.fresh() {
            return Ok(value);
        }
        let _loading = self.loading.lock().await;
        if let Some(value) = self.fresh() {
            return Ok(value);
        }
        let generation = self.lock().generation;
        let value = Arc::new(load().await?);
        let mut copy = self.lock();
        // Invalidated while reading: what was read may predate the change.
        if copy.generation == generation {
            copy.value = Some((Instant::now(), value.clone()));
        }
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

    #[tokio::test]
    async fn callers_arriving_together_share_one_read() {
        let counter = Arc::new(AtomicU32::new(0));
        let recent = Recent::new(Duration::from_secs(60));
        let callers: Vec<_> = (0..50)
            .map(|_| {
                let (recent, counter) = (recent.clone(), counter.clone());
                tokio::spawn(async move {
                    recent
                        .get_or_load(|| async move {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok::<_, ()>(counter.fetch_add(1, Ordering::SeqCst) + 1)
                        })
                        .await
                })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.expect("caller panicked"), Ok(Arc::new(1)));
        }
        assert_eq!(counter.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_read_overtaken_by_an_invalidation_is_not_kept() {
        let recent = Recent::new(Duration::from_secs(60));
        let during = recent.clone();
        let read = recent
            .get_or_load(|| async move {
                during.invalidate();
                Ok::<_, ()>(1)
            })
            .await;
        assert_eq!(read, Ok(Arc::new(1)), "its caller gets what was read");
        assert_eq!(recent.get_or_load(|| async { Ok::<_, ()>(2) }).await, Ok(Arc::new(2)));
    }
}
