//! Histories that must pass, histories that must fail, and input that must
//! be rejected.

use serde_json::{json, Value};

use crate::gen::generate_register_history;
use crate::{
    check_events, parse_history, run_check_command, run_check_command_with_limits, Event,
    EventType, InputError, Limits, OpKind, Verdict, Violation,
};

fn event(process: u64, kind: EventType, f: OpKind, value: Value) -> Event {
    Event {
        process,
        kind,
        f,
        key: "k".to_owned(),
        value,
    }
}

fn invoke(process: u64, f: OpKind, value: Value) -> Event {
    event(process, EventType::Invoke, f, value)
}

fn ok(process: u64, f: OpKind, value: Value) -> Event {
    event(process, EventType::Ok, f, value)
}

fn fail(process: u64, f: OpKind, value: Value) -> Event {
    event(process, EventType::Fail, f, value)
}

fn info(process: u64, f: OpKind, value: Value) -> Event {
    event(process, EventType::Info, f, value)
}

/// A write by `process` that completes before anything else happens.
fn write(process: u64, value: Value) -> Vec<Event> {
    vec![
        invoke(process, OpKind::Write, value.clone()),
        ok(process, OpKind::Write, value),
    ]
}

/// A read by `process` that completes before anything else happens.
fn read(process: u64, value: Value) -> Vec<Event> {
    vec![
        invoke(process, OpKind::Read, Value::Null),
        ok(process, OpKind::Read, value),
    ]
}

fn delete(process: u64) -> Vec<Event> {
    vec![
        invoke(process, OpKind::Delete, Value::Null),
        ok(process, OpKind::Delete, Value::Null),
    ]
}

fn cas(process: u64, expected: Value, new: Value) -> Vec<Event> {
    vec![
        invoke(process, OpKind::Cas, json!([expected, new])),
        ok(process, OpKind::Cas, json!([expected, new])),
    ]
}

fn history(parts: Vec<Vec<Event>>) -> Vec<Event> {
    parts.into_iter().flatten().collect()
}

fn check(events: &[Event]) -> Verdict {
    check_events(events, &Limits::default()).expect("a well-formed history")
}

fn assert_linearizable(events: &[Event]) {
    let verdict = check(events);
    assert!(
        matches!(verdict, Verdict::Linearizable { .. }),
        "expected linearizable, got {verdict:#?}"
    );
}

/// Asserts the history fails, and that its window fails on its own.
fn assert_not_linearizable(events: &[Event]) -> Violation {
    let Verdict::NotLinearizable(violation) = check(events) else {
        panic!("expected not linearizable: {events:#?}");
    };
    assert!(
        matches!(check(&violation.window), Verdict::NotLinearizable(_)),
        "the window fails on its own: {violation:#?}"
    );
    violation
}

fn operations_in(window: &[Event]) -> usize {
    window
        .iter()
        .filter(|event| event.kind == EventType::Invoke)
        .count()
}

// Histories that must pass.

#[test]
fn an_empty_history_is_linearizable() {
    assert_eq!(
        check(&[]),
        Verdict::Linearizable {
            keys: 0,
            operations: 0
        }
    );
}

#[test]
fn a_read_sees_the_last_completed_write() {
    let events = history(vec![
        read(0, Value::Null),
        write(0, json!(1)),
        read(1, json!(1)),
        write(1, json!("two")),
        read(0, json!("two")),
    ]);
    assert_eq!(
        check(&events),
        Verdict::Linearizable {
            keys: 1,
            operations: 5
        }
    );
}

/// Values are told apart as their JSON texts are: by type, by integer or
/// float form, and by the sign of a float zero.
#[test]
fn values_equal_only_when_their_json_texts_are() {
    for (written, read_back) in [
        (json!(1), json!(1)),
        (json!(-5), json!(-5)),
        (json!(1.5), json!(1.5)),
        (json!(u64::MAX), json!(u64::MAX)),
        (json!("1"), json!("1")),
    ] {
        let events = history(vec![write(0, written), read(1, read_back)]);
        assert!(matches!(check(&events), Verdict::Linearizable { .. }));
    }
    for (written, read_back) in [
        (json!(1), json!("1")),
        (json!(1), json!(1.0)),
        (json!(0.0), json!(-0.0)),
        (json!(-1), json!(u64::MAX)),
        (json!(1.0_f64.to_bits()), json!(1.0)),
    ] {
        let events = history(vec![write(0, written), read(1, read_back)]);
        assert!(matches!(check(&events), Verdict::NotLinearizable(_)));
    }
}

