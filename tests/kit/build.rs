//! Compiles the ground truth's BPF program into a skeleton
//! (OUT_DIR/groundtruth.skel.rs), against the product's vmlinux.h.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/groundtruth.bpf.c";

fn main() {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let vmlinux = manifest.join("../../vmlinux");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let result = SkeletonBuilder::new()
        .source(SRC)
        .clang_args([std::ffi::OsString::from("-I"), vmlinux.join(&arch).into()])
        .build_and_generate(out.join("groundtruth.skel.rs"));
    if let Err(err) = result {
        println!("cargo:warning=compiling {SRC} failed: {err:#}");
        std::process::exit(1);
    }
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed={}", vmlinux.display());
}
