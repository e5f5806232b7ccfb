//! The composition root: builds the whole actor system from the configuration, wires the
//! domains to the runtime (which handler serves which topic, which services the root
//! supervisor owns) and hands the HTTP front end its facades.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};

use conveyor_actors::Error;
use conveyor_actors::breaker::Breaker;
use conveyor_actors::cache::Cache;
use conveyor_actors::config::{Config, DeadLetterPolicy};
use conveyor_actors::consumer::DeadLetters;
use conveyor_actors::consumer::ParkSpec;
use conveyor_actors::dlq::{DeadLetterAdmin, DeadLetterIndexer};
use conveyor_actors::lag::Lag;
use conveyor_actors::log::Producer;
use conveyor_actors::parked::ParkedKeysAdmin;
use conveyor_actors::readiness::{CHECK_TIMEOUT, Component, Readiness, bounded};
use conveyor_actors::retention::Rules;
use conveyor_actors::retry::RetryPolicy;
use conveyor_actors::root::{GroupSpec, RootArgs, RootMsg, RootSupervisor, ServiceStatus};
use conveyor_actors::store::Store;
use conveyor_actors::store::idempotency::IdempotencyKeys;
use conveyor_actors::store::parked::ParkedStore;
use conveyor_actors::supervision::Service;
use conveyor_devices::{DeviceHandler, DeviceStore, Ingest, Resources};
use conveyor_http::{Facades, Operations};
use conveyor_identity::loyalty::{Ledger, LoyaltyHandler, LoyaltyReads};
use conveyor_identity::outbox::OutboxArgs;
use conveyor_identity::saga::IdentitySagaHandler;
use conveyor_identity::store::IdentityStore;
use conveyor_identity::{Identity, TokenKeys};
use conveyor_webhooks::Webhooks;
use conveyor_webhooks::attempts::AttemptLog;
use conveyor_webhooks::client::WebhookClient;
use conveyor_webhooks::context::DeliveryContext;
use conveyor_webhooks::directory::Directory;
use conveyor_webhooks::dispatcher::Dispatcher;
use conveyor_webhooks::domain::DomainEventPublisher;
use conveyor_webhooks::fanout::FanoutHandler;
use conveyor_webhooks::intake::Intake;
use conveyor_webhooks::store::WebhookStore;
use conveyor_webhooks::target::TargetPolicy;
use conveyor_workflows::Workflows;
use conveyor_workflows::commands::CommandHandler;
use conveyor_workflows::context::{HostBreakers, RunContext};
use conveyor_workflows::store::WorkflowStore;
use conveyor_workflows::supervisor::Runs;
use conveyor_workflows::triggers::{Scheduler, Triggers};

/// The running system.
pub struct Conveyor {
    pub config: Arc<Config>,
    pub producer: Arc<dyn Producer>,
    pub resources: Resources,
    pub dead_letters: DeadLetterAdmin,
    /// Keys parked behind a dead letter (`processing.on_dead_letter = "park"`).
    pub parked: ParkedKeysAdmin,
    /// Dead-letter replay jobs.
    pub replays: conveyor_actors::replay::Replays,
    pub store: Store,
    /// The outbox backlog (status page).
    pub(crate) identity_store: IdentityStore,
    pub cache: Cache,
    /// Users, tokens, revocation.
    pub identity: Identity,
    /// Loyalty accounts, one actor each.
    pub ledger: Ledger,
    /// Notifications, webhook endpoints and their deliveries.
    pub webhooks: Webhooks,
    /// Workflow definitions and their runs.
    pub workflows: Workflows,
    scheduler: tokio::task::JoinHandle<()>,
    attempt_writer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Ingest's breaker on the log: while open, producers get a 503 at once instead of each
    /// waiting out the produce timeout.
    pub log_breaker: Arc<Breaker>,
    /// Consumer lag of owned input partitions (front-door back-pressure reads it).
    pub lag: Arc<Lag>,
    lag_monitor: tokio::task::JoinHandle<()>,
    pub(crate) started: std::time::Instant,
    root: ActorRef<RootMsg>,
}

