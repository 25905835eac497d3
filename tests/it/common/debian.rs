//! Clean Debian roots for the packaging and container tests: a `debootstrap` tree built once
//! per machine and kept under `~/.cache/bastion/` (a minute or two the first time, instant
//! after), copied afresh for each test so every test starts from a clean system. Needs root
//! (debootstrap, chroot) and debootstrap itself; .ci/test installs it. A missing one fails the
//! test with what to do; it is never skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

/// The Debian release of the roots: the one the Dockerfile's runtime stage uses.
pub const SUITE: &str = "bookworm";

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    base.join("bastion")
}

pub fn require_root(what: &str) {
    let id = Command::new("id").arg("-u").output().expect("id runs");
    assert_eq!(
        String::from_utf8_lossy(&id.stdout).trim(),
        "0",
        "{what} needs root (debootstrap, chroot, dpkg); CI runs as root"
    );
}

/// The packages both the package and the container tests need on top of minbase: CA roots
/// (the image's https checks), systemd (to verify the installed unit) and procps (`kill`,
/// which the unit's ExecReload runs). One tree serves both, so a fresh machine runs
/// debootstrap once.
pub const INCLUDE: &str = "ca-certificates,systemd,procps";

/// The cached Debian root (minbase plus [`INCLUDE`]), built by debootstrap when absent. Tests
/// that need it at once wait for the first one to build it.
pub fn cached_tree() -> PathBuf {
    let dir = cache_dir();
    let name = format!("debian-{SUITE}-systemd");
    let tree = dir.join(&name);
    if tree.join("etc/debian_version").is_file() {
        return tree;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let lock = dir.join(format!("{name}.lock"));
    let deadline = Instant::now() + std::time::Duration::from_secs(900);
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                if tree.join("etc/debian_version").is_file() {
                    return tree;
                }
                // A lock left by a run that died: older than any debootstrap takes.
                let stale = std::fs::metadata(&lock)
                    .and_then(|metadata| metadata.modified())
                    .ok()
                    .and_then(|modified| modified.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(900));
                if stale {
                    let _ = std::fs::remove_file(&lock);
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(error) => panic!("waiting for {}: {error}", lock.display()),
        }
    }
    let built = build_tree(&dir, &name, &tree);
    let _ = std::fs::remove_file(&lock);
    built
}

fn build_tree(dir: &Path, name: &str, tree: &Path) -> PathBuf {
    if tree.join("etc/debian_version").is_file() {
        return tree.to_path_buf();
    }
    let include = INCLUDE;
    let debootstrap = ["/usr/sbin/debootstrap", "/sbin/debootstrap"]
        .into_iter()
        .map(Path::new)
        .find(|path| path.is_file())
        .expect("debootstrap is not installed: apt-get install debootstrap (.ci/test does)");
    let partial = dir.join(format!("{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let mirror = std::env::var("BASTION_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".to_string());
    let started = Instant::now();
    let output = Command::new(debootstrap)
        .args(["--variant=minbase", &format!("--include={include}"), SUITE])
        .arg(&partial)
        .arg(&mirror)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "debootstrap {SUITE} from {mirror} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "debootstrap of {name} took {:.0}s (cached in {})",
        started.elapsed().as_secs_f64(),
        tree.display()
    );
    if std::fs::rename(&partial, tree).is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    tree.to_path_buf()
}

/// A fresh copy of a cached tree, removed on drop.
pub struct Root {
    pub path: PathBuf,
}

impl Root {
    pub fn copy_of(tree: &Path, into: &Path) -> Root {
        let path = into.join("root");
        let status = Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(tree)
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "copying {}", tree.display());
        Root { path }
    }

    /// `chroot ROOT args...`, with a plain environment.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("chroot")
            .arg(&self.path)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap()
    }

    /// `run`, asserting success; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "chroot {args:?}: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A path inside the root.
    pub fn file(&self, path: &str) -> PathBuf {
        self.path.join(path.trim_start_matches('/'))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