#[test]
fn a_read_concurrent_with_a_write_may_see_the_old_or_the_new_value() {
    for seen in [Value::Null, json!(1)] {
        assert_linearizable(&[
            invoke(0, OpKind::Write, json!(1)),
            invoke(1, OpKind::Read, Value::Null),
            ok(1, OpKind::Read, seen),
            ok(0, OpKind::Write, json!(1)),
        ]);
    }
}

#[test]
fn concurrent_writes_may_take_effect_in_either_order() {
    for last in [1, 2] {
        let mut events = vec![
            invoke(0, OpKind::Write, json!(1)),
            invoke(1, OpKind::Write, json!(2)),
            ok(1, OpKind::Write, json!(2)),
            ok(0, OpKind::Write, json!(1)),
        ];
        events.extend(read(2, json!(last)));
        events.extend(read(3, json!(last)));
        assert_linearizable(&events);
    }
}

#[test]
fn reads_after_concurrent_writes_must_agree_on_their_order() {
    let mut events = vec![
        invoke(0, OpKind::Write, json!(1)),
        invoke(1, OpKind::Write, json!(2)),
        ok(1, OpKind::Write, json!(2)),
        ok(0, OpKind::Write, json!(1)),
    ];
    events.extend(read(2, json!(1)));
    events.extend(read(3, json!(2)));
    assert_not_linearizable(&events);
}

#[test]
fn a_cas_swaps_when_it_finds_its_expected_value() {
    assert_linearizable(&history(vec![
        cas(0, Value::Null, json!(1)),
        cas(1, json!(1), json!("x")),
        read(0, json!("x")),
    ]));
}

#[test]
fn a_failed_cas_is_not_an_observation() {
    // Knossos' convention: a fail did not take effect, so it is dropped,
    // even though the register held its expected value.
    let events = history(vec![
        write(0, json!(1)),
        vec![
            invoke(1, OpKind::Cas, json!([1, 2])),
            fail(1, OpKind::Cas, json!([1, 2])),
        ],
        read(0, json!(1)),
    ]);
    assert_linearizable(&events);
}

#[test]
fn a_failed_write_did_not_take_effect() {
    let failed = vec![
        invoke(0, OpKind::Write, json!(1)),
        fail(0, OpKind::Write, json!(1)),
    ];
    assert_linearizable(&history(vec![failed.clone(), read(1, Value::Null)]));
    assert_not_linearizable(&history(vec![failed, read(1, json!(1))]));
}

#[test]
fn an_info_write_may_or_may_not_take_effect() {
    let unknown = vec![
        invoke(0, OpKind::Write, json!(1)),
        info(0, OpKind::Write, json!(1)),
    ];
    assert_linearizable(&history(vec![unknown.clone(), read(1, json!(1))]));
    assert_linearizable(&history(vec![unknown.clone(), read(1, Value::Null)]));
    // It may take effect long after its info.
    assert_linearizable(&history(vec![
        unknown.clone(),
        read(1, Value::Null),
        read(1, json!(1)),
    ]));
    // But once seen, it stays until overwritten.
    assert_not_linearizable(&history(vec![
        unknown,
        read(1, json!(1)),
        read(1, Value::Null),
    ]));
}

#[test]
fn an_info_write_takes_effect_no_earlier_than_its_invoke() {
    assert_not_linearizable(&history(vec![
        read(1, json!(1)),
        vec![
            invoke(0, OpKind::Write, json!(1)),
            info(0, OpKind::Write, json!(1)),
        ],
    ]));
}

#[test]
fn an_info_cas_and_delete_may_take_effect() {
    let events = history(vec![
        write(0, json!(1)),
        vec![
            invoke(1, OpKind::Cas, json!([1, 2])),
            info(1, OpKind::Cas, Value::Null),
        ],
        read(0, json!(2)),
        vec![
            invoke(2, OpKind::Delete, Value::Null),
            info(2, OpKind::Delete, Value::Null),
        ],
        read(0, Value::Null),
    ]);
    assert_linearizable(&events);
}

#[test]
fn an_operation_that_never_completes_may_take_effect() {
    let mut events = vec![invoke(0, OpKind::Write, json!(1))];
    events.extend(read(1, json!(1)));
    events.push(invoke(2, OpKind::Read, Value::Null));
    assert_linearizable(&events);
}

