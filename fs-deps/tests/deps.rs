//! bootseer-deps end to end, through the real binary: real FUSE layer daemons, real kernel
//! overlayfs, real `pip` from a local wheelhouse, a real registry and a real MiniDFS as stores.
//! Every tree is compared with an independent std::fs walk of what the command left on a plain
//! disk (`cp -a` at the end of the command), never with what bootseer says it stored.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bootseer_common::testing::minidfs::{MiniDfs, MiniDfsConfig};
use bootseer_common::testing::registry::Registry;
use bootseer_common::testing::require_real;
use support::*;

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn is_mounted(p: &Path) -> bool {
    bootseer_common::mount::is_mounted(p)
}

fn python_out(venv: &Path, code: &str) -> String {
    let out = Command::new(venv.join("bin/python")).arg("-c").arg(code).output().expect("python");
    ok(&out, code)
}

const WORKLOAD: &str = "import numpy, safetensors.numpy, tqdm, six, io; \
    a = numpy.arange(12.0).reshape(3, 4); b = safetensors.numpy.save({'a': a}); \
    print(numpy.__version__, six.__version__, float(numpy.linalg.svd(a)[1].sum()), \
    safetensors.numpy.load(b)['a'].sum())";

#[test]
fn pip_install_miss_then_hit_is_entry_for_entry_the_installed_tree_and_imports_write_nothing() {
    let Some(()) = require_real("FUSE and overlayfs (root)", can_mount()) else { return };
    let Some(wh) = require_real("the Python wheelhouse", wheelhouse()) else { return };
    let s = Scratch::new();
    let store = format!("file://{}", s.path("store").display());
    let venv = s.path("venv");
    let out = Command::new("python3").arg("-m").arg("venv").arg(&venv).output().expect("venv");
    ok(&out, "python3 -m venv");
    let before = walk(&venv);
    let req = s.path("requirements.txt");
    std::fs::write(&req, "numpy\nsafetensors\ntqdm\nsix==1.16.0\n").expect("req");
    let reference = s.path("ref-miss");
    let install = format!(
        "{v}/bin/pip install -q --no-index --find-links {wh} -r {req} && cp -a {v} {r}",
        v = venv.display(),
        wh = wh.display(),
        req = req.display(),
        r = reference.display()
    );
    let cmd = sh(&install);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let req_s = req.display().to_string();
    let inputs = ["--input", req_s.as_str()];

    // Miss: pip runs, the result is published, and DIR shows it from the snapshot.
    let t = Instant::now();
    let miss = ok(&s.run(&store, &venv, &inputs, &cmd), "run (miss)");
    let miss_secs = t.elapsed().as_secs_f64();
    assert_eq!(outcomes(&miss), ["miss"]);
    assert!(is_mounted(&venv), "the venv is not covered after the miss");
    let want = walk(&reference);
    let got = walk(&venv);
    assert_eq!(diff(&want, &got), Vec::<String>::new(), "miss tree != what pip left on disk");
    eprintln!("fidelity: {} entries identical after the miss ({miss_secs:.1} s)", want.len());
    let expected = python_out(&venv, WORKLOAD);
    let tqdm =
        ok(&Command::new(venv.join("bin/tqdm")).arg("--version").output().expect("tqdm"), "tqdm");
    let top = state_of(&s.state(), &venv).join("top/upper");
    assert_eq!(files_under(&top), Vec::<String>::new(), "imports wrote to the writable top");
    ok(&s.umount(&venv), "umount");
    assert!(!is_mounted(&venv));
    assert_eq!(diff(&before, &walk(&venv)), Vec::<String>::new(), "umount left the venv changed");

    // Hit: nothing runs (the reference copy is not made again), the tree is the same.
    std::fs::remove_dir_all(&reference).expect("rm ref");
    let t = Instant::now();
    let hit = ok(&s.run(&store, &venv, &inputs, &cmd), "run (hit)");
    let hit_secs = t.elapsed().as_secs_f64();
    assert_eq!(outcomes(&hit), ["hit"]);
    assert_eq!(keys(&hit), keys(&miss));
    assert!(!reference.exists(), "the command ran on a hit");
    assert_eq!(
        diff(&want, &walk(&venv)),
        Vec::<String>::new(),
        "hit tree != what pip left on disk"
    );
    assert_eq!(python_out(&venv, WORKLOAD), expected);
    let tqdm_hit =
        ok(&Command::new(venv.join("bin/tqdm")).arg("--version").output().expect("tqdm"), "tqdm");
    assert_eq!(tqdm_hit, tqdm);
    assert_eq!(files_under(&top), Vec::<String>::new(), "imports after a hit wrote to the top");
    eprintln!("hit in {hit_secs:.2} s vs miss {miss_secs:.1} s");
    ok(&s.umount(&venv), "umount");

    // Two steps: step 1 is the install (a hit), step 2 upgrades six and uninstalls tqdm (a
    // miss); deletions and replacements from step 2 hide step 1's files through the mount.
    let reference2 = s.path("ref-step2");
    let step2 = format!(
        "{v}/bin/pip install -q --no-index --find-links {wh} --upgrade six==1.17.0 && \
         {v}/bin/pip uninstall -q -y tqdm && cp -a {v} {r}",
        v = venv.display(),
        wh = wh.display(),
        r = reference2.display()
    );
    let steps = serde_json::json!([
        {"command": sh(&install), "inputs": [req_s]},
        {"command": sh(&step2)},
    ]);
    let steps_file = s.path("steps.json");
    std::fs::write(&steps_file, steps.to_string()).expect("steps");
    let steps_arg = steps_file.display().to_string();
    let run_steps = |extra: &[&str]| {
        let state = s.state().display().to_string();
        let target = venv.display().to_string();
        let mut args = vec!["run", "--store", &store, "--target", &target, "--state-dir", &state];
        args.extend_from_slice(&["--steps", &steps_arg]);
        args.extend_from_slice(extra);
        Command::new(bin()).args(&args).output().expect("run steps")
    };
    let two = ok(&run_steps(&[]), "run (two steps)");
    assert_eq!(outcomes(&two), ["hit", "miss"]);
    assert_eq!(keys(&two)[0], keys(&miss)[0], "step 1's key changed");
    assert_eq!(diff(&walk(&reference2), &walk(&venv)), Vec::<String>::new(), "two-step tree");
    let six = python_out(&venv, "import six; print(six.__version__)");
    assert_eq!(six.trim(), "1.17.0");
    let site = venv.join("lib");
    let leftovers = files_under(&site);
    assert!(!leftovers.iter().any(|f| f.contains("six-1.16.0.dist-info")), "old dist-info visible");
    assert!(
        !leftovers.iter().any(|f| f.contains("site-packages/tqdm/")),
        "uninstalled tqdm visible"
    );
    assert!(!venv.join("bin/tqdm").exists(), "uninstalled console script visible");
    ok(&s.umount(&venv), "umount");
    // Again: both steps hit, nothing runs.
    std::fs::remove_dir_all(&reference2).expect("rm ref2");
    let again = ok(&run_steps(&[]), "run (two steps, again)");
    assert_eq!(outcomes(&again), ["hit", "hit"]);
    assert!(!reference2.exists(), "a hit ran its command");
    ok(&s.umount(&venv), "umount");

    // The layer daemons recorded a trace on their first hit and replay it on later ones.
    let summary = s.path("summary.json");
    let summary_s = summary.display().to_string();
    ok(&s.run(&store, &venv, &["--input", &req_s, "--summary", &summary_s], &cmd), "hit");
    python_out(&venv, WORKLOAD);
    ok(&s.umount(&venv), "umount");
    let layer: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{summary_s}.step-1.json")).expect("layer summary"),
    )
    .expect("json");
    assert!(layer["trace_stored"].is_string(), "the first hit stored no trace: {layer}");
    ok(&s.run(&store, &venv, &["--input", &req_s, "--summary", &summary_s], &cmd), "hit");
    python_out(&venv, WORKLOAD);
    ok(&s.umount(&venv), "umount");
    let replayed: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{summary_s}.step-1.json")).expect("layer summary"),
    )
    .expect("json");
    assert!(replayed["replay_blocks"].as_u64().unwrap_or(0) > 0, "no replay: {replayed}");
}

