//! Failpoints of the lifecycle commands: how the tests cut an archive run, a
//! rebuild or a reprocess at one step, as `kill -9` would. `CHRONOS_FAILPOINT`
//! names the step; `<step>` alone does what the caller says is that step's
//! cut, `<step>:abort|hang|pause` asks for one: abort the process, wait there
//! until it is killed, or pause 10 s (so that loaders commit meanwhile).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Abort,
    Hang,
    Pause,
}

const PAUSE: Duration = Duration::from_secs(10);

/// What `point` (the variable's value) asks at step `name`, with `plain` for the bare name.
fn asked(point: &str, name: &str, plain: Act) -> Option<Act> {
    if point == name {
        return Some(plain);
    }
    match point.strip_prefix(name)?.strip_prefix(':')? {
        "abort" => Some(Act::Abort),
        "hang" => Some(Act::Hang),
        "pause" => Some(Act::Pause),
        _ => None,
    }
}

/// The act asked at `name`, said on stderr (aborting here already).
fn act(name: &str, plain: Act) -> Option<Act> {
    let point = std::env::var("CHRONOS_FAILPOINT").ok()?;
    let act = asked(&point, name, plain)?;
    match act {
        Act::Abort => {
            eprintln!("CHRONOS_FAILPOINT={point}: aborting");
            std::process::abort();
        }
        Act::Hang => eprintln!("CHRONOS_FAILPOINT={point}: waiting to be killed"),
        Act::Pause => eprintln!("CHRONOS_FAILPOINT={point}: pausing 10 s"),
    }
    Some(act)
}

/// Step `name` of synchronous code.
pub fn at(name: &str, plain: Act) {
    match act(name, plain) {
        Some(Act::Hang) => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Some(Act::Pause) => std::thread::sleep(PAUSE),
        _ => {}
    }
}

/// Step `name` of asynchronous code (the runtime's other tasks go on meanwhile).
pub async fn at_async(name: &str, plain: Act) {
    match act(name, plain) {
        Some(Act::Hang) => loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        },
        Some(Act::Pause) => tokio::time::sleep(PAUSE).await,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bare_step_takes_the_callers_act_and_a_suffix_names_one() {
        assert_eq!(asked("archive:written", "archive:written", Act::Abort), Some(Act::Abort));
        assert_eq!(asked("rebuild:read", "rebuild:read", Act::Hang), Some(Act::Hang));
        assert_eq!(asked("rebuild:read:pause", "rebuild:read", Act::Hang), Some(Act::Pause));
        assert_eq!(asked("reprocess:slice:hang", "reprocess:slice", Act::Abort), Some(Act::Hang));
        assert_eq!(asked("reprocess:slices", "reprocess:slice", Act::Abort), None, "another step");
        assert_eq!(asked("archive:written:later", "archive:written", Act::Abort), None);
        assert_eq!(asked("archive:manifest", "archive:written", Act::Abort), None);
    }
}
