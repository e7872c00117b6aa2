//! The floor under a staged epoch: how long this host takes only to copy
//! MOVES rows in and out between host tables of ROWS rows and a transfer
//! window, one row at a time from random places, on one thread (as the
//! engine's device thread does), with no decision made and no device.
//!
//! A staged epoch moves at least the rows `rowstage simulate --policy belady`
//! counts for its order and budget; this gives what copying them costs,
//! beside the CPU backend's whole epoch (BENCHMARKS.md, "What a 10% budget
//! can reach").
//!
//! ```sh
//! cargo run --release --example copy_floor -- ROWS MOVES [ROW_BYTES]
//! cargo run --release --example copy_floor -- 70000 8100000 144
//! ```

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: Option<u64>| -> u64 {
        match args.get(i) {
            Some(s) => s.parse().unwrap_or_else(|_| {
                eprintln!("error: argument {} must be a whole number, got `{s}`", i + 1);
                std::process::exit(2)
            }),
            None => default.unwrap_or_else(|| {
                eprintln!("usage: copy_floor ROWS MOVES [ROW_BYTES]");
                std::process::exit(2)
            }),
        }
    };
    let (rows, moves, row_bytes) = (num(0, None) as usize, num(1, None) as usize, num(2, Some(144)) as usize);
    if rows == 0 || row_bytes == 0 {
        eprintln!("error: ROWS and ROW_BYTES must be above 0");
        std::process::exit(2);
    }
    // A window of a few thousand rows, as a step's upload and download
    // windows are; rows picked by a fixed LCG, so every run copies the same.
    let window = 4096.min(rows);
    let mut table = vec![1u8; rows * row_bytes];
    let mut buf = vec![2u8; window * row_bytes];
    let mut state = 12345u64;
    let picks: Vec<usize> = (0..moves)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as usize % rows
        })
        .collect();
    println!("{moves} rows of {row_bytes} B in and out of a {rows}-row table, one thread:");
    for rep in 1..=3 {
        let t = Instant::now();
        for (j, &r) in picks.iter().enumerate() {
            let w = j % window * row_bytes;
            buf[w..w + row_bytes].copy_from_slice(&table[r * row_bytes..(r + 1) * row_bytes]);
        }
        for (j, &r) in picks.iter().enumerate() {
            let w = j % window * row_bytes;
            table[r * row_bytes..(r + 1) * row_bytes].copy_from_slice(&buf[w..w + row_bytes]);
        }
        let s = t.elapsed().as_secs_f64();
        std::hint::black_box((&table, &buf));
        println!("  run {rep}: {s:.3} s, {:.1} ns per row moved in and out", s / moves.max(1) as f64 * 1e9);
    }
}
