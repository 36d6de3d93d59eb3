//! `agent bundle keygen|create|verify|inspect`: signing keys, and building and checking signed
//! OS update bundles (the format is in `tether_protocol::bundle` and `bsp/BUNDLE.md`).
//!
//! Everything streams: images are hashed and compressed in bounded buffers, a bundle is built
//! under `OUTPUT.partial` and renamed into place only when complete, and verification reads the
//! whole bundle once without writing anything.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use tether_protocol::bundle::{
    self, BundleError, COPY_BUFFER_LEN, Compression, FORMAT_VERSION, ImageEntry, Keyring, Manifest,
    SignatureEntry, ZSTD_LEVEL, ZSTD_WINDOW_LOG_MAX,
};

use crate::ota::image_copy::copy_image_any;

/// The first word of a secret key file (`tether-ed25519-secret <base64 32-byte seed>`).
pub const SECRET_KEY_TAG: &str = "tether-ed25519-secret";

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BundleError {
    let what = what.into();
    move |source| BundleError::Io { what, source }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Writes an ed25519 key pair: NAME.key (secret; mode 0600; format
/// `tether-ed25519-secret <base64 32-byte seed>`) and NAME.pub
/// (`tether-ed25519 <base64 public key> <key id>`); refuses to overwrite. Returns both paths and
/// the key id.
pub fn keygen(out: &Path) -> Result<(PathBuf, PathBuf, String), BundleError> {
    let secret_path = with_suffix(out, ".key");
    let public_path = with_suffix(out, ".pub");
    for path in [&secret_path, &public_path] {
        if fs::symlink_metadata(path).is_ok() {
            return Err(BundleError::Key {
                path: path.clone(),
                message: "already exists; not overwriting a key".to_string(),
            });
        }
    }
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let secret_line = format!("{SECRET_KEY_TAG} {}\n", STANDARD.encode(seed));
    seed.fill(0);
    let public = key.verifying_key();
    let public_line = format!("{}\n", bundle::public_key_line(&public));

    write_new(&secret_path, secret_line.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&public_path, public_line.as_bytes(), 0o644) {
        let _ = fs::remove_file(&secret_path);
        return Err(e);
    }
    Ok((secret_path, public_path, bundle::key_id(&public)))
}

/// Creates `path` (which must not exist) with `mode` and `data`, synced; removed on failure.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), BundleError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(format!("creating {}", path.display())))?;
    let written = file.write_all(data).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(path);
        return Err(io_err(format!("writing {}", path.display()))(e));
    }
    Ok(())
}

/// Loads a secret key file written by [`keygen`], refusing one that group or others can read.
pub fn load_secret_key(path: &Path) -> Result<SigningKey, BundleError> {
    let key_err = |message: String| BundleError::Key {
        path: path.to_path_buf(),
        message,
    };
    let meta = fs::metadata(path).map_err(|e| key_err(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(key_err(format!(
            "the secret key is readable by group or others (mode {mode:o}); run `chmod 600 {}`",
            path.display()
        )));
    }
    if meta.len() > 4096 {
        return Err(key_err("not a tether secret key (too large)".to_string()));
    }
    let text = fs::read_to_string(path).map_err(|e| key_err(e.to_string()))?;
    let mut words = text.split_whitespace();
    if words.next() != Some(SECRET_KEY_TAG) {
        return Err(key_err(format!(
            "not a tether secret key (expected `{SECRET_KEY_TAG} <base64 seed>`)"
        )));
    }
    let seed = words
        .next()
        .and_then(|w| STANDARD.decode(w).ok())
        .ok_or_else(|| key_err("the seed is not valid base64".to_string()))?;
    let seed: [u8; 32] = seed
        .try_into()
        .map_err(|s: Vec<u8>| key_err(format!("the seed is {} bytes, not 32", s.len())))?;
    if words.next().is_some() {
        return Err(key_err("unexpected text after the seed".to_string()));
    }
    Ok(SigningKey::from_bytes(&seed))
}

/// What [`create`] builds.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// One or more secret keys; each signs the manifest.
    pub keys: Vec<PathBuf>,
    /// The OS version the bundle installs (semver).
    pub version: String,
    /// The hardware the bundle is for.
    pub compatible: String,
    /// The images, `(class, file)`, in payload order.
    pub images: Vec<(String, PathBuf)>,
    /// Whether to compress the images (zstd, level 3, 1 MiB window).
    pub compress: bool,
    /// Where to write the bundle.
    pub output: PathBuf,
}