#[test]
fn keys_are_independent_registers() {
    let mut other = write(0, json!(1));
    for event in &mut other {
        event.key = "other".to_owned();
    }
    assert_eq!(
        check(&history(vec![other, read(1, Value::Null)])),
        Verdict::Linearizable {
            keys: 2,
            operations: 2
        }
    );
}

// Histories that must fail.

#[test]
fn a_stale_read_after_a_completed_write_fails() {
    let violation =
        assert_not_linearizable(&history(vec![write(0, json!(1)), read(1, Value::Null)]));
    assert_eq!(violation.key, "k");
    assert_eq!(operations_in(&violation.window), 2);
}

#[test]
fn a_lost_write_fails() {
    let violation = assert_not_linearizable(&history(vec![
        write(0, json!(1)),
        write(1, json!(2)),
        read(2, json!(1)),
    ]));
    assert_eq!(operations_in(&violation.window), 3);
    assert!(
        violation.explanation.contains("read -> 1"),
        "{}",
        violation.explanation
    );
}

#[test]
fn a_cas_that_swapped_against_a_value_not_there_fails() {
    let violation = assert_not_linearizable(&history(vec![
        write(0, json!(1)),
        cas(1, json!(2), json!(3)),
    ]));
    assert!(
        violation.explanation.contains("expecting 2"),
        "{}",
        violation.explanation
    );
}

#[test]
fn a_read_of_a_value_never_written_fails() {
    assert_not_linearizable(&history(vec![write(0, json!(1)), read(1, json!(7))]));
}

#[test]
fn values_compare_as_json_values() {
    assert_not_linearizable(&history(vec![write(0, json!(1)), read(1, json!("1"))]));
}

#[test]
fn a_read_of_the_old_value_after_a_delete_fails() {
    let deleted = history(vec![write(0, json!(1)), delete(1)]);
    assert_linearizable(&history(vec![deleted.clone(), read(2, Value::Null)]));
    let violation = assert_not_linearizable(&history(vec![deleted, read(2, json!(1))]));
    assert_eq!(operations_in(&violation.window), 3);
}

#[test]
fn the_window_leaves_out_operations_unrelated_to_the_violation() {
    let mut parts = Vec::new();
    for value in 0..50 {
        parts.push(write(0, json!(value)));
        parts.push(read(1, json!(value)));
    }
    parts.push(write(2, json!("new")));
    parts.push(read(3, json!(49)));
    for value in 100..150 {
        parts.push(write(0, json!(value)));
    }
    let violation = assert_not_linearizable(&history(parts));
    // write 49, write "new" and the stale read.
    assert_eq!(
        operations_in(&violation.window),
        3,
        "{:#?}",
        violation.window
    );
    assert!(violation.window.contains(&ok(3, OpKind::Read, json!(49))));
    assert!(violation
        .window
        .contains(&ok(2, OpKind::Write, json!("new"))));
}

// The command.

fn run(input: &str) -> (i32, String) {
    let mut out = Vec::new();
    let code = run_check_command(input.as_bytes(), &mut out, "register");
    (code, String::from_utf8(out).expect("the report is UTF-8"))
}

fn lines(events: &[Event]) -> String {
    events
        .iter()
        .map(|event| serde_json::to_string(event).expect("events serialize") + "\n")
        .collect()
}

#[test]
fn the_command_exits_0_on_a_linearizable_history() {
    let (code, report) = run(&lines(&history(vec![
        write(0, json!(1)),
        read(1, json!(1)),
    ])));
    assert_eq!(code, 0, "{report}");
    assert!(report.starts_with("linearizable"), "{report}");
}

