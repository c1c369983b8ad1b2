//! Certificates for the metrics endpoint's TLS tests, made by openssl: a
//! CA, a server certificate for 127.0.0.1 and localhost, a client
//! certificate the CA signed, and one a second CA signed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory of PEM files: `ca.pem`, `server.pem`/`server.key`,
/// `client.pem`/`client.key` (signed by `ca`), `rogue.pem`/`rogue.key`
/// (a client signed by another CA). Removed when dropped.
pub struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl req` with a new P-256 key, `name`.key, writing `out`, for
/// `subject`, with the `extra` arguments.
fn req(dir: &Path, name: &str, out: &str, subject: &str, extra: &[&str]) {
    let key = format!("{name}.key");
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        out,
        "-subj",
        subject,
    ];
    args.extend(extra);
    openssl(dir, &args);
}

/// A P-256 key and a request for `cn`; `name`.key and `name`.csr.
fn key_and_request(dir: &Path, name: &str, cn: &str) {
    req(
        dir,
        name,
        &format!("{name}.csr"),
        &format!("/CN={cn}"),
        &["-new"],
    );
}

/// A self-signed CA: `name`.pem and `name`.key.
fn ca(dir: &Path, name: &str) {
    req(
        dir,
        name,
        &format!("{name}.pem"),
        &format!("/CN=tcpstates test {name}"),
        &[
            "-x509",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// `name`.pem, signed by `ca` with the extensions `ext`.
fn sign(dir: &Path, name: &str, ca: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

impl Pki {
    /// Makes the files in a fresh directory named after `name`.
    pub fn make(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tcpstates-pki-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ca(&dir, "ca");
        ca(&dir, "otherca");
        key_and_request(&dir, "server", "localhost");
        sign(
            &dir,
            "server",
            "ca",
            "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        key_and_request(&dir, "client", "prometheus");
        sign(&dir, "client", "ca", "extendedKeyUsage=clientAuth\n");
        key_and_request(&dir, "rogue", "rogue");
        sign(&dir, "rogue", "otherca", "extendedKeyUsage=clientAuth\n");
        Self { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One of its files.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
