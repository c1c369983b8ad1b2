//! Compiles the BPF program into a skeleton (OUT_DIR/tcpstates.skel.rs), and
//! generates the man page and shell completions from the clap definition
//! (target/<profile>/assets/), so that they never drift from `--help`.

use std::env;
use std::fs::{self, File};
use std::io;
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
#[path = "src/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "src/state.rs"]
mod state;

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
fn generate_docs(assets: &Path) -> io::Result<()> {
    let examples = args::EXAMPLES.replace("    tcpstates ", &format!("    {PACKAGED_NAME} "));
    let mut cmd = args::Args::command()
        .name(PACKAGED_NAME)
        .bin_name(PACKAGED_NAME)
        .version(env!("CARGO_PKG_VERSION"))
        .after_help(examples);
    fs::create_dir_all(assets.join("completions"))?;
    let mut man = File::create(assets.join(format!("{PACKAGED_NAME}.8")))?;
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .render(&mut man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, PACKAGED_NAME, assets.join("completions"))?;
    }
    Ok(())
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