#[test]
fn the_command_exits_1_with_the_key_and_window_when_not_linearizable() {
    let (code, report) = run(&lines(&history(vec![
        write(0, json!(1)),
        read(1, json!(2)),
    ])));
    assert_eq!(code, 1, "{report}");
    assert!(
        report.starts_with("not linearizable: key \"k\""),
        "{report}"
    );
    assert!(report.contains(r#"{"process":1,"type":"ok","f":"read","key":"k","value":2}"#));
}

#[test]
fn the_command_rejects_other_models() {
    let mut out = Vec::new();
    assert_eq!(run_check_command("".as_bytes(), &mut out, "queue"), 2);
    let report = String::from_utf8(out).expect("the report is UTF-8");
    assert!(report.contains("unsupported model"), "{report}");
}

#[test]
fn blank_lines_are_skipped_and_counted() {
    let input = "\n{\"process\":0,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"k\"}\r\n\n  \n\
                 {\"process\":0,\"type\":\"ok\",\"f\":\"read\",\"key\":\"k\",\"value\":null}\n";
    assert_eq!(run(input).0, 0);
    let events = parse_history(input.as_bytes(), &Limits::default()).expect("valid");
    assert_eq!(events.len(), 2);
    let broken = "\n\n{\"process\":0,";
    let (code, report) = run(broken);
    assert_eq!(code, 2);
    assert!(report.starts_with("line 3: "), "{report}");
}

/// Runs malformed input through the command: exit 2 and `line N: ...`.
fn assert_rejected(input: &str, line: usize, reason_part: &str) {
    let (code, report) = run(input);
    assert_eq!(code, 2, "{report}");
    assert!(report.starts_with(&format!("line {line}: ")), "{report}");
    assert!(report.contains(reason_part), "{report}");
}

#[test]
fn bad_json_is_rejected() {
    assert_rejected("{\"process\": 1, \"type\": \n", 1, "not a valid event");
    assert_rejected("[1, 2]\n", 1, "not a valid event");
}

#[test]
fn an_unknown_type_is_rejected() {
    assert_rejected(
        r#"{"process":1,"type":"maybe","f":"read","key":"k","value":null}"#,
        1,
        "unknown variant",
    );
    assert_rejected(
        r#"{"process":1,"type":"invoke","f":"append","key":"k","value":null}"#,
        1,
        "unknown variant",
    );
}

#[test]
fn a_completion_without_an_invoke_is_rejected() {
    assert_rejected(
        r#"{"process":1,"type":"ok","f":"read","key":"k","value":null}"#,
        1,
        "no open invoke",
    );
}

#[test]
fn a_completion_must_match_its_invoke() {
    let input = lines(&[
        invoke(1, OpKind::Read, Value::Null),
        ok(1, OpKind::Write, json!(1)),
    ]);
    assert_rejected(&input, 2, "does not match");
    let mut other_key = ok(1, OpKind::Read, Value::Null);
    other_key.key = "other".to_owned();
    let input = lines(&[invoke(1, OpKind::Read, Value::Null), other_key]);
    assert_rejected(&input, 2, "does not match");
}

#[test]
fn two_open_operations_on_one_process_are_rejected() {
    let input = lines(&[
        invoke(1, OpKind::Read, Value::Null),
        invoke(1, OpKind::Write, json!(1)),
    ]);
    assert_rejected(&input, 2, "still open");
}

#[test]
fn an_invoke_after_info_on_the_same_process_is_rejected() {
    let input = lines(&[
        invoke(1, OpKind::Write, json!(1)),
        info(1, OpKind::Write, json!(1)),
        invoke(1, OpKind::Read, Value::Null),
    ]);
    assert_rejected(&input, 3, "new process id");
}

/// The validator keeps small process ids in a table and others in a map:
/// both follow the same rules.
#[test]
fn large_process_ids_follow_the_pairing_rules() {
    for process in [0, 4095, 4096, u64::MAX] {
        assert_linearizable(&history(vec![
            write(process, json!(1)),
            read(process, json!(1)),
        ]));
        let read_invoke = invoke(process, OpKind::Read, Value::Null);
        let input = lines(&[read_invoke.clone(), read_invoke.clone()]);
        assert_rejected(&input, 2, "still open");
        let input = lines(&[
            invoke(process, OpKind::Write, json!(1)),
            info(process, OpKind::Write, json!(1)),
            read_invoke,
        ]);
        assert_rejected(&input, 3, "new process id");
        let input = lines(&[ok(process, OpKind::Read, Value::Null)]);
        assert_rejected(&input, 1, "no open invoke");
    }
}

#[test]
fn a_cas_value_of_the_wrong_shape_is_rejected() {
    for value in [
        json!(5),
        json!([1]),
        json!([1, 2, 3]),
        json!([1, [2]]),
        Value::Null,
    ] {
        assert_rejected(
            &lines(&[invoke(1, OpKind::Cas, value)]),
            1,
            "[expected, new]",
        );
    }
    assert_rejected(
        &lines(&[
            invoke(1, OpKind::Cas, json!([1, 2])),
            ok(1, OpKind::Cas, json!(3)),
        ]),
        2,
        "[expected, new]",
    );
}

#[test]
fn values_other_than_strings_numbers_and_null_are_rejected() {
    for value in [json!(true), json!({"a": 1}), json!([1])] {
        assert_rejected(
            &lines(&[invoke(1, OpKind::Write, value)]),
            1,
            "string, number or null",
        );
    }
}

#[test]
fn a_line_that_is_too_long_is_rejected() {
    let long_value = "x".repeat(70 * 1024);
    let input = lines(&history(vec![
        write(0, json!(1)),
        write(0, json!(long_value)),
    ]));
    assert_rejected(&input, 3, "line_bytes_max");
    // A line without an end is bounded too.
    assert_rejected(&long_value, 1, "line_bytes_max");
}

#[test]
fn a_line_exactly_at_the_limit_is_accepted() {
    let line = serde_json::to_string(&invoke(0, OpKind::Read, Value::Null)).expect("serializes");
    let limits = Limits {
        line_bytes_max: line.len(),
        ..Limits::default()
    };
    for ending in ["\n", "\r\n", ""] {
        let input = format!("{line}{ending}");
        assert!(
            parse_history(input.as_bytes(), &limits).is_ok(),
            "{ending:?}"
        );
    }
    let limits = Limits {
        line_bytes_max: line.len() - 1,
        ..Limits::default()
    };
    assert!(parse_history(line.as_bytes(), &limits).is_err());
}

#[test]
fn invalid_utf8_is_rejected() {
    let mut out = Vec::new();
    let code = run_check_command(&b"{\"process\":\xff}\n"[..], &mut out, "register");
    assert_eq!(code, 2);
}

#[test]
fn exceeding_events_max_is_rejected() {
    let input = lines(&history(vec![write(0, json!(1)), read(1, json!(1))]));
    let limits = Limits {
        events_max: 3,
        ..Limits::default()
    };
    let mut out = Vec::new();
    let code = run_check_command_with_limits(input.as_bytes(), &mut out, "register", &limits);
    let report = String::from_utf8(out).expect("the report is UTF-8");
    assert_eq!(code, 2, "{report}");
    assert!(report.starts_with("line 4: more than 3 events"), "{report}");
}

#[test]
fn exceeding_keys_max_and_ops_per_key_max_is_rejected() {
    let mut events = history(vec![write(0, json!(1)), read(1, json!(1))]);
    events[2].key = "other".to_owned();
    events[3].key = "other".to_owned();
    let one_key = Limits {
        keys_max: 1,
        ..Limits::default()
    };
    assert_eq!(
        check_events(&events, &one_key),
        Err(InputError {
            line: 3,
            reason: "more than 1 keys (keys_max)".to_owned()
        })
    );
    let one_op = Limits {
        ops_per_key_max: 1,
        ..Limits::default()
    };
    let same_key = history(vec![write(0, json!(1)), read(1, json!(1))]);
    let error = parse_history(lines(&same_key).as_bytes(), &one_op).expect_err("too many ops");
    assert_eq!(error.line, 3);
    assert!(error.reason.contains("ops_per_key_max"), "{error}");
}

#[test]
fn check_events_validates_pairing_too() {
    let events = [ok(1, OpKind::Read, Value::Null)];
    let error = check_events(&events, &Limits::default()).expect_err("unpaired");
    assert_eq!(error.line, 1);
    assert_eq!(error.to_string(), format!("line 1: {}", error.reason));
}

// Generated histories.

#[test]
fn generated_histories_are_linearizable() {
    for seed in 0..8 {
        let events = generate_register_history(seed, 2_000, 3, 5);
        assert_linearizable(&events);
    }
    let events = generate_register_history(99, 20_000, 10, 20);
    assert_linearizable(&events);
}

#[test]
fn generated_histories_survive_the_command() {
    let events = generate_register_history(5, 1_000, 4, 8);
    let (code, report) = run(&lines(&events));
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        parse_history(lines(&events).as_bytes(), &Limits::default()),
        Ok(events)
    );
}

/// Replaces the value of the last read that saw a value with the first value
/// written to its key, which was overwritten long before.
fn flip_one_read(events: &mut [Event]) {
    let (position, key) = events
        .iter()
        .enumerate()
        .rev()
        .find(|(_, event)| {
            event.kind == EventType::Ok && event.f == OpKind::Read && !event.value.is_null()
        })
        .map(|(position, event)| (position, event.key.clone()))
        .expect("a generated history has reads that saw a value");
    let first_written = events
        .iter()
        .find(|event| event.kind == EventType::Ok && event.f == OpKind::Write && event.key == key)
        .map(|event| event.value.clone())
        .expect("a generated history writes every key");
    assert_ne!(events[position].value, first_written);
    events[position].value = first_written;
}

#[test]
fn a_generated_history_with_one_read_flipped_is_rejected() {
    // Seed 3 is one where the flip is caught; most are.
    let mut events = generate_register_history(3, 2_000, 3, 5);
    flip_one_read(&mut events);
    let violation = assert_not_linearizable(&events);
    assert!(operations_in(&violation.window) <= 10, "{violation:#?}");
}

/// A tiny deterministic mutator: the command must answer 0, 1 or 2 on
/// anything, never panic.
#[test]
fn the_command_never_panics_on_mangled_input() {
    let text = lines(&generate_register_history(11, 200, 2, 4));
    let mut state: u64 = 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let replacements: &[u8] = b"{}[]\",:0123456789 \nabcxyz-.";
    for _ in 0..300 {
        let mut bytes = text.clone().into_bytes();
        for _ in 0..(next() % 4 + 1) {
            let index = (next() % bytes.len() as u64) as usize;
            match next() % 3 {
                0 => bytes[index] = replacements[(next() % replacements.len() as u64) as usize],
                1 => {
                    bytes.remove(index);
                }
                _ => bytes.insert(index, b'\n'),
            }
        }
        let mut out = Vec::new();
        let code = run_check_command(bytes.as_slice(), &mut out, "register");
        assert!((0..=2).contains(&code));
    }
}

// Agreement with a brute-force checker on small random histories.

/// xorshift64: the tests' own small generator.
struct TestRng(u64);

impl TestRng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }

    fn small_value(&mut self) -> Value {
        match self.below(4) {
            0 => Value::Null,
            value => json!(value),
        }
    }
}

