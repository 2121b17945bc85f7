//! Embeds the git commit the binary is built from as `SSEKIFY_COMMIT`, for
//! `ssekify --version` and the start-up line: a release number alone does not
//! say which code a deployment runs.
//!
//! The commit is `SSEKIFY_COMMIT` from the build's environment when given (a
//! Docker build passes it in, as its context has no `.git`), else `git
//! rev-parse --short HEAD` when the sources are a git checkout of this crate,
//! else `unknown` (a tarball, a packaged crate, no git installed).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SSEKIFY_COMMIT");
    // Watched whatever git answers below: a build that could not ask git
    // (git missing for a moment, a ref being rewritten) asks again once
    // HEAD or a branch moves, instead of keeping `unknown` for good.
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        let dot_git = PathBuf::from(dir).join(".git");
        for path in [dot_git.join("HEAD"), dot_git.join("refs").join("heads")] {
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let commit = match std::env::var("SSEKIFY_COMMIT") {
        Ok(given) if !given.trim().is_empty() => given.trim().to_owned(),
        _ => git_commit().unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env=SSEKIFY_COMMIT={commit}");
}

/// The short commit of HEAD, when this crate's directory is the top of a git
/// work tree (not a crate unpacked inside some other repository). Asks cargo
/// to build again when HEAD moves.
fn git_commit() -> Option<String> {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let top = PathBuf::from(git(&manifest_dir, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != manifest_dir.canonicalize().ok()? {
        return None;
    }
    // HEAD names the branch; the branch's ref (loose, or in packed-refs)
    // names the commit. A worktree keeps HEAD in its own git dir and the
    // refs in the common one.
    // A path watched but missing would make cargo run this script (and
    // rebuild the crate) every time, so only existing files are watched.
    let git_dir = PathBuf::from(git(&manifest_dir, &["rev-parse", "--absolute-git-dir"])?);
    let mut watched = vec![git_dir.join("HEAD")];
    if let Some(common) = git(&manifest_dir, &["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
        let common = PathBuf::from(common);
        watched.push(common.join("packed-refs"));
        if let Some(branch) = git(&manifest_dir, &["symbolic-ref", "-q", "HEAD"]) {
            watched.push(common.join(branch));
        }
    }
    for path in watched.iter().filter(|path| path.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    git(&manifest_dir, &["rev-parse", "--short", "HEAD"])
}

/// One line of `git`'s output, `None` when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let line = text.trim();
    (output.status.success() && !line.is_empty()).then(|| line.to_owned())
}
