//! `chronos help` is the manual (as the original's): every command with its
//! options, then files, environment, exit status; `chronos help CMD [SUB]` is
//! one command's full help; an unknown command is refused with the known ones.
//! It needs no config file and starts nothing.

use std::process::{Command, Output};

fn chronos(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    // Run where no chronos.toml exists: help must not generate one.
    let out = Command::new(env!("CARGO_BIN_EXE_chronos")).current_dir(dir.path()).env_remove("CHRONOS_CONFIG").args(args).output().unwrap();
    assert!(!dir.path().join(".chronos").exists(), "`chronos {}` wrote .chronos/", args.join(" "));
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Command names listed under "Commands:" by clap's `--help` of `args`.
fn listed_commands(args: &[&str]) -> Vec<String> {
    let mut a = args.to_vec();
    a.push("--help");
    let text = stdout(&chronos(&a));
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn manual_covers_every_command_and_the_sections() {
    let out = chronos(&["help"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let man = stdout(&out);
    for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "FILES", "ENVIRONMENT", "EXIT STATUS", "EXAMPLES", "SEE ALSO"] {
        assert!(man.lines().any(|l| l == section), "no {section} section");
    }
    let top = listed_commands(&[]);
    for must in ["start", "stop", "status", "log", "install-kafka", "install-pipeline", "dead-letters", "views", "tracker", "help"] {
        assert!(top.iter().any(|c| c == must), "`chronos --help` lacks {must}: {top:?}");
    }
    for cmd in &top {
        assert!(man.lines().any(|l| l == format!("    chronos {cmd}")), "the manual has no entry for `chronos {cmd}`");
        for sub in listed_commands(&[cmd]) {
            if sub == "help" {
                continue;
            }
            assert!(man.lines().any(|l| l == format!("    chronos {cmd} {sub}")), "the manual has no entry for `chronos {cmd} {sub}`");
        }
    }
    // Options appear with their explanation, and the environment is documented.
    assert!(man.contains("--backfill") && man.contains("Fill the new views from the events already stored (PostgreSQL and the archive)"));
    assert!(man.contains("Recompute a view from the raw events (PostgreSQL and the archive)"));
    assert!(man.contains("--follow") && man.contains("CHRONOS_<SECTION>__<KEY>") && man.contains("CHRONOS_CONFIG"));
    assert!(man.contains("3   `chronos status`: a service of the local stack is down."));
}

#[test]
fn help_for_one_command_and_unknown_commands() {
    let out = chronos(&["help", "views", "add"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("Usage: chronos views add [OPTIONS] <FILE>") && text.contains("--check"), "{text}");
    assert!(!text.contains("NAME\n"), "one command's help, not the whole manual");

    let bad = chronos(&["help", "views", "nope"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("`chronos views nope` is not a command; known: list, add, drop"), "{err}");

    let leaf = chronos(&["help", "status", "extra"]);
    assert!(String::from_utf8_lossy(&leaf.stderr).contains("`chronos status` has no subcommands"));
}

#[test]
fn every_command_has_help() {
    for cmd in listed_commands(&[]) {
        let out = chronos(&[&cmd, "--help"]);
        assert!(out.status.success() && !stdout(&out).is_empty(), "`chronos {cmd} --help`");
    }
}

/// `chronos … | head` closes the pipe early: chronos ends quietly, as other
/// command-line tools do, instead of panicking on the next write.
#[test]
fn a_closed_stdout_pipe_ends_chronos_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // closed before chronos writes: its first write fails
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chronos"))
        .current_dir(dir.path())
        .env_remove("CHRONOS_CONFIG")
        .args(["install-pipeline", "--print-sql"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}
