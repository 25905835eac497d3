//! The Debian package, built by deploy/debian/build-deb from the binary under test and
//! installed with `dpkg -i` into a clean Debian root (debootstrap, with systemd so the unit can
//! be verified there): its files, the `bastion` system user, `systemd-analyze verify` of the
//! installed unit, `bastion validate` on the shipped config, an upgrade that keeps a changed
//! config, and a purge that removes the user, the state and the config.

use crate::common::debian::{cached_tree, require_root, Root};
use crate::common::process::scratch_dir;
use crate::common::tools::systemd_analyze;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// deploy/debian/build-deb on the test binary (uncompressed: it is installed at once).
fn build_deb(out: &Path, revision: u32) -> PathBuf {
    let started = Instant::now();
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/debian/build-deb"
    ))
    .args(["--binary", env!("CARGO_BIN_EXE_bastion"), "--out"])
    .arg(out)
    .args(["--revision", &revision.to_string(), "--compress", "none"])
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "build-deb: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("build-deb took {:.1}s", started.elapsed().as_secs_f64());
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// Copies a .deb into the root's /tmp and returns its path there.
fn stage(root: &Root, deb: &Path) -> String {
    let name = deb.file_name().unwrap().to_str().unwrap();
    std::fs::copy(deb, root.file("/tmp").join(name)).unwrap();
    format!("/tmp/{name}")
}

#[test]
fn the_deb_installs_upgrades_keeping_a_changed_config_and_purges() {
    require_root("the package test");
    let tree = cached_tree();
    let scratch = scratch_dir("deb");
    let first = build_deb(&scratch, 1);
    let root = Root::copy_of(&tree, &scratch);

    let deb = stage(&root, &first);
    let installed = root.ok(&["dpkg", "-i", &deb]);
    assert!(
        installed.contains("Setting up bastion (0.1.0-1)"),
        "{installed}"
    );

    // The files.
    let binary = std::fs::metadata(root.file("/usr/bin/bastion")).unwrap();
    assert!(binary.permissions().mode() & 0o111 != 0);
    for path in [
        "/lib/systemd/system/bastion.service",
        "/etc/bastion/bastion.toml",
        "/usr/share/doc/bastion/README.md",
        "/usr/share/doc/bastion/copyright",
        "/usr/share/man/man1/bastion.1.gz",
        "/usr/share/man/man1/bastion-run.1.gz",
        "/usr/share/bash-completion/completions/bastion",
        "/usr/share/zsh/vendor-completions/_bastion",
        "/usr/share/fish/vendor_completions.d/bastion.fish",
        "/usr/share/bastion/bastion.schema.json",
    ] {
        assert!(root.file(path).is_file(), "{path} is missing");
    }
    let conffiles = root.ok(&["dpkg-query", "-W", "-f=${Conffiles}", "bastion"]);
    assert!(
        conffiles.contains("/etc/bastion/bastion.toml"),
        "{conffiles}"
    );
    let unit = std::fs::read_to_string(root.file("/lib/systemd/system/bastion.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/bastion run --config /etc/bastion/bastion.toml"),
        "{unit}"
    );
    // The static user that owns /var/lib/bastion runs it, not a dynamic one.
    assert!(unit.contains("\nUser=bastion\nGroup=bastion\n"), "{unit}");
    assert!(!unit.contains("DynamicUser="), "{unit}");
    let version = root.ok(&["bastion", "--version"]);
    assert!(version.starts_with("bastion 0.1.0\ncommit: "), "{version}");

    // The user: a system account without a login shell, owning the state directory.
    let passwd = root.ok(&["getent", "passwd", "bastion"]);
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "not a system uid: {passwd}");
    assert_eq!(fields[5], "/var/lib/bastion", "{passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    let state = std::fs::metadata(root.file("/var/lib/bastion")).unwrap();
    assert_eq!(state.uid(), uid);
    assert_eq!(state.permissions().mode() & 0o777, 0o750);

    // Installed, not enabled or started: nothing probes until the operator says so.
    assert!(!root
        .file("/etc/systemd/system/multi-user.target.wants/bastion.service")
        .exists());

    // The shipped config is valid and listens on localhost only.
    let valid = root.ok(&[
        "bastion",
        "validate",
        "--config",
        "/etc/bastion/bastion.toml",
    ]);
    assert_eq!(valid.trim(), "/etc/bastion/bastion.toml: valid, 1 check(s)");
    let config = std::fs::read_to_string(root.file("/etc/bastion/bastion.toml")).unwrap();
    assert!(config.contains("listen = \"127.0.0.1:9464\""), "{config}");
    // Editors find the installed schema from the config's first line, and it is the binary's.
    assert!(
        config.starts_with("#:schema file:///usr/share/bastion/bastion.schema.json\n"),
        "{config}"
    );
    let schema =
        std::fs::read_to_string(root.file("/usr/share/bastion/bastion.schema.json")).unwrap();
    assert_eq!(schema, root.ok(&["bastion", "config", "schema"]));

    // systemd (the root's own) accepts the installed unit.
    let verify = Command::new(systemd_analyze())
        .arg("verify")
        .arg(format!("--root={}", root.path.display()))
        .arg("/lib/systemd/system/bastion.service")
        .env("SYSTEMD_PAGER", "")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "verify failed: {report}");
    let ours: Vec<&str> = report
        .lines()
        .filter(|line| line.contains("bastion"))
        .collect();
    assert!(ours.is_empty(), "verify warns about the unit: {ours:#?}");

    // An upgrade to a new revision keeps the operator's config and the user.
    let changed = config.replace("127.0.0.1:9464", "127.0.0.1:9555");
    std::fs::write(root.file("/etc/bastion/bastion.toml"), &changed).unwrap();
    let second = build_deb(&scratch, 2);
    let deb = stage(&root, &second);
    let upgraded = root.ok(&["dpkg", "-i", &deb]);
    assert!(
        upgraded.contains("Unpacking bastion (0.1.0-2) over (0.1.0-1)"),
        "{upgraded}"
    );
    assert_eq!(
        std::fs::read_to_string(root.file("/etc/bastion/bastion.toml")).unwrap(),
        changed
    );
    assert_eq!(root.ok(&["getent", "passwd", "bastion"]), passwd);
    assert_eq!(
        root.ok(&["dpkg-query", "-W", "-f=${Version}", "bastion"]),
        "0.1.0-2"
    );

    // Purge: the package, its config, its state and its user are gone.
    root.ok(&["dpkg", "--purge", "bastion"]);
    for path in [
        "/usr/bin/bastion",
        "/lib/systemd/system/bastion.service",
        "/etc/bastion",
        "/var/lib/bastion",
    ] {
        assert!(!root.file(path).exists(), "{path} survived the purge");
    }
    let user = root.run(&["getent", "passwd", "bastion"]);
    assert_eq!(user.status.code(), Some(2), "the user survived the purge");
    let group = root.run(&["getent", "group", "bastion"]);
    assert_eq!(group.status.code(), Some(2), "the group survived the purge");

    drop(root);
    let _ = std::fs::remove_dir_all(scratch);
}
