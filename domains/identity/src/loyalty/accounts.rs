//! One actor per loyalty account: every change to an account goes through its actor, so
//! operations on one account run one at a time while accounts run concurrently. The
//! [`LedgerSupervisor`] spawns account actors on demand and retires idle ones.
//!
//! Retiring cannot lose a message: an account actor that has been idle reports the number
//! of operations it has received; the supervisor retires it only if that equals the number
//! it forwarded, i.e. nothing is queued or on its way.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::views::TransactionView;
use crate::metrics::metrics;
use crate::states::{LedgerKind, LedgerReason};
use crate::store::IdentityStore;
use crate::store::loyalty::{LedgerOp, LedgerOutcome};
use crate::store::sagas::outbox;
use conveyor_actors::Error;
use conveyor_actors::metrics::{OPERATION, OUTCOME, kv};
use conveyor_actors::supervision::{ActorService, Children, Slot};

/// How long a caller waits for an account's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Spawns account actors on demand and retires idle ones; a service of the root supervisor.
pub struct LedgerSupervisor;

/// What the ledger starts with.
#[derive(Clone)]
pub struct LedgerArgs {
    pub store: IdentityStore,
    /// An account actor with no work for this long is retired.
    pub idle: Duration,
}

/// The live account actors.
pub struct LedgerState {
    args: LedgerArgs,
    /// Live account actors and how many operations each has been forwarded.
    accounts: Children<AccountMsg, u64>,
}

/// Everything the ledger is told.
pub enum LedgerMsg {
    /// Applies `op` (and writes `announce` to the outbox with it) on the account's actor.
    Apply { op: LedgerOp, announce: Option<Box<outbox::Model>>, reply: RpcReplyPort<Result<LedgerOutcome, Error>> },
    /// An account actor has received `received` operations and has been idle since.
    Idle { user_id: String, received: u64 },
    /// How many account actors are alive (for status and tests).
    Count { reply: RpcReplyPort<usize> },
    /// Test-only fault hook ([`conveyor_actors::supervision::Service::inject_panic`]).
    InjectPanic,
}

impl Actor for LedgerSupervisor {
    type Msg = LedgerMsg;
    type State = LedgerState;
    type Arguments = LedgerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<LedgerMsg>,
        args: LedgerArgs,
    ) -> Result<LedgerState, ActorProcessingErr> {
        Ok(LedgerState { args, accounts: Children::new("account") })
    }

    async fn handle(
        &self,
        myself: ActorRef<LedgerMsg>,
        msg: LedgerMsg,
        state: &mut LedgerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LedgerMsg::Apply { op, announce, reply } => {
                let user_id = op.user_id.clone();
                let args = || {
                    let store = state.args.store.clone();
                    let args = AccountArgs {
                        user_id: user_id.clone(),
                        store,
                        supervisor: myself.clone(),
                        idle: state.args.idle,
                    };
                    (AccountActor, args, 0)
                };
                let (actor, forwarded) = match state.accounts.get_or_spawn(&user_id, myself.get_cell(), args).await {
                    Ok(child) => child,
                    Err(err) => {
                        let _ = reply.send(Err(err));
                        return Ok(());
                    }
                };
                *forwarded += 1;
                if let Err(e) = actor.cast(AccountMsg::Apply { op, announce, reply }) {
                    // The actor died between its last message and this one; the caller
                    // gets an error and the next operation starts a fresh actor.
                    tracing::warn!(error = %e, "account actor unreachable");
                    state.accounts.remove(&user_id);
                }
            }
            LedgerMsg::Idle { user_id, received } => {
                if let Some((actor, forwarded)) = state.accounts.get(&user_id)
                    && *forwarded == received
                {
                    let _ = actor.cast(AccountMsg::Retire);
                    state.accounts.remove(&user_id);
                }
            }
            LedgerMsg::Count { reply } => {
                let _ = reply.send(state.accounts.len());
            }
            LedgerMsg::InjectPanic => panic!("injected fault in the ledger"),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<LedgerMsg>,
        event: SupervisionEvent,
        state: &mut LedgerState,
    ) -> Result<(), ActorProcessingErr> {
        // A failed account actor is forgotten; the next operation on it spawns a new one.
        // The supervisor itself keeps running (the default would stop it too).
        state.accounts.on_event(&event);
        Ok(())
    }
}

pub struct AccountActor;

pub struct AccountArgs {
    user_id: String,
    store: IdentityStore,
    supervisor: ActorRef<LedgerMsg>,
    idle: Duration,
}

pub struct AccountState {
    args: AccountArgs,
    received: u64,
}

pub enum AccountMsg {
    /// Applies one operation; the answer goes straight to the caller.
    Apply { op: LedgerOp, announce: Option<Box<outbox::Model>>, reply: RpcReplyPort<Result<LedgerOutcome, Error>> },
    /// Sent to itself `idle` after an operation: still at `received` → ask to retire.
    Tick { received: u64 },
    /// The supervisor has forgotten this actor; stop.
    Retire,
}

