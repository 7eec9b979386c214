//! Call omni-mev from Rust with the standard library only: one prediction, then a batch.
//! Usage: cargo run -- [http://127.0.0.1:8001]   (or: rustc src/main.rs && ./main URL)
//! A real bot would use an HTTP client and a JSON crate; this shows the wire format.

use std::env;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

mod wire;
use wire::{fields, vector, BATCH, EXAMPLE};

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
