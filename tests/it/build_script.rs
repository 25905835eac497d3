//! `build.rs`, compiled here as a module: the paths it asks cargo to watch exist, in the
//! layouts a checkout can have (fresh `git init`, loose and packed refs, a worktree, a
//! detached HEAD). A watched path that does not exist makes cargo rerun the script on every
//! build, and so rebuild the crate: 2 min 45 s of `cargo build --release` for nothing.

#[allow(dead_code)]
#[path = "../../build.rs"]
mod build;

use build::watched_paths;
use std::path::{Path, PathBuf};

/// A fake `.git` directory with `files` (relative path, contents) and the empty `refs/heads`
/// every repository has.
fn git_dir(files: &[(&str, &str)]) -> PathBuf {
    let dir = crate::common::process::scratch_dir("build-script").join(".git");
    std::fs::create_dir_all(dir.join("refs/heads")).unwrap();
    std::fs::create_dir_all(dir.join("refs/tags")).unwrap();
    for (path, contents) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    dir
}

fn relative(dir: &Path, paths: Vec<PathBuf>) -> Vec<String> {
    paths
        .iter()
        .map(|path| {
            assert!(
                path.exists(),
                "{} is watched but does not exist",
                path.display()
            );
            path.strip_prefix(dir).unwrap().display().to_string()
        })
        .collect()
}

const SHA: &str = "0123456789abcdef0123456789abcdef01234567\n";

#[test]
fn a_fresh_git_init_without_packed_refs_watches_only_what_exists() {
    // `git init`: HEAD names a branch that has no commit yet, and nothing is packed.
    let git = git_dir(&[("HEAD", "ref: refs/heads/main\n")]);
    let watched = watched_paths(&git, &git, Some("refs/heads/main"));
    assert_eq!(relative(&git, watched), ["HEAD", "refs/heads"]);
    // The first commit makes the loose ref: now it is watched, and still no packed-refs.
    std::fs::write(git.join("refs/heads/main"), SHA).unwrap();
    let watched = watched_paths(&git, &git, Some("refs/heads/main"));
    assert_eq!(relative(&git, watched), ["HEAD", "refs/heads/main"]);
}

#[test]
fn packed_refs_are_watched_when_they_exist() {
    // `git pack-refs --all`: the branch lives in packed-refs only.
    let git = git_dir(&[
        ("HEAD", "ref: refs/heads/feature/x\n"),
        (
            "packed-refs",
            &format!("{} refs/heads/feature/x\n", SHA.trim()),
        ),
    ]);
    let watched = watched_paths(&git, &git, Some("refs/heads/feature/x"));
    // Its next commit writes refs/heads/feature/x, under the nearest directory that exists.
    assert_eq!(
        relative(&git, watched),
        ["HEAD", "packed-refs", "refs/heads"]
    );
    // Detached: HEAD holds the commit itself.
    let watched = watched_paths(&git, &git, None);
    assert_eq!(relative(&git, watched), ["HEAD", "packed-refs"]);
}

#[test]
fn a_worktree_watches_its_own_head_and_the_shared_refs() {
    let common = git_dir(&[("refs/heads/config", SHA)]);
    let worktree = common.join("worktrees/config");
    std::fs::create_dir_all(&worktree).unwrap();
    std::fs::write(worktree.join("HEAD"), "ref: refs/heads/config\n").unwrap();
    let watched = watched_paths(&worktree, &common, Some("refs/heads/config"));
    assert_eq!(
        relative(&common, watched),
        ["worktrees/config/HEAD", "refs/heads/config"]
    );
}

#[test]
fn this_checkout_watches_only_paths_that_exist() {
    let git = |args: &[&str]| {
        let output = std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|output| output.status.success())?;
        Some(String::from_utf8(output.stdout).ok()?.trim().to_string())
    };
    let (Some(git_dir), Some(common)) = (
        git(&["rev-parse", "--git-dir"]),
        git(&["rev-parse", "--git-common-dir"]),
    ) else {
        // A source tarball: the script watches nothing.
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = watched_paths(&root.join(git_dir), &root.join(common), branch.as_deref());
    assert!(!watched.is_empty());
    for path in watched {
        assert!(path.exists(), "{} does not exist", path.display());
    }
}