/// Files removed when dropped, unless released: the partial bundle and compressed temporaries.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// Streams `src` through SHA-256 into `out`; returns the byte count and the hex hash.
fn hash_stream<R: Read, W: Write>(src: &mut R, out: &mut W) -> io::Result<(u64, String)> {
    let mut buf = vec![0u8; COPY_BUFFER_LEN];
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// An image being prepared: its manifest entry and where its payload is.
struct Prepared {
    entry: ImageEntry,
    source: PathBuf,
    /// The compressed payload, if compressed.
    payload: Option<PathBuf>,
}

fn prepare_image(
    class: &str,
    source: &Path,
    compress: bool,
    output: &Path,
    cleanup: &mut Cleanup,
) -> Result<Prepared, BundleError> {
    let open_err = io_err(format!("image {class}: {}", source.display()));
    let file = File::open(source).map_err(open_err)?;
    let mut reader = BufReader::with_capacity(COPY_BUFFER_LEN, file);
    let read_err = io_err(format!("image {class}: reading {}", source.display()));
    if !compress {
        let (size, sha256) = hash_stream(&mut reader, &mut io::sink()).map_err(read_err)?;
        return Ok(Prepared {
            entry: ImageEntry {
                class: class.to_string(),
                size,
                sha256,
                stored_size: size,
                compression: Compression::None,
            },
            source: source.to_path_buf(),
            payload: None,
        });
    }
    let tmp = with_suffix(output, &format!(".{class}.zst.tmp"));
    let tmp_err = io_err(format!("image {class}: compressing into {}", tmp.display()));
    cleanup.0.push(tmp.clone());
    let _ = fs::remove_file(&tmp);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(format!("creating {}", tmp.display())))?;
    let mut encoder = zstd::stream::write::Encoder::new(
        BufWriter::with_capacity(COPY_BUFFER_LEN, file),
        ZSTD_LEVEL,
    )
    .map_err(io_err(format!("image {class}: starting zstd")))?;
    encoder
        .window_log(ZSTD_WINDOW_LOG_MAX)
        .map_err(io_err(format!("image {class}: setting the zstd window")))?;
    let (size, sha256) = hash_stream(&mut reader, &mut encoder).map_err(io_err(format!(
        "image {class}: compressing {} into {}",
        source.display(),
        tmp.display()
    )))?;
    let file = encoder
        .finish()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(tmp_err)?;
    let stored_size = file
        .metadata()
        .map_err(io_err(format!("stat {}", tmp.display())))?
        .len();
    Ok(Prepared {
        entry: ImageEntry {
            class: class.to_string(),
            size,
            sha256,
            stored_size,
            compression: Compression::Zstd,
        },
        source: source.to_path_buf(),
        payload: Some(tmp),
    })
}

