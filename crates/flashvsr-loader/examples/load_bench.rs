//! Loader benchmark: a 1.4 B-parameter DiT with FlashVSR's true tensor shapes (random values).
//!
//! ```sh
//! cargo run -p flashvsr-loader --example load_bench -- gen /tmp/bench   # writes the two files
//! crates/flashvsr-loader/benches/run_load_bench.sh /tmp/bench           # timings + peak RSS
//! ```
//! `read FILE` is the baseline (the same bytes read from the page cache into memory);
//! `load FILE` loads every tensor into CPU memory (BF16 kept as BF16, quantized kept as QTensor).
//! Each mode prints one line: seconds, bytes, peak RSS (VmHWM) and RSS / bytes.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use flashvsr_loader::convert::{self, ConvertOptions, Quant};
use flashvsr_loader::layout;
use flashvsr_loader::WeightStore;

fn peak_rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn gen(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let specs = layout::component_layout("dit").ok_or_else(|| anyhow::anyhow!("no dit layout"))?;
    let st = dir.join("dit-bf16.safetensors");
    // Streaming safetensors writer: header, then bf16 values from a xorshift generator.
    let mut header = serde_json::Map::new();
    let mut off = 0u64;
    for s in &specs {
        let n = s.shape.iter().product::<usize>() as u64 * 2;
        header.insert(
            s.name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": s.shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut w = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(&st)?);
    w.write_all(&(h.len() as u64).to_le_bytes())?;
    w.write_all(&h)?;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = Vec::with_capacity(1 << 22);
    for s in &specs {
        let n = s.shape.iter().product::<usize>();
        buf.clear();
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // uniform in [-0.05, 0.05)
            let v = ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1;
            buf.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
        }
        w.write_all(&buf)?;
    }
    w.flush()?;
    drop(w);
    println!(
        "wrote {} ({} tensors, {} bytes of data)",
        st.display(),
        specs.len(),
        off
    );
    let gg = dir.join("dit-q8_0.gguf");
    let t = Instant::now();
    let r = convert::convert(
        &[&st],
        &gg,
        &ConvertOptions {
            quant: Some(Quant::Q8_0),
            component: Some("dit".into()),
            ..Default::default()
        },
    )?;
    print!("{r}");
    println!("conversion took {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}

fn read(file: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    let v = std::fs::read(file)?;
    let secs = t.elapsed().as_secs_f64();
    let rss = peak_rss_bytes();
    println!(
        "read  {:<40} {:>7.3} s  {:>13} bytes  peak RSS {:>13} ({:.3}x)",
        file.display(),
        secs,
        v.len(),
        rss,
        rss as f64 / v.len() as f64
    );
    Ok(())
}

fn load(file: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    let store = WeightStore::open(&[file])?;
    let mut tensors = Vec::new();
    let mut qtensors = Vec::new();
    let mut bytes = 0u64;
    for info in store.infos() {
        bytes += info.nbytes.unwrap_or(0);
        match info.dtype.as_str() {
            "F32" => tensors.push(store.tensor(&info.name, DType::F32, &Device::Cpu)?),
            "F16" => tensors.push(store.tensor(&info.name, DType::F16, &Device::Cpu)?),
            "BF16" => tensors.push(store.tensor(&info.name, DType::BF16, &Device::Cpu)?),
            _ => qtensors.push(store.qtensor(&info.name, &Device::Cpu)?),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let rss = peak_rss_bytes();
    println!(
        "load  {:<40} {:>7.3} s  {:>13} bytes  peak RSS {:>13} ({:.3}x)  [{} tensors, {} QTensors]",
        file.display(),
        secs,
        bytes,
        rss,
        rss as f64 / bytes as f64,
        tensors.len(),
        qtensors.len()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1).map(|s| s.as_str()), args.get(2)) {
        (Some("gen"), Some(d)) => gen(Path::new(d)),
        (Some("read"), Some(f)) => read(Path::new(f)),
        (Some("load"), Some(f)) => load(Path::new(f)),
        _ => anyhow::bail!("usage: load_bench gen DIR | read FILE | load FILE"),
    }
}
