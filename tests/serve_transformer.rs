//! `siesta serve --transformer image` in front of a real `siesta serve` predictor: JPEG and PNG
//! digits in, labels out; the transformer's scores checked against the predictor's own answer
//! for the same pixels; bad images and an unreachable predictor give clear errors.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{
    Server, grey_image_b64 as encode, held_out_digits, mnist_v2_body, to_pixels as pixels,
};
use serde_json::{Value, json};

fn start_pair() -> (Server, Server) {
    let predictor = Server::start(&["--no-grpc"]);
    let transformer = Server::start(&[
        "--transformer",
        "image",
        "--model-name",
        "mnist",
        "--predictor-url",
        &predictor.http,
        "--top-k",
        "3",
    ]);
    (predictor, transformer)
}

#[tokio::test]
async fn png_and_jpeg_digits_are_classified_through_the_transformer() {
    let (predictor, transformer) = start_pair();
    transformer.wait_ready().await;
    predictor.wait_ready().await;
    let digits = held_out_digits();
    let mut correct = 0;
    for (chunk_no, chunk) in digits.chunks(40).enumerate() {
        let format = if chunk_no % 2 == 0 {
            image::ImageFormat::Png
        } else {
            image::ImageFormat::Jpeg
        };
        let instances: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, (img, _))| {
                json!({"image_bytes": {"b64": encode(&pixels(img), 28, format)}, "key": format!("{chunk_no}-{i}")})
            })
            .collect();
        let resp = transformer
            .post_json(
                "/v1/models/mnist:predict",
                &json!({ "instances": instances }),
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().contains_key("x-siesta-predictor-ms"));
        let body: Value = resp.json().await.unwrap();
        let preds = body["predictions"].as_array().unwrap();
        assert_eq!(preds.len(), chunk.len());
        for (i, (p, (_, label))) in preds.iter().zip(chunk).enumerate() {
            assert_eq!(p["key"], format!("{chunk_no}-{i}"));
            let class = p["prediction"].as_u64().unwrap();
            assert_eq!(p["label"], class.to_string());
            assert_eq!(p["top_k"].as_array().unwrap().len(), 3);
            assert_eq!(p["top_k"][0]["index"], class);
            let sum: f64 = p["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .sum();
            assert!((sum - 1.0).abs() < 1e-4, "scores sum to {sum}");
            correct += (class == *label as u64) as usize;
        }
    }
    let accuracy = correct as f64 / digits.len() as f64;
    assert!(
        accuracy >= 0.98,
        "accuracy through the transformer {accuracy}"
    );
}

#[tokio::test]
async fn scores_equal_the_predictors_answer_for_the_same_pixels() {
    let (predictor, transformer) = start_pair();
    transformer.wait_ready().await;
    predictor.wait_ready().await;
    let digits = held_out_digits();
    for (img, _) in digits.iter().take(5) {
        let px = pixels(img);
        let direct: Vec<f32> = px.iter().map(|p| *p as f32 / 255.0).collect();
        let want: Value = predictor
            .post_json("/v2/models/mnist/infer", &mnist_v2_body(&[direct]))
            .await
            .json()
            .await
            .unwrap();
        let want = want["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "probabilities")
            .unwrap()["data"]
            .clone();
        let got: Value = transformer
            .post_json(
                "/v1/models/mnist:predict",
                &json!({"instances": [{"image_bytes": {"b64": encode(&px, 28, image::ImageFormat::Png)}}]}),
            )
            .await
            .json()
            .await
            .unwrap();
        for (a, b) in got["predictions"][0]["scores"]
            .as_array()
            .unwrap()
            .iter()
            .zip(want.as_array().unwrap())
        {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() <= 1e-6 + 1e-4 * b.abs(), "{a} vs {b}");
        }
    }
}

#[tokio::test]
async fn larger_pictures_are_resized_to_the_models_input() {
    let (predictor, transformer) = start_pair();
    transformer.wait_ready().await;
    predictor.wait_ready().await;
    let digits = held_out_digits();
    let mut correct = 0;
    let n = 20;
    for (img, label) in digits.iter().take(n) {
        // Nearest-neighbour 2x upscale: the transformer's bilinear resize brings it back.
        let px = pixels(img);
        let big: Vec<u8> = (0..56 * 56)
            .map(|i| px[(i / 56 / 2) * 28 + (i % 56) / 2])
            .collect();
        let body = json!({"instances": [{"image_bytes": {"b64": encode(&big, 56, image::ImageFormat::Png)}}]});
        let p: Value = transformer
            .post_json("/v1/models/mnist:predict", &body)
            .await
            .json()
            .await
            .unwrap();
        correct += (p["predictions"][0]["prediction"] == *label as u64) as usize;
    }
    assert!(correct >= n - 1, "{correct}/{n} after resizing");
}

#[tokio::test]
async fn bad_requests_get_json_errors_naming_the_instance() {
    let (predictor, transformer) = start_pair();
    transformer.wait_ready().await;
    predictor.wait_ready().await;
    let good = encode(&[0u8; 784], 28, image::ImageFormat::Png);
    let cases = [
        (
            json!({"instances": [{"image_bytes": {"b64": good}}, {"image_bytes": {"b64": STANDARD.encode(b"not an image")}}]}),
            400,
            "instance 1",
        ),
        (
            json!({"instances": [{"image_bytes": {"b64": "%%%"}}]}),
            400,
            "instance 0",
        ),
        (json!({"instances": []}), 400, "empty"),
        (
            json!({"instances": vec![json!({"b64": good}); 65]}),
            413,
            "--max-instances",
        ),
        (
            json!({"instances": [{"b64": good}, {"b64": STANDARD.encode(siesta_testkit::pixels::png_claiming(50_000, 50_000))}]}),
            413,
            "instance 1: the image is 50000x50000",
        ),
        (json!({"inputs": [1]}), 400, "instances"),
    ];
    for (body, status, want) in cases {
        let resp = transformer
            .post_json("/v1/models/mnist:predict", &body)
            .await;
        assert_eq!(resp.status(), status, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert!(err["error"].as_str().unwrap().contains(want), "{err}");
    }
    let resp = transformer
        .post_json("/v1/models/other:predict", &json!({"instances": [good]}))
        .await;
    assert_eq!(resp.status(), 404);
    let resp = transformer
        .post_json("/v1/models/mnist:explain", &json!({"instances": [good]}))
        .await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn an_unreachable_predictor_is_a_502_not_a_hang() {
    // A port nothing listens on: bind, learn it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let transformer = Server::start(&[
        "--transformer",
        "image",
        "--predictor-url",
        &format!("http://127.0.0.1:{port}"),
    ]);
    transformer.wait_ready().await;
    let good = encode(&[0u8; 784], 28, image::ImageFormat::Png);
    let resp = transformer
        .post_json("/v1/models/mnist:predict", &json!({"instances": [good]}))
        .await;
    assert_eq!(resp.status(), 502);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("cannot reach"),
        "{err}"
    );
}
