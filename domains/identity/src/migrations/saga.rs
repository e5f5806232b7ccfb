//! The outbox, sagas and their steps, and the loyalty ledger.

use conveyor_actors::store::schema::prelude::*;

pub struct CreateSagaAndLedger;

impl MigrationName for CreateSagaAndLedger {
    fn name(&self) -> &str {
        "m20261123_000004_create_saga_and_ledger"
    }
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    Topic,
    Key,
    Payload,
    Status,
    Attempts,
    NextAttemptAt,
    LastError,
    SagaId,
    SagaStep,
    CreatedAt,
    PublishedAt,
}

#[derive(DeriveIden)]
enum Sagas {
    Table,
    Id,
    Kind,
    UserId,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum SagaSteps {
    Table,
    Id,
    SagaId,
    Step,
    Status,
    Detail,
    At,
}

#[derive(DeriveIden)]
enum LoyaltyAccounts {
    Table,
    UserId,
    Balance,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum LoyaltyTransactions {
    Table,
    Id,
    UserId,
    Kind,
    Amount,
    Comment,
    Reason,
    IdempotencyKey,
    BalanceAfter,
    CreatedAt,
}

#[async_trait::async_trait]
impl Migration for CreateSagaAndLedger {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Outbox::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(Outbox::Topic).string().not_null())
                    .col(ColumnDef::new(Outbox::Key).string().not_null())
                    .col(ColumnDef::new(Outbox::Payload).text().not_null())
                    .col(ColumnDef::new(Outbox::Status).string().not_null())
                    .col(ColumnDef::new(Outbox::Attempts).integer().not_null())
                    .col(ColumnDef::new(Outbox::NextAttemptAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Outbox::LastError).text().null())
                    .col(ColumnDef::new(Outbox::SagaId).string().null())
                    .col(ColumnDef::new(Outbox::SagaStep).string().null())
                    .col(ColumnDef::new(Outbox::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Outbox::PublishedAt).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("outbox_due")
                    .table(Outbox::Table)
                    .col(Outbox::Status)
                    .col(Outbox::NextAttemptAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Sagas::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Sagas::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(Sagas::Kind).string().not_null())
                    .col(ColumnDef::new(Sagas::UserId).string().not_null())
                    .col(ColumnDef::new(Sagas::Status).string().not_null())
                    .col(ColumnDef::new(Sagas::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Sagas::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("sagas_user")
                    .table(Sagas::Table)
                    .col(Sagas::UserId)
                    .col(Sagas::Kind)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SagaSteps::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(SagaSteps::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(SagaSteps::SagaId).string().not_null())
                    .col(ColumnDef::new(SagaSteps::Step).string().not_null())
                    .col(ColumnDef::new(SagaSteps::Status).string().not_null())
                    .col(ColumnDef::new(SagaSteps::Detail).text().null())
                    .col(ColumnDef::new(SagaSteps::At).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("saga_steps_once")
                    .table(SagaSteps::Table)
                    .col(SagaSteps::SagaId)
                    .col(SagaSteps::Step)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LoyaltyAccounts::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(LoyaltyAccounts::UserId).string().not_null().primary_key())
                    .col(
                        ColumnDef::new(LoyaltyAccounts::Balance)
                            .big_integer()
                            .not_null()
                            .check(Expr::col(LoyaltyAccounts::Balance).gte(0)),
                    )
                    .col(ColumnDef::new(LoyaltyAccounts::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(LoyaltyAccounts::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LoyaltyTransactions::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(LoyaltyTransactions::Id).big_integer().not_null().auto_increment().primary_key(),
                    )
                    .col(ColumnDef::new(LoyaltyTransactions::UserId).string().not_null())
                    .col(ColumnDef::new(LoyaltyTransactions::Kind).string().not_null())
                    .col(
                        ColumnDef::new(LoyaltyTransactions::Amount)
                            .big_integer()
                            .not_null()
                            .check(Expr::col(LoyaltyTransactions::Amount).gt(0)),
                    )
                    .col(ColumnDef::new(LoyaltyTransactions::Comment).text().not_null())
                    .col(ColumnDef::new(LoyaltyTransactions::Reason).string().not_null())
                    .col(ColumnDef::new(LoyaltyTransactions::IdempotencyKey).string().null().unique_key())
                    .col(ColumnDef::new(LoyaltyTransactions::BalanceAfter).big_integer().not_null())
                    .col(ColumnDef::new(LoyaltyTransactions::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("loyalty_transactions_user")
                    .table(LoyaltyTransactions::Table)
                    .col(LoyaltyTransactions::UserId)
                    .col(LoyaltyTransactions::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Outbox::Table.into_iden(),
            Sagas::Table.into_iden(),
            SagaSteps::Table.into_iden(),
            LoyaltyAccounts::Table.into_iden(),
            LoyaltyTransactions::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
