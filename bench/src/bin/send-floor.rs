//! `send-floor`: what one delivery's `send` system call costs on this machine, right now.
//!
//! A chat node pays at least one `send` per delivery (each member's socket gets its frame), so
//! that call's CPU cost is the floor under the node's "CPU seconds per million deliveries".
//! This program measures it alone, with nothing of the node's code: one thread writes a
//! server-to-client WebSocket text frame the size of a chat message to `--connections`
//! loopback TCP sockets in turn, `--rate` frames per second, evenly paced, while another thread
//! reads them all. It prints one JSON line with the CPU each thread used per million frames.
//!
//! On loopback the sender's `send` also runs the receiving side's TCP processing and wakes the
//! reader, as it does when a node writes to a local load generator, so the sender's figure is
//! directly comparable with the node's; run it next to `bench/cluster.sh throughput` (the
//! `floor` scenario does) so both see the same machine load.

#[allow(dead_code)] // the load generator's /proc readers; this program uses two of them
#[path = "../procfs.rs"]
mod procfs;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::AsyncReadExt;

#[derive(Debug, Parser)]
#[command(name = "send-floor", version)]
struct Args {
    /// Sockets written to in turn (the throughput bench's 3,000 users).
    #[arg(long, default_value_t = 3000)]
    connections: usize,
    /// Frames per second over all sockets (the throughput bench's 30,000 deliveries/s).
    #[arg(long, default_value_t = 30_000)]
    rate: u64,
    /// How long to send, after a one-second warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Payload bytes per frame (a bench message frame is about this long).
    #[arg(long, default_value_t = 160)]
    bytes: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.connections == 0 || args.rate == 0 || args.bytes > 125 * 1024 {
        eprintln!(
            "send-floor: --connections and --rate must be at least 1, --bytes at most 128000"
        );
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("send-floor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A server-to-client text frame (unmasked), as a node writes it.
fn frame(payload_bytes: usize) -> Vec<u8> {
    let payload = format!(
        "{{\"op\":\"msg\",\"room\":\"r\",\"text\":\"{}\"}}",
        "x".repeat(payload_bytes.saturating_sub(30))
    );
    let mut out = vec![0x81];
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n => {
            out.push(126);
            out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
        }
    }
    out.extend_from_slice(payload.as_bytes());
    out
}

/// The reading side: every socket drained by one current-thread runtime, as a load generator
/// would. Returns the bytes read and this thread's CPU ticks when `stop` is set.
fn reader(
    listener: TcpListener,
    connections: usize,
    stop: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
) -> Result<u64, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("reader runtime: {e}"))?;
    runtime.block_on(async move {
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
        for _ in 0..connections {
            let (mut socket, _) = listener
                .accept()
                .await
                .map_err(|e| format!("accept: {e}"))?;
            let read = read.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    read.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
        let start = procfs::thread_cpu_ticks().ok_or("cannot read /proc/thread-self/stat")?;
        while !stop.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let end = procfs::thread_cpu_ticks().ok_or("cannot read /proc/thread-self/stat")?;
        Ok(end.saturating_sub(start))
    })
}

fn run(args: &Args) -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let read = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, read, connections) = (stop.clone(), read.clone(), args.connections);
        std::thread::spawn(move || reader(listener, connections, stop, read))
    };
    let mut sockets = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let socket = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        socket.set_nodelay(true).map_err(|e| e.to_string())?;
        sockets.push(socket);
    }
    let frame = frame(args.bytes);
    let ticks_per_sec = procfs::ticks_per_sec();

    // Paced in 1 ms steps, each sending what is due by then, round-robin over the sockets.
    let count = sockets.len();
    let mut send_for = |duration: Duration, next: &mut usize| -> Result<u64, String> {
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < duration {
            let due = (start.elapsed().as_secs_f64() * args.rate as f64) as u64;
            while sent < due {
                sockets[*next % count]
                    .write_all(&frame)
                    .map_err(|e| format!("send: {e}"))?;
                *next += 1;
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(sent)
    };
    let mut next = 0;
    let warmup = send_for(Duration::from_secs(1), &mut next)?;
    let cpu_start = procfs::thread_cpu_ticks().ok_or("cannot read /proc/thread-self/stat")?;
    let sent = send_for(args.duration, &mut next)?;
    let cpu_end = procfs::thread_cpu_ticks().ok_or("cannot read /proc/thread-self/stat")?;
    stop.store(true, Ordering::Release);
    drop(sockets);
    let reader_ticks = reader
        .join()
        .map_err(|_| "the reader thread panicked".to_owned())??;
    let per_million =
        |ticks: u64, count: u64| ticks as f64 / ticks_per_sec as f64 / count.max(1) as f64 * 1e6;
    let sender_s = (cpu_end - cpu_start) as f64 / ticks_per_sec as f64;
    Ok(serde_json::json!({
        "scenario": "send_floor",
        "connections": args.connections,
        "rate": args.rate,
        "frame_bytes": frame.len(),
        "sent": sent,
        "sender_cpu_s": sender_s,
        "sender_cpu_s_per_million_sends": per_million(cpu_end - cpu_start, sent),
        // The reader's clock runs over the warm-up too.
        "reader_cpu_s_per_million_frames": per_million(reader_ticks, warmup + sent),
        "bytes_read": read.load(Ordering::Relaxed),
        "load_1m": procfs::load_1m(),
    })
    .to_string())
}
