//! [`LayerRef`]: `file:///ABS/STORE/NAME:TAG`, `docker://HOST[:PORT]/REPO:TAG` or
//! `hdfs://HOST:PORT/PATH/NAME:TAG`, split into the store URL and the keys inside it.
//!
//! | store            | store URL                   | image index key     | trace key                         |
//! | ---------------- | --------------------------- | ------------------- | --------------------------------- |
//! | `file`, `hdfs`   | everything before `/NAME`   | `images/NAME/TAG`   | `traces/NAME/TAG/WORKLOAD`        |
//! | `docker`         | `docker://HOST/REPO`        | `manifests/TAG`     | `manifests/TAG.trace.WORKLOAD` (an artifact whose one layer is the trace blob) |
//!
//! Blobs are `blobs/sha256:<hex>` everywhere. Names and tags are checked so that no key can climb
//! out of the store or collide with another kind of key.

use crate::layer::error::{LayerError, Result};

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// The reference as given.
    pub original: String,
    /// URL of the store that holds the image (for `store::open`).
    pub store_url: String,
    /// Image name (last path component for file/hdfs; the repository for docker).
    pub name: String,
    /// Tag.
    pub tag: String,
    /// Whether the store is an OCI registry (keys follow the registry's shape).
    pub registry: bool,
}

/// Whether `tag` is a safe tag or workload name: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}` (the OCI
/// tag grammar, which also keeps it a single safe path component).
pub fn valid_tag(tag: &str) -> bool {
    // 128 is the OCI distribution spec's tag length limit.
    !tag.is_empty()
        && tag.len() <= 128
        && tag.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Whether `name` is a safe image name: components of `[a-z0-9][a-z0-9._-]*` (lower-case as
/// OCI repository names are), none of them `.`/`..`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.chars().next().is_some_and(|f| f.is_ascii_lowercase() || f.is_ascii_digit())
                && c.chars().all(|ch| {
                    ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
                })
        })
}

impl LayerRef {
    /// Parses a reference.
    pub fn parse(reference: &str) -> Result<Self> {
        let bad = |reason: &str| LayerError::Reference {
            reference: reference.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = reference
            .split_once("://")
            .ok_or_else(|| bad("expected file:///STORE/NAME:TAG or docker://HOST/REPO:TAG"))?;
        let (path, tag) = rest.rsplit_once(':').ok_or_else(|| bad("missing :TAG"))?;
        if !valid_tag(tag) {
            return Err(bad("the tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
        }
        match scheme {
            "file" | "hdfs" | "viewfs" => {
                let (store, name) = path.rsplit_once('/').ok_or_else(|| bad("missing /NAME"))?;
                if !valid_name(name) || name.contains('/') {
                    return Err(bad("the name must match [a-z0-9][a-z0-9._-]*"));
                }
                if store.is_empty() {
                    return Err(bad("missing store directory"));
                }
                if scheme == "file" && !store.starts_with('/') {
                    return Err(bad("a file store must be an absolute path (file:///ABS/STORE)"));
                }
                Ok(Self {
                    original: reference.to_string(),
                    store_url: format!("{scheme}://{store}"),
                    name: name.to_string(),
                    tag: tag.to_string(),
                    registry: false,
                })
            }
            "docker" | "oci" => {
                let (host, repo) = path.split_once('/').ok_or_else(|| bad("missing /REPO"))?;
                if host.is_empty() || !valid_name(repo) {
                    return Err(bad("expected docker://HOST[:PORT]/REPO:TAG, repo in lower case"));
                }
                Ok(Self {
                    original: reference.to_string(),
                    store_url: format!("docker://{host}/{repo}"),
                    name: repo.to_string(),
                    tag: tag.to_string(),
                    registry: true,
                })
            }
            _ => Err(bad("unknown scheme: expected file://, docker:// or hdfs://")),
        }
    }

    /// Key of the image index.
    pub fn index_key(&self) -> String {
        if self.registry {
            format!("manifests/{}", self.tag)
        } else {
            format!("images/{}/{}", self.name, self.tag)
        }
    }

    /// Key of the trace for `workload` (checked with [`valid_tag`]).
    pub fn trace_key(&self, workload: &str) -> Result<String> {
        if !valid_tag(workload) {
            return Err(LayerError::Reference {
                reference: workload.to_string(),
                reason: "a workload name must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}".into(),
            });
        }
        Ok(if self.registry {
            // Tags are at most 128 characters; long tag+workload pairs are refused by the registry.
            format!("manifests/{}.trace.{workload}", self.tag)
        } else {
            format!("traces/{}/{}/{workload}", self.name, self.tag)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_store_and_keys() {
        let r = LayerRef::parse("file:///srv/store/py:v1").expect("file ref");
        assert_eq!(r.store_url, "file:///srv/store");
        assert_eq!(r.index_key(), "images/py/v1");
        assert_eq!(r.trace_key("train").expect("trace"), "traces/py/v1/train");
        let d = LayerRef::parse("docker://127.0.0.1:5000/team/py:v1").expect("docker ref");
        assert_eq!(d.store_url, "docker://127.0.0.1:5000/team/py");
        assert_eq!(d.index_key(), "manifests/v1");
        assert_eq!(d.trace_key("w").expect("trace"), "manifests/v1.trace.w");
        let h = LayerRef::parse("hdfs://nn:8020/images/py:v1").expect("hdfs ref");
        assert_eq!(h.store_url, "hdfs://nn:8020/images");
    }

    #[test]
    fn unsafe_references_are_refused() {
        for r in [
            "file:///s/..:v1",
            "file:///s/a:../x",
            "file:///s/A:v1",
            "file:///s/a:",
            "file://rel/a:v1",
            "file:///s/a",
            "ftp:///s/a:v1",
            "docker://h/Repo:v1",
            "docker://h/a/../b:v1",
            "file:///s/a:.hidden",
            "file:///s/a:x/y",
        ] {
            assert!(LayerRef::parse(r).is_err(), "{r} accepted");
        }
        let r = LayerRef::parse("file:///s/a:v1").expect("ref");
        assert!(r.trace_key("../x").is_err());
        assert!(r.trace_key("").is_err());
    }
}
