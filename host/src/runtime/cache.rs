//! Compiled components, cached by the sha256 of their bytes.
//!
//! Compiling a component with Cranelift takes from milliseconds to seconds;
//! instantiating a compiled one takes microseconds. The cache compiles each
//! distinct component once while a loaded agent or tool holds it
//! ([`CachedComponent`]), so that a worker whose agents are replaced by new
//! versions over weeks does not keep every old version's machine code; with
//! a cache directory, once per machine: the precompiled artifact is written
//! to disk and mapped back in on the next load or start. Artifacts are
//! checked against a recorded digest before they are loaded, so a truncated
//! or tampered file is recompiled, never executed.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The sha256 of a component's bytes, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Errors loading a component.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The component file could not be read.
    #[error("cannot read component {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid component for this host.
    #[error("invalid component {name}: {message}")]
    Invalid {
        /// File name or digest of the component.
        name: String,
        /// wasmtime's reason, on one line.
        message: String,
    },
    /// The component does not provide the imports or exports a world needs.
    #[error("component {name} does not fit the {world} world: {message}")]
    WrongWorld {
        /// File name or digest of the component.
        name: String,
        /// `agent` or `tool`.
        world: &'static str,
        /// wasmtime's reason, on one line.
        message: String,
    },
    /// The cache directory could not be opened.
    #[error("cannot open component cache {path}: {source}")]
    CacheDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl LoadError {
    /// The component `name` lacks what `world` needs, as wasmtime reported.
    pub(crate) fn wrong_world(name: &str, world: &'static str, err: &wasmtime::Error) -> Self {
        Self::WrongWorld {
            name: name.to_owned(),
            world,
            message: one_line(err),
        }
    }
}

/// Compiled components by digest, in memory and optionally on disk.
pub struct ComponentCache {
    engine: Engine,
    disk: Option<DiskCache>,
    /// The components loaded agents and tools hold, and those being compiled.
    compiled: Mutex<HashMap<Digest, Weak<Compiled>>>,
}

/// One component, compiled once by the first load of it to get there.
struct Compiled {
    digest: Digest,
    component: OnceCell<Component>,
}

/// A compiled component, from the cache. The cache keeps it in memory while
/// any copy of this exists (held by the loaded agent or tool it serves), so
/// that other loads of the same bytes share it.
#[derive(Clone)]
pub struct CachedComponent {
    held: Arc<Compiled>,
    component: Component,
}

impl CachedComponent {
    /// The sha256 of the component's bytes.
    pub fn digest(&self) -> &Digest {
        &self.held.digest
    }

    /// The compiled component.
    pub fn component(&self) -> &Component {
        &self.component
    }
}

impl std::fmt::Debug for CachedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CachedComponent").field(self.digest()).finish()
    }
}

impl std::fmt::Debug for ComponentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentCache")
            .field("disk", &self.disk.as_ref().map(|d| &d.path))
            .finish_non_exhaustive()
    }
}

impl ComponentCache {
    /// A cache for `engine`, persisting artifacts under `dir` when given.
    pub fn new(engine: Engine, dir: Option<&Path>) -> Result<Self, LoadError> {
        let disk = dir.map(|dir| DiskCache::open(dir, &engine)).transpose()?;
        Ok(Self {
            engine,
            disk,
            compiled: Mutex::new(HashMap::new()),
        })
    }

    /// The compiled form of `bytes`, compiling at most once per digest even
    /// when many jobs ask for the same component at the same moment.
    pub async fn get(&self, name: &str, bytes: Arc<[u8]>) -> Result<CachedComponent, LoadError> {
        let held = self.entry(Digest::of(&bytes));
        let component = held
            .component
            .get_or_try_init(|| self.load(name, &held.digest, bytes))
            .await?
            .clone();
        Ok(CachedComponent { held, component })
    }

    /// How many compiled components are in memory (or being compiled).
    pub fn len(&self) -> usize {
        self.lock()
            .values()
            .filter(|compiled| compiled.strong_count() > 0)
            .count()
    }