#[test]
fn explain_names_the_changed_file_env_and_salt_and_rm_forgets() {
    let Some(()) = require_real("FUSE and overlayfs (root)", can_mount()) else { return };
    let s = Scratch::new();
    let store = format!("file://{}", s.path("store").display());
    let target = s.path("t");
    std::fs::create_dir_all(&target).expect("target");
    std::fs::write(target.join("old"), "old").expect("old");
    let req = s.path("req.txt");
    std::fs::write(&req, "a==1\n").expect("req");
    let req_s = req.display().to_string();
    let script = format!("echo \"$BOOTSEER_T_FLAG\" > {}/out", target.display());
    let cmd = sh(&script);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let explain = |salt: &str| {
        let t = target.display().to_string();
        let mut args = vec!["explain", "--store", &store, "--target", &t, "--input", &req_s];
        args.extend(["--env", "BOOTSEER_T_FLAG", "--salt", salt, "--"]);
        args.extend(cmd.iter().copied());
        let out =
            Command::new(bin()).args(&args).env("BOOTSEER_T_FLAG", "x").output().expect("explain");
        ok(&out, "explain")
    };
    let first = s.run(&store, &target, &["--input", &req_s, "--env", "BOOTSEER_T_FLAG"], &cmd);
    // BOOTSEER_T_FLAG is unset in this first run: recorded as unset.
    ok(&first, "run");
    assert_eq!(std::fs::read_to_string(target.join("out")).expect("out"), "\n");
    ok(&s.umount(&target), "umount");

    std::fs::write(&req, "a==2\n").expect("req");
    let e = explain("");
    assert!(e.contains("miss"), "{e}");
    assert!(e.contains(&format!("input file {req_s}: sha256:")), "{e}");
    assert!(e.contains("env BOOTSEER_T_FLAG differs: (unset) → \"x\""), "{e}");
    let e = explain("poison-1");
    assert!(e.contains("salt:  → poison-1"), "{e}");

    // key prints the manifest; ls lists the one snapshot; rm forgets it.
    let t = target.display().to_string();
    let key = Command::new(bin())
        .args(["key", "--target", &t, "--input", &req_s, "--"])
        .args(&cmd)
        .output()
        .expect("key");
    let key = ok(&key, "key");
    let v: serde_json::Value = serde_json::from_str(&key).expect("key json");
    assert_eq!(
        v[0]["manifest"]["inputs"][&req_s].as_str().map(|d| d.starts_with("sha256:")),
        Some(true)
    );
    let ls = ok(&s.deps(&["ls", "--store", &store]), "ls");
    let listed: serde_json::Value = serde_json::from_str(&ls).expect("ls json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{ls}");
    let stored = listed[0]["key"].as_str().expect("key").to_string();
    ok(&s.deps(&["rm", "--store", &store, &stored]), "rm");
    let ls = ok(&s.deps(&["ls", "--store", &store]), "ls");
    assert_eq!(ls.trim(), "[]");
}

