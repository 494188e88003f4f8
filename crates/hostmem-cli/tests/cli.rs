//! Completions and the man page come from the same clap definition the binary parses
//! with: every subcommand and every flag is in each, and the binary prints them.

use std::process::Command;

use clap::CommandFactory;
use hostmem_cli::cli::{completions, man_page, Cli, Shell};

/// Every subcommand name and every long flag of the command line, walked from clap.
fn names() -> (Vec<String>, Vec<String>) {
    let cmd = Cli::command();
    let mut subs = Vec::new();
    let mut flags = Vec::new();
    for sub in cmd.get_subcommands() {
        subs.push(sub.get_name().to_string());
        for a in sub.get_arguments() {
            if let Some(long) = a.get_long() {
                flags.push(long.to_string());
            }
        }
    }
    for a in cmd.get_arguments() {
        if let Some(long) = a.get_long() {
            flags.push(long.to_string());
        }
    }
    (subs, flags)
}

#[test]
fn the_walk_sees_the_subcommands_and_flags_it_must() {
    let (subs, flags) = names();
    for s in ["run", "host", "completions", "man"] {
        assert!(subs.iter().any(|x| x == s), "{s} in {subs:?}");
    }
    for f in [
        "object",
        "machine",
        "mem-prealloc",
        "json",
        "hold",
        "qmp",
        "check",
        "qemu-cmdline",
    ] {
        assert!(flags.iter().any(|x| x == f), "{f} in {flags:?}");
    }
}

#[test]
fn each_shells_completions_name_every_subcommand_and_flag() {
    let (subs, flags) = names();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let text = String::from_utf8(completions(shell)).unwrap();
        for s in &subs {
            assert!(
                text.contains(s.as_str()),
                "{shell:?}: subcommand {s} missing"
            );
        }
        for f in &flags {
            // fish lists long options without their dashes (`-l object`).
            let found = text.contains(&format!("--{f}")) || text.contains(&format!("-l {f}"));
            assert!(found, "{shell:?}: flag --{f} missing");
        }
    }
}

#[test]
fn the_man_page_names_every_subcommand_and_flag() {
    let (subs, flags) = names();
    let page = String::from_utf8(man_page().unwrap()).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH hostmem"),
        "{page}"
    );
    for s in &subs {
        // roff escapes each dash (`uffd\-handler`).
        assert!(
            page.contains(&s.replace('-', "\\-")),
            "subcommand {s} missing"
        );
    }
    for f in &flags {
        // roff escapes each dash.
        let roff = format!("\\-\\-{}", f.replace('-', "\\-"));
        assert!(page.contains(&roff), "flag --{f} missing");
    }
}

#[test]
fn the_binary_prints_what_the_library_generates() {
    let bin = env!("CARGO_BIN_EXE_hostmem");
    let out = Command::new(bin)
        .args(["completions", "zsh"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, completions(Shell::Zsh));
    let out = Command::new(bin).arg("man").output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, man_page().unwrap());
    let out = Command::new(bin)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error exits 2");
}
