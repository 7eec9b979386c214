//! What the examples send and read: the README's opportunities, and the few JSON fields they print, written
//! and read with the standard library alone (a real bot would use a JSON crate).

pub const EXAMPLE: [f64; 8] = [10.5, 1.012, 3.0, 0.35, 0.87, 0.5, 2.0, 1.0];
pub const BATCH: [[f64; 8]; 3] = [
    EXAMPLE,
    [2.0, 1.006, 3.0, 0.3, 0.95, 0.2, 2.0, 1.0],
    [0.4, 1.001, 6.0, 0.9, 0.05, 0.1, 4.0, 0.2],
];

pub fn vector(values: &[f64; 8]) -> String {
    let parts: Vec<String> = values.iter().map(|v| format!("{}", v)).collect();
    format!("[{}]", parts.join(", "))
}

/// The raw JSON text of `"key": value` (numbers, booleans, strings without escapes).
pub fn fields<'a>(json: &'a str, key: &str) -> Vec<&'a str> {
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