/// A random history of up to `operations_max` operations by 3 processes over
/// the values null, 1, 2 and 3: linearizable or not, with every outcome.
fn random_history(rng: &mut TestRng, operations_max: usize) -> Vec<Event> {
    let mut events = Vec::new();
    let mut process_ids = [0, 1, 2];
    let mut next_process_id = 3;
    let mut open: [Option<(OpKind, Value)>; 3] = [None, None, None];
    let mut invoked = 0;
    while invoked < operations_max || open.iter().any(Option::is_some) {
        let slot = rng.below(3) as usize;
        let process = process_ids[slot];
        match open[slot].take() {
            None if invoked < operations_max => {
                invoked += 1;
                let (f, value) = match rng.below(4) {
                    0 => (OpKind::Read, Value::Null),
                    1 => (OpKind::Write, json!(rng.below(3) + 1)),
                    2 => (OpKind::Cas, json!([rng.small_value(), rng.below(3) + 1])),
                    _ => (OpKind::Delete, Value::Null),
                };
                events.push(invoke(process, f, value.clone()));
                open[slot] = Some((f, value));
            }
            None => {}
            Some((f, value)) => {
                let (kind, retire) = match rng.below(20) {
                    0..=11 => (Some(EventType::Ok), false),
                    12..=14 => (Some(EventType::Fail), false),
                    15..=17 => (Some(EventType::Info), true),
                    _ => (None, true),
                };
                let value = match f {
                    OpKind::Read if kind == Some(EventType::Ok) => rng.small_value(),
                    OpKind::Read | OpKind::Delete => Value::Null,
                    OpKind::Write | OpKind::Cas => value,
                };
                if let Some(kind) = kind {
                    events.push(event(process, kind, f, value));
                }
                if retire {
                    process_ids[slot] = next_process_id;
                    next_process_id += 1;
                }
            }
        }
    }
    events
}

