//! storageUri resolution: local paths, file://, root confinement, mirrors, and http downloads with
//! size and checksum checks against a real HTTP server on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

use sha2::{Digest, Sha256};
use siesta_models::StorageError;
use siesta_models::storage::{StorageEnv, StorageOptions, parse_mirror};

fn resolve(uri: &str, o: &StorageOptions) -> Result<std::path::PathBuf, StorageError> {
    siesta_models::storage::resolve(uri, o).map(|r| r.dir)
}

fn model_dir(root: &Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        siesta_models::embedded::MNIST_CONFIG,
    )
    .unwrap();
    std::fs::write(
        dir.join("model.safetensors"),
        siesta_models::embedded::MNIST_WEIGHTS,
    )
    .unwrap();
    dir
}

fn opts(root: Option<&Path>, cache: &Path) -> StorageOptions {
    StorageOptions {
        model_root: root.map(Path::to_path_buf),
        cache_dir: cache.to_path_buf(),
        // Nothing here may reach a real cloud: a store that is asked for goes to a closed port.
        env: Some(StorageEnv::from_pairs([
            ("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ])),
        ..Default::default()
    }
}

#[test]
fn local_paths_and_file_uris_resolve_inside_the_root() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path(), "mnist");
    let o = opts(Some(root.path()), root.path());
    let canonical = dir.canonicalize().unwrap();
    assert_eq!(resolve(dir.to_str().unwrap(), &o).unwrap(), canonical);
    assert_eq!(
        resolve(&format!("file://{}", dir.display()), &o).unwrap(),
        canonical
    );
    assert_eq!(
        resolve("mnist", &o).unwrap(),
        canonical,
        "relative to the model root"
    );

    let err = resolve("mnist/../..", &o).unwrap_err();
    assert!(matches!(err, StorageError::EscapesRoot { .. }), "{err}");
    let err = resolve("/etc", &o).unwrap_err();
    assert!(matches!(err, StorageError::EscapesRoot { .. }), "{err}");
    let err = resolve("file:///no/such/model", &opts(None, root.path())).unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
}

#[test]
fn cloud_schemes_go_to_their_store_unless_a_mirror_matches() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path(), "flowers");
    let mut o = opts(None, root.path());
    let err = resolve("gs://kfserving-examples/models/tensorflow/flowers", &o).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            StorageError::Remote {
                cause: siesta_models::RemoteCause::Network,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("--storage-mirror")
            && msg.contains("gs://kfserving-examples/models/tensorflow/flowers"),
        "an unreachable store says which URI and how to mirror it: {msg}"
    );

    o.mirrors.push(
        parse_mirror(&format!(
            "gs://kfserving-examples/models/tensorflow/=file://{}/",
            root.path().display()
        ))
        .unwrap(),
    );
    o.mirrors
        .push(parse_mirror("gs://kfserving-examples/=file:///nonexistent/").unwrap());
    assert_eq!(
        resolve("gs://kfserving-examples/models/tensorflow/flowers", &o).unwrap(),
        dir.canonicalize().unwrap(),
        "the longest matching prefix wins"
    );
    let err = resolve("gs://kfserving-examples/models/tensorflow/../../../etc", &o).unwrap_err();
    assert!(matches!(err, StorageError::Invalid { .. }), "{err}");
    let err = resolve("s3://bucket/model", &o).unwrap_err();
    assert!(
        matches!(err, StorageError::Remote { .. }),
        "no mirror matches, so the store is asked: {err}"
    );
    assert!(matches!(
        resolve("ftp://host/model", &o).unwrap_err(),
        StorageError::Invalid { .. }
    ));

    assert!(parse_mirror("no-equals-sign").is_err());
    assert!(parse_mirror("ftp://x/=file:///y/").is_err());
    assert!(parse_mirror("gs://x/=ftp://y/").is_err());
}

/// Serves `files` by path; `lie_about_length` announces more bytes than it sends.
fn http_server(files: Vec<(String, Vec<u8>)>, lie_about_length: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
            match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    let announced = body.len()
                        + if lie_about_length && path.ends_with(".safetensors") {
                            100
                        } else {
                            0
                        };
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\ncontent-length: {announced}\r\nconnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(body);
                }
                None => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                }
            }
        }
    });
    format!("http://{addr}")
}

fn config_with_checksum(sha: &str) -> Vec<u8> {
    let mut cfg: serde_json::Value =
        serde_json::from_slice(siesta_models::embedded::MNIST_CONFIG).unwrap();
    cfg["weights_sha256"] = serde_json::Value::String(sha.to_string());
    cfg.to_string().into_bytes()
}

#[test]
fn http_models_are_downloaded_verified_and_cached_atomically() {
    let weights = siesta_models::embedded::MNIST_WEIGHTS.to_vec();
    let good_sha: String = Sha256::digest(&weights)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let cache = tempfile::tempdir().unwrap();
    let o = opts(None, cache.path());

    let base = http_server(
        vec![
            ("/good/config.json".into(), config_with_checksum(&good_sha)),
            ("/good/model.safetensors".into(), weights.clone()),
            (
                "/bad/config.json".into(),
                config_with_checksum(&"0".repeat(64)),
            ),
            ("/bad/model.safetensors".into(), weights.clone()),
            // A "config" no model has: refused from its announced size, not read into memory.
            ("/huge/config.json".into(), vec![b' '; 2 << 20]),
        ],
        false,
    );
    let dir = resolve(&format!("{base}/good/"), &o).unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        weights
    );
    assert_eq!(
        resolve(&format!("{base}/good"), &o).unwrap(),
        dir,
        "served from the cache the second time"
    );
    let model =
        siesta_models::load_model(&siesta_models::ModelSource::Dir(dir), &Default::default())
            .unwrap();
    assert_eq!(model.config().name, "mnist");

    let err = resolve(&format!("{base}/bad"), &o).unwrap_err();
    assert!(
        matches!(err, StorageError::ChecksumMismatch { .. }),
        "{err}"
    );
    let err = resolve(&format!("{base}/huge"), &o).unwrap_err();
    assert!(
        err.to_string().contains("a config.json is at most"),
        "{err}"
    );
    let err = resolve(&format!("{base}/missing"), &o).unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");

    let lying = http_server(
        vec![
            ("/m/config.json".into(), config_with_checksum(&good_sha)),
            ("/m/model.safetensors".into(), weights),
        ],
        true,
    );
    let err = resolve(&format!("{lying}/m"), &o).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::SizeMismatch { .. }
                | StorageError::Download { .. }
                | StorageError::Remote { .. }
        ),
        "a short download is an error: {err}"
    );

    // Only the one good model is in the cache (its directory and record): failed downloads left
    // nothing behind, not even in staging.
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let staged = std::fs::read_dir(cache.path().join(".staging"))
        .unwrap()
        .count();
    assert_eq!(staged, 0);
}

#[test]
fn a_missing_weights_file_is_a_load_error_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path(), "m");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err =
        match siesta_models::load_model(&siesta_models::ModelSource::Dir(dir), &Default::default())
        {
            Err(e) => e,
            Ok(_) => panic!("loaded without weights"),
        };
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}