/// Appends one image's payload to the bundle, checking it is still what the manifest says.
fn append_payload<W: Write>(out: &mut W, image: &Prepared) -> Result<(), BundleError> {
    let class = &image.entry.class;
    match &image.payload {
        Some(tmp) => {
            let file = File::open(tmp).map_err(io_err(format!("opening {}", tmp.display())))?;
            let copied = io::copy(
                &mut BufReader::with_capacity(COPY_BUFFER_LEN, file),
                &mut *out,
            )
            .map_err(io_err(format!("image {class}: writing the bundle")))?;
            if copied != image.entry.stored_size {
                return Err(BundleError::Invalid(format!(
                    "image {class}: {} changed while the bundle was being written",
                    tmp.display()
                )));
            }
        }
        None => {
            let source = &image.source;
            let file = File::open(source)
                .map_err(io_err(format!("image {class}: {}", source.display())))?;
            let mut reader = BufReader::with_capacity(COPY_BUFFER_LEN, file);
            // Copy exactly the manifest's size (a file growing meanwhile must not shift the next
            // payload), hashing again: the bundle must hold what was signed.
            let (size, sha256) = hash_stream(&mut (&mut reader).take(image.entry.size), out)
                .map_err(io_err(format!(
                    "image {class}: copying {} into the bundle",
                    source.display()
                )))?;
            if size != image.entry.size || sha256 != image.entry.sha256 {
                return Err(BundleError::Invalid(format!(
                    "image {class}: {} changed while the bundle was being written",
                    source.display()
                )));
            }
        }
    }
    Ok(())
}

/// Builds a bundle: hashes each image (streaming), compresses it into a temporary file next to
/// the output when asked, writes header, manifest, signatures and payloads to `OUTPUT.partial`,
/// syncs it and renames it into place (a half-written bundle never has the final name).
/// The version must be semver and the class names valid and unique; each key signs.
pub fn create(opts: &CreateOptions) -> Result<Manifest, BundleError> {
    bundle::validate_version(&opts.version)?;
    bundle::validate_compatible(&opts.compatible)?;
    if opts.images.is_empty() {
        return Err(BundleError::Invalid(
            "a bundle needs at least one image".to_string(),
        ));
    }
    for (i, (class, _)) in opts.images.iter().enumerate() {
        bundle::validate_class(class)?;
        if opts.images[..i].iter().any(|(c, _)| c == class) {
            return Err(BundleError::DuplicateClass(class.clone()));
        }
    }
    if opts.keys.is_empty() {
        return Err(BundleError::Invalid(
            "a bundle needs at least one signing key".to_string(),
        ));
    }
    let mut keys: Vec<SigningKey> = Vec::new();
    for path in &opts.keys {
        let key = load_secret_key(path)?;
        if keys
            .iter()
            .any(|k| k.verifying_key() == key.verifying_key())
        {
            return Err(BundleError::Key {
                path: path.clone(),
                message: format!("key {} given twice", bundle::key_id(&key.verifying_key())),
            });
        }
        keys.push(key);
    }

    let mut cleanup = Cleanup(Vec::new());
    let mut prepared = Vec::new();
    for (class, source) in &opts.images {
        prepared.push(prepare_image(
            class,
            source,
            opts.compress,
            &opts.output,
            &mut cleanup,
        )?);
    }
    let manifest = Manifest {
        format: u32::from(FORMAT_VERSION),
        version: opts.version.clone(),
        compatible: opts.compatible.clone(),
        created: tether_protocol::clock::now_rfc3339(),
        images: prepared.iter().map(|p| p.entry.clone()).collect(),
    };
    manifest.validate()?;
    let manifest_bytes = manifest.to_bytes()?;
    let signatures = keys
        .iter()
        .map(|k| bundle::sign_manifest(&manifest_bytes, k))
        .collect::<Result<Vec<SignatureEntry>, _>>()?;

    let partial = with_suffix(&opts.output, ".partial");
    let _ = fs::remove_file(&partial);
    cleanup.0.push(partial.clone());
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&partial)
        .map_err(io_err(format!("creating {}", partial.display())))?;
    let mut out = BufWriter::with_capacity(COPY_BUFFER_LEN, file);
    bundle::write_header(&mut out, &manifest_bytes, &signatures)?;
    for image in &prepared {
        append_payload(&mut out, image)?;
    }
    let write_err = io_err(format!("writing {}", partial.display()));
    let file = out.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_all()
        .map_err(io_err(format!("syncing {}", partial.display())))?;
    drop(file);
    fs::rename(&partial, &opts.output).map_err(io_err(format!(
        "renaming {} to {}",
        partial.display(),
        opts.output.display()
    )))?;
    cleanup.0.retain(|p| p != &partial);
    if let Some(dir) = opts.output.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(manifest)
}

