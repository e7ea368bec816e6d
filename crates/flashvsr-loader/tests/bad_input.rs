//! Hostile or broken files: each must give an error with a clear message, never a panic and
//! never an allocation sized by an unchecked header field. Ends with a randomized mutation test
//! over the seed corpus in fuzz/corpus (the stable-Rust stand-in for the cargo-fuzz targets).

use candle_core::{DType, Device};
use flashvsr_loader::{fuzzing, gguf, WeightStore};

mod common;
use common::CORPUS;

/// Minimal GGUF byte builder.
#[derive(Clone)]
struct G {
    version: u32,
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
    data: Vec<u8>,
    alignment: u64,
}

fn s(x: &str) -> Vec<u8> {
    let mut v = (x.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(x.as_bytes());
    v
}

impl G {
    fn new() -> G {
        G {
            version: 3,
            kv: vec![],
            tensors: vec![],
            n_tensors: None,
            n_kv: None,
            data: vec![],
            alignment: 32,
        }
    }
    fn f32_tensor(mut self, name: &str, ne: &[u64]) -> G {
        let off = self.data.len() as u64;
        let n: u64 = ne.iter().product();
        self.data
            .extend((0..n).flat_map(|i| (i as f32).to_le_bytes()));
        while !(self.data.len() as u64).is_multiple_of(self.alignment) {
            self.data.push(0);
        }
        self.tensors.push((name.into(), ne.to_vec(), 0, off));
        self
    }
    fn kv(mut self, k: &str, ty: u32, payload: Vec<u8>) -> G {
        self.kv.push((k.into(), ty, payload));
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend(
            self.n_tensors
                .unwrap_or(self.tensors.len() as u64)
                .to_le_bytes(),
        );
        b.extend(self.n_kv.unwrap_or(self.kv.len() as u64).to_le_bytes());
        for (k, ty, p) in &self.kv {
            b.extend(s(k));
            b.extend(ty.to_le_bytes());
            b.extend(p);
        }
        for (n, ne, ty, off) in &self.tensors {
            b.extend(s(n));
            b.extend((ne.len() as u32).to_le_bytes());
            for d in ne {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(off.to_le_bytes());
        }
        while !(b.len() as u64).is_multiple_of(self.alignment) {
            b.push(0);
        }
        b.extend(&self.data);
        b
    }
}

fn err(bytes: Vec<u8>) -> String {
    match WeightStore::open_bytes("bad.gguf", bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_err(bytes: Vec<u8>, needle: &str) {
    let e = err(bytes);
    assert!(e.contains("bad.gguf"), "message lacks the file: {e}");
    assert!(e.contains(needle), "expected '{needle}' in: {e}");
}

#[test]
fn valid_builder_file_loads() {
    let b = G::new().f32_tensor("a", &[4, 2]).bytes();
    let st = WeightStore::open_bytes("ok.gguf", b).unwrap();
    let t = st.tensor("a", DType::F32, &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[2, 4]);
}

#[test]
fn magic_version_endianness() {
    assert!(err(b"GGUX\x03\0\0\0".to_vec()).contains("unknown file format"));
    let mut g = G::new();
    g.version = 1;
    assert_err(g.bytes(), "v1 is not supported");
    g.version = 4;
    assert_err(g.bytes(), "unsupported GGUF version 4");
    g.version = 0x0300_0000;
    assert_err(g.bytes(), "big-endian");
}

#[test]
fn truncation_everywhere() {
    for seed in ["meta.gguf", "nd-orig-shape.gguf", "types-extra.gguf"] {
        let full = std::fs::read(format!("{CORPUS}/gguf/{seed}")).unwrap();
        let header_end = gguf::parse(&full).unwrap().header_end as usize;
        for n in 0..full.len() {
            let r = gguf::parse(&full[..n]);
            if n < header_end {
                assert!(r.is_err(), "{seed} cut at {n} parsed");
            }
            // Data truncation: the header may parse but a tensor must not run past the end.
            if let Ok(h) = r {
                for t in h.tensors {
                    if let Some(nb) = t.nbytes {
                        assert!(h.data_offset + t.offset + nb <= n as u64);
                    }
                }
            }
        }
    }
    let e = gguf::parse(&std::fs::read(format!("{CORPUS}/gguf/meta.gguf")).unwrap()[..1000])
        .unwrap_err();
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn absurd_counts_and_lengths() {
    let mut g = G::new();
    g.n_tensors = Some(1 << 40);
    assert_err(g.bytes(), "tensor count");
    let mut g = G::new();
    g.n_kv = Some(u64::MAX);
    assert_err(g.bytes(), "metadata count");
    // String length 2^62.
    let mut p = (1u64 << 62).to_le_bytes().to_vec();
    p.extend(b"abc");
    assert_err(G::new().kv("k", 8, p).bytes(), "string value length");
    // Array of 2^40 u32.
    let mut p = 4u32.to_le_bytes().to_vec();
    p.extend((1u64 << 40).to_le_bytes());
    assert_err(G::new().kv("k", 9, p).bytes(), "array length");
    // Key length past the end.
    let mut b = G::new().kv("k", 4, 7u32.to_le_bytes().to_vec()).bytes();
    b[24..32].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert_err(b, "metadata key length");
    // Arrays nested past the depth cap.
    let mut p = Vec::new();
    for _ in 0..100 {
        p.extend(9u32.to_le_bytes());
        p.extend(1u64.to_le_bytes());
    }
    p.extend(4u32.to_le_bytes());
    p.extend(0u64.to_le_bytes());
    assert_err(G::new().kv("deep", 9, p).bytes(), "nested deeper");
}

#[test]
fn unknown_value_type_and_bad_bool() {
    assert_err(
        G::new().kv("k", 13, vec![0; 8]).bytes(),
        "unknown value type 13",
    );
    let mut p = 77u32.to_le_bytes().to_vec();
    p.extend(1u64.to_le_bytes());
    assert_err(
        G::new().kv("k", 9, p).bytes(),
        "unknown array element type 77",
    );
    assert_err(G::new().kv("b", 7, vec![2]).bytes(), "invalid bool");
}

#[test]
fn duplicates() {
    let one = 1u32.to_le_bytes().to_vec();
    assert_err(
        G::new().kv("k", 4, one.clone()).kv("k", 4, one).bytes(),
        "duplicate metadata key 'k'",
    );
    let g = G::new().f32_tensor("a", &[8]).f32_tensor("a", &[8]);
    assert_err(g.bytes(), "duplicate tensor name 'a'");
}

#[test]
fn alignment_rules() {
    for (ty, p) in [
        (4u32, 0u32.to_le_bytes().to_vec()),
        (4, 48u32.to_le_bytes().to_vec()),
        (10, 64u64.to_le_bytes().to_vec()),
    ] {
        assert_err(
            G::new()
                .kv("general.alignment", ty, p)
                .f32_tensor("a", &[8])
                .bytes(),
            "general.alignment",
        );
    }
}

#[test]
fn dims_and_offsets() {
    // Element count overflow.
    let mut g = G::new().f32_tensor("a", &[8]);
    g.tensors[0].1 = vec![1 << 32, 1 << 32, 1 << 32];
    assert_err(g.bytes(), "overflows");
    // Too many dims.
    let mut g = G::new().f32_tensor("a", &[8]);
    g.tensors[0].1 = vec![1; 9];
    assert_err(g.bytes(), "9 dims");
    // Offset past the end.
    let mut g = G::new().f32_tensor("a", &[8]);
    g.tensors[0].3 = 1 << 40;
    assert_err(g.bytes(), "past the end");
    // Data runs past the end.
    let mut g = G::new().f32_tensor("a", &[8]);
    g.tensors[0].1 = vec![800];
    assert_err(g.bytes(), "runs past the end");
    // Misaligned.
    let mut g = G::new().f32_tensor("a", &[8]).f32_tensor("b", &[8]);
    g.tensors[1].3 = 4;
    assert_err(g.bytes(), "not a multiple of the alignment");
    // Overlapping.
    let mut g = G::new().f32_tensor("a", &[16]).f32_tensor("b", &[8]);
    g.tensors[1].3 = 32;
    assert_err(g.bytes(), "overlap");
    // Row not a multiple of the block size (Q8_0 with ne0 = 8).
    let mut g = G::new().f32_tensor("a", &[32]);
    g.tensors[0].2 = 8;
    g.tensors[0].1 = vec![8];
    assert_err(g.bytes(), "block size");
}

#[test]
fn per_tensor_problems_fail_only_that_tensor() {
    let mut g = G::new()
        .f32_tensor("good", &[8])
        .f32_tensor("iq2", &[8])
        .f32_tensor("zero", &[8])
        .f32_tensor("scalar", &[8])
        .f32_tensor("badshape", &[8]);
    g.tensors[1].2 = 16; // IQ2_XXS: unknown to us
    g.tensors[2].1 = vec![0, 8];
    g.tensors[3].1 = vec![];
    let mut arr = 5u32.to_le_bytes().to_vec();
    arr.extend(2u64.to_le_bytes());
    arr.extend(3i32.to_le_bytes());
    arr.extend(3i32.to_le_bytes());
    let g = g.kv("comfy.gguf.orig_shape.badshape", 9, arr);
    let st = WeightStore::open_bytes("mixed.gguf", g.bytes()).unwrap();
    assert!(st.tensor("good", DType::F32, &Device::Cpu).is_ok());
    for (name, needle) in [
        ("iq2", "IQ2_XXS"),
        ("zero", "zero-sized"),
        ("scalar", "0 dims"),
        ("badshape", "[3, 3] has 9 elements"),
    ] {
        let e = st
            .tensor(name, DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mixed.gguf") && e.contains(name) && e.contains(needle),
            "{e}"
        );
    }
}

#[test]
fn other_formats_garbage() {
    let e = WeightStore::open_bytes(
        "x.safetensors",
        [&15u64.to_le_bytes()[..], b"{\"a\": 1, \"b\":2}"].concat(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("x.safetensors") && e.contains("safetensors header"),
        "{e}"
    );
    let e = WeightStore::open_bytes("x.pt", b"PK\x03\x04garbage".to_vec())
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.pt") && e.contains("zip"), "{e}");
    let e = WeightStore::open_bytes("x.pt", vec![0x80, 2, b'}', b'.'])
        .unwrap_err()
        .to_string();
    assert!(e.contains("legacy"), "{e}");
}

fn pickle_err(p: &[u8]) -> String {
    flashvsr_loader::pickle::unpickle(p)
        .and_then(|v| flashvsr_loader::pickle::tensors_of(&v).map(|_| ()))
        .unwrap_err()
}

#[test]
fn pickles_with_foreign_globals_are_refused() {
    let e = pickle_err(b"\x80\x02cos\nsystem\nX\x02\0\0\0lsR.");
    assert!(e.contains("'os.system'"), "{e}");
    let e = pickle_err(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.");
    assert!(e.contains("'builtins.eval'"), "{e}");
    let e = pickle_err(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)R.");
    assert!(e.contains("needs 4+ arguments"), "{e}");
    assert!(
        pickle_err(b"\x80\x02}(X\x01\0\0\0aK\x01X\x01\0\0\0aK\x02u.").contains("duplicate key 'a'")
    );
    assert!(pickle_err(b"\x80\x02h\x05.").contains("memo"));
    assert!(pickle_err(b"\x80\x02X\xff\xff\xff\xff").contains("truncated"));
    assert!(pickle_err(b"\x80\x02\xff.").contains("opcode"));
    // Inside a real zip, the error names the file and the global.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("evil.pth");
    {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
        z.start_file(
            "evil/data.pkl",
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored),
        )
        .unwrap();
        z.write_all(b"\x80\x02csubprocess\nPopen\n.").unwrap();
        z.finish().unwrap();
    }
    let e = WeightStore::open(&[&p]).unwrap_err().to_string();
    assert!(
        e.contains("evil.pth") && e.contains("subprocess.Popen"),
        "{e}"
    );
}

#[test]
fn hostile_tensor_views_in_pickles() {
    // A valid single-tensor file whose view is patched to reach past its storage.
    let good = std::fs::read(format!("{CORPUS}/file/prompt.pth")).unwrap();
    let st = WeightStore::open_bytes("prompt.pth", good).unwrap();
    assert!(st.tensor("prompt", DType::F32, &Device::Cpu).is_ok());
    // shape (1<<20,) stride (0,) over a tiny storage: refused without allocating.
    let p = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\0\0\0storagectorch\nFloatStorage\nX\x01\0\0\0\x30X\x03\0\0\0cpuK\x01tQK\x00J\0\0\x10\0\x85K\x00\x85\x89)tR.";
    let v = flashvsr_loader::pickle::unpickle(p).unwrap();
    let t = flashvsr_loader::pickle::tensors_of(&v).unwrap();
    assert_eq!(t[0].1.shape, vec![1 << 20]);
    let zip_with = |pkl: &[u8]| {
        use std::io::Write;
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("x/data.pkl", o).unwrap();
        z.write_all(pkl).unwrap();
        z.start_file("x/data/0", o).unwrap();
        z.write_all(&1f32.to_le_bytes()).unwrap();
        z.finish().unwrap();
        buf.into_inner()
    };
    let st = WeightStore::open_bytes("expand.pt", zip_with(p)).unwrap();
    let e = st
        .tensor("expand", DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("expand.pt") && e.contains("more elements than its storage"),
        "{e}"
    );
    // A view reaching past its storage record.
    let past = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\0\0\0storagectorch\nFloatStorage\nX\x01\0\0\0\x30X\x03\0\0\0cpuK\x01tQK\x00K\x04\x85K\x01\x85\x89)tR.";
    let st = WeightStore::open_bytes("past.pt", zip_with(past)).unwrap();
    let e = st
        .tensor("past", DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("past.pt") && e.contains("reaches element 3"),
        "{e}"
    );
}

/// xorshift64*: deterministic, dependency-free randomness for the mutation test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(0);
        }
        let i = rng.below(b.len());
        match rng.below(7) {
            0 => b[i] ^= 1 << rng.below(8),
            1 => b[i] = rng.next() as u8,
            2 => {
                // Overwrite 8 bytes with an interesting integer.
                let v: u64 = [
                    0,
                    1,
                    u64::MAX,
                    1 << 32,
                    1 << 40,
                    1 << 63,
                    rng.next(),
                    0xffff_ffff,
                ][rng.below(8)];
                for (k, x) in v.to_le_bytes().iter().enumerate() {
                    if i + k < b.len() {
                        b[i + k] = *x;
                    }
                }
            }
            3 => b.truncate(i),
            4 => {
                let n = rng.below(16);
                let at = rng.below(b.len());
                let chunk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, chunk);
            }
            5 => {
                let n = rng.below(16).min(b.len() - i);
                b.drain(i..i + n);
            }
            _ => {
                // Duplicate a slice (repeats records, names, opcodes).
                let n = rng.below(32).min(b.len() - i);
                let s = b[i..i + n].to_vec();
                let at = rng.below(b.len());
                b.splice(at..at, s);
            }
        }
    }
    b
}

fn seeds(dir: &str) -> Vec<Vec<u8>> {
    let mut v: Vec<_> = std::fs::read_dir(format!("{CORPUS}/{dir}"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v.into_iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn randomized_mutations_never_panic() {
    let budget = std::time::Duration::from_secs(
        std::env::var("MUTATION_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(4),
    );
    let gguf_seeds = seeds("gguf");
    let pickle_seeds = seeds("pickle");
    let file_seeds = seeds("file");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let start = std::time::Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < budget {
        let k = rng.below(gguf_seeds.len());
        let g = mutate(&mut rng, &gguf_seeds[k]);
        fuzzing::parse_gguf(&g);
        if runs.is_multiple_of(8) {
            fuzzing::load_all(&g);
        }
        let k = rng.below(pickle_seeds.len());
        let p = mutate(&mut rng, &pickle_seeds[k]);
        fuzzing::parse_pickle(&p);
        if runs.is_multiple_of(16) {
            let k = rng.below(file_seeds.len());
            let f = mutate(&mut rng, &file_seeds[k]);
            fuzzing::load_all(&f);
        }
        runs += 1;
    }
    eprintln!("mutation test: {runs} rounds in {:?}", start.elapsed());
    assert!(runs > 1000, "only {runs} rounds");
}
