//! Compiles the BPF program into a skeleton (OUT_DIR/tcpstates.skel.rs).

use std::env;
use std::path::PathBuf;
use std::process::{Command, exit};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/tcpstates.bpf.c";
const HEADER: &str = "src/bpf/tcpstates.h";

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

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("tcpstates.skel.rs");
    let result = SkeletonBuilder::new()
        .source(SRC)
        .clang_args([std::ffi::OsString::from("-I"), vmlinux_dir.clone().into()])
        .build_and_generate(&out);
    if let Err(err) = result {
        fail(&format!("compiling {SRC} failed: {err:#}"));
    }

    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed={HEADER}");
    println!("cargo:rerun-if-changed=vmlinux");
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
