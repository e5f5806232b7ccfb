//! One key task's records, routed: handled (coalesced, then one by one on failure), held
//! behind a parked key, or releasing one. Without parking and control records this is the
//! plain batch-then-one-by-one path.

use std::future::Future;

use super::key_task::{KeyCtx, Single, Stuck, call, mark_stuck, now_ms, processed, single, wait};
use super::parking::{KeyPark, ParkRefusal, Parking, Route, route};
use super::stuck::StuckReason;
use crate::log::Record;
use crate::metrics::{self, kv, metrics};
use crate::retry::HandlerError;
use crate::store::parked::ParkCause;

/// One key's turn; `done` collects the offsets finished.
pub(super) struct KeyRun<'a> {
    pub ctx: &'a KeyCtx,
    pub key: &'a str,
    pub done: Vec<i64>,
}

impl KeyRun<'_> {
    /// Runs `records` in order; `false` if the partition started draining first.
    pub async fn all(&mut self, records: Vec<Record>) -> bool {
        let plain =
            self.ctx.parking.is_none() && records.iter().all(|r| r.header(super::parking::headers::CONTROL).is_none());
        if plain {
            return self.handle(records).await;
        }
        // Boxed, like every path off the happy one: a key task's future is allocated per
        // turn, and inlining the store and dead-letter futures made it 22 KB.
        Box::pin(self.routed(records)).await
    }

    /// [`KeyRun::all`] on a parking topic or with control records: each record routed.
    async fn routed(&mut self, records: Vec<Record>) -> bool {
        let mut pending = Vec::new();
        for record in records {
            let state = self.parking().and_then(|p| p.get(self.key));
            let route = route(&record, state);
            if route == Route::Handle {
                pending.push(record);
                continue;
            }
            if !self.handle(std::mem::take(&mut pending)).await {
                return false;
            }
            // The batch just handled may have parked the key.
            let state = self.parking().and_then(|p| p.get(self.key));
            let ok = match super::parking::route(&record, state) {
                Route::Handle => self.handle(vec![record]).await,
                Route::Park => self.park_record(&record).await,
                Route::Release { origin, replay } => self.release(&record, origin, replay).await,
                Route::Done => {
                    self.done.push(record.offset);
                    true
                }
                Route::Ignored => {
                    self.ignored(&record);
                    true
                }
            };
            if !ok {
                return false;
            }
        }
        self.handle(pending).await
    }

    fn parking(&self) -> Option<&Parking> {
        self.ctx.parking.as_deref()
    }

    fn is_parked(&self) -> bool {
        matches!(self.parking().and_then(|p| p.get(self.key)), Some(KeyPark::Parked { .. }))
    }

    fn ignored(&mut self, record: &Record) {
        let reason = ParkRefusal::ControlIgnored;
        tracing::warn!(
            handler = self.ctx.handler.name(), topic = %record.tp.topic, partition = record.tp.partition,
            offset = record.offset, key = self.key, "control record matches no parked key; ignored"
        );
        refused(record, reason);
        self.done.push(record.offset);
    }

    /// Handles `records` (coalesced; one by one when that fails); a record dead-lettered on
    /// a parking topic parks the key, and the rest of `records` are held behind it.
    async fn handle(&mut self, records: Vec<Record>) -> bool {
        if records.is_empty() {
            return true;
        }
        let first = match call(self.ctx, self.key, &records).await {
            Ok(()) => {
                metrics().records_processed.add(records.len() as u64, &processed(self.ctx, "ok"));
                for r in &records {
                    // The request's trace id, read back from the record: one trace across the log.
                    tracing::debug!(
                        handler = self.ctx.handler.name(), topic = %r.tp.topic, partition = r.tp.partition, offset = r.offset,
                        trace_id = crate::trace::record_trace_id(r), "record processed"
                    );
                }
                self.done.extend(records.iter().map(|r| r.offset));
                return true;
            }
            Err(first) => first,
        };
        Box::pin(self.one_by_one(records, first)).await
    }

    /// After `records` failed together: finds out record by record which one, so one bad
    /// record never takes its neighbours to the dead-letter topic.
    async fn one_by_one(&mut self, records: Vec<Record>, first: HandlerError) -> bool {
        let mut first = (records.len() == 1).then_some(first);
        for record in &records {
            if self.is_parked() {
                if !self.park_record(record).await {
                    return false;
                }
                continue;
            }
            match single(self.ctx, self.key, record, first.take()).await {
                Single::Processed => self.done.push(record.offset),
                Single::DeadLettered(error) => {
                    if !self.park_behind(record, &error, None).await {
                        return false;
                    }
                    self.done.push(record.offset);
                }
                Single::Abandoned => return false,
            }
        }
        true
    }

    /// After `record` was dead-lettered: parks its key on a parking topic (within the
    /// partition's bound). `held` is set when the key is parked again during a release.
    async fn park_behind(&mut self, record: &Record, error: &HandlerError, held: Option<u64>) -> bool {
        let Some(parking) = self.ctx.parking.clone() else { return true };
        // Parked again during a release: the key holds its place within the bound.
        let max = if held.is_some() { usize::MAX } else { parking.spec.max_keys };
        let before = parking.get(self.key);
        if !parking.try_park(self.key, record.offset, held.unwrap_or(0), max) {
            tracing::warn!(
                handler = self.ctx.handler.name(), topic = %record.tp.topic, partition = record.tp.partition,
                offset = record.offset, key = self.key, max = parking.spec.max_keys,
                "processing.max_parked_keys_per_partition reached: the key continues past its dead letter"
            );
            refused(record, ParkRefusal::ParkLimit);
            return true;
        }
        let cause = ParkCause {
            handler: self.ctx.handler.name(),
            origin_offset: record.offset,
            error_class: error.class.as_str(),
            error: &error.describe(),
        };
        let store = &parking.spec.store;
        if self.retry_store(record, error, || store.park(&record.tp, self.key, &cause)).await.is_none() {
            parking.restore(self.key, before);
            return false;
        }
        tracing::warn!(
            handler = self.ctx.handler.name(), topic = %record.tp.topic, partition = record.tp.partition,
            offset = record.offset, key = self.key, "key parked behind its dead letter"
        );
        true
    }

    /// Holds `record` behind its parked key (or dead-letters it past the key's bound).
    async fn park_record(&mut self, record: &Record) -> bool {
        let Some(parking) = self.ctx.parking.clone() else { return true };
        let Some(KeyPark::Parked { origin, held }) = parking.get(self.key) else { return true };
        if held >= parking.spec.max_records as u64 {
            let reason = ParkRefusal::ParkedOverflow;
            let message = format!(
                "key {} holds {held} records behind its dead letter (processing.max_parked_records_per_key)",
                self.key
            );
            let err = HandlerError::permanent(std::io::Error::other(message.clone()));
            let written =
                self.retry_store(record, &err, || self.ctx.dead_letters.write_refused(record, reason, &message));
            if written.await.is_none() {
                return false;
            }
            tracing::error!(
                handler = self.ctx.handler.name(), topic = %record.tp.topic, partition = record.tp.partition,
                offset = record.offset, key = self.key, "parked key full: record dead-lettered"
            );
            refused(record, reason);
            self.done.push(record.offset);
            return true;
        }
        let store = &parking.spec.store;
        let err = HandlerError::retryable(std::io::Error::other("holding a record behind its parked key"));
        let Some(inserted) = self.retry_store(record, &err, || store.append(record)).await else { return false };
        if inserted {
            parking.set(self.key, KeyPark::Parked { origin, held: held + 1 });
            metrics().records_parked.add(1, &[kv(metrics::TOPIC, record.tp.topic.clone())]);
            metrics().records_processed.add(1, &processed(self.ctx, "parked"));
        }
        self.done.push(record.offset);
        true
    }

    /// Releases the parked key: the replayed dead letter (with its original offset) first,
    /// unless skipped, then the held records in order, page by page. `trigger` is done only
    /// once all of it is, or the key is parked again.
    async fn release(&mut self, trigger: &Record, origin: i64, replay: bool) -> bool {
        let Some(parking) = self.ctx.parking.clone() else { return true };
        let store = &parking.spec.store;
        let topic = [kv(metrics::TOPIC, trigger.tp.topic.clone())];
        if replay {
            // Its original offset: a store guarded by offsets then takes it before the held ones.
            let original = Record { offset: origin, ..trigger.clone() };
            match single(self.ctx, self.key, &original, None).await {
                Single::Processed => {}
                Single::DeadLettered(error) => {
                    let held = match parking.get(self.key) {
                        Some(KeyPark::Parked { held, .. }) => held,
                        _ => 0,
                    };
                    if !self.park_behind(&original, &error, Some(held)).await {
                        return false;
                    }
                    self.done.push(trigger.offset);
                    return true;
                }
                Single::Abandoned => return false,
            }
        }
        let page_size = self.ctx.max_coalesce as u64;
        let paging = HandlerError::retryable(std::io::Error::other("releasing a parked key"));
        loop {
            let page = self.retry_store(trigger, &paging, || store.page(&trigger.tp, self.key, page_size)).await;
            let Some(page) = page else { return false };
            if page.is_empty() {
                break;
            }
            let (ids, records): (Vec<i64>, Vec<Record>) = page.into_iter().unzip();
            let mut applied = Vec::with_capacity(ids.len());
            let mut parked_again = None;
            match call(self.ctx, self.key, &records).await {
                Ok(()) => {
                    metrics().records_processed.add(records.len() as u64, &processed(self.ctx, "ok"));
                    applied.extend_from_slice(&ids);
                }
                Err(first) => {
                    let mut first = (records.len() == 1).then_some(first);
                    for (id, record) in ids.iter().zip(&records) {
                        match single(self.ctx, self.key, record, first.take()).await {
                            Single::Processed => applied.push(*id),
                            Single::DeadLettered(error) => {
                                applied.push(*id);
                                parked_again = Some((record.clone(), error));
                                break;
                            }
                            Single::Abandoned => return false,
                        }
                    }
                }
            }
            let n = applied.len() as u64;
            if self.retry_store(trigger, &paging, || store.delete_records(&applied)).await.is_none() {
                return false;
            }
            metrics().records_released.add(n, &topic);
            let held = match parking.get(self.key) {
                Some(KeyPark::Parked { held, .. }) => held.saturating_sub(n),
                _ => 0,
            };
            parking.set(self.key, KeyPark::Parked { origin, held });
            if let Some((record, error)) = parked_again {
                // The rest stay held, now behind this record's dead letter.
                if !self.park_behind(&record, &error, Some(held)).await {
                    return false;
                }
                self.done.push(trigger.offset);
                return true;
            }
        }
        let done = HandlerError::retryable(std::io::Error::other("marking a parked key released"));
        let marked = self.retry_store(trigger, &done, || store.released(&trigger.tp.topic, self.key, trigger.offset));
        if marked.await.is_none() {
            return false;
        }
        parking.set(self.key, KeyPark::Released { origin, by: trigger.offset });
        tracing::info!(
            handler = self.ctx.handler.name(), topic = %trigger.tp.topic, partition = trigger.tp.partition,
            key = self.key, origin, replayed = replay, by = trigger.offset, "parked key released"
        );
        self.done.push(trigger.offset);
        true
    }

    /// Runs a store write until it lands, showing the key as stuck (`park_write`) meanwhile;
    /// `None` if the partition started draining first.
    async fn retry_store<T, F, Fut>(&self, record: &Record, cause: &HandlerError, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, crate::Error>>,
    {
        let mut attempt = 0u32;
        let since_ms = now_ms();
        loop {
            match op().await {
                Ok(value) => {
                    if attempt > 0 {
                        self.ctx.stuck.clear(self.key);
                    }
                    return Some(value);
                }
                Err(err) => {
                    attempt += 1;
                    let delay = self.ctx.policy.ceiling(attempt);
                    tracing::error!(
                        topic = %record.tp.topic, partition = record.tp.partition, offset = record.offset,
                        key = self.key, attempt, delay_ms = delay.as_millis() as u64,
                        error = %crate::error::chain(&err), "parked-key write failed; record held"
                    );
                    let next_attempt_ms = Some(now_ms() + delay.as_millis() as i64);
                    let stuck = Stuck {
                        reason: StuckReason::ParkWrite,
                        since_ms,
                        attempts: attempt,
                        error: cause,
                        next_attempt_ms,
                    };
                    mark_stuck(self.ctx, self.key, record, stuck);
                    if !wait(self.ctx, delay).await {
                        return None;
                    }
                }
            }
        }
    }
}

fn refused(record: &Record, reason: ParkRefusal) {
    let labels = [kv(metrics::TOPIC, record.tp.topic.clone()), kv(metrics::REASON, reason.as_str())];
    metrics().park_refusals.add(1, &labels);
}
