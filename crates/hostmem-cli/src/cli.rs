//! The command line: the clap definition of `hostmem` and its subcommands, in the
//! library so the completions, the man page and the tests read the very same
//! definition the binary parses with.

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::{exporter, host, image, run, uffd, vm};

/// `hostmem`'s command line.
#[derive(Parser)]
#[command(
    name = "hostmem",
    version,
    about = "Host memory backends for virtual machines: QEMU's memory-backend-* objects, placed, preallocated and read back from the kernel",
    after_help = "QEMU-style single-dash options (-object, -machine, -mem-prealloc, -qmp) are accepted as well.\n\nExit status: 0 done; 1 a bad spec, a failed allocation, --check finding a problem, or a backend not deleted; 2 a command-line usage error; 128+N stopped by signal N while allocating."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Create backends, preallocate them together and report what the kernel says.
    #[command(after_help = run::EXAMPLES)]
    Run(run::RunArgs),
    /// Show the host as hostmem sees it: NUMA nodes, huge page pools, THP, KSM, features.
    #[command(after_help = host::EXAMPLES)]
    Host(host::HostArgs),
    /// A running QEMU's memory backends, node by node, read from the kernel; `rebind` moves one.
    #[command(after_help = vm::EXAMPLES)]
    Vm(vm::VmArgs),
    /// Serve every VM's memory placement and the host's room as OpenMetrics (Prometheus).
    #[command(after_help = exporter::EXAMPLES)]
    Exporter(exporter::ExporterArgs),
    /// A snapshot image of guest memory: its layout (`info`), its checksums (`verify`).
    #[command(after_help = image::EXAMPLES)]
    Image(image::ImageArgs),
    /// Firecracker's page-fault handler: serve a snapshot's memory to each VM that loads it with `"backend_type": "Uffd"`.
    #[command(name = "uffd-handler", after_help = uffd::EXAMPLES)]
    UffdHandler(uffd::UffdArgs),
    /// Print a shell completion script for hostmem on stdout.
    #[command(after_help = COMPLETION_EXAMPLES)]
    Completions {
        /// The shell to complete in.
        shell: Shell,
    },
    /// Print hostmem's man page (roff) on stdout.
    #[command(after_help = "Example:\n  hostmem man > /usr/local/share/man/man1/hostmem.1")]
    Man,
}

const COMPLETION_EXAMPLES: &str = "Examples:
  hostmem completions bash > /etc/bash_completion.d/hostmem
  hostmem completions zsh > \"${fpath[1]}/_hostmem\"
  hostmem completions fish > ~/.config/fish/completions/hostmem.fish";

/// Shells hostmem writes completions for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
    /// Elvish.
    Elvish,
    /// PowerShell.
    Powershell,
}

impl Shell {
    fn generator(self) -> clap_complete::Shell {
        match self {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
            Shell::Elvish => clap_complete::Shell::Elvish,
            Shell::Powershell => clap_complete::Shell::PowerShell,
        }
    }
}

/// QEMU spells its options with one dash; clap wants two. A QEMU command line after
/// `--` is left as it is.
pub fn qemu_style(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut after_dashes = false;
    args.map(|a| {
        if after_dashes {
            return a;
        }
        match a.as_str() {
            "--" => {
                after_dashes = true;
                a
            }
            "-object" | "-machine" | "-mem-prealloc" | "-qmp" => format!("-{a}"),
            _ => a,
        }
    })
    .collect()
}

/// The completion script for `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell.generator(), &mut Cli::command(), "hostmem", &mut out);
    out
}

/// The man page, as roff: the main page with a section per subcommand.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    let cmd = Cli::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        // Each subcommand's options, after the main page's own sections.
        let mut section = Vec::new();
        clap_mangen::Man::new(sub.clone()).render_options_section(&mut section)?;
        writeln!(out, ".SH \"HOSTMEM {}\"", sub.get_name().to_uppercase())?;
        if let Some(about) = sub.get_about() {
            writeln!(out, "{about}")?;
        }
        out.extend(section);
    }
    Ok(out)
}

/// Runs the parsed command line; the exit status is the README's.
pub fn main(cli: Cli) -> ExitCode {
    let printed = match cli.command {
        Command::Run(a) => return run::main(a),
        Command::Host(a) => return host::main(a),
        Command::Vm(a) => return vm::main(a),
        Command::Exporter(a) => return exporter::main(a),
        Command::Image(a) => return image::main(a),
        Command::UffdHandler(a) => return uffd::main(a),
        Command::Completions { shell } => Ok(completions(shell)),
        Command::Man => man_page(),
    };
    let mut out = std::io::stdout().lock();
    match printed.and_then(|text| out.write_all(&text).and_then(|_| out.flush())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostmem: {e}");
            ExitCode::from(1)
        }
    }
}