impl Actor for AccountActor {
    type Msg = AccountMsg;
    type State = AccountState;
    type Arguments = AccountArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<AccountMsg>,
        args: AccountArgs,
    ) -> Result<AccountState, ActorProcessingErr> {
        Ok(AccountState { args, received: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<AccountMsg>,
        msg: AccountMsg,
        state: &mut AccountState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AccountMsg::Apply { op, announce, reply } => {
                state.received += 1;
                let outcome = state.args.store.apply_ledger(&op, announce.map(|b| *b)).await;
                let _ = reply.send(outcome);
                let received = state.received;
                myself.send_after(state.args.idle, move || AccountMsg::Tick { received });
            }
            AccountMsg::Tick { received } if received == state.received => {
                let _ = state.args.supervisor.cast(LedgerMsg::Idle { user_id: state.args.user_id.clone(), received });
            }
            AccountMsg::Tick { .. } => {}
            AccountMsg::Retire => myself.stop(None),
        }
        Ok(())
    }
}

/// The typed handle callers use; it follows the ledger across restarts.
#[derive(Clone)]
pub struct Ledger {
    slot: Slot<LedgerMsg>,
}

impl Ledger {
    /// The handle and the service the root supervisor runs it as.
    pub fn service(args: LedgerArgs) -> (Self, ActorService<LedgerSupervisor>) {
        let slot = Slot::new("ledger");
        let service = ActorService::new(
            "LedgerSupervisor",
            slot.clone(),
            || LedgerMsg::InjectPanic,
            move || (LedgerSupervisor, args.clone()),
        );
        (Ledger { slot }, service)
    }

    /// Starts the ledger outside the supervision tree (unit tests).
    pub async fn start(store: IdentityStore, idle: Duration) -> Result<(Self, tokio::task::JoinHandle<()>), Error> {
        let (actor, handle) = Actor::spawn(None, LedgerSupervisor, LedgerArgs { store, idle })
            .await
            .map_err(|e| Error::Actor { actor: "ledger".into(), op: "spawn", source: Box::new(e) })?;
        Ok((Ledger { slot: Slot::holding("ledger", actor) }, handle))
    }

    /// Applies `op` on its account's actor.
    pub async fn apply(&self, op: LedgerOp, announce: Option<outbox::Model>) -> Result<LedgerOutcome, Error> {
        let operation = match (op.reason, op.kind) {
            (LedgerReason::WelcomeBonus, _) => "welcome",
            (LedgerReason::Reversal, _) => "reversal",
            (LedgerReason::Manual, LedgerKind::Deposit) => "deposit",
            (LedgerReason::Manual, LedgerKind::Withdrawal) => "withdraw",
        };
        let outcome = self.call(op, announce).await;
        if let Ok(outcome) = &outcome {
            let label = match outcome {
                LedgerOutcome::Applied(_) => "applied",
                LedgerOutcome::Replayed(_) => "replayed",
                LedgerOutcome::Insufficient { .. } => "refused",
            };
            metrics().loyalty_operations.add(1, &[kv(OPERATION, operation), kv(OUTCOME, label)]);
        }
        outcome
    }

    /// Applies an operation made through the API, answering the entry as a view.
    pub async fn operate(&self, op: LedgerOp) -> Result<LedgerOutcome<TransactionView>, Error> {
        Ok(self.apply(op, None).await?.map(|t| TransactionView::from(&t)))
    }

    async fn call(&self, op: LedgerOp, announce: Option<outbox::Model>) -> Result<LedgerOutcome, Error> {
        let announce = announce.map(Box::new);
        let actor = self.slot.get()?;
        let result = actor.call(|reply| LedgerMsg::Apply { op, announce, reply }, Some(CALL_TIMEOUT)).await;
        match result {
            Ok(ractor::rpc::CallResult::Success(outcome)) => outcome,
            Ok(ractor::rpc::CallResult::Timeout) => Err(Error::Timeout { op: "ledger operation", after: CALL_TIMEOUT }),
            Ok(ractor::rpc::CallResult::SenderError) => Err(Error::ShuttingDown),
            Err(e) => Err(Error::Actor { actor: "ledger".into(), op: "apply", source: Box::new(e) }),
        }
    }

    /// Live account actors.
    pub async fn live_accounts(&self) -> usize {
        let Ok(actor) = self.slot.get() else { return 0 };
        match actor.call(|reply| LedgerMsg::Count { reply }, Some(CALL_TIMEOUT)).await {
            Ok(ractor::rpc::CallResult::Success(n)) => n,
            _ => 0,
        }
    }

    /// Stops a ledger started with [`Ledger::start`]; the tree stops its own.
    pub fn stop(&self) {
        if let Ok(actor) = self.slot.get() {
            actor.stop(None);
        }
    }
}
