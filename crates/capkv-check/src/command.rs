//! The `capkv check` command, as a library function the binary calls.

use std::io::{BufRead, Write};

use crate::check::{check_events, Verdict, Violation};
use crate::event::{Event, Limits};
use crate::parse::parse_history;

/// Exit code: the history is linearizable.
const EXIT_LINEARIZABLE: i32 = 0;
/// Exit code: the history is not linearizable.
const EXIT_NOT_LINEARIZABLE: i32 = 1;
/// Exit code: the input or the arguments cannot be checked.
const EXIT_BAD_INPUT: i32 = 2;

/// The `capkv check` command: reads a JSON-lines history from `input`,
/// writes a human-readable report to `out`, and returns the exit code.
///
/// - 0, and a line starting with `linearizable`, when it is;
/// - 1, and `not linearizable` with the key, the window and an explanation,
///   when it is not;
/// - 2, and `line N: reason`, on malformed input or an exceeded limit, or a
///   message naming the model when `model` is not `register`.
///
/// Uses [`Limits::default`]. Never panics on any input; a failure to write
/// the report does not change the exit code.
pub fn run_check_command(input: impl BufRead, out: &mut dyn Write, model: &str) -> i32 {
    run_check_command_with_limits(input, out, model, &Limits::default())
}

/// [`run_check_command`] with explicit limits.
pub fn run_check_command_with_limits(
    input: impl BufRead,
    out: &mut dyn Write,
    model: &str,
    limits: &Limits,
) -> i32 {
    // The report is best effort: the exit code carries the verdict even
    // when `out` is closed.
    if model != "register" {
        let _ = writeln!(
            out,
            "unsupported model {model:?}: only \"register\" is supported"
        );
        return EXIT_BAD_INPUT;
    }
    let verdict = parse_history(input, limits).and_then(|events| check_events(&events, limits));
    match verdict {
        Ok(Verdict::Linearizable { keys, operations }) => {
            let _ = writeln!(
                out,
                "linearizable: {operations} operations on {keys} keys (model register)"
            );
            EXIT_LINEARIZABLE
        }
        Ok(Verdict::NotLinearizable(violation)) => {
            let _ = write_violation(out, &violation);
            EXIT_NOT_LINEARIZABLE
        }
        Err(error) => {
            let _ = writeln!(out, "{error}");
            EXIT_BAD_INPUT
        }
    }
}

fn write_violation(out: &mut dyn Write, violation: &Violation) -> std::io::Result<()> {
    writeln!(out, "not linearizable: key {:?}", violation.key)?;
    writeln!(
        out,
        "window: {} events that cannot be ordered, in history order:",
        violation.window.len()
    )?;
    for event in &violation.window {
        writeln!(out, "  {}", event_line(event))?;
    }
    writeln!(out, "explanation: {}", violation.explanation)
}

fn event_line(event: &Event) -> String {
    serde_json::to_string(event).unwrap_or_else(|error| format!("{event:?} ({error})"))
}