    /// Whether no compiled component is in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry of `digest`, shared with the loads of it in progress or
    /// done and still held; a new one otherwise.
    fn entry(&self, digest: Digest) -> Arc<Compiled> {
        let mut entries = self.lock();
        if let Some(compiled) = entries.get(&digest).and_then(Weak::upgrade) {
            return compiled;
        }
        // Forget the components nothing holds any more (including failed
        // compilations): the map stays as small as what is loaded.
        entries.retain(|_, compiled| compiled.strong_count() > 0);
        let compiled = Arc::new(Compiled {
            digest: digest.clone(),
            component: OnceCell::new(),
        });
        entries.insert(digest, Arc::downgrade(&compiled));
        compiled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Weak<Compiled>>> {
        self.compiled.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn load(&self, name: &str, digest: &Digest, bytes: Arc<[u8]>) -> Result<Component, LoadError> {
        let engine = self.engine.clone();
        let disk = self.disk.clone();
        let name = name.to_owned();
        let digest = digest.clone();
        // Compilation and file I/O are CPU- and disk-bound: keep them off the
        // async worker threads.
        tokio::task::spawn_blocking(move || {
            if let Some(component) = disk.as_ref().and_then(|d| d.read(&engine, &digest)) {
                return Ok(component);
            }
            let started = std::time::Instant::now();
            let component = Component::new(&engine, &*bytes).map_err(|err| LoadError::Invalid {
                name: name.clone(),
                message: one_line(&err),
            })?;
            tracing::info!(component = %name, %digest, elapsed_ms = started.elapsed().as_millis() as u64, "compiled component");
            if let Some(disk) = &disk {
                disk.write(&digest, &component);
            }
            Ok(component)
        })
        .await
        .map_err(|err| LoadError::Invalid {
            name: "component".to_owned(),
            message: format!("compilation task failed: {err}"),
        })?
    }
}

/// Precompiled artifacts in a directory, named by component digest and
/// engine configuration so that an upgraded host never loads a stale one.
#[derive(Clone)]
struct DiskCache {
    path: PathBuf,
    dir: Arc<Dir>,
    engine_key: String,
}

impl DiskCache {
    fn open(path: &Path, engine: &Engine) -> Result<Self, LoadError> {
        let cache_dir_error = |source| LoadError::CacheDir {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path).map_err(cache_dir_error)?;
        let dir = Dir::open_ambient_dir(path, ambient_authority()).map_err(cache_dir_error)?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            path: path.to_path_buf(),
            dir: Arc::new(dir),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    fn artifact_name(&self, digest: &Digest) -> String {
        format!("{digest}-{}.cwasm", self.engine_key)
    }

    /// The cached artifact, if present and intact. Any problem means a miss.
    fn read(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let name = self.artifact_name(digest);
        let artifact = self.dir.read(&name).ok()?;
        let recorded = self.dir.read_to_string(format!("{name}.sha256")).ok()?;
        if Digest::of(&artifact).as_str() != recorded.trim() {
            tracing::warn!(artifact = %name, "cached artifact does not match its digest; recompiling");
            return None;
        }
        // SAFETY: `Component::deserialize` trusts its input to be an artifact
        // produced by `Component::serialize` of a compatible engine. The file
        // name carries the engine compatibility hash, and the digest check
        // above proves the bytes are exactly those this host wrote.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, &artifact) };
        match component {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(artifact = %name, error = %one_line(&err), "cannot load cached artifact; recompiling");
                None
            }
        }
    }

    /// Persist an artifact. Failure only costs a recompilation next start.
    fn write(&self, digest: &Digest, component: &Component) {
        let name = self.artifact_name(digest);
        let result = component
            .serialize()
            .map_err(|err| std::io::Error::other(one_line(&err)))
            .and_then(|artifact| {
                self.write_atomically(&name, &artifact)?;
                self.write_atomically(&format!("{name}.sha256"), Digest::of(&artifact).as_str().as_bytes())
            });
        if let Err(err) = result {
            tracing::warn!(artifact = %name, error = %err, "cannot write component cache");
        }
    }

    fn write_atomically(&self, name: &str, contents: &[u8]) -> std::io::Result<()> {
        // Unique per writer: threads and processes sharing a cache directory
        // may compile the same component at the same moment.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let temporary = format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        );
        let mut file = self.dir.create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        self.dir.rename(&temporary, &self.dir, name)
    }
}

/// A wasmtime error on one line: its message and root cause.
pub(crate) fn one_line(err: &wasmtime::Error) -> String {
    let message = err.to_string();
    let root = err.root_cause().to_string();
    if root == message || message.contains(&root) {
        message
    } else {
        format!("{message}: {root}")
    }
}
