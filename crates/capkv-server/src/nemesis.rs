//! Fault injection on a live cluster.
//!
//! A rule cuts, delays or thins one directed node-to-node link. Every node
//! holds the whole rule set and enforces the rules on its own outgoing links
//! in the transport, so a partition needs no cooperation from the traffic it
//! cuts. Rules travel to every node over HTTP (the control path), which the
//! rules never touch; clients are never cut either.

use crate::ServerConfig;
use capkv_core::NodeId;
use capkv_node::PeerMessage;
use capkv_transport::{LinkRule, Transport};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

/// Longest delay a rule may add.
const DELAY_MS_MAX: u64 = 60_000;
/// How long the relay waits for each node.
const RELAY_TIMEOUT: Duration = Duration::from_secs(2);

/// One directed link's rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectedRule {
    /// Sending node.
    pub from: u64,
    /// Receiving node.
    pub to: u64,
    /// Drop everything on the link.
    #[serde(default)]
    pub blocked: bool,
    /// Delay every message by this much.
    #[serde(default)]
    pub delay_ms: u64,
    /// Drop this fraction of messages.
    #[serde(default)]
    pub drop_probability: f64,
}

impl DirectedRule {
    /// Checks the rule names two distinct members and sane values.
    pub fn validate(&self, members: &[u64]) -> Result<(), String> {
        if !members.contains(&self.from) || !members.contains(&self.to) {
            return Err(format!(
                "rule {}->{} names a node that is not a member ({members:?})",
                self.from, self.to
            ));
        }
        if self.from == self.to {
            return Err("a link rule needs two different nodes".into());
        }
        if !(0.0..=1.0).contains(&self.drop_probability) {
            return Err("drop_probability must be between 0 and 1".into());
        }
        if self.delay_ms > DELAY_MS_MAX {
            return Err(format!("delay_ms must be at most {DELAY_MS_MAX}"));
        }
        Ok(())
    }

    fn link_rule(&self) -> LinkRule {
        LinkRule {
            blocked: self.blocked,
            delay_ms: self.delay_ms,
            drop_probability: self.drop_probability,
        }
    }
}

/// `POST /v1/nemesis/partition`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionRequest {
    /// Every member in exactly one group; links between groups are cut.
    pub groups: Vec<Vec<u64>>,
}

/// `POST /v1/nemesis/apply` (node to node).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// The rules.
    pub rules: Vec<DirectedRule>,
    /// Replace every rule in force (partition, heal) or add to them (links).
    pub replace: bool,
}

/// The rules that cut every link between different groups.
pub fn partition_rules(groups: &[Vec<u64>], members: &[u64]) -> Result<Vec<DirectedRule>, String> {
    let mut seen = BTreeSet::new();
    for group in groups {
        if group.is_empty() {
            return Err("a partition group may not be empty".into());
        }
        for id in group {
            if !members.contains(id) {
                return Err(format!("node {id} is not a member ({members:?})"));
            }
            if !seen.insert(*id) {
                return Err(format!("node {id} is in more than one group"));
            }
        }
    }
    if seen.len() != members.len() {
        let missing: Vec<u64> = members
            .iter()
            .filter(|m| !seen.contains(m))
            .copied()
            .collect();
        return Err(format!(
            "every node must be in exactly one group; missing {missing:?}"
        ));
    }
    let mut rules = Vec::new();
    for (index, group) in groups.iter().enumerate() {
        for (other_index, other) in groups.iter().enumerate() {
            if index == other_index {
                continue;
            }
            for from in group {
                for to in other {
                    rules.push(DirectedRule {
                        from: *from,
                        to: *to,
                        blocked: true,
                        delay_ms: 0,
                        drop_probability: 0.0,
                    });
                }
            }
        }
    }
    Ok(rules)
}

/// The rules in force on this node, and how to relay new ones.
pub struct Nemesis {
    rules: Mutex<BTreeMap<(u64, u64), DirectedRule>>,
    client: reqwest::Client,
}

impl Default for Nemesis {
    fn default() -> Self {
        Nemesis::new()
    }
}

impl Nemesis {
    /// No rules in force.
    pub fn new() -> Nemesis {
        Nemesis {
            rules: Mutex::new(BTreeMap::new()),
            client: reqwest::Client::new(),
        }
    }

