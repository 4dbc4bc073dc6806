//! The container-init recipe (`scripts/init/bootseer-init`) end to end: a real registry holds the
//! image and the dependency snapshots, a real MiniDFS the checkpoint; the job runs chrooted in
//! the stacked tree and must see all three. Also the shipped fstab lines and systemd units.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use bootseer_common::testing::minidfs::{MiniDfs, MiniDfsConfig};
use bootseer_common::testing::registry::Registry;
use bootseer_common::testing::require_real;
use sha2::{Digest as _, Sha256};
use support::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo").to_path_buf()
}

fn bin_dir() -> PathBuf {
    Path::new(bin()).parent().expect("bin dir").to_path_buf()
}

/// A root a chroot can run: busybox as /bin/sh, the usual mount points.
fn tiny_root(dir: &Path) {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "opt", "mnt/ckpt"] {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox");
    std::os::unix::fs::symlink("busybox", dir.join("bin/sh")).expect("sh");
    std::fs::write(dir.join("etc/resolv.conf"), "").expect("resolv");
    std::fs::write(dir.join("etc/image-release"), "tiny 1\n").expect("release");
}

fn mounted_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .expect("mounts")
        .lines()
        .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
        .filter(|p| p.starts_with(&d))
        .collect()
}

#[test]
fn the_init_recipe_starts_a_job_on_image_deps_and_checkpoint_and_unmounts_after() {
    let Some(()) = require_real("FUSE and overlayfs (root)", can_mount()) else { return };
    let Some(()) = require_real(
        "busybox-static",
        Path::new("/bin/busybox")
            .exists()
            .then_some(())
            .ok_or_else(|| anyhow::anyhow!("no /bin/busybox")),
    ) else {
        return;
    };
    let Some(registry) = require_real("docker-registry", Registry::start()) else { return };
    let Some(dfs) = require_real("MiniDFS", MiniDfs::start(MiniDfsConfig::default())) else {
        return;
    };
    let s = Scratch::new();
    let src = s.path("src");
    tiny_root(&src);
    let image = format!("{}:v1", registry.url("test/img"));
    let out = Command::new(bin_dir().join("bootseer-image"))
        .args(["convert", &format!("dir:{}", src.display()), &image, "--json"])
        .output()
        .expect("convert");
    ok(&out, "convert");

    // The checkpoint: 3 MiB + a bit in HDFS.
    let shard: Vec<u8> =
        (0..(3u32 << 20) + 1234).map(|i| (i.wrapping_mul(2246822519) >> 11) as u8).collect();
    let want = hex::encode(Sha256::digest(&shard));
    let ckpt = format!("{}/ckpt", dfs.uri().trim_end_matches('/'));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = bootseer_common::store::open(&ckpt, &Default::default()).await.expect("hdfs");
        store.put("shard-0.bin", bytes::Bytes::from(shard.clone())).await.expect("put");
    });

    let rootfs = s.path("rootfs");
    let sums = s.path("summaries");
    let init = |job: &[&str]| {
        Command::new("bash")
            .arg(repo().join("scripts/init/bootseer-init"))
            .args(["--image", &image, "--rootfs", &rootfs.display().to_string()])
            .args(["--cache-dir", &s.path("cache").display().to_string()])
            .args(["--summaries", &sums.display().to_string()])
            .args(["--deps-store", &registry.url("test/deps")])
            .args(["--deps-cmd", "echo dep-v1 > /opt/dep.txt && rm /etc/image-release"])
            .args(["--ckpt", &ckpt, "--ckpt-at", "/mnt/ckpt", "--ckpt-prefetch", "*.bin"])
            .args(["--bin-dir", &bin_dir().display().to_string(), "--"])
            .args(job)
            .output()
            .expect("bootseer-init")
    };
    let job = [
        "/bin/sh",
        "-c",
        "cat /opt/dep.txt; test ! -e /etc/image-release && echo deleted; /bin/busybox sha256sum /mnt/ckpt/shard-0.bin; test -e /proc/self/status && echo proc",
    ];
    for (round, outcome) in [(1, "miss"), (2, "hit")] {
        let out = init(&job);
        let stdout = ok(&out, &format!("init round {round}"));
        assert!(stdout.contains("dep-v1\ndeleted\n"), "round {round}: {stdout}");
        assert!(stdout.contains(&want), "round {round}: checkpoint bytes differ: {stdout}");
        assert!(stdout.contains("proc\n"), "{stdout}");
        assert_eq!(
            mounted_under(s.dir.path()),
            Vec::<String>::new(),
            "round {round}: left mounted"
        );
        let deps: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sums.join("deps.json")).expect("deps.json"))
                .expect("json");
        assert_eq!(deps["steps"][0]["outcome"], outcome, "round {round}: {deps}");
        for name in ["image.json", "deps.json.step-1.json", "ckpt.json"] {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(sums.join(name)).expect(name)).expect("json");
            let events = v["timeline"]["events"].as_array().map(Vec::len).unwrap_or(0);
            assert!(events >= 4, "{name}: timeline {}", v["timeline"]);
        }
        // `--ckpt-prefetch '*.bin'` reached the daemon: the shard was queued at mount.
        let ckpt: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sums.join("ckpt.json")).expect("ckpt.json"))
                .expect("json");
        assert_eq!(ckpt["prefetched_at_mount_files"], 1, "round {round}: {ckpt}");
        assert_eq!(ckpt["prefetched_at_mount_bytes"], shard.len(), "round {round}: {ckpt}");
    }

    // The report over this node's summaries: every filesystem has its phases and a share.
    let out = Command::new(bin())
        .args([
            "report",
            &sums.display().to_string(),
            "--svg",
            &s.path("start.svg").display().to_string(),
        ])
        .output()
        .expect("report");
    let text = ok(&out, "report");
    // (No "ckpt: mount → last stall" to expect: with --ckpt-prefetch the job's reads of the
    // shard may all be answered from memory, and then none stalled.)
    for kind in [
        "image: mount → ready",
        "deps: mount → first read",
        "ckpt: mount → first read",
        "ckpt: reads waited",
    ] {
        assert!(text.contains(kind), "{kind} missing:\n{text}");
    }
    let svg = std::fs::read_to_string(s.path("start.svg")).expect("svg");
    assert!(svg.contains("<svg") && svg.contains("ckpt"), "{svg}");

    // The job's status is the init's, and everything is unmounted after a failing job too.
    let out = init(&["/bin/sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mounted_under(s.dir.path()), Vec::<String>::new());
}

#[test]
fn the_shipped_fstab_lines_mount_through_mount_fuse3_and_the_units_verify() {
    let Some(()) = require_real("FUSE and overlayfs (root)", can_mount()) else { return };
    let s = Scratch::new();
    // A layer to mount: a tiny snapshot made the usual way.
    let store = format!("file://{}", s.path("store").display());
    let target = s.path("t");
    std::fs::create_dir_all(&target).expect("target");
    let ts = target.display().to_string();
    let script = format!("echo from-fstab > {ts}/hello");
    let run = ok(&s.run(&store, &target, &[], &["sh", "-c", &script]), "run");
    let key = keys(&run)[0].clone();
    ok(&s.umount(&target), "umount");

    // mount(8) runs helpers with its own PATH: binaries are installed in /usr/local/bin, as
    // the examples say. Link this build there for the test.
    for name in ["bootseer-deps", "bootseer-image", "bootseer-ckpt"] {
        let link = Path::new("/usr/local/bin").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(bin_dir().join(name), &link).expect("link into /usr/local/bin");
    }
    // The example's deps line, pointed at this store and key.
    let example =
        std::fs::read_to_string(repo().join("scripts/init/fstab.example")).expect("example");
    let line = example
        .lines()
        .find(|l| l.contains("fuse.bootseer-deps"))
        .expect("a deps line in the example");
    let mnt = s.path("fstab-mnt");
    std::fs::create_dir_all(&mnt).expect("mnt");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let options =
        fields[3].replace("/var/cache/bootseer/deps", &s.path("cache").display().to_string());
    let fstab = s.path("fstab");
    std::fs::write(
        &fstab,
        format!("{store}/deps:{key} {} {} {options} 0 0\n", mnt.display(), fields[2]),
    )
    .expect("fstab");
    let out =
        Command::new("mount").arg("--fstab").arg(&fstab).arg(&mnt).output().expect("mount --fstab");
    ok(&out, "mount --fstab");
    assert_eq!(std::fs::read_to_string(mnt.join("hello")).expect("hello"), "from-fstab\n");
    let findmnt = Command::new("findmnt")
        .arg("-n")
        .arg("-o")
        .arg("FSTYPE,OPTIONS")
        .arg(&mnt)
        .output()
        .expect("findmnt");
    let shown = ok(&findmnt, "findmnt");
    assert!(shown.contains("nosuid") && shown.contains("nodev"), "{shown}");
    // Through mount(8) too, the mount is findable by its type (`findmnt -t fuse.bootseer-deps`).
    assert!(shown.starts_with("fuse.bootseer-deps "), "{shown}");
    bootseer_common::mount::unmount(&mnt).expect("unmount");

    // The units: systemd-analyze verify checks names (Where= matches the file), keys and types.
    let Some(()) = require_real(
        "systemd-analyze (package systemd)",
        which("systemd-analyze").then_some(()).ok_or_else(|| anyhow::anyhow!("not installed")),
    ) else {
        return;
    };
    for unit in ["mnt-image.mount", "mnt-ckpt.mount"] {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(repo().join("scripts/init").join(unit))
            .output()
            .expect("systemd-analyze");
        ok(&out, unit);
        assert!(out.stderr.is_empty(), "{unit}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}
