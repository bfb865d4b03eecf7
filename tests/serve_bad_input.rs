//! The bad-input battery: every malformed request gets its protocol status and a JSON
//! `{"error": ...}` body, nothing hangs, and the server keeps serving afterwards.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::raw::{half_a_header_is_cut_off, raw_exchange};
use common::{Server, mnist_v2_body};
use serde_json::{Value, json};

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
}

fn post(what: &'static str, path: &str, body: impl Into<Vec<u8>>, status: u16) -> Case {
    Case {
        what,
        method: "POST",
        path: path.to_string(),
        headers: vec![],
        body: body.into(),
        status,
    }
}

fn get(what: &'static str, path: &str, status: u16) -> Case {
    Case {
        what,
        method: "GET",
        path: path.to_string(),
        headers: vec![],
        body: vec![],
        status,
    }
}

fn v2(what: &'static str, body: Value, status: u16) -> Case {
    post(what, "/v2/models/mnist/infer", body.to_string(), status)
}

fn input(shape: Value, datatype: &str, data: Value) -> Value {
    json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]})
}

fn binary(
    what: &'static str,
    header: Value,
    binary: &[u8],
    header_len: Option<String>,
    status: u16,
) -> Case {
    let mut body = header.to_string().into_bytes();
    let n = body.len();
    body.extend_from_slice(binary);
    let mut c = post(what, "/v2/models/mnist/infer", body, status);
    c.headers.push((
        "Inference-Header-Content-Length",
        header_len.unwrap_or_else(|| n.to_string()),
    ));
    c
}