/// The keyring (generating the signing secret on first start) and the bootstrap admin.
pub async fn start_identity(
    config: &Config,
    store: &IdentityStore,
    cache: &Cache,
    outbox_wake: Arc<tokio::sync::Notify>,
) -> Result<Identity, Error> {
    let (secret, generated) = conveyor_identity::tokens::resolve_secret(config)?;
    if generated {
        tracing::warn!(
            path = %config.data_dir.join("jwt_secret").display(),
            "no auth.jwt_secret configured; generated one. Mint a token with: conveyor token mint --sub me --roles device,user"
        );
    }
    let keys = Arc::new(TokenKeys::new(&config.auth, &secret)?);
    let topic = config.log.topics.registration.clone();
    let identity = Identity::new(&config.auth, keys, store.clone(), cache.clone(), topic, outbox_wake)?;
    let auth = &config.auth;
    if !auth.bootstrap_admin_email.is_empty()
        && identity.bootstrap_admin(&auth.bootstrap_admin_email, auth.bootstrap_admin_password.expose()).await?
    {
        tracing::info!("bootstrap admin created");
    }
    Ok(identity)
}

/// The workflows facade, the triggers, the scheduler task and the run supervisor's service.
type WorkflowParts = (Workflows, Triggers, tokio::task::JoinHandle<()>, Arc<dyn Service>);

/// The run supervisor (as a service for the tree), the triggers and each daemon's scheduler.
fn start_workflows(
    config: &Config,
    store: &WorkflowStore,
    producer: &Arc<dyn Producer>,
) -> Result<WorkflowParts, Error> {
    let c = &config.workflows;
    let policy = TargetPolicy { allow_loopback: c.allow_loopback, allow_private: c.allow_private };
    let timeout = Duration::from_millis(c.step_timeout_ms);
    let client =
        WebhookClient::build(policy, timeout, c.max_response_bytes, c.max_response_bytes, "Conveyor-Workflows")
            .map_err(|source| Error::WebhookClient { source })?;
    let finished = Arc::new(tokio::sync::Notify::new());
    let produce_timeout = Duration::from_millis(config.log.produce_timeout_ms);
    let ctx = Arc::new(RunContext {
        store: store.clone(),
        client,
        config: c.clone(),
        breakers: HostBreakers::new(c),
        producer: producer.clone(),
        dlq_topic: config.log.topics.events_dlq.clone(),
        commands_topic: config.log.topics.workflows_command.clone(),
        produce_timeout,
        finished: finished.clone(),
    });
    let (runs, service) = Runs::service(ctx);
    let triggers = Triggers::new(store.clone(), runs.clone());
    let ticking = triggers.clone();
    let scheduler = Scheduler::spawn(Duration::from_millis(c.scheduler_tick_ms), move |now| {
        let triggers = ticking.clone();
        async move {
            if let Err(err) = triggers.tick(now).await {
                tracing::warn!(error = %err, "evaluating workflow schedules");
            }
        }
    });
    let workflows = Workflows::new(
        store.clone(),
        producer.clone(),
        c,
        config.log.topics.workflows_command.clone(),
        produce_timeout,
        triggers.clone(),
        runs,
        finished,
    );
    Ok((workflows, triggers, scheduler, Arc::new(service)))
}

