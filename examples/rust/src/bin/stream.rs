//! Stream opportunities to omni-mev's stream server from Rust, with the standard library only: a WebSocket
//! client (RFC 6455: the handshake, masked text frames, pings answered, fragments joined) in one file.
//! Pipelined: both messages are sent at once; the answers come back in order, each echoing its id.
//! Usage: cargo run --bin stream -- [ws://127.0.0.1:8003/stream]   (or: rustc src/bin/stream.rs && ./stream URL)
//! A real bot would use tokio-tungstenite and a JSON crate; this shows the protocol.

use std::env;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[path = "../wire.rs"]
mod wire;
use wire::{fields, vector, BATCH, EXAMPLE};

const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Bytes for the handshake key and the frame masks: they need not be secret, only unpredictable to proxies.
struct Noise(u64);

impl Noise {
    fn new() -> Noise {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        Noise(nanos ^ ((std::process::id() as u64) << 32) | 1)
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for byte in out.iter_mut() {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *byte = self.0 as u8;
        }
        out
    }
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SHA-1, for the one thing the protocol uses it for: checking the server's Sec-WebSocket-Accept.
fn sha1(message: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut padded = message.to_vec();
    padded.push(0x80);
    while padded.len() % 64 != 56 {
        padded.push(0);
    }
    padded.extend_from_slice(&((message.len() as u64) * 8).to_be_bytes());
    for block in padded.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([block[4 * i], block[4 * i + 1], block[4 * i + 2], block[4 * i + 3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, word) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*word);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (state, value) in h.iter_mut().zip([a, b, c, d, e]) {
            *state = state.wrapping_add(value);
        }
    }
    let mut digest = [0u8; 20];
    for (i, word) in h.iter().enumerate() {
        digest[4 * i..4 * i + 4].copy_from_slice(&word.to_be_bytes());
    }
    digest
}

struct WebSocket {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    noise: Noise,
}

impl WebSocket {
    /// Open ws://host:port/path; with an API key, the handshake carries it (a 401 refuses the upgrade).
    fn connect(url: &str, api_key: Option<&str>) -> Result<WebSocket, String> {
        let rest = url.strip_prefix("ws://").ok_or("only ws:// URLs (put TLS in nginx, docs/streaming.md)")?;
        let (host_port, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{}", p))).unwrap_or((rest, "/".into()));
        let stream = TcpStream::connect(host_port).map_err(|e| format!("connect {}: {}", host_port, e))?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let mut noise = Noise::new();
        let key = base64(&noise.bytes::<16>());
        let auth = api_key.map(|k| format!("Authorization: Bearer {}\r\n", k)).unwrap_or_default();
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
            path, host_port, key, auth
        );
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        writer.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).map_err(|e| e.to_string())?;
        let mut accept = None;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.trim().eq_ignore_ascii_case("sec-websocket-accept") {
                    accept = Some(value.trim().to_string());
                }
            }
        }
        if !status.starts_with("HTTP/1.1 101") {
            return Err(format!("handshake refused: {}", status.trim()));
        }
        let expected = base64(&sha1(format!("{}{}", key, ACCEPT_GUID).as_bytes()));
        if accept.as_deref() != Some(expected.as_str()) {
            return Err("the server's Sec-WebSocket-Accept does not match the key".into());
        }
        Ok(WebSocket { reader, writer, noise })
    }

    /// One frame, masked as a client's must be.
    fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), String> {
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = self.noise.bytes::<4>();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
        self.writer.write_all(&frame).map_err(|e| e.to_string())
    }

    /// The next text message, its fragments joined; pings are answered on the way.
    fn receive(&mut self) -> Result<String, String> {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.reader.read_exact(&mut head).map_err(|e| e.to_string())?;
            let (fin, opcode, masked) = (head[0] & 0x80 != 0, head[0] & 0x0F, head[1] & 0x80 != 0);
            let length = match head[1] & 0x7F {
                126 => {
                    let mut n = [0u8; 2];
                    self.reader.read_exact(&mut n).map_err(|e| e.to_string())?;
                    u16::from_be_bytes(n) as usize
                }
                127 => {
                    let mut n = [0u8; 8];
                    self.reader.read_exact(&mut n).map_err(|e| e.to_string())?;
                    u64::from_be_bytes(n) as usize
                }
                n => n as usize,
            };
            let mut mask = [0u8; 4];
            if masked {
                self.reader.read_exact(&mut mask).map_err(|e| e.to_string())?;
            }
            let mut payload = vec![0u8; length];
            self.reader.read_exact(&mut payload).map_err(|e| e.to_string())?;
            if masked {
                payload.iter_mut().enumerate().for_each(|(i, byte)| *byte ^= mask[i % 4]);
            }
            match opcode {
                PING => self.send(PONG, &payload)?,
                PONG => {}
                CLOSE => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])).unwrap_or(1005);
                    return Err(format!("closed by the server: {} {}", code, String::from_utf8_lossy(&payload[2.min(payload.len())..])));
                }
                _ => {
                    message.extend_from_slice(&payload);
                    if fin {
                        return String::from_utf8(message).map_err(|e| e.to_string());
                    }
                }
            }
        }
    }

    fn close(&mut self) -> Result<(), String> {
        self.send(CLOSE, &1000u16.to_be_bytes())
    }
}

fn run(url: &str, api_key: Option<&str>) -> Result<(), String> {
    let mut ws = WebSocket::connect(url, api_key)?;
    ws.send(TEXT, format!("{{\"id\": 1, \"features\": {}}}", vector(&EXAMPLE)).as_bytes())?;
    let items: Vec<String> = BATCH.iter().map(|v| format!("{{\"features\": {}}}", vector(v))).collect();
    ws.send(TEXT, format!("{{\"id\": 2, \"items\": [{}]}}", items.join(", ")).as_bytes())?;
    let (one, many) = (ws.receive()?, ws.receive()?);
    for answer in [&one, &many] {
        if let Some(error) = fields(answer, "error").first() {
            return Err(format!("{}: {}", error, fields(answer, "message").first().unwrap_or(&"")));
        }
    }
    println!(
        "stream: id={} decision={} confidence={} model={}/{}",
        fields(&one, "id")[0],
        fields(&one, "decision")[0],
        fields(&one, "confidence")[0],
        fields(&one, "model_type")[0],
        fields(&one, "model_version")[0]
    );
    println!("stream batch: id={} decisions=[{}]", fields(&many, "id")[0], fields(&many, "decision").join(", "));
    ws.close()
}

fn main() -> ExitCode {
    let url = env::args()
        .nth(1)
        .or_else(|| env::var("OMNI_MEV_STREAM_URL").ok())
        .unwrap_or_else(|| "ws://127.0.0.1:8003/stream".to_string());
    let api_key = env::var("OMNI_MEV_API_KEY").ok();
    match run(&url, api_key.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error);
            ExitCode::FAILURE
        }
    }
}
