use crate::ap_check::{ApRecord, FinalState};
use crate::ap_workload::{key_name, ApClient, AP_BUCKET, AP_REPLICAS};
use crate::config::{Fault, SimConfig, Workload};
use crate::durability::{ApPromises, Promises};
use crate::invariants::{RaftInvariants, Violation};
use crate::workload::{Client, ClientAction, StaleRead};
use capkv_check::Event as HistoryEvent;
use capkv_core::{LogIndex, NodeId, Rng, StableHasher, Term};
use capkv_dynamo::Object;
use capkv_node::{Node, NodeConfig, NodeEvent, NodeReady, PeerMessage, Request, Response};
use capkv_raft::{MessageBody, Role};
use capkv_storage::{MemStorage, Storage};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

/// Virtual time in microseconds.
pub type Micros = u64;

const MS: Micros = 1_000;
/// Most inputs buffered for a busy or paused node; more are dropped (a full
/// socket buffer).
const INBOX_MAX: usize = 10_000;
/// Most stale reads kept for the checker; later ones are counted and not
/// checked (a 20 s run records a few hundred).
const STALE_READS_MAX: usize = 1_000_000;

/// What happens at one instant of virtual time.
#[derive(Debug)]
enum Action {
    /// A node's timer, tagged with the life it was set in.
    Tick(NodeId, u64),
    /// The load phase ended: heal every fault for the quiet period.
    HealAll,
    Deliver {
        from: NodeId,
        to: NodeId,
        message: PeerMessage,
    },
    ClientRequest {
        node: NodeId,
        client: usize,
        request_id: u64,
        request: Request,
    },
    ClientResponse {
        client: usize,
        request_id: u64,
        response: Response,
        /// The answering node's life (restarts count) when it answered.
        life: u64,
    },
    ClientWake(usize),
    TurnDone(NodeId),
    NemesisStart,
    Heal(HealKind),
    Restart(NodeId),
    Resume(NodeId),
    /// Kill a node (the churn nemesis aims this at fresh leaders).
    Crash(NodeId),
}

#[derive(Debug, Clone, Copy)]
enum HealKind {
    Partition,
    Network,
    Skew,
    Churn,
    /// Ends figure-8 run number `.0` if it is still going (its time bound).
    Figure8(u64),
}

/// The transfer nemesis, armed: when `leader` sends its TimeoutNow (before
/// `until`), its inbound links fail for `deaf_for`.
#[derive(Debug, Clone, Copy)]
struct Handoff {
    leader: NodeId,
    until: Micros,
    deaf_for: Micros,
}

/// One run of the figure-8 nemesis (see [`Fault::Figure8`]).
#[derive(Debug, Clone)]
struct Figure8 {
    /// Its number, so that a stale time bound cannot end a later run.
    run: u64,
    /// The first leader and the minority cut off with it.
    minority: Vec<NodeId>,
    /// The first leader's term.
    first_term: Term,
    stage: Figure8Stage,
}

#[derive(Debug, Clone, Copy)]
enum Figure8Stage {
    /// Waiting for the majority side to elect a leader of a later term.
    SecondLeader,
    /// `second` won and was isolated at once; waiting for the rest to elect
    /// a leader of a later term.
    ThirdLeader { second: NodeId, second_term: Term },
    /// `third` leads `third_term`; waiting for its first commit beyond
    /// `commit_at_election`.
    ThirdCommit {
        second: NodeId,
        third: NodeId,
        third_term: Term,
        commit_at_election: LogIndex,
    },
    /// The last partition is in place until the run's time bound.
    Done,
}

/// What one turn's events showed the nemesis.
#[derive(Debug, Default, Clone, Copy)]
struct TurnSeen {
    /// The node became leader of this term.
    leader_of: Option<Term>,
    /// The highest index the node applied.
    applied_max: Option<LogIndex>,
}

/// A queue entry: small, so that heap operations move 24 bytes rather than
/// whole messages. The action itself waits in a slab.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Scheduled {
    at: Micros,
    seq: u64,
    slot: usize,
}

/// The pending events, earliest first (ties in the order they were
/// scheduled). Most pending events are client deadlines, all set the same
/// time ahead and so due in the order they were set: they wait in a FIFO
/// beside the heap, which keeps the heap a few dozen entries deep.
#[derive(Default)]
struct EventQueue {
    heap: BinaryHeap<Reverse<Scheduled>>,
    /// Entries in increasing order.
    in_order: VecDeque<Scheduled>,
}

impl EventQueue {
    fn push(&mut self, entry: Scheduled) {
        self.heap.push(Reverse(entry));
    }

    /// Like `push`, for an entry that is probably due after every entry
    /// pushed this way so far.
    fn push_probably_in_order(&mut self, entry: Scheduled) {
        if self.in_order.back().is_some_and(|last| *last > entry) {
            self.heap.push(Reverse(entry));
        } else {
            self.in_order.push_back(entry);
        }
    }

    fn pop(&mut self) -> Option<Scheduled> {
        let from_fifo = match (self.heap.peek(), self.in_order.front()) {
            (Some(Reverse(first)), Some(fifo_first)) => fifo_first < first,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        if from_fifo {
            self.in_order.pop_front()
        } else {
            self.heap.pop().map(|Reverse(entry)| entry)
        }
    }
}

/// An input waiting for a node that is busy (its turn's fsync is in flight)
/// or paused.
#[derive(Debug)]
enum Input {
    Tick,
    Message(NodeId, PeerMessage),
    Request {
        client: usize,
        request_id: u64,
        request: Request,
    },
    /// An operator asks the node to hand leadership to this node.
    Transfer(NodeId),
}

/// A cp or an ap client.
enum SimClient {
    /// Boxed: a cp client carries its stale-read bookkeeping, and the
    /// clients vector should not pay that for every ap client.
    Cp(Box<Client>),
    Ap(ApClient),
}

impl SimClient {
    fn sent(&mut self, request_id: u64, deadline: Micros, committed: LogIndex) {
        match self {
            SimClient::Cp(client) => client.sent(request_id, deadline, committed),
            SimClient::Ap(client) => client.sent(request_id, deadline),
        }
    }

    fn on_wake(&mut self, now: Micros, accepting: bool) -> ClientAction {
        match self {
            SimClient::Cp(client) => client.on_wake(now, accepting),
            SimClient::Ap(client) => client.on_wake(now, accepting),
        }
    }