fn cases() -> Vec<Case> {
    let ok_data = json!(vec![0.0; 784]);
    let raw_input = |size: usize| json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": size}}]});
    let nested: Vec<Vec<f32>> = vec![vec![0.0; 28]; 28];
    vec![
        post("malformed JSON", "/v2/models/mnist/infer", "{", 400),
        post(
            "JSON array instead of object",
            "/v2/models/mnist/infer",
            "[]",
            400,
        ),
        post(
            "not UTF-8",
            "/v2/models/mnist/infer",
            vec![0xff, 0xfe, 0x00],
            400,
        ),
        v2("no inputs field", json!({}), 400),
        v2("inputs is not a list", json!({"inputs": 5}), 400),
        v2("empty inputs", json!({"inputs": []}), 400),
        v2(
            "unknown datatype",
            input(json!([1, 1, 28, 28]), "FLOAT32", ok_data.clone()),
            400,
        ),
        v2(
            "wrong datatype",
            input(json!([1, 1, 28, 28]), "INT32", json!(vec![0; 784])),
            400,
        ),
        v2(
            "wrong rank",
            input(json!([1, 28, 28]), "FP32", ok_data.clone()),
            400,
        ),
        v2(
            "wrong dimension",
            input(json!([1, 1, 28, 27]), "FP32", json!(vec![0.0; 756])),
            400,
        ),
        v2(
            "too many elements",
            input(json!([1, 1, 28, 28]), "FP32", json!(vec![0.0; 785])),
            400,
        ),
        v2(
            "too few elements",
            input(json!([1, 1, 28, 28]), "FP32", json!(vec![0.0; 10])),
            400,
        ),
        v2(
            "negative dimension",
            input(json!([-1, 1, 28, 28]), "FP32", ok_data.clone()),
            400,
        ),
        v2(
            "batch of zero",
            input(json!([0, 1, 28, 28]), "FP32", json!([])),
            400,
        ),
        v2(
            "batch above max_batch_size",
            input(json!([65, 1, 28, 28]), "FP32", json!(vec![0.0; 65 * 784])),
            400,
        ),
        v2(
            "ragged nested data",
            input(json!([1, 1, 2, 2]), "FP32", json!([[1.0, 2.0], 3.0])),
            400,
        ),
        v2(
            "strings in FP32 data",
            input(json!([1, 1, 28, 28]), "FP32", json!(vec!["x"; 784])),
            400,
        ),
        v2(
            // The error message quotes the value: cut on a character, not a byte.
            "non-ASCII strings in FP32 data",
            input(
                json!([1, 1, 28, 28]),
                "FP32",
                json!(vec!["é".repeat(30); 784]),
            ),
            400,
        ),
        v2(
            "null data",
            input(json!([1, 1, 28, 28]), "FP32", Value::Null),
            400,
        ),
        v2(
            "unknown input name",
            json!({"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ok_data}]}),
            400,
        ),
        v2(
            "duplicate input",
            json!({"inputs": [
                {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ok_data},
                {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ok_data}]}),
            400,
        ),
        v2(
            "unknown output",
            json!({"inputs": input(json!([1, 1, 28, 28]), "FP32", ok_data.clone())["inputs"], "outputs": [{"name": "logits"}]}),
            400,
        ),
        v2(
            "output requested twice",
            json!({"inputs": input(json!([1, 1, 28, 28]), "FP32", ok_data.clone())["inputs"], "outputs": [{"name": "class"}, {"name": "class"}]}),
            400,
        ),
        v2(
            "binary_data_output not a boolean",
            json!({"inputs": input(json!([1, 1, 28, 28]), "FP32", ok_data.clone())["inputs"], "parameters": {"binary_data_output": "yes"}}),
            400,
        ),
        v2(
            "binary_data_size negative",
            raw_input(0)
                .to_string()
                .replace(":0}", ":-4}")
                .parse()
                .unwrap(),
            400,
        ),
        binary(
            "binary section shorter than binary_data_size",
            raw_input(3136),
            &[0u8; 3000],
            None,
            400,
        ),
        binary(
            "binary bytes nobody claims",
            raw_input(3136),
            &[0u8; 3140],
            None,
            400,
        ),
        binary(
            "binary_data_size that does not fill the shape",
            raw_input(3132),
            &[0u8; 3132],
            None,
            400,
        ),
        binary(
            "header length not a number",
            raw_input(3136),
            &[0u8; 3136],
            Some("abc".into()),
            400,
        ),
        binary(
            "header length beyond the body",
            raw_input(3136),
            &[0u8; 3136],
            Some("999999".into()),
            400,
        ),
        binary(
            "header length cuts the JSON",
            raw_input(3136),
            &[0u8; 3136],
            Some("20".into()),
            400,
        ),
        {
            let mut c = v2(
                "binary_data_size together with data",
                json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ok_data, "parameters": {"binary_data_size": 3136}}]}),
                400,
            );
            c.body.extend_from_slice(&[0u8; 3136]);
            c.headers.push((
                "Inference-Header-Content-Length",
                (c.body.len() - 3136).to_string(),
            ));
            c
        },
        post(
            "unknown model",
            "/v2/models/resnet/infer",
            mnist_v2_body(&[vec![0.0; 784]]).to_string(),
            404,
        ),
        post(
            "unknown version",
            "/v2/models/mnist/versions/7/infer",
            mnist_v2_body(&[vec![0.0; 784]]).to_string(),
            404,
        ),
        // An oversize body a client is still uploading is refused from its Content-Length and
        // the connection closed: whether the client reads the 413 before its upload hits the
        // closed socket is a race on its side, so that case is the raw-socket one below (the
        // head alone), and the chunked one that is cut off at the limit.
        post(
            "V1 malformed JSON",
            "/v1/models/mnist:predict",
            "{\"instances\": [",
            400,
        ),
        post(
            "V1 instances not a list",
            "/v1/models/mnist:predict",
            json!({"instances": 3}).to_string(),
            400,
        ),
        post(
            "V1 neither instances nor inputs",
            "/v1/models/mnist:predict",
            json!({"data": []}).to_string(),
            400,
        ),
        post(
            "V1 both instances and inputs",
            "/v1/models/mnist:predict",
            json!({"instances": [nested], "inputs": [nested]}).to_string(),
            400,
        ),
        post(
            "V1 no instances",
            "/v1/models/mnist:predict",
            json!({"instances": []}).to_string(),
            400,
        ),
        post(
            "V1 bad base64",
            "/v1/models/mnist:predict",
            json!({"instances": [{"b64": "!!!not base64"}]}).to_string(),
            400,
        ),
        post(
            "V1 base64 of the wrong size",
            "/v1/models/mnist:predict",
            json!({"instances": [{"b64": "AAAA"}]}).to_string(),
            400,
        ),
        post(
            "V1 wrong instance shape",
            "/v1/models/mnist:predict",
            json!({"instances": [[[1.0, 2.0]]]}).to_string(),
            400,
        ),
        post(
            "V1 instances of different shapes",
            "/v1/models/mnist:predict",
            json!({"instances": [[nested], [[[1.0]]]]}).to_string(),
            400,
        ),
        post(
            "V1 unknown model",
            "/v1/models/resnet:predict",
            json!({"instances": [[nested]]}).to_string(),
            404,
        ),
        post(
            "V1 unknown verb",
            "/v1/models/mnist:explode",
            json!({"instances": [[nested]]}).to_string(),
            404,
        ),
        get("metadata of an unknown model", "/v2/models/resnet", 404),
        get(
            "readiness of an unknown model",
            "/v2/models/resnet/ready",
            404,
        ),
        get(
            "config of an unknown version",
            "/v2/models/mnist/versions/3/config",
            404,
        ),
        get("unknown route", "/v3/everything", 404),
        post(
            "load with model control off (the default)",
            "/v2/repository/models/resnet/load",
            "",
            403,
        ),
        post(
            "unload with model control off (the default)",
            "/v2/repository/models/mnist/unload",
            "",
            403,
        ),
    ]
}

