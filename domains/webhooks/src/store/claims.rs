//! The dedup record of `POST /notifications`, for many posts at once: concurrent posts'
//! claims share one statement and their acceptances another, where one statement each per
//! post made every store statement wait in the embedded store's writer queue under load.

use std::collections::HashSet;

use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{ActiveModelTrait, ColumnTrait, Condition, EntityTrait, FromQueryResult, QueryFilter, QueryTrait};

use super::{Claim, WebhookStore, notification};
use conveyor_actors::Error;

#[derive(FromQueryResult)]
struct Claimed {
    id: String,
}

impl WebhookStore {
    /// Records notification ids before they are published, one statement for all of them;
    /// one [`Claim`] per row, in order. A claim left unaccepted longer than `stale_after`
    /// (its publisher died) is taken over; an accepted one is a duplicate until `window`
    /// has passed. An id that comes twice in `rows` is the first one's only.
    pub async fn claim_notifications(
        &self,
        rows: Vec<notification::Model>,
        window: chrono::Duration,
        stale_after: chrono::Duration,
    ) -> Result<Vec<Claim>, Error> {
        use notification::{Column, Entity};
        let mut seen = HashSet::with_capacity(rows.len());
        let first: Vec<bool> = rows.iter().map(|r| seen.insert(r.id.clone())).collect();
        let fresh: Vec<notification::ActiveModel> =
            rows.iter().zip(&first).filter(|(_, f)| **f).map(|(r, _)| r.clone().into()).collect();
        let mut insert =
            Entity::insert_many(fresh).on_conflict(OnConflict::column(Column::Id).do_nothing().to_owned()).into_query();
        insert.returning(Query::returning().column(Column::Id));
        let stmt = self.connection().get_database_backend().build(&insert);
        let inserted: HashSet<String> = self
            .guarded("claim_notification", Claimed::find_by_statement(stmt).all(self.connection()))
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
        let mut claims = Vec::with_capacity(rows.len());
        for (row, first) in rows.into_iter().zip(first) {
            let claim = if !first {
                Claim::Duplicate
            } else if inserted.contains(&row.id) {
                Claim::New
            } else {
                self.take_over(row, window, stale_after).await?
            };
            claims.push(claim);
        }
        Ok(claims)
    }

    /// An existing claim is taken over only if it expired; the condition makes two racing
    /// takeovers resolve to one winner.
    async fn take_over(
        &self,
        row: notification::Model,
        window: chrono::Duration,
        stale_after: chrono::Duration,
    ) -> Result<Claim, Error> {
        use notification::{Column, Entity};
        let now = row.received_at;
        let id = row.id.clone();
        // Every column is written: `From<Model>` marks them unchanged, which `set` would skip.
        let active = notification::ActiveModel::from(row).reset_all();
        let expired = Condition::any()
            .add(Column::Accepted.eq(true).and(Column::ReceivedAt.lt(now - window)))
            .add(Column::Accepted.eq(false).and(Column::ReceivedAt.lt(now - stale_after)));
        let takeover =
            Entity::update_many().set(active).filter(Column::Id.eq(id)).filter(expired).exec(self.connection());
        let taken = self.guarded("claim_notification", takeover).await?.rows_affected;
        Ok(if taken == 1 { Claim::New } else { Claim::Duplicate })
    }

    /// The log acknowledged these notifications: duplicates are refused from now on.
    pub async fn accept_notifications(&self, ids: &[String]) -> Result<(), Error> {
        use notification::{Column, Entity};
        let q = Entity::update_many()
            .col_expr(Column::Accepted, Expr::value(true))
            .filter(Column::Id.is_in(ids.iter().cloned()))
            .exec(self.connection());
        self.guarded("accept_notification", q).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::{Duration, Utc};

    use super::*;

    fn row(id: &str, received_at: chrono::DateTime<chrono::Utc>) -> notification::Model {
        notification::Model {
            id: id.into(),
            event_type: "t".into(),
            project: None,
            payload: "{}".into(),
            accepted: false,
            received_at,
            fanned_out: false,
        }
    }

    #[tokio::test]
    async fn one_statement_claims_new_ids_refuses_repeats_and_takes_over_expired_claims() {
        let dir = tempfile::tempdir().unwrap();
        for store in super::super::leases::tests::stores(dir.path()).await {
            let (window, stale) = (Duration::seconds(60), Duration::seconds(10));
            let now = Utc::now();
            // An accepted claim inside the window, an accepted one past it, an unaccepted
            // one whose publisher died.
            let old = vec![
                row("live", now),
                row("expired", now - Duration::seconds(120)),
                row("dead", now - Duration::seconds(30)),
            ];
            assert_eq!(store.claim_notifications(old, window, stale).await.unwrap(), vec![Claim::New; 3]);
            store.accept_notifications(&["live".into(), "expired".into()]).await.unwrap();

            let batch = vec![row("new", now), row("live", now), row("new", now), row("expired", now), row("dead", now)];
            let claims = store.claim_notifications(batch, window, stale).await.unwrap();
            assert_eq!(
                claims,
                vec![Claim::New, Claim::Duplicate, Claim::Duplicate, Claim::New, Claim::New],
                "a new id once (its repeat in the same batch refused), the live one refused, both expired ones taken over"
            );
            // Taken over means unaccepted again: a repeat is refused until the log answers.
            let again = store.claim_notifications(vec![row("expired", now)], window, stale).await.unwrap();
            assert_eq!(again, vec![Claim::Duplicate]);
        }
    }
}