    fn on_response(
        &mut self,
        now: Micros,
        request_id: u64,
        response: Response,
        life: u64,
    ) -> ClientAction {
        match self {
            SimClient::Cp(client) => client.on_response(now, request_id, response, life),
            SimClient::Ap(client) => client.on_response(now, request_id, response),
        }
    }
}

/// One simulated process with its disk.
struct SimNode {
    id: NodeId,
    config: NodeConfig,
    /// `None` while crashed.
    node: Option<Node>,
    storage: MemStorage,
    paused: bool,
    /// Outputs of the turn whose sync is in flight.
    in_flight: Option<NodeReady>,
    /// The emptied vectors of the last finished turn, for the next one.
    spare: NodeReady,
    inbox: VecDeque<Input>,
    /// Which client sent each request, to route answers.
    request_clients: BTreeMap<u64, usize>,
    /// Tick period, changed by the skew fault (clock drift).
    tick_period: Micros,
    /// Where this node's wall clock stands against simulated time, in ms
    /// (the skew fault spreads them by seconds; the ap engine's hybrid
    /// logical clocks must cope).
    clock_offset_ms: u64,
    /// Tombstones reaped by the engine's earlier lives (its count starts
    /// from zero at every restart).
    tombstones_reaped_earlier: u64,
    /// The engine's reaped count (this life) at the end of its last turn.
    tombstones_reaped_seen: u64,
    /// Each ap key's object at the end of the last turn, when a tombstone:
    /// what a reap in a later turn removed.
    tombstones_held: BTreeMap<String, Object>,
    /// Each ap key's last tombstone this node reaped: the ap checkers count
    /// a replica that reaped a key as holding that tombstone.
    tombstones_reaped_last: BTreeMap<String, Object>,
    /// Restarts count: ticks scheduled by an earlier life are ignored.
    incarnation: u64,
    /// What its released messages revealed of its durable state, checked
    /// when it restarts after a crash.
    promises: Promises,
    /// What its ap acknowledgements promised about its objects, checked
    /// likewise.
    ap_promises: ApPromises,
}

/// Network conditions in force.
#[derive(Clone, Debug, Default)]
struct NetworkFaults {
    loss: f64,
    duplicate: f64,
    reorder: f64,
}

/// The result of one run.
#[derive(Debug)]
pub struct SimReport {
    /// The run's config.
    pub config: SimConfig,
    /// Simulated time at the end, in milliseconds.
    pub simulated_ms: u64,
    /// Events processed.
    pub events: u64,
    /// Operations that completed ok.
    pub ops_ok: u64,
    /// Operations that definitely failed.
    pub ops_fail: u64,
    /// Operations with unknown outcome.
    pub ops_info: u64,
    /// The Raft safety checker's verdict.
    pub raft_violation: Option<Violation>,
    /// The linearizability checker's verdict (`Ok(description)` or the
    /// failure).
    pub linearizability: Result<String, String>,
    /// The ap checkers' verdict, for ap workloads.
    pub ap: Option<Result<String, String>>,
    /// The ap clients' operations, for ap workloads.
    pub ap_history: Vec<ApRecord>,
    /// Tombstones the ap engines reaped (engine rule 6), summed over nodes
    /// and restarts: shows the reaping path and the durability check's
    /// exemption for it ran.
    pub tombstones_reaped: u64,
    /// The stale-read checker's verdict, for cp workloads.
    pub stale_reads: Option<Result<String, String>>,
    /// Stale reads completed (they stay out of the history and out of
    /// `ops_ok`, `ops_fail` and `ops_info`).
    pub ops_stale: u64,
    /// After the quiet period: every replica equal and a leader present.
    pub convergence: Result<(), String>,
    /// Hash of every event processed: same seed, same hash.
    pub trace_hash: u64,
    /// The client history, in the `capkv check` format.
    pub history: Vec<HistoryEvent>,
    /// Human-readable timeline (when asked for).
    pub timeline: Vec<String>,
}

impl SimReport {
    /// True when every checker passed.
    pub fn passed(&self) -> bool {
        self.raft_violation.is_none()
            && self.linearizability.is_ok()
            && self.convergence.is_ok()
            && self.ap.as_ref().is_none_or(Result::is_ok)
            && self.stale_reads.as_ref().is_none_or(Result::is_ok)
    }
}

/// The skew fault sets each node's wall clock this many milliseconds (at
/// most, exclusive) ahead of simulated time, so two clocks differ by less.
const SKEW_CLOCK_OFFSET_MS_MAX: u64 = 6_000;

/// Hints live this long in the simulator: above the nemesis's longest
/// single fault (3 s) plus the time a restarted or reconnected replica takes
/// to answer pings again, so a hint normally outlives its replica's outage,
/// but short enough that hints also expire within a run.
const SIM_HINT_TTL_MS: u64 = 5_000;

/// How long an ap run's quiet period goes on after a tombstone confirmed
/// when the load ends is due: time for the confirmation itself (a write's
/// last acknowledgement) and for a tick to reap it on every replica.
const QUIET_AFTER_GRACE_MS: u64 = 2_000;

/// Gives the ap engine lifetimes short enough that tombstones are reaped
/// and hints expire within a simulated run (the defaults, hours, never
/// fire in 25 s), so engine rule 6 and the durability check's exemption
/// for reaped keys are exercised by every sweep.
///
/// The drift bound must hold for the simulated clocks, because rule 6's
/// safety rests on it: a replica refuses writes older than `hint_ttl_ms +
/// max_drift_ms` on its own clock, which keeps out every write older than
/// the tombstone only if no two clocks differ by more than `max_drift_ms`.
/// Without the skew fault every wall clock is simulated time (the engine
/// default, 500 ms, holds); with it, clocks differ by up to
/// [`SKEW_CLOCK_OFFSET_MS_MAX`], so that is the bound. (The skew fault's
/// tick rates change only how often a node ticks, not its wall clock.) The
/// grace is the least `DynamoConfig` accepts plus half a second, so reaping
/// starts as early in a run as the rule allows.
fn short_ap_lifetimes(dynamo: &mut capkv_node::DynamoConfig, config: &SimConfig) {
    if config.faults.contains(&Fault::Skew) {
        dynamo.max_drift_ms = SKEW_CLOCK_OFFSET_MS_MAX;
    }
    dynamo.hint_ttl_ms = SIM_HINT_TTL_MS;
    dynamo.tombstone_grace_ms = dynamo.hint_ttl_ms + 2 * dynamo.max_drift_ms + 500;
}

/// Records which tombstones the node's turn reaped (a reap removes the
/// object the previous turn ended with: it must still have the digest it
/// was confirmed with, and merges only grow an object) and tells the
/// durability check when it notes promises (`crashes`), then records the
/// tombstones the node holds now among `keys`.
fn note_reaped_tombstones(sim_node: &mut SimNode, keys: &[String], crashes: bool) {
    let Some(node) = sim_node.node.as_ref() else {
        return;
    };
    let dynamo = node.dynamo();
    let reaped = dynamo.stats().tombstones_reaped;
    if reaped > sim_node.tombstones_reaped_seen {
        sim_node.tombstones_reaped_seen = reaped;
        let held = std::mem::take(&mut sim_node.tombstones_held);
        for (key, tombstone) in held {
            if dynamo.object(AP_BUCKET, &key).is_none() {
                if crashes {
                    sim_node.ap_promises.reaped(AP_BUCKET, &key);
                }
                sim_node.tombstones_reaped_last.insert(key, tombstone);
            }
        }
    }
    for key in keys {
        match dynamo.object(AP_BUCKET, key) {
            Some(object) if object.is_tombstone() => {
                if sim_node.tombstones_held.get(key) != Some(object) {
                    sim_node.tombstones_held.insert(key.clone(), object.clone());
                }
            }
            _ => {
                sim_node.tombstones_held.remove(key);
            }
        }
    }
}

/// A deterministic simulation of a whole cluster plus clients.
pub struct Simulation {
    config: SimConfig,
    now: Micros,
    queue: EventQueue,
    /// Actions by slot; `None` once taken. Freed slots are reused.
    actions: Vec<Option<Action>>,
    free_slots: Vec<usize>,
    seq: u64,
    rng: Rng,
    nodes: Vec<SimNode>,
    clients: Vec<SimClient>,
    ap_records: Vec<ApRecord>,
    /// Directed links that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// When the last in-order message on each directed link (`from` index
    /// times the cluster size plus `to` index) is delivered.
    link_last_delivery: Vec<Micros>,
    network: NetworkFaults,
    /// While set, new leaders are killed soon after they win.
    churn: bool,
    /// The transfer nemesis waiting for a TimeoutNow, when armed.
    handoff: Option<Handoff>,
    /// The figure-8 nemesis, while it runs.
    figure8: Option<Figure8>,
    /// Figure-8 runs started so far.
    figure8_runs: u64,
    invariants: RaftInvariants,
    /// The ap keys' names, built once: every ap turn looks them up.
    ap_keys: Vec<String>,
    /// Whether any node can crash (the crash and churn faults), and so
    /// whether what nodes reveal must be noted for the durability check.
    crashes: bool,
    violation: Option<Violation>,
    history: Vec<HistoryEvent>,
    /// The cp clients' stale reads, at most [`STALE_READS_MAX`].
    stale_reads: Vec<StaleRead>,
    /// Stale reads beyond the bound, not checked.
    stale_reads_unrecorded: u64,
    timeline: Vec<String>,
    trace: StableHasher,
    events: u64,
    next_request_id: u64,
}

impl Simulation {
    /// Builds the cluster described by `config`.
    pub fn new(config: SimConfig) -> Simulation {
        let mut rng = Rng::new(config.seed);
        let voters: Vec<NodeId> = (1..=config.nodes).map(NodeId).collect();
        let shapes = match rng.range(0, 3) {
            0 => (1, 2),
            1 => (4, 8),
            _ => (256, 64),
        };
        let nodes = voters
            .iter()
            .map(|id| {
                let mut node_config = NodeConfig::new(*id, voters.clone(), rng.next_u64());
                node_config.raft.election_timeout_ticks = 15;
                node_config.raft.heartbeat_interval_ticks = 3;
                node_config.raft.bugs = config.bugs;
                // Small messages and windows on some seeds, so that entries
                // of one leader arrive over many round trips.
                node_config.raft.append_entries_max = shapes.0;
                node_config.raft.inflight_messages_max = shapes.1;
                node_config.snapshot_interval_entries = config.snapshot_interval_entries;
                // ap timings scaled to the simulated cluster's (short)
                // client timeouts and runs.
                node_config.dynamo.request_timeout_ms = config.client_timeout_ms / 2;
                node_config.dynamo.ping_interval_ms = 100;
                node_config.dynamo.peer_down_after_ms = 500;
                node_config.dynamo.hint_retry_ms = 200;
                node_config.dynamo.ae_interval_ms = if config.anti_entropy { 200 } else { 0 };
                node_config.dynamo.merkle_leaves = 64;
                node_config.dynamo.bugs = config.ap_bugs;
                short_ap_lifetimes(&mut node_config.dynamo, &config);
                let storage = MemStorage::new();
                let node = Node::restore(node_config.clone(), &storage)
                    .expect("a fresh node starts from empty storage");
                SimNode {
                    id: *id,
                    config: node_config,
                    node: Some(node),
                    storage,
                    paused: false,
                    in_flight: None,
                    spare: NodeReady::default(),
                    promises: Promises::default(),
                    ap_promises: ApPromises::default(),
                    inbox: VecDeque::new(),
                    request_clients: BTreeMap::new(),
                    tick_period: config.tick_ms * MS,
                    incarnation: 0,
                    clock_offset_ms: 0,
                    tombstones_reaped_earlier: 0,
                    tombstones_reaped_seen: 0,
                    tombstones_held: BTreeMap::new(),
                    tombstones_reaped_last: BTreeMap::new(),
                }
            })
            .collect();
        let clients = (0..config.clients as usize)
            .map(|index| match config.workload {
                Workload::Cp => SimClient::Cp(Box::new(Client::new(
                    index,
                    config.clients,
                    config.keys,
                    config.nodes,
                    config.client_timeout_ms * MS,
                    rng.fork(),
                ))),
                Workload::Ap(conflict) => SimClient::Ap(ApClient::new(
                    index,
                    config.keys,
                    config.nodes,
                    conflict,
                    config.client_timeout_ms * MS,
                    rng.fork(),
                )),
            })
            .collect();
        let mut sim = Simulation {
            now: 0,
            queue: EventQueue::default(),
            actions: Vec::new(),
            free_slots: Vec::new(),
            seq: 0,
            rng,
            nodes,
            clients,
            ap_records: Vec::new(),
            cut: BTreeSet::new(),
            link_last_delivery: vec![0; (config.nodes * config.nodes) as usize],
            network: NetworkFaults::default(),
            churn: false,
            handoff: None,
            figure8: None,
            figure8_runs: 0,
            invariants: RaftInvariants::new(),
            ap_keys: (0..config.keys).map(key_name).collect(),
            crashes: config
                .faults
                .iter()
                .any(|fault| matches!(fault, Fault::Crash | Fault::Churn)),
            violation: None,
            history: Vec::new(),
            stale_reads: Vec::new(),
            stale_reads_unrecorded: 0,
            timeline: Vec::new(),
            trace: StableHasher::new(),
            events: 0,
            next_request_id: 1,
            config,
        };
        if sim.config.faults.contains(&Fault::Skew) {
            for index in 0..sim.nodes.len() {
                sim.nodes[index].clock_offset_ms = sim.rng.range(0, SKEW_CLOCK_OFFSET_MS_MAX);
            }
        }
        for index in 0..sim.nodes.len() {
            // Stagger the first ticks so nodes do not move in lockstep.
            let offset = sim.rng.range(0, sim.config.tick_ms * MS);
            let id = sim.nodes[index].id;
            sim.schedule(offset, Action::Tick(id, 0));
        }
        for client in 0..sim.clients.len() {
            let offset = sim.rng.range(0, 50 * MS);
            sim.schedule(offset, Action::ClientWake(client));
        }
        let load_end = sim.load_end();
        sim.schedule(load_end, Action::HealAll);
        if !sim.config.faults.is_empty() {
            let first = sim.rng.range(500 * MS, 2_000 * MS);
            sim.schedule(first, Action::NemesisStart);
        }
        sim
    }

