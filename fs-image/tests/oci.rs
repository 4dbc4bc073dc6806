//! `oci:DIR:TAG` sources built with the real `umoci` (two layers: the second deletes a file and a
//! directory, which umoci writes as whiteouts): convert, mount, and compare with umoci's own
//! unpack of the same image — an independent implementation of the layer rules.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bootseer_common::mount::MountConfig;
use bootseer_common::store::{DynStore, local::LocalStore};
use bootseer_common::testing::{fuse::MountGuard, mem::pattern, require_real};
use bootseer_image::convert::{self, ConvertConfig};
use bootseer_image::{ImageFuse, ImageRef, ImageSession, SessionConfig, TraceMode};
use common::{BLOCK, describe, is_root};

fn umoci(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("umoci").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "umoci {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn layered_image(work: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(is_root(), "umoci unpack keeps owners only as root");
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    let (l, b) = (layout.to_str().expect("utf8"), bundle.to_str().expect("utf8"));
    umoci(&["init", "--layout", l])?;
    umoci(&["new", "--image", &format!("{l}:v1")])?;
    umoci(&["unpack", "--image", &format!("{l}:v1"), b])?;
    let root = bundle.join("rootfs");
    std::fs::create_dir_all(root.join("usr/lib/pkg"))?;
    std::fs::create_dir_all(root.join("var/cache/old"))?;
    std::fs::write(root.join("usr/lib/pkg/big.so"), pattern(1, 5 * BLOCK as usize + 3))?;
    std::fs::write(root.join("usr/lib/pkg/doomed.py"), b"print('bye')\n")?;
    std::fs::write(root.join("var/cache/old/junk"), b"junk")?;
    std::fs::hard_link(root.join("usr/lib/pkg/big.so"), root.join("usr/lib/big-link.so"))?;
    std::os::unix::fs::symlink("pkg/big.so", root.join("usr/lib/alias.so"))?;
    // --refresh-bundle: the next repack diffs against this layer, so it holds only the change.
    umoci(&["repack", "--refresh-bundle", "--image", &format!("{l}:v1"), b])?;
    std::fs::remove_file(root.join("usr/lib/pkg/doomed.py"))?;
    std::fs::remove_dir_all(root.join("var/cache/old"))?;
    std::fs::write(root.join("usr/lib/pkg/new.py"), b"print('hi')\n")?;
    umoci(&["repack", "--image", &format!("{l}:v1"), b])?;
    umoci(&[
        "unpack",
        "--image",
        &format!("{l}:v1"),
        work.join("expected").to_str().expect("utf8"),
    ])?;
    Ok(())
}

#[test]
fn a_layered_oci_image_mounts_as_umoci_unpacks_it() {
    let work = tempfile::tempdir().expect("work");
    if require_real("umoci", layered_image(work.path())).is_none() {
        return;
    }
    let spec = format!("oci:{}:v1", work.path().join("layout").display());
    let (meta, blobs) =
        convert::build(&spec, &ConvertConfig { block_size: BLOCK, level: 3 }).expect("convert");
    // One data blob per layer (umoci's `new` image has none; each repack adds one).
    assert_eq!(
        meta.blobs.len(),
        2,
        "{:?}",
        meta.blobs.iter().map(|b| b.data_len).collect::<Vec<_>>()
    );
    let store_dir = tempfile::tempdir().expect("store");
    let store: DynStore = Arc::new(LocalStore::new(store_dir.path()));
    let image =
        ImageRef::parse(&format!("file://{}/layered:v1", store_dir.path().display())).expect("ref");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(convert::push(&store, &image, &meta, blobs)).expect("push");
    let session = rt
        .block_on(ImageSession::open_with_store(
            image,
            store,
            SessionConfig { trace: TraceMode::Off, ..SessionConfig::default() },
        ))
        .expect("open");
    let config = MountConfig { threads: 2, dev_suid: true, ..MountConfig::default() };
    let fuse = ImageFuse::new(session.fs(), rt.handle().clone(), config.clone());
    let Some(mount) = require_real("FUSE", MountGuard::mount(fuse, &config)) else { return };

    let want = describe(&work.path().join("expected/rootfs"));
    let got = describe(mount.path());
    assert!(
        !want.entries.contains_key(Path::new("var/cache/old")),
        "whiteout not applied by umoci?"
    );
    assert!(want.entries.contains_key(Path::new("usr/lib/pkg/new.py")));
    for (path, w) in &want.entries {
        let g = got.entries.get(path).unwrap_or_else(|| panic!("{} missing", path.display()));
        assert_eq!(g, w, "{} differs", path.display());
    }
    assert_eq!(got.entries.len(), want.entries.len(), "extra entries: whiteouts not applied");
    assert_eq!(got.hardlinks, want.hardlinks);
    drop(mount);
    rt.block_on(session.finish()).expect("finish");
}
