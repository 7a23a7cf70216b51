//! This node's certificate and key files, replaced as one pair.
//!
//! A renewal writes `node.key.new` and `node.pem.new` (each synced), then
//! renames the key, then the certificate, over the old pair. The staged
//! certificate is renamed last, so while `node.pem.new` exists the whole
//! new pair is on disk: [`finish_staged`], run before the files are read at
//! start, completes a renewal a crash interrupted. A crash before both
//! staged files were written leaves the old pair, which is still valid.

use std::io;
use std::path::PathBuf;

use crate::config::DataDir;

fn staged(path: PathBuf) -> PathBuf {
    let mut s = path.into_os_string();
    s.push(".new");
    PathBuf::from(s)
}

/// Writes the new pair and puts it in place of the old one.
///
/// # Errors
/// Any I/O error; the old pair stays in force until the key's rename.
pub(crate) fn replace_pair(dir: &DataDir, cert_pem: &str, key_pem: &str) -> io::Result<()> {
    tandem_certs::write_key_file(staged(dir.node_key()), key_pem)?;
    tandem_certs::write_public_file(staged(dir.node_cert()), cert_pem)?;
    finish_staged(dir)
}

/// Completes a staged replacement, if one is there.
///
/// # Errors
/// Any I/O error of the renames.
pub(crate) fn finish_staged(dir: &DataDir) -> io::Result<()> {
    let (cert_new, key_new) = (staged(dir.node_cert()), staged(dir.node_key()));
    if !cert_new.exists() {
        // An unfinished stage (no certificate yet): the old pair stands.
        if key_new.exists() {
            std::fs::remove_file(&key_new)?;
        }
        return Ok(());
    }
    if key_new.exists() {
        std::fs::rename(&key_new, dir.node_key())?;
    }
    std::fs::rename(&cert_new, dir.node_cert())?;
    std::fs::File::open(dir.root())?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, DataDir) {
        let t = tempfile::tempdir().expect("a temp dir");
        let d = DataDir::new(t.path().to_path_buf());
        std::fs::write(d.node_cert(), "old cert").expect("write");
        std::fs::write(d.node_key(), "old key").expect("write");
        (t, d)
    }

    fn pair(d: &DataDir) -> (String, String) {
        (
            std::fs::read_to_string(d.node_cert()).expect("read"),
            std::fs::read_to_string(d.node_key()).expect("read"),
        )
    }

    #[test]
    fn a_crash_leaves_one_whole_pair() {
        let (_t, d) = dir();
        // Only the key was staged: the old pair stands.
        std::fs::write(staged(d.node_key()), "new key").expect("write");
        finish_staged(&d).expect("finish");
        assert_eq!(pair(&d), ("old cert".into(), "old key".into()));
        assert!(!staged(d.node_key()).exists());
        // Both staged, or the key already renamed: the new pair.
        std::fs::write(staged(d.node_key()), "new key").expect("write");
        std::fs::write(staged(d.node_cert()), "new cert").expect("write");
        finish_staged(&d).expect("finish");
        assert_eq!(pair(&d), ("new cert".into(), "new key".into()));
        std::fs::write(d.node_key(), "newer key").expect("write");
        std::fs::write(staged(d.node_cert()), "newer cert").expect("write");
        finish_staged(&d).expect("finish");
        assert_eq!(pair(&d), ("newer cert".into(), "newer key".into()));
        replace_pair(&d, "c3", "k3").expect("replace");
        assert_eq!(pair(&d), ("c3".into(), "k3".into()));
        assert!(!staged(d.node_cert()).exists() && !staged(d.node_key()).exists());
    }
}
