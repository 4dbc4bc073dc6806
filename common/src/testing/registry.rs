//! [`Registry`]: a real OCI registry (Debian `docker-registry`, distribution v2) on 127.0.0.1 for
//! tests.
//!
//! [`Registry::start`] picks a free port, writes its own config into a temporary directory
//! (filesystem storage there, deletes enabled, plain http, log level warn, optional htpasswd
//! auth), starts `docker-registry serve CONFIG` with its output in `registry.log` beside it, and
//! waits until `GET /v2/` answers. [`Registry::stop`] and [`Registry::start_again`] kill and
//! restart the same process on the same port over the same storage, for fault tests. Drop kills
//! and reaps the process, then removes the directory.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The registry binary; `BOOTSEER_DOCKER_REGISTRY` overrides the path.
const DEFAULT_BINARY: &str = "docker-registry";
/// How long a start may take before we give up: the registry is up in well under a second, a
/// loaded CI machine may be much slower.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// A running `docker-registry`, killed on drop.
#[derive(Debug)]
pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Registry {
    /// Starts an anonymous registry on a free port of 127.0.0.1.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_inner(None)
    }

    /// Starts a registry that demands HTTP Basic auth for `user`/`pass` (an htpasswd file with a
    /// bcrypt hash, made with `perl`'s `crypt`, which is libxcrypt's and knows bcrypt).
    pub fn start_with_htpasswd(user: &str, pass: &str) -> anyhow::Result<Self> {
        Self::start_inner(Some((user, pass)))
    }

    fn start_inner(auth: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("bootseer-registry-").tempdir()?;
        let port = free_port()?;
        let auth_section = match auth {
            Some((user, pass)) => {
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, format!("{user}:{}\n", bcrypt_hash(pass)?))?;
                format!(
                    "auth:\n  htpasswd:\n    realm: bootseer-test\n    path: {}\n",
                    path.display()
                )
            }
            None => String::new(),
        };
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage)?;
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: bootseer-test-secret\n\
             {auth_section}",
            storage = storage.display(),
        );
        std::fs::write(dir.path().join("config.yml"), config)?;
        let mut registry = Self { dir, port, child: None };
        registry.start_again()?;
        Ok(registry)
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `docker://127.0.0.1:PORT/REPO`: the store URL of `repo` in this registry.
    pub fn url(&self, repo: &str) -> String {
        format!("docker://{}/{repo}", self.host_port())
    }

    /// The directory with the config, the storage and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Kills the registry (the port and storage stay reserved for [`Registry::start_again`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the registry on the same port and storage and waits until it answers.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.stop();
        let binary =
            std::env::var("BOOTSEER_DOCKER_REGISTRY").unwrap_or_else(|_| DEFAULT_BINARY.into());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let child = Command::new(&binary)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {binary:?} (Debian package docker-registry)"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if self.answers() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("docker-registry exited with {status} at start:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                self.stop();
                bail!(
                    "docker-registry did not answer GET /v2/ on {} within {START_DEADLINE:?}:\n{}",
                    self.host_port(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `GET /v2/` gets any HTTP answer (200 anonymous, 401 with auth).
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host_port());
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 7];
        stream.read_exact(&mut head).is_ok() && &head == b"HTTP/1."
    }

    /// The last lines of the registry's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago. The registry binds it right after; another process taking
/// it in between makes the start fail with a clear log, not a wrong result.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A bcrypt hash of `pass` (what distribution's htpasswd accepts), through `perl -e crypt`.
fn bcrypt_hash(pass: &str) -> anyhow::Result<String> {
    let salt: String = (0..22)
        .map(|_| {
            const ALPHABET: &[u8] =
                b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
            char::from(ALPHABET[fastrand::usize(..ALPHABET.len())])
        })
        .collect();
    // Cost 5: the lowest libxcrypt takes happily; tests need speed, not strength.
    let output = Command::new("perl")
        .args(["-e", "print crypt($ARGV[0], $ARGV[1])", pass, &format!("$2b$05${salt}")])
        .output()
        .context("cannot run perl to make a bcrypt htpasswd entry")?;
    let hash = String::from_utf8(output.stdout).context("perl printed non-UTF-8")?;
    if !output.status.success() || !hash.starts_with("$2b$05$") || hash.len() != 60 {
        bail!(
            "perl crypt() made no bcrypt hash (libcrypt without bcrypt?): {hash:?} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(hash)
}
