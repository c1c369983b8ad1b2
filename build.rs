//! Compiles the BPF program into a skeleton (OUT_DIR/tcpstates.skel.rs), and
//! generates the man page and shell completions from the clap definition
//! (target/<profile>/assets/), so that they never drift from `--help`.

use std::env;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, exit};

use clap::CommandFactory;
use clap_complete::Shell;
use libbpf_cargo::SkeletonBuilder;

// The command line's definition and the config types it names; only the
// definition is used here.
#[allow(dead_code)]
#[path = "src/args.rs"]
mod args;
#[allow(dead_code)]
#[path = "src/cause.rs"]
mod cause;
#[allow(dead_code)]
#[path = "src/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "src/state.rs"]
mod state;
/// config.rs names the web configuration's type; only its name is needed.
mod web {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct WebConfig;
}

/// The name the packages install the binary under: libbpf-tools owns
/// /usr/sbin/tcpstates and bpfcc-tools /usr/sbin/tcpstates-bpfcc.
const PACKAGED_NAME: &str = "tcpstates-rs";

const SRC: &str = "src/bpf/tcpstates.bpf.c";
/// The program's headers are beside it.
const BPF_DIR: &str = "src/bpf";

fn main() {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let vmlinux_dir = PathBuf::from("vmlinux").join(&arch);
    if !vmlinux_dir.join("vmlinux.h").is_file() {
        fail(&format!(
            "no {}/vmlinux.h for target arch {arch:?}: generate it as vmlinux/README.md says",
            vmlinux_dir.display()
        ));
    }
    check_tools();

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let result = SkeletonBuilder::new()
        .source(SRC)
        .clang_args([std::ffi::OsString::from("-I"), vmlinux_dir.into()])
        .build_and_generate(out_dir.join("tcpstates.skel.rs"));
    if let Err(err) = result {
        fail(&format!("compiling {SRC} failed: {err:#}"));
    }

    // OUT_DIR is target/<profile>/build/<crate>-<hash>/out.
    let assets = out_dir
        .ancestors()
        .nth(3)
        .expect("OUT_DIR is under target/<profile>")
        .join("assets");
    if let Err(err) = generate_docs(&assets) {
        fail(&format!(
            "writing the man page and completions to {}: {err}",
            assets.display()
        ));
    }

    println!("cargo:rerun-if-changed=src/args.rs");
    println!("cargo:rerun-if-changed=src/config.rs");
    println!("cargo:rerun-if-changed=src/state.rs");
    println!("cargo:rerun-if-changed={BPF_DIR}");
    println!("cargo:rerun-if-changed=vmlinux");
}

/// tcpstates-rs.8 and bash, zsh and fish completions, for the packaged name.
/// The manual's sections come from the definitions `--help` prints: the
/// options, and args.rs's examples, columns (FIELDS), exit status, files and
/// see-also.
fn generate_docs(assets: &Path) -> io::Result<()> {
    let mut cmd = args::Args::command()
        .name(PACKAGED_NAME)
        .bin_name(PACKAGED_NAME)
        .version(env!("CARGO_PKG_VERSION"));
    fs::create_dir_all(assets.join("completions"))?;
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    roff_section(&mut page, "FIELDS", args::COLUMNS)?;
    let examples: Vec<(String, &str)> = args::EXAMPLES
        .iter()
        .map(|(line, what)| {
            (
                format!("{PACKAGED_NAME} {line}").trim_end().to_owned(),
                *what,
            )
        })
        .collect();
    let examples: Vec<(&str, &str)> = examples.iter().map(|(l, w)| (l.as_str(), *w)).collect();
    roff_section(&mut page, "EXAMPLES", &examples)?;
    roff_section(&mut page, "EXIT STATUS", args::EXIT_STATUS)?;
    roff_section(&mut page, "FILES", args::FILES)?;
    writeln!(page, ".SH \"SEE ALSO\"\n{}", roff_text(args::SEE_ALSO))?;
    man.render_version_section(&mut page)?;
    fs::write(assets.join(format!("{PACKAGED_NAME}.8")), page)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, PACKAGED_NAME, assets.join("completions"))?;
    }
    Ok(())
}

/// A manual section of tagged paragraphs: each term in bold, then its text.
fn roff_section(page: &mut Vec<u8>, title: &str, items: &[(&str, &str)]) -> io::Result<()> {
    writeln!(page, ".SH \"{title}\"")?;
    for (term, text) in items {
        writeln!(
            page,
            ".TP\n\\fB{}\\fR\n{}",
            roff_text(term),
            roff_text(text)
        )?;
    }
    Ok(())
}

/// Text safe in roff: backslashes and hyphens escaped, no line starting
/// with a control character.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// libbpf-sys builds libbpf from source and the BPF C needs clang: say which
/// Debian packages are missing instead of failing deep inside a compiler.
fn check_tools() {
    let mut missing = Vec::new();
    if Command::new("clang").arg("--version").output().is_err() {
        missing.push("clang");
    }
    let pkg = |name: &str| {
        Command::new("pkg-config")
            .args(["--exists", name])
            .status()
            .is_ok_and(|s| s.success())
    };
    if Command::new("pkg-config")
        .arg("--version")
        .output()
        .is_err()
    {
        missing.push("pkg-config");
    } else {
        if !pkg("libelf") {
            missing.push("libelf-dev");
        }
        if !pkg("zlib") {
            missing.push("zlib1g-dev");
        }
    }
    if Command::new("make").arg("--version").output().is_err() {
        missing.push("make");
    }
    if !missing.is_empty() {
        fail(&format!(
            "missing build dependencies: run `apt-get install {}` (see README.md)",
            missing.join(" ")
        ));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    println!("cargo:warning={msg}");
    exit(1);
}