    /// Applies rules locally: records them and sets this node's outgoing
    /// links in the transport.
    pub fn apply(&self, transport: &Transport<PeerMessage>, me: NodeId, apply: ApplyRequest) {
        let Ok(mut rules) = self.rules.lock() else {
            return;
        };
        if apply.replace {
            rules.clear();
        }
        for rule in apply.rules {
            rules.insert((rule.from, rule.to), rule);
        }
        transport.clear_link_rules();
        for rule in rules.values().filter(|rule| rule.from == me.0) {
            transport.set_link_rule(NodeId(rule.to), rule.link_rule());
        }
        tracing::warn!(node = me.0, rules = rules.len(), "nemesis rules changed");
    }

    /// `{"rules": [...]}`.
    pub fn describe(&self) -> Value {
        let rules: Vec<DirectedRule> = self
            .rules
            .lock()
            .map(|rules| rules.values().cloned().collect())
            .unwrap_or_default();
        json!({ "rules": rules })
    }

    /// Sends `apply` to every member (this one directly) and reports which
    /// nodes acknowledged and which did not, with why.
    pub async fn relay(
        &self,
        config: &ServerConfig,
        transport: &Transport<PeerMessage>,
        apply: ApplyRequest,
    ) -> (Vec<u64>, Vec<Value>) {
        let body = match serde_json::to_vec(&apply) {
            Ok(body) => body,
            Err(error) => {
                return (
                    Vec::new(),
                    vec![json!({"node": 0, "reason": error.to_string()})],
                )
            }
        };
        let mut applied = Vec::new();
        let mut failed = Vec::new();
        let mut pending = tokio::task::JoinSet::new();
        for (id, address) in &config.members {
            if *id == config.id {
                continue;
            }
            let Some(http) = address.http else {
                failed.push(
                    json!({"node": id.0, "reason": "its HTTP address is unknown (--peer-http)"}),
                );
                continue;
            };
            let request = self
                .client
                .post(format!("http://{http}/v1/nemesis/apply"))
                .bearer_auth(config.admin_token.clone().unwrap_or_default())
                .header("content-type", "application/json")
                .body(body.clone())
                .timeout(RELAY_TIMEOUT);
            let id = id.0;
            pending.spawn(async move {
                let outcome = match request.send().await {
                    Ok(response) if response.status().is_success() => Ok(()),
                    Ok(response) => Err(format!("answered {}", response.status())),
                    Err(error) => Err(format!("unreachable: {error}")),
                };
                (id, outcome)
            });
        }
        self.apply(transport, config.id, apply);
        applied.push(config.id.0);
        while let Some(joined) = pending.join_next().await {
            match joined {
                Ok((id, Ok(()))) => applied.push(id),
                Ok((id, Err(reason))) => failed.push(json!({"node": id, "reason": reason})),
                Err(error) => failed.push(json!({"node": 0, "reason": error.to_string()})),
            }
        }
        applied.sort_unstable();
        (applied, failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_cuts_every_link_between_groups_both_ways() {
        let rules = partition_rules(&[vec![1], vec![2, 3]], &[1, 2, 3]).unwrap();
        let links: BTreeSet<(u64, u64)> = rules.iter().map(|r| (r.from, r.to)).collect();
        assert_eq!(links, BTreeSet::from([(1, 2), (1, 3), (2, 1), (3, 1)]));
    }

    #[test]
    fn partition_requires_every_node_exactly_once() {
        assert!(partition_rules(&[vec![1], vec![2]], &[1, 2, 3]).is_err());
        assert!(partition_rules(&[vec![1, 2], vec![2, 3]], &[1, 2, 3]).is_err());
        assert!(partition_rules(&[vec![1], vec![2, 9]], &[1, 2, 3]).is_err());
        assert!(partition_rules(&[vec![], vec![1, 2, 3]], &[1, 2, 3]).is_err());
    }

    #[test]
    fn rules_are_validated() {
        let mut rule = DirectedRule {
            from: 1,
            to: 2,
            blocked: false,
            delay_ms: 150,
            drop_probability: 0.0,
        };
        assert!(rule.validate(&[1, 2, 3]).is_ok());
        rule.drop_probability = 1.5;
        assert!(rule.validate(&[1, 2, 3]).is_err());
        rule.drop_probability = 0.0;
        rule.to = 1;
        assert!(rule.validate(&[1, 2, 3]).is_err());
    }
}
