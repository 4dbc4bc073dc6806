//! [`MiniDfs`]: a real HDFS (Hadoop's MiniDFSCluster) for tests, as an RAII guard.
//!
//! [`MiniDfs::start`] builds `scripts/minidfs/` if needed (`build.sh`: Maven, a no-op when up to
//! date), starts its
//! JVM with a fresh base directory in a tempdir, and waits for the launcher's `READY` line. The
//! launcher speaks a line protocol: stdout carries `DATANODE <i> <addr>` lines, one
//! `READY <uri> <conf-dir>`, then one `OK <cmd>`/`ERR <message>` per command written to its stdin.
//! A reader thread forwards stdout lines through a channel, so every wait has a deadline; the
//! JVM's stderr goes to a log file whose tail is quoted in errors.
//!
//! Dropping the guard sends `quit`, closes stdin (EOF also stops the launcher, so a test process
//! that dies still takes its JVM with it), waits a bounded time, kills the JVM if it is still
//! there, and removes the tempdir.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long the JVM gets to bring the cluster up: a cold start takes 15–20 s on two cores, and
/// several test binaries may start clusters at once.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one stdin command may take: a NameNode restart takes about 10 s.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `Drop` waits for a clean shutdown before it kills the JVM.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of the JVM's log quoted in an error.
const LOG_TAIL_LINES: usize = 40;

/// Shape of a MiniDFS cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MiniDfsConfig {
    /// Number of DataNodes.
    pub datanodes: usize,
    /// Default HDFS block size in bytes (a positive multiple of 512).
    pub block_size: u64,
    /// Default replication; `None` means `min(3, datanodes)`.
    pub replication: Option<usize>,
}

impl Default for MiniDfsConfig {
    fn default() -> Self {
        // Three DataNodes let a test stop one and still read every block; 1 MiB blocks make a
        // few-MiB file span many blocks.
        Self { datanodes: 3, block_size: 1 << 20, replication: None }
    }
}

/// A running MiniDFS cluster; stopped and removed on drop.
#[derive(Debug)]
pub struct MiniDfs {
    uri: String,
    conf_dir: PathBuf,
    datanodes: Vec<String>,
    log: PathBuf,
    control: Mutex<Control>,
    child: Child,
    // Dropped last: the JVM's base dir lives here.
    _dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Control {
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

/// The repository root, found from this crate's manifest directory.
fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn log_tail(log: &Path) -> String {
    match std::fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            format!("last lines of {}:\n{}", log.display(), lines[start..].join("\n"))
        }
        Err(err) => format!("no log at {}: {err}", log.display()),
    }
}

