use capkv_node::{Conflict, DynamoBugs};
use capkv_raft::DeliberateBugs;
use std::fmt;

/// What the simulated clients do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Workload {
    /// read/write/cas/delete on a cp bucket, checked for linearizability.
    #[default]
    Cp,
    /// put/get/delete at every level on an ap bucket with this conflict
    /// mode, checked by the ap checkers (convergence, no lost write, quorum
    /// overlap, sessions, no resurrection, lww winner).
    Ap(Conflict),
}

impl Workload {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Cp => "cp",
            Workload::Ap(Conflict::Siblings) => "ap",
            Workload::Ap(Conflict::Lww) => "ap-lww",
        }
    }

    /// Parses `cp`, `ap` (siblings) or `ap-lww`.
    pub fn parse(text: &str) -> Result<Workload, String> {
        match text {
            "cp" => Ok(Workload::Cp),
            "ap" | "ap-siblings" => Ok(Workload::Ap(Conflict::Siblings)),
            "ap-lww" => Ok(Workload::Ap(Conflict::Lww)),
            other => Err(format!(
                "unknown --workload '{other}' (known: cp, ap, ap-lww)"
            )),
        }
    }
}

/// One kind of fault the nemesis may inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Network partitions: majority/minority, isolated node, one-way, bridge.
    Partition,
    /// Node crash (unsynced writes lost) and restart.
    Crash,
    /// Process pause (like SIGSTOP) and resume.
    Pause,
    /// Message loss.
    Loss,
    /// Message duplication.
    Duplicate,
    /// Message reordering: large random extra delays that let later
    /// messages on the same link overtake (without it, a link keeps order).
    Reorder,
    /// Clock drift: nodes tick at different rates.
    Skew,
    /// Leader churn: for a while, every new leader is killed within a few
    /// milliseconds of winning and restarted soon after (Jepsen's
    /// kill-the-leader nemesis, sped up).
    Churn,
    /// Leadership transfer (thesis §3.10) to a random follower. Half the
    /// time the old leader stops hearing anyone the moment its TimeoutNow
    /// leaves, so it goes on believing it leads (it can still send) until
    /// CheckQuorum deposes it, while the new leader serves writes: the
    /// window in which a deposed leader could serve a stale read.
    Transfer,
    /// The Raft paper's figure 8 as a schedule of partitions: the leader is
    /// cut off with a minority (clients keep appending to it), the next
    /// leader is isolated the moment it wins (before its first append
    /// leaves), the first side is reconnected and elects again, and that
    /// leader is cut off with the minority right after its first commit of
    /// the term, while the isolated second leader comes back.
    Figure8,
}

impl Fault {
    /// Every fault kind.
    pub const ALL: [Fault; 10] = [
        Fault::Partition,
        Fault::Crash,
        Fault::Pause,
        Fault::Loss,
        Fault::Duplicate,
        Fault::Reorder,
        Fault::Skew,
        Fault::Churn,
        Fault::Transfer,
        Fault::Figure8,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Partition => "partition",
            Fault::Crash => "crash",
            Fault::Pause => "pause",
            Fault::Loss => "loss",
            Fault::Duplicate => "dup",
            Fault::Reorder => "reorder",
            Fault::Skew => "skew",
            Fault::Churn => "churn",
            Fault::Transfer => "transfer",
            Fault::Figure8 => "figure8",
        }
    }

    /// Parses a comma-separated list (`all` and `none` allowed).
    pub fn parse_list(text: &str) -> Result<Vec<Fault>, String> {
        let mut faults = Vec::new();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "all" => faults.extend(Fault::ALL),
                "none" => {}
                _ => match Fault::ALL.iter().find(|f| f.name() == word) {
                    Some(fault) => faults.push(*fault),
                    None => {
                        return Err(format!(
                            "unknown fault '{word}' (known: all, none, {})",
                            Fault::ALL.map(Fault::name).join(", ")
                        ))
                    }
                },
            }
        }
        faults.sort();
        faults.dedup();
        Ok(faults)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything one simulated run depends on. Same config, same run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed of every random choice.
    pub seed: u64,
    /// Cluster size.
    pub nodes: u64,
    /// Faults the nemesis may inject.
    pub faults: Vec<Fault>,
    /// Simulated time during which clients issue operations and faults
    /// happen, in milliseconds. A quiet period follows.
    pub duration_ms: u64,
    /// Quiet period after every fault is healed, in milliseconds, before the
    /// convergence checks (ap runs stretch it past the tombstone grace, so
    /// that reaping happens within the run).
    pub quiet_ms: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Keys the clients use.
    pub keys: u64,
    /// Virtual milliseconds per Raft tick.
    pub tick_ms: u64,
    /// A client gives up on an operation after this long.
    pub client_timeout_ms: u64,
    /// Snapshot every this many applied entries (small, to exercise
    /// InstallSnapshot).
    pub snapshot_interval_entries: u64,
    /// Deliberately broken Raft, to prove the checkers catch it.
    pub bugs: DeliberateBugs,
    /// What the clients do.
    pub workload: Workload,
    /// Deliberately broken ap engine, to prove the ap checkers catch it.
    pub ap_bugs: DynamoBugs,
    /// Deliberately broken driver: a node's messages and answers leave as
    /// soon as its turn's batch is written, before the fsync completes
    /// (step 2 of the Raft output contract broken), so a crash in between
    /// loses votes and entries others were told about.
    pub send_before_sync: bool,
    /// Background anti-entropy between ap replicas (off shows what hints
    /// and read repair alone achieve).
    pub anti_entropy: bool,
    /// Record a human-readable timeline.
    pub timeline: bool,
    /// Hard bound on processed events: a livelock ends the run as a failure
    /// instead of hanging.
    pub events_max: u64,
}

