/// Topic, group, schema and key-prefix names that make one daemon (or one test's daemons)
/// independent of every other on the same backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The prefix of everything else; also the store schema and the cache key prefix.
    pub id: String,
    pub topic_in: String,
    pub topic_dlq: String,
    pub group: String,
}

impl Names {
    /// `{prefix}` and 12 random hex digits.
    pub fn unique(prefix: &str) -> Self {
        let random = uuid::Uuid::new_v4().simple().to_string();
        Self::with_id(format!("{prefix}{}", random.get(..12).unwrap_or("x")))
    }

    pub fn with_id(id: String) -> Self {
        Names {
            topic_in: format!("{id}-events-input"),
            topic_dlq: format!("{id}-events-dlq"),
            group: format!("{id}-events-processor"),
            id,
        }
    }

    /// `(variable, value)` for every topic and consumer group the daemon uses.
    pub fn env(&self) -> Vec<(String, String)> {
        let id = &self.id;
        [
            ("CONVEYOR_LOG__TOPICS__EVENTS_INPUT", self.topic_in.clone()),
            ("CONVEYOR_LOG__TOPICS__EVENTS_DLQ", self.topic_dlq.clone()),
            ("CONVEYOR_LOG__GROUPS__EVENTS", self.group.clone()),
            ("CONVEYOR_LOG__TOPICS__REGISTRATION", format!("{id}-registration")),
            ("CONVEYOR_LOG__TOPICS__LOYALTY", format!("{id}-loyalty")),
            ("CONVEYOR_LOG__GROUPS__LOYALTY", format!("{id}-loyalty")),
            ("CONVEYOR_LOG__GROUPS__IDENTITY", format!("{id}-identity-saga")),
            ("CONVEYOR_DLQ__INDEX_GROUP", format!("{id}-dlq-index")),
            ("CONVEYOR_LOG__TOPICS__NOTIFICATIONS", format!("{id}-notifications")),
            ("CONVEYOR_LOG__GROUPS__WEBHOOKS", format!("{id}-webhooks")),
            ("CONVEYOR_LOG__TOPICS__WORKFLOWS_COMMAND", format!("{id}-workflows.command")),
            ("CONVEYOR_LOG__GROUPS__WORKFLOWS", format!("{id}-workflows")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}
