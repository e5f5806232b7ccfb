//! Identity tables: `users`, `refresh_tokens` (one row per refresh token, to detect reuse)
//! and `revoked_tokens` (the durable side of the revocation list the cache fronts).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, SqlErr, TransactionTrait};

use super::sagas::{insert_outbox, insert_step, outbox, saga};

use super::IdentityStore;
use conveyor_actors::Error;

pub mod user {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// Normalised (trimmed, lower-case); unique.
        pub email: String,
        /// argon2id PHC string.
        pub password_hash: String,
        pub name: String,
        /// `YYYY-MM-DD`.
        pub birthday: String,
        /// Comma-separated: `user`, `device`, `admin`.
        pub roles: String,
        pub created_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod refresh_token {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "refresh_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub jti: String,
        pub family: String,
        pub user_id: String,
        pub expires_at: ChronoDateTimeUtc,
        /// Set when it bought a new pair; a second use is a replay.
        pub used_at: Option<ChronoDateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod revocation {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "revoked_tokens")]
    pub struct Model {
        /// A token's `jti` or a token family's id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// After this, every token it covers has expired anyway.
        pub expires_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

impl IdentityStore {
    /// Inserts a user, and with it (in the same transaction) the saga its registration
    /// starts and the outbox record that announces it. A taken email is
    /// [`Error::EmailTaken`]: the unique index decides, so two concurrent registrations
    /// cannot both win.
    pub async fn insert_user(&self, row: user::Model, saga: Option<(saga::Model, outbox::Model)>) -> Result<(), Error> {
        let work = async {
            let txn = self.connection().begin().await?;
            let active: user::ActiveModel = row.into();
            user::Entity::insert(active).exec_without_returning(&txn).await?;
            if let Some((saga_row, announce)) = saga {
                let id = saga_row.id.clone();
                let active: saga::ActiveModel = saga_row.into();
                saga::Entity::insert(active).exec_without_returning(&txn).await?;
                insert_step(&txn, &id, crate::saga::step::USER_CREATED, crate::states::SagaStepStatus::Completed, None)
                    .await?;
                insert_outbox(&txn, announce).await?;
            }
            txn.commit().await
        };
        match self.guarded("insert_user", work).await {
            Ok(()) => Ok(()),
            Err(Error::Store { source, .. })
                if matches!(source.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) =>
            {
                Err(Error::EmailTaken)
            }
            Err(other) => Err(other),
        }
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<user::Model>, Error> {
        self.guarded("user_by_email", user::Entity::find().filter(user::Column::Email.eq(email)).one(self.connection()))
            .await
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<user::Model>, Error> {
        self.guarded("user_by_id", user::Entity::find_by_id(id.to_string()).one(self.connection())).await
    }

    pub async fn insert_refresh_token(
        &self,
        jti: &str,
        family: &str,
        user_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), Error> {
        let row = refresh_token::ActiveModel {
            jti: Set(jti.to_string()),
            family: Set(family.to_string()),
            user_id: Set(user_id.to_string()),
            expires_at: Set(expires_at),
            used_at: Set(None),
        };
        self.guarded(
            "insert_refresh_token",
            refresh_token::Entity::insert(row).exec_without_returning(self.connection()),
        )
        .await
        .map(drop)
    }

    /// Marks a refresh token used; `false` when it was already used (or never issued), in
    /// one conditional update so two concurrent refreshes cannot both succeed.
    pub async fn use_refresh_token(&self, jti: &str) -> Result<bool, Error> {
        let query = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::UsedAt, Expr::value(Utc::now()))
            .filter(refresh_token::Column::Jti.eq(jti))
            .filter(refresh_token::Column::UsedAt.is_null())
            .exec(self.connection());
        Ok(self.guarded("use_refresh_token", query).await?.rows_affected == 1)
    }

    /// Records a revocation (idempotent) and sweeps the ones that no longer matter.
    pub async fn revoke(&self, id: &str, expires_at: DateTime<Utc>) -> Result<(), Error> {
        let row = revocation::ActiveModel { id: Set(id.to_string()), expires_at: Set(expires_at) };
        let on_conflict = OnConflict::column(revocation::Column::Id).do_nothing().to_owned();
        let insert = revocation::Entity::insert(row).on_conflict(on_conflict).exec_without_returning(self.connection());
        self.guarded("revoke", insert).await?;
        let sweep = revocation::Entity::delete_many()
            .filter(Expr::col(revocation::Column::ExpiresAt).lt(Expr::value(Utc::now())))
            .exec(self.connection());
        self.guarded("sweep_revocations", sweep).await.map(drop)
    }

    /// Until when `id` (a token or a session) is revoked; `None` if it is not.
    pub async fn revoked_until(&self, id: &str) -> Result<Option<DateTime<Utc>>, Error> {
        let found =
            self.guarded("is_revoked", revocation::Entity::find_by_id(id.to_string()).one(self.connection())).await?;
        Ok(found.map(|row| row.expires_at))
    }
}