/// An operation as the brute-force checker sees it.
struct PlainOperation {
    f: OpKind,
    input: Value,
    output: Value,
    call: usize,
    /// `None` when the outcome is unknown: optional, and unconstrained.
    ret: Option<usize>,
}

/// Pairs events into operations, leaving out failures and unknown reads.
fn plain_operations(events: &[Event]) -> Vec<PlainOperation> {
    let mut operations: Vec<(PlainOperation, Option<EventType>)> = Vec::new();
    for (position, event) in events.iter().enumerate() {
        if event.kind == EventType::Invoke {
            let operation = PlainOperation {
                f: event.f,
                input: event.value.clone(),
                output: Value::Null,
                call: position,
                ret: None,
            };
            operations.push((operation, None));
            continue;
        }
        let (operation, outcome) = operations
            .iter_mut()
            .rev()
            .find(|(operation, outcome)| {
                outcome.is_none() && events[operation.call].process == event.process
            })
            .expect("paired");
        *outcome = Some(event.kind);
        if event.kind == EventType::Ok {
            operation.ret = Some(position);
            operation.output = event.value.clone();
        }
    }
    operations
        .into_iter()
        .filter(|(operation, outcome)| match outcome {
            Some(EventType::Fail) => false,
            Some(EventType::Ok) => true,
            _ => operation.f != OpKind::Read,
        })
        .map(|(operation, _)| operation)
        .collect()
}