impl Conveyor {
    /// Connects the backends, runs migrations, and starts the supervision tree.
    pub async fn start(config: Config) -> Result<Self, Error> {
        let config = Arc::new(config);
        let store = Store::connect(&config).await?;
        store.migrate(crate::migrations::all()).await?;
        let devices_store = DeviceStore::new(store.clone());
        let identity_store =
            IdentityStore::new(store.clone()).with_ledger_faults(config.faults.loyalty_credit_transient_failures);
        let webhook_store = WebhookStore::new(store.clone());
        let workflow_store = WorkflowStore::new(store.clone());
        let cache = Cache::connect(&config.cache, &config.breaker).await?;
        let outbox_wake = Arc::new(tokio::sync::Notify::new());
        let identity = start_identity(&config, &identity_store, &cache, outbox_wake.clone()).await?;
        let log = conveyor_actors::log::open(&config)?;
        let producer = log.producer();
        let dead_letters = DeadLetters {
            producer: producer.clone(),
            topic: config.log.topics.events_dlq.clone(),
            timeout: Duration::from_millis(config.log.produce_timeout_ms),
        };
        let produce_timeout = Duration::from_millis(config.log.produce_timeout_ms);
        let parked_store = ParkedStore { store: store.clone() };
        // `processing.on_dead_letter` of the topic with this logical name.
        let park = |logical: &str| {
            let p = &config.processing;
            (p.on_dead_letter_for(logical) == DeadLetterPolicy::Park).then(|| ParkSpec {
                store: parked_store.clone(),
                max_keys: p.max_parked_keys_per_partition,
                max_records: p.max_parked_records_per_key,
            })
        };
        let directory = Directory::new(webhook_store.clone());
        let domain = DomainEventPublisher::new(
            producer.clone(),
            config.log.topics.notifications.clone(),
            produce_timeout,
            directory.clone(),
        );
        let (attempts, attempt_writer) = AttemptLog::start(
            webhook_store.clone(),
            config.webhooks.attempts_batch_size,
            Duration::from_millis(config.webhooks.attempts_flush_ms),
        );
        let delivery = Arc::new(DeliveryContext {
            store: webhook_store.clone(),
            client: WebhookClient::new(&config.webhooks).map_err(|source| Error::WebhookClient { source })?,
            attempts,
            config: config.webhooks.clone(),
            producer: producer.clone(),
            dlq_topic: config.log.topics.events_dlq.clone(),
            notifications_topic: config.log.topics.notifications.clone(),
            produce_timeout,
            domain: domain.clone(),
            payloads: DeliveryContext::payload_cache(&config.webhooks),
            outcomes: DeliveryContext::outcome_writer(webhook_store.clone()),
            intake: Intake::default(),
        });
        let payloads = delivery.payloads.clone();
        let intake = delivery.intake.clone();
        let (dispatcher, dispatcher_service) = Dispatcher::service(delivery);
        let webhooks = Webhooks::new(
            webhook_store.clone(),
            producer.clone(),
            &config.webhooks,
            config.log.topics.notifications.clone(),
            produce_timeout,
            directory.clone(),
            dispatcher.clone(),
        );
        let (workflows, triggers, scheduler, runs_service) = start_workflows(&config, &workflow_store, &producer)?;
        let fanout = GroupSpec {
            group: config.log.groups.webhooks.clone(),
            topic: config.log.topics.notifications.clone(),
            handler: Arc::new(FanoutHandler {
                store: webhook_store.clone(),
                writer: conveyor_webhooks::fanout::writer(webhook_store.clone(), dispatcher.clone()),
                directory,
                dispatcher,
                intake,
                lease_span: conveyor_webhooks::endpoint_actor::lease_span(&config.webhooks),
                workflows: Some(Arc::new(triggers.clone())),
                payloads,
            }),
            dead_letters: dead_letters.clone(),
            park: park("notifications"),
        };
        let commands = GroupSpec {
            group: config.log.groups.workflows.clone(),
            topic: config.log.topics.workflows_command.clone(),
            handler: Arc::new(CommandHandler {
                store: workflow_store.clone(),
                triggers,
                runs: workflows.runs_handle(),
            }),
            dead_letters: dead_letters.clone(),
            park: park("workflows_command"),
        };
        let devices = GroupSpec {
            group: config.log.groups.events.clone(),
            topic: config.log.topics.events_input.clone(),
            handler: Arc::new(DeviceHandler::new(
                devices_store.clone(),
                cache.clone(),
                Duration::from_secs(config.cache.resource_ttl_secs),
                Some(Arc::new(domain.clone())),
                &config.processing,
            )),
            dead_letters: dead_letters.clone(),
            park: park("events_input"),
        };
        // The dead-letter topic is consumed like any other: into the admin index.
        let index = GroupSpec {
            group: config.dlq.index_group.clone(),
            topic: config.log.topics.events_dlq.clone(),
            handler: Arc::new(DeadLetterIndexer { store: store.clone() }),
            dead_letters: DeadLetters {
                topic: format!("{}.unindexable", config.log.topics.events_dlq),
                ..dead_letters.clone()
            },
            park: park("events_dlq"),
        };
        let (ledger, ledger_service) = Ledger::service(conveyor_identity::loyalty::LedgerArgs {
            store: identity_store.clone(),
            idle: Duration::from_secs(config.loyalty.account_idle_secs),
        });
        let outbox = conveyor_identity::outbox::service(OutboxArgs {
            store: identity_store.clone(),
            producer: producer.clone(),
            policy: RetryPolicy::from(&config.retry),
            poll: Duration::from_millis(config.outbox.poll_interval_ms),
            batch: config.outbox.batch_size,
            produce_timeout: Duration::from_millis(config.log.produce_timeout_ms),
            wake: outbox_wake,
        });
        // The registration saga: loyalty reacts to `user.registered`, identity to `loyalty.*`.
        let loyalty = GroupSpec {
            group: config.log.groups.loyalty.clone(),
            topic: config.log.topics.registration.clone(),
            handler: Arc::new(LoyaltyHandler {
                ledger: ledger.clone(),
                store: identity_store.clone(),
                welcome_bonus: config.loyalty.welcome_bonus,
                loyalty_topic: config.log.topics.loyalty.clone(),
                fail_permanently: config.faults.loyalty_credit_permanent,
            }),
            dead_letters: dead_letters.clone(),
            park: park("registration"),
        };
        let identity_saga = GroupSpec {
            group: config.log.groups.identity.clone(),
            topic: config.log.topics.loyalty.clone(),
            handler: Arc::new(IdentitySagaHandler {
                store: identity_store.clone(),
                registration_topic: config.log.topics.registration.clone(),
                domain: Some(Arc::new(domain)),
            }),
            dead_letters: dead_letters.clone(),
            park: park("loyalty"),
        };
        // `[retention]`'s rules, each from the crate that owns its tables.
        let r = &config.retention;
        let owned = [
            conveyor_webhooks::retention::rules(&webhook_store, r, config.webhooks.dedup_window_secs),
            conveyor_workflows::retention::rules(&workflow_store, r),
            conveyor_identity::retention::rules(&identity_store, r),
        ];
        let rules = Rules::new(r, &store, owned.into_iter().flatten().collect());
        let (_retention, retention_service) =
            conveyor_actors::retention::service(conveyor_actors::retention::RetentionArgs {
                store: store.clone(),
                log: log.clone(),
                rules,
            });
        let admin = DeadLetterAdmin {
            store: store.clone(),
            producer: producer.clone(),
            max_replays: config.dlq.max_replays,
            timeout: Duration::from_millis(config.log.produce_timeout_ms),
        };
        let d = &config.dlq;
        let (replays, replay_service) = conveyor_actors::replay::service(
            admin.clone(),
            conveyor_actors::replay::ReplaySettings {
                default_rate: d.replay_default_rate,
                page_size: d.replay_page_size,
                poll: Duration::from_secs(1),
            },
        );
        let args = RootArgs {
            log: log.clone(),
            services: vec![
                Arc::new(ledger_service),
                Arc::new(outbox),
                Arc::new(dispatcher_service),
                runs_service,
                Arc::new(retention_service),
                Arc::new(replay_service),
            ],
            groups: vec![devices, loyalty, identity_saga, fanout, commands, index],
            policy: RetryPolicy::from(&config.retry),
            processing: config.processing.clone(),
        };
        let (root, _) = Actor::spawn(Some("root".into()), RootSupervisor, args).await.map_err(|e| Error::Actor {
            actor: "root".into(),
            op: "spawn",
            source: Box::new(e),
        })?;
        let resources = Resources {
            store: devices_store.clone(),
            cache: cache.clone(),
            ttl: Duration::from_secs(config.cache.resource_ttl_secs),
        };
        let log_breaker = Breaker::new("log", config.breaker.clone());
        let lag = Arc::new(Lag::default());
        let t = &config.log.topics;
        let topics = vec![
            t.events_input.clone(),
            t.registration.clone(),
            t.loyalty.clone(),
            t.notifications.clone(),
            t.workflows_command.clone(),
            t.events_dlq.clone(),
        ];
        let lag_monitor = lag.spawn_monitor(log.clone(), root.clone(), topics, t.events_input.clone());
        let conveyor = Conveyor {
            config,
            parked: ParkedKeysAdmin {
                parked: parked_store,
                dead_letters: admin.clone(),
                producer: producer.clone(),
                timeout: produce_timeout,
            },
            producer,
            resources,
            dead_letters: admin,
            replays,
            store,
            identity_store,
            cache,
            identity,
            ledger,
            webhooks,
            workflows,
            scheduler,
            attempt_writer: std::sync::Mutex::new(Some(attempt_writer)),
            log_breaker,
            lag,
            lag_monitor,
            started: std::time::Instant::now(),
            root,
        };
        register_breaker_gauge(conveyor.breakers());
        Ok(conveyor)
    }

