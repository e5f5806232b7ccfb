//! The enabled endpoints and their filters, read from the store at most every couple of
//! seconds: fan-out and domain events ask it for every notification. Changes made through
//! this daemon invalidate it at once; another daemon's changes show within the TTL.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::endpoints::filter_of;
use super::filter::Filter;
use crate::Error;
use crate::store::Store;

const TTL: Duration = Duration::from_secs(2);

type Snapshot = Arc<Vec<(String, Filter)>>;

#[derive(Clone)]
pub struct Directory {
    store: Store,
    cached: Arc<Mutex<Option<(Instant, Snapshot)>>>,
}

impl Directory {
    pub fn new(store: Store) -> Self {
        Directory { store, cached: Arc::default() }
    }

    pub fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    async fn snapshot(&self) -> Result<Snapshot, Error> {
        if let Some((at, snapshot)) = self.cached.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && at.elapsed() < TTL
        {
            return Ok(snapshot.clone());
        }
        let rows = self.store.enabled_endpoints().await?;
        let snapshot: Snapshot = Arc::new(rows.iter().map(|r| (r.id.clone(), filter_of(r))).collect());
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }

    /// Ids of the enabled endpoints that want this notification.
    pub async fn matching(&self, event_type: &str, project: Option<&str>) -> Result<Vec<String>, Error> {
        let snapshot = self.snapshot().await?;
        Ok(snapshot.iter().filter(|(_, f)| f.matches(event_type, project)).map(|(id, _)| id.clone()).collect())
    }
}
