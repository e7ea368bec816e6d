//! Dequantizers for the ggml block types candle cannot hold as a `QTensor`
//! (Q8_1, Q8_K, IQ4_NL, IQ4_XS). They follow ggml's C evaluation order in f32.

use crate::gguf::GgmlType;
use half::f16;

/// The fixed non-linear 4-bit codebook of IQ4_NL / IQ4_XS.
const IQ4_CODEBOOK: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Whether [`dequantize`] decodes this type.
pub fn supports(t: GgmlType) -> bool {
    matches!(
        t,
        GgmlType::Q8_1 | GgmlType::Q8_K | GgmlType::IQ4_NL | GgmlType::IQ4_XS
    )
}

/// Decodes `data` (whole blocks) of type `t` to f32. `None` when the type is not handled here.
pub fn dequantize(t: GgmlType, data: &[u8]) -> Option<Vec<f32>> {
    let (block, size) = t.block()?;
    if !supports(t) || !data.len().is_multiple_of(size) {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() / size * block);
    for b in data.chunks_exact(size) {
        match t {
            GgmlType::Q8_1 => {
                // f16 d, f16 s (unused here), 32 x i8
                let d = f16_at(b, 0);
                out.extend(b[4..36].iter().map(|&q| d * (q as i8) as f32));
            }
            GgmlType::Q8_K => {
                // f32 d, 256 x i8, 16 x i16 sums (unused here)
                let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                out.extend(b[4..260].iter().map(|&q| d * (q as i8) as f32));
            }
            GgmlType::IQ4_NL => {
                let d = f16_at(b, 0);
                push_iq4_nibbles(&mut out, &b[2..18], d);
            }
            GgmlType::IQ4_XS => {
                // f16 d, u16 scales_h, 4 B scales_l, 128 B nibbles; 8 sub-blocks of 32
                let d = f16_at(b, 0);
                let scales_h = u16::from_le_bytes([b[2], b[3]]) as i32;
                let scales_l = &b[4..8];
                for ib in 0..8 {
                    let lo = ((scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf) as i32;
                    let hi = ((scales_h >> (2 * ib)) & 3) << 4;
                    let dl = d * ((lo | hi) - 32) as f32;
                    push_iq4_nibbles(&mut out, &b[8 + 16 * ib..8 + 16 * (ib + 1)], dl);
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

/// 16 bytes of IQ4 nibbles → 32 values: all low nibbles first, then all high ones.
fn push_iq4_nibbles(out: &mut Vec<f32>, qs: &[u8], scale: f32) {
    out.extend(
        qs.iter()
            .map(|&q| scale * IQ4_CODEBOOK[(q & 0xf) as usize] as f32),
    );
    out.extend(
        qs.iter()
            .map(|&q| scale * IQ4_CODEBOOK[(q >> 4) as usize] as f32),
    );
}
