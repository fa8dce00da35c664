//! `capkv demo --scenario NAME`: a scripted walk through one behaviour on
//! the demo's real cluster, narrated step by step.
//!
//! Each step says what it does, what capkv promises, and what happened, with
//! how long it took. Every promise is checked, and the scenario ends with a
//! summary: exit 0 when every promise held, 1 when one did not. The cluster
//! is the demo's own (real processes, real sockets, the nemesis over HTTP),
//! so this is the CAP chapter happening, not an animation of it.
//!
//! Scenarios:
//! - `partition`: the cp leader is cut off with a minority. On its side cp
//!   refuses within the deadline (linearizable reads too), while a stale
//!   read still answers with the old value; the majority elects a leader
//!   and serves. The ap bucket accepts a write on each side. After the heal
//!   the old leader serves the majority's value and never the write it
//!   refused, and the ap bucket shows both writes as siblings until a write
//!   with their context resolves them.
//!
//! What it does not do: it does not restart or kill nodes (the failover
//! test does), and it leaves the cluster's data in the demo's directory.

use capkv_client::{
    codes, ApReadOptions, ApWriteOptions, Client, ClientError, Consistency, GetOptions, PutOptions,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The scenarios `--scenario` accepts, with one line each for `--help` and
/// errors.
pub const SCENARIOS: [(&str, &str); 1] = [(
    "partition",
    "cut the cp leader off with a minority: cp refuses there and serves the majority, ap serves both sides; heal: cp converges, ap keeps both writes as siblings",
)];

/// The server's deadline the scenario asks for on requests that may be
/// refused: long enough for the old leader to notice it lost its majority.
const REFUSAL_DEADLINE_MS: u64 = 2_000;
/// The client's own timeout: past the server's deadline, so that the server
/// is the one who answers.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a step may wait for the cluster to settle (an election, a
/// catch-up, replicas converging).
const SETTLE_WAIT: Duration = Duration::from_secs(20);
/// Pause between polls while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Checks a `--scenario` name.
pub fn check_name(name: &str) -> Result<(), String> {
    if SCENARIOS.iter().any(|(known, _)| *known == name) {
        return Ok(());
    }
    let known: Vec<&str> = SCENARIOS.iter().map(|(known, _)| *known).collect();
    Err(format!(
        "unknown --scenario '{name}' (known: {})",
        known.join(", ")
    ))
}

/// The smallest cluster a scenario can show its behaviour on: a majority
/// must remain when one node is cut off.
pub const NODES_MIN: u16 = 3;

/// One node as the scenario sees it.
pub struct Member {
    /// The node id.
    pub id: u64,
    /// Its HTTP address.
    pub http: SocketAddr,
}

/// A promise and whether it held.
struct Promise {
    what: String,
    held: bool,
}

/// The scenario's narration and its promises.
struct Script {
    started: Instant,
    promises: Vec<Promise>,
}

impl Script {
    fn say(&self, text: &str) {
        println!("[{:>6.2} s] {text}", self.started.elapsed().as_secs_f64());
    }

    fn step(&self, title: &str) {
        println!();
        self.say(&format!("== {title}"));
    }

    /// Records a promise; prints whether it held and what was seen.
    fn promise(&mut self, what: &str, held: bool, seen: &str) {
        let mark = if held { "held" } else { "BROKEN" };
        self.say(&format!("   promise {mark}: {what} ({seen})"));
        self.promises.push(Promise {
            what: what.to_string(),
            held,
        });
    }
}

/// Runs scenario `name` against `members` (the admin token lets it drive
/// the nemesis) and returns the exit code: 0 when every promise held.
pub async fn run(name: &str, members: &[Member], admin_token: &str) -> u8 {
    let mut script = Script {
        started: Instant::now(),
        promises: Vec::new(),
    };
    println!("\ncapkv demo: scenario {name}");
    let outcome = match name {
        "partition" => partition(&mut script, members, admin_token).await,
        other => Err(format!("unknown scenario '{other}'")),
    };
    println!();
    if let Err(why) = outcome {
        script.say(&format!("the scenario could not go on: {why}"));
        script.promises.push(Promise {
            what: format!("the scenario ran to its end ({why})"),
            held: false,
        });
    }
    let broken: Vec<&Promise> = script.promises.iter().filter(|p| !p.held).collect();
    println!(
        "capkv demo: scenario {name}: {} of {} promises held",
        script.promises.len() - broken.len(),
        script.promises.len()
    );
    for promise in &broken {
        println!("  BROKEN: {}", promise.what);
    }
    u8::from(!broken.is_empty())
}

fn client_of(member: &Member, admin_token: &str) -> Result<Client, String> {
    Client::new(&format!("http://{}", member.http))
        .map(|client| {
            client
                .with_admin_token(admin_token)
                .with_timeout(CLIENT_TIMEOUT)
        })
        .map_err(|error| error.to_string())
}

fn ms(duration: Duration) -> u128 {
    duration.as_millis()
}

/// What an answer showed: `ok` of the value, or the error with its code.
fn shown<T>(answer: &Result<T, ClientError>, ok: impl FnOnce(&T) -> String) -> String {
    match answer {
        Ok(value) => ok(value),
        Err(error) => describe(error),
    }
}

fn describe(error: &ClientError) -> String {
    if error.status == 0 {
        return format!("{} ({})", error.code, error.message);
    }
    format!("{} {} ({})", error.status, error.code, error.message)
}

/// Polls `check` until it returns `Some`, or [`SETTLE_WAIT`] passes.
async fn settle<T, F, Fut>(mut check: F) -> Result<(T, Duration), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok((value, started.elapsed()));
        }
        if started.elapsed() >= SETTLE_WAIT {
            return Err(format!(
                "the cluster did not settle within {} s",
                SETTLE_WAIT.as_secs()
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The cp group's leader as `client`'s node sees it, when that node and the
/// leader agree on it being the leader.
async fn leader_seen_by(client: &Client) -> Option<u64> {
    let status = client.cluster().await.ok()?;
    let group = status.groups.first()?;
    if group.role == "leader" {
        return Some(status.node_id);
    }
    group.leader
}

/// The `partition` scenario; see the module docs.
async fn partition(
    script: &mut Script,
    members: &[Member],
    admin_token: &str,
) -> Result<(), String> {
    const BUCKET: &str = "bank";
    const AP_BUCKET: &str = "feed";
    let clients: Vec<(u64, Client)> = members
        .iter()
        .map(|member| client_of(member, admin_token).map(|client| (member.id, client)))
        .collect::<Result<_, _>>()?;
    let client = |id: u64| -> Result<&Client, String> {
        clients
            .iter()
            .find(|(member, _)| *member == id)
            .map(|(_, client)| client)
            .ok_or_else(|| format!("no node {id}"))
    };
    let first = &clients[0].1;

    script.step("1. Before the partition: find the cp leader and write through it");
    let (leader, _) = settle(|| async move { Ok(leader_seen_by(first).await) }).await?;
    // The leader alone on its side: it holds at most one replica of any ap
    // key, so an ap quorum cannot form there either.
    let minority = vec![leader];
    let majority: Vec<u64> = members
        .iter()
        .map(|member| member.id)
        .filter(|id| *id != leader)
        .collect();
    let other = *majority.first().ok_or("the cluster has a single node")?;
    script.say(&format!(
        "n{leader} leads the cp group; it will be cut off alone, against the majority {majority:?}"
    ));
    let written = client(leader)?
        .put(BUCKET, "balance", "100", &PutOptions::default())
        .await
        .map_err(|error| format!("the first cp write failed: {}", describe(&error)))?;
    script.say(&format!(
        "PUT {BUCKET}/balance = 100 through n{leader}: ok, version {}",
        written.version
    ));
    let before = client(leader)?
        .ap_put(AP_BUCKET, "status", "before", &quorum_write())
        .await
        .map_err(|error| format!("the first ap write failed: {}", describe(&error)))?;
    script.say(&format!(
        "PUT {AP_BUCKET}/status = before through n{leader} at quorum: ok; both sides will write with its causal context, so each supersedes it"
    ));

    script.step("2. Cut the network");
    let groups = vec![minority.clone(), majority.clone()];
    client(other)?
        .nemesis_partition(&groups)
        .await
        .map_err(|error| format!("the nemesis refused: {}", describe(&error)))?;
    let cut = Instant::now();
    script.say(&format!(
        "POST /v1/nemesis/partition {groups:?}: nodes now talk only within their group"
    ));

    script.step("3. cp on the minority side: refused, quickly and clearly");
    let refusal = PutOptions {
        timeout_ms: Some(REFUSAL_DEADLINE_MS),
        ..PutOptions::default()
    };
    let started = Instant::now();
    let answer = client(leader)?.put(BUCKET, "balance", "50", &refusal).await;
    let took = started.elapsed();
    let refused =
        matches!(&answer, Err(error) if error.status == 503 && error.code == codes::NO_QUORUM);
    let seen = shown(&answer, |result| {
        format!("accepted, version {}", result.version)
    });
    script.say(&format!(
        "PUT {BUCKET}/balance = 50 through the old leader n{leader}: {seen} after {} ms",
        ms(took)
    ));
    script.promise(
        "a cp write on the minority side is refused with 503 no_quorum within its deadline",
        refused && took < Duration::from_millis(REFUSAL_DEADLINE_MS + 1_000),
        &format!("{} ms, deadline {REFUSAL_DEADLINE_MS} ms", ms(took)),
    );
    let started = Instant::now();
    let answer = client(leader)?
        .get(
            BUCKET,
            "balance",
            &GetOptions {
                consistency: Some(Consistency::Linearizable),
                timeout_ms: Some(REFUSAL_DEADLINE_MS),
            },
        )
        .await;
    let took = started.elapsed();
    let seen = shown(&answer, |value| {
        format!("answered {:?}", value.value_text().unwrap_or("?"))
    });
    script.say(&format!(
        "GET {BUCKET}/balance (linearizable) through n{leader}: {seen} after {} ms",
        ms(took)
    ));
    script.promise(
        "a linearizable read on the minority side is refused: it could miss a newer write",
        matches!(&answer, Err(error) if error.status == 503),
        &seen,
    );
    let answer = client(leader)?
        .get(
            BUCKET,
            "balance",
            &GetOptions {
                consistency: Some(Consistency::Stale),
                timeout_ms: None,
            },
        )
        .await;
    let seen = shown(&answer, |value| {
        format!("{:?}", value.value_text().unwrap_or("?"))
    });
    script.say(&format!(
        "GET {BUCKET}/balance (stale) through n{leader}: {seen}: a stale read serves what the node has, and says so by its name"
    ));

    script.step("4. cp on the majority side: a new leader, and service");
    let majority_side = &majority;
    let (new_leader, _) = settle(|| async move {
        let found = leader_seen_by(client(other)?).await;
        Ok(found.filter(|id| majority_side.contains(id)))
    })
    .await?;
    script.say(&format!(
        "n{new_leader} leads the majority side, {} ms after the cut",
        ms(cut.elapsed())
    ));
    let started = Instant::now();
    let answer = client(other)?
        .put(BUCKET, "balance", "200", &PutOptions::default())
        .await;
    let seen = shown(&answer, |result| format!("ok, version {}", result.version));
    script.say(&format!(
        "PUT {BUCKET}/balance = 200 through n{other}: {seen} after {} ms",
        ms(started.elapsed())
    ));
    script.promise(
        "the majority side elects a leader and accepts cp writes",
        answer.is_ok(),
        &seen,
    );

    script.step("5. ap on both sides: available");
    for (id, side) in [(leader, "minority"), (other, "majority")] {
        let value = format!("written on the {side} side");
        let options = ApWriteOptions {
            context: Some(before.context.clone()),
            ..level(Consistency::One)
        };
        let answer = client(id)?
            .ap_put(AP_BUCKET, "status", value.as_str(), &options)
            .await;
        let seen = shown(&answer, |written| {
            format!(
                "ok, {} of {} replicas acknowledged",
                written.acks, written.replicas
            )
        });
        script.say(&format!(
            "PUT {AP_BUCKET}/status = {value:?} through n{id} at one: {seen}"
        ));
        script.promise(
            &format!("an ap write at level one is accepted on the {side} side"),
            answer.is_ok(),
            &seen,
        );
    }
    let started = Instant::now();
    let answer = client(leader)?
        .ap_put(AP_BUCKET, "other", "needs two", &quorum_write())
        .await;
    let seen = shown(&answer, |written| {
        format!("ok, {} acknowledged", written.acks)
    });
    script.say(&format!(
        "PUT {AP_BUCKET}/other through n{leader} at quorum: {seen} after {} ms",
        ms(started.elapsed())
    ));
    script.promise(
        "an ap write at quorum is refused where a quorum of replicas cannot be reached (the level is the client's choice)",
        matches!(&answer, Err(error) if error.code == codes::NO_QUORUM),
        &seen,
    );

    script.step("6. Heal");
    client(other)?
        .nemesis_heal()
        .await
        .map_err(|error| format!("the nemesis refused to heal: {}", describe(&error)))?;
    let healed = Instant::now();
    script.say("POST /v1/nemesis/heal: every link is back");

    script.step("7. After the heal: cp converges on the majority's history");
    let (value, _) = settle(|| async move {
        let options = GetOptions {
            consistency: Some(Consistency::Linearizable),
            timeout_ms: Some(REFUSAL_DEADLINE_MS),
        };
        Ok(client(leader)?
            .get(BUCKET, "balance", &options)
            .await
            .ok()
            .map(|value| value.value_text().unwrap_or("?").to_string()))
    })
    .await?;
    script.say(&format!(
        "GET {BUCKET}/balance (linearizable) through n{leader}: {value:?}, {} ms after the heal",
        ms(healed.elapsed())
    ));
    script.promise(
        "the old leader serves the majority's write, and the write it refused never took effect",
        value == "200",
        &format!("read {value:?}"),
    );

    script.step("8. After the heal: ap keeps both writes, as siblings");
    let last_seen = std::cell::RefCell::new(String::new());
    let last = &last_seen;
    let settled = settle(|| async move {
        let options = ApReadOptions {
            consistency: Some(Consistency::All),
            ..ApReadOptions::default()
        };
        let values = match client(other)?.ap_get(AP_BUCKET, "status", &options).await {
            Ok(values) => values,
            Err(error) => {
                *last.borrow_mut() = describe(&error);
                return Ok(None);
            }
        };
        let mut texts: Vec<String> = values
            .siblings
            .iter()
            .map(|value| String::from_utf8_lossy(value).into_owned())
            .collect();
        texts.sort();
        *last.borrow_mut() = format!("{texts:?}");
        Ok((texts.len() == 2).then_some((texts, values.context)))
    })
    .await;
    let (siblings, _) =
        settled.map_err(|why| format!("{why}; the last read showed {}", last_seen.borrow()))?;
    let (texts, context) = siblings;
    script.say(&format!(
        "GET {AP_BUCKET}/status at all through n{other}: siblings {texts:?}, {} ms after the heal",
        ms(healed.elapsed())
    ));
    script.promise(
        "concurrent ap writes from both sides survive as siblings: neither is silently lost",
        texts
            == [
                "written on the majority side".to_string(),
                "written on the minority side".to_string(),
            ],
        &format!("{texts:?}"),
    );
    let resolved = ApWriteOptions {
        consistency: Some(Consistency::Quorum),
        context: Some(context),
        timeout_ms: None,
    };
    client(other)?
        .ap_put(AP_BUCKET, "status", "merged", &resolved)
        .await
        .map_err(|error| format!("the resolving write failed: {}", describe(&error)))?;
    let options = ApReadOptions {
        consistency: Some(Consistency::All),
        ..ApReadOptions::default()
    };
    let answer = client(leader)?.ap_get(AP_BUCKET, "status", &options).await;
    let seen = shown(&answer, |values| {
        format!(
            "{:?}",
            values
                .siblings
                .iter()
                .map(|value| String::from_utf8_lossy(value).into_owned())
                .collect::<Vec<_>>()
        )
    });
    script.say(&format!(
        "PUT {AP_BUCKET}/status = merged with the siblings' context, then GET at all through n{leader}: {seen}"
    ));
    script.promise(
        "a write carrying the siblings' context supersedes both",
        matches!(&answer, Ok(values) if values.siblings == [b"merged".to_vec()]),
        &seen,
    );
    Ok(())
}

fn level(consistency: Consistency) -> ApWriteOptions {
    ApWriteOptions {
        consistency: Some(consistency),
        context: None,
        timeout_ms: Some(REFUSAL_DEADLINE_MS),
    }
}

fn quorum_write() -> ApWriteOptions {
    level(Consistency::Quorum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("partition").is_ok());
        let error = check_name("nope").unwrap_err();
        assert!(error.contains("partition"), "{error}");
    }
}