/// Verifies a bundle read from `r`: the signature, then every image (size and SHA-256), then
/// that nothing follows the last image. Nothing is written anywhere.
pub fn verify_stream<R: Read>(r: &mut R, keyring: &Keyring) -> Result<Manifest, BundleError> {
    let manifest = bundle::read_header(r, keyring)?;
    for image in &manifest.images {
        copy_image_any(r, image, &mut io::sink(), &mut |_| {})?;
    }
    bundle::expect_end(r)?;
    Ok(manifest)
}

/// Verifies the signature AND every image hash by streaming the whole bundle (nothing written
/// anywhere); returns the manifest.
pub fn verify(bundle: &Path, keyring: &Keyring) -> Result<Manifest, BundleError> {
    let file = File::open(bundle).map_err(io_err(bundle.display().to_string()))?;
    verify_stream(
        &mut BufReader::with_capacity(COPY_BUFFER_LEN, file),
        keyring,
    )
}

/// Header and signatures without verification, for `agent bundle inspect`.
pub fn inspect(bundle: &Path) -> Result<(Manifest, Vec<SignatureEntry>), BundleError> {
    let file = File::open(bundle).map_err(io_err(bundle.display().to_string()))?;
    bundle::read_header_unverified(&mut BufReader::with_capacity(COPY_BUFFER_LEN, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn pattern_file(path: &Path, len: usize, seed: u32) -> io::Result<()> {
        // A cheap deterministic pattern that is neither constant nor random.
        let mut out = BufWriter::new(File::create(path)?);
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        let mut chunk = Vec::with_capacity(1 << 16);
        let mut left = len;
        while left > 0 {
            chunk.clear();
            while chunk.len() < (1 << 16).min(left) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                chunk.push((x % 7) as u8 + b'a');
            }
            out.write_all(&chunk)?;
            left -= chunk.len();
        }
        out.flush()
    }

    struct Fixture {
        dir: tempfile::TempDir,
        key: PathBuf,
        public: PathBuf,
        key_id: String,
    }

    impl Fixture {
        fn new() -> Result<Self, Box<dyn std::error::Error>> {
            let dir = tempfile::tempdir()?;
            let (key, public, key_id) = keygen(&dir.path().join("release"))?;
            pattern_file(&dir.path().join("rootfs.img"), 300_000, 1)?;
            pattern_file(&dir.path().join("kernel.img"), 20_000, 2)?;
            Ok(Fixture {
                dir,
                key,
                public,
                key_id,
            })
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn options(&self, compress: bool) -> CreateOptions {
            CreateOptions {
                keys: vec![self.key.clone()],
                version: "1.2.0".to_string(),
                compatible: "acme-board-rev2".to_string(),
                images: vec![
                    ("rootfs".to_string(), self.path("rootfs.img")),
                    ("kernel".to_string(), self.path("kernel.img")),
                ],
                compress,
                output: self.path("update.tbundle"),
            }
        }

        fn keyring(&self) -> Result<Keyring, BundleError> {
            Keyring::load(&self.public)
        }
    }

    fn leftovers(dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".partial") || name.ends_with(".tmp") {
                names.push(name);
            }
        }
        Ok(names)
    }

    #[test]
    fn bundle_tool_keygen_writes_private_key_and_refuses_overwrite() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (key, public, id) = keygen(&dir.path().join("k"))?;
        assert_eq!(key, dir.path().join("k.key"));
        assert_eq!(public, dir.path().join("k.pub"));
        assert_eq!(fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&public)?;
        assert!(text.starts_with("tether-ed25519 "), "{text}");
        assert!(text.trim_end().ends_with(&id), "{text}");
        let secret = load_secret_key(&key)?;
        assert_eq!(bundle::key_id(&secret.verifying_key()), id);
        let keyring = Keyring::load(&public)?;
        assert_eq!(keyring.key_ids(), vec![id]);

        let before = fs::read(&key)?;
        assert!(matches!(
            keygen(&dir.path().join("k")),
            Err(BundleError::Key { .. })
        ));
        assert_eq!(fs::read(&key)?, before);

        fs::set_permissions(&key, fs::Permissions::from_mode(0o644))?;
        let err = load_secret_key(&key).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("chmod 600")),
            "{err:?}"
        );
        Ok(())
    }

    fn round_trip(compress: bool) -> TestResult {
        let fx = Fixture::new()?;
        let opts = fx.options(compress);
        let manifest = create(&opts)?;
        assert_eq!(leftovers(fx.dir.path())?, Vec::<String>::new());
        let expected = if compress {
            Compression::Zstd
        } else {
            Compression::None
        };
        assert!(manifest.images.iter().all(|i| i.compression == expected));
        assert_eq!(manifest.images[0].size, 300_000);
        if compress {
            assert!(manifest.images[0].stored_size < 300_000);
        }

        let verified = verify(&opts.output, &fx.keyring()?)?;
        assert_eq!(verified, manifest);

        let (inspected, sigs) = inspect(&opts.output)?;
        assert_eq!(inspected, manifest);
        assert_eq!(sigs.len(), 1);
        assert_eq!(sigs[0].key_id, fx.key_id);

        // Installing: the images come out as they went in.
        let mut r = BufReader::new(File::open(&opts.output)?);
        let m = bundle::read_header(&mut r, &fx.keyring()?)?;
        for (image, (_, source)) in m.images.iter().zip(&opts.images) {
            let mut out = Vec::new();
            let mut last = 0;
            let n = copy_image_any(&mut r, image, &mut out, &mut |p| last = p)?;
            assert_eq!((n, last), (image.size, image.size));
            assert!(out == fs::read(source)?, "image {} differs", image.class);
        }
        bundle::expect_end(&mut r)?;
        Ok(())
    }

    #[test]
    fn bundle_tool_round_trip_uncompressed() -> TestResult {
        round_trip(false)
    }

    #[test]
    fn bundle_tool_round_trip_zstd() -> TestResult {
        round_trip(true)
    }

    #[test]
    fn bundle_tool_tampered_manifest_byte_fails_signature() -> TestResult {
        let fx = Fixture::new()?;
        let opts = fx.options(false);
        create(&opts)?;
        let mut bytes = fs::read(&opts.output)?;
        // The version digit "1.2.0" → "1.3.0": still a valid manifest, but not the signed one.
        let at = bytes
            .windows(7)
            .position(|w| w == b"\"1.2.0\"")
            .ok_or("version not found")?;
        bytes[at + 3] = b'3';
        fs::write(&opts.output, &bytes)?;
        let err = verify(&opts.output, &fx.keyring()?).err();
        assert!(
            matches!(err, Some(BundleError::InvalidSignature { ref key_id }) if *key_id == fx.key_id),
            "{err:?}"
        );
        // Inspect does not verify, and shows the tampered version.
        assert_eq!(inspect(&opts.output)?.0.version, "1.3.0");
        Ok(())
    }

    #[test]
    fn bundle_tool_tampered_payload_byte_names_class() -> TestResult {
        for compress in [false, true] {
            let fx = Fixture::new()?;
            let opts = fx.options(compress);
            create(&opts)?;
            let mut bytes = fs::read(&opts.output)?;
            // The last byte belongs to the kernel image.
            let last = bytes.len() - 1;
            bytes[last] ^= 0x55;
            fs::write(&opts.output, &bytes)?;
            let err = verify(&opts.output, &fx.keyring()?).err();
            let text = err.as_ref().map(|e| e.to_string()).unwrap_or_default();
            assert!(text.contains("image kernel"), "{text}");
            if !compress {
                assert!(text.contains("image kernel: sha256 mismatch"), "{text}");
            }
            // A flipped byte in the middle of rootfs.
            let mut bytes = fs::read(&opts.output)?;
            let (manifest, _) = inspect(&opts.output)?;
            let header = bytes.len()
                - manifest
                    .images
                    .iter()
                    .map(|i| i.stored_size as usize)
                    .sum::<usize>();
            bytes[last] ^= 0x55;
            bytes[header + manifest.images[0].stored_size as usize / 2] ^= 0x01;
            fs::write(&opts.output, &bytes)?;
            let text = verify(&opts.output, &fx.keyring()?)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(text.contains("image rootfs"), "{text}");
        }
        Ok(())
    }

    #[test]
    fn bundle_tool_unknown_key_reported() -> TestResult {
        let fx = Fixture::new()?;
        let opts = fx.options(true);
        create(&opts)?;
        let (_, other, _) = keygen(&fx.path("other"))?;
        let err = verify(&opts.output, &Keyring::load(&other)?)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("no signature by a trusted key"), "{err}");
        assert!(err.contains(&fx.key_id), "{err}");
        Ok(())
    }

    #[test]
    fn bundle_tool_old_and_new_key_rotation() -> TestResult {
        let fx = Fixture::new()?;
        let keys = fx.path("keys");
        fs::create_dir(&keys)?;
        let (new_key, new_pub, new_id) = keygen(&keys.join("new"))?;
        let mut opts = fx.options(true);
        opts.keys = vec![fx.key.clone(), new_key];
        create(&opts)?;
        // The device's keyring directory holds only the new key.
        assert_eq!(Keyring::load(&keys)?.key_ids(), vec![new_id.clone()]);
        verify(&opts.output, &Keyring::load(&keys)?)?;
        verify(&opts.output, &Keyring::load(&new_pub)?)?;
        verify(&opts.output, &fx.keyring()?)?;
        let (_, sigs) = inspect(&opts.output)?;
        let ids: Vec<_> = sigs.iter().map(|s| s.key_id.clone()).collect();
        assert_eq!(ids, vec![fx.key_id.clone(), new_id]);
        Ok(())
    }

    #[test]
    fn bundle_tool_truncated_bundle_every_97th_byte() -> TestResult {
        for compress in [false, true] {
            let fx = Fixture::new()?;
            pattern_file(&fx.path("rootfs.img"), 9_000, 3)?;
            pattern_file(&fx.path("kernel.img"), 3_000, 4)?;
            let opts = fx.options(compress);
            create(&opts)?;
            let bytes = fs::read(&opts.output)?;
            let keyring = fx.keyring()?;
            verify_stream(&mut Cursor::new(&bytes), &keyring)?;
            for len in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
                let result = verify_stream(&mut Cursor::new(&bytes[..len]), &keyring);
                assert!(result.is_err(), "cut at {len} accepted");
                // Inspect sees a header or an error, never panics.
                let _ = bundle::read_header_unverified(&mut Cursor::new(&bytes[..len]));
            }
            let text = verify_stream(&mut Cursor::new(&bytes[..bytes.len() - 1]), &keyring)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                text.starts_with("truncated bundle: image kernel ended after"),
                "{text}"
            );
        }
        Ok(())
    }

    #[test]
    fn bundle_tool_wrong_magic_and_version_2() -> TestResult {
        let fx = Fixture::new()?;
        let opts = fx.options(false);
        create(&opts)?;
        let bytes = fs::read(&opts.output)?;
        let mut bad = bytes.clone();
        bad[..4].copy_from_slice(b"\x7fELF");
        fs::write(&opts.output, &bad)?;
        let err = verify(&opts.output, &fx.keyring()?).err();
        assert!(matches!(err, Some(BundleError::BadMagic)), "{err:?}");
        assert!(matches!(inspect(&opts.output), Err(BundleError::BadMagic)));

        let mut v2 = bytes.clone();
        v2[15] = 2;
        fs::write(&opts.output, &v2)?;
        let err = verify(&opts.output, &fx.keyring()?)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unsupported bundle format version 2"), "{err}");
        Ok(())
    }

    #[test]
    fn bundle_tool_trailing_data_refused() -> TestResult {
        let fx = Fixture::new()?;
        let opts = fx.options(true);
        create(&opts)?;
        let mut f = OpenOptions::new().append(true).open(&opts.output)?;
        f.write_all(b"x")?;
        drop(f);
        let err = verify(&opts.output, &fx.keyring()?).err();
        assert!(matches!(err, Some(BundleError::TrailingData)), "{err:?}");
        Ok(())
    }

    #[test]
    fn bundle_tool_create_refuses_bad_input_and_leaves_nothing() -> TestResult {
        let fx = Fixture::new()?;
        let check = |opts: CreateOptions, want: &str| -> TestResult {
            let err = create(&opts)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(want), "{want:?} not in {err:?}");
            assert!(!opts.output.exists());
            assert_eq!(leftovers(fx.dir.path())?, Vec::<String>::new());
            Ok(())
        };
        let mut o = fx.options(true);
        o.version = "v1".to_string();
        check(o, "bad version")?;
        let mut o = fx.options(true);
        o.images[1].0 = "Kernel".to_string();
        check(o, "bad image class")?;
        let mut o = fx.options(true);
        o.images[1].0 = "rootfs".to_string();
        check(o, "duplicate image class")?;
        let mut o = fx.options(true);
        o.images[1].1 = fx.path("missing.img");
        check(o, "image kernel")?;
        let mut o = fx.options(true);
        o.keys.clear();
        check(o, "signing key")?;
        let mut o = fx.options(true);
        o.keys = vec![fx.public.clone()];
        check(o, "readable by group or others")?;
        let not_secret = fx.path("not-secret.key");
        write_new(&not_secret, fs::read(&fx.public)?.as_slice(), 0o600)?;
        let mut o = fx.options(true);
        o.keys = vec![not_secret];
        check(o, "not a tether secret key")?;
        let mut o = fx.options(true);
        o.keys = vec![fx.key.clone(), fx.key.clone()];
        check(o, "given twice")?;
        let mut o = fx.options(true);
        o.images.clear();
        check(o, "at least one image")?;
        let mut o = fx.options(false);
        o.output = fx.path("no-such-dir/update.tbundle");
        check(o, "creating")?;
        Ok(())
    }

    #[test]
    fn bundle_tool_streams_64_mib_image_to_sink() -> TestResult {
        let fx = Fixture::new()?;
        const SIZE: usize = 64 << 20;
        pattern_file(&fx.path("big.img"), SIZE, 5)?;
        let mut opts = fx.options(true);
        opts.images = vec![("rootfs".to_string(), fx.path("big.img"))];
        let manifest = create(&opts)?;
        fs::remove_file(fx.path("big.img"))?;
        let mut r = BufReader::new(File::open(&opts.output)?);
        let m = bundle::read_header(&mut r, &fx.keyring()?)?;
        assert_eq!(m, manifest);
        let mut calls = 0u64;
        let mut last = 0u64;
        let n = copy_image_any(&mut r, &m.images[0], &mut io::sink(), &mut |p| {
            calls += 1;
            last = p;
        })?;
        assert_eq!(n, SIZE as u64);
        assert_eq!(last, SIZE as u64);
        assert!(calls > 1);
        bundle::expect_end(&mut r)?;
        Ok(())
    }
}
