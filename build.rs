//! Build facts for `bastion --version` and `bastion_build_info`: the git commit the binary is
//! built from and the target triple. Outside a git checkout (a source tarball, a container
//! build context without .git) the commit comes from `BASTION_GIT_COMMIT`, else reads
//! `unknown`. This script never fails the build, and never names a path that does not exist
//! for cargo to watch (cargo reruns a script on every build while one is missing, and so
//! rebuilds the crate). `tests/it/build_script.rs` tests [`watched_paths`].

use std::path::{Path, PathBuf};
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

/// What to watch so the commit is read again when HEAD moves, and only then: HEAD itself
/// (in a worktree, the worktree's own), the branch's loose ref, and `packed-refs`, each
/// only if it exists. A branch without a loose ref (packed, or not yet born in a fresh `git
/// init`) gets one when it moves, so then the nearest existing directory of `refs/` that
/// will hold it is watched instead. `branch` is `refs/heads/<name>`, None when detached.
pub fn watched_paths(git_dir: &Path, common_dir: &Path, branch: Option<&str>) -> Vec<PathBuf> {
    let mut paths = vec![git_dir.join("HEAD"), common_dir.join("packed-refs")];
    if let Some(branch) = branch {
        let loose = common_dir.join(branch);
        if loose.is_file() {
            paths.push(loose);
        } else {
            let refs = common_dir.join("refs");
            if let Some(directory) = loose
                .ancestors()
                .skip(1)
                .take_while(|directory| directory.starts_with(&refs))
                .find(|directory| directory.is_dir())
            {
                paths.push(directory.to_path_buf());
            }
        }
    }
    paths.retain(|path| path.exists());
    paths
}

fn main() {
    println!("cargo:rerun-if-env-changed=BASTION_GIT_COMMIT");
    let from_env = std::env::var("BASTION_GIT_COMMIT")
        .ok()
        .map(|commit| commit.trim().to_string())
        .filter(|commit| !commit.is_empty());
    let commit = from_env.or_else(|| {
        // Rebuild when HEAD moves. (In a worktree the git dir and the common dir differ.)
        if let (Some(git_dir), Some(common)) = (
            git(&["rev-parse", "--git-dir"]),
            git(&["rev-parse", "--git-common-dir"]),
        ) {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let branch = git(&["symbolic-ref", "-q", "HEAD"]);
            for path in watched_paths(&root.join(git_dir), &root.join(common), branch.as_deref()) {
                println!("cargo:rerun-if-changed={}", path.display());
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
