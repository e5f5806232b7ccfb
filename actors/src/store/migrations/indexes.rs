//! A migration that only adds indexes, so each crate declares the indexes its queries need
//! (the retention actor's purges, for one) as data.

use crate::store::schema::prelude::*;

/// Creates `indexes` (`(index, table, columns)`) under the migration name `name`; every
/// index is `IF NOT EXISTS`, so one an older, combined migration already made is kept.
pub struct Indexes {
    pub name: &'static str,
    pub indexes: &'static [(&'static str, &'static str, &'static [&'static str])],
}

impl MigrationName for Indexes {
    fn name(&self) -> &str {
        self.name
    }
}

#[async_trait::async_trait]
impl Migration for Indexes {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, cols) in self.indexes {
            let mut index = Index::create();
            index.name(*name).table(Alias::new(*table)).if_not_exists();
            for col in *cols {
                index.col(Alias::new(*col));
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, _) in self.indexes {
            manager.drop_index(Index::drop().name(*name).table(Alias::new(*table)).to_owned()).await?;
        }
        Ok(())
    }
}
