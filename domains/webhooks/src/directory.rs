//! The enabled endpoints and their filters, read from the store at most every couple of
//! seconds: fan-out and domain events ask it for every notification. Changes made through
//! this daemon invalidate it at once; another daemon's changes show within the TTL.

use std::time::Duration;

use super::endpoints::{filter_of, ordering_of};
use super::filter::Filter;
use super::ordering::OrderingKey;
use crate::store::WebhookStore;
use conveyor_actors::Error;
use conveyor_actors::recent::Recent;

const TTL: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Directory {
    store: WebhookStore,
    cached: Recent<Vec<(String, Filter, Option<OrderingKey>)>>,
}

impl Directory {
    pub fn new(store: WebhookStore) -> Self {
        Directory { store, cached: Recent::new(TTL) }
    }

    pub fn invalidate(&self) {
        self.cached.invalidate();
    }

    /// The enabled endpoints that want this notification, with where an ordered one finds
    /// the notification's key.
    pub async fn matching(
        &self,
        event_type: &str,
        project: Option<&str>,
    ) -> Result<Vec<(String, Option<OrderingKey>)>, Error> {
        Ok(self
            .snapshot()
            .await?
            .iter()
            .filter(|(_, f, _)| f.matches(event_type, project))
            .map(|(id, _, ordering)| (id.clone(), ordering.clone()))
            .collect())
    }

    /// Whether any enabled endpoint wants this notification.
    pub async fn any_matching(&self, event_type: &str, project: Option<&str>) -> Result<bool, Error> {
        Ok(self.snapshot().await?.iter().any(|(_, f, _)| f.matches(event_type, project)))
    }

    async fn snapshot(&self) -> Result<std::sync::Arc<Vec<(String, Filter, Option<OrderingKey>)>>, Error> {
        self.cached
            .get_or_load(|| async {
                let rows = self.store.enabled_endpoints().await?;
                Ok::<_, Error>(rows.iter().map(|r| (r.id.clone(), filter_of(r), ordering_of(r))).collect())
            })
            .await
    }
}
