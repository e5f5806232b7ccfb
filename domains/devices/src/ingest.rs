//! The device pipeline's front door: one event into the log, keyed by `device_id`, and the
//! answer only once the log acknowledged it (fsync for the embedded log, `acks=all` for
//! Kafka).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};

use conveyor_actors::Error;
use conveyor_actors::breaker::Breaker;
use conveyor_actors::log::{Header, OutgoingRecord, Producer};
use conveyor_actors::trace;

use crate::DeviceEvent;

/// Writes device events to the input topic; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    producer: Arc<dyn Producer>,
    topic: String,
    timeout: Duration,
    /// The log's breaker: while open, producers get an error at once instead of each
    /// waiting out the produce timeout.
    breaker: Arc<Breaker>,
}

impl Ingest {
    pub fn new(producer: Arc<dyn Producer>, topic: String, timeout: Duration, breaker: Arc<Breaker>) -> Self {
        Ingest { producer, topic, timeout, breaker }
    }

    /// Writes `payload` for `device_id` on behalf of `user_id` and waits for the log's
    /// acknowledgement; answers the event's request id. `Error::LogFull` is back-pressure
    /// from a healthy log and does not count against the breaker.
    pub async fn send(
        &self,
        user_id: &str,
        device_id: String,
        payload: Map<String, Value>,
        http_request_id: &str,
    ) -> Result<uuid::Uuid, Error> {
        let event = DeviceEvent {
            request_id: uuid::Uuid::now_v7(),
            device_id,
            payload,
            user_id: user_id.to_owned(),
            received_at: chrono::Utc::now(),
        };
        let payload =
            Bytes::from(serde_json::to_vec(&event).map_err(|source| Error::Encode { what: "device event", source })?);
        let record = |traceparent: String| OutgoingRecord {
            topic: self.topic.clone(),
            key: Some(event.device_id.clone()),
            payload,
            headers: vec![
                Header { name: trace::TRACEPARENT.into(), value: traceparent.into_bytes() },
                Header { name: "x-request-id".into(), value: http_request_id.as_bytes().to_vec() },
            ],
        };
        let permit = self.breaker.acquire().map_err(|source| Error::BreakerOpen { op: "produce", source })?;
        let sent = trace::produce_span("produce", |tp| self.producer.send(record(tp), self.timeout)).await;
        permit.record(sent.is_err() && !matches!(sent, Err(Error::LogFull { .. })));
        sent.map(|_| event.request_id)
    }
}
