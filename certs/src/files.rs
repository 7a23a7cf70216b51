//! Writing key and certificate files atomically with the right permissions.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Writes a private key (or any secret) to `path` with mode 0600.
///
/// The file is created 0600 from the start (the secret is never readable by
/// others, even briefly), written to a temporary file beside `path`, fsynced,
/// renamed over `path`, and the directory is fsynced, so a crash leaves either
/// the old file or the new one.
///
/// # Errors
///
/// Any I/O error; the temporary file is removed on failure.
pub fn write_key_file(path: impl AsRef<Path>, pem: &str) -> io::Result<()> {
    write_atomic(path.as_ref(), pem.as_bytes(), 0o600)
}

/// Writes a certificate (or other public document) to `path` with mode 0644,
/// atomically as [`write_key_file`] does.
///
/// # Errors
///
/// Any I/O error; the temporary file is removed on failure.
pub fn write_public_file(path: impl AsRef<Path>, pem: &str) -> io::Result<()> {
    write_atomic(path.as_ref(), pem.as_bytes(), 0o644)
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let result = write_tmp_and_rename(&tmp, path, &dir, contents, mode);
    if result.is_err() {
        // Best effort: the original error is what the caller needs to see.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_tmp_and_rename(
    tmp: &Path,
    path: &Path,
    dir: &Path,
    contents: &[u8],
    mode: u32,
) -> io::Result<()> {
    // A leftover from a crashed earlier attempt of this same process id.
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    // The creation mode is filtered by the umask; set it exactly.
    file.set_permissions(Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn key_file_is_0600_and_public_file_0644() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("node.key");
        let cert = dir.path().join("node.crt");
        write_key_file(&key, "secret").unwrap();
        write_public_file(&cert, "public").unwrap();
        assert_eq!(mode_of(&key), 0o600);
        assert_eq!(mode_of(&cert), 0o644);
        assert_eq!(fs::read_to_string(&key).unwrap(), "secret");
        assert_eq!(fs::read_to_string(&cert).unwrap(), "public");
    }

    #[test]
    fn overwrite_replaces_content_and_fixes_mode() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ca.key");
        fs::write(&key, "old").unwrap();
        fs::set_permissions(&key, Permissions::from_mode(0o666)).unwrap();
        write_key_file(&key, "new").unwrap();
        assert_eq!(fs::read_to_string(&key).unwrap(), "new");
        assert_eq!(mode_of(&key), 0o600);
        // Only the target remains: no temporary files left behind.
        let entries: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_key_file(dir.path().join("nope/node.key"), "x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