impl MiniDfs {
    /// Builds the launcher if needed (`scripts/minidfs/build.sh`), starts a cluster shaped by
    /// `config` and waits until it is ready. Fails (with the tail of the JVM's log) if Java or
    /// Maven is missing, the build fails, or the cluster is not up within two minutes.
    pub fn start(config: MiniDfsConfig) -> anyhow::Result<MiniDfs> {
        let script_dir = repo_root().join("scripts/minidfs");
        let classpath_file = script_dir.join("target/classpath.txt");
        // build.sh returns at once when the classes are up to date and serializes concurrent
        // builds (flock), so every start runs it: an edited launcher never runs stale.
        let out = Command::new("bash")
            .arg(script_dir.join("build.sh"))
            .stdin(Stdio::null())
            .output()
            .context("running scripts/minidfs/build.sh")?;
        if !out.status.success() {
            bail!(
                "scripts/minidfs/build.sh failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let classpath = std::fs::read_to_string(&classpath_file)
            .with_context(|| format!("reading {}", classpath_file.display()))?;
        let classpath =
            format!("{}:{}", script_dir.join("target/classes").display(), classpath.trim());

        let dir = tempfile::Builder::new().prefix("bootseer-minidfs-").tempdir()?;
        let base = dir.path().join("dfs");
        let conf = dir.path().join("conf");
        let log = dir.path().join("minidfs.log");
        let log_file = std::fs::File::create(&log).context("creating the MiniDFS log")?;
        let replication = config.replication.unwrap_or(config.datanodes.min(3));
        let started = Instant::now();
        let mut child = Command::new("java")
            // A NameNode and a few DataNodes holding test files fit in far less than 1 GiB;
            // serial GC keeps the JVM's own threads off our two cores.
            .args(["-Xmx1g", "-XX:+UseSerialGC", "-cp", &classpath, "bootseer.MiniDfs"])
            .arg("--base-dir")
            .arg(&base)
            .arg("--conf-dir")
            .arg(&conf)
            .args(["--datanodes", &config.datanodes.to_string()])
            .args(["--block-size", &config.block_size.to_string()])
            .args(["--replication", &replication.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .context("starting java (is a JDK 17 installed?)")?;

        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("java started without piped stdin/stdout");
        };
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("minidfs-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .context("spawning the MiniDFS reader thread")?;

        let mut dfs = MiniDfs {
            uri: String::new(),
            conf_dir: conf,
            datanodes: Vec::new(),
            log,
            control: Mutex::new(Control { stdin: Some(stdin), lines }),
            child,
            _dir: dir,
        };
        // On error `dfs` drops here, which stops the JVM and removes the tempdir.
        dfs.wait_ready(started)
            .map_err(|err| anyhow::anyhow!("{err:#}\n{}", log_tail(&dfs.log)))?;
        tracing::info!(uri = %dfs.uri, elapsed = ?started.elapsed(), "MiniDFS ready");
        Ok(dfs)
    }

    fn wait_ready(&mut self, started: Instant) -> anyhow::Result<()> {
        let deadline = started + START_TIMEOUT;
        let control = self.control.get_mut().map_err(|_| anyhow::anyhow!("poisoned"))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match control.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    bail!("MiniDFS not ready after {START_TIMEOUT:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait().ok().flatten();
                    bail!("MiniDFS closed its stdout before READY (exit status {status:?})")
                }
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["DATANODE", _, addr] => self.datanodes.push((*addr).to_string()),
                ["READY", uri, conf] => {
                    self.uri = (*uri).to_string();
                    self.conf_dir = PathBuf::from(conf);
                    return Ok(());
                }
                _ => bail!("unexpected line from MiniDFS: {line:?}"),
            }
        }
    }

    /// The NameNode's URI, `hdfs://127.0.0.1:<port>`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// A directory with the client's `core-site.xml` and `hdfs-site.xml` (for `HADOOP_CONF_DIR`).
    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    /// Data-transfer addresses (`host:port`) of the DataNodes, by index.
    pub fn datanode_addrs(&self) -> &[String] {
        &self.datanodes
    }

    /// The JVM's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Stops DataNode `i` (indices as in [`Self::datanode_addrs`]; they never shift).
    pub fn stop_datanode(&self, i: usize) -> anyhow::Result<()> {
        self.command(&format!("stop-datanode {i}"))
    }

    /// Starts DataNode `i` again on its old ports (stopping it first if it runs) and waits until
    /// it serves.
    pub fn restart_datanode(&self, i: usize) -> anyhow::Result<()> {
        self.command(&format!("restart-datanode {i}"))
    }

    /// Restarts the NameNode on its old port and waits until it is active and out of safe mode.
    pub fn restart_namenode(&self) -> anyhow::Result<()> {
        self.command("restart-namenode")
    }

    /// Sends one command and waits for its `OK`/`ERR` answer.
    fn command(&self, cmd: &str) -> anyhow::Result<()> {
        let control =
            self.control.lock().map_err(|_| anyhow::anyhow!("MiniDFS control poisoned"))?;
        let Control { stdin, lines } = &*control;
        let stdin = stdin.as_ref().context("MiniDFS is shutting down")?;
        (&*stdin)
            .write_all(format!("{cmd}\n").as_bytes())
            .and_then(|()| (&*stdin).flush())
            .with_context(|| format!("sending {cmd:?} to MiniDFS"))?;
        let line = match lines.recv_timeout(COMMAND_TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "MiniDFS did not answer {cmd:?} within {COMMAND_TIMEOUT:?}\n{}",
                    log_tail(&self.log)
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                bail!("MiniDFS exited during {cmd:?}\n{}", log_tail(&self.log))
            }
        };
        if line == format!("OK {cmd}") {
            Ok(())
        } else if let Some(message) = line.strip_prefix("ERR ") {
            bail!("MiniDFS refused {cmd:?}: {message}")
        } else {
            bail!("unexpected answer to {cmd:?} from MiniDFS: {line:?}")
        }
    }
}

impl Drop for MiniDfs {
    fn drop(&mut self) {
        let control = match self.control.get_mut() {
            Ok(control) => control,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(mut stdin) = control.stdin.take() {
            let _ = stdin.write_all(b"quit\n");
            let _ = stdin.flush();
            // Dropping stdin closes it: EOF stops the launcher even if `quit` was not read.
        }
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    tracing::warn!("MiniDFS did not stop within {SHUTDOWN_TIMEOUT:?}; killing it");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
    }
}