    /// Each long-lived service with its state and restarts.
    pub async fn services(&self) -> Vec<ServiceStatus> {
        ractor::call!(self.root, |reply| RootMsg::Services { reply }).unwrap_or_default()
    }

    /// Test-only fault hook: makes the named service panic (`faults.allow_panic_injection`).
    pub async fn inject_panic(&self, subsystem: &str) -> Result<(), Error> {
        if !self.config.faults.allow_panic_injection {
            return Err(Error::NotFound { what: "fault hook" });
        }
        let subsystem = subsystem.to_owned();
        ractor::call!(self.root, |reply| RootMsg::InjectPanic { subsystem, reply }).map_err(|e| Error::Actor {
            actor: "root".into(),
            op: "inject a panic",
            source: Box::new(e),
        })?
    }

    /// Each consumer group with its partitions.
    pub async fn groups(&self) -> Vec<conveyor_actors::root::GroupStatus> {
        ractor::call!(self.root, |reply| RootMsg::Groups { reply }).unwrap_or_default()
    }

    /// Every downstream's circuit breaker.
    pub fn breakers(&self) -> Vec<Arc<Breaker>> {
        vec![self.store.breaker().clone(), self.cache.breaker().clone(), self.log_breaker.clone()]
    }

    /// Leaves the consumer groups after draining and committing, hands back the run and
    /// delivery leases this daemon holds, stops the services, then the tree.
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        self.lag_monitor.abort();
        self.scheduler.abort();
        let left = grace.as_millis() as u64;
        let groups = ractor::call_t!(self.root, |reply| RootMsg::LeaveGroups { reply }, left);
        if let Err(err) = groups {
            tracing::error!(error = %err, "consumer groups did not drain within the grace period");
        }
        // Requests in flight are cut off and runs stopped where they stand; their leases are
        // handed back so the next daemon resumes them at once.
        let within = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_secs(2));
        tokio::join!(self.webhooks.hand_back_leases(within), self.workflows.hand_back_leases(within));
        let left = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_secs(2));
        let stop = ractor::call_t!(self.root, |reply| RootMsg::Shutdown { reply }, left.as_millis() as u64);
        if let Err(err) = stop {
            tracing::error!(error = %err, "services did not stop within the grace period");
        }
        // The root's state holds the services' arguments: once it is gone, the attempt log's
        // last sender is too, and the writer flushes what the endpoint actors recorded.
        let _ = self.root.stop_and_wait(Some("shutdown".into()), Some(left)).await;
        let writer = self.attempt_writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            let flush = Duration::from_millis(self.config.webhooks.attempts_flush_ms) * 4;
            let _ = tokio::time::timeout(flush.max(Duration::from_secs(1)), writer).await;
        }
    }
}