impl SimConfig {
    /// Defaults: `nodes` nodes, all faults, 20 s of load.
    pub fn new(seed: u64, nodes: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            faults: Fault::ALL.to_vec(),
            duration_ms: 20_000,
            quiet_ms: 5_000,
            clients: 5,
            keys: 5,
            tick_ms: 10,
            client_timeout_ms: 1_000,
            snapshot_interval_entries: 200,
            bugs: DeliberateBugs::default(),
            workload: Workload::Cp,
            ap_bugs: DynamoBugs::default(),
            send_before_sync: false,
            anti_entropy: true,
            timeline: false,
            events_max: 50_000_000,
        }
    }

    /// Rejects configurations that cannot run.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=9).contains(&self.nodes) {
            return Err(format!("--nodes must be 1..=9, got {}", self.nodes));
        }
        if !(1..=64).contains(&self.clients) {
            return Err(format!("clients must be 1..=64, got {}", self.clients));
        }
        if !(1..=1000).contains(&self.keys) {
            return Err(format!("keys must be 1..=1000, got {}", self.keys));
        }
        if self.duration_ms == 0 || self.duration_ms > 3_600_000 {
            return Err("--duration must be between 1 ms and 1 hour".into());
        }
        if self.tick_ms == 0 {
            return Err("tick must be at least 1 ms".into());
        }
        Ok(())
    }

    /// The command line that replays this run.
    pub fn replay_command(&self) -> String {
        let faults = if self.faults.is_empty() {
            "none".to_string()
        } else {
            self.faults
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut command = format!(
            "capkv sim --seed {} --nodes {} --faults {} --duration {}ms",
            self.seed, self.nodes, faults, self.duration_ms
        );
        if self.bugs.vote_ignores_log {
            command.push_str(" --bug vote-ignores-log");
        }
        if self.bugs.commit_counts_old_terms {
            command.push_str(" --bug commit-counts-old-terms");
        }
        if self.bugs.read_skips_quorum {
            command.push_str(" --bug read-skips-quorum");
        }
        if self.bugs.forward_answers_before_apply {
            command.push_str(" --bug forward-answers-before-apply");
        }
        if self.workload != Workload::Cp {
            command.push_str(&format!(" --workload {}", self.workload.name()));
        }
        if self.ap_bugs.read_repair_skips_merge {
            command.push_str(" --bug read-repair-skips-merge");
        }
        if self.ap_bugs.drop_hints {
            command.push_str(" --bug drop-hints");
        }
        if self.ap_bugs.ack_before_sync {
            command.push_str(" --bug ack-before-sync");
        }
        if self.send_before_sync {
            command.push_str(" --bug send-before-sync");
        }
        if !self.anti_entropy {
            command.push_str(" --no-anti-entropy");
        }
        command
    }
}