#[tokio::test]
async fn every_bad_request_gets_its_status_and_a_json_error_and_the_server_keeps_serving() {
    let server = Server::start(&[
        "--max-body-bytes",
        "1048576",
        "--body-timeout",
        "500ms",
        "--header-read-timeout",
        "1s",
    ]);
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let cases = cases();
    assert!(cases.len() >= 40, "the battery has {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let mut req = client
            .request(c.method.parse().unwrap(), server.url(&c.path))
            .body(c.body.clone());
        for (k, v) in &c.headers {
            req = req.header(*k, v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.what));
        let status = resp.status().as_u16();
        let body: Result<Value, _> = resp.json().await;
        let has_error = body
            .as_ref()
            .ok()
            .and_then(|b| b["error"].as_str())
            .is_some_and(|e| !e.is_empty());
        if status != c.status || !has_error {
            failures.push(format!(
                "{}: got {status} {body:?}, want {} with a JSON error",
                c.what, c.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Raw-socket cases: what a well-behaved HTTP client cannot send.
    let addr = server.http.clone();
    let header_only =
        "POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 5000000\r\n\r\n";
    let (status, body) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || raw_exchange(&addr, header_only.as_bytes(), false, None)
    })
    .await
    .unwrap();
    assert_eq!(
        status, 413,
        "declared oversize body is refused before it is read"
    );
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["error"].is_string());

    let short = "POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\n\r\n{\"inputs\": []}";
    let (status, body) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || raw_exchange(&addr, short.as_bytes(), false, None)
    })
    .await
    .unwrap();
    assert_eq!(
        status,
        408,
        "a body shorter than its content-length times out: {}",
        String::from_utf8_lossy(&body)
    );
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["error"].is_string());

    let slow = "POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"inp\r\n";
    let (status, _) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            raw_exchange(
                &addr,
                slow.as_bytes(),
                false,
                Some(Duration::from_millis(100)),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 408, "a client that stops sending gets 408");

    let chunked_big = {
        let mut r = b"POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..20 {
            r.extend_from_slice(format!("{:x}\r\n", 100_000).as_bytes());
            r.extend_from_slice(&[b' '; 100_000]);
            r.extend_from_slice(b"\r\n");
        }
        r
    };
    let (status, _) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || raw_exchange(&addr, &chunked_big, false, None)
    })
    .await
    .unwrap();
    assert_eq!(
        status, 413,
        "an undeclared (chunked) oversize body is cut off at the limit"
    );

    // Half a request head, then nothing: the connection is closed at the header read timeout.
    let cut = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || half_a_header_is_cut_off(&addr)
    })
    .await
    .unwrap();
    assert!(cut < Duration::from_secs(5), "closed after {cut:?}");

    // Still serving, correctly.
    let r = server.infer_zeros().await;
    assert_eq!(r.status(), 200);
    assert_eq!(server.get("/v2/health/ready").await.status(), 200);
    assert_eq!(server.get("/v2/health/live").await.status(), 200);

    // Invented model names are counted under one label, not one series each.
    for i in 0..50 {
        let r = client
            .post(server.url(&format!("/v2/models/junk{i}/infer")))
            .body(mnist_v2_body(&[vec![0.0; 784]]).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let r = client
            .post(server.url(&format!("/v1/models/junk{i}:predict")))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(!metrics.contains("junk"), "invented names became labels");
    assert!(
        metrics.contains(r#"model="_unknown""#),
        "unknown names are counted: {metrics}"
    );
}

/// Admission comes before the body: with the queue full, a request is refused with 429 while
/// its body is still unread, so an overloaded replica does not buffer what it will refuse.
#[tokio::test]
async fn a_full_queue_refuses_before_the_body_is_read() {
    let server = Server::start(&["--queue-limit", "1", "--body-timeout", "3s"]);
    server.wait_ready().await;
    // Holds the only slot: its head promises a body it has not sent yet.
    let mut holder = TcpStream::connect(server.http.trim_start_matches("http://")).unwrap();
    holder
        .write_all(
            b"POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n{",
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = server.infer_zeros().await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    drop(holder);
    // The slot comes back once the holder is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = server.infer_zeros().await.status();
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The bodies a replica holds at once are bounded in bytes, not only in count: a body that
/// would take more than `--max-buffered-body-bytes` is refused with 429 (declared: before it is
/// read), and what a finished request held is given back.
#[tokio::test]
async fn bodies_past_the_memory_budget_are_refused_and_the_budget_comes_back() {
    let server = Server::start(&[
        "--max-buffered-body-bytes",
        "300000",
        "--body-timeout",
        "5s",
    ]);
    server.wait_ready().await;
    let addr = server.http.trim_start_matches("http://").to_string();
    let holding = |addr: &str| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(
            b"POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 200000\r\n\r\n{",
        )
        .unwrap();
        s
    };
    // 200 kB promised and being read: small requests still fit beside it.
    let holder = holding(&addr);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.infer_zeros().await.status(), 200);
    // Another 200 kB would pass the budget: refused at once, naming the flag.
    let (status, body) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            raw_exchange(
                &addr,
                b"POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 200000\r\n\r\n",
                false,
                None,
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 429);
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("--max-buffered-body-bytes"),
        "{error}"
    );
    // The holder leaves: its share comes back (once the server has seen it go). A refusal
    // comes right after the head; an admitted body is waited for.
    drop(holder);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        use std::io::Read;
        let mut second = holding(&addr);
        second
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 12];
        if second.read_exact(&mut buf).is_err() {
            // Nothing yet: the body is being waited for. Send it; it is not valid V2 JSON, so
            // 400 means it was read, not refused.
            second.write_all(&vec![b' '; 199_998]).unwrap();
            second.write_all(b"}").unwrap();
            second
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            second.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"HTTP/1.1 400");
            break;
        }
        assert_eq!(&buf, b"HTTP/1.1 429");
        assert!(
            std::time::Instant::now() < deadline,
            "the share never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
