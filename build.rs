//! Build facts for `bastion --version` and `bastion_build_info`: the git commit the binary is
//! built from and the target triple. Outside a git checkout (a source tarball, a container
//! build context without .git) the commit comes from `BASTION_GIT_COMMIT`, else reads
//! `unknown`. This script never fails the build.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=BASTION_GIT_COMMIT");
    let from_env = std::env::var("BASTION_GIT_COMMIT")
        .ok()
        .map(|commit| commit.trim().to_string())
        .filter(|commit| !commit.is_empty());
    let commit = from_env.or_else(|| {
        // Rebuild when HEAD moves: HEAD itself, the branch it points at, and packed refs.
        // (In a worktree the git dir and the common dir differ.)
        if let (Some(git_dir), Some(common)) = (
            git(&["rev-parse", "--git-dir"]),
            git(&["rev-parse", "--git-common-dir"]),
        ) {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            println!(
                "cargo:rerun-if-changed={}",
                root.join(&git_dir).join("HEAD").display()
            );
            println!(
                "cargo:rerun-if-changed={}",
                root.join(&common).join("packed-refs").display()
            );
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                println!(
                    "cargo:rerun-if-changed={}",
                    root.join(&common).join(branch).display()
                );
            }
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    println!(
        "cargo:rustc-env=BASTION_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_string());
    println!("cargo:rustc-env=BASTION_TARGET={target}");
}