/// `conveyor.breaker.state` (0 closed, 1 half-open, 2 open) per downstream, read at scrape time.
fn register_breaker_gauge(breakers: Vec<Arc<Breaker>>) {
    let _ = opentelemetry::global::meter("conveyor.actors")
        .i64_observable_gauge(conveyor_actors::metrics::BREAKER_STATE)
        .with_description("Circuit breaker state per downstream: 0 closed, 1 half-open, 2 open")
        .with_callback(move |o| {
            for b in &breakers {
                o.observe(
                    b.state().level(),
                    &[conveyor_actors::metrics::kv(conveyor_actors::metrics::DOWNSTREAM, b.name())],
                );
            }
        })
        .build();
}

impl Conveyor {
    /// Checks each backend within [`CHECK_TIMEOUT`], concurrently, and asks the root
    /// supervisor which of its children are down.
    pub async fn readiness(&self) -> Readiness {
        let (checks, services, groups) = tokio::join!(self.backend_checks(), self.services(), self.groups());
        Readiness::new(checks, &services, &groups)
    }

    /// Each backend checked within [`CHECK_TIMEOUT`], concurrently.
    pub async fn backend_checks(&self) -> Vec<(Component, Result<(), Error>)> {
        let (log, store, cache) = tokio::join!(
            bounded(Component::Log, self.producer.ping(CHECK_TIMEOUT)),
            bounded(Component::Store, self.store.ping()),
            bounded(Component::Cache, self.cache.ping()),
        );
        vec![log, store, cache]
    }
}