#[test]
fn two_concurrent_runs_of_one_key_build_once_and_both_targets_are_right() {
    let Some(()) = require_real("FUSE and overlayfs (root)", can_mount()) else { return };
    let s = Scratch::new();
    let store = format!("file://{}", s.path("store").display());
    let ran = s.path("ran.log");
    // The command writes into $T (each process's own target; T is not a key input) and logs
    // each time it runs, outside both targets.
    let script = format!("sleep 2; echo built > \"$T/marker\"; echo x >> {}", ran.display());
    let (a, b) = (s.path("a"), s.path("b"));
    let mut children = Vec::new();
    for t in [&a, &b] {
        std::fs::create_dir_all(t).expect("target");
        let state = s.state().display().to_string();
        let ts = t.display().to_string();
        let child = Command::new(bin())
            .args(["run", "--store", &store, "--target", &ts, "--state-dir", &state])
            .args(["--base-digest", "empty-dir", "--", "sh", "-c", &script])
            .env("T", t)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        children.push(child);
    }
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().expect("wait")).collect();
    let mut got: Vec<String> =
        outs.iter().map(|o| outcomes(&ok(o, "concurrent run"))[0].clone()).collect();
    got.sort();
    assert_eq!(got, ["miss", "waited"], "one builds, the other waits for it");
    assert_eq!(std::fs::read_to_string(&ran).expect("ran").lines().count(), 1, "built twice");
    let ls = ok(&s.deps(&["ls", "--store", &store]), "ls");
    let listed: serde_json::Value = serde_json::from_str(&ls).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{ls}");
    // The snapshot holds the builder's marker; both targets show it (the waiter's own $T never
    // got a write: it mounted the published snapshot of the same key).
    for t in [&a, &b] {
        let marker = std::fs::read_to_string(t.join("marker")).expect("marker");
        assert_eq!(marker, "built\n", "{}", t.display());
        ok(&s.umount(t), "umount");
    }
}