    fn schedule(&mut self, delay: Micros, action: Action) {
        let entry = self.entry(delay, action);
        self.queue.push(entry);
    }

    /// Schedules a client's deadline: every client waits the same time, so
    /// deadlines fall due in the order they are set.
    fn schedule_deadline(&mut self, delay: Micros, action: Action) {
        let entry = self.entry(delay, action);
        self.queue.push_probably_in_order(entry);
    }

    /// Stores `action` and returns its queue entry.
    fn entry(&mut self, delay: Micros, action: Action) -> Scheduled {
        self.seq += 1;
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.actions[slot] = Some(action);
                slot
            }
            None => {
                self.actions.push(Some(action));
                self.actions.len() - 1
            }
        };
        Scheduled {
            at: self.now + delay,
            seq: self.seq,
            slot,
        }
    }

    fn note(&mut self, text: String) {
        if self.config.timeline {
            self.timeline
                .push(format!("{:>9.3}s  {text}", self.now as f64 / 1e6));
        }
    }

    fn node_index(&self, id: NodeId) -> usize {
        (id.0 - 1) as usize
    }

    fn load_end(&self) -> Micros {
        self.config.duration_ms * MS
    }

    /// The quiet period. For ap workloads it outlasts the tombstone grace:
    /// under load every key is written many times a second, so a tombstone
    /// lives out its grace only when it is a key's last write, and then it
    /// must be reaped before the run ends for rule 6 to be exercised.
    fn quiet_ms(&self) -> u64 {
        let grace_ms = self
            .nodes
            .iter()
            .map(|sim_node| sim_node.config.dynamo.tombstone_grace_ms)
            .max()
            .unwrap_or(0);
        match self.config.workload {
            Workload::Cp => self.config.quiet_ms,
            Workload::Ap(_) => self.config.quiet_ms.max(grace_ms + QUIET_AFTER_GRACE_MS),
        }
    }

    /// Runs to the end and checks everything.
    pub fn run(mut self) -> SimReport {
        let end = self.load_end() + self.quiet_ms() * MS;
        while let Some(next) = self.queue.pop() {
            if next.at > end || self.violation.is_some() {
                break;
            }
            if self.events >= self.config.events_max {
                self.violation = Some(Violation {
                    property: "progress",
                    detail: format!("event bound {} reached", self.config.events_max),
                });
                break;
            }
            self.now = next.at;
            self.events += 1;
            self.trace.write_u64(next.at);
            self.trace.write_u64(next.seq);
            let action = self.actions[next.slot]
                .take()
                .expect("every queued slot holds an action");
            self.free_slots.push(next.slot);
            self.handle(action);
        }
        self.finish()
    }

    fn handle(&mut self, action: Action) {
        match action {
            Action::Tick(id, incarnation) => self.on_tick(id, incarnation),
            Action::HealAll => {
                self.note("load ends: every fault healed, quiet period".into());
                self.heal_everything();
            }
            Action::Deliver { from, to, message } => {
                if self.cut.contains(&(from, to)) {
                    return; // the connection broke with it in flight
                }
                self.trace.write_u64(to.0);
                self.trace.write(message.name().as_bytes());
                self.input(to, Input::Message(from, message));
            }
            Action::ClientRequest {
                node,
                client,
                request_id,
                request,
            } => self.input(
                node,
                Input::Request {
                    client,
                    request_id,
                    request,
                },
            ),
            Action::ClientResponse {
                client,
                request_id,
                response,
                life,
            } => {
                self.trace.write_u64(request_id);
                let now = self.now;
                let action = self.clients[client].on_response(now, request_id, response, life);
                self.client_act(client, action);
            }
            Action::ClientWake(client) => {
                let now = self.now;
                let accepting = now < self.load_end();
                let action = self.clients[client].on_wake(now, accepting);
                self.client_act(client, action);
            }
            Action::TurnDone(id) => self.on_turn_done(id),
            Action::NemesisStart => self.nemesis_start(),
            Action::Heal(kind) => self.heal(kind),
            Action::Restart(id) => self.restart(id),
            Action::Crash(id) => {
                self.crash(id);
                let downtime = self.rng.range(50 * MS, 500 * MS);
                self.schedule(downtime, Action::Restart(id));
            }
            Action::Resume(id) => {
                let index = self.node_index(id);
                self.nodes[index].paused = false;
                self.note(format!("{id} resumed"));
                self.run_turn(index);
            }
        }
    }

    // ----- nodes -----

    fn on_tick(&mut self, id: NodeId, incarnation: u64) {
        let index = self.node_index(id);
        let sim_node = &mut self.nodes[index];
        if sim_node.incarnation != incarnation {
            return; // a timer of an earlier life
        }
        if sim_node.node.is_none() {
            return; // crashed: its timers died with it
        }
        let period = sim_node.tick_period;
        // A paused process sees no timer. A busy one (its turn's fsync in
        // flight) runs the tick after the turn, like the real event loop.
        if !sim_node.paused && sim_node.inbox.len() < INBOX_MAX {
            sim_node.inbox.push_back(Input::Tick);
        }
        self.schedule(period, Action::Tick(id, incarnation));
        self.run_turn(index);
    }

    fn input(&mut self, id: NodeId, input: Input) {
        let index = self.node_index(id);
        let sim_node = &mut self.nodes[index];
        if sim_node.node.is_none() {
            return; // crashed: connections refused
        }
        if sim_node.inbox.len() >= INBOX_MAX {
            return;
        }
        sim_node.inbox.push_back(input);
        self.run_turn(index);
    }

    /// Feeds the inbox to an idle node, takes its ready, writes the batch and
    /// schedules the sync. Outputs stay held until the sync completes.
    fn run_turn(&mut self, index: usize) {
        // A node's wall clock: simulated time plus its offset (tick rates
        // drift too under the skew fault).
        let now_ms = self.now / MS + self.nodes[index].clock_offset_ms;
        let crashes = self.crashes;
        let sim_node = &mut self.nodes[index];
        if sim_node.paused || sim_node.in_flight.is_some() {
            return;
        }
        let Some(node) = sim_node.node.as_mut() else {
            return;
        };
        if crashes {
            sim_node.ap_promises.turn_starts();
        }
        while let Some(input) = sim_node.inbox.pop_front() {
            match input {
                Input::Tick => node.tick(now_ms),
                Input::Message(from, message) => {
                    if crashes {
                        sim_node.ap_promises.on_message(from, &message);
                    }
                    node.handle_peer_message(from, message);
                }
                Input::Request {
                    client,
                    request_id,
                    request,
                } => {
                    if crashes {
                        sim_node.ap_promises.on_request(request_id, &request);
                    }
                    sim_node.request_clients.insert(request_id, client);
                    node.handle_request(request_id, request);
                }
                Input::Transfer(target) => {
                    // The leader may have changed while this waited: an
                    // operator's transfer then simply fails.
                    let _ = node.transfer_leader(target);
                }
            }
        }
        if matches!(self.config.workload, Workload::Ap(_)) {
            note_reaped_tombstones(sim_node, &self.ap_keys, crashes);
        }
        let Some(node) = sim_node.node.as_mut() else {
            return;
        };
        if !node.has_ready() {
            return;
        }
        let mut ready = std::mem::take(&mut sim_node.spare);
        node.ready_into(&mut ready);
        let id = sim_node.id;
        if !ready.batch.is_empty() {
            let batch = std::mem::take(&mut ready.batch);
            if let Err(error) = sim_node.storage.write(batch) {
                panic!("simulated storage cannot fail: {error}");
            }
        }
        // A batch written without a sync stays at the mercy of a crash
        // until a later turn syncs.
        if ready.must_sync {
            // The turn's events are checked when its sync completes: what a
            // crash wipes out before then never happened to anyone outside.
            // An fsync takes 0.2 to 2 ms.
            if self.config.send_before_sync {
                // The deliberate bug: the outputs leave now, and the node
                // waits for the sync with nothing left to release.
                let after = self.rng.range(5, 50);
                self.release(index, ready, after);
                self.nodes[index].in_flight = Some(NodeReady::default());
            } else {
                self.nodes[index].in_flight = Some(ready);
            }
            let delay = self.rng.range(200, 2_000);
            self.schedule(delay, Action::TurnDone(id));
        } else {
            // A turn without an fsync takes a few microseconds: its outputs
            // leave that much later, without an event of its own.
            let delay = self.rng.range(5, 50);
            self.release(index, ready, delay);
        }
    }

    fn check_events(&mut self, index: usize, ready: &NodeReady) {
        let id = self.nodes[index].id;
        let mut seen = TurnSeen::default();
        self.check_each_event(index, ready, &mut seen);
        if seen.leader_of.is_some() && self.churn && self.rng.chance(0.7) {
            let delay = self.rng.range(MS, 30 * MS);
            self.schedule(delay, Action::Crash(id));
        }
        if self.figure8.is_some() && self.violation.is_none() {
            self.figure8_observe(index, seen);
        }
    }

    fn check_each_event(&mut self, index: usize, ready: &NodeReady, seen: &mut TurnSeen) {
        let id = self.nodes[index].id;
        for event in &ready.events {
            let Some(node) = self.nodes[index].node.as_ref() else {
                return;
            };
            let raft = node.raft();
            let result = match event {
                NodeEvent::RoleChanged {
                    role, term, leader, ..
                } => {
                    self.trace.write_u64(term.0);
                    if self.config.timeline {
                        let leader = leader.map_or("none".to_string(), |l| l.to_string());
                        self.timeline.push(format!(
                            "{:>9.3}s  {id} is {} in {term} (leader {leader})",
                            self.now as f64 / 1e6,
                            role.as_str()
                        ));
                    }
                    if *role == Role::Leader {
                        seen.leader_of = Some(*term);
                        self.invariants.on_leader(id, raft)
                    } else {
                        Ok(())
                    }
                }
                NodeEvent::LogAppended { first, last, .. } => {
                    self.invariants.on_append(id, raft, *first, *last)
                }
                NodeEvent::Applied {
                    index: entry_index,
                    term,
                    data_hash,
                    ..
                } => {
                    seen.applied_max = Some(*entry_index);
                    self.invariants
                        .on_apply(id, *entry_index, *term, *data_hash)
                }
                NodeEvent::SnapshotInstalled {
                    index: snapshot_index,
                    ..
                } => {
                    if self.config.timeline {
                        self.timeline.push(format!(
                            "{:>9.3}s  {id} installed a snapshot at {snapshot_index}",
                            self.now as f64 / 1e6
                        ));
                    }
                    Ok(())
                }
            };
            if let Err(violation) = result {
                self.violated(violation);
                return;
            }
        }
    }

    /// Ends the run on a broken property, with a timeline line for it.
    fn violated(&mut self, violation: Violation) {
        self.note(format!(
            "VIOLATION {}: {}",
            violation.property, violation.detail
        ));
        self.violation = Some(violation);
    }

    fn on_turn_done(&mut self, id: NodeId) {
        let index = self.node_index(id);
        let Some(ready) = self.nodes[index].in_flight.take() else {
            return; // the node crashed while syncing: its outputs died too
        };
        if let Err(error) = self.nodes[index].storage.sync() {
            panic!("simulated storage cannot fail: {error}");
        }
        self.release(index, ready, 0);
        self.run_turn(index);
    }

    /// Checks a finished turn's events and sends its messages and answers,
    /// `after` from now.
    fn release(&mut self, index: usize, mut ready: NodeReady, after: Micros) {
        let id = self.nodes[index].id;
        self.check_events(index, &ready);
        let sim_node = &mut self.nodes[index];
        if let (true, Some(node)) = (self.crashes, &sim_node.node) {
            for (_, message) in &ready.messages {
                if let PeerMessage::Raft(message) = message {
                    sim_node.promises.note(node.raft(), message);
                }
            }
            sim_node.ap_promises.note(node, &ready);
        }
        for (to, message) in ready.messages.drain(..) {
            self.send(id, to, message, after);
        }
        for (request_id, response) in ready.responses.drain(..) {
            let Some(client) = self.nodes[index].request_clients.remove(&request_id) else {
                continue;
            };
            let delay = after + self.rng.range(100, 1_000);
            let life = self.nodes[index].incarnation;
            self.schedule(
                delay,
                Action::ClientResponse {
                    client,
                    request_id,
                    response,
                    life,
                },
            );
        }
        ready.events.clear();
        ready.must_sync = false;
        self.nodes[index].spare = ready;
    }

    /// Puts `message` on the network `after` from now.
    fn send(&mut self, from: NodeId, to: NodeId, message: PeerMessage, after: Micros) {
        if self.handoff.is_some() {
            self.maybe_deafen(from, &message);
        }
        if self.cut.contains(&(from, to)) {
            return;
        }
        if self.rng.chance(self.network.loss) {
            return;
        }
        if self.rng.chance(self.network.duplicate) {
            // A stray second copy (a retransmission): it keeps no order.
            let (delay, _) = self.delivery_delay();
            let delay = after + delay;
            let copy = message.clone();
            self.schedule(
                delay,
                Action::Deliver {
                    from,
                    to,
                    message: copy,
                },
            );
        }
        let (delay, reordered) = self.delivery_delay();
        let mut delay = after + delay;
        if !reordered {
            // A link is one connection, and a connection keeps order: a
            // message never overtakes the one sent before it on its link.
            let link = self.node_index(from) * self.nodes.len() + self.node_index(to);
            let at = (self.now + delay).max(self.link_last_delivery[link]);
            self.link_last_delivery[link] = at;
            delay = at - self.now;
        }
        self.schedule(delay, Action::Deliver { from, to, message });
    }

    /// Network latency of one message, and whether the reorder fault held it
    /// back (it then overtakes nothing's order: later messages pass it).
    fn delivery_delay(&mut self) -> (Micros, bool) {
        let delay = self.rng.range(300, 1_500);
        if self.rng.chance(self.network.reorder) {
            return (delay + self.rng.range(1_000, 30_000), true);
        }
        (delay, false)
    }

    // ----- clients -----

    fn client_act(&mut self, client: usize, action: ClientAction) {
        match action {
            ClientAction::Idle => {}
            ClientAction::Sleep(delay) => self.schedule(delay, Action::ClientWake(client)),
            ClientAction::Send {
                node,
                request,
                timeout,
            } => {
                let request_id = self.next_request_id;
                self.next_request_id += 1;
                let committed = self.invariants.committed_max();
                self.clients[client].sent(request_id, self.now + timeout, committed);
                let delay = self.rng.range(100, 1_000);
                self.schedule(
                    delay,
                    Action::ClientRequest {
                        node,
                        client,
                        request_id,
                        request,
                    },
                );
                self.schedule_deadline(timeout, Action::ClientWake(client));
            }
        }
        match &mut self.clients[client] {
            SimClient::Cp(cp) => {
                cp.drain_history_into(&mut self.history);
                cp.drain_stale_reads_into(&mut self.stale_reads);
                if self.stale_reads.len() > STALE_READS_MAX {
                    let beyond = self.stale_reads.len() - STALE_READS_MAX;
                    self.stale_reads_unrecorded += beyond as u64;
                    self.stale_reads.truncate(STALE_READS_MAX);
                }
            }
            SimClient::Ap(ap) => self.ap_records.extend(ap.take_records()),
        }
    }

    // ----- nemesis -----

    fn nemesis_start(&mut self) {
        let nemesis_end = self.load_end().saturating_sub(1_000 * MS);
        if self.now >= nemesis_end {
            return;
        }
        let faults = self.config.faults.clone();
        let fault = faults[self.rng.range(0, faults.len() as u64) as usize];
        let duration = self.rng.range(300 * MS, 3_000 * MS);
        match fault {
            Fault::Partition => self.partition(duration),
            Fault::Crash => {
                let id = self.victim();
                self.crash(id);
                self.schedule(duration, Action::Restart(id));
            }
            Fault::Pause => {
                let id = self.victim();
                let index = self.node_index(id);
                if self.nodes[index].node.is_some() && !self.nodes[index].paused {
                    self.nodes[index].paused = true;
                    self.note(format!("{id} paused"));
                    self.schedule(duration, Action::Resume(id));
                }
            }
            Fault::Loss => {
                self.network.loss = self.rng.range(5, 40) as f64 / 100.0;
                self.note(format!("message loss {:.0}%", self.network.loss * 100.0));
                self.schedule(duration, Action::Heal(HealKind::Network));
            }
            Fault::Duplicate => {
                self.network.duplicate = self.rng.range(5, 50) as f64 / 100.0;
                self.note(format!(
                    "message duplication {:.0}%",
                    self.network.duplicate * 100.0
                ));
                self.schedule(duration, Action::Heal(HealKind::Network));
            }
            Fault::Reorder => {
                self.network.reorder = self.rng.range(10, 50) as f64 / 100.0;
                self.note(format!(
                    "message reordering {:.0}%",
                    self.network.reorder * 100.0
                ));
                self.schedule(duration, Action::Heal(HealKind::Network));
            }
            Fault::Transfer => self.transfer(duration),
            Fault::Figure8 => self.figure8_start(),
            Fault::Churn => {
                self.churn = true;
                self.note("leader churn: new leaders will be killed".into());
                self.schedule(duration, Action::Heal(HealKind::Churn));
            }
            Fault::Skew => {
                let base = self.config.tick_ms * MS;
                let mut rates = Vec::new();
                for node in &mut self.nodes {
                    // Drift between -50% and +50%.
                    let percent = 50 + self.rng.range(0, 101);
                    node.tick_period = base * percent / 100;
                    rates.push(format!("{}:{}%", node.id, 10_000 / percent.max(1)));
                }
                self.note(format!("clock drift, tick rates {}", rates.join(" ")));
                self.schedule(duration, Action::Heal(HealKind::Skew));
            }
        }
        let gap = self.rng.range(200 * MS, 2_500 * MS);
        self.schedule(gap, Action::NemesisStart);
    }

    fn random_node(&mut self) -> NodeId {
        NodeId(1 + self.rng.range(0, self.config.nodes))
    }

    /// The live leader of the highest term, with its term.
    fn current_leader(&self) -> Option<(NodeId, Term)> {
        self.nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .filter(|n| n.raft().role() == Role::Leader)
            .max_by_key(|n| n.raft().term())
            .map(|n| (n.id(), n.raft().term()))
    }

    /// Half the time the current leader (the node whose loss hurts most),
    /// otherwise any node.
    fn victim(&mut self) -> NodeId {
        let leader = self.current_leader().map(|(id, _)| id);
        match leader {
            Some(id) if self.rng.chance(0.5) => id,
            _ => self.random_node(),
        }
    }

    fn partition(&mut self, duration: Micros) {
        let ids: Vec<NodeId> = (1..=self.config.nodes).map(NodeId).collect();
        if ids.len() < 2 {
            return;
        }
        let mut shuffled = ids.clone();
        for i in (1..shuffled.len()).rev() {
            let j = self.rng.range(0, i as u64 + 1) as usize;
            shuffled.swap(i, j);
        }
        let kind = self.rng.range(0, 4);
        let description = match kind {
            0 => {
                // Majority / minority.
                let split = (ids.len() / 2).max(1);
                let (minority, majority) = shuffled.split_at(split);
                self.cut_between(minority, majority, true);
                format!("partition {} | {}", names(minority), names(majority))
            }
            1 => {
                // One node isolated.
                let (alone, rest) = shuffled.split_at(1);
                self.cut_between(alone, rest, true);
                format!("isolate {}", alone[0])
            }
            2 => {
                // One-way: the first node can send but not hear.
                let (deaf, rest) = shuffled.split_at(1);
                for other in rest {
                    self.cut.insert((*other, deaf[0]));
                }
                format!("one-way: {} hears nobody", deaf[0])
            }
            _ => {
                // Bridge: two sides that only the bridge node connects.
                if ids.len() < 3 {
                    return;
                }
                let bridge = shuffled[0];
                let rest = &shuffled[1..];
                let (left, right) = rest.split_at(rest.len() / 2);
                self.cut_between(left, right, true);
                format!(
                    "bridge {bridge} between {} and {}",
                    names(left),
                    names(right)
                )
            }
        };
        self.note(description);
        self.schedule(duration, Action::Heal(HealKind::Partition));
    }

    /// The transfer nemesis: asks the leader to hand over to a random
    /// follower, and half the time arms [`Simulation::maybe_deafen`].
    fn transfer(&mut self, deaf_for: Micros) {
        let Some((leader, term)) = self.current_leader() else {
            return;
        };
        let followers: Vec<NodeId> = (1..=self.config.nodes)
            .map(NodeId)
            .filter(|id| *id != leader)
            .collect();
        if followers.is_empty() {
            return;
        }
        let target = followers[self.rng.range(0, followers.len() as u64) as usize];
        let deafen = self.rng.chance(0.5);
        if deafen {
            self.handoff = Some(Handoff {
                leader,
                until: self.now + 1_000 * MS,
                deaf_for,
            });
        }
        let deaf_note = if deafen {
            "; it will stop hearing anyone once its TimeoutNow leaves"
        } else {
            ""
        };
        self.note(format!(
            "{leader} (leader of {term}) asked to transfer to {target}{deaf_note}"
        ));
        self.input(leader, Input::Transfer(target));
    }

    /// The armed transfer nemesis strikes as the old leader's TimeoutNow
    /// leaves: every link into it fails, so it never hears the new leader
    /// (or anyone) and believes it leads until CheckQuorum deposes it.
    fn maybe_deafen(&mut self, from: NodeId, message: &PeerMessage) {
        let Some(handoff) = self.handoff else {
            return;
        };
        if self.now > handoff.until {
            self.handoff = None;
            return;
        }
        let is_timeout_now = matches!(
            message,
            PeerMessage::Raft(raft) if matches!(raft.body, MessageBody::TimeoutNow)
        );
        if from != handoff.leader || !is_timeout_now {
            return;
        }
        self.handoff = None;
        for other in (1..=self.config.nodes).map(NodeId) {
            if other != from {
                self.cut.insert((other, from));
            }
        }
        self.note(format!(
            "{from} sent TimeoutNow and now hears nobody (it can still send)"
        ));
        self.schedule(handoff.deaf_for, Action::Heal(HealKind::Partition));
    }

    /// Starts a figure-8 run: the leader is cut off with a minority. The
    /// later stages follow the cluster's elections in
    /// [`Simulation::figure8_observe`].
    fn figure8_start(&mut self) {
        if self.figure8.is_some() || self.config.nodes < 3 {
            return;
        }
        let Some((leader, term)) = self.current_leader() else {
            return;
        };
        let mut others: Vec<NodeId> = (1..=self.config.nodes)
            .map(NodeId)
            .filter(|id| *id != leader)
            .collect();
        for i in (1..others.len()).rev() {
            let j = self.rng.range(0, i as u64 + 1) as usize;
            others.swap(i, j);
        }
        // The largest minority, so that its entries need few more copies to
        // sit on a majority, as in the paper's figure.
        let partners = (self.config.nodes as usize - 1) / 2 - 1;
        let mut minority = vec![leader];
        minority.extend_from_slice(&others[..partners]);
        let majority = others[partners..].to_vec();
        self.cut.clear();
        self.cut_between(&minority, &majority, true);
        self.figure8_runs += 1;
        let run = self.figure8_runs;
        self.figure8 = Some(Figure8 {
            run,
            minority: minority.clone(),
            first_term: term,
            stage: Figure8Stage::SecondLeader,
        });
        self.note(format!(
            "figure 8: {leader} (leader of {term}) cut off with {} from {}",
            names(&minority),
            names(&majority)
        ));
        let bound = self.rng.range(3_000 * MS, 6_000 * MS);
        self.schedule(bound, Action::Heal(HealKind::Figure8(run)));
    }

    /// Moves a figure-8 run on when node `index`'s turn showed what its
    /// stage waits for. Runs before the turn's messages leave, so a new
    /// leader can be isolated before anyone hears from it.
    fn figure8_observe(&mut self, index: usize, seen: TurnSeen) {
        let Some(run) = self.figure8.clone() else {
            return;
        };
        let id = self.nodes[index].id;
        let Some(node) = self.nodes[index].node.as_ref() else {
            return;
        };
        let (role, term, commit) = (
            node.raft().role(),
            node.raft().term(),
            node.raft().commit_index(),
        );
        let next = match run.stage {
            Figure8Stage::SecondLeader => match seen.leader_of {
                Some(won) if won > run.first_term && !run.minority.contains(&id) => {
                    let everyone: Vec<NodeId> = (1..=self.config.nodes)
                        .map(NodeId)
                        .filter(|other| *other != id)
                        .collect();
                    self.cut.clear();
                    self.cut_between(&[id], &everyone, true);
                    self.note(format!(
                        "figure 8: {id} won {won} and is isolated before its first append leaves; {} reconnected",
                        names(&run.minority)
                    ));
                    Figure8Stage::ThirdLeader {
                        second: id,
                        second_term: won,
                    }
                }
                _ => return,
            },
            Figure8Stage::ThirdLeader {
                second,
                second_term,
            } => match seen.leader_of {
                Some(won) if won > second_term && id != second => Figure8Stage::ThirdCommit {
                    second,
                    third: id,
                    third_term: won,
                    commit_at_election: commit,
                },
                _ => return,
            },
            Figure8Stage::ThirdCommit {
                second,
                third,
                third_term,
                commit_at_election,
            } => {
                if id != third {
                    return;
                }
                if role != Role::Leader || term != third_term {
                    Figure8Stage::Done // it lost the lead first: nothing to do
                } else if seen
                    .applied_max
                    .is_some_and(|applied| applied > commit_at_election)
                {
                    let mut side: Vec<NodeId> = run.minority.clone();
                    if !side.contains(&third) {
                        side.push(third);
                    }
                    let rest: Vec<NodeId> = (1..=self.config.nodes)
                        .map(NodeId)
                        .filter(|other| !side.contains(other))
                        .collect();
                    self.cut.clear();
                    self.cut_between(&side, &rest, true);
                    self.note(format!(
                        "figure 8: {third} committed in {third_term}; {} cut off from {}, where {second} is back",
                        names(&side),
                        names(&rest)
                    ));
                    Figure8Stage::Done
                } else {
                    return;
                }
            }
            Figure8Stage::Done => return,
        };
        if let Some(current) = self.figure8.as_mut() {
            current.stage = next;
        }
    }

    fn cut_between(&mut self, a: &[NodeId], b: &[NodeId], both_ways: bool) {
        for x in a {
            for y in b {
                self.cut.insert((*x, *y));
                if both_ways {
                    self.cut.insert((*y, *x));
                }
            }
        }
    }

    fn heal(&mut self, kind: HealKind) {
        match kind {
            HealKind::Partition => {
                // A figure-8 run cannot go on without its partitions.
                self.figure8 = None;
                if !self.cut.is_empty() {
                    self.cut.clear();
                    self.note("partition healed".into());
                }
            }
            HealKind::Figure8(run) => {
                if self.figure8.as_ref().is_some_and(|f| f.run == run) {
                    self.figure8 = None;
                    self.cut.clear();
                    self.note("figure 8: over, partition healed".into());
                }
            }
            HealKind::Network => {
                self.network = NetworkFaults::default();
                self.note("network healed".into());
            }
            HealKind::Churn => {
                self.churn = false;
                self.note("leader churn over".into());
            }
            HealKind::Skew => {
                let base = self.config.tick_ms * MS;
                for node in &mut self.nodes {
                    node.tick_period = base;
                }
                self.note("clocks healed".into());
            }
        }
    }

    fn crash(&mut self, id: NodeId) {
        let index = self.node_index(id);
        let sim_node = &mut self.nodes[index];
        let Some(node) = sim_node.node.take() else {
            return;
        };
        sim_node.tombstones_reaped_earlier += node.dynamo().stats().tombstones_reaped;
        sim_node.tombstones_reaped_seen = 0;
        sim_node.tombstones_held.clear();
        sim_node.in_flight = None;
        sim_node.inbox.clear();
        sim_node.request_clients.clear();
        sim_node.paused = false;
        sim_node.ap_promises.crashed();
        let lost = sim_node.storage.unsynced_batches();
        sim_node.storage.crash();
        sim_node.incarnation += 1;
        self.note(format!("{id} crashed ({lost} unsynced batches lost)"));
    }

    fn restart(&mut self, id: NodeId) {
        let index = self.node_index(id);
        let sim_node = &mut self.nodes[index];
        if sim_node.node.is_some() {
            return;
        }
        match Node::restore(sim_node.config.clone(), &sim_node.storage) {
            Ok(node) => {
                let checked = (sim_node.promises.check(id, node.raft()))
                    .and_then(|()| sim_node.ap_promises.check(id, &node));
                if let Err(violation) = checked {
                    self.violated(violation);
                    return;
                }
                sim_node.node = Some(node);
            }
            Err(error) => {
                self.violation = Some(Violation {
                    property: "recovery",
                    detail: format!("{id} cannot restart from its storage: {error}"),
                });
                return;
            }
        }
        let period = sim_node.tick_period;
        let incarnation = sim_node.incarnation;
        self.note(format!("{id} restarted"));
        self.schedule(period, Action::Tick(id, incarnation));
    }

    // ----- end of run -----

    fn heal_everything(&mut self) {
        self.churn = false;
        self.handoff = None;
        self.figure8 = None;
        self.cut.clear();
        self.network = NetworkFaults::default();
        let base = self.config.tick_ms * MS;
        for index in 0..self.nodes.len() {
            self.nodes[index].tick_period = base;
            if self.nodes[index].paused {
                let id = self.nodes[index].id;
                self.schedule(0, Action::Resume(id));
            }
            if self.nodes[index].node.is_none() {
                let id = self.nodes[index].id;
                self.schedule(0, Action::Restart(id));
            }
        }
    }

    fn finish(mut self) -> SimReport {
        let convergence = self.convergence();
        for client in &mut self.clients {
            match client {
                SimClient::Cp(client) => client.close_open_operations(&mut self.history),
                SimClient::Ap(client) => {
                    client.close_open_operations(self.now);
                    self.ap_records.extend(client.take_records());
                }
            }
        }
        let tombstones_reaped = self.tombstones_reaped();
        let ap = match self.config.workload {
            Workload::Cp => None,
            Workload::Ap(conflict) if self.violation.is_none() => Some(
                crate::ap_check::check(&self.ap_records, &self.ap_final_state(), conflict)
                    .map(|text| format!("{text}, {tombstones_reaped} tombstones reaped")),
            ),
            Workload::Ap(_) => None,
        };
        let stale_reads = match self.config.workload {
            Workload::Cp => Some(self.check_stale_reads()),
            Workload::Ap(_) => None,
        };
        let (ops_ok, ops_fail, ops_info) = match self.config.workload {
            Workload::Cp => crate::workload::count_outcomes(&self.history),
            Workload::Ap(_) => crate::ap_check::count_outcomes(&self.ap_records),
        };
        let linearizability =
            match capkv_check::check_events(&self.history, &capkv_check::Limits::default()) {
                Ok(capkv_check::Verdict::Linearizable { keys, operations }) => Ok(format!(
                    "linearizable ({operations} operations over {keys} keys)"
                )),
                Ok(capkv_check::Verdict::NotLinearizable(violation)) => Err(format!(
                    "not linearizable on key {}: {}",
                    violation.key, violation.explanation
                )),
                Err(error) => Err(format!("history rejected: {error}")),
            };
        SimReport {
            simulated_ms: self.now / MS,
            events: self.events,
            ops_ok,
            ops_fail,
            ops_info,
            raft_violation: self.violation,
            linearizability,
            ap,
            ap_history: std::mem::take(&mut self.ap_records),
            tombstones_reaped,
            stale_reads,
            ops_stale: self.stale_reads.len() as u64 + self.stale_reads_unrecorded,
            convergence,
            trace_hash: self.trace.finish(),
            history: self.history,
            timeline: self.timeline,
            config: self.config,
        }
    }

    /// The stale-read checker's verdict, naming the reads left unchecked
    /// beyond the bound.
    fn check_stale_reads(&self) -> Result<String, String> {
        let verdict = crate::stale_check::check(&self.stale_reads, &self.history, &self.invariants);
        match (verdict, self.stale_reads_unrecorded) {
            (verdict, 0) => verdict,
            (Ok(text), beyond) => Ok(format!("{text}; {beyond} beyond the bound not checked")),
            (Err(text), _) => Err(text),
        }
    }

    /// Tombstones reaped on every node, over all its lives.
    fn tombstones_reaped(&self) -> u64 {
        self.nodes
            .iter()
            .map(|sim_node| {
                let current = sim_node
                    .node
                    .as_ref()
                    .map_or(0, |node| node.dynamo().stats().tombstones_reaped);
                sim_node.tombstones_reaped_earlier + current
            })
            .sum()
    }

    /// The tombstone node `id` last reaped on `key`, if it did.
    fn reaped_tombstone(&self, id: NodeId, key: &str) -> Option<Object> {
        let sim_node = &self.nodes[self.node_index(id)];
        sim_node.tombstones_reaped_last.get(key).cloned()
    }

    /// Every replica's object for every key an ap client touched; a
    /// replica that reaped the key's tombstone (engine rule 6: it was
    /// confirmed on every replica) holds that tombstone, as far as the
    /// checkers are concerned, so a key that vanished without being reaped
    /// still fails them.
    fn ap_final_state(&self) -> FinalState {
        let keys: BTreeSet<&str> = self.ap_records.iter().map(|r| r.key.as_str()).collect();
        let live: Vec<&Node> = self.nodes.iter().filter_map(|n| n.node.as_ref()).collect();
        let mut state = FinalState::new();
        for key in keys {
            let Some(first) = live.first() else {
                break;
            };
            let replicas = first.dynamo().replicas(AP_BUCKET, key, AP_REPLICAS);
            let objects = live
                .iter()
                .filter(|node| replicas.contains(&node.id()))
                .map(|node| {
                    let object = node.dynamo().object(AP_BUCKET, key).cloned();
                    (
                        node.id(),
                        object.or_else(|| self.reaped_tombstone(node.id(), key)),
                    )
                })
                .collect();
            state.insert(key.to_string(), objects);
        }
        state
    }

    fn convergence(&self) -> Result<(), String> {
        if self.violation.is_some() {
            return Ok(());
        }
        let live: Vec<&Node> = self.nodes.iter().filter_map(|n| n.node.as_ref()).collect();
        let leaders: Vec<NodeId> = live
            .iter()
            .filter(|n| n.raft().role() == Role::Leader)
            .map(|n| n.id())
            .collect();
        if leaders.is_empty() {
            return Err("no leader after the quiet period".into());
        }
        let digests: BTreeSet<(u64, u64)> = live
            .iter()
            .map(|n| (n.raft().applied_index().0, n.kv().digest()))
            .collect();
        if digests.len() > 1 {
            let states: Vec<String> = live
                .iter()
                .map(|n| {
                    let raft = n.raft();
                    let progress: Vec<String> = raft
                        .progress()
                        .iter()
                        .map(|(id, p)| format!("{id}:{:?}/m{}/n{}", p.state, p.matched.0, p.next.0))
                        .collect();
                    format!(
                        "{} {} {} commit {} applied {} last {} snap {} [{}]",
                        n.id(),
                        raft.role().as_str(),
                        raft.term(),
                        raft.commit_index(),
                        raft.applied_index(),
                        raft.log().last_index(),
                        raft.log().snapshot_index(),
                        progress.join(" ")
                    )
                })
                .collect();
            return Err(format!(
                "replicas differ after the quiet period: {}",
                states.join("; ")
            ));
        }
        Ok(())
    }
}