/// Tries every order of every subset of the optional operations.
fn brute_force_linearizable(operations: &[PlainOperation]) -> bool {
    fn extend(operations: &[PlainOperation], placed: &mut Vec<bool>, register: &Value) -> bool {
        let all_mandatory_placed = operations
            .iter()
            .zip(placed.iter())
            .all(|(operation, &placed)| placed || operation.ret.is_none());
        if all_mandatory_placed {
            return true;
        }
        for candidate in 0..operations.len() {
            if placed[candidate] {
                continue;
            }
            let operation = &operations[candidate];
            let must_come_first = operations
                .iter()
                .zip(placed.iter())
                .any(|(other, &done)| !done && other.ret.is_some_and(|ret| ret < operation.call));
            if must_come_first {
                continue;
            }
            let next = match operation.f {
                OpKind::Read => (operation.output == *register).then(|| register.clone()),
                OpKind::Write => Some(operation.input.clone()),
                OpKind::Delete => Some(Value::Null),
                OpKind::Cas if operation.input[0] == *register => Some(operation.input[1].clone()),
                OpKind::Cas if operation.ret.is_none() => Some(register.clone()),
                OpKind::Cas => None,
            };
            if let Some(next) = next {
                placed[candidate] = true;
                if extend(operations, placed, &next) {
                    return true;
                }
                placed[candidate] = false;
            }
        }
        false
    }
    extend(operations, &mut vec![false; operations.len()], &Value::Null)
}

#[test]
fn the_search_agrees_with_brute_force_on_small_random_histories() {
    let mut rng = TestRng(0x5eed);
    let mut failing = 0;
    for _ in 0..3_000 {
        let events = random_history(&mut rng, 6);
        let expected = brute_force_linearizable(&plain_operations(&events));
        match check(&events) {
            Verdict::Linearizable { .. } => assert!(expected, "missed violation: {events:#?}"),
            Verdict::NotLinearizable(violation) => {
                assert!(!expected, "false alarm: {events:#?}");
                let window = plain_operations(&violation.window);
                assert!(!brute_force_linearizable(&window), "{violation:#?}");
                failing += 1;
            }
        }
    }
    // Both answers are exercised.
    assert!((500..2_500).contains(&failing), "{failing} failing");
}

#[test]
fn anomalies_planted_in_a_busy_history_are_found_with_small_windows() {
    // One key and 30 processes: about 20 operations in flight at any time.
    let events = generate_register_history(21, 5_000, 1, 30);
    assert_linearizable(&events);
    let (read_position, _) = events
        .iter()
        .enumerate()
        .skip(events.len() / 2)
        .find(|(_, event)| event.kind == EventType::Ok && event.f == OpKind::Read)
        .expect("a generated history has reads");
    let written = |skip: usize| {
        events
            .iter()
            .skip(skip)
            .find(|event| event.kind == EventType::Ok && event.f == OpKind::Write)
            .map(|event| event.value.clone())
            .expect("a generated history has writes")
    };
    // A read of the key's first value, long overwritten; a read of a value
    // written only much later.
    for planted in [written(0), written(read_position + 1_000)] {
        let mut mutated = events.clone();
        mutated[read_position].value = planted.clone();
        let violation = assert_not_linearizable(&mutated);
        assert!(operations_in(&violation.window) <= 4, "{violation:#?}");
        assert!(
            violation.window.contains(&mutated[read_position]),
            "the planted read is in the window: {violation:#?}"
        );
    }
}