impl Conveyor {
    /// The facades the HTTP front end calls.
    pub fn facades(self: &Arc<Self>) -> Facades {
        Facades {
            config: self.config.clone(),
            events: Ingest::new(
                self.producer.clone(),
                self.config.log.topics.events_input.clone(),
                Duration::from_millis(self.config.log.produce_timeout_ms),
                self.log_breaker.clone(),
            ),
            resources: self.resources.clone(),
            dead_letters: self.dead_letters.clone(),
            parked: self.parked.clone(),
            replays: self.replays.clone(),
            identity: self.identity.clone(),
            ledger: self.ledger.clone(),
            loyalty: LoyaltyReads::new(self.identity_store.clone()),
            webhooks: self.webhooks.clone(),
            workflows: self.workflows.clone(),
            idempotency: IdempotencyKeys::new(
                self.store.clone(),
                Duration::from_secs(self.config.ingest.idempotency_window_secs),
                // A claim outlives any request (they time out), so it lapses only when its
                // request died with the process.
                Duration::from_millis(self.config.http.request_timeout_ms).saturating_mul(2),
            ),
            lag: self.lag.clone(),
            ops: self.clone(),
        }
    }
}

#[async_trait::async_trait]
impl Operations for Conveyor {
    async fn readiness(&self) -> Readiness {
        Conveyor::readiness(self).await
    }

    async fn status(&self) -> conveyor_actors::status::SystemStatus {
        Conveyor::status(self).await
    }

    async fn inject_panic(&self, subsystem: &str) -> Result<(), Error> {
        Conveyor::inject_panic(self, subsystem).await
    }

    async fn stuck_keys(&self, topic: Option<&str>, limit: usize) -> conveyor_actors::status::StuckKeyList {
        Conveyor::stuck_keys(self, topic, limit).await
    }

    fn breakers(&self) -> Vec<Arc<Breaker>> {
        Conveyor::breakers(self)
    }
}