#[test]
fn failures_publish_nothing_mount_nothing_and_say_why() {
    let Some(()) = require_real("FUSE and overlayfs (root)", can_mount()) else { return };
    let s = Scratch::new();
    let store = format!("file://{}", s.path("store").display());
    let target = s.path("t");
    std::fs::create_dir_all(&target).expect("target");
    std::fs::write(target.join("keep"), "keep").expect("keep");
    let before = walk(&target);
    let ts = target.display().to_string();

    // The command fails: its status is ours, nothing is published or left mounted.
    let script = format!("echo partial > {ts}/x; exit 7");
    let out = s.run(&store, &target, &[], &["sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was published"));
    assert!(!is_mounted(&target));
    assert_eq!(diff(&before, &walk(&target)), Vec::<String>::new());
    let ls = ok(&s.deps(&["ls", "--store", &store]), "ls");
    assert_eq!(ls.trim(), "[]");

    // A command that does not exist, a target that is a file, a missing input: clear errors.
    let out = s.run(&store, &target, &[], &["/nonexistent/setup.sh"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("command not found: /nonexistent/setup.sh")
    );
    assert!(!is_mounted(&target));
    let file = s.path("file");
    std::fs::write(&file, "").expect("file");
    let out = s.run(&store, &file, &[], &["true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"), "{out:?}");
    let out = s.run(&store, &target, &["--input", "/nonexistent/req.txt"], &["true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/req.txt"), "{out:?}");
    assert!(!is_mounted(&target));
    assert_eq!(ok(&s.deps(&["ls", "--store", &store]), "ls").trim(), "[]");

    // A corrupt data block: the snapshot mounts (its metadata is fine) but the file reads EIO,
    // never other bytes.
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let src = s.path("blob.src");
    std::fs::write(&src, &data).expect("src");
    let script = format!("cp {} {ts}/blob", src.display());
    let cmd = ["sh", "-c", script.as_str()];
    ok(&s.run(&store, &target, &[], &cmd), "run");
    ok(&s.umount(&target), "umount");
    let blobs = s.path("store/blobs");
    let mut biggest: Vec<_> = std::fs::read_dir(&blobs)
        .expect("blobs")
        .flatten()
        .map(|e| (e.metadata().expect("md").len(), e.path()))
        .collect();
    biggest.sort();
    let (_, data_blob) = biggest.pop().expect("a data blob");
    let (_, meta_blob) = biggest.pop().expect("the metadata blob");
    let mut bytes = std::fs::read(&data_blob).expect("blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&data_blob, &bytes).expect("corrupt");
    let hit = ok(&s.run(&store, &target, &[], &cmd), "run over a corrupt block");
    assert_eq!(outcomes(&hit), ["hit"]);
    match std::fs::read(target.join("blob")) {
        Ok(got) => assert_eq!(got, data, "wrong bytes served from a corrupt block"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc_eio()), "{e}"),
    }
    assert!(std::fs::read(target.join("blob")).is_err(), "a corrupt block was served");
    ok(&s.umount(&target), "umount");

    // A truncated metadata blob: the lookup says why, the step is rebuilt, the tree is right.
    let meta = std::fs::read(&meta_blob).expect("meta");
    std::fs::write(&meta_blob, &meta[..meta.len() / 2]).expect("truncate");
    let out = s.run(&store, &target, &[], &cmd);
    let stdout = ok(&out, "run over truncated metadata");
    assert_eq!(outcomes(&stdout), ["rebuilt"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unusable"), "{out:?}");
    assert_eq!(std::fs::read(target.join("blob")).expect("blob"), data);
    ok(&s.umount(&target), "umount");
}

fn libc_eio() -> i32 {
    5
}

#[test]
fn a_registry_store_serves_hits_and_a_registry_down_fails_fast_or_falls_back() {
    let Some(()) = require_real("FUSE and overlayfs (root)", can_mount()) else { return };
    let Some(mut registry) = require_real("docker-registry", Registry::start()) else { return };
    let s = Scratch::new();
    let store = registry.url("team/deps");
    let target = s.path("t");
    std::fs::create_dir_all(&target).expect("target");
    let ts = target.display().to_string();
    let script =
        format!("mkdir -p {ts}/pkg && echo v1 > {ts}/pkg/mod.py && ln -s pkg/mod.py {ts}/link");
    let cmd = ["sh", "-c", script.as_str()];
    assert_eq!(outcomes(&ok(&s.run(&store, &target, &[], &cmd), "miss")), ["miss"]);
    ok(&s.umount(&target), "umount");
    assert_eq!(outcomes(&ok(&s.run(&store, &target, &[], &cmd), "hit")), ["hit"]);
    assert_eq!(std::fs::read_to_string(target.join("link")).expect("link"), "v1\n");
    ok(&s.umount(&target), "umount");

    registry.stop();
    let t = Instant::now();
    let out = s.run(&store, &target, &["--store-timeout", "5s"], &cmd);
    let took = t.elapsed();
    assert!(!out.status.success(), "a hit with the registry down succeeded");
    assert!(took < Duration::from_secs(30), "took {took:?} to fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("looking up") || err.contains("store"), "{err}");
    assert!(!is_mounted(&target));
    eprintln!("registry down: failed in {:.1} s: {}", took.as_secs_f64(), err.trim());
    let out = s.run(&store, &target, &["--store-timeout", "5s", "--fallback-install"], &cmd);
    assert_eq!(outcomes(&ok(&out, "fallback")), ["unpublished"]);
    assert_eq!(std::fs::read_to_string(target.join("link")).expect("link"), "v1\n");
    ok(&s.umount(&target), "umount");
}

#[test]
fn an_hdfs_store_serves_misses_and_hits() {
    let Some(()) = require_real("FUSE and overlayfs (root)", can_mount()) else { return };
    let Some(dfs) = require_real("MiniDFS", MiniDfs::start(MiniDfsConfig::default())) else {
        return;
    };
    let s = Scratch::new();
    let store = format!("{}/deps-store", dfs.uri().trim_end_matches('/'));
    let target = s.path("t");
    std::fs::create_dir_all(&target).expect("target");
    let ts = target.display().to_string();
    let data: Vec<u8> =
        (0..(2u32 << 20) + 77).map(|i| (i.wrapping_mul(40503) >> 7) as u8).collect();
    let src = s.path("src.bin");
    std::fs::write(&src, &data).expect("src");
    let script = format!("cp {} {ts}/data.bin", src.display());
    let cmd = ["sh", "-c", script.as_str()];
    assert_eq!(outcomes(&ok(&s.run(&store, &target, &[], &cmd), "miss")), ["miss"]);
    ok(&s.umount(&target), "umount");
    std::fs::remove_file(&src).expect("rm src");
    assert_eq!(outcomes(&ok(&s.run(&store, &target, &[], &cmd), "hit")), ["hit"]);
    assert_eq!(std::fs::read(target.join("data.bin")).expect("read"), data);
    ok(&s.umount(&target), "umount");

    // The build lock: HDFS creates without overwrite atomically, so exactly one caller wins.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let hdfs = bootseer_common::store::open(&store, &Default::default()).await.expect("open");
        let lock = "locks/deps/k";
        let body = || bytes::Bytes::from_static(b"host 1 0\n");
        assert!(hdfs.create_new(lock, body()).await.expect("first create"));
        assert!(!hdfs.create_new(lock, body()).await.expect("second create"));
        hdfs.delete(lock).await.expect("delete");
        assert!(hdfs.create_new(lock, body()).await.expect("create after delete"));
    });
}

#[test]
fn a_chroot_step_sees_proc_and_dev_and_its_scratch_tmp_is_not_captured() {
    let Some(()) = require_real("FUSE and overlayfs (root)", can_mount()) else { return };
    let busybox = Path::new("/bin/busybox");
    let Some(()) = require_real(
        "busybox-static (a static shell for the chroot)",
        if busybox.exists() { Ok(()) } else { Err(anyhow::anyhow!("/bin/busybox missing")) },
    ) else {
        return;
    };
    let s = Scratch::new();
    let store = format!("file://{}", s.path("store").display());
    let root = s.path("root");
    for d in ["bin", "proc", "dev", "etc", "tmp", "opt/keep"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy(busybox, root.join("bin/busybox")).expect("busybox");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).expect("sh");
    std::fs::write(root.join("etc/resolv.conf"), "# image's own\n").expect("resolv");
    std::fs::write(root.join("etc/old.conf"), "old\n").expect("old");
    std::fs::write(root.join("opt/keep/k"), "k\n").expect("keep");
    let script = "/bin/busybox mkdir -p /opt/app && echo app > /opt/app/a && /bin/busybox rm /etc/old.conf \
        && /bin/busybox test -e /proc/self/status && /bin/busybox test -c /dev/null \
        && echo procdev > /opt/app/checked && echo scratch > /tmp/scratch";
    let cmd = ["/bin/sh", "-c", script];
    let miss = ok(&s.run(&store, &root, &["--chroot"], &cmd), "chroot run (miss)");
    assert_eq!(outcomes(&miss), ["miss"]);
    let check = |what: &str| {
        assert_eq!(
            std::fs::read_to_string(root.join("opt/app/checked")).expect("checked"),
            "procdev\n",
            "{what}"
        );
        assert!(!root.join("etc/old.conf").exists(), "{what}: deleted file visible");
        assert!(!root.join("tmp/scratch").exists(), "{what}: /tmp scratch captured");
        assert_eq!(
            std::fs::read_to_string(root.join("opt/keep/k")).expect("keep"),
            "k\n",
            "{what}"
        );
        assert!(
            std::fs::read_dir(root.join("proc")).expect("proc").next().is_none(),
            "{what}: /proc left mounted"
        );
    };
    check("miss");
    let after_miss = walk(&root);
    ok(&s.umount(&root), "umount");
    assert!(root.join("etc/old.conf").exists(), "umount did not restore the tree");
    let hit = ok(&s.run(&store, &root, &["--chroot"], &cmd), "chroot run (hit)");
    assert_eq!(outcomes(&hit), ["hit"]);
    check("hit");
    assert_eq!(diff(&after_miss, &walk(&root)), Vec::<String>::new());
    ok(&s.umount(&root), "umount");
}

#[test]
fn stored_snapshots_mount_by_key_and_through_mount_fuse3() {
    let Some(()) = require_real("FUSE and overlayfs (root)", can_mount()) else { return };
    let s = Scratch::new();
    let store = format!("file://{}", s.path("store").display());
    let target = s.path("t");
    std::fs::create_dir_all(&target).expect("target");
    std::fs::write(target.join("base"), "base\n").expect("base");
    let ts = target.display().to_string();
    // Owners, modes, ns mtimes and xattrs of what the command wrote survive the round trip.
    let script = format!(
        "echo one > {ts}/one && rm {ts}/base && chown 1234:5678 {ts}/one && chmod 0640 {ts}/one \
         && touch -d '2024-02-29 12:34:56.123456789' {ts}/one \
         && python3 -c 'import os, sys; os.setxattr(sys.argv[1], \"user.bootseer.test\", b\"v1\")' {ts}/one \
         && cp -a {ts} {reference}",
        reference = s.path("ref").display()
    );
    // `capture` builds and publishes, and leaves nothing stacked.
    let state = s.state().display().to_string();
    let out = s.deps(&[
        "capture",
        "--store",
        &store,
        "--state-dir",
        &state,
        "--target",
        &ts,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let run = ok(&out, "capture");
    assert_eq!(outcomes(&run), ["miss"]);
    assert!(!is_mounted(&target), "capture left the target covered");
    let key = keys(&run)[0].clone();
    let out = s.run(&store, &target, &[], &["sh", "-c", &script]);
    assert_eq!(outcomes(&ok(&out, "run after capture")), ["hit"]);
    let (want, got) = (walk(&s.path("ref")), walk(&target));
    assert_eq!(diff(&want, &got), Vec::<String>::new(), "owners, modes, mtimes, xattrs");
    let one = &got["one"];
    assert_eq!((one.uid, one.gid, one.mode & 0o7777, one.mtime.1), (1234, 5678, 0o640, 123456789));
    assert_eq!(one.xattrs.get("user.bootseer.test").map(Vec::as_slice), Some(&b"v1"[..]));
    ok(&s.umount(&target), "umount");

    // `mount --target DIR KEY`: the same stack without running anything.
    let out = s.deps(&["mount", "--store", &store, "--state-dir", &state, "--target", &ts, &key]);
    ok(&out, "mount by key");
    assert_eq!(std::fs::read_to_string(target.join("one")).expect("one"), "one\n");
    assert!(!target.join("base").exists());
    ok(&s.umount(&target), "umount");
    let missing = "0".repeat(64);
    let out =
        s.deps(&["mount", "--store", &store, "--state-dir", &state, "--target", &ts, &missing]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not stored"), "{out:?}");
    assert!(!is_mounted(&target));

    // One snapshot layer, plain, the way `mount -t fuse.bootseer-deps` reaches the binary: the
    // layer shows the overlay upper as captured (the whiteout is a 0/0 character device).
    let Some(()) = require_real(
        "mount.fuse3 (package fuse3)",
        ["/sbin/mount.fuse3", "/usr/sbin/mount.fuse3"]
            .iter()
            .any(|p| Path::new(p).exists())
            .then_some(())
            .ok_or_else(|| anyhow::anyhow!("mount.fuse3 missing")),
    ) else {
        return;
    };
    let layer = s.path("layer");
    std::fs::create_dir_all(&layer).expect("layer dir");
    let dir = Path::new(bin()).parent().expect("bin dir");
    let out = Command::new("mount.fuse3")
        .env("PATH", format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default()))
        .arg(format!("{store}/deps:{key}"))
        .arg(&layer)
        .args(["-t", "bootseer-deps", "-o", "ro,nodev,_netdev"])
        .output()
        .expect("mount.fuse3");
    ok(&out, "mount.fuse3 -t bootseer-deps");
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(&layer.display().to_string()))
        .expect("the layer in /proc/mounts")
        .to_string();
    assert!(line.contains("fuse"), "{line}");
    assert_eq!(std::fs::read_to_string(layer.join("one")).expect("one"), "one\n");
    let wh = std::fs::symlink_metadata(layer.join("base")).expect("whiteout");
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "{wh:?}");
    bootseer_common::mount::unmount(&layer).expect("unmount");
}

#[test]
fn a_layer_daemon_reopens_its_log_on_sighup_and_keeps_serving() {
    let Some(()) = require_real("FUSE and overlayfs (root)", can_mount()) else { return };
    let s = Scratch::new();
    let store = format!("file://{}", s.path("store").display());
    let target = s.path("t");
    std::fs::create_dir_all(&target).expect("target");
    let script = format!("echo v > {}/f", target.display());
    let run = ok(&s.run(&store, &target, &[], &["sh", "-c", &script]), "run");
    let key = keys(&run)[0].clone();
    ok(&s.umount(&target), "umount");

    // One snapshot layer as a daemon with a log file and a pidfile, as logrotate would see it.
    let mnt = s.path("layer");
    std::fs::create_dir_all(&mnt).expect("mnt");
    let (log, pidfile, summary) = (s.path("layer.log"), s.path("layer.pid"), s.path("layer.json"));
    let opts = format!(
        "log={},pidfile={},summary={}",
        log.display(),
        pidfile.display(),
        summary.display()
    );
    let out = Command::new(bin())
        .arg(format!("{store}/deps:{key}"))
        .arg(&mnt)
        .args(["-o", &opts])
        .output()
        .expect("mount");
    ok(&out, "layer daemon");
    let pid: i32 = std::fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
    // Lines are written by the daemon's log thread, after the mount command returns: rotate once
    // the mount's line is in the file, as logrotate would rotate a log with lines in it (a line
    // still queued at SIGHUP rightly goes to the new file).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("mounted") {
        assert!(Instant::now() < deadline, "no 'mounted' line in {}", log.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let rotated = s.path("layer.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    let signal = |sig: &str| {
        ok(
            &Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .output()
                .expect("kill"),
            sig,
        )
    };
    signal("HUP");
    // SIGUSR1 logs the summary: it must land in the new file, and the mount must still serve.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    signal("USR1");
    while Instant::now() < deadline
        && !std::fs::read_to_string(&log).unwrap_or_default().contains("summary on request")
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let new_log = std::fs::read_to_string(&log).expect("a new log file after SIGHUP");
    assert!(new_log.contains("summary on request"), "new log: {new_log}");
    assert!(std::fs::read_to_string(&rotated).expect("old").contains("mounted"));
    assert_eq!(std::fs::read_to_string(mnt.join("f")).expect("still serving"), "v\n");
    // The daemon does not hold the directory it was started from.
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd");
    assert_eq!(cwd, Path::new("/"));
    bootseer_common::mount::unmount(&mnt).expect("unmount");
}
