//! One mapping from bootseer's errors to the errno a FUSE reply carries.
//!
//! Every error type that can reach a FUSE callback implements [`ToErrno`] with an exhaustive
//! `match` (no wildcard arm), so a new variant cannot silently become `EIO`.

use crate::store::StoreError;

/// An error that knows which errno to answer a FUSE request with.
pub trait ToErrno {
    /// The errno (positive, as in `libc::EIO`).
    fn errno(&self) -> i32;
}

impl ToErrno for StoreError {
    fn errno(&self) -> i32 {
        match self {
            StoreError::NotFound { .. } => libc::ENOENT,
            StoreError::InvalidKey { .. } => libc::EINVAL,
            StoreError::Timeout { .. } => libc::EIO,
            StoreError::Transient { .. } => libc::EIO,
            StoreError::Unauthorized { .. } => libc::EACCES,
            StoreError::BadReply { .. } => libc::EIO,
            StoreError::Unsupported { .. } => libc::ENOTSUP,
            StoreError::Other { .. } => libc::EIO,
            StoreError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl ToErrno for std::io::Error {
    fn errno(&self) -> i32 {
        self.raw_os_error().unwrap_or(libc::EIO)
    }
}

/// Answers that are part of normal operation, not failures: a missing name (`ENOENT`; every
/// `$PATH` search and Python import probes many), a missing extended attribute (`ENODATA`;
/// overlayfs asks for `trusted.overlay.*` on each lookup through a FUSE lower) and a too-small
/// xattr buffer (`ERANGE`; the size-probe protocol).
pub fn is_routine(errno: i32) -> bool {
    matches!(errno, libc::ENOENT | libc::ENODATA | libc::ERANGE)
}

/// The one way an error becomes a FUSE reply: logs it, counts it under `op` and the errno's
/// name, and returns the errno to reply with. Routine answers ([`is_routine`]) are logged at
/// trace level only and not counted as errors: as warnings they filled a log with 1,187 lines
/// in a few starts.
pub fn fuse_error<E: ToErrno + std::fmt::Display>(op: &'static str, err: &E) -> fuser::Errno {
    let errno = err.errno();
    if is_routine(errno) {
        tracing::trace!(op, errno, error = %err, "fuse op answered");
    } else {
        let name = crate::metrics::errno_name(errno);
        ::metrics::counter!(crate::metrics::FUSE_ERRORS, "op" => op, "errno" => name).increment(1);
        tracing::warn!(op, errno, error = %err, "fuse op failed");
    }
    fuser::Errno::from_i32(errno)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A log sink the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Errno(i32);
    impl ToErrno for Errno {
        fn errno(&self) -> i32 {
            self.0
        }
    }
    impl std::fmt::Display for Errno {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "errno {}", self.0)
        }
    }

    /// Issue 10 item 11: ENODATA from getxattr (overlayfs probes) and ENOENT from lookups are no
    /// warnings; EIO still is.
    #[test]
    fn routine_answers_are_not_warnings() {
        let sink = Captured::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..100 {
                assert_eq!(fuse_error("getxattr", &Errno(libc::ENODATA)).code(), libc::ENODATA);
                assert_eq!(fuse_error("lookup", &Errno(libc::ENOENT)).code(), libc::ENOENT);
                assert_eq!(fuse_error("getxattr", &Errno(libc::ERANGE)).code(), libc::ERANGE);
            }
        });
        let logged = String::from_utf8(sink.0.lock().expect("log").clone()).expect("utf-8");
        assert_eq!(logged, "", "routine answers were logged above trace level");
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            fuse_error("read", &Errno(libc::EIO));
        });
        let logged = String::from_utf8(sink.0.lock().expect("log").clone()).expect("utf-8");
        assert!(logged.contains("WARN") && logged.contains("errno 5"), "{logged}");
    }
}
