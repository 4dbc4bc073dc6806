//! DataNode faults under a real mount (own MiniDFS: 3 DataNodes, replication 3, 1 MiB blocks):
//! one DataNode stopped mid-read → still the right bytes; every DataNode stopped → EIO within the
//! stripe deadline, never a hang; DataNodes back → the same mount reads again; a NameNode
//! restart → later opens and reads recover. A *stalled* DataNode (alive, heartbeating, its
//! replies held to a trickle by `tc` in a private network namespace) → reads hedge onto other
//! replicas: right bytes, in far less than the attempt timeout.

mod support;

use std::io::Read;
use std::time::{Duration, Instant};

use bootseer_common::testing::netns::NetNs;
use bootseer_common::testing::require_real;
use support::{BLOCK, bytes, sha};

#[test]
fn datanode_faults_give_correct_bytes_or_a_bounded_eio() {
    let Some(dfs) = support::start_dfs() else { return };
    let first = bytes(7, 12 * BLOCK as usize + 4321);
    let second = bytes(8, 4 * BLOCK as usize + 99);
    let third = bytes(9, 3 * BLOCK as usize + 5);
    let config = bootseer_ckpt::CkptConfig {
        // No whole-file prefetch: the stop must land while stripes are still being fetched.
        prefetch_threshold: u64::MAX,
        initial_window: 1,
        ..support::test_config()
    };
    let deadline = config.stripe_deadline;
    let Some(env) = support::setup(
        dfs,
        &[
            ("first.bin", first.as_slice()),
            ("second.bin", second.as_slice()),
            ("third.bin", third.as_slice()),
        ],
        config,
    ) else {
        return;
    };
    let root = env.mount.path().to_path_buf();

    // One DataNode stopped after the first 2 MiB: the read completes with the right bytes.
    let mut file = std::fs::File::open(root.join("first.bin")).expect("open");
    let mut got = vec![0u8; 2 * BLOCK as usize];
    file.read_exact(&mut got).expect("first part");
    env.dfs.stop_datanode(1).expect("stop datanode 1");
    file.read_to_end(&mut got).expect("rest after a DataNode stopped");
    assert_eq!(sha(&got), sha(&first), "bytes after one DataNode stopped");
    drop(file);

    // Every DataNode stopped: an uncached file fails with EIO within the deadline.
    env.dfs.stop_datanode(0).expect("stop datanode 0");
    env.dfs.stop_datanode(2).expect("stop datanode 2");
    let started = Instant::now();
    let result = std::fs::read(root.join("second.bin"));
    let took = started.elapsed();
    let err = result.expect_err("a read with every replica gone must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // The kernel may ask for the failed range twice (read-ahead, then the page itself), each
    // bounded by the stripe deadline; anything near a minute would be a hang.
    assert!(took < deadline * 4 + Duration::from_secs(10), "EIO took {took:?}");
    eprintln!("every DataNode down: EIO after {took:?}");
    let summary = env.fs.summary();
    assert!(summary.stripes_failed > 0 && summary.stripes_retried > 0, "{summary:?}");

    // DataNodes back: the same mount serves the file.
    for i in 0..3 {
        env.dfs.restart_datanode(i).expect("restart datanode");
    }
    assert_eq!(
        sha(&std::fs::read(root.join("second.bin")).expect("read after restart")),
        sha(&second)
    );

    // A NameNode restart mid-mount: later opens and reads (new locations) recover.
    env.dfs.restart_namenode().expect("restart namenode");
    std::thread::sleep(env.fs.config().metadata_ttl);
    assert_eq!(
        sha(&std::fs::read(root.join("third.bin")).expect("read after NN restart")),
        sha(&third)
    );
    assert!(std::fs::read_dir(&root).expect("list after NN restart").count() == 3);

    let mountpoint = root.clone();
    drop(env);
    support::assert_nothing_leaked(&mountpoint);
}

#[test]
fn a_stalled_datanode_is_hedged_around() {
    // This thread and everything it starts (the MiniDFS JVM, the runtime, the FUSE session)
    // live in a namespace of their own, so `tc` there touches no other test's traffic.
    let Some(ns) = require_real("network namespace", NetNs::create()) else { return };
    require_real("network namespace", ns.enter()).expect("entered");
    let Some(dfs) = support::start_dfs() else { return };
    let data = bytes(11, 8 * BLOCK as usize + 777);
    let config = bootseer_ckpt::CkptConfig {
        hedge_after: Duration::from_millis(200),
        // A reader that only re-issues slow attempts would wait this long for every stripe
        // whose first replica is the stalled DataNode.
        attempt_timeout: Duration::from_secs(20),
        stripe_deadline: Duration::from_secs(40),
        ..support::test_config()
    };
    let attempt_timeout = config.attempt_timeout;
    let Some(env) = support::setup(dfs, &[("stalled.bin", data.as_slice())], config) else {
        return;
    };
    // Every block has a replica on DataNode 0 (3 DataNodes, replication 3), and the NameNode
    // lists it first for about a third of the (reader, block) pairs.
    let addr = &env.dfs.datanode_addrs()[0];
    let port: u16 = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("xfer port");
    ns.limit_port(port, 8).expect("stall DataNode 0");

    let started = Instant::now();
    let got = std::fs::read(env.mount.path().join("stalled.bin")).expect("read past a stall");
    let took = started.elapsed();
    assert_eq!(sha(&got), sha(&data), "bytes read around a stalled DataNode");
    let summary = env.fs.summary();
    eprintln!("stalled DataNode: read in {took:?}; {summary:?}");
    assert!(summary.hedge_wins > 0, "no stripe was served by a hedge: {summary:?}");
    assert!(took < attempt_timeout, "a stalled replica held the file for {took:?}");
    assert_eq!(summary.stripes_failed, 0, "{summary:?}");
}
