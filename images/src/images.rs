//! Partition images: where they are and how `vmpi build` makes them.
//!
//! # Assumptions
//! - Service crates live in the `partitions/` cargo workspace (target
//!   `x86_64-unknown-none`); `cargo build --release -p SERVICE` there puts the ELF at
//!   `partitions/target/x86_64-unknown-none/release/SERVICE`. vmpi passes
//!   `--target-dir partitions/target` so a `CARGO_TARGET_DIR` in the environment
//!   cannot move it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::manifest::{ImageSource, ManifestError, System};

/// The cargo target of partition images.
pub const TARGET: &str = "x86_64-unknown-none";

/// Image errors.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An image is not there (error text names file, line and key).
    #[error(transparent)]
    Missing(#[from] ManifestError),
    /// cargo could not be run.
    #[error("cannot run cargo in {dir}: {source}")]
    Cargo {
        /// The partitions workspace.
        dir: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// cargo failed.
    #[error("building {0} failed (cargo's messages are above)")]
    BuildFailed(String),
}

/// The `partitions/` workspace for a manifest: the nearest ancestor of the
/// manifest's folder that holds `partitions/Cargo.toml`, else the one beside this
/// crate.
pub fn partitions_dir(manifest: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(manifest).unwrap_or_else(|_| manifest.to_path_buf());
    abs.ancestors()
        .skip(1)
        .map(|d| d.join("partitions"))
        .find(|d| d.join("Cargo.toml").is_file())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../partitions"))
}

/// Where partition `rank`'s image is (whether or not it exists).
pub fn image_path(sys: &System, rank: usize, partitions: &Path) -> PathBuf {
    match &sys.partitions[rank].image {
        ImageSource::Path(p) => p.clone(),
        ImageSource::Service(s) => partitions
            .join("target")
            .join(TARGET)
            .join("release")
            .join(s),
    }
}

/// Every partition's image, or the first that is missing as a manifest error.
pub fn require_images(sys: &System, partitions: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let mut v = Vec::new();
    for p in &sys.partitions {
        let path = image_path(sys, p.rank, partitions);
        if !path.is_file() {
            let (key, message) = match &p.image {
                ImageSource::Service(s) => (
                    "partition.service",
                    format!(
                        "image {} for service `{s}` is missing: run `vmpi build {}`",
                        path.display(),
                        sys.file.display()
                    ),
                ),
                ImageSource::Path(_) => (
                    "partition.image",
                    format!("image {} is missing", path.display()),
                ),
            };
            return Err(ManifestError::At {
                file: sys.file.display().to_string(),
                line: p.image_line,
                key: key.into(),
                message,
            }
            .into());
        }
        v.push(path);
    }
    Ok(v)
}

/// The service crates `sys` needs, each once, in manifest order.
pub fn services(sys: &System) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for p in &sys.partitions {
        if let ImageSource::Service(s) = &p.image
            && !v.contains(s)
        {
            v.push(s.clone());
        }
    }
    v
}

/// Builds every service crate `sys` needs with cargo (its progress on the terminal).
pub fn build(sys: &System, partitions: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let services = services(sys);
    let n = services.len();
    for (i, s) in services.iter().enumerate() {
        eprintln!("vmpi: [{}/{n}] building service `{s}`", i + 1);
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(partitions)
            .args(["build", "--release", "-p", s, "--target-dir"])
            .arg(partitions.join("target"))
            // The partitions workspace has its own target and flags: drop what a
            // surrounding cargo (cargo run, cargo test) may have set.
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .status()
            .map_err(|source| ImageError::Cargo {
                dir: partitions.to_path_buf(),
                source,
            })?;
        if !status.success() {
            return Err(ImageError::BuildFailed(format!("service `{s}`")));
        }
    }
    let images = require_images(sys, partitions)?;
    for (p, img) in sys.partitions.iter().zip(&images) {
        let bytes = std::fs::metadata(img).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "vmpi: {:<12} {} ({} KiB)",
            p.name,
            img.display(),
            bytes.div_ceil(1024)
        );
    }
    Ok(images)
}
