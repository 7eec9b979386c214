//! Call omni-mev from Rust with the standard library only: one prediction, then a batch.
//! Usage: cargo run -- [http://127.0.0.1:8001]   (or: rustc src/main.rs && ./main URL)
//! A real bot would use an HTTP client and a JSON crate; this shows the wire format.

use std::env;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

const EXAMPLE: [f64; 8] = [10.5, 1.012, 3.0, 0.35, 0.87, 0.5, 2.0, 1.0];
const BATCH: [[f64; 8]; 3] = [
    EXAMPLE,
    [2.0, 1.006, 3.0, 0.3, 0.95, 0.2, 2.0, 1.0],
    [0.4, 1.001, 6.0, 0.9, 0.05, 0.1, 4.0, 0.2],
];

fn vector(values: &[f64; 8]) -> String {
    let parts: Vec<String> = values.iter().map(|v| format!("{}", v)).collect();
    format!("[{}]", parts.join(", "))
}

/// POST a JSON body over HTTP/1.1; returns (status, body).
fn post(host_port: &str, path: &str, body: &str, api_key: Option<&str>) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(host_port).map_err(|e| format!("connect {}: {}", host_port, e))?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let auth = api_key.map(|k| format!("Authorization: Bearer {}\r\n", k)).unwrap_or_default();
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{}Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        path, host_port, auth, body.len(), body
    );
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let (head, payload) = raw.split_once("\r\n\r\n").ok_or("malformed HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status code")?;
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Err("chunked responses are not handled by this example".into());
    }
    Ok((status, payload.to_string()))
}

/// The raw JSON text of `"key": value` (numbers, booleans, strings without escapes).
fn fields<'a>(json: &'a str, key: &str) -> Vec<&'a str> {
    let pattern = format!("\"{}\":", key);
    let mut found = Vec::new();
    let mut rest = json;
    while let Some(at) = rest.find(&pattern) {
        let value = rest[at + pattern.len()..].trim_start();
        let end = value.find(|c| c == ',' || c == '}').unwrap_or(value.len());
        found.push(value[..end].trim().trim_matches('"'));
        rest = &value[end..];
    }
    found
}

fn run(base_url: &str, api_key: Option<&str>) -> Result<(), String> {
    let host_port = base_url.trim_start_matches("http://").trim_end_matches('/');
    let (status, body) = post(host_port, "/predict", &format!("{{\"features\": {}}}", vector(&EXAMPLE)), api_key)?;
    if status != 200 {
        return Err(format!("/predict answered {}: {}", status, body));
    }
    println!(
        "predict: decision={} confidence={} model={}/{}",
        fields(&body, "decision")[0],
        fields(&body, "confidence")[0],
        fields(&body, "model_type")[0],
        fields(&body, "model_version")[0]
    );
    let items: Vec<String> = BATCH.iter().map(|v| format!("{{\"features\": {}}}", vector(v))).collect();
    let (status, body) = post(host_port, "/predict/batch", &format!("{{\"items\": [{}]}}", items.join(", ")), api_key)?;
    if status != 200 {
        return Err(format!("/predict/batch answered {}: {}", status, body));
    }
    println!("batch: decisions=[{}]", fields(&body, "decision").join(", "));
    Ok(())
}

fn main() -> ExitCode {
    let base_url = env::args()
        .nth(1)
        .or_else(|| env::var("OMNI_MEV_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8001".to_string());
    let api_key = env::var("OMNI_MEV_API_KEY").ok();
    match run(&base_url, api_key.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error);
            ExitCode::FAILURE
        }
    }
}