/// `[n1, n2]`, for timelines.
fn names(ids: &[NodeId]) -> String {
    let names: Vec<String> = ids.iter().map(NodeId::to_string).collect();
    format!("[{}]", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use capkv_core::GroupId;
    use capkv_raft::Message;

    /// Sends 200 numbered heartbeats from n1 to n2 and returns the numbers
    /// in the order the network delivers them.
    fn delivery_order(reorder: f64) -> Vec<u64> {
        let mut config = SimConfig::new(3, 3);
        config.faults = Vec::new();
        let mut sim = Simulation::new(config);
        sim.queue = EventQueue::default();
        sim.network.reorder = reorder;
        for round in 0..200 {
            let message = Message {
                group: GroupId(0),
                from: NodeId(1),
                to: NodeId(2),
                term: Term(1),
                body: MessageBody::Heartbeat {
                    commit: LogIndex(0),
                    read_round: round,
                },
            };
            sim.send(NodeId(1), NodeId(2), PeerMessage::Raft(message), 0);
            sim.now += 50; // a message every 50 µs, well under the jitter
        }
        let mut order = Vec::new();
        while let Some(next) = sim.queue.pop() {
            if let Some(Action::Deliver {
                message: PeerMessage::Raft(message),
                ..
            }) = sim.actions[next.slot].take()
            {
                if let MessageBody::Heartbeat { read_round, .. } = message.body {
                    order.push(read_round);
                }
            }
        }
        order
    }

    #[test]
    fn a_link_delivers_in_order_unless_the_reorder_fault_is_on() {
        let in_order = delivery_order(0.0);
        assert_eq!(in_order, (0..200).collect::<Vec<u64>>());
        let reordered = delivery_order(0.5);
        assert_eq!(reordered.len(), 200);
        assert!(
            reordered.windows(2).any(|pair| pair[0] > pair[1]),
            "the reorder fault reordered nothing"
        );
    }
}
