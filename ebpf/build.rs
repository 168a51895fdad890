//! Compiles the BPF programs in bpf/*.c with clang into OUT_DIR; src/loader.rs embeds them.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const PROGRAMS: &[&str] = &["bpf_lxc", "bpf_overlay", "bpf_tunnel"];

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bpf_dir = manifest.join("bpf");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());

    rerun_on_sources(&bpf_dir);
    println!("cargo:rerun-if-env-changed=CLANG");

    match Command::new(&clang).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => fail(&format!(
            "`{clang}` not found or not working: membrane-ebpf compiles its BPF programs with clang. \
             Run scripts/deps.sh (as root) to install clang, llvm and libbpf-dev, or set CLANG=/path/to/clang."
        )),
    }

    // The multiarch directory holds asm/types.h, which linux/types.h needs.
    let arch_include = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "/usr/include/x86_64-linux-gnu",
        Ok("aarch64") => "/usr/include/aarch64-linux-gnu",
        Ok("riscv64") => "/usr/include/riscv64-linux-gnu",
        _ => "/usr/include",
    };
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        fail(
            "/usr/include/bpf/bpf_helpers.h is missing: run scripts/deps.sh (installs libbpf-dev).",
        );
    }

    for name in PROGRAMS {
        let src = bpf_dir.join(format!("{name}.c"));
        let obj = out.join(format!("{name}.o"));
        let output = Command::new(&clang)
            // v3: atomic OR/fetch on 32-bit words (conntrack flags) and jmp32; every
            // kernel with TCX (>= 6.6, which the loader requires) has it.
            .args(["-O2", "-g", "-Wall", "-target", "bpf", "-mcpu=v3"])
            .arg(format!("-I{arch_include}"))
            .arg("-I")
            .arg(&bpf_dir)
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .output();
        match output {
            Ok(o) if o.status.success() => {
                // Surface warnings without failing the build.
                for line in String::from_utf8_lossy(&o.stderr).lines() {
                    println!("cargo:warning={line}");
                }
            }
            Ok(o) => fail(&format!(
                "clang failed to compile {}:\n{}",
                src.display(),
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => fail(&format!("could not run {clang}: {e}; run scripts/deps.sh")),
        }
    }
}

fn rerun_on_sources(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rerun_on_sources(&path);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("c" | "h")) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    for line in msg.lines() {
        println!("cargo:warning={line}");
    }
    std::process::exit(1);
}
